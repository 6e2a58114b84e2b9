/*
 * bench_ingest_inproc.c: the in-process baselines of the ingest benchmark,
 * one thread each: fvcore's estimator arithmetic (what PreciseBN users run
 * today) and jansson's json_loadb alone on the JSON bodies.
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench_util.h"

/*
 * fvcore.nn.precise_bn._PopulationVarianceEstimator.update, per layer, in
 * float32 as torch does it on float tensors (the Python float factors are
 * cast to float32):
 *   tot += n
 *   batch_square_mean = batch_mean^2 + batch_var * ((n - 1) / n)
 *   pop_mean += (batch_mean - pop_mean) * (n / tot)
 *   pop_square_mean += (batch_square_mean - pop_square_mean) * (n / tot)
 * with batch_var the unbiased batch variance (bn.running_var at momentum 1).
 * The arithmetic only: no tensor or Python overhead.
 */
void bench_estimator(struct inproc *r)
{
	float *pm = xcalloc(n_channels, sizeof(float)), *ps = xcalloc(n_channels, sizeof(float));
	int64_t tot[RESNET50_LAYERS] = { 0 };
	double t0 = now_s(), t;
	size_t it = 0, li, ch;
	volatile float keep;

	do {
		const struct variant *v = &variants[it % opt.variants];

		for (li = 0; li < N_LAYERS; li++) {
			const struct bn_layer *l = &layers[li];
			const float *m = v->mean + l->offset, *var = v->var + l->offset;
			float *pmean = pm + l->offset, *psq = ps + l->offset;
			float unbias, w;

			tot[li] += l->count;
			unbias = (float)((double)(l->count - 1) / (double)l->count);
			w = (float)((double)l->count / (double)tot[li]);
			for (ch = 0; ch < l->channels; ch++) {
				float bsq = m[ch] * m[ch] + var[ch] * unbias;

				pmean[ch] += (m[ch] - pmean[ch]) * w;
				psq[ch] += (bsq - psq[ch]) * w;
			}
		}
		it++;
		t = now_s() - t0;
	} while (t < 1.0 || it < 100);
	keep = pm[it % n_channels] + ps[it % n_channels];
	(void)keep;
	r->what = "fvcore `_PopulationVarianceEstimator.update`, f32, 53 layers (arithmetic only)";
	r->iters = it;
	r->per_s = (double)it / t;
	r->mb_s = (double)it * (double)n_channels * 2 * sizeof(float) / t / 1e6;
	r->us_each = t / (double)it * 1e6;
	free(pm);
	free(ps);
}

/* json_loadb with the flags bnstatd's ingest uses, then json_decref. */
void bench_parse(struct inproc *r, enum form form)
{
	struct sbuf body = { 0 };
	json_error_t err;
	double t0, t;
	size_t it = 0;

	body_render(&body, form, 0, 0, 0);
	t0 = now_s();
	do {
		json_t *root = json_loadb(body.p, body.len,
					  JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);

		if (root == NULL)
			die("json_loadb of our own %s body: %s", form_names[form], err.text);
		json_decref(root);
		it++;
		t = now_s() - t0;
	} while (t < 1.0 || it < 10);
	r->what = form == F_JSON ? "jansson `json_loadb` alone, json body"
				 : "jansson `json_loadb` alone, b64 body";
	r->iters = it;
	r->per_s = (double)it / t;
	r->mb_s = (double)it * (double)body.len / t / 1e6;
	r->us_each = t / (double)it * 1e6;
	sb_free(&body);
}
