/*
 * bench_sbuf.h: a growable byte string for the benchmarks, always
 * NUL-terminated, that dies instead of failing to grow.
 *
 * A zeroed struct sbuf is an empty string. The struct owns p; sb_free()
 * (or free(b->p)) releases it.
 */
#ifndef BENCH_SBUF_H
#define BENCH_SBUF_H

#include <stddef.h>

struct sbuf {
	char *p;
	size_t len, cap;
};

/* Make room for add more bytes (and the NUL) after b->len. */
void sb_reserve(struct sbuf *b, size_t add);

/* Append n bytes of s (copied). */
void sb_add(struct sbuf *b, const void *s, size_t n);

/* Append the string s (copied). */
void sb_puts(struct sbuf *b, const char *s);

/* Append printf output. */
void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Free the bytes and zero the struct (an empty string again). */
void sb_free(struct sbuf *b);

#endif /* BENCH_SBUF_H */
