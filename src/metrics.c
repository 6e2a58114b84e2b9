/*
 * metrics: process-wide counters and histograms (see metrics.h). Fixed
 * label sets keep the hot counters allocation-free: the upload outcomes are
 * the known error codes, anything else counts as "other". The families
 * labelled by run are tables under a lock, bounded (metrics.h): the
 * refusals of non-finite values, rare by nature, and the drift gauges,
 * set by the thread that computes them (gauges.c) and only printed here,
 * so that a scrape costs a walk of the table, not a query.
 */
#include "metrics.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/batch.h"
#include "bnstat/error.h"

static const char *const outcomes[] = {
	"accepted",	"duplicate",	   BN_E_MALFORMED, BN_E_TYPE,
	BN_E_MISSING,	BN_E_INVALID,	   BN_E_LIMIT,	   BN_E_CONFLICT,
	BN_E_NOT_FOUND, BN_E_TOO_LARGE,	   BN_E_MEDIA,	   BN_E_UNAVAILABLE,
	BN_E_INTERNAL,	BN_E_UNAUTHORIZED, BN_E_FORBIDDEN, "other",
};
#define N_OUTCOMES (sizeof(outcomes) / sizeof(outcomes[0]))

static const double latency_le[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
				     0.1,   0.25,   0.5,   1.0,	 2.5,	10.0 };
#define N_LATENCY (sizeof(latency_le) / sizeof(latency_le[0]))
static const double size_le[] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024 };
#define N_SIZE (sizeof(size_le) / sizeof(size_le[0]))

static _Atomic unsigned long long upload_count[N_OUTCOMES];
static _Atomic unsigned long long bytes_received;
static _Atomic unsigned long long commits_ok, commits_failed;
static _Atomic unsigned long long latency_bucket[N_LATENCY + 1];
static _Atomic unsigned long long size_bucket[N_SIZE + 1];
/* sums kept in microseconds and jobs so that they stay integers */
static _Atomic unsigned long long latency_sum_us, size_sum;

void metrics_upload(const char *outcome)
{
	size_t i;

	for (i = 0; i + 1 < N_OUTCOMES; i++)
		if (strcmp(outcome, outcomes[i]) == 0)
			break;
	atomic_fetch_add_explicit(&upload_count[i], 1, memory_order_relaxed);
}

void metrics_bytes(size_t n)
{
	atomic_fetch_add_explicit(&bytes_received, n, memory_order_relaxed);
}

void metrics_commit(double seconds, size_t batches, int ok)
{
	size_t i;

	atomic_fetch_add_explicit(ok ? &commits_ok : &commits_failed, 1, memory_order_relaxed);
	for (i = 0; i < N_LATENCY && seconds > latency_le[i]; i++)
		;
	atomic_fetch_add_explicit(&latency_bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&latency_sum_us, (unsigned long long)(seconds * 1e6),
				  memory_order_relaxed);
	for (i = 0; i < N_SIZE && (double)batches > size_le[i]; i++)
		;
	atomic_fetch_add_explicit(&size_bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&size_sum, batches, memory_order_relaxed);
}

static void histogram(FILE *f, const char *name, const char *help, const double *le, size_t n,
		      _Atomic unsigned long long *buckets, double sum)
{
	unsigned long long cum = 0;
	size_t i;

	fprintf(f, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
	for (i = 0; i <= n; i++) {
		cum += atomic_load_explicit(&buckets[i], memory_order_relaxed);
		if (i < n)
			fprintf(f, "%s_bucket{le=\"%g\"} %llu\n", name, le[i], cum);
		else
			fprintf(f, "%s_bucket{le=\"+Inf\"} %llu\n", name, cum);
	}
	fprintf(f, "%s_sum %.6f\n%s_count %llu\n", name, sum, name, cum);
}

static void render_counters(FILE *f)
{
	size_t i;

	fputs("# HELP bnstat_uploads_total Uploads by outcome: accepted, duplicate, or the error "
	      "code.\n"
	      "# TYPE bnstat_uploads_total counter\n",
	      f);
	for (i = 0; i < N_OUTCOMES; i++)
		fprintf(f, "bnstat_uploads_total{outcome=\"%s\"} %llu\n", outcomes[i],
			atomic_load_explicit(&upload_count[i], memory_order_relaxed));
	fprintf(f,
		"# HELP bnstat_received_bytes_total Request body bytes received.\n"
		"# TYPE bnstat_received_bytes_total counter\n"
		"bnstat_received_bytes_total %llu\n",
		atomic_load_explicit(&bytes_received, memory_order_relaxed));
	fprintf(f,
		"# HELP bnstat_commits_total Group commits by result.\n"
		"# TYPE bnstat_commits_total counter\n"
		"bnstat_commits_total{result=\"ok\"} %llu\n"
		"bnstat_commits_total{result=\"failed\"} %llu\n",
		atomic_load_explicit(&commits_ok, memory_order_relaxed),
		atomic_load_explicit(&commits_failed, memory_order_relaxed));
	histogram(f, "bnstat_commit_seconds", "Time of one group commit, from BEGIN to COMMIT.",
		  latency_le, N_LATENCY, latency_bucket,
		  (double)atomic_load_explicit(&latency_sum_us, memory_order_relaxed) / 1e6);
	histogram(f, "bnstat_commit_batches", "Jobs (uploads, snapshots) per group commit.",
		  size_le, N_SIZE, size_bucket,
		  (double)atomic_load_explicit(&size_sum, memory_order_relaxed));
}

/* A label value: backslash, double quote and newline escaped. */
static void label_value(FILE *f, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\' || *s == '"')
			fputc('\\', f);
		if (*s == '\n')
			fputs("\\n", f);
		else
			fputc(*s, f);
	}
}

/* --- refusals of non-finite values ------------------------------------------------ */

struct nonfinite_run {
	char name[INGEST_NAME_MAX + 1];
	unsigned long long n;
};

struct nonfinite_layer {
	char run[INGEST_NAME_MAX + 1];
	char layer[INGEST_LAYER_NAME_MAX + 1];
	unsigned long long n;
};

/* Guards everything below. Refusals are rare; a scrape holds it while it prints them. */
static pthread_mutex_t nf_mu = PTHREAD_MUTEX_INITIALIZER;
static struct nonfinite_run *nf_runs; /* [nf_n_runs], in strcmp() order of name */
static size_t nf_n_runs, nf_cap_runs;
static unsigned long long nf_other_runs;  /* refusals of runs past the bound */
static struct nonfinite_layer *nf_layers; /* [nf_n_layers], in arrival order */
static size_t nf_n_layers, nf_cap_layers;
static unsigned long long nf_other_layers; /* refusals of pairs past the bound */

/* Grow *arr (of *cap elements of size `size`) to hold one more than n, up to max. */
static bool nf_reserve(void **arr, size_t *cap, size_t n, size_t size, size_t max)
{
	size_t c = *cap ? *cap * 2 : 16;
	void *p;

	if (n < *cap)
		return true;
	if (n >= max)
		return false;
	if (c > max)
		c = max;
	p = realloc(*arr, c * size);
	if (p == NULL)
		return false;
	*arr = p;
	*cap = c;
	return true;
}

/* The run's counter: found, or inserted in name order; NULL past the bound. */
static unsigned long long *nf_run_counter(const char *run)
{
	size_t lo = 0, hi = nf_n_runs;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(nf_runs[mid].name, run);

		if (c == 0)
			return &nf_runs[mid].n;
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!nf_reserve((void **)&nf_runs, &nf_cap_runs, nf_n_runs, sizeof(*nf_runs),
			METRICS_NONFINITE_RUNS))
		return NULL;
	memmove(&nf_runs[lo + 1], &nf_runs[lo], (nf_n_runs - lo) * sizeof(*nf_runs));
	snprintf(nf_runs[lo].name, sizeof(nf_runs[lo].name), "%s", run);
	nf_runs[lo].n = 0;
	nf_n_runs++;
	return &nf_runs[lo].n;
}

/* The (run, layer) counter: found, or appended; NULL past the bound. */
static unsigned long long *nf_layer_counter(const char *run, const char *layer)
{
	struct nonfinite_layer *e;
	size_t i;

	for (i = 0; i < nf_n_layers; i++)
		if (strcmp(nf_layers[i].layer, layer) == 0 && strcmp(nf_layers[i].run, run) == 0)
			return &nf_layers[i].n;
	if (!nf_reserve((void **)&nf_layers, &nf_cap_layers, nf_n_layers, sizeof(*nf_layers),
			METRICS_NONFINITE_LAYERS))
		return NULL;
	e = &nf_layers[nf_n_layers++];
	snprintf(e->run, sizeof(e->run), "%s", run);
	snprintf(e->layer, sizeof(e->layer), "%s", layer);
	e->n = 0;
	return &e->n;
}

unsigned long long metrics_refused_nonfinite(const char *run, const char *layer)
{
	unsigned long long *c, n;

	pthread_mutex_lock(&nf_mu);
	c = nf_run_counter(run);
	++*(c != NULL ? c : &nf_other_runs);
	c = nf_layer_counter(run, layer);
	n = ++*(c != NULL ? c : &nf_other_layers);
	pthread_mutex_unlock(&nf_mu);
	return n;
}

static void drift_forget_run(const char *run);

void metrics_forget_run(const char *run)
{
	size_t i, k = 0;

	drift_forget_run(run);
	pthread_mutex_lock(&nf_mu);
	for (i = 0; i < nf_n_runs; i++)
		if (strcmp(nf_runs[i].name, run) != 0)
			nf_runs[k++] = nf_runs[i];
	nf_n_runs = k;
	for (i = k = 0; i < nf_n_layers; i++)
		if (strcmp(nf_layers[i].run, run) != 0)
			nf_layers[k++] = nf_layers[i];
	nf_n_layers = k;
	pthread_mutex_unlock(&nf_mu);
}

static void render_nonfinite(FILE *f)
{
	size_t i;

	fputs("# HELP bnstat_refused_nonfinite_total Uploads refused for a NaN or infinite batch "
	      "statistic or EMA, per run, since the daemon started.\n"
	      "# TYPE bnstat_refused_nonfinite_total counter\n",
	      f);
	pthread_mutex_lock(&nf_mu);
	for (i = 0; i < nf_n_runs; i++) {
		fputs("bnstat_refused_nonfinite_total{run=\"", f);
		label_value(f, nf_runs[i].name);
		fprintf(f, "\"} %llu\n", nf_runs[i].n);
	}
	if (nf_other_runs > 0)
		fprintf(f, "bnstat_refused_nonfinite_total{run=\"%s\"} %llu\n",
			METRICS_NONFINITE_OTHER, nf_other_runs);
	pthread_mutex_unlock(&nf_mu);
}

/* --- the drift gauges ----------------------------------------------------------------- */

struct drift_pair {
	char run[INGEST_NAME_MAX + 1];
	char domain[INGEST_NAME_MAX + 1];
	char layer[INGEST_LAYER_NAME_MAX + 1]; /* "": no worst layer */
	bool has_drift, has_noise;
	double kl, worst_kl, batch_noise;
};

/* Guards everything below. A scrape holds it while it prints the pairs. */
static pthread_mutex_t drift_mu = PTHREAD_MUTEX_INITIALIZER;
static struct drift_pair **drift_pairs; /* [drift_n], by run then domain (strcmp) */
static size_t drift_n, drift_cap;
static unsigned long long drift_epoch; /* runs forgotten so far */

static int drift_cmp(const struct drift_pair *p, const char *run, const char *domain)
{
	int c = strcmp(p->run, run);

	return c != 0 ? c : strcmp(p->domain, domain);
}

/* Where (run, domain) is, or would go: *found says which. */
static size_t drift_find(const char *run, const char *domain, bool *found)
{
	size_t lo = 0, hi = drift_n;

	*found = false;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = drift_cmp(drift_pairs[mid], run, domain);

		if (c == 0) {
			*found = true;
			return mid;
		}
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Remove drift_pairs[i]. */
static void drift_remove(size_t i)
{
	free(drift_pairs[i]);
	memmove(&drift_pairs[i], &drift_pairs[i + 1], (drift_n - i - 1) * sizeof(*drift_pairs));
	drift_n--;
}

unsigned long long metrics_drift_epoch(void)
{
	unsigned long long e;

	pthread_mutex_lock(&drift_mu);
	e = drift_epoch;
	pthread_mutex_unlock(&drift_mu);
	return e;
}

int metrics_drift_set(const char *run, const char *domain, unsigned long long epoch,
		      const struct metrics_drift *d)
{
	struct drift_pair *p;
	bool found;
	size_t i;
	int rc = 0;

	pthread_mutex_lock(&drift_mu);
	if (epoch != drift_epoch) {
		rc = -EAGAIN;
		goto out;
	}
	i = drift_find(run, domain, &found);
	if (!d->has_drift && !d->has_noise) {
		if (found)
			drift_remove(i);
		goto out;
	}
	if (!found) {
		if (!nf_reserve((void **)&drift_pairs, &drift_cap, drift_n, sizeof(*drift_pairs),
				METRICS_DRIFT_PAIRS)) {
			rc = drift_n >= METRICS_DRIFT_PAIRS ? -ENOSPC : -ENOMEM;
			goto out;
		}
		p = calloc(1, sizeof(*p));
		if (p == NULL) {
			rc = -ENOMEM;
			goto out;
		}
		snprintf(p->run, sizeof(p->run), "%s", run);
		snprintf(p->domain, sizeof(p->domain), "%s", domain);
		memmove(&drift_pairs[i + 1], &drift_pairs[i], (drift_n - i) * sizeof(*drift_pairs));
		drift_pairs[i] = p;
		drift_n++;
	}
	p = drift_pairs[i];
	p->has_drift = d->has_drift;
	p->kl = d->kl;
	snprintf(p->layer, sizeof(p->layer), "%s",
		 d->has_drift && d->worst_layer != NULL ? d->worst_layer : "");
	p->worst_kl = d->worst_kl;
	p->has_noise = d->has_noise;
	p->batch_noise = d->batch_noise;
out:
	pthread_mutex_unlock(&drift_mu);
	return rc;
}

void metrics_drift_clear(const char *run, const char *domain)
{
	bool found;
	size_t i;

	pthread_mutex_lock(&drift_mu);
	i = drift_find(run, domain, &found);
	if (found)
		drift_remove(i);
	pthread_mutex_unlock(&drift_mu);
}

static void drift_forget_run(const char *run)
{
	size_t i, k = 0;

	pthread_mutex_lock(&drift_mu);
	drift_epoch++;
	for (i = 0; i < drift_n; i++) {
		if (strcmp(drift_pairs[i]->run, run) == 0)
			free(drift_pairs[i]);
		else
			drift_pairs[k++] = drift_pairs[i];
	}
	drift_n = k;
	pthread_mutex_unlock(&drift_mu);
}

/* A sample's value: shortest exact form, or Prometheus's names of the non-finite. */
static void gauge_value(FILE *f, double v)
{
	if (isnan(v))
		fputs("NaN\n", f);
	else if (isinf(v))
		fputs(v > 0 ? "+Inf\n" : "-Inf\n", f);
	else
		fprintf(f, "%.17g\n", v);
}

/* {run="...",domain="..." (the caller closes the braces) */
static void drift_labels(FILE *f, const char *name, const struct drift_pair *p)
{
	fprintf(f, "%s{run=\"", name);
	label_value(f, p->run);
	fputs("\",domain=\"", f);
	label_value(f, p->domain);
	fputc('"', f);
}

static void render_drift(FILE *f)
{
	size_t i;

	pthread_mutex_lock(&drift_mu);
	fputs("# HELP bnstat_ema_drift_kl Overall kl of the first worker's EMA against the precise "
	      "statistics (window auto) at the newest step with a worker EMA, per run and "
	      "domain.\n"
	      "# TYPE bnstat_ema_drift_kl gauge\n",
	      f);
	for (i = 0; i < drift_n; i++) {
		if (!drift_pairs[i]->has_drift)
			continue;
		drift_labels(f, "bnstat_ema_drift_kl", drift_pairs[i]);
		fputs("} ", f);
		gauge_value(f, drift_pairs[i]->kl);
	}
	fputs("# HELP bnstat_ema_drift_worst_kl The kl of the layer with the highest kl in that "
	      "comparison, labelled with the layer.\n"
	      "# TYPE bnstat_ema_drift_worst_kl gauge\n",
	      f);
	for (i = 0; i < drift_n; i++) {
		if (!drift_pairs[i]->has_drift || drift_pairs[i]->layer[0] == '\0')
			continue;
		drift_labels(f, "bnstat_ema_drift_worst_kl", drift_pairs[i]);
		fputs(",layer=\"", f);
		label_value(f, drift_pairs[i]->layer);
		fputs("\"} ", f);
		gauge_value(f, drift_pairs[i]->worst_kl);
	}
	fputs("# HELP bnstat_batch_noise Mean over layers of batch_noise over the window auto of "
	      "that step (else the latest step), per run and domain.\n"
	      "# TYPE bnstat_batch_noise gauge\n",
	      f);
	for (i = 0; i < drift_n; i++) {
		if (!drift_pairs[i]->has_noise)
			continue;
		drift_labels(f, "bnstat_batch_noise", drift_pairs[i]);
		fputs("} ", f);
		gauge_value(f, drift_pairs[i]->batch_noise);
	}
	pthread_mutex_unlock(&drift_mu);
}

/* --- the run gauges ------------------------------------------------------------------- */

/* The run gauges: counted in one walk, their samples held until the count is out. */
struct run_gauges {
	FILE *samples; /* bnstat_run_last_step */
	FILE *bytes;   /* bnstat_run_bytes */
	long long runs;
};

static int emit_run(void *ctx, const struct metrics_run *run)
{
	struct run_gauges *g = ctx;

	g->runs++;
	if (run->has_data) {
		fputs("bnstat_run_last_step{run=\"", g->samples);
		label_value(g->samples, run->name);
		fprintf(g->samples, "\"} %lld\n", run->last_step);
		fputs("bnstat_run_bytes{run=\"", g->bytes);
		label_value(g->bytes, run->name);
		fprintf(g->bytes, "\"} %lld\n", run->bytes);
	}
	return 0;
}

/* Whether the database can be written, and the free space beside it (docs/OPERATIONS.md). */
static void render_health(FILE *f, const struct metrics_sources *src)
{
	static const char *const states[] = { "writable", "read_only", "damaged" };
	size_t i;

	if (src->database_state != NULL) {
		fprintf(f, "# HELP bnstat_database_state 1 for the database's state now: writable, "
			   "read_only (a full disk: uploads refused) or damaged.\n"
			   "# TYPE bnstat_database_state gauge\n");
		for (i = 0; i < sizeof(states) / sizeof(states[0]); i++)
			fprintf(f, "bnstat_database_state{state=\"%s\"} %d\n", states[i],
				strcmp(states[i], src->database_state) == 0);
	}
	if (src->disk_free_known)
		fprintf(f,
			"# HELP bnstat_disk_free_bytes Free bytes on the database's file system.\n"
			"# TYPE bnstat_disk_free_bytes gauge\nbnstat_disk_free_bytes %llu\n",
			src->disk_free_bytes);
	fprintf(f,
		"# HELP bnstat_disk_free_warn_bytes The log warns when free bytes fall below this "
		"(disk-free-warn-mb; 0: never).\n"
		"# TYPE bnstat_disk_free_warn_bytes gauge\nbnstat_disk_free_warn_bytes %llu\n",
		src->disk_free_warn_bytes);
}

int metrics_render(FILE *f, const struct metrics_sources *src, struct bn_error *err)
{
	struct run_gauges g = { 0 };
	char *samples = NULL, *bytes = NULL;
	size_t len = 0, bytes_len = 0;
	int rc = 0;

	render_counters(f);
	render_nonfinite(f);
	fprintf(f,
		"# HELP bnstat_queue_depth Uploads waiting for the writer.\n"
		"# TYPE bnstat_queue_depth gauge\nbnstat_queue_depth %zu\n"
		"# HELP bnstat_database_bytes Size of the database file and its WAL.\n"
		"# TYPE bnstat_database_bytes gauge\nbnstat_database_bytes %llu\n",
		src->queue_depth, src->database_bytes);
	render_health(f, src);
	render_drift(f);
	if (src->runs == NULL)
		return 0;
	g.samples = open_memstream(&samples, &len);
	g.bytes = open_memstream(&bytes, &bytes_len);
	if (g.samples == NULL || g.bytes == NULL) {
		if (g.samples != NULL)
			fclose(g.samples);
		if (g.bytes != NULL)
			fclose(g.bytes);
		free(samples);
		free(bytes);
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	}
	rc = src->runs(src->runs_ctx, emit_run, &g, err);
	fclose(g.samples);
	fclose(g.bytes);
	if (rc == 0) {
		fprintf(f,
			"# HELP bnstat_runs Runs stored.\n# TYPE bnstat_runs gauge\n"
			"bnstat_runs %lld\n",
			g.runs);
		fputs("# HELP bnstat_run_last_step The highest step with statistics, per run.\n"
		      "# TYPE bnstat_run_last_step gauge\n",
		      f);
		fwrite(samples, 1, len, f);
		fputs("# HELP bnstat_run_bytes Bytes of the statistics stored, per run "
		      "(approximate).\n"
		      "# TYPE bnstat_run_bytes gauge\n",
		      f);
		fwrite(bytes, 1, bytes_len, f);
	}
	free(samples);
	free(bytes);
	return rc;
}
