/* stats_testutil: see stats_testutil.h. */
#include "stats_testutil.h"

#include <check.h>
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- deterministic data ------------------------------------------------ */

uint64_t rng_next(struct rng *r)
{
	uint64_t z = (r->s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* Uniform in (0, 1): never 0, so that log() below is finite. */
double rng_unit(struct rng *r)
{
	return ((double)(rng_next(r) >> 11) + 0.5) * 0x1p-53;
}

double rng_normal(struct rng *r)
{
	double u1 = rng_unit(r), u2 = rng_unit(r);

	return sqrt(-2.0 * log(u1)) * cos((double)TWO_PI * u2);
}

/* Uniform integer in [lo, hi]. */
size_t rng_range(struct rng *r, size_t lo, size_t hi)
{
	return lo + (size_t)(rng_next(r) % (uint64_t)(hi - lo + 1));
}

void rng_shuffle(struct rng *r, size_t *v, size_t len)
{
	size_t i, j, t;

	for (i = len; i > 1; i--) {
		j = rng_range(r, 0, i - 1);
		t = v[i - 1];
		v[i - 1] = v[j];
		v[j] = t;
	}
}

void ds_init(struct dataset *ds, size_t channels, const size_t *sizes, size_t nb)
{
	size_t b;

	ds->channels = channels;
	ds->nb = nb;
	ds->off = calloc(nb, sizeof(*ds->off));
	ds->len = calloc(nb, sizeof(*ds->len));
	ck_assert(ds->off != NULL && ds->len != NULL);
	ds->total = 0;
	for (b = 0; b < nb; b++) {
		ds->off[b] = ds->total;
		ds->len[b] = sizes[b];
		ds->total += sizes[b];
	}
	ds->x = calloc(channels * ds->total, sizeof(*ds->x));
	ck_assert(ds->x != NULL);
}

/* Fill channel c with mu + sigma * N(0, 1). */
void ds_fill_normal(struct dataset *ds, struct rng *r, size_t c, double mu, double sigma)
{
	size_t i;

	for (i = 0; i < ds->total; i++)
		ds->x[c * ds->total + i] = mu + sigma * rng_normal(r);
}

void ds_fill_const(struct dataset *ds, size_t c, double v)
{
	size_t i;

	for (i = 0; i < ds->total; i++)
		ds->x[c * ds->total + i] = v;
}

void ds_free(struct dataset *ds)
{
	free(ds->x);
	free(ds->off);
	free(ds->len);
	memset(ds, 0, sizeof(*ds));
}

/* Random batch sizes in [lo, hi]. */
size_t *random_sizes(struct rng *r, size_t nb, size_t lo, size_t hi)
{
	size_t *s = calloc(nb, sizeof(*s));
	size_t b;

	ck_assert(s != NULL);
	for (b = 0; b < nb; b++)
		s[b] = rng_range(r, lo, hi);
	return s;
}

/* --- independent references (long double, two-pass) -------------------- */

/* Mean and sum of squared deviations of elements [off, off+len) of channel c. */
void ref_moments(const struct dataset *ds, size_t c, size_t off, size_t len, long double *mean,
		 long double *m2)
{
	const double *x = ds->x + c * ds->total + off;
	long double s = 0.0L, q = 0.0L, m;
	size_t i;

	for (i = 0; i < len; i++)
		s += x[i];
	m = s / (long double)len;
	for (i = 0; i < len; i++)
		q += (x[i] - m) * (x[i] - m);
	*mean = m;
	*m2 = q;
}

/* Population mean and biased variance of channel c over all elements. */
void ref_population(const struct dataset *ds, size_t c, long double *mean, long double *var)
{
	long double m2;

	ref_moments(ds, c, 0, ds->total, mean, &m2);
	*var = m2 / (long double)ds->total;
}

/*
 * mean_of_batch_var reference for channel c: unweighted mean of the batch
 * means and of the unbiased batch variances (0 for a batch of one element).
 */
void ref_mean_of_batch_var(const struct dataset *ds, size_t c, long double *mean, long double *var)
{
	long double sm = 0.0L, sv = 0.0L, bm, m2;
	size_t b;

	for (b = 0; b < ds->nb; b++) {
		ref_moments(ds, c, ds->off[b], ds->len[b], &bm, &m2);
		sm += bm;
		if (ds->len[b] > 1)
			sv += m2 / (long double)(ds->len[b] - 1);
	}
	*mean = sm / (long double)ds->nb;
	*var = sv / (long double)ds->nb;
}

/*
 * batch_noise reference: per channel sqrt(s^2 / sigma_p^2) with s^2 the
 * divisor-(k-1) variance of the batch means, averaged over the channels
 * whose population variance is positive. Returns the number of channels
 * used.
 */
size_t ref_batch_noise(const struct dataset *ds, long double *out)
{
	long double *bm = calloc(ds->nb, sizeof(*bm));
	long double sum = 0.0L;
	size_t c, b, used = 0;

	ck_assert(bm != NULL);
	for (c = 0; c < ds->channels; c++) {
		long double pm, pv, m2, mm = 0.0L, s2 = 0.0L;

		ref_population(ds, c, &pm, &pv);
		if (pv <= 0.0L)
			continue;
		for (b = 0; b < ds->nb; b++) {
			ref_moments(ds, c, ds->off[b], ds->len[b], &bm[b], &m2);
			mm += bm[b];
		}
		mm /= (long double)ds->nb;
		for (b = 0; b < ds->nb; b++)
			s2 += (bm[b] - mm) * (bm[b] - mm);
		s2 /= (long double)(ds->nb - 1);
		sum += sqrtl(s2 / pv);
		used++;
	}
	free(bm);
	*out = used ? sum / (long double)used : 0.0L;
	return used;
}

/* --- feeding the code under test --------------------------------------- */

/*
 * What a worker sends for batch b: per channel the mean and the variance of
 * kind `kind`, computed exactly and rounded to double once.
 */
void batch_report(const struct dataset *ds, size_t b, enum stats_var_kind kind, double *mean,
		  double *var)
{
	long double m, m2;
	size_t c, n = ds->len[b];

	for (c = 0; c < ds->channels; c++) {
		ref_moments(ds, c, ds->off[b], n, &m, &m2);
		mean[c] = (double)m;
		if (kind == STATS_VAR_BIASED)
			var[c] = (double)(m2 / (long double)n);
		else
			var[c] = (double)(m2 / (long double)(n - 1));
	}
}

void add_ds_batch(struct stats_agg *a, const struct dataset *ds, size_t b, enum stats_var_kind kind)
{
	double *mean = calloc(ds->channels, sizeof(*mean));
	double *var = calloc(ds->channels, sizeof(*var));

	ck_assert(mean != NULL && var != NULL);
	batch_report(ds, b, kind, mean, var);
	stats_agg_add_batch(a, (int64_t)ds->len[b], mean, var, kind);
	free(mean);
	free(var);
}

/* Add batches order[0..cnt) (or 0..cnt when order is NULL) to a. */
void add_ds_batches(struct stats_agg *a, const struct dataset *ds, const size_t *order, size_t cnt,
		    enum stats_var_kind kind)
{
	size_t i;

	for (i = 0; i < cnt; i++)
		add_ds_batch(a, ds, order ? order[i] : i, kind);
}

void agg_new(struct stats_agg *a, size_t channels)
{
	ck_assert_int_eq(stats_agg_init(a, channels), 0);
}

/* --- comparisons ------------------------------------------------------- */

/*
 * |got - want| <= rel * scale. Means are compared against |mean| + sd (a
 * mean near zero has no relative precision of its own; its spread does),
 * variances against themselves.
 */
void check_close(long double got, long double want, long double rel, long double scale,
		 const char *what, size_t c)
{
	long double err = fabsl(got - want);

	ck_assert_msg(isfinite((double)got) && err <= rel * scale,
		      "%s[%zu]: got %.20Lg want %.20Lg (err %.3Lg, allowed %.3Lg)", what, c, got,
		      want, err, rel * scale);
}

/* Population estimate of a against the raw-data reference. */
void check_population(const struct stats_agg *a, const struct dataset *ds, long double rel_mean,
		      long double rel_var)
{
	double *mean = calloc(a->channels, sizeof(*mean));
	double *var = calloc(a->channels, sizeof(*var));
	size_t c;

	ck_assert(mean != NULL && var != NULL);
	ck_assert_int_eq(a->n, (int64_t)ds->total);
	ck_assert_int_eq(a->k, (int64_t)ds->nb);
	ck_assert_int_eq(stats_estimate(a, STATS_EST_POPULATION, mean, var), 0);
	for (c = 0; c < a->channels; c++) {
		long double rm, rv;

		ref_population(ds, c, &rm, &rv);
		check_close(mean[c], rm, rel_mean, fabsl(rm) + sqrtl(rv), "population mean", c);
		check_close(var[c], rv, rel_var, rv, "population var", c);
	}
	free(mean);
	free(var);
}

void check_mean_of_batch_var(const struct stats_agg *a, const struct dataset *ds, long double rel)
{
	double *mean = calloc(a->channels, sizeof(*mean));
	double *var = calloc(a->channels, sizeof(*var));
	size_t c;

	ck_assert(mean != NULL && var != NULL);
	ck_assert_int_eq(stats_estimate(a, STATS_EST_MEAN_OF_BATCH_VAR, mean, var), 0);
	for (c = 0; c < a->channels; c++) {
		long double rm, rv;

		ref_mean_of_batch_var(ds, c, &rm, &rv);
		check_close(mean[c], rm, rel, fabsl(rm) + sqrtl(rv), "mean_of_batch_var mean", c);
		check_close(var[c], rv, rel, rv, "mean_of_batch_var var", c);
	}
	free(mean);
	free(var);
}

/*
 * Two aggregates of the same batches (split, ordered or merged differently)
 * must agree: counts exactly, every array to rel.
 */
void check_agg_close(const struct stats_agg *got, const struct stats_agg *want, long double rel)
{
	size_t c;

	ck_assert_uint_eq(got->channels, want->channels);
	ck_assert_int_eq(got->n, want->n);
	ck_assert_int_eq(got->k, want->k);
	ck_assert_int_eq(got->nbs_min, want->nbs_min);
	ck_assert_int_eq(got->nbs_max, want->nbs_max);
	for (c = 0; c < want->channels; c++) {
		long double sd = sqrtl((long double)want->m2[c] / want->n);

		check_close(got->mean[c], want->mean[c], rel, fabsl(want->mean[c]) + sd, "mean", c);
		check_close(got->m2[c], want->m2[c], rel, want->m2[c], "m2", c);
		check_close(got->bmean[c], want->bmean[c], rel, fabsl(want->bmean[c]) + sd, "bmean",
			    c);
		/*
		 * The batch means arrive rounded to double, so each deviation
		 * d = m_i - bmean is only known to a few ulps of |bmean|; when
		 * the batch means spread little against their size (mean 1.3,
		 * spread 1e-4) that, not the merge, bounds how well bm2 can
		 * agree: |error| <~ 2 * sum|d_i| * ulp(bmean). Any real bug
		 * is of the order of bm2 itself, far above this allowance.
		 */
		check_close(got->bm2[c], want->bm2[c], rel,
			    want->bm2[c] + 8.0L * DBL_EPSILON * fabsl(want->bmean[c]) *
						   sqrtl((long double)want->k * want->bm2[c]) / rel,
			    "bm2", c);
		check_close(got->uvar[c], want->uvar[c], rel, want->uvar[c], "uvar", c);
	}
}

void agg_snap(const struct stats_agg *a, struct agg_bytes *b)
{
	size_t len = STATS_AGG_ARRAYS * a->channels * sizeof(double);

	b->s = *a;
	b->arr = malloc(len);
	ck_assert(b->arr != NULL);
	memcpy(b->arr, a->mean, len);
}

int agg_unchanged(const struct stats_agg *a, const struct agg_bytes *b)
{
	size_t len = STATS_AGG_ARRAYS * b->s.channels * sizeof(double);

	return memcmp(a, &b->s, sizeof(*a)) == 0 && memcmp(a->mean, b->arr, len) == 0;
}

/* Same numbers, bit for bit (the arrays may live elsewhere). */
int agg_same_bits(const struct stats_agg *a, const struct stats_agg *b)
{
	return a->channels == b->channels && a->n == b->n && a->k == b->k &&
	       a->nbs_min == b->nbs_min && a->nbs_max == b->nbs_max &&
	       memcmp(a->mean, b->mean, a->channels * sizeof(double)) == 0 &&
	       memcmp(a->m2, b->m2, a->channels * sizeof(double)) == 0 &&
	       memcmp(a->bmean, b->bmean, a->channels * sizeof(double)) == 0 &&
	       memcmp(a->bm2, b->bm2, a->channels * sizeof(double)) == 0 &&
	       memcmp(a->uvar, b->uvar, a->channels * sizeof(double)) == 0;
}
