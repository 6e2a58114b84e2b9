/*
 * bench_body.h: the one writer of upload bodies for both benchmarks, in
 * the forms of docs/API.md, "Upload — POST /v1/runs/{run}/batches": JSON
 * with number arrays, JSON with {"dtype":"f32","b64":...} arrays, and
 * safetensors ("The binary form (safetensors)").
 *
 * Every function appends to an sbuf, over the layers of bench_model.h and
 * flat per-channel arrays (arrays[p] + layers[l].offset). A body is a
 * per-upload head (worker, step, seq: each program writes its own)
 * followed by these parts, so that bench can render the parts once and
 * send them again under many heads.
 */
#ifndef BENCH_BODY_H
#define BENCH_BODY_H

#include <stddef.h>

#include "bench_sbuf.h"

/* How a JSON body carries an f32 array. */
enum body_enc {
	BODY_NUMBERS, /* [x, ...], each f32 printed with %.9g */
	BODY_B64,     /* {"dtype":"f32","b64":"<base64 of the little-endian bytes>"} */
};

/* Append the standard base64 (with '=' padding) of data[0..n). */
void body_b64(struct sbuf *b, const void *data, size_t n);

/*
 * Append "layers":{"<layer>":{"count":N,"<part>":<array>,...},...}} --
 * the last brace closes the root object, whose head the caller wrote.
 * parts[p] names arrays[p] (e.g. "mean", "var", "ema_mean"); n_parts of
 * them per layer, in that order.
 */
void body_layers(struct sbuf *b, enum body_enc enc, const char *const parts[],
		 const float *const arrays[], int n_parts);

/*
 * Append the tensor table of a safetensors header and the brace that
 * closes it: ,"<layer>.count":{"dtype":"I64","shape":[],...}, then
 * ,"<layer>.<part>":{"dtype":"F32","shape":[C],...} for each part, with
 * data_offsets back to back. The caller writes {"__metadata__":{...}}
 * before it. Returns the size of the data buffer the table describes.
 */
size_t body_st_table(struct sbuf *b, const char *const parts[], int n_parts);

/* Append the data buffer that body_st_table() describes, from arrays[]. */
void body_st_data(struct sbuf *b, const float *const arrays[], int n_parts);

/*
 * The spaces that pad a safetensors JSON header of len bytes to a
 * multiple of 8, as the safetensors writer does, so the data stays aligned.
 */
size_t body_st_pad(size_t len);

#endif /* BENCH_BODY_H */
