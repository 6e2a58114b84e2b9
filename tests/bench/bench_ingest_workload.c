/*
 * bench_ingest_workload.c: the ingest benchmark's uploads. A few value
 * sets ("variants") of ResNet-50 batch statistics, their three bodies
 * rendered once (bench_body.c), and each upload's HTTP request: a small
 * head of its own and the variant's parts, for writev.
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_body.h"
#include "bench_util.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bench writes little-endian binary bodies with memcpy; port it first"
#endif

struct variant *variants;
static struct sbuf st_desc; /* ,"bn1.count":{...},...}  the tensors of the header */

static double uniform01(uint64_t *s)
{
	return (double)(splitmix64(s) >> 11) * 0x1.0p-53;
}

unsigned variant_of(unsigned worker, int64_t step, unsigned seq)
{
	uint64_t s = ((uint64_t)worker << 40) ^ ((uint64_t)step << 12) ^ seq;

	return (unsigned)(splitmix64(&s) % opt.variants);
}

void make_variants(void)
{
	static const char *const parts[4] = { "mean", "var", "ema_mean", "ema_var" };
	int n_parts = opt.ema ? 4 : 2;
	unsigned v;
	size_t i, off;

	variants = xcalloc(opt.variants, sizeof(*variants));
	for (v = 0; v < opt.variants; v++) {
		struct variant *vr = &variants[v];
		uint64_t seed = 0xB5A7u + (uint64_t)v * 0x1000193u;
		const float *arrays[4];

		vr->mean = xmalloc(n_channels * sizeof(float));
		vr->var = xmalloc(n_channels * sizeof(float));
		vr->ema_mean = xmalloc(n_channels * sizeof(float));
		vr->ema_var = xmalloc(n_channels * sizeof(float));
		for (i = 0; i < n_channels; i++) {
			/* Box-Muller: mean ~ N(0, 1); var ~ U(0.5, 2) */
			double u1 = uniform01(&seed), u2 = uniform01(&seed);

			vr->mean[i] = (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
			vr->var[i] = (float)(0.5 + 1.5 * uniform01(&seed));
			/* an EMA near the population's: mean ~ N(0, 0.1), var ~ U(0.9, 1.1) */
			vr->ema_mean[i] = (float)(0.1 * (uniform01(&seed) - 0.5));
			vr->ema_var[i] = (float)(0.9 + 0.2 * uniform01(&seed));
		}
		arrays[0] = vr->mean;
		arrays[1] = vr->var;
		arrays[2] = vr->ema_mean;
		arrays[3] = vr->ema_var;
		body_layers(&vr->json, BODY_NUMBERS, parts, arrays, n_parts);
		body_layers(&vr->b64, BODY_B64, parts, arrays, n_parts);
		body_st_data(&vr->st_data, arrays, n_parts);
	}

	/* the tensor table of the safetensors header: the same for every variant */
	off = body_st_table(&st_desc, parts, n_parts);
	if (off != variants[0].st_data.len)
		die("safetensors offsets (%zu) do not cover the data (%zu)", off,
		    variants[0].st_data.len);
}

static const char spaces[8] = "        ";

void request_build(struct request *r, enum form form, const char *run, unsigned port,
		   unsigned worker, int64_t step, unsigned seq)
{
	const struct variant *vr = &variants[variant_of(worker, step, seq)];
	char bhead[512];
	size_t hl, bl;
	int n;

	if (form == F_ST) {
		uint64_t hlen;
		size_t pad;

		n = snprintf(bhead + 8, sizeof(bhead) - 8,
			     "{\"__metadata__\":{\"worker\":\"rank%u\",\"step\":\"%" PRId64
			     "\",\"seq\":\"%u\",\"domain\":\"default\",\"var_kind\":\"unbiased\"}",
			     worker, step, seq);
		pad = body_st_pad((size_t)n + st_desc.len);
		hlen = (uint64_t)n + st_desc.len + pad;
		memcpy(bhead, &hlen, 8);
		bl = 8 + (size_t)n;
		r->body_len = 8 + hlen + vr->st_data.len;
		r->iov[1] = (struct iovec){ (void *)st_desc.p, st_desc.len };
		r->iov[2] = (struct iovec){ (void *)spaces, pad };
		r->iov[3] = (struct iovec){ vr->st_data.p, vr->st_data.len };
		r->iovcnt = 4;
	} else {
		const struct sbuf *part = form == F_JSON ? &vr->json : &vr->b64;

		n = snprintf(bhead, sizeof(bhead),
			     "{\"worker\":\"rank%u\",\"step\":%" PRId64 ",\"seq\":%u,"
			     "\"domain\":\"default\",\"var_kind\":\"unbiased\",",
			     worker, step, seq);
		bl = (size_t)n;
		r->body_len = bl + part->len;
		r->iov[1] = (struct iovec){ part->p, part->len };
		r->iovcnt = 2;
	}
	n = snprintf(r->head, sizeof(r->head),
		     "POST /v1/runs/%s/batches HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
		     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
		     run, port, form == F_ST ? "application/octet-stream" : "application/json",
		     r->body_len);
	hl = (size_t)n;
	if (hl + bl > sizeof(r->head))
		die("request head too long");
	memcpy(r->head + hl, bhead, bl);
	r->iov[0] = (struct iovec){ r->head, hl + bl };
}

/* A whole body (for the in-process parse and the probe). */
void body_render(struct sbuf *out, enum form form, unsigned worker, int64_t step, unsigned seq)
{
	struct request r;
	int i;
	size_t hl;

	request_build(&r, form, "x", 1, worker, step, seq);
	hl = (size_t)(strstr(r.head, "\r\n\r\n") - r.head) + 4;
	out->len = 0;
	sb_add(out, r.head + hl, r.iov[0].iov_len - hl);
	for (i = 1; i < r.iovcnt; i++)
		sb_add(out, r.iov[i].iov_base, r.iov[i].iov_len);
}
