/*
 * bench_ingest_verify.c: after each bnstatd cell, what the daemon says it
 * merged against what it acknowledged: batches and counts of every layer
 * at the first, middle and last step, and mean/var of two layers against
 * an exact two-pass merge of the values as sent.
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "bench_http.h"
#include "bench_util.h"

/*
 * What the daemon was sent for one value, as a double: the f32 widened for
 * the binary forms, the %.9g decimal read back for the json form.
 */
static double sent_value(enum form form, float x)
{
	char num[32];

	if (form != F_JSON)
		return (double)x;
	snprintf(num, sizeof(num), "%.9g", (double)x);
	return strtod(num, NULL);
}

/*
 * The exact merge of the acknowledged uploads of one step for layer l, per
 * channel: pooled mean and population variance M2/n, computed two-pass in
 * double (every upload of a layer has the same count), from the values as
 * sent.
 */
static void reference(struct cell *c, size_t step, const struct bn_layer *l, double *mean,
		      double *var)
{
	unsigned w, s;
	size_t ch, k = 0;
	double n = (double)l->count;

	for (ch = 0; ch < l->channels; ch++)
		mean[ch] = var[ch] = 0;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			if (*ack_at(c, step, w, s) == ACK_OK) {
				const struct variant *v =
					&variants[variant_of(w, (int64_t)step, s)];

				for (ch = 0; ch < l->channels; ch++)
					mean[ch] += sent_value(c->form, v->mean[l->offset + ch]);
				k++;
			}
	for (ch = 0; ch < l->channels; ch++)
		mean[ch] /= (double)k;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			if (*ack_at(c, step, w, s) == ACK_OK) {
				const struct variant *v =
					&variants[variant_of(w, (int64_t)step, s)];

				for (ch = 0; ch < l->channels; ch++) {
					double m = sent_value(c->form, v->mean[l->offset + ch]);
					double d = m - mean[ch];

					var[ch] += sent_value(c->form, v->var[l->offset + ch]) *
							   (n - 1) +
						   n * d * d;
				}
			}
	for (ch = 0; ch < l->channels; ch++)
		var[ch] /= n * (double)k;
}

/* Largest |a - b| / max(1, |b|) of a JSON array against b; -1 if malformed. */
static double max_rel_diff(const json_t *arr, const double *b, size_t n)
{
	double worst = 0;
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) != n)
		return -1;
	for (i = 0; i < n; i++) {
		const json_t *x = json_array_get(arr, i);
		double d;

		if (!json_is_number(x))
			return -1;
		d = fabs(json_number_value(x) - b[i]) / fmax(1.0, fabs(b[i]));
		if (d > worst)
			worst = d;
	}
	return worst;
}

void verify_cell(struct cell *c, struct verify *v)
{
	size_t check[3], n_check = 0, i, li;
	double tol = 1e-12, worst = 0;
	double *rm = xmalloc(2048 * sizeof(double)), *rv = xmalloc(2048 * sizeof(double));
	struct sbuf body = { 0 }, steps = { 0 };
	const size_t ref_layers[2] = { 0, RESNET50_LAYERS - 1 };

	v->ran = true;
	v->ok = true;
	if (c->steps_done == 0) {
		v->ok = false;
		sb_printf(&v->text, "no step completed");
		goto out;
	}
	check[n_check++] = 0;
	if (c->steps_done > 2)
		check[n_check++] = c->steps_done / 2;
	if (c->steps_done > 1)
		check[n_check++] = c->steps_done - 1;
	for (i = 0; i < n_check; i++) {
		size_t step = check[i], acked = 0, unknown = 0;
		unsigned w, s;
		char path[256];
		json_t *root, *jl;
		json_error_t jerr;
		int status;

		for (w = 0; w < c->conns; w++)
			for (s = 0; s < c->k; s++) {
				acked += *ack_at(c, step, w, s) == ACK_OK;
				unknown += *ack_at(c, step, w, s) == ACK_UNKNOWN;
			}
		sb_printf(&steps, "%s%zu (%zu)", i ? ", " : "", step, acked);
		snprintf(path, sizeof(path), "/v1/runs/%s/stats?step=%zu", c->run, step);
		status = http_simple(c->port, opt.timeout, "GET", path, NULL, NULL, 0, &body);
		if (acked + unknown == 0) {
			if (status != 404) {
				v->ok = false;
				sb_printf(&v->text,
					  "step %zu: nothing acknowledged but GET stats "
					  "answered %d; ",
					  step, status);
			}
			continue;
		}
		if (status != 200) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: GET stats answered %d; ", step, status);
			continue;
		}
		root = json_loadb(body.p, body.len, 0, &jerr);
		jl = json_object_get(root, "layers");
		if (root == NULL || !json_is_object(jl)) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: unreadable stats reply; ", step);
			json_decref(root);
			continue;
		}
		if (json_integer_value(json_object_get(root, "step")) != (json_int_t)step) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: reply is for another step; ", step);
		}
		for (li = 0; li < N_LAYERS; li++) {
			const struct bn_layer *l = &layers[li];
			json_t *lo = json_object_get(jl, l->name);
			json_int_t batches = json_integer_value(json_object_get(lo, "batches"));
			json_int_t count = json_integer_value(json_object_get(lo, "count"));
			json_int_t ch = json_integer_value(json_object_get(lo, "channels"));

			if (lo == NULL || ch != (json_int_t)l->channels ||
			    batches < (json_int_t)acked ||
			    batches > (json_int_t)(acked + unknown) ||
			    count != batches * (json_int_t)l->count) {
				v->ok = false;
				sb_printf(&v->text,
					  "step %zu layer %s: batches %lld, count %lld, "
					  "channels %lld; acknowledged %zu (+%zu unknown); ",
					  step, l->name, (long long)batches, (long long)count,
					  (long long)ch, acked, unknown);
				break;
			}
		}
		if (unknown == 0) {
			for (li = 0; li < 2; li++) {
				const struct bn_layer *l = &layers[ref_layers[li]];
				json_t *lo = json_object_get(jl, l->name);
				double dm, dv;

				reference(c, step, l, rm, rv);
				dm = max_rel_diff(json_object_get(lo, "mean"), rm, l->channels);
				dv = max_rel_diff(json_object_get(lo, "var"), rv, l->channels);
				if (dm < 0 || dv < 0 || dm > tol || dv > tol) {
					v->ok = false;
					sb_printf(&v->text,
						  "step %zu layer %s: mean/var differ from "
						  "the exact merge by %.3g/%.3g; ",
						  step, l->name, dm, dv);
				}
				worst = fmax(worst, fmax(dm, dv));
			}
		}
		json_decref(root);
	}
	if (v->ok)
		sb_printf(&v->text,
			  "steps %s: `batches` = acknowledged uploads and `count` = "
			  "their sum for all %zu layers; mean/var of %s and %s equal the exact "
			  "merge (max rel. diff %.2g)",
			  steps.p, N_LAYERS, layers[0].name, layers[RESNET50_LAYERS - 1].name,
			  worst);
	else
		sb_printf(&v->text, "(steps checked, acknowledged: %s)", steps.p);
out:
	sb_free(&body);
	sb_free(&steps);
	free(rm);
	free(rv);
}
