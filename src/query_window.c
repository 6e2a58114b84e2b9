/*
 * query_window: the precise window every estimate is made of. Resolves a
 * request's step (given, or the latest of the domain), window and domain
 * into the steps (step - window, step], and merges each layer's per-step
 * aggregates over them in one fixed order (step, layer, domain), so that
 * the same question always gets the same bits (docs/API.md, "Precise
 * statistics").
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"

static int acc_cmp_id(const void *a, const void *b)
{
	const struct query_layer_acc *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

static int collect_layer(void *ctx, const struct store_item *it)
{
	struct query_window *w = ctx;
	struct query_layer_acc *p = realloc(w->layers, (w->n + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	w->layers = p;
	p = &w->layers[w->n];
	memset(p, 0, sizeof(*p));
	p->id = it->id;
	p->channels = (size_t)it->layer.channels;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	w->n++;
	return 0;
}

void query_window_free(struct query_window *w)
{
	size_t i;

	for (i = 0; i < w->n; i++) {
		free(w->layers[i].name);
		stats_agg_free(&w->layers[i].agg);
	}
	free(w->layers);
	w->layers = NULL;
	w->n = 0;
}

/* x rounded down (floor_to) or up (ceil_to) to a multiple of w > 0. */
static int64_t floor_to(int64_t x, int64_t w)
{
	int64_t q = x / w;

	return (x % w != 0 && x < 0 ? q - 1 : q) * w;
}

static int64_t ceil_to(int64_t x, int64_t w)
{
	int64_t q = x / w;

	return (x % w != 0 && x > 0 ? q + 1 : q) * w;
}

int query_window_json(json_t *doc, const struct query_window *w)
{
	if (json_object_set_new(doc, "window", json_integer(w->window)) < 0 ||
	    json_object_set_new(doc, "requested_window",
				w->window_auto ? json_string("auto")
					       : json_integer(w->requested_window)) < 0 ||
	    json_object_set_new(doc, "resolution", json_integer(w->resolution)) < 0)
		return -ENOMEM;
	if (w->window_auto &&
	    json_object_set_new(doc, "min_batches", json_integer(w->min_batches)) < 0)
		return -ENOMEM;
	return 0;
}

/* --- window=auto ---------------------------------------------------------- */

/* Entries newest first, adding batches until min_batches are reached. */
struct auto_walk {
	int64_t need, have;
	int64_t low; /* exclusive low end of the entries walked so far */
	bool any;
};

static int auto_entry(void *ctx, int64_t step, int64_t width, int64_t batches)
{
	struct auto_walk *a = ctx;

	a->any = true;
	a->low = step - width;
	a->have += batches;
	return a->have >= a->need ? 1 : 0;
}

/* The exclusive low end of the auto window ending at entry step (or all history). */
static int auto_low(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
		    int64_t min_batches, int64_t *low)
{
	struct auto_walk a = { .need = min_batches };
	int rc = store_step_batches(r, run_id, domain_id, -1, step, true, auto_entry, &a);

	if (rc < 0)
		return rc;
	*low = a.any ? a.low : step - 1;
	return 0;
}

int query_auto_window(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t step,
		      int64_t min_batches, int64_t *window)
{
	int64_t low;
	int rc = auto_low(r, run_id, domain_id, step, min_batches, &low);

	if (rc < 0)
		return rc;
	*window = step - low;
	return 0;
}

/* Entries oldest first: their steps, widths and batches. */
struct auto_list {
	int64_t *step, *width, *batches;
	size_t n, cap;
};

static int auto_collect(void *ctx, int64_t step, int64_t width, int64_t batches)
{
	struct auto_list *l = ctx;

	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		int64_t *s = realloc(l->step, cap * sizeof(*s)), *w, *b;

		if (s == NULL)
			return -ENOMEM;
		l->step = s;
		w = realloc(l->width, cap * sizeof(*w));
		if (w == NULL)
			return -ENOMEM;
		l->width = w;
		b = realloc(l->batches, cap * sizeof(*b));
		if (b == NULL)
			return -ENOMEM;
		l->batches = b;
		l->cap = cap;
	}
	l->step[l->n] = step;
	l->width[l->n] = width;
	l->batches[l->n] = batches;
	l->n++;
	return 0;
}

int query_auto_build(struct store_reader *r, int64_t run_id, int64_t domain_id, int64_t lo,
		     int64_t hi, int64_t min_batches, struct query_auto *a)
{
	struct auto_list l = { 0 };
	size_t i, j = 0;
	int64_t sum = 0;
	int rc;

	/* the window at lo reaches back furthest: every later one starts inside it */
	rc = auto_low(r, run_id, domain_id, lo, min_batches, &a->first_low);
	if (rc == 0)
		rc = store_step_batches(r, run_id, domain_id, a->first_low, hi, false, auto_collect,
					&l);
	if (rc == 0 && l.n > 0 && (a->low = malloc(l.n * sizeof(*a->low))) == NULL)
		rc = -ENOMEM;
	if (rc < 0) {
		free(l.step);
		free(l.width);
		free(l.batches);
		return rc;
	}
	/*
	 * Two pointers: [j, i] is the smallest run of entries ending at i with
	 * min_batches (or from the first entry, when the history before i holds
	 * fewer), as auto_low() finds it walking back.
	 */
	for (i = 0; i < l.n; i++) {
		sum += l.batches[i];
		while (j < i && sum - l.batches[j] >= min_batches)
			sum -= l.batches[j++];
		a->low[i] = l.step[j] - l.width[j];
	}
	a->step = l.step;
	a->n = l.n;
	free(l.width);
	free(l.batches);
	return 0;
}

int64_t query_auto_low(const struct query_auto *a, int64_t step)
{
	size_t lo = 0, hi = a->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (a->step[mid] < step)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < a->n && a->step[lo] == step ? a->low[lo] : INT64_MIN;
}

int64_t query_window_low(const struct query_auto *autow, int64_t window, int64_t step)
{
	return autow ? query_auto_low(autow, step) : step - window;
}

void query_auto_free(struct query_auto *a)
{
	free(a->step);
	free(a->low);
	a->step = a->low = NULL;
	a->n = 0;
}

static int merge_row(void *ctx, const struct store_agg_row *row)
{
	struct query_window *w = ctx;
	struct query_layer_acc key = { .id = row->layer_id };
	struct query_layer_acc *l = bsearch(&key, w->layers, w->n, sizeof(key), acc_cmp_id);

	if (l == NULL || l->channels != row->agg->channels)
		return -EIO;
	if (l->agg.mean == NULL && stats_agg_init(&l->agg, l->channels) < 0)
		return -ENOMEM;
	stats_agg_merge(&l->agg, row->agg);
	return 0;
}

/*
 * Merge every per-step aggregate of the window into w (one accumulator per
 * layer of the run; those without data keep k == 0) and resolve the step.
 * Inside the caller's read transaction. 404 when the window holds no data
 * or a requested layer has none.
 */
int query_window_compute(struct store_reader *r, const struct query_window_req *q,
			 struct query_window *w, int64_t *step_out, struct bn_error *err)
{
	int64_t run_id, domain_id = -1, step = q->step, lo, width_hi;
	int64_t *ids = NULL;
	size_t i, j, n_ids = 0, with_data = 0;
	int rc;

	rc = query_run_find(r, q->run, &run_id, err);
	if (rc < 0)
		return rc;
	w->run_id = run_id;
	w->domain_id = -1;
	if (strcmp(q->domain, QUERY_DOMAIN_ALL) != 0) {
		rc = store_domain_find(r, run_id, q->domain, &domain_id);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "domain",
					    "run %s has no domain %s", q->run, q->domain);
		if (rc < 0)
			return query_read_failed(err);
		w->domain_id = domain_id;
	}
	if (!q->has_step) {
		rc = store_latest_step(r, run_id, domain_id, &step);
		if (rc == -ENOENT)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, NULL,
					    "run %s has no statistics in domain %s", q->run,
					    q->domain);
		if (rc < 0)
			return query_read_failed(err);
	}

	rc = store_layers_foreach(r, run_id, collect_layer, w);
	if (rc < 0)
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
	qsort(w->layers, w->n, sizeof(*w->layers), acc_cmp_id);
	if (q->n_layers > 0) {
		ids = calloc(q->n_layers, sizeof(*ids));
		if (ids == NULL)
			return query_oom(err);
		for (i = 0; i < q->n_layers; i++) {
			for (j = 0; j < w->n && strcmp(w->layers[j].name, q->layers[i]) != 0; j++)
				;
			if (j == w->n) {
				free(ids);
				return bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
						    "run %s has no layer %s", q->run, q->layers[i]);
			}
			if (!w->layers[j].wanted)
				ids[n_ids++] = w->layers[j].id;
			w->layers[j].wanted = true;
		}
	} else {
		for (j = 0; j < w->n; j++)
			w->layers[j].wanted = true;
	}

	/*
	 * Over bucketed history, widen the window to the whole entries that
	 * cover it (docs/API.md, "History"); window=auto counts the batches of
	 * whole entries back from that cover's end (docs/API.md, "window=auto").
	 * step - window cannot overflow: step >= 0 and window >= 1.
	 */
	if (store_resolution(r, run_id, domain_id, step, &width_hi) < 0) {
		free(ids);
		return query_read_failed(err);
	}
	lo = step - q->window;
	step = ceil_to(step, width_hi);
	w->requested_window = q->window;
	w->window_auto = q->window_auto;
	w->min_batches = q->min_batches;
	if (q->window_auto) {
		if (query_auto_window(r, run_id, domain_id, step, q->min_batches,
				      &w->requested_window) < 0) {
			free(ids);
			return query_read_failed(err);
		}
		lo = step - w->requested_window;
	}
	if (store_resolution(r, run_id, domain_id, lo + 1, &w->resolution) < 0) {
		free(ids);
		return query_read_failed(err);
	}
	lo = floor_to(lo, w->resolution);
	w->window = step - lo;
	*step_out = step;
	rc = store_aggs_foreach(r, run_id, domain_id, lo, step, ids, n_ids, merge_row, w);
	free(ids);
	if (rc < 0)
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);

	for (j = 0; j < w->n; j++) {
		if (!w->layers[j].wanted)
			continue;
		if (w->layers[j].agg.k > 0) {
			with_data++;
		} else if (q->n_layers > 0) {
			return bn_error_set(
				err, 404, BN_E_NOT_FOUND, "layer",
				"layer %s has no data in steps (%lld, %lld] of domain %s",
				w->layers[j].name, (long long)lo, (long long)step, q->domain);
		}
	}
	if (with_data == 0)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
				    "run %s has no data in steps (%lld, %lld] of domain %s", q->run,
				    (long long)lo, (long long)step, q->domain);
	return 0;
}

/* Parse step, window and domain (with its default) into *q. */
int query_window_parse(const struct query_params *p, struct query_window_req *q,
		       struct bn_error *err)
{
	long long v;

	q->domain = p->domain ? p->domain : "default";
	q->has_step = false;
	q->layers = p->layers;
	q->n_layers = p->n_layers;
	if (query_window_parse_width(p->window, p->min_batches, &q->window, &q->window_auto,
				     &q->min_batches, err) < 0)
		return -EINVAL;
	if (p->step != NULL) {
		if (query_parse_int("step", p->step, 0, &v, err) < 0)
			return -EINVAL;
		q->has_step = true;
		q->step = v;
	}
	return query_check_domain(q->domain, err);
}

int query_window_parse_width(const char *s, const char *min_batches, int64_t *window,
			     bool *window_auto, int64_t *min_batches_out, struct bn_error *err)
{
	long long v;

	*window = 1;
	*window_auto = s != NULL && strcmp(s, "auto") == 0;
	*min_batches_out = QUERY_MIN_BATCHES;
	if (*window_auto) {
		if (min_batches != NULL) {
			if (query_parse_int("min_batches", min_batches, 1, &v, err) < 0)
				return -EINVAL;
			*min_batches_out = v;
		}
		return 0;
	}
	if (min_batches != NULL)
		return bn_error_set(err, 400, BN_E_PARAMETER, "min_batches",
				    "min_batches is the budget of window=auto; give window=auto");
	if (s != NULL) {
		if (query_parse_int("window", s, 1, &v, err) < 0) {
			/* the integer grammar's message, plus the other form it may take */
			if (err != NULL && strlen(err->message) + 11 < sizeof(err->message))
				strcat(err->message, " (or auto)");
			return -EINVAL;
		}
		*window = v;
	}
	return 0;
}
