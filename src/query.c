/*
 * query: what every answer of the module shares (query_private.h): the
 * checks of the parameters several endpoints take, the error replies, JSON
 * numbers, finding the run and the shape of a per-run listing. The answers
 * themselves are in query_runs.c, query_stats.c, query_compare.c,
 * query_series.c, query_snapshot.c and query_metrics.c; the precise window
 * they merge is query_window.c's.
 */
#include "query.h"
#include "query_private.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <ctype.h>
#include <string.h>

#include "bnstat/ingest.h"
#include "bnstat/stats.h"

/* At least one digit at *p: true, and *p moved past the digits. */
static bool digits(const char **p)
{
	const char *s = *p;

	if (!isdigit((unsigned char)*s))
		return false;
	while (isdigit((unsigned char)*s))
		s++;
	*p = s;
	return true;
}

/* s is optional '-', digits: the integer grammar of docs/API.md, "Query parameters". */
static bool int_syntax(const char *s)
{
	if (*s == '-')
		s++;
	return digits(&s) && *s == '\0';
}

/* s is an integer, then an optional fraction and exponent (JSON's number). */
static bool number_syntax(const char *s)
{
	if (*s == '-')
		s++;
	if (!digits(&s))
		return false;
	if (*s == '.') {
		s++;
		if (!digits(&s))
			return false;
	}
	if (*s == 'e' || *s == 'E') {
		s++;
		if (*s == '+' || *s == '-')
			s++;
		if (!digits(&s))
			return false;
	}
	return *s == '\0';
}

int query_parse_number(const char *name, const char *s, double *out, struct bn_error *err)
{
	double v;

	if (s == NULL || !number_syntax(s))
		goto bad;
	v = strtod(s, NULL); /* ERANGE on underflow is fine: a subnormal or 0 is finite */
	if (!isfinite(v))
		goto bad;
	*out = v;
	return 0;
bad:
	return bn_error_set(err, 400, BN_E_PARAMETER, name,
			    "parameter %s must be a number, got \"%s\"", name, s ? s : "");
}

int query_parse_int(const char *name, const char *s, long long min, long long *out,
		    struct bn_error *err)
{
	char *end;
	long long v;

	errno = 0;
	if (s == NULL || !int_syntax(s))
		goto bad;
	v = strtoll(s, &end, 10);
	if (errno != 0 || *end != '\0')
		goto bad;
	if (v < min)
		return bn_error_set(err, 422, BN_E_INVALID, name,
				    "parameter %s must be at least %lld, got %lld", name, min, v);
	*out = v;
	return 0;
bad:
	return bn_error_set(err, 400, BN_E_PARAMETER, name,
			    "parameter %s must be an integer, got \"%s\"", name, s ? s : "");
}

/*
 * A double for a reply. Inputs are finite, but statistics of extreme ones
 * can overflow (a squared difference of means beyond 1e154): JSON has no
 * infinity, so those become null rather than breaking the reply.
 */
json_t *query_json_num(double v)
{
	return isfinite(v) ? json_real(v) : json_null();
}

json_t *query_json_doubles(const double *v, size_t n)
{
	json_t *a = json_array();
	size_t i;

	if (a == NULL)
		return NULL;
	for (i = 0; i < n; i++) {
		if (json_array_append_new(a, query_json_num(v[i])) < 0) {
			json_decref(a);
			return NULL;
		}
	}
	return a;
}

int query_oom(struct bn_error *err)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
}

int query_read_failed(struct bn_error *err)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "the database could not be read");
}

int query_run_find(struct store_reader *r, const char *run, int64_t *run_id, struct bn_error *err)
{
	int rc;

	if (!ingest_name_valid(run))
		return bn_error_set(err, 422, BN_E_INVALID, "run",
				    "run names are 1 to 128 of [A-Za-z0-9._-]");
	rc = store_run_find(r, run, run_id);
	if (rc == -ENOENT)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "run", "no run named %s", run);
	return rc < 0 ? query_read_failed(err) : 0;
}

int query_run_domain_find(struct store_reader *r, const char *run, const char *domain,
			  int64_t *run_id, int64_t *domain_id, struct bn_error *err)
{
	int rc = query_run_find(r, run, run_id, err);

	*domain_id = -1;
	if (rc < 0 || strcmp(domain, QUERY_DOMAIN_ALL) == 0)
		return rc;
	rc = store_domain_find(r, *run_id, domain, domain_id);
	if (rc == -ENOENT)
		return bn_error_set(err, 404, BN_E_NOT_FOUND, "domain", "run %s has no domain %s",
				    run, domain);
	return rc < 0 ? query_read_failed(err) : 0;
}

struct layers_read {
	struct query_layer *v;
	size_t n;
};

static int layers_add(void *ctx, const struct store_item *it)
{
	struct layers_read *l = ctx;
	struct query_layer *p = realloc(l->v, (l->n + 1) * sizeof(*p));

	if (p == NULL)
		return -ENOMEM;
	l->v = p;
	p = &l->v[l->n];
	p->id = it->id;
	p->channels = (size_t)it->layer.channels;
	p->name = strdup(it->name);
	if (p->name == NULL)
		return -ENOMEM;
	l->n++;
	return 0;
}

static int layers_cmp_id(const void *a, const void *b)
{
	const struct query_layer *x = a, *y = b;

	return (x->id > y->id) - (x->id < y->id);
}

int query_layers_read(struct store_reader *r, int64_t run_id, struct query_layer **out, size_t *n)
{
	struct layers_read l = { NULL, 0 };
	int rc = store_layers_foreach(r, run_id, layers_add, &l);

	if (rc < 0) {
		query_layers_free(l.v, l.n);
		*out = NULL;
		*n = 0;
		return rc == -ENOMEM ? rc : -EIO;
	}
	qsort(l.v, l.n, sizeof(*l.v), layers_cmp_id);
	*out = l.v;
	*n = l.n;
	return 0;
}

void query_layers_free(struct query_layer *v, size_t n)
{
	size_t i;

	for (i = 0; v != NULL && i < n; i++)
		free(v[i].name);
	free(v);
}

/*
 * {"run": run, key: [...]} with the list filled by walk for the run's id:
 * the shape of every per-run listing.
 */
int query_run_list(struct store_reader *r, const char *run, const char *key,
		   int (*walk)(struct store_reader *, int64_t, json_t *), json_t **out,
		   struct bn_error *err)
{
	json_t *list = json_array();
	int64_t run_id;
	int rc;

	*out = NULL;
	if (list == NULL)
		return query_oom(err);
	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc == 0) {
		rc = walk(r, run_id, list);
		if (rc < 0)
			rc = rc == -ENOMEM ? query_oom(err) : query_read_failed(err);
	}
	store_read_end(r);
	if (rc == 0)
		*out = json_pack("{s:s, s:O}", "run", run, key, list);
	json_decref(list);
	if (rc == 0 && *out == NULL)
		rc = query_oom(err);
	return rc;
}

/* --- parameters ---------------------------------------------------------- */

int query_parse_opt_int(const char *name, const char *s, long long min, long long dflt,
			long long *out, struct bn_error *err)
{
	if (s == NULL) {
		*out = dflt;
		return 0;
	}
	return query_parse_int(name, s, min, out, err);
}

int query_parse_estimator(const char *s, enum stats_estimator *est, struct bn_error *err)
{
	if (s == NULL || strcmp(s, "population") == 0)
		*est = STATS_EST_POPULATION;
	else if (strcmp(s, "mean_of_batch_var") == 0)
		*est = STATS_EST_MEAN_OF_BATCH_VAR;
	else
		return bn_error_set(err, 422, BN_E_INVALID, "estimator",
				    "estimator must be \"population\" or \"mean_of_batch_var\"");
	return 0;
}

const char *query_estimator_name(enum stats_estimator est)
{
	return est == STATS_EST_POPULATION ? "population" : "mean_of_batch_var";
}

int query_check_domain(const char *domain, struct bn_error *err)
{
	if (strcmp(domain, QUERY_DOMAIN_ALL) != 0 && !ingest_name_valid(domain))
		return bn_error_set(err, 422, BN_E_INVALID, "domain",
				    "domain names are 1 to 128 of [A-Za-z0-9._-], or * for all");
	return 0;
}

int query_parse_momentum(const char *s, double *out, struct bn_error *err)
{
	double v;
	int rc;

	if (s == NULL) {
		*out = 0.1;
		return 0;
	}
	rc = query_parse_number("momentum", s, &v, err);
	if (rc < 0)
		return rc;
	if (!(v > 0.0 && v <= 1.0))
		return bn_error_set(err, 422, BN_E_INVALID, "momentum",
				    "momentum is PyTorch's: 0 < momentum <= 1 (Keras decay 0.99 is "
				    "momentum 0.01), got %s",
				    s);
	*out = v;
	return 0;
}

int query_parse_target_se(const char *s, double *out, struct bn_error *err)
{
	double v;
	int rc;

	if (s == NULL) {
		*out = QUERY_TARGET_SE;
		return 0;
	}
	rc = query_parse_number("target_se", s, &v, err);
	if (rc < 0)
		return rc;
	if (!(v > 0.0))
		return bn_error_set(err, 422, BN_E_INVALID, "target_se",
				    "target_se is a standard error in units of sigma: > 0, got %s",
				    s);
	*out = v;
	return 0;
}

json_t *query_json_count(double v)
{
	return v < 9007199254740992.0 ? json_integer((json_int_t)v) : query_json_num(v);
}

/* The three fields, nulls when !have. 0 or -ENOMEM. */
static int precision_write(json_t *o, bool have, double noise, double mean_se, double batches_for)
{
	if (json_object_set_new(o, "batch_noise", have ? query_json_num(noise) : json_null()) < 0 ||
	    json_object_set_new(o, "mean_se", have ? query_json_num(mean_se) : json_null()) < 0 ||
	    json_object_set_new(o, "batches_for",
				have ? query_json_count(batches_for) : json_null()) < 0)
		return -ENOMEM;
	return 0;
}

int query_precision_json(json_t *o, const struct stats_agg *a, double target_se)
{
	double noise = 0.0, mean_se = 0.0, batches_for = 0.0;
	bool have = stats_precision(a, target_se, &noise, &mean_se, &batches_for) == 0;

	return precision_write(o, have, noise, mean_se, batches_for);
}

int query_precision_fields(json_t *o, bool have, double noise, int64_t k, double target_se)
{
	double mean_se = 0.0, batches_for = 0.0;

	if (have)
		stats_precision_of(noise, k, target_se, &mean_se, &batches_for);
	return precision_write(o, have, noise, mean_se, batches_for);
}

int query_parse_ema(const struct query_params *p, bool *sim, double *momentum, struct bn_error *err)
{
	if (p->ema != NULL && strcmp(p->ema, "worker") != 0 && strcmp(p->ema, "sim") != 0)
		return bn_error_set(err, 422, BN_E_INVALID, "ema",
				    "ema must be \"worker\" or \"sim\"");
	*sim = p->ema != NULL && strcmp(p->ema, "sim") == 0;
	if (*sim && query_parse_momentum(p->momentum, momentum, err) < 0)
		return -EINVAL;
	return 0;
}
