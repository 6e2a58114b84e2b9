/*
 * query_drift: GET /v1/runs/{run}/drift, the comparison metrics of
 * /compare at every stored entry of a step range, per layer, merged to at
 * most `points` points by their maximum (docs/API.md, "Drift").
 *
 * Steps are taken in chunks: per layer and chunk the precise window of
 * every step (query_slide.c: the window's pooled rows slid along, each
 * merged O(1) times however wide the window), then the EMA at those
 * steps (the worker's arrays, or the simulated EMA walked over the chunk,
 * resuming from the replay's checkpoints), so that memory stays within a
 * chunk's arrays however long the range. With precise=snapshot:LABEL the
 * reference is the snapshot's layer at every step (no window is read);
 * with precise=worker:NAME it is that worker's EMA at each step
 * (query_ref.c).
 */
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"
#include "replay.h"

/* Steps per chunk: a chunk holds the precise mean and var of each of its steps. */
#define DRIFT_CHUNK 256
#define N_METRICS 3

static const char *const metric_names[N_METRICS] = { "mean_err", "var_err", "kl" };

struct drift_layer {
	int64_t id;
	char *name;
	size_t channels;
};

struct drift {
	struct store_reader *r;
	struct replay_cache *cache;
	int64_t run_id, domain_id, window;
	bool window_auto; /* window=auto: each entry's window from autow */
	int64_t min_batches;
	struct query_auto autow;
	bool sim;
	double momentum;
	const char *worker; /* NULL: the first by name at each step */
	/* the entries of the range */
	int64_t *step, *width;
	size_t n, cap;
	/* the run's layers, by id (the order they were first uploaded) */
	struct drift_layer *layers;
	size_t n_layers;
	double *metric; /* [n_layers][n][N_METRICS], NAN: no value */
	char **first;	/* [n] without `worker`: the first worker by name at each entry */
	double *bound;	/* [n]: largest sim_error_bound over layers */
	bool *kept;	/* [n]: the entry's metrics came from the writer's rows */

	struct query_ref ref; /* the precise side: a window, a snapshot or a worker */
};

static int add_entry(void *ctx, int64_t step, int64_t width)
{
	struct drift *d = ctx;

	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 256;
		int64_t *s = realloc(d->step, cap * sizeof(*s)), *w;

		if (s == NULL)
			return -ENOMEM;
		d->step = s;
		w = realloc(d->width, cap * sizeof(*w));
		if (w == NULL)
			return -ENOMEM;
		d->width = w;
		d->cap = cap;
	}
	d->step[d->n] = step;
	d->width[d->n] = width;
	d->n++;
	return 0;
}

static int add_layer(void *ctx, const struct store_item *it)
{
	struct drift *d = ctx;
	struct drift_layer *p = realloc(d->layers, (d->n_layers + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	d->layers = p;
	p += d->n_layers;
	p->id = it->id;
	p->channels = (size_t)it->layer.channels;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	d->n_layers++;
	return 0;
}

static int layer_cmp_id(const void *a, const void *b)
{
	const struct drift_layer *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

/* The index of `step` among d's entries [lo, hi), or -1. */
static long find_step(const struct drift *d, size_t lo, size_t hi, int64_t step)
{
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->step[mid] < step)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->n && d->step[lo] == step ? (long)lo : -1;
}

/* The exclusive low end of the precise window ending at `step`. */
static int64_t window_low(const struct drift *d, int64_t step)
{
	return query_window_low(d->window_auto ? &d->autow : NULL, d->window, step);
}

/* --- one layer, one chunk ------------------------------------------------------- */

struct chunk {
	struct drift *d;
	const struct drift_layer *l;
	size_t first, count;  /* entries [first, first + count) */
	double *pmean, *pvar; /* [count][channels]: the precise window at each entry */
	bool *has_precise;    /* [count] */
	struct query_slide slide; /* the precise window, slid along the layer's rows */
	bool slide_on;
	double *pend;		  /* [2 * channels]: the newest step's row, pooled over domains */
	int64_t pend_step, pend_n;
	bool pend_have;
	double *row;	   /* [2 * channels] scratch */
	double *ema;	   /* [2 * channels] scratch */
	size_t lm;	   /* index of (layer, entry) metrics: layer * n */
	int64_t ema_rowid; /* worker EMA walk: the row picked for the current step */
	int64_t ema_step;
	bool ema_have;

	const double *ref_mean, *ref_var; /* a snapshot: the reference at every entry */
};

static void compare_at(struct chunk *k, size_t idx, const double *mean, const double *var,
		       double bound)
{
	struct drift *d = k->d;
	size_t c = k->l->channels, j = idx - k->first;
	struct stats_cmp cmp;
	double *m = &d->metric[(k->lm + idx) * N_METRICS];

	if (!k->has_precise[j])
		return;
	if (k->ref_mean != NULL)
		stats_compare(c, mean, var, k->ref_mean, k->ref_var, &cmp);
	else
		stats_compare(c, mean, var, k->pmean + j * c, k->pvar + j * c, &cmp);
	m[0] = cmp.mean_err;
	m[1] = cmp.var_err;
	m[2] = cmp.kl;
	if (d->bound != NULL && bound > d->bound[idx])
		d->bound[idx] = bound;
}

/*
 * The newest step's row is complete: push it into the window (which drops
 * the rows that left it) and, at an entry of the chunk, take the window's
 * estimate there.
 */
static int window_push(struct chunk *k)
{
	size_t c = k->l->channels;
	long idx;

	if (!k->pend_have)
		return 0;
	k->pend_have = false;
	if (query_slide_push(&k->slide, k->pend_step, k->pend_n, k->pend, k->pend + c) < 0)
		return -ENOMEM;
	idx = find_step(k->d, k->first, k->first + k->count, k->pend_step);
	if (idx >= 0) {
		size_t j = (size_t)idx - k->first;

		query_slide_estimate(&k->slide, k->pmean + j * c, k->pvar + j * c);
		k->has_precise[j] = true;
	}
	return 0;
}

static int window_row(void *ctx, const struct store_row *row)
{
	struct chunk *k = ctx;
	size_t c = k->l->channels, ch;

	if (store_row_read(k->d->r, STORE_BLOB_AGG, row->rowid, c, 0, c, k->row) < 0 ||
	    store_row_read(k->d->r, STORE_BLOB_AGG, row->rowid, c, c, c, k->row + c) < 0)
		return -EIO;
	if (k->pend_have && k->pend_step == row->step) {
		/* another domain at the same step (domain "*") */
		for (ch = 0; ch < c; ch++) {
			int64_t n = k->pend_n;

			stats_merge1(&n, &k->pend[ch], &k->pend[c + ch], row->n, k->row[ch],
				     k->row[c + ch]);
		}
		k->pend_n += row->n;
		return 0;
	}
	if (window_push(k) < 0)
		return -ENOMEM;
	memcpy(k->pend, k->row, 2 * c * sizeof(double));
	k->pend_step = row->step;
	k->pend_n = row->n;
	k->pend_have = true;
	return 0;
}

/* The reference worker's EMA at an entry: the precise side there. */
static int ref_worker_row(void *ctx, const struct store_row *row)
{
	struct chunk *k = ctx;
	size_t c = k->l->channels, j;
	long idx = find_step(k->d, k->first, k->first + k->count, row->step);

	if (idx < 0)
		return 0;
	j = (size_t)idx - k->first;
	/* one read of the blob (mean, then var), as ema_flush() does */
	if (store_row_read(k->d->r, STORE_BLOB_EMA, row->rowid, c, 0, 2 * c, k->row) < 0)
		return -EIO;
	memcpy(k->pmean + j * c, k->row, c * sizeof(double));
	memcpy(k->pvar + j * c, k->row + c, c * sizeof(double));
	k->has_precise[j] = true;
	return 0;
}

static int sim_state(void *ctx, int64_t step, const double *mean, const double *var, double bound)
{
	struct chunk *k = ctx;
	long idx = find_step(k->d, k->first, k->first + k->count, step);

	if (idx >= 0)
		compare_at(k, (size_t)idx, mean, var, bound);
	return 0;
}

static int add_first(void *ctx, int64_t step, const char *worker)
{
	struct drift *d = ctx;
	long idx = find_step(d, 0, d->n, step);

	if (idx >= 0 && (d->first[idx] = strdup(worker)) == NULL)
		return -ENOMEM;
	return 0;
}

/* Worker EMA rows by step (then worker): keep the wanted one per step. */
static int ema_flush(struct chunk *k)
{
	size_t c = k->l->channels;
	long idx;

	if (!k->ema_have)
		return 0;
	k->ema_have = false;
	idx = find_step(k->d, k->first, k->first + k->count, k->ema_step);
	if (idx < 0)
		return 0;
	if (store_row_read(k->d->r, STORE_BLOB_EMA, k->ema_rowid, c, 0, 2 * c, k->ema) < 0)
		return -EIO;
	compare_at(k, (size_t)idx, k->ema, k->ema + c, 0.0);
	return 0;
}

static int ema_row(void *ctx, const struct store_row *row)
{
	struct chunk *k = ctx;

	if (k->ema_have && k->ema_step == row->step)
		return 0; /* the first worker by name already gave this step */
	if (k->d->first != NULL) {
		/* without worker=, the step's first worker by name, as /compare takes */
		long idx = find_step(k->d, k->first, k->first + k->count, row->step);

		if (idx < 0 || k->d->first[idx] == NULL ||
		    strcmp(k->d->first[idx], row->worker) != 0)
			return 0;
	}
	if (ema_flush(k) < 0)
		return -EIO;
	k->ema_have = true;
	k->ema_step = row->step;
	k->ema_rowid = row->rowid;
	return 0;
}

static void chunk_free(struct chunk *k)
{
	if (k->slide_on)
		query_slide_free(&k->slide);
	free(k->pend);
	free(k->pmean);
	free(k->has_precise);
	free(k->row);
}

static int layer_chunk(struct drift *d, size_t li, size_t first, size_t count)
{
	const struct drift_layer *l = &d->layers[li];
	size_t c = l->channels;
	struct chunk k = { .d = d, .l = l, .first = first, .count = count, .lm = li * d->n };
	int64_t lo = d->step[first], hi = d->step[first + count - 1];
	size_t j;
	int rc = 0;

	if (d->ref.kind == QUERY_REF_SNAPSHOT) {
		const struct store_snapshot_layer *sl = query_ref_layer(&d->ref, l->name, c);

		if (sl == NULL)
			return 0; /* not in the snapshot: no value */
		k.ref_mean = sl->mean;
		k.ref_var = sl->var;
	} else {
		k.pmean = malloc(2 * count * c * sizeof(double));
	}
	k.has_precise = calloc(count, sizeof(bool));
	k.row = malloc(4 * c * sizeof(double));
	if ((k.pmean == NULL && k.ref_mean == NULL) || k.has_precise == NULL || k.row == NULL) {
		chunk_free(&k);
		return -ENOMEM;
	}
	k.pvar = k.pmean ? k.pmean + count * c : NULL;
	k.ema = k.row + 2 * c;
	if (d->ref.kind == QUERY_REF_SNAPSHOT) {
		for (j = 0; j < count; j++)
			k.has_precise[j] = true;
	} else if (d->ref.kind == QUERY_REF_WORKER) {
		rc = store_layer_emas(d->r, d->run_id, d->domain_id, l->id, d->ref.name, lo - 1, hi,
				      ref_worker_row, &k);
	} else {
		struct query_slide_rule rule = { d->window, d->window_auto ? &d->autow : NULL };

		k.pend = malloc(2 * c * sizeof(double));
		if (k.pend == NULL || query_slide_init(&k.slide, c, &rule) < 0) {
			chunk_free(&k);
			return -ENOMEM;
		}
		k.slide_on = true;
		/* lo - window cannot overflow: lo >= 0 and window >= 1 */
		rc = store_layer_aggs(d->r, d->run_id, d->domain_id, l->id, window_low(d, lo), hi,
				      window_row, &k);
		if (rc == 0)
			rc = window_push(&k);
	}
	if (rc == 0 && d->sim)
		rc = replay_layer_steps(d->cache, d->r, d->run_id, d->domain_id, l->id, c,
					d->momentum, lo - 1, hi, sim_state, &k);
	else if (rc == 0)
		rc = store_layer_emas(d->r, d->run_id, d->domain_id, l->id, d->worker, lo - 1, hi,
				      ema_row, &k);
	if (rc == 0 && !d->sim)
		rc = ema_flush(&k);
	chunk_free(&k);
	return rc;
}

/* --- the writer's per-step metrics ---------------------------------------------- */

/* The layer index of a layer id (d->layers is sorted by id), or -1. */
static long layer_index(const struct drift *d, int64_t id)
{
	size_t lo = 0, hi = d->n_layers;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if (d->layers[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo < d->n_layers && d->layers[lo].id == id ? (long)lo : -1;
}

/*
 * A row of the writer's drift metrics: the entry's values when they are
 * the ones asked for (the first worker by name, or the named worker when
 * it is that one, or no worker EMA there at all).
 */
static int kept_row(void *ctx, const struct store_drift_row *row)
{
	struct drift *d = ctx;
	long idx = find_step(d, 0, d->n, row->step);
	size_t i, m;

	if (idx < 0)
		return 0;
	if (d->worker != NULL && row->worker != NULL && strcmp(d->worker, row->worker) != 0)
		return 0; /* another worker's EMA: computed below */
	d->kept[idx] = true;
	for (i = 0; i < row->n; i++) {
		long li = layer_index(d, row->layer_id[i]);

		if (li < 0)
			continue;
		for (m = 0; m < N_METRICS; m++)
			d->metric[((size_t)li * d->n + (size_t)idx) * N_METRICS + m] =
				row->metric[3 * i + m];
	}
	return 0;
}

/*
 * What the writer keeps per entry (store_drift.c) is /drift's default
 * question: a worker EMA against the entry's own statistics (window 1).
 */
static bool kept_applies(const struct drift *d)
{
	return !d->sim && d->ref.kind == QUERY_REF_WINDOW && !d->window_auto && d->window == 1;
}

/* The entries [first, first + count) without kept metrics: each layer, chunk by chunk. */
static int compute_entries(struct drift *d, size_t first, size_t count)
{
	size_t li, i;
	int rc;

	if (d->first != NULL) {
		rc = store_ema_first_workers(d->r, d->run_id, d->domain_id, d->step[first],
					     d->step[first + count - 1], add_first, d);
		if (rc < 0)
			return rc;
	}
	for (li = 0; li < d->n_layers; li++)
		for (i = first; i < first + count; i += DRIFT_CHUNK) {
			size_t k = first + count - i < DRIFT_CHUNK ? first + count - i : DRIFT_CHUNK;

			rc = layer_chunk(d, li, i, k);
			if (rc < 0)
				return rc;
		}
	return 0;
}

/* Every entry's metrics: the writer's rows where they answer, computed elsewhere. */
static int drift_metrics(struct drift *d)
{
	size_t i = 0;
	int rc;

	if (d->n == 0)
		return 0;
	d->kept = calloc(d->n, sizeof(*d->kept));
	if (d->kept == NULL)
		return -ENOMEM;
	if (kept_applies(d)) {
		rc = store_drift_steps(d->r, d->run_id, d->domain_id, d->step[0], d->step[d->n - 1],
				       kept_row, d);
		if (rc < 0)
			return rc;
	}
	while (i < d->n) {
		size_t j = i;

		if (d->kept[i]) {
			i++;
			continue;
		}
		while (j < d->n && !d->kept[j])
			j++;
		rc = compute_entries(d, i, j - i);
		if (rc < 0)
			return rc;
		i = j;
	}
	return 0;
}

/*
 * The entries of [from, to]: up to the writer's mark they are its rows
 * (one each, store_drift.c), read instead of every layer's index entries;
 * after it, from the aggregates' index.
 */
static int list_entries(struct drift *d, int64_t from, int64_t to)
{
	int64_t through;
	int rc;

	if (!kept_applies(d) || to < from)
		return store_entries_foreach(d->r, d->run_id, d->domain_id, from, to, add_entry, d);
	rc = store_drift_through(d->r, d->run_id, d->domain_id, &through);
	if (rc == -ENOENT || through < from)
		return store_entries_foreach(d->r, d->run_id, d->domain_id, from, to, add_entry, d);
	if (rc < 0)
		return rc;
	rc = store_drift_entries(d->r, d->run_id, d->domain_id, from, through < to ? through : to,
				 add_entry, d);
	if (rc == 0 && through < to)
		rc = store_entries_foreach(d->r, d->run_id, d->domain_id, through + 1, to, add_entry,
					   d);
	return rc;
}

/* --- the reply ----------------------------------------------------------------------- */

/* The maximum of v[first * step], ..., v[last * step], ignoring NANs (NAN: none). */
static double group_max(const double *v, size_t first, size_t last, size_t step)
{
	double best = NAN;
	size_t i;

	for (i = first; i <= last; i++) {
		double x = v[i * step];

		if (!isnan(x) && (isnan(best) || x > best))
			best = x;
	}
	return best;
}

static json_t *num_or_null(double x)
{
	return isnan(x) ? json_null() : query_json_num(x);
}

static int drift_json(struct drift *d, size_t stride, json_t *doc)
{
	json_t *steps = json_array(), *res = json_array(), *order = json_array(),
	       *layers = json_object(), *overall = json_object(), *bounds = NULL;
	double *mean_over = NULL;
	size_t *count_over = NULL;
	size_t i, li, m;
	int rc = -ENOMEM;

	if (steps == NULL || res == NULL || order == NULL || layers == NULL || overall == NULL)
		goto done;
	if (d->sim && (bounds = json_array()) == NULL)
		goto done;
	/*
	 * per entry: the mean over the layers with a value, per metric, summed
	 * layer by layer (each sum in layer order, as before: the same bits),
	 * walking the metrics in their order in memory
	 */
	mean_over = malloc((d->n ? d->n : 1) * N_METRICS * sizeof(double));
	count_over = calloc((d->n ? d->n : 1) * N_METRICS, sizeof(size_t));
	if (mean_over == NULL || count_over == NULL)
		goto done;
	for (i = 0; i < d->n * N_METRICS; i++)
		mean_over[i] = 0.0;
	for (li = 0; li < d->n_layers; li++) {
		const double *v = d->metric + li * d->n * N_METRICS;

		for (i = 0; i < d->n * N_METRICS; i++)
			if (!isnan(v[i])) {
				mean_over[i] += v[i];
				count_over[i]++;
			}
	}
	for (i = 0; i < d->n * N_METRICS; i++)
		mean_over[i] = count_over[i] ? mean_over[i] / (double)count_over[i] : NAN;
	for (i = 0; i < d->n; i += stride) {
		size_t last = i + stride - 1 < d->n ? i + stride - 1 : d->n - 1, k;
		int64_t w = 0;

		for (k = i; k <= last; k++)
			w += d->width[k];
		if (json_array_append_new(steps, json_integer(d->step[last])) < 0 ||
		    json_array_append_new(res, json_integer(w)) < 0 ||
		    (bounds != NULL &&
		     json_array_append_new(bounds, num_or_null(group_max(d->bound, i, last, 1))) <
			     0))
			goto done;
	}
	for (m = 0; m < N_METRICS; m++) {
		json_t *a = json_array();

		if (a == NULL || json_object_set_new(overall, metric_names[m], a) < 0)
			goto done;
		for (i = 0; i < d->n; i += stride) {
			size_t last = i + stride - 1 < d->n ? i + stride - 1 : d->n - 1;

			if (json_array_append_new(a, num_or_null(group_max(mean_over + m, i, last,
									   N_METRICS))) < 0)
				goto done;
		}
	}
	for (li = 0; li < d->n_layers; li++) {
		json_t *o = json_object();
		bool any = false;

		if (o == NULL)
			goto done;
		for (m = 0; m < N_METRICS; m++) {
			json_t *a = json_array();
			const double *v = d->metric + li * d->n * N_METRICS + m;

			if (a == NULL || json_object_set_new(o, metric_names[m], a) < 0) {
				json_decref(o);
				goto done;
			}
			for (i = 0; i < d->n; i += stride) {
				size_t last = i + stride - 1 < d->n ? i + stride - 1 : d->n - 1;
				double x = group_max(v, i, last, N_METRICS);

				any = any || !isnan(x);
				if (json_array_append_new(a, num_or_null(x)) < 0) {
					json_decref(o);
					goto done;
				}
			}
		}
		/* only layers with a value somewhere in the range */
		if (!any) {
			json_decref(o);
			continue;
		}
		if (json_object_set_new(layers, d->layers[li].name, o) < 0 ||
		    json_array_append_new(order, json_string(d->layers[li].name)) < 0)
			goto done;
	}
	json_object_set_new(doc, "step", steps);
	json_object_set_new(doc, "resolution", res);
	json_object_set_new(doc, "layer_order", order);
	json_object_set_new(doc, "layers", layers);
	json_object_set_new(doc, "overall", overall);
	if (bounds != NULL)
		json_object_set_new(doc, "sim_error_bound", bounds);
	steps = res = order = layers = overall = bounds = NULL;
	rc = 0;
done:
	free(mean_over);
	free(count_over);
	json_decref(steps);
	json_decref(res);
	json_decref(order);
	json_decref(layers);
	json_decref(overall);
	json_decref(bounds);
	return rc;
}

int query_drift(struct store_reader *r, struct replay_cache *cache, const char *run,
		const struct query_params *p, json_t **out, struct bn_error *err)
{
	const char *domain = p->domain ? p->domain : "default";
	struct drift d = { .r = r, .cache = cache, .domain_id = -1, .momentum = 0.1 };
	long long from, to, points;
	int64_t window;
	size_t li, i, stride = 1;
	json_t *doc = NULL;
	int64_t latest;
	int rc;

	*out = NULL;
	if (query_ref_parse(p, &d.ref, err) < 0)
		return -EINVAL;
	if (query_parse_opt_int("from", p->from, 0, 0, &from, err) < 0 ||
	    query_parse_opt_int("to", p->to, 0, -1, &to, err) < 0 ||
	    query_window_parse_width(p->window, p->min_batches, &window, &d.window_auto,
				     &d.min_batches, err) < 0 ||
	    query_parse_opt_int("points", p->points, 1, 500, &points, err) < 0 ||
	    query_check_domain(domain, err) < 0)
		return -EINVAL;
	if (p->to != NULL && from > to)
		return bn_error_set(err, 422, BN_E_INVALID, "from",
				    "from (%lld) is after to (%lld)", from, to);
	if (query_parse_ema(p, &d.sim, &d.momentum, err) < 0)
		return -EINVAL;
	if (!d.sim && strcmp(domain, QUERY_DOMAIN_ALL) == 0)
		return bn_error_set(err, 422, BN_E_INVALID, "domain",
				    "a worker EMA belongs to one domain: domain * needs ema=sim");
	if (!d.sim && p->worker != NULL && !ingest_name_valid(p->worker))
		return bn_error_set(err, 422, BN_E_INVALID, "worker",
				    "worker names are 1 to 128 of [A-Za-z0-9._-]");
	if (d.ref.kind == QUERY_REF_WORKER && strcmp(domain, QUERY_DOMAIN_ALL) == 0)
		return bn_error_set(
			err, 422, BN_E_INVALID, "domain",
			"a worker EMA belongs to one domain: precise=worker:%s needs one",
			d.ref.name);
	if (d.ref.kind == QUERY_REF_WORKER && !d.sim && p->worker == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "worker",
				    "precise=worker:%s compares another worker's EMA with it: "
				    "name that one with worker=",
				    d.ref.name);
	d.window = window;
	d.worker = d.sim ? NULL : p->worker;

	store_read_begin(r);
	rc = query_run_domain_find(r, run, domain, &d.run_id, &d.domain_id, err);
	if (rc < 0)
		goto done;
	rc = query_ref_load(r, run, d.run_id, domain, d.domain_id, &d.ref, err);
	if (rc < 0)
		goto done;
	if (p->to == NULL) {
		rc = store_latest_step(r, d.run_id, d.domain_id, &latest);
		to = rc == 0 ? latest : -1;
	}
	rc = list_entries(&d, from, to);
	if (rc == 0)
		rc = store_layers_foreach(r, d.run_id, add_layer, &d);
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
		goto done;
	}
	qsort(d.layers, d.n_layers, sizeof(*d.layers), layer_cmp_id);
	if (d.window_auto && d.n > 0) {
		rc = query_auto_build(r, d.run_id, d.domain_id, d.step[0], d.step[d.n - 1],
				      d.min_batches, &d.autow);
		if (rc < 0) {
			rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
			goto done;
		}
	}
	if (!d.sim && d.worker == NULL && (d.first = calloc(d.n + 1, sizeof(*d.first))) == NULL) {
		rc = query_oom(err);
		goto done;
	}
	d.metric = malloc((d.n * d.n_layers * N_METRICS + 1) * sizeof(double));
	d.bound = d.sim ? calloc(d.n + 1, sizeof(double)) : NULL;
	if (d.metric == NULL || (d.sim && d.bound == NULL)) {
		rc = query_oom(err);
		goto done;
	}
	for (i = 0; i < d.n * d.n_layers * N_METRICS; i++)
		d.metric[i] = NAN;
	rc = drift_metrics(&d);
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
		goto done;
	}
	if ((size_t)points < d.n)
		stride = (d.n + (size_t)points - 1) / (size_t)points;
	doc = json_pack("{s:s, s:s, s:s, s:o, s:I}", "run", run, "domain", domain, "ema",
			d.sim ? "sim" : "worker", "window",
			d.window_auto ? json_string("auto") : json_integer(window), "stride",
			(json_int_t)stride);
	if (doc != NULL && d.window_auto)
		json_object_set_new(doc, "min_batches", json_integer(d.min_batches));
	if (doc == NULL || drift_json(&d, stride, doc) < 0) {
		rc = query_oom(err);
		goto done;
	}
	if (d.sim)
		json_object_set_new(doc, "momentum", json_real(d.momentum));
	else
		json_object_set_new(doc, "worker", d.worker ? json_string(d.worker) : json_null());
	if (d.ref.kind != QUERY_REF_WINDOW) {
		json_object_del(doc, "window"); /* the reference has none */
		if (query_ref_json(doc, &d.ref) < 0) {
			rc = query_oom(err);
			goto done;
		}
	}
	*out = doc;
	doc = NULL;
	rc = 0;
done:
	store_read_end(r);
	json_decref(doc);
	query_ref_free(&d.ref);
	for (li = 0; li < d.n_layers; li++)
		free(d.layers[li].name);
	free(d.layers);
	free(d.step);
	free(d.width);
	free(d.metric);
	free(d.bound);
	free(d.kept);
	for (i = 0; d.first != NULL && i < d.n; i++)
		free(d.first[i]);
	free(d.first);
	query_auto_free(&d.autow);
	return rc;
}
