/*
 * bench_util.h: what every benchmark program needs first: messages on
 * stderr that name the program, allocation that dies instead of failing,
 * the clocks and the deterministic source of values.
 *
 * Shared by bench (the ingest benchmark) and bench_query (the query
 * benchmark); each program sets bench_prog before its first message.
 */
#ifndef BENCH_UTIL_H
#define BENCH_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* The prefix of every message on stderr ("bench", "bench_query"). */
extern const char *bench_prog;

/* Called by die() before it exits, when set (bench_query: stop the daemon). */
extern void (*die_cleanup)(void);

/*
 * Print "<prog>: <message>" on stderr, call die_cleanup if set, exit(2).
 * Any thread may call it.
 */
void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

/* Progress, "<prog>: <message>" on stderr; stdout carries only the report. */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/*
 * malloc, calloc, realloc and strdup that die() when out of memory. A size
 * of 0 allocates 1 byte, so the result is never NULL. The caller owns the
 * result and frees it with free().
 */
void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

/* CLOCK_MONOTONIC in seconds. */
double now_s(void);

/* The calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID) in seconds. */
double thread_cpu_s(void);

/* Sleep s seconds (nothing when s <= 0), resuming after signals. */
void sleep_s(double s);

/*
 * splitmix64: the next value of the sequence whose state is *s (updated).
 * The deterministic source of every value in the workloads.
 */
uint64_t splitmix64(uint64_t *s);

/*
 * The value of environment variable name when set and not empty, else def.
 * Returns a borrowed string (the environment's or def).
 */
const char *env_or(const char *name, const char *def);

/*
 * The value of the option at argv[*i]: argv[*i + 1], with *i advanced to
 * it; die() "<option> needs a value" when there is none. Borrowed from argv.
 */
const char *opt_value(int argc, char **argv, int *i);

#endif /* BENCH_UTIL_H */
