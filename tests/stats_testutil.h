/*
 * stats_testutil: what the Check programs of the stats module share —
 * deterministic data (splitmix64 + Box-Muller), independent long double
 * two-pass references, feeding batches to the code under test, and the
 * comparisons. Every expected value comes from raw generated samples, never
 * through the code under test.
 */
#ifndef BNSTAT_STATS_TESTUTIL_H
#define BNSTAT_STATS_TESTUTIL_H

#include <stddef.h>
#include <stdint.h>

#include "bnstat/stats.h"

#define TWO_PI 6.283185307179586476925286766559L

struct rng {
	uint64_t s;
};

/*
 * The raw elements of one layer, split into batches: x[c * total + i] is
 * element i of channel c, and batch b is elements off[b] .. off[b]+len[b]-1
 * of every channel.
 */
struct dataset {
	size_t channels;
	size_t total;
	double *x;
	size_t nb;
	size_t *off;
	size_t *len;
};

/* A byte copy of an aggregate, to prove that something did not change it. */
struct agg_bytes {
	struct stats_agg s;
	double *arr;
};

uint64_t rng_next(struct rng *r);
double rng_unit(struct rng *r);
double rng_normal(struct rng *r);
size_t rng_range(struct rng *r, size_t lo, size_t hi);
void rng_shuffle(struct rng *r, size_t *v, size_t len);
void ds_init(struct dataset *ds, size_t channels, const size_t *sizes, size_t nb);
void ds_fill_normal(struct dataset *ds, struct rng *r, size_t c, double mu, double sigma);
void ds_fill_const(struct dataset *ds, size_t c, double v);
void ds_free(struct dataset *ds);
size_t *random_sizes(struct rng *r, size_t nb, size_t lo, size_t hi);
void ref_moments(const struct dataset *ds, size_t c, size_t off, size_t len, long double *mean,
		 long double *m2);
void ref_population(const struct dataset *ds, size_t c, long double *mean, long double *var);
void ref_mean_of_batch_var(const struct dataset *ds, size_t c, long double *mean, long double *var);
size_t ref_batch_noise(const struct dataset *ds, long double *out);
void batch_report(const struct dataset *ds, size_t b, enum stats_var_kind kind, double *mean,
		  double *var);
void add_ds_batch(struct stats_agg *a, const struct dataset *ds, size_t b,
		  enum stats_var_kind kind);
void add_ds_batches(struct stats_agg *a, const struct dataset *ds, const size_t *order, size_t cnt,
		    enum stats_var_kind kind);
void agg_new(struct stats_agg *a, size_t channels);
void check_close(long double got, long double want, long double rel, long double scale,
		 const char *what, size_t c);
void check_population(const struct stats_agg *a, const struct dataset *ds, long double rel_mean,
		      long double rel_var);
void check_mean_of_batch_var(const struct stats_agg *a, const struct dataset *ds, long double rel);
void check_agg_close(const struct stats_agg *got, const struct stats_agg *want, long double rel);
void agg_snap(const struct stats_agg *a, struct agg_bytes *b);
int agg_unchanged(const struct stats_agg *a, const struct agg_bytes *b);
int agg_same_bits(const struct stats_agg *a, const struct stats_agg *b);

#endif
