/*
 * bench_query_workload.c: what the query benchmark uploads. ResNet-50
 * shaped batch statistics from a counter-based PRNG (any step computed on
 * its own) with a slow drift, PyTorch's momentum-0.1 EMA of them as the
 * worker reports it, and the batch as a body (bench_body.c).
 */
#include "bench_query.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_body.h"
#include "bench_util.h"

#define SEED 0x62ad5ca1e5eedULL
#define DRIFT_PERIOD 1000.0 /* steps */
#define WORKER_MOMENTUM 0.1 /* the EMA rank0 reports, PyTorch's default */

struct rng {
	uint64_t s[4];
};

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r) /* xoshiro256** */
{
	uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

static void rng_seed(struct rng *r, uint64_t seed)
{
	int i;

	for (i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
}

/* Unit-variance noise from one 64-bit draw: the sum of two uniforms. */
static inline double tri_noise(uint64_t x)
{
	double a = (double)(x >> 40) * (1.0 / 16777216.0);
	double b = (double)(x & 0xFFFFFF) * (1.0 / 16777216.0);

	return (a + b - 1.0) * 2.449489742783178; /* sqrt(6) */
}

/* Per channel: the population the batches are drawn from. */
static double *ch_mu, *ch_sd, *ch_var, *ch_amp;
static double layer_phase[RESNET50_LAYERS];

void population_init(void)
{
	struct rng r;
	size_t c, l;

	ch_mu = xmalloc(n_channels * sizeof(double));
	ch_sd = xmalloc(n_channels * sizeof(double));
	ch_var = xmalloc(n_channels * sizeof(double));
	ch_amp = xmalloc(n_channels * sizeof(double));
	rng_seed(&r, SEED);
	for (c = 0; c < n_channels; c++) {
		double u = (double)(rng_next(&r) >> 11) * 0x1p-53;

		ch_mu[c] = 0.5 * tri_noise(rng_next(&r));
		ch_var[c] = exp(2.0 * u - 1.0); /* e^-1 .. e^1 */
		ch_sd[c] = sqrt(ch_var[c]);
		ch_amp[c] = 0.5 * ch_sd[c] * (double)(rng_next(&r) >> 11) * 0x1p-53;
	}
	for (l = 0; l < N_LAYERS; l++)
		layer_phase[l] = 6.283185307179586 * (double)(rng_next(&r) >> 11) * 0x1p-53;
}

/*
 * The batch statistics of `step` in stream `stream` (0: the training run,
 * others: extra batches such as the late upload): every layer's mean and
 * unbiased variance, as f32. The population drifts slowly (a sine per
 * layer, period DRIFT_PERIOD steps) so that an EMA lags behind it.
 */
void gen_step(uint64_t stream, int64_t step, float *mean, float *var)
{
	struct rng r;
	size_t l, c;

	rng_seed(&r, SEED ^ (stream * 0xD1B54A32D192ED03ULL) ^
			     ((uint64_t)step * 0x9E3779B97F4A7C15ULL));
	for (l = 0; l < N_LAYERS; l++) {
		double d = sin(6.283185307179586 * (double)step / DRIFT_PERIOD + layer_phase[l]);
		size_t end = layers[l].offset + layers[l].channels;

		for (c = layers[l].offset; c < end; c++) {
			double zm = tri_noise(rng_next(&r)), zv = tri_noise(rng_next(&r));

			mean[c] = (float)(ch_mu[c] + ch_amp[c] * d + 0.1 * ch_sd[c] * zm);
			var[c] = (float)(ch_var[c] * (1.0 + 0.2 * d) * (1.0 + 0.05 * zv));
		}
	}
}

/* PyTorch's update of running_mean / running_var with this batch. */
void ema_apply(double *ema, const float *mean, const float *var)
{
	double a = WORKER_MOMENTUM, *em = ema, *ev = ema + n_channels;
	size_t c;

	for (c = 0; c < n_channels; c++) {
		em[c] = a * (double)mean[c] + (1.0 - a) * em[c];
		ev[c] = a * (double)var[c] + (1.0 - a) * ev[c];
	}
}

void ema_init(double *ema)
{
	size_t c;

	for (c = 0; c < n_channels; c++) {
		ema[c] = 0.0;
		ema[n_channels + c] = 1.0;
	}
}

void ema_to_f32(const double *ema, float *em, float *ev)
{
	size_t c;

	for (c = 0; c < n_channels; c++) {
		em[c] = (float)ema[c];
		ev[c] = (float)ema[n_channels + c];
	}
}

static const char *const parts[4] = { "mean", "var", "ema_mean", "ema_var" };

void body_json(struct sbuf *b, const struct batch *x)
{
	const float *arrays[4] = { x->mean, x->var, x->ema_mean, x->ema_var };

	b->len = 0;
	sb_printf(b, "{\"worker\":\"%s\",\"step\":%" PRId64 ",\"seq\":%" PRId64 ",", x->worker,
		  x->step, x->seq);
	body_layers(b, BODY_B64, parts, arrays, x->ema_mean != NULL ? 4 : 2);
}

/*
 * The same batch as a safetensors file (docs/API.md): 8-byte little-endian
 * header length, a JSON header padded with spaces to a multiple of 8, the
 * tensors back to back: per layer "<layer>.count" (I64, shape []),
 * "<layer>.mean", "<layer>.var" [, "<layer>.ema_mean", "<layer>.ema_var"]
 * (F32, shape [C]).
 */
void body_safetensors(struct sbuf *b, struct sbuf *hdr, const struct batch *x)
{
	const float *arrays[4] = { x->mean, x->var, x->ema_mean, x->ema_var };
	int n_parts = x->ema_mean != NULL ? 4 : 2;
	uint64_t hlen;
	size_t off;

	hdr->len = 0;
	sb_printf(hdr,
		  "{\"__metadata__\":{\"worker\":\"%s\",\"step\":\"%" PRId64 "\",\"seq\":\"%" PRId64
		  "\"}",
		  x->worker, x->step, x->seq);
	off = body_st_table(hdr, parts, n_parts);
	sb_add(hdr, "        ", body_st_pad(hdr->len));
	hlen = hdr->len;
	b->len = 0;
	sb_reserve(b, 8 + hdr->len + off);
	sb_add(b, &hlen, 8);
	sb_add(b, hdr->p, hdr->len);
	body_st_data(b, arrays, n_parts);
}

const char *ctype_of(enum form f)
{
	return f == FORM_SAFETENSORS ? "application/octet-stream" : "application/json";
}

void body_of(enum form f, struct sbuf *b, struct sbuf *hdr, const struct batch *x)
{
	if (f == FORM_SAFETENSORS)
		body_safetensors(b, hdr, x);
	else
		body_json(b, x);
}
