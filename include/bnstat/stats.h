/*
 * stats: the estimator math of bnstat, as pure functions over arrays.
 *
 * A batch reports, per channel, count n, mean m and variance v. It becomes
 * the partial aggregate (n, m, M2) and partial aggregates are merged with
 * Chan, Golub and LeVeque's pairwise update in double precision:
 *
 *   n = nA + nB;  d = mB - mA;  m = mA + d*nB/n;  M2 = M2A + M2B + d*d*nA*nB/n
 *
 * which is exact in the sense that matters (no E[x^2]-E[x]^2 cancellation)
 * and associative to rounding: any split into batches, any order, any number
 * of workers gives the same answer to ~1e-12 relative.
 *
 * struct stats_agg is everything the estimators need about a set of batches
 * of one layer. Besides the pooled (n, mean, M2) it keeps, with weight one
 * per batch, the mean and M2 of the batch means (for mean_of_batch_var and
 * batch_noise) and the sum of the unbiased batch variances.
 *
 * Nothing here allocates except stats_agg_init(), and nothing does I/O.
 */
#ifndef BNSTAT_STATS_H
#define BNSTAT_STATS_H

#include <stddef.h>
#include <stdint.h>

enum stats_var_kind {
	STATS_VAR_UNBIASED = 0, /* v = M2/(n-1), PyTorch running_var convention */
	STATS_VAR_BIASED = 1,	/* v = M2/n */
};

enum stats_estimator {
	STATS_EST_POPULATION = 0,	 /* mean = m, var = M2/n (fvcore) */
	STATS_EST_MEAN_OF_BATCH_VAR = 1, /* mean of batch means, mean of unbiased batch vars */
};

/* Number of double arrays of length `channels` in a stats_agg. */
#define STATS_AGG_ARRAYS 5

struct stats_agg {
	size_t channels;
	int64_t n;	 /* elements per channel merged (sum of batch counts) */
	int64_t k;	 /* batches merged (batches with count 0 do not count) */
	int64_t nbs_min; /* smallest batch count merged, 0 when k == 0 */
	int64_t nbs_max; /* largest batch count merged, 0 when k == 0 */
	double *mean;	 /* [channels] pooled mean */
	double *m2;	 /* [channels] pooled sum of squared deviations */
	double *bmean;	 /* [channels] unweighted mean of the k batch means */
	double *bm2;	 /* [channels] sum of squared deviations of batch means from bmean */
	double *uvar;	 /* [channels] sum of the k unbiased batch variances */
};

/*
 * Set up an empty aggregate of `channels` channels. The five arrays are one
 * allocation owned by the aggregate; release it with stats_agg_free().
 * Returns 0 or -ENOMEM (-EINVAL when channels is 0). On failure *a is left
 * zeroed, so stats_agg_free() on it is harmless.
 */
int stats_agg_init(struct stats_agg *a, size_t channels);

/*
 * Point the arrays of *a into `block`, STATS_AGG_ARRAYS * channels doubles
 * the caller owns, in the order mean, m2, bmean, bm2, uvar (the layout
 * stats_agg_init() allocates, and the one the store keeps on disk). Sets
 * channels; leaves n, k, nbs_min and nbs_max to the caller. Do not pass
 * such an aggregate to stats_agg_free().
 */
void stats_agg_view(struct stats_agg *a, double *block, size_t channels);

/* Release what stats_agg_init() allocated; a zeroed aggregate is fine too. */
void stats_agg_free(struct stats_agg *a);

/* Make *a empty again (keeps its channel count and memory). */
void stats_agg_reset(struct stats_agg *a);

/*
 * Merge one batch into *a: count elements per channel, per-channel mean and
 * variance of kind `kind`, arrays of a->channels doubles borrowed from the
 * caller. count == 0 is a no-op (the layer was unused in that batch); the
 * arrays are then not read and may be NULL.
 * The caller has validated the input (finite, var >= 0, count >= 2 for
 * unbiased variance); a biased batch with count 1 contributes an unbiased
 * variance of 0 to mean_of_batch_var.
 */
void stats_agg_add_batch(struct stats_agg *a, int64_t count, const double *mean, const double *var,
			 enum stats_var_kind kind);

/*
 * Merge aggregate *src into *dst (same channel count, which is asserted;
 * src is borrowed and left unchanged). Merging an empty aggregate is a
 * no-op; merging into an empty one copies src exactly.
 */
void stats_agg_merge(struct stats_agg *dst, const struct stats_agg *src);

/*
 * Population statistics of *a by estimator `est` into the caller's arrays
 * mean_out/var_out of a->channels doubles.
 * Returns 0, -ENODATA when *a holds no batch, or -EINVAL for an unknown
 * estimator; the arrays are not written on error.
 */
int stats_estimate(const struct stats_agg *a, enum stats_estimator est, double *mean_out,
		   double *var_out);

/*
 * The batch-noise diagnostic (docs/API.md, "Precise statistics"): per channel
 * sqrt(s^2 / sigma_p^2), with s^2 the sample variance (divisor k-1) of the
 * k batch means and sigma_p^2 = M2/n the population variance; *out is the
 * mean over channels. Channels whose population variance is 0 are left out
 * of the mean. Returns 0, or -ENODATA when k < 2 or no channel has a
 * positive population variance (*out is then not written).
 */
int stats_batch_noise(const struct stats_agg *a, double *out);

/*
 * The precision of the precise mean of a (docs/API.md, "Precision"): its
 * batch noise in *noise (as stats_batch_noise() gives it), *mean_se =
 * batch_noise / sqrt(k), the mean over channels of the standard error of
 * the pooled mean in units of the population sigma, and *batches_for =
 * ceil((batch_noise / target_se)^2), the batches for which that standard
 * error would reach target_se (> 0). Returns 0, or -ENODATA as
 * stats_batch_noise() does (nothing written).
 */
int stats_precision(const struct stats_agg *a, double target_se, double *noise, double *mean_se,
		    double *batches_for);

/* The same from a batch noise already known, of k batches (a snapshot's). */
void stats_precision_of(double noise, int64_t k, double target_se, double *mean_se,
			double *batches_for);

/*
 * One channel: merge (nb, mb, m2b) into (*n, *mean, *m2) with Chan's
 * update (either side may be empty). Every per-channel pooling outside
 * stats_agg goes through this, so that the same data pools to the same
 * bits wherever it is pooled.
 */
void stats_merge1(int64_t *n, double *mean, double *m2, int64_t nb, double mb, double m2b);

/*
 * One step of PyTorch's EMA for one channel: with the step's pooled
 * (n, mean, M2), r <- a*x + (1-a)*r for the mean and for the unbiased
 * variance M2/(n-1) (0 when n == 1).
 */
void stats_ema_step(double a, int64_t n, double mean, double m2, double *r_mean, double *r_var);

/*
 * The unbiased variances M2/(n-1) of a step's pooled statistics (0 when
 * n <= 1), `channels` of them from m2 into var_out (the caller's arrays):
 * the x that stats_ema_step() feeds the EMA's variance, computed once for
 * any number of momenta.
 */
void stats_unbiased_vars(size_t channels, int64_t n, const double *m2, double *var_out);

/*
 * stats_ema_step() over `channels` channels with the step's variances
 * already computed by stats_unbiased_vars(): the same operations, so the
 * same bits. All arrays are the caller's.
 */
void stats_ema_update(size_t channels, double a, const double *x_mean, const double *x_var,
		      double *r_mean, double *r_var);

/* The eps of the comparison metrics (docs/API.md, "Comparison"). */
#define STATS_CMP_EPS 1e-5

/* How far an estimate (mean_e, var_e) is from a reference (mean_p, var_p). */
struct stats_cmp {
	double mean_err;     /* mean over channels of |me - mp| / sqrt(vp + eps) */
	double mean_err_max; /* the maximum over channels */
	double var_err;	     /* mean of |ln((ve + eps) / (vp + eps))| */
	double var_err_max;
	double kl; /* mean of KL(N(mp, vp + eps) || N(me, ve + eps)) */
	double kl_max;
};

/*
 * Compare per channel an estimate (an EMA, or a source domain) with a
 * reference (the precise statistics, or a target domain), arrays of
 * `channels` doubles borrowed from the caller, into *out.
 */
void stats_compare(size_t channels, const double *mean_e, const double *var_e, const double *mean_p,
		   const double *var_p, struct stats_cmp *out);

#endif
