/*
 * ingest: the one back end of both forms of an upload. Each form's front
 * end describes every layer as a struct layer_plan (name, count, where
 * each value array is) and hands the plans to ingest_build_batch(), which
 * applies the rules of a layer (docs/API.md, "Upload") to them alike,
 * makes a single allocation for the whole batch (header, layer table, all
 * value arrays, names), converts the values straight into it (base64
 * decoded in place, f32 widened in place), checks each value (finite,
 * variance >= 0; a non-finite one is described in err->nonfinite too)
 * and hashes the result. The same content thus gives the
 * same batch and the same hash in any form. A failure anywhere frees that
 * one block, so nothing leaks and *out stays NULL.
 *
 * Here too are the error helpers every front end reports through, and the
 * small jansson helpers both forms' jansson paths share.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Largest count accepted: counts must stay exact as doubles. */
#define COUNT_MAX ((int64_t)1 << 53)

const char *const ingest_arr_key[ARR_N] = { "mean", "var", "ema_mean", "ema_var" };

const char *ingest_type_name(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real number";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "?";
}

bool ingest_key_known(const char *key, const char *const *known, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (strcmp(key, known[i]) == 0)
			return true;
	return false;
}

/* bn_error_set() with a message already in a va_list. */
int ingest_error_v(struct bn_error *err, int status, const char *code, const char *path,
		   const char *fmt, va_list ap)
{
	char msg[BN_ERROR_MESSAGE_MAX];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	return bn_error_set(err, status, code, path, "%s", msg);
}

/*
 * Path "<prefix><name>[.<field>][.<sub>][[index]]" of something in layer
 * p. Fields and sub-keys given here may be client-supplied (unknown keys).
 */
static void layer_path(char *path, size_t size, const struct layer_plan *p, const char *field,
		       const char *sub, long index)
{
	char name[INGEST_LAYER_NAME_MAX + 4], key[INGEST_SHOW_MAX + 4];
	int n;

	ingest_show(name, sizeof(name), p->name, p->name_len, INGEST_LAYER_NAME_MAX);
	n = snprintf(path, size, "%s%s", p->prefix, name);
	if (field != NULL && n >= 0 && (size_t)n < size)
		n += snprintf(path + n, size - (size_t)n, ".%s",
			      ingest_show(key, sizeof(key), field, strlen(field), INGEST_SHOW_MAX));
	if (sub != NULL && n >= 0 && (size_t)n < size)
		n += snprintf(path + n, size - (size_t)n, ".%s",
			      ingest_show(key, sizeof(key), sub, strlen(sub), INGEST_SHOW_MAX));
	if (index >= 0 && n >= 0 && (size_t)n < size)
		snprintf(path + n, size - (size_t)n, "[%ld]", index);
}

/* bn_error_set() for something in layer p; see layer_path(). */
int ingest_layer_error(struct bn_error *err, int status, const char *code,
		       const struct layer_plan *p, const char *field, const char *sub, long index,
		       const char *fmt, ...)
{
	char path[BN_ERROR_PATH_MAX];
	va_list ap;
	int r;

	layer_path(path, sizeof(path), p, field, sub, index);
	va_start(ap, fmt);
	r = ingest_error_v(err, status, code, path, fmt, ap);
	va_end(ap);
	return r;
}

/*
 * bn_error_set() for a value at `path`, or at field `field` of layer p
 * when p is not NULL: the integer helpers below serve both.
 */
int ingest_value_error(struct bn_error *err, int status, const char *code, const char *path,
		       const struct layer_plan *p, const char *field, const char *fmt, ...)
{
	char lpath[BN_ERROR_PATH_MAX];
	va_list ap;
	int r;

	if (p != NULL) {
		layer_path(lpath, sizeof(lpath), p, field, NULL, -1);
		path = lpath;
	}
	va_start(ap, fmt);
	r = ingest_error_v(err, status, code, path, fmt, ap);
	va_end(ap);
	return r;
}

/*
 * A JSON integer into *out. A JSON real (1.5, and 3.0 too: the wire
 * contract wants integers written as integers) is well-typed for JSON but
 * not acceptable, hence 422; anything else is the wrong type, 400. `what`
 * names the value in messages; for the path see ingest_value_error().
 */
int ingest_json_int(const json_t *v, const char *what, int64_t *out, const char *path,
		    const struct layer_plan *p, const char *field, struct bn_error *err)
{
	if (json_is_real(v))
		return ingest_value_error(err, 422, BN_E_INVALID, path, p, field,
					  "%s must be an integer, not a real number "
					  "(%.17g)",
					  what, json_real_value(v));
	if (!json_is_integer(v))
		return ingest_value_error(err, 400, BN_E_TYPE, path, p, field,
					  "%s must be an integer, not %s", what,
					  ingest_type_name(v));
	*out = (int64_t)json_integer_value(v);
	return 0;
}

/* 0 when v is in [0, max], else a 422; arguments as for ingest_json_int(). */
int ingest_uint_range(int64_t v, int64_t max, const char *what, const char *path,
		      const struct layer_plan *p, const char *field, struct bn_error *err)
{
	if (v < 0)
		return ingest_value_error(err, 422, BN_E_INVALID, path, p, field,
					  "%s must be >= 0, not %lld", what, (long long)v);
	if (v > max)
		return ingest_value_error(err, 422, BN_E_INVALID, path, p, field,
					  "%s must be <= %lld, not %lld", what, (long long)max,
					  (long long)v);
	return 0;
}

/*
 * The rules of the upload for one layer, whatever its form: count
 * present and in range, count 1 only with a biased variance, EMA arrays
 * both or neither, mean and var unless count 0 comes without arrays,
 * lengths equal, channels within the limit. Sets p->channels.
 */
static int check_layer(struct layer_plan *p, enum stats_var_kind kind,
		       const struct ingest_limits *lim, struct bn_error *err)
{
	size_t n, i;
	bool any = false;
	int r;

	if (!p->has_count)
		return ingest_layer_error(err, 400, BN_E_MISSING, p, "count", NULL, -1,
					  "count is required");
	r = ingest_uint_range(p->count, COUNT_MAX, "count", NULL, p, "count", err);
	if (r < 0)
		return r;
	if (p->count == 1 && kind == STATS_VAR_UNBIASED)
		return ingest_layer_error(err, 422, BN_E_INVALID, p, "count", NULL, -1,
					  "count 1 has no unbiased variance (send "
					  "var_kind \"biased\")");

	for (i = 0; i < ARR_N; i++)
		any = any || p->src[i].kind != SRC_NONE;
	if ((p->src[ARR_EMA_MEAN].kind == SRC_NONE) != (p->src[ARR_EMA_VAR].kind == SRC_NONE)) {
		bool has_m = p->src[ARR_EMA_MEAN].kind != SRC_NONE;

		return ingest_layer_error(err, 422, BN_E_INVALID, p, has_m ? "ema_mean" : "ema_var",
					  NULL, -1, "%s needs %s: send both or neither",
					  has_m ? "ema_mean" : "ema_var",
					  has_m ? "ema_var" : "ema_mean");
	}
	/* count 0 (layer unused) may come without arrays; else both needed */
	if (p->count == 0 && !any) {
		p->channels = 0;
		return 0;
	}
	for (i = ARR_MEAN; i <= ARR_VAR; i++)
		if (p->src[i].kind == SRC_NONE)
			return ingest_layer_error(err, 400, BN_E_MISSING, p, ingest_arr_key[i],
						  NULL, -1,
						  "%s is required when count > 0 or "
						  "other arrays are given",
						  ingest_arr_key[i]);

	n = p->src[ARR_MEAN].n;
	if (n == 0)
		return ingest_layer_error(err, 422, BN_E_INVALID, p, "mean", NULL, -1,
					  "must hold at least one channel");
	if (n > lim->max_channels)
		return ingest_layer_error(err, 422, BN_E_LIMIT, p, "mean", NULL, -1,
					  "%zu channels, more than the limit of %zu", n,
					  lim->max_channels);
	for (i = ARR_VAR; i < ARR_N; i++)
		if (p->src[i].kind != SRC_NONE && p->src[i].n != n)
			return ingest_layer_error(err, 422, BN_E_INVALID, p, ingest_arr_key[i],
						  NULL, -1, "%zu values, but mean has %zu",
						  p->src[i].n, n);
	p->channels = n;
	return 0;
}

/*
 * n little-endian f32 (esize 4) or f64 (esize 8) values at src, at any
 * alignment (bytes are assembled, never loaded through a cast pointer),
 * into dst as doubles. src may overlap dst in the way base64 decoding
 * uses: f64 in place, f32 in the upper half of dst, widened front to
 * back, which never overwrites a float not yet read (double i ends where
 * float 2i-n+1 ends, and 2i-n+1 <= i).
 */
static void load_values(const uint8_t *src, size_t esize, size_t n, double *dst)
{
	size_t i;

	if (esize == 8) {
		for (i = 0; i < n; i++) {
			uint64_t u = load_le64(src + 8 * i);

			memcpy(&dst[i], &u, 8);
		}
		return;
	}
	for (i = 0; i < n; i++) {
		uint32_t u = load_le32(src + 4 * i);
		float f;

		memcpy(&f, &u, 4);
		dst[i] = (double)f;
	}
}

/* The detail of a refusal fits the names it copies. */
_Static_assert(sizeof(((struct bn_error_nonfinite *)0)->worker) == INGEST_NAME_MAX + 1,
	       "bn_error_nonfinite.worker holds a worker name");
_Static_assert(sizeof(((struct bn_error_nonfinite *)0)->layer) == INGEST_LAYER_NAME_MAX + 1,
	       "bn_error_nonfinite.layer holds a layer name");

/*
 * The refusal of value i (x, NaN or infinite) of array id of layer p in
 * the upload *hdr: the usual 422 at the value's path, with a message that
 * names the step, layer, channel and worker, and err->nonfinite filled in
 * for the HTTP layer to count and log (docs/API.md, "Non-finite values").
 * Its layer name has been checked, so it is shown as it is.
 */
static int nonfinite_error(struct bn_error *err, const struct ingest_batch *hdr,
			   const struct layer_plan *p, enum arr_id id, size_t i, double x)
{
	const char *key = ingest_arr_key[id];
	const char *what = isnan(x) ? "NaN" : x > 0 ? "infinity" : "-infinity";
	const bool ema = id == ARR_EMA_MEAN || id == ARR_EMA_VAR;
	struct bn_error_nonfinite *d;
	int r;

	r = ingest_layer_error(err, 422, BN_E_INVALID, p, key, NULL, (long)i,
			       "non-finite %s at step %lld, layer %.*s, channel %zu (worker %s): "
			       "%s in the %s statistics (mixed-precision overflow?)",
			       key, (long long)hdr->step, (int)p->name_len, p->name, i, hdr->worker,
			       what, ema ? "running (EMA)" : "batch");
	if (err == NULL)
		return r;
	d = &err->nonfinite;
	d->set = true;
	d->step = (long long)hdr->step;
	d->channel = (long long)i;
	snprintf(d->worker, sizeof(d->worker), "%s", hdr->worker);
	snprintf(d->layer, sizeof(d->layer), "%.*s", (int)p->name_len, p->name);
	snprintf(d->field, sizeof(d->field), "%s", key);
	return r;
}

/*
 * One value array of a layer of the upload *hdr, once the batch exists:
 * write its p->channels doubles to dst and check them. Base64 is decoded
 * straight into dst (see load_values()).
 */
static int fill_array(const struct ingest_batch *hdr, const struct layer_plan *p, enum arr_id id,
		      double *dst, struct bn_error *err)
{
	const struct src_array *a = &p->src[id];
	const char *key = ingest_arr_key[id];
	const bool is_var = id == ARR_VAR || id == ARR_EMA_VAR;
	size_t n = p->channels, i;
	uint8_t *bytes;

	switch (a->kind) {
	case SRC_NUMBERS:
		for (i = 0; i < n; i++) {
			const json_t *x = json_array_get(a->json, i);

			if (json_is_real(x))
				dst[i] = json_real_value(x);
			else if (json_is_integer(x))
				dst[i] = (double)json_integer_value(x);
			else
				return ingest_layer_error(err, 400, BN_E_TYPE, p, key, NULL,
							  (long)i, "must be a number, not %s",
							  ingest_type_name(x));
		}
		break;
	case SRC_B64:
		bytes = (uint8_t *)dst + (8 - a->esize) * n;
		if (ingest_base64_decode(a->b64, a->b64_len, bytes) < 0)
			return ingest_layer_error(err, 422, BN_E_INVALID, p, key, "b64", -1,
						  "bad base64 (standard alphabet, '=' "
						  "padding, no whitespace)");
		load_values(bytes, a->esize, n, dst);
		break;
	case SRC_RAW:
		load_values(a->raw, a->esize, n, dst);
		break;
	case SRC_DOUBLES:
		memcpy(dst, a->dbl, n * sizeof(*dst));
		break;
	case SRC_NONE:
		return 0;
	}

	for (i = 0; i < n; i++) {
		double x = dst[i];

		if (!isfinite(x))
			return nonfinite_error(err, hdr, p, id, i, x);
		if (is_var && x < 0)
			return ingest_layer_error(err, 422, BN_E_INVALID, p, key, NULL, (long)i,
						  "a variance must be >= 0, not %.17g", x);
		/* -0.0 == 0.0: store +0.0 so that the hash agrees too */
		if (x == 0)
			dst[i] = 0.0;
	}
	return 0;
}

int ingest_plan_cmp(const void *a, const void *b)
{
	const struct layer_plan *x = a, *y = b;

	return ingest_name_cmp(x->name, x->name_len, y->name, y->name_len);
}

static size_t align_up(size_t n, size_t a)
{
	return (n + a - 1) / a * a;
}

/* The number of layers against the limits; `path` names the layer set. */
int ingest_check_layer_count(size_t n, const struct ingest_limits *lim, const char *path,
			     struct bn_error *err)
{
	if (n == 0)
		return bn_error_set(err, 422, BN_E_INVALID, path, "at least one layer is required");
	if (n > lim->max_layers)
		return bn_error_set(err, 422, BN_E_LIMIT, path,
				    "%zu layers, more than the limit of %zu", n, lim->max_layers);
	return 0;
}

/*
 * Check plans[0..n_layers) (names distinct) and build the batch with the
 * identity in *hdr: the one builder of both forms, so that equal content
 * gives an equal batch and hash whatever the encoding.
 *
 * Layers are handled in name order, so that which of several bad layers
 * is reported does not depend on the order of the upload. For each, the
 * name is checked, then `plan` (when not NULL) finishes what the form
 * needs to look at, then check_layer(). Then a single allocation is made
 * for the whole batch (header, layer table, all value arrays, names),
 * and the values are converted straight into it and checked. A failure
 * anywhere frees that one block, so nothing leaks and *out stays NULL.
 * plans stay the caller's.
 */
int ingest_build_batch(const struct ingest_batch *hdr, struct layer_plan *plans, size_t n_layers,
		       int (*plan)(struct layer_plan *, struct bn_error *),
		       const struct ingest_limits *lim, struct ingest_batch **out,
		       struct bn_error *err)
{
	struct ingest_batch *b = NULL;
	size_t i, j, n_doubles = 0, name_bytes = 0;
	size_t off_layers, off_doubles, off_names, total;
	double *dp;
	char *np;
	int r;

	qsort(plans, n_layers, sizeof(*plans), ingest_plan_cmp);
	for (i = 0; i < n_layers; i++) {
		struct layer_plan *p = &plans[i];
		size_t arrays;

		if (!ingest_name_valid_n(p->name, p->name_len, INGEST_LAYER_NAME_MAX))
			return ingest_layer_error(err, 422, BN_E_INVALID, p, NULL, NULL, -1,
						  "layer name must match "
						  "[A-Za-z0-9._-]{1,%d}",
						  INGEST_LAYER_NAME_MAX);
		if (plan != NULL && (r = plan(p, err)) < 0)
			return r;
		r = check_layer(p, hdr->var_kind, lim, err);
		if (r < 0)
			return r;
		arrays = p->src[ARR_EMA_MEAN].kind != SRC_NONE ? 4 : 2;
		/* cannot overflow in practice (bounded by the body size), but
		 * the limits are configurable */
		if (p->channels > (SIZE_MAX / 64 - n_doubles) / arrays)
			goto nomem;
		n_doubles += p->channels * arrays;
		name_bytes += p->name_len + 1;
	}

	/* one block: header, layer table, doubles, names */
	off_layers = align_up(sizeof(struct ingest_batch), alignof(struct ingest_layer));
	off_doubles =
		align_up(off_layers + n_layers * sizeof(struct ingest_layer), alignof(double));
	off_names = off_doubles + n_doubles * sizeof(double);
	total = off_names + name_bytes;
	b = malloc(total);
	if (b == NULL)
		goto nomem;
	*b = *hdr;
	b->n_layers = n_layers;
	b->layers = (struct ingest_layer *)(void *)((char *)b + off_layers);
	dp = (double *)(void *)((char *)b + off_doubles);
	np = (char *)b + off_names;

	for (i = 0; i < n_layers; i++) {
		const struct layer_plan *p = &plans[i];
		struct ingest_layer *l = &b->layers[i];
		double *arr[ARR_N] = { NULL, NULL, NULL, NULL };

		memcpy(np, p->name, p->name_len);
		np[p->name_len] = '\0';
		l->name = np;
		np += p->name_len + 1;
		l->count = p->count;
		l->channels = p->channels;
		l->order = p->order;
		for (j = 0; j < ARR_N && p->channels > 0; j++) {
			if (p->src[j].kind == SRC_NONE)
				continue;
			arr[j] = dp;
			dp += p->channels;
			r = fill_array(hdr, p, (enum arr_id)j, arr[j], err);
			if (r < 0)
				goto fail;
		}
		l->mean = arr[ARR_MEAN];
		l->var = arr[ARR_VAR];
		l->ema_mean = arr[ARR_EMA_MEAN];
		l->ema_var = arr[ARR_EMA_VAR];
	}
	ingest_batch_hash(b);
	*out = b;
	return 0;

nomem:
	bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	r = -ENOMEM;
fail:
	free(b);
	return r;
}

void ingest_batch_free(struct ingest_batch *b)
{
	free(b);
}
