/*
 * bench_body.c: the upload bodies of both benchmarks (bench_body.h).
 */
#include "bench_body.h"

#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>

#include "bench_model.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bench writes little-endian binary bodies with memcpy; port it first"
#endif

void body_b64(struct sbuf *b, const void *data, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const uint8_t *p = data;
	size_t i;
	char *o;

	sb_reserve(b, (n + 2) / 3 * 4);
	o = b->p + b->len;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = tab[(v >> 6) & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	b->len = (size_t)(o - b->p);
	b->p[b->len] = '\0';
}

static void json_array(struct sbuf *b, const float *x, size_t n)
{
	char num[32];
	size_t i;

	sb_puts(b, "[");
	for (i = 0; i < n; i++) {
		int k = snprintf(num, sizeof(num), i ? ",%.9g" : "%.9g", (double)x[i]);

		sb_add(b, num, (size_t)k);
	}
	sb_puts(b, "]");
}

void body_layers(struct sbuf *b, enum body_enc enc, const char *const parts[],
		 const float *const arrays[], int n_parts)
{
	size_t l;
	int p;

	sb_puts(b, "\"layers\":{");
	for (l = 0; l < N_LAYERS; l++) {
		const struct bn_layer *L = &layers[l];

		sb_printf(b, "%s\"%s\":{\"count\":%" PRId64, l ? "," : "", L->name, L->count);
		for (p = 0; p < n_parts; p++) {
			const float *x = arrays[p] + L->offset;

			if (enc == BODY_NUMBERS) {
				sb_printf(b, ",\"%s\":", parts[p]);
				json_array(b, x, L->channels);
			} else {
				sb_printf(b, ",\"%s\":{\"dtype\":\"f32\",\"b64\":\"", parts[p]);
				body_b64(b, x, L->channels * sizeof(float));
				sb_puts(b, "\"}");
			}
		}
		sb_puts(b, "}");
	}
	sb_puts(b, "}}");
}

size_t body_st_table(struct sbuf *b, const char *const parts[], int n_parts)
{
	size_t off = 0, l;
	int p;

	for (l = 0; l < N_LAYERS; l++) {
		const struct bn_layer *L = &layers[l];
		size_t fb = L->channels * sizeof(float);

		sb_printf(b,
			  ",\"%s.count\":{\"dtype\":\"I64\",\"shape\":[],"
			  "\"data_offsets\":[%zu,%zu]}",
			  L->name, off, off + 8);
		off += 8;
		for (p = 0; p < n_parts; p++) {
			sb_printf(b,
				  ",\"%s.%s\":{\"dtype\":\"F32\",\"shape\":[%u],"
				  "\"data_offsets\":[%zu,%zu]}",
				  L->name, parts[p], L->channels, off, off + fb);
			off += fb;
		}
	}
	sb_puts(b, "}");
	return off;
}

void body_st_data(struct sbuf *b, const float *const arrays[], int n_parts)
{
	size_t l;
	int p;

	for (l = 0; l < N_LAYERS; l++) {
		const struct bn_layer *L = &layers[l];

		sb_add(b, &L->count, sizeof(int64_t));
		for (p = 0; p < n_parts; p++)
			sb_add(b, arrays[p] + L->offset, L->channels * sizeof(float));
	}
}

size_t body_st_pad(size_t len)
{
	return (8 - len % 8) % 8;
}
