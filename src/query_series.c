/*
 * query_series: GET /v1/runs/{run}/series, one channel of one layer over a
 * step range as parallel arrays: the batch statistics of every step, the
 * precise statistics of the window ending there, the worker's EMA and the
 * EMA simulated with a momentum (docs/API.md, "Series").
 *
 * Every step is read once: the sliding window is a two-stack queue, and
 * when the range starts early enough the simulated EMA is replayed from the
 * points already read rather than by reading the rows again.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"
#include "replay.h"

/* The reply's parallel arrays. */
#define N_COLUMNS 11

/* One channel's pooled statistics at one step. */
struct series_point {
	int64_t step;
	int64_t n;
	double mean, m2;
	int64_t width; /* steps covered: 1, a bucket's width, or summed when merged */
};

static struct series_point series_point_merge(struct series_point a, struct series_point b)
{
	stats_merge1(&a.n, &a.mean, &a.m2, b.n, b.mean, b.m2);
	a.width += b.width;
	return a;
}

struct series_walk {
	struct store_reader *r;
	size_t channels, channel;
	struct series_point *pts;
	size_t n, cap;
	bool has_buckets;
	int rc;
};

static int series_row(void *ctx, const struct store_row *row)
{
	struct series_walk *s = ctx;
	struct series_point v = { .step = row->step, .n = row->n, .width = row->width };

	if (store_row_read(s->r, STORE_BLOB_AGG, row->rowid, s->channels, s->channel, 1, &v.mean) <
		    0 ||
	    store_row_read(s->r, STORE_BLOB_AGG, row->rowid, s->channels, s->channels + s->channel,
			   1, &v.m2) < 0)
		return -EIO;
	if (s->n > 0 && s->pts[s->n - 1].step == row->step) {
		/* another domain at the same step (domain "*") */
		int64_t step = row->step;

		int64_t width = s->pts[s->n - 1].width > v.width ? s->pts[s->n - 1].width : v.width;

		s->pts[s->n - 1] = series_point_merge(s->pts[s->n - 1], v);
		s->pts[s->n - 1].step = step;
		s->pts[s->n - 1].width = width; /* domains side by side, not one after the other */
		if (width > 1)
			s->has_buckets = true;
		return 0;
	}
	if (v.width > 1)
		s->has_buckets = true;
	if (s->n == s->cap) {
		size_t cap = s->cap ? 2 * s->cap : 256;
		struct series_point *p = realloc(s->pts, cap * sizeof(*p));

		if (p == NULL)
			return -ENOMEM;
		s->pts = p;
		s->cap = cap;
	}
	s->pts[s->n++] = v;
	return 0;
}

/*
 * Merge over the sliding window (step - window, step] for every point, with
 * a two-stack queue: each point is merged O(1) times on average however
 * wide the window is. out[i] receives the window ending at pts[i].
 */
static int sliding_window(const struct series_point *pts, size_t n, int64_t window,
			  const struct query_auto *autow, struct series_point *out)
{
	struct series_point *front =
		malloc((n + 1) * sizeof(*front)); /* suffix merges, oldest last */
	struct series_point back = { 0 };
	size_t nf = 0, head = 0, back_first = 0, i, k;

	if (front == NULL)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		/* pop points that left the window (step - window, step] */
		int64_t low = query_window_low(autow, window, pts[i].step);

		back = series_point_merge(back, pts[i]);
		while (head <= i && pts[head].step <= low) {
			if (nf == 0) {
				/* move the back stack [back_first, i] to the front, as suffix
				 * merges */
				struct series_point acc = { 0 };

				for (k = i + 1; k > back_first; k--) {
					acc = series_point_merge(pts[k - 1], acc);
					front[nf++] = acc;
				}
				back_first = i + 1;
				back = (struct series_point){ 0 };
			}
			nf--;
			head++;
		}
		out[i] = nf > 0 ? series_point_merge(front[nf - 1], back) : back;
		out[i].step = pts[i].step;
	}
	free(front);
	return 0;
}

/* Values per step handed back by replay_channel / the EMA walk. */
struct step_values {
	int64_t *step;
	double *mean, *var, *bound;
	size_t n, cap;
	int64_t last_step;
	bool first_only; /* keep the first value seen per step */
};

static int step_values_add(struct step_values *v, int64_t step, double mean, double var,
			   double bound)
{
	if (v->first_only && v->n > 0 && v->step[v->n - 1] == step)
		return 0;
	if (v->n == v->cap) {
		size_t cap = v->cap ? 2 * v->cap : 256;
		int64_t *s = realloc(v->step, cap * sizeof(*s));
		double *pa, *pb, *pc;

		if (s == NULL)
			return -ENOMEM;
		v->step = s;
		pa = realloc(v->mean, cap * sizeof(*pa));
		if (pa == NULL)
			return -ENOMEM;
		v->mean = pa;
		pb = realloc(v->var, cap * sizeof(*pb));
		if (pb == NULL)
			return -ENOMEM;
		v->var = pb;
		pc = realloc(v->bound, cap * sizeof(*pc));
		if (pc == NULL)
			return -ENOMEM;
		v->bound = pc;
		v->cap = cap;
	}
	v->step[v->n] = step;
	v->mean[v->n] = mean;
	v->var[v->n] = var;
	v->bound[v->n] = bound;
	v->n++;
	return 0;
}

static void step_values_free(struct step_values *v)
{
	free(v->step);
	free(v->mean);
	free(v->var);
	free(v->bound);
}

static int sim_point(void *ctx, int64_t step, double mean, double var, double bound)
{
	return step_values_add(ctx, step, mean, var, bound);
}

struct ema_walk {
	struct store_reader *r;
	size_t channels, channel;
	struct step_values *v;
};

static int ema_row(void *ctx, const struct store_row *row)
{
	struct ema_walk *e = ctx;
	double m, var;

	if (e->v->n > 0 && e->v->step[e->v->n - 1] == row->step)
		return 0; /* the first worker by name already gave this step */
	if (store_row_read(e->r, STORE_BLOB_EMA, row->rowid, e->channels, e->channel, 1, &m) < 0 ||
	    store_row_read(e->r, STORE_BLOB_EMA, row->rowid, e->channels, e->channels + e->channel,
			   1, &var) < 0)
		return -EIO;
	return step_values_add(e->v, row->step, m, var, 0.0);
}

/* The value of v at `step`, advancing the cursor *k (steps ascend). */
static bool step_lookup(const struct step_values *v, size_t *k, int64_t step, double *mean,
			double *var, double *bound)
{
	while (*k < v->n && v->step[*k] < step)
		(*k)++;
	if (*k < v->n && v->step[*k] == step) {
		*mean = v->mean[*k];
		*var = v->var[*k];
		*bound = v->bound[*k];
		return true;
	}
	return false;
}

int query_series(struct store_reader *r, struct replay_cache *cache, const char *run,
		 const struct query_params *p, json_t **out, struct bn_error *err)
{
	const char *domain = p->domain ? p->domain : "default";
	struct series_walk walk = { .r = r };
	struct step_values ema = { .first_only = true }, sim = { 0 };
	struct series_point *precise = NULL;
	json_t *doc = NULL, *columns[N_COLUMNS] = { NULL };
	static const char *const column_names[N_COLUMNS] = {
		"step",	   "batch_mean", "batch_var", "precise_mean", "precise_var",	"ema_mean",
		"ema_var", "sim_mean",	 "sim_var",   "resolution",   "sim_error_bound"
	};
	long long channel, from, to, stride, points;
	int64_t window, min_batches, lookback;
	bool window_auto;
	struct query_auto autow = { 0 };
	double momentum;
	int64_t run_id, domain_id = -1, layer_id, latest;
	size_t channels, i, ema_at = 0, sim_at = 0, first_out;
	int rc, col;

	*out = NULL;
	if (p->n_layers != 1)
		return bn_error_set(err, 400, BN_E_PARAMETER, "layer",
				    "series needs exactly one layer= parameter");
	if (p->channel == NULL)
		return bn_error_set(err, 400, BN_E_PARAMETER, "channel", "series needs channel=");
	if (query_parse_int("channel", p->channel, 0, &channel, err) < 0 ||
	    query_parse_opt_int("from", p->from, 0, 0, &from, err) < 0 ||
	    query_parse_opt_int("to", p->to, 0, -1, &to, err) < 0 ||
	    query_window_parse_width(p->window, p->min_batches, &window, &window_auto, &min_batches,
				     err) < 0 ||
	    query_parse_opt_int("stride", p->stride, 1, 1, &stride, err) < 0 ||
	    query_parse_opt_int("points", p->points, 1, 0, &points, err) < 0 ||
	    query_parse_momentum(p->momentum, &momentum, err) < 0 ||
	    query_check_domain(domain, err) < 0)
		return -EINVAL;
	if (p->to != NULL && from > to)
		return bn_error_set(err, 422, BN_E_INVALID, "from",
				    "from (%lld) is after to (%lld)", from, to);
	if (p->worker != NULL && !ingest_name_valid(p->worker))
		return bn_error_set(err, 422, BN_E_INVALID, "worker",
				    "worker names are 1 to 128 of [A-Za-z0-9._-]");

	store_read_begin(r);
	rc = query_run_domain_find(r, run, domain, &run_id, &domain_id, err);
	if (rc < 0)
		goto done;
	rc = store_layer_find(r, run_id, p->layers[0], &layer_id, &channels);
	if (rc < 0) {
		rc = rc == -ENOENT ? bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
						  "run %s has no layer %s", run, p->layers[0])
				   : query_read_failed(err);
		goto done;
	}
	if ((size_t)channel >= channels) {
		rc = bn_error_set(err, 422, BN_E_INVALID, "channel",
				  "layer %s has %zu channels; channel %lld is out of range",
				  p->layers[0], channels, channel);
		goto done;
	}
	if (p->to == NULL) {
		rc = store_latest_step(r, run_id, domain_id, &latest);
		to = rc == 0 ? latest : -1;
		rc = 0;
	}

	/* batch and precise: the window reaches window-1 steps before `from` */
	lookback = from - window;
	if (window_auto && to >= from) {
		rc = query_auto_build(r, run_id, domain_id, from, to, min_batches, &autow);
		if (rc < 0) {
			rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
			goto done;
		}
		lookback = autow.first_low;
	}
	walk.channels = channels;
	walk.channel = (size_t)channel;
	rc = store_layer_aggs(r, run_id, domain_id, layer_id, lookback < -1 ? -1 : lookback, to,
			      series_row, &walk);
	if (rc == 0 && walk.n > 0) {
		precise = malloc(walk.n * sizeof(*precise));
		rc = precise ? sliding_window(walk.pts, walk.n, window, window_auto ? &autow : NULL,
					      precise)
			     : -ENOMEM;
	}
	/* worker EMA (one domain only) and simulated EMA */
	if (rc == 0 && domain_id >= 0) {
		struct ema_walk ew = { r, channels, (size_t)channel, &ema };

		rc = store_layer_emas(r, run_id, domain_id, layer_id, p->worker, from - 1, to,
				      ema_row, &ew);
	}
	if (rc == 0 && lookback < 0 && !walk.has_buckets) {
		/*
		 * The walk above read every step up to `to`: replay from its points
		 * instead of reading the rows again (the same pooling and updates as
		 * replay_channel, so the same bits).
		 */
		double rm = 0.0, rv = 1.0;

		for (i = 0; i < walk.n && rc == 0; i++) {
			stats_ema_step(momentum, walk.pts[i].n, walk.pts[i].mean, walk.pts[i].m2,
				       &rm, &rv);
			if (walk.pts[i].step >= from)
				rc = step_values_add(&sim, walk.pts[i].step, rm, rv, 0.0);
		}
	} else if (rc == 0) {
		rc = replay_channel(cache, r, run_id, domain_id, layer_id, channels,
				    (size_t)channel, momentum, from - 1, to, sim_point, &sim);
	}
	if (rc < 0) {
		rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
		goto done;
	}

	for (col = 0; col < N_COLUMNS; col++) {
		columns[col] = json_array();
		if (columns[col] == NULL) {
			rc = query_oom(err);
			goto done;
		}
	}
	for (first_out = 0; first_out < walk.n && walk.pts[first_out].step < from; first_out++)
		;
	if (points > 0 && (size_t)points < walk.n - first_out)
		stride = (long long)((walk.n - first_out + (size_t)points - 1) / (size_t)points);
	/* Each point merges `stride` consecutive entries (the last one may hold fewer). */
	for (i = first_out; i < walk.n; i += (size_t)stride) {
		size_t last = i + (size_t)stride - 1 < walk.n ? i + (size_t)stride - 1 : walk.n - 1,
		       k;
		struct series_point batch = walk.pts[i];
		const struct series_point *win = &precise[last];
		double em, ev, eb, sm, sv, sb;
		bool has_ema, has_sim;

		for (k = i + 1; k <= last; k++)
			batch = series_point_merge(batch, walk.pts[k]);
		batch.step = walk.pts[last].step;
		has_ema = step_lookup(&ema, &ema_at, batch.step, &em, &ev, &eb);
		has_sim = step_lookup(&sim, &sim_at, batch.step, &sm, &sv, &sb);
		{
			json_t *cells[N_COLUMNS] = {
				json_integer(batch.step),
				query_json_num(batch.mean),
				query_json_num(batch.m2 / (double)batch.n),
				query_json_num(win->mean),
				query_json_num(win->m2 / (double)win->n),
				has_ema ? query_json_num(em) : json_null(),
				has_ema ? query_json_num(ev) : json_null(),
				has_sim ? query_json_num(sm) : json_null(),
				has_sim ? query_json_num(sv) : json_null(),
				json_integer(batch.width),
				has_sim ? json_real(sb) : json_null(),
			};

			for (col = 0; col < N_COLUMNS; col++) {
				if (json_array_append_new(columns[col], cells[col]) < 0) {
					rc = query_oom(err);
					goto done;
				}
			}
		}
	}
	doc = json_pack("{s:s, s:s, s:I, s:s, s:o, s:f, s:I}", "run", run, "layer", p->layers[0],
			"channel", (json_int_t)channel, "domain", domain, "window",
			window_auto ? json_string("auto") : json_integer(window), "momentum",
			momentum, "stride", (json_int_t)stride);
	if (doc != NULL && window_auto)
		json_object_set_new(doc, "min_batches", json_integer(min_batches));
	if (doc == NULL) {
		rc = query_oom(err);
		goto done;
	}
	json_object_set_new(doc, "worker", p->worker ? json_string(p->worker) : json_null());
	for (col = 0; col < N_COLUMNS; col++) {
		json_object_set_new(doc, column_names[col], columns[col]);
		columns[col] = NULL;
	}
	*out = doc;
	rc = 0;
done:
	store_read_end(r);
	for (col = 0; col < N_COLUMNS; col++)
		json_decref(columns[col]);
	free(walk.pts);
	free(precise);
	query_auto_free(&autow);
	step_values_free(&ema);
	step_values_free(&sim);
	return rc;
}
