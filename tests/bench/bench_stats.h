/*
 * bench_stats.h: statistics of measured timings (percentiles, medians).
 */
#ifndef BENCH_STATS_H
#define BENCH_STATS_H

#include <stddef.h>

/* For qsort: ascending doubles. */
int cmp_double(const void *a, const void *b);

/* The nearest-rank percentile p (0..1) of sorted v[0..n); NAN when n is 0. */
double stats_percentile(const double *v, size_t n, double p);

/*
 * Sort v[0..n) in place and return its median (the mean of the middle two
 * when n is even). n must be > 0.
 */
double stats_median(double *v, size_t n);

#endif /* BENCH_STATS_H */
