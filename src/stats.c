/*
 * stats: the estimator math (see include/bnstat/stats.h and docs/DESIGN.md, "The statistics").
 *
 * Every merge here, of a batch into an aggregate or of two aggregates, is the
 * same Chan-Golub-LeVeque pairwise update, applied twice: once to the pooled
 * elements (weights = element counts) and once to the batch means (weight one
 * per batch). Using the one update for both paths is what makes the result
 * independent of how the batches were split among workers and in which order
 * they arrived, up to rounding.
 */
#include "bnstat/stats.h"

#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int stats_agg_init(struct stats_agg *a, size_t channels)
{
	double *block;

	memset(a, 0, sizeof(*a));
	if (channels == 0)
		return -EINVAL;
	/*
	 * One block for the five arrays: one allocation to fail, one to free,
	 * and reset/copy are a single memset/memcpy. STATS_AGG_ARRAYS *
	 * channels cannot overflow for any channel count a caller could have
	 * memory for, but guard anyway rather than allocate too little.
	 */
	if (channels > SIZE_MAX / STATS_AGG_ARRAYS)
		return -ENOMEM;
	block = calloc(STATS_AGG_ARRAYS * channels, sizeof(*block));
	if (block == NULL)
		return -ENOMEM;
	stats_agg_view(a, block, channels);
	return 0;
}

void stats_agg_view(struct stats_agg *a, double *block, size_t channels)
{
	a->channels = channels;
	a->mean = block;
	a->m2 = block + channels;
	a->bmean = block + 2 * channels;
	a->bm2 = block + 3 * channels;
	a->uvar = block + 4 * channels;
}

void stats_agg_free(struct stats_agg *a)
{
	/* mean is the start of the single block that holds all five arrays. */
	free(a->mean);
	memset(a, 0, sizeof(*a));
}

void stats_agg_reset(struct stats_agg *a)
{
	if (a->mean != NULL)
		memset(a->mean, 0, STATS_AGG_ARRAYS * a->channels * sizeof(*a->mean));
	a->n = 0;
	a->k = 0;
	a->nbs_min = 0;
	a->nbs_max = 0;
}

void stats_agg_add_batch(struct stats_agg *a, int64_t count, const double *mean, const double *var,
			 enum stats_var_kind kind)
{
	int64_t n;
	double nb, wn, fn, wk, fk;
	size_t c;

	/*
	 * A layer unused in a batch sends count 0 and possibly no arrays: it
	 * must neither touch the arrays nor count as a batch. A negative count
	 * is a caller bug; treating it like 0 keeps the aggregate sane.
	 */
	if (count <= 0)
		return;

	n = a->n + count;
	nb = (double)count;
	/*
	 * Per-batch weights of the Chan update, computed once: wn = nB/n and
	 * fn = nA*nB/n for the elements; wk = 1/(k+1) and fk = k/(k+1) for the
	 * batch means, where the new batch mean is one observation.
	 */
	wn = nb / (double)n;
	fn = (double)a->n * wn;
	wk = 1.0 / (double)(a->k + 1);
	fk = (double)a->k * wk;

	for (c = 0; c < a->channels; c++) {
		double m2b, d;

		if (kind == STATS_VAR_BIASED)
			m2b = var[c] * nb;
		else
			m2b = var[c] * (double)(count - 1);

		if (a->k == 0) {
			/*
			 * The first batch is taken as it is: the update would
			 * compute d*d*0, which is NaN when d*d overflows.
			 */
			a->mean[c] = mean[c];
			a->m2[c] = m2b;
			a->bmean[c] = mean[c];
			a->bm2[c] = 0.0;
		} else {
			d = mean[c] - a->mean[c];
			a->mean[c] += d * wn;
			a->m2[c] += m2b + d * d * fn;

			d = mean[c] - a->bmean[c];
			a->bmean[c] += d * wk;
			a->bm2[c] += d * d * fk;
		}

		/*
		 * uvar wants the unbiased batch variance: M2/(n-1) for a
		 * biased report. Divide rather than multiply by a reciprocal
		 * so that a biased and an unbiased report of the same batch
		 * give the same bits whenever v*n is exact. A single element
		 * has no spread to estimate and adds 0 (the header's contract;
		 * ingest refuses count 1 with an unbiased variance).
		 */
		if (kind != STATS_VAR_BIASED)
			a->uvar[c] += var[c];
		else if (count > 1)
			a->uvar[c] += m2b / (double)(count - 1);
	}

	if (a->k == 0 || count < a->nbs_min)
		a->nbs_min = count;
	if (a->k == 0 || count > a->nbs_max)
		a->nbs_max = count;
	a->n = n;
	a->k++;
}

void stats_agg_merge(struct stats_agg *dst, const struct stats_agg *src)
{
	int64_t n, k;
	double wn, fn, wk, fk;
	size_t c;

	assert(dst->channels == src->channels);
	if (src->k == 0)
		return;
	if (dst->k == 0) {
		/*
		 * The update below would give the same numbers up to the last
		 * bit or so; a copy makes "merge into empty" exact, so that a
		 * tree of merges with empty leaves equals one without them.
		 */
		if (dst != src)
			memcpy(dst->mean, src->mean,
			       STATS_AGG_ARRAYS * src->channels * sizeof(*src->mean));
		dst->n = src->n;
		dst->k = src->k;
		dst->nbs_min = src->nbs_min;
		dst->nbs_max = src->nbs_max;
		return;
	}

	/* Read every scalar of src before writing dst: they may alias. */
	n = dst->n + src->n;
	k = dst->k + src->k;
	wn = (double)src->n / (double)n;
	fn = (double)dst->n * wn;
	wk = (double)src->k / (double)k;
	fk = (double)dst->k * wk;

	for (c = 0; c < dst->channels; c++) {
		double d;

		d = src->mean[c] - dst->mean[c];
		dst->mean[c] += d * wn;
		dst->m2[c] += src->m2[c] + d * d * fn;

		d = src->bmean[c] - dst->bmean[c];
		dst->bmean[c] += d * wk;
		dst->bm2[c] += src->bm2[c] + d * d * fk;

		dst->uvar[c] += src->uvar[c];
	}

	if (src->nbs_min < dst->nbs_min)
		dst->nbs_min = src->nbs_min;
	if (src->nbs_max > dst->nbs_max)
		dst->nbs_max = src->nbs_max;
	dst->n = n;
	dst->k = k;
}

int stats_estimate(const struct stats_agg *a, enum stats_estimator est, double *mean_out,
		   double *var_out)
{
	size_t c;

	if (a->k == 0)
		return -ENODATA;

	switch (est) {
	case STATS_EST_POPULATION:
		for (c = 0; c < a->channels; c++) {
			mean_out[c] = a->mean[c];
			var_out[c] = a->m2[c] / (double)a->n;
		}
		return 0;
	case STATS_EST_MEAN_OF_BATCH_VAR:
		for (c = 0; c < a->channels; c++) {
			mean_out[c] = a->bmean[c];
			var_out[c] = a->uvar[c] / (double)a->k;
		}
		return 0;
	}
	return -EINVAL;
}

int stats_batch_noise(const struct stats_agg *a, double *out)
{
	double sum = 0.0;
	size_t c, used = 0;

	if (a->k < 2)
		return -ENODATA;

	for (c = 0; c < a->channels; c++) {
		double pvar = a->m2[c] / (double)a->n;
		double s2 = a->bm2[c] / (double)(a->k - 1);

		/*
		 * A constant channel has no scale to compare the batch means
		 * against; counting it would put inf or NaN into the layer's
		 * value.
		 */
		if (!(pvar > 0.0))
			continue;
		sum += sqrt(s2 / pvar);
		used++;
	}
	if (used == 0)
		return -ENODATA;
	*out = sum / (double)used;
	return 0;
}

void stats_precision_of(double noise, int64_t k, double target_se, double *mean_se,
			double *batches_for)
{
	double r = noise / target_se;

	*mean_se = noise / sqrt((double)k);
	*batches_for = ceil(r * r);
}

int stats_precision(const struct stats_agg *a, double target_se, double *noise, double *mean_se,
		    double *batches_for)
{
	double n;

	if (stats_batch_noise(a, &n) < 0)
		return -ENODATA;
	*noise = n;
	stats_precision_of(n, a->k, target_se, mean_se, batches_for);
	return 0;
}

void stats_compare(size_t channels, const double *mean_e, const double *var_e, const double *mean_p,
		   const double *var_p, struct stats_cmp *out)
{
	struct stats_cmp c = { 0 };
	size_t i;

	for (i = 0; i < channels; i++) {
		double vp = var_p[i] + STATS_CMP_EPS;
		double ve = var_e[i] + STATS_CMP_EPS;
		double d = mean_e[i] - mean_p[i];
		double merr = fabs(d) / sqrt(vp);
		double lr = log(ve / vp); /* once: var_err and kl both take it */
		double verr = fabs(lr);
		/* KL(N(mp, vp) || N(me, ve)) = (ln(ve/vp) + (vp + d^2)/ve - 1) / 2 */
		double kl = 0.5 * (lr + (vp + d * d) / ve - 1.0);

		c.mean_err += merr;
		c.var_err += verr;
		c.kl += kl;
		if (merr > c.mean_err_max)
			c.mean_err_max = merr;
		if (verr > c.var_err_max)
			c.var_err_max = verr;
		if (kl > c.kl_max)
			c.kl_max = kl;
	}
	if (channels > 0) {
		c.mean_err /= (double)channels;
		c.var_err /= (double)channels;
		c.kl /= (double)channels;
	}
	*out = c;
}

void stats_merge1(int64_t *n, double *mean, double *m2, int64_t nb, double mb, double m2b)
{
	double total, d;

	if (nb == 0)
		return;
	if (*n == 0) {
		*n = nb;
		*mean = mb;
		*m2 = m2b;
		return;
	}
	total = (double)(*n + nb);
	d = mb - *mean;
	*mean += d * (double)nb / total;
	*m2 += m2b + d * d * (double)*n * (double)nb / total;
	*n += nb;
}

void stats_ema_step(double a, int64_t n, double mean, double m2, double *r_mean, double *r_var)
{
	/* PyTorch: running = momentum * batch + (1 - momentum) * running */
	double var = n > 1 ? m2 / (double)(n - 1) : 0.0;

	*r_mean = a * mean + (1.0 - a) * *r_mean;
	*r_var = a * var + (1.0 - a) * *r_var;
}

void stats_unbiased_vars(size_t channels, int64_t n, const double *m2, double *var_out)
{
	size_t i;

	for (i = 0; i < channels; i++)
		var_out[i] = n > 1 ? m2[i] / (double)(n - 1) : 0.0;
}

void stats_ema_update(size_t channels, double a, const double *x_mean, const double *x_var,
		      double *r_mean, double *r_var)
{
	/*
	 * as stats_ema_step(): running = momentum * batch + (1 - momentum) *
	 * running, two channels at a time (element-wise, so the same bits)
	 */
	typedef double pair __attribute__((vector_size(2 * sizeof(double))));
	const pair va = { a, a }, vb = { 1.0 - a, 1.0 - a };
	size_t i;

	for (i = 0; i + 2 <= channels; i += 2) {
		pair xm, xv, rm, rv;

		memcpy(&xm, x_mean + i, sizeof(xm));
		memcpy(&xv, x_var + i, sizeof(xv));
		memcpy(&rm, r_mean + i, sizeof(rm));
		memcpy(&rv, r_var + i, sizeof(rv));
		rm = va * xm + vb * rm;
		rv = va * xv + vb * rv;
		memcpy(r_mean + i, &rm, sizeof(rm));
		memcpy(r_var + i, &rv, sizeof(rv));
	}
	for (; i < channels; i++) {
		r_mean[i] = a * x_mean[i] + (1.0 - a) * r_mean[i];
		r_var[i] = a * x_var[i] + (1.0 - a) * r_var[i];
	}
}
