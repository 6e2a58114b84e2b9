/*
 * query_compare: GET /v1/runs/{run}/compare and GET /v1/runs/{run}/shift
 * (docs/API.md, "Comparison" and "Domains"). Both compare an estimate with
 * a reference, layer by layer, with stats_compare(): compare the EMA (the
 * worker's own, or one simulated with a momentum) with the precise
 * statistics of a window, or with a snapshot or another worker's EMA
 * (query_ref.c), shift the precise statistics of one domain with those of
 * another. One accumulator builds the per-layer and overall
 * metrics of both.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"
#include "query.h"
#include "query_private.h"
#include "replay.h"

static json_t *compare_json(const struct stats_cmp *c)
{
	return json_pack("{s:o, s:o, s:o, s:o, s:o, s:o}", "mean_err", query_json_num(c->mean_err),
			 "mean_err_max", query_json_num(c->mean_err_max), "var_err",
			 query_json_num(c->var_err), "var_err_max", query_json_num(c->var_err_max),
			 "kl", query_json_num(c->kl), "kl_max", query_json_num(c->kl_max));
}

/*
 * The metrics of one comparison, per layer and overall. compare and shift
 * answer the same shape: {"layers": {name: metrics}, "overall": metrics},
 * overall being the mean over the layers of their means and the maximum of
 * their maxima.
 */
struct compare_acc {
	json_t *layers; /* new reference, {name: metrics} */
	struct stats_cmp sum;
	size_t n;
};

static int compare_acc_init(struct compare_acc *acc)
{
	memset(acc, 0, sizeof(*acc));
	acc->layers = json_object();
	return acc->layers ? 0 : -ENOMEM;
}

/* Add a layer's metrics: into the reply's layers and into the overall sums. */
static int compare_acc_add(struct compare_acc *acc, const char *layer, const struct stats_cmp *c)
{
	struct stats_cmp *all = &acc->sum;

	all->mean_err += c->mean_err;
	all->var_err += c->var_err;
	all->kl += c->kl;
	if (c->mean_err_max > all->mean_err_max)
		all->mean_err_max = c->mean_err_max;
	if (c->var_err_max > all->var_err_max)
		all->var_err_max = c->var_err_max;
	if (c->kl_max > all->kl_max)
		all->kl_max = c->kl_max;
	acc->n++;
	return json_object_set_new(acc->layers, layer, compare_json(c)) < 0 ? -ENOMEM : 0;
}

/* A new reference to the overall metrics (NULL when out of memory). */
static json_t *compare_acc_overall(const struct compare_acc *acc)
{
	struct stats_cmp all = acc->sum;

	if (acc->n > 0) {
		all.mean_err /= (double)acc->n;
		all.var_err /= (double)acc->n;
		all.kl /= (double)acc->n;
	}
	return compare_json(&all);
}

/* The precise side's batches and precision, into layer l's metrics object. */
static int compare_precision(struct compare_acc *acc, const struct query_layer_acc *l,
			     double target_se)
{
	json_t *o = json_object_get(acc->layers, l->name);

	if (o == NULL || json_object_set_new(o, "batches", json_integer(l->agg.k)) < 0)
		return -ENOMEM;
	return query_precision_json(o, &l->agg, target_se);
}

static void compare_acc_free(struct compare_acc *acc)
{
	json_decref(acc->layers);
	acc->layers = NULL;
}

/*
 * Room for four arrays of c doubles (estimate mean and var, reference mean
 * and var) in *buf, grown as needed; *cap counts doubles. NULL on OOM, *buf
 * unchanged.
 */
static double *compare_buf(double **buf, size_t *cap, size_t c)
{
	if (4 * c > *cap) {
		double *nb = realloc(*buf, 4 * c * sizeof(double));

		if (nb == NULL)
			return NULL;
		*buf = nb;
		*cap = 4 * c;
	}
	return *buf;
}

/*
 * The 404 of a step without any worker EMA, saying where the newest one is
 * (a step= that names a PreciseBN pass's step, say, has none).
 */
static int no_ema_at(struct store_reader *r, int64_t run_id, int64_t domain_id, const char *domain,
		     int64_t step, struct bn_error *err)
{
	int64_t newest;

	if (domain_id >= 0 && store_ema_latest_step(r, run_id, domain_id, &newest) == 0)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
				    "no worker reported an EMA at step %lld in domain %s; the "
				    "newest step with one is %lld",
				    (long long)step, domain, (long long)newest);
	return bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
			    "no worker reported an EMA at step %lld in domain %s (none in this "
			    "domain)",
			    (long long)step, domain);
}

/* Worker EMA of one layer at one step: the row, when the worker sent one. */
struct ema_pick {
	int64_t rowid;
	bool found;
};

static int pick_ema(void *ctx, const struct store_row *row)
{
	struct ema_pick *p = ctx;

	if (!p->found) {
		p->rowid = row->rowid;
		p->found = true;
	}
	return 0;
}

/* --- compare with a snapshot or a worker (docs/API.md, "Comparing with a snapshot or a worker") */

/* One layer of the run, as compare_reference() walks them. */
struct ref_layer {
	int64_t id;
	char *name;
	size_t channels;
	bool wanted;
};

struct ref_layers {
	struct ref_layer *v;
	size_t n;
};

static int collect_ref_layer(void *ctx, const struct store_item *it)
{
	struct ref_layers *ls = ctx;
	struct ref_layer *p = realloc(ls->v, (ls->n + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	ls->v = p;
	p += ls->n;
	p->id = it->id;
	p->channels = (size_t)it->layer.channels;
	p->wanted = false;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	ls->n++;
	return 0;
}

static int ref_layer_cmp_id(const void *a, const void *b)
{
	const struct ref_layer *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

static void ref_layers_free(struct ref_layers *ls)
{
	size_t i;

	for (i = 0; i < ls->n; i++)
		free(ls->v[i].name);
	free(ls->v);
}

/*
 * The run's layers by id (the order they were first uploaded), those named
 * by layer= marked wanted (all without a filter); 404 for a name the run
 * does not have.
 */
static int ref_layers_read(struct store_reader *r, int64_t run_id, const char *run,
			   const struct query_params *p, struct ref_layers *ls,
			   struct bn_error *err)
{
	size_t i, j;
	int rc = store_layers_foreach(r, run_id, collect_ref_layer, ls);

	if (rc < 0)
		return rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
	qsort(ls->v, ls->n, sizeof(*ls->v), ref_layer_cmp_id);
	for (j = 0; j < ls->n; j++)
		ls->v[j].wanted = p->n_layers == 0;
	for (i = 0; i < p->n_layers; i++) {
		for (j = 0; j < ls->n && strcmp(ls->v[j].name, p->layers[i]) != 0; j++)
			;
		if (j == ls->n)
			return bn_error_set(err, 404, BN_E_NOT_FOUND, "layer",
					    "run %s has no layer %s", run, p->layers[i]);
		ls->v[j].wanted = true;
	}
	return 0;
}

/* The EMA `worker` reported for a layer at `step`: mean then var in out[2 * c]. */
static int worker_ema(struct store_reader *r, int64_t run_id, int64_t domain_id,
		      const struct ref_layer *l, const char *worker, int64_t step, double *out,
		      bool *found)
{
	struct ema_pick pick = { 0 };
	int rc = store_layer_emas(r, run_id, domain_id, l->id, worker, step - 1, step, pick_ema,
				  &pick);

	if (rc == 0 && pick.found)
		rc = store_row_read(r, STORE_BLOB_EMA, pick.rowid, l->channels, 0, 2 * l->channels,
				    out);
	*found = pick.found;
	return rc;
}

/*
 * query_compare() with precise=snapshot:LABEL or worker:NAME: per layer,
 * the EMA at `step` against the reference's mean and var; the layers of
 * the reference without an EMA there are listed under "no_ema".
 */
static int compare_reference(struct store_reader *r, struct replay_cache *cache, const char *run,
			     const struct query_params *p, struct query_ref *ref, json_t **out,
			     struct bn_error *err)
{
	const char *domain = p->domain ? p->domain : "default";
	struct ref_layers layers = { 0 };
	struct compare_acc acc = { 0 };
	char worker[INGEST_NAME_MAX + 1] = "";
	double momentum = 0.1, *buf = NULL, bound = 0.0;
	json_t *no_ema = NULL;
	bool sim, has_step = p->step != NULL, found;
	int64_t step = 0, run_id, domain_id = -1;
	long long v;
	size_t j, cap = 0, with_ref = 0;
	int rc;

	if (has_step) {
		if (query_parse_int("step", p->step, 0, &v, err) < 0)
			return -EINVAL;
		step = v;
	}
	if (query_check_domain(domain, err) < 0)
		return -EINVAL;
	if (query_parse_ema(p, &sim, &momentum, err) < 0)
		return -EINVAL;
	if ((!sim || ref->kind == QUERY_REF_WORKER) && strcmp(domain, QUERY_DOMAIN_ALL) == 0)
		return bn_error_set(err, 422, BN_E_INVALID, "domain",
				    "a worker EMA belongs to one domain: domain * needs ema=sim "
				    "and no worker reference");
	if (!sim && p->worker != NULL && !ingest_name_valid(p->worker))
		return bn_error_set(err, 422, BN_E_INVALID, "worker",
				    "worker names are 1 to 128 of [A-Za-z0-9._-]");
	if (!sim && ref->kind == QUERY_REF_WORKER && p->worker == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "worker",
				    "precise=worker:%s compares another worker's EMA with it: "
				    "name that one with worker=",
				    ref->name);

	store_read_begin(r);
	rc = query_run_domain_find(r, run, domain, &run_id, &domain_id, err);
	if (rc < 0)
		goto done;
	rc = query_ref_load(r, run, run_id, domain, domain_id, ref, err);
	if (rc == 0)
		rc = query_ref_step(r, run_id, domain_id, domain, has_step,
				    !sim || ref->kind == QUERY_REF_WORKER, step, &step, err);
	if (rc == 0)
		rc = ref_layers_read(r, run_id, run, p, &layers, err);
	if (rc < 0)
		goto done;
	if (!sim && p->worker != NULL) {
		snprintf(worker, sizeof(worker), "%s", p->worker);
	} else if (!sim) {
		rc = store_ema_first_worker(r, run_id, domain_id, step, worker, sizeof(worker));
		if (rc < 0) {
			rc = rc == -ENOENT ? no_ema_at(r, run_id, domain_id, domain, step, err)
					   : query_read_failed(err);
			goto done;
		}
	}

	no_ema = json_array();
	if (no_ema == NULL || compare_acc_init(&acc) < 0) {
		rc = query_oom(err);
		goto done;
	}
	for (j = 0; j < layers.n; j++) {
		const struct ref_layer *l = &layers.v[j];
		size_t c = l->channels;
		const double *ref_mean, *ref_var;
		double *ema = compare_buf(&buf, &cap, c);
		struct stats_cmp cmp;

		if (!l->wanted)
			continue;
		if (ema == NULL) {
			rc = query_oom(err);
			goto done;
		}
		ema += 2 * c; /* the first half holds a worker reference */
		if (ref->kind == QUERY_REF_SNAPSHOT) {
			const struct store_snapshot_layer *sl = query_ref_layer(ref, l->name, c);

			if (sl == NULL)
				continue; /* not in the snapshot */
			ref_mean = sl->mean;
			ref_var = sl->var;
		} else {
			rc = worker_ema(r, run_id, domain_id, l, ref->name, step, buf, &found);
			if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
			if (!found)
				continue; /* the reference worker sent none for this layer */
			ref_mean = buf;
			ref_var = buf + c;
		}
		with_ref++;
		if (sim) {
			int64_t applied;
			double layer_bound;

			rc = replay_layer(cache, r, run_id, domain_id, l->id, c, momentum, step,
					  ema, ema + c, &applied, &layer_bound);
			if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
			found = applied > 0;
			if (found && layer_bound > bound)
				bound = layer_bound;
		} else {
			rc = worker_ema(r, run_id, domain_id, l, worker, step, ema, &found);
			if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
		}
		if (!found) {
			if (json_array_append_new(no_ema, json_string(l->name)) < 0) {
				rc = query_oom(err);
				goto done;
			}
			continue;
		}
		stats_compare(c, ema, ema + c, ref_mean, ref_var, &cmp);
		if (compare_acc_add(&acc, l->name, &cmp) < 0) {
			rc = query_oom(err);
			goto done;
		}
	}
	if (with_ref == 0) {
		rc = ref->kind == QUERY_REF_SNAPSHOT
			     ? bn_error_set(err, 404, BN_E_NOT_FOUND, "precise",
					    "snapshot %s has none of these layers", ref->name)
			     : bn_error_set(err, 404, BN_E_NOT_FOUND, "precise",
					    "worker %s reported no EMA at step %lld in domain %s "
					    "for these layers",
					    ref->name, (long long)step, domain);
		goto done;
	}
	if (acc.n == 0) {
		rc = sim ? bn_error_set(err, 404, BN_E_NOT_FOUND, "step",
					"no layer of precise=%s has data at or before step %lld "
					"in domain %s",
					p->precise, (long long)step, domain)
			 : bn_error_set(err, 404, BN_E_NOT_FOUND, "worker",
					"worker %s reported no EMA at step %lld in domain %s for "
					"the layers of precise=%s",
					worker, (long long)step, domain, p->precise);
		goto done;
	}
	*out = json_pack("{s:s, s:s, s:I, s:s, s:O, s:o, s:O}", "run", run, "domain", domain,
			 "step", (json_int_t)step, "ema", sim ? "sim" : "worker", "layers",
			 acc.layers, "overall", compare_acc_overall(&acc), "no_ema", no_ema);
	if (*out != NULL) {
		if (sim) {
			json_object_set_new(*out, "momentum", json_real(momentum));
			json_object_set_new(*out, "sim_error_bound", json_real(bound));
		} else {
			json_object_set_new(*out, "worker", json_string(worker));
		}
	}
	rc = *out && query_ref_json(*out, ref) == 0 ? 0 : query_oom(err);
done:
	store_read_end(r);
	compare_acc_free(&acc);
	json_decref(no_ema);
	free(buf);
	ref_layers_free(&layers);
	if (rc < 0) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

int query_compare(struct store_reader *r, struct replay_cache *cache, const char *run,
		  const struct query_params *p, json_t **out, struct bn_error *err)
{
	struct query_window w = { 0 };
	struct query_window_req q = { .run = run };
	struct query_ref ref = { 0 };
	enum stats_estimator est = STATS_EST_POPULATION;
	struct compare_acc acc = { 0 };
	char worker[INGEST_NAME_MAX + 1] = "";
	double momentum = 0.1, *buf = NULL, bound = 0.0, target_se;
	bool sim;
	int64_t step = 0, run_id, domain_id = -1;
	size_t j, cap = 0;
	int rc;

	*out = NULL;
	if (query_ref_parse(p, &ref, err) < 0)
		return -EINVAL;
	if (ref.kind != QUERY_REF_WINDOW) {
		rc = compare_reference(r, cache, run, p, &ref, out, err);
		query_ref_free(&ref);
		return rc;
	}
	if (query_parse_estimator(p->estimator, &est, err) < 0 ||
	    query_window_parse(p, &q, err) < 0 ||
	    query_parse_target_se(p->target_se, &target_se, err) < 0)
		return -EINVAL;
	if (query_parse_ema(p, &sim, &momentum, err) < 0)
		return -EINVAL;
	if (!sim && strcmp(q.domain, QUERY_DOMAIN_ALL) == 0)
		return bn_error_set(err, 422, BN_E_INVALID, "domain",
				    "a worker EMA belongs to one domain: domain * needs ema=sim");
	if (!sim && p->worker != NULL && !ingest_name_valid(p->worker))
		return bn_error_set(err, 422, BN_E_INVALID, "worker",
				    "worker names are 1 to 128 of [A-Za-z0-9._-]");

	store_read_begin(r);
	rc = sim ? 0 : query_ema_default_step(r, &q, err);
	if (rc == 0)
		rc = query_window_compute(r, &q, &w, &step, err);
	if (rc < 0)
		goto done;
	run_id = w.run_id;
	domain_id = w.domain_id;
	if (!sim) {
		if (p->worker != NULL) {
			snprintf(worker, sizeof(worker), "%s", p->worker);
		} else {
			rc = store_ema_first_worker(r, run_id, domain_id, step, worker,
						    sizeof(worker));
			if (rc == -ENOENT) {
				rc = no_ema_at(r, run_id, domain_id, q.domain, step, err);
				goto done;
			} else if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
		}
	}

	if (compare_acc_init(&acc) < 0) {
		rc = query_oom(err);
		goto done;
	}
	for (j = 0; j < w.n; j++) {
		const struct query_layer_acc *l = &w.layers[j];
		size_t c = l->channels;
		struct stats_cmp cmp;
		double *prec_mean, *prec_var, *ema_mean, *ema_var;

		if (!l->wanted || l->agg.k == 0)
			continue;
		if (compare_buf(&buf, &cap, c) == NULL) {
			rc = query_oom(err);
			goto done;
		}
		prec_mean = buf;
		prec_var = buf + c;
		ema_mean = buf + 2 * c;
		ema_var = buf + 3 * c;
		stats_estimate(&l->agg, est, prec_mean, prec_var);
		if (sim) {
			int64_t applied;
			double layer_bound;

			rc = replay_layer(cache, r, run_id, domain_id, l->id, c, momentum, step,
					  ema_mean, ema_var, &applied, &layer_bound);
			if (layer_bound > bound)
				bound = layer_bound;
			if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
		} else {
			struct ema_pick pick = { 0 };

			rc = store_layer_emas(r, run_id, domain_id, l->id, worker, step - 1, step,
					      pick_ema, &pick);
			if (rc == 0 && pick.found)
				rc = store_row_read(r, STORE_BLOB_EMA, pick.rowid, c, 0, 2 * c,
						    ema_mean);
			if (rc < 0) {
				rc = query_read_failed(err);
				goto done;
			}
			if (!pick.found)
				continue; /* this worker sent no EMA for this layer */
		}
		stats_compare(c, ema_mean, ema_var, prec_mean, prec_var, &cmp);
		if (compare_acc_add(&acc, l->name, &cmp) < 0 ||
		    compare_precision(&acc, l, target_se) < 0) {
			rc = query_oom(err);
			goto done;
		}
	}
	if (acc.n == 0) {
		rc = bn_error_set(
			err, 404, BN_E_NOT_FOUND, "worker",
			"worker %s reported no EMA at step %lld in domain %s for these layers",
			worker, (long long)step, q.domain);
		goto done;
	}
	*out = json_pack("{s:s, s:s, s:I, s:I, s:s, s:s, s:O, s:o}", "run", run, "domain", q.domain,
			 "step", (json_int_t)step, "window", (json_int_t)q.window, "estimator",
			 query_estimator_name(est), "ema", sim ? "sim" : "worker", "layers",
			 acc.layers, "overall", compare_acc_overall(&acc));
	if (*out != NULL) {
		json_object_set_new(*out, "target_se", json_real(target_se));
		if (sim) {
			json_object_set_new(*out, "momentum", json_real(momentum));
			json_object_set_new(*out, "sim_error_bound", json_real(bound));
		} else {
			json_object_set_new(*out, "worker", json_string(worker));
		}
	}
	rc = *out && query_window_json(*out, &w) == 0 ? 0 : query_oom(err);
done:
	store_read_end(r);
	compare_acc_free(&acc);
	free(buf);
	query_window_free(&w);
	return rc;
}

int query_shift(struct store_reader *r, const char *run, const struct query_params *p, json_t **out,
		struct bn_error *err)
{
	struct query_window source_win = { 0 }, target_win = { 0 };
	struct query_window_req source_req = { .run = run }, target_req;
	enum stats_estimator est = STATS_EST_POPULATION;
	struct compare_acc acc = { 0 };
	double *buf = NULL;
	int64_t step = 0, run_id, domain_id, latest;
	size_t i, j, cap = 0;
	int rc, side;

	*out = NULL;
	if (p->source == NULL || p->target == NULL)
		return bn_error_set(err, 400, BN_E_PARAMETER, p->source ? "target" : "source",
				    "shift needs source= and target= domains");
	if (query_parse_estimator(p->estimator, &est, err) < 0 ||
	    query_window_parse(p, &source_req, err) < 0)
		return -EINVAL;
	if (query_check_domain(p->source, err) < 0 || query_check_domain(p->target, err) < 0)
		return -EINVAL;
	source_req.domain = p->source;
	target_req = source_req;
	target_req.domain = p->target;

	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	if (!source_req.has_step) {
		/* Both domains at one model version: the latest step they both reached. */
		for (side = 0; side < 2; side++) {
			const char *domain = side ? p->target : p->source;

			domain_id = -1;
			if (strcmp(domain, QUERY_DOMAIN_ALL) != 0 &&
			    store_domain_find(r, run_id, domain, &domain_id) < 0) {
				rc = bn_error_set(err, 404, BN_E_NOT_FOUND,
						  side ? "target" : "source",
						  "run %s has no domain %s", run, domain);
				goto done;
			}
			if (store_latest_step(r, run_id, domain_id, &latest) < 0) {
				rc = bn_error_set(err, 404, BN_E_NOT_FOUND,
						  side ? "target" : "source",
						  "domain %s has no statistics", domain);
				goto done;
			}
			if (side == 0 || latest < step)
				step = latest;
		}
		source_req.has_step = target_req.has_step = true;
		source_req.step = target_req.step = step;
	}
	rc = query_window_compute(r, &source_req, &source_win, &step, err);
	if (rc == 0)
		rc = query_window_compute(r, &target_req, &target_win, &step, err);
	if (rc < 0)
		goto done;
	if (compare_acc_init(&acc) < 0) {
		rc = query_oom(err);
		goto done;
	}
	/* Both windows list the run's layers in the same (id) order. */
	for (i = 0, j = 0; i < source_win.n && j < target_win.n; i++, j++) {
		const struct query_layer_acc *source = &source_win.layers[i],
					     *target = &target_win.layers[j];
		struct stats_cmp cmp;
		size_t channels = source->channels;

		if (!source->wanted || source->agg.k == 0 || target->agg.k == 0)
			continue;
		if (compare_buf(&buf, &cap, channels) == NULL) {
			rc = query_oom(err);
			goto done;
		}
		stats_estimate(&source->agg, est, buf, buf + channels);
		stats_estimate(&target->agg, est, buf + 2 * channels, buf + 3 * channels);
		stats_compare(channels, buf, buf + channels, buf + 2 * channels, buf + 3 * channels,
			      &cmp);
		if (compare_acc_add(&acc, source->name, &cmp) < 0) {
			rc = query_oom(err);
			goto done;
		}
	}
	if (acc.n == 0) {
		rc = bn_error_set(
			err, 404, BN_E_NOT_FOUND, "step",
			"domains %s and %s share no layer with data in steps (%lld, %lld]",
			p->source, p->target, (long long)(step - source_win.window),
			(long long)step);
		goto done;
	}
	*out = json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:O, s:o}", "run", run, "source",
			 p->source, "target", p->target, "step", (json_int_t)step, "window",
			 (json_int_t)source_req.window, "estimator", query_estimator_name(est),
			 "layers", acc.layers, "overall", compare_acc_overall(&acc));
	rc = *out && query_window_json(*out, &source_win) == 0 ? 0 : query_oom(err);
done:
	store_read_end(r);
	compare_acc_free(&acc);
	free(buf);
	query_window_free(&source_win);
	query_window_free(&target_win);
	return rc;
}
