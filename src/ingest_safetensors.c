/*
 * ingest: the safetensors form of an upload (docs/API.md, "The binary
 * form (safetensors)"): an 8-byte header length, a JSON header naming
 * "<layer>.<field>" tensors and holding the identity in "__metadata__",
 * then the raw data buffer. This file holds the checks of the tensors and
 * the layout, which both ways of reading the header end in, the jansson
 * way, and the driver; ingest_safetensors_scan.c holds the fast way.
 *
 * The header is untrusted: its length is checked against the body and
 * the reference implementation's own limit before anything is parsed, and
 * every tensor's dtype, shape and data_offsets are checked against each
 * other and against the data buffer before a byte of data is read. As
 * the format requires, the tensors must tile the data buffer exactly:
 * back to back, no overlap, no byte left over (so that no data can hide
 * in a body that a reader would otherwise accept).
 *
 * Data is read byte by byte (load_le32/64), never through a pointer cast
 * into the body: offsets need not be aligned, and neither need the body.
 *
 * Tensor-level errors have the tensor's name as path ("layer1.0.bn1.var",
 * "layer1.0.bn1.var[17]" for a value); errors of the file as a whole have
 * "__header__". The layer rules are check_layer()'s (ingest_build.c),
 * with the tensor name "<layer>.<field>" as path.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *safet_field_name(unsigned field)
{
	return field == SAFET_COUNT ? "count" : ingest_arr_key[field];
}

/* The error path of tensor t: its name, bounded and printable. */
static const char *safet_path(char *dst, size_t size, const struct safet_tensor *t)
{
	return ingest_show(dst, size, t->key, t->key_len,
			   INGEST_LAYER_NAME_MAX + sizeof(".ema_mean"));
}

/* bn_error_set() for tensor t. */
__attribute__((format(printf, 5, 6))) static int safet_error(struct bn_error *err, int status,
							     const char *code,
							     const struct safet_tensor *t,
							     const char *fmt, ...)
{
	char path[BN_ERROR_PATH_MAX];
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = ingest_error_v(err, status, code, safet_path(path, sizeof(path), t), fmt, ap);
	va_end(ap);
	return r;
}

/*
 * Element `i` of an array of tensor t that must be an integer >= 0. The
 * path and the name are only written out for an error: this runs for
 * every shape and offset of every tensor.
 */
static int safet_uint(const struct safet_tensor *t, const json_t *arr, const char *key, size_t i,
		      int64_t *out, struct bn_error *err)
{
	const json_t *v = json_array_get(arr, i);
	char path[BN_ERROR_PATH_MAX], what[48];
	int r;

	if (json_is_integer(v) && json_integer_value(v) >= 0) {
		*out = (int64_t)json_integer_value(v);
		return 0;
	}
	safet_path(path, sizeof(path), t);
	snprintf(what, sizeof(what), "%s[%zu]", key, i);
	r = ingest_json_int(v, what, out, path, NULL, NULL, err);
	if (r == 0)
		r = ingest_uint_range(*out, INT64_MAX, what, path, NULL, NULL, err);
	return r;
}

/* t's name into layer and field. */
static int safet_check_name(struct safet_tensor *t, struct bn_error *err)
{
	char shown[INGEST_SHOW_MAX + 4];
	const char *field;
	size_t dot;

	for (dot = t->key_len; dot > 0 && t->key[dot - 1] != '.'; dot--)
		;
	if (dot == 0)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "a tensor name must be \"<layer>.<field>\" "
				   "with field one of " SAFET_FIELDS);
	t->layer_len = dot - 1;
	field = t->key + dot;
	for (t->field = 0; t->field <= SAFET_COUNT; t->field++)
		if (strcmp(field, safet_field_name(t->field)) == 0)
			break;
	if (t->field > SAFET_COUNT)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "unknown field \"%s\" (expected " SAFET_FIELDS ")",
				   ingest_show(shown, sizeof(shown), field, t->key_len - dot,
					       INGEST_SHOW_MAX));
	if (!ingest_name_valid_n(t->key, t->layer_len, INGEST_LAYER_NAME_MAX))
		return safet_error(err, 422, BN_E_INVALID, t,
				   "layer name must match [A-Za-z0-9._-]{1,%d}",
				   INGEST_LAYER_NAME_MAX);
	return 0;
}

/* jansson: t->info is an object with a string dtype, into t->dtype. */
static int safet_json_dtype(struct safet_tensor *t, struct bn_error *err)
{
	const json_t *dt;

	if (!json_is_object(t->info))
		return safet_error(err, 400, BN_E_TYPE, t,
				   "a tensor must be an object {\"dtype\", "
				   "\"shape\", \"data_offsets\"}, not %s",
				   ingest_type_name(t->info));

	dt = json_object_get(t->info, "dtype");
	if (dt == NULL)
		return safet_error(err, 400, BN_E_MISSING, t, "dtype is required");
	if (!json_is_string(dt))
		return safet_error(err, 400, BN_E_TYPE, t, "dtype must be a string, not %s",
				   ingest_type_name(dt));
	t->dtype = json_string_value(dt);
	t->dtype_len = json_string_length(dt);
	return 0;
}

/* t->dtype into t->esize. */
static int safet_check_dtype(struct safet_tensor *t, struct bn_error *err)
{
	char shown[INGEST_SHOW_MAX + 4];
	const char *ds = t->dtype;

	/* a length of 3 and memcmp(): jansson's strings may hold a NUL */
	if (t->dtype_len != 3)
		t->esize = 0;
	else if (t->field == SAFET_COUNT)
		t->esize = memcmp(ds, "I64", 3) == 0 ? 8 : 0;
	else if (memcmp(ds, "F32", 3) == 0)
		t->esize = 4;
	else if (memcmp(ds, "F64", 3) == 0)
		t->esize = 8;
	else
		t->esize = 0;
	if (t->esize == 0)
		return safet_error(
			err, 422, BN_E_INVALID, t, "%s must have dtype %s, not \"%s\"",
			safet_field_name(t->field),
			t->field == SAFET_COUNT ? "\"I64\"" : "\"F32\" or \"F64\"",
			ingest_show(shown, sizeof(shown), ds, t->dtype_len, INGEST_SHOW_MAX));
	return 0;
}

/*
 * jansson: t->info's keys are known, and its shape an array of integers
 * >= 0, into t->rank and t->dim.
 */
static int safet_json_shape(struct safet_tensor *t, struct bn_error *err)
{
	static const char *const info_keys[] = { "dtype", "shape", "data_offsets" };
	char shown[INGEST_SHOW_MAX + 4];
	const json_t *shape, *x;
	const char *k;
	size_t i;
	int r;

	json_object_foreach((json_t *)t->info, k, x)
	{
		if (!ingest_key_known(k, info_keys, 3))
			return safet_error(
				err, 422, BN_E_INVALID, t,
				"unknown key \"%s\" (expected dtype, "
				"shape, data_offsets)",
				ingest_show(shown, sizeof(shown), k, strlen(k), INGEST_SHOW_MAX));
	}

	shape = json_object_get(t->info, "shape");
	if (shape == NULL)
		return safet_error(err, 400, BN_E_MISSING, t, "shape is required");
	if (!json_is_array(shape))
		return safet_error(err, 400, BN_E_TYPE, t,
				   "shape must be an array of integers, not %s",
				   ingest_type_name(shape));
	t->rank = json_array_size(shape);
	t->dim = 1;
	for (i = 0; i < t->rank; i++) {
		r = safet_uint(t, shape, "shape", i, &t->dim, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/* jansson: t->info's data_offsets are 2 integers >= 0, into t->off. */
static int safet_json_offsets(struct safet_tensor *t, struct bn_error *err)
{
	const json_t *offs;
	size_t i;
	int r;

	offs = json_object_get(t->info, "data_offsets");
	if (offs == NULL)
		return safet_error(err, 400, BN_E_MISSING, t, "data_offsets is required");
	if (!json_is_array(offs))
		return safet_error(err, 400, BN_E_TYPE, t,
				   "data_offsets must be an array [begin, end], "
				   "not %s",
				   ingest_type_name(offs));
	if (json_array_size(offs) != 2)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "data_offsets must be 2 integers [begin, end], "
				   "not %zu values",
				   json_array_size(offs));
	for (i = 0; i < 2; i++) {
		r = safet_uint(t, offs, "data_offsets", i, &t->off[i], err);
		if (r < 0)
			return r;
	}
	return 0;
}

/*
 * Everything about one tensor that needs no other: name, keys, dtype,
 * shape, data_offsets within the data buffer (of data_len bytes), and
 * the size of that range against dtype and shape. The type checks
 * (safet_json_*()) run only for a tensor from jansson, in the order they
 * always ran among the checks of values; a tensor from the fast scanner
 * has passed them already.
 */
static int safet_check_tensor(struct safet_tensor *t, size_t data_len, struct bn_error *err)
{
	int64_t dim;
	int r;

	r = safet_check_name(t, err);
	if (r == 0 && t->info != NULL)
		r = safet_json_dtype(t, err);
	if (r == 0)
		r = safet_check_dtype(t, err);
	if (r == 0 && t->info != NULL)
		r = safet_json_shape(t, err);
	if (r < 0)
		return r;
	dim = t->dim;
	if (t->field == SAFET_COUNT && !(t->rank == 0 || (t->rank == 1 && dim == 1)))
		return safet_error(err, 422, BN_E_INVALID, t,
				   "count must be one number: shape [] or [1]");
	if (t->field != SAFET_COUNT && t->rank != 1)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "%s must have shape [channels], not %zu "
				   "dimensions",
				   ingest_arr_key[t->field], t->rank);

	if (t->info != NULL) {
		r = safet_json_offsets(t, err);
		if (r < 0)
			return r;
	}
	if (t->off[0] > t->off[1])
		return safet_error(err, 422, BN_E_INVALID, t,
				   "data_offsets [%lld, %lld]: begin is after end",
				   (long long)t->off[0], (long long)t->off[1]);
	if ((uint64_t)t->off[1] > data_len)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "data_offsets [%lld, %lld] go past the end of "
				   "the data buffer (%zu bytes)",
				   (long long)t->off[0], (long long)t->off[1], data_len);
	t->begin = (size_t)t->off[0];
	t->end = (size_t)t->off[1];
	/* dim (1 for rank 0) against the range, without overflowing */
	if ((uint64_t)dim > (t->end - t->begin) / t->esize ||
	    (size_t)dim * t->esize != t->end - t->begin)
		return safet_error(err, 422, BN_E_INVALID, t,
				   "data_offsets [%zu, %zu] hold %zu bytes, not "
				   "the %lld x %zu bytes of its shape and dtype",
				   t->begin, t->end, t->end - t->begin, (long long)dim, t->esize);
	t->n = (size_t)dim;
	return 0;
}

int ingest_safet_key_cmp(const void *a, const void *b)
{
	return strcmp(((const struct safet_tensor *)a)->key, ((const struct safet_tensor *)b)->key);
}

static int safet_offset_cmp(const void *a, const void *b)
{
	const struct safet_tensor *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->key, y->key);
}

/* Layer by layer, each layer's fields in a fixed order. */
static int safet_layer_cmp(const void *a, const void *b)
{
	const struct safet_tensor *x = a, *y = b;
	int c = ingest_name_cmp(x->key, x->layer_len, y->key, y->layer_len);

	if (c != 0)
		return c;
	return (x->field > y->field) - (x->field < y->field);
}

/*
 * The tensors ts[0..n), sorted by offsets, tile the data buffer of
 * data_len bytes: each starts where the one before ends.
 */
static int safet_check_layout(const struct safet_tensor *ts, size_t n, size_t data_len,
			      struct bn_error *err)
{
	char other[BN_ERROR_PATH_MAX];
	size_t at = 0, i;

	for (i = 0; i < n; i++) {
		const struct safet_tensor *t = &ts[i];

		if (t->begin < at)
			return safet_error(err, 422, BN_E_INVALID, t,
					   "data_offsets [%zu, %zu] overlap those "
					   "of %s [%zu, %zu]: tensors must lie "
					   "back to back in the data buffer",
					   t->begin, t->end,
					   safet_path(other, sizeof(other), &ts[i - 1]),
					   ts[i - 1].begin, ts[i - 1].end);
		if (t->begin > at)
			break;
		at = t->end;
	}
	if (at != data_len)
		return bn_error_set(err, 422, BN_E_INVALID, SAFET_HEADER,
				    "bytes [%zu, %zu) of the data buffer belong "
				    "to no tensor: the tensors must cover it "
				    "exactly, back to back",
				    at, i < n ? ts[i].begin : data_len);
	return 0;
}

/*
 * The layers of the tensors ts[0..n), sorted by safet_layer_cmp(), into
 * plans (one per layer, *n_layers of them, released with free()).
 */
static int safet_plan_layers(const struct safet_tensor *ts, size_t n, const uint8_t *data,
			     const struct ingest_limits *lim, struct layer_plan **plans,
			     size_t *n_layers, struct bn_error *err)
{
	struct layer_plan *p = NULL;
	size_t i, count = 0;
	int r;

	for (i = 0; i < n; i++)
		if (i == 0 || ingest_name_cmp(ts[i].key, ts[i].layer_len, ts[i - 1].key,
					      ts[i - 1].layer_len) != 0)
			count++;
	r = ingest_check_layer_count(count, lim, SAFET_HEADER, err);
	if (r < 0)
		return r;
	*plans = calloc(count, sizeof(**plans));
	if (*plans == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		const struct safet_tensor *t = &ts[i];
		const uint8_t *raw = data + t->begin;

		if (p == NULL || ingest_name_cmp(t->key, t->layer_len, p->name, p->name_len) != 0) {
			p = p == NULL ? *plans : p + 1;
			p->prefix = "";
			p->name = t->key;
			p->name_len = t->layer_len;
			p->order = t->begin;
		}
		/* the data's order is the writer's order of the layers */
		if (t->begin < p->order)
			p->order = t->begin;
		if (t->field == SAFET_COUNT) {
			uint64_t u = load_le64(raw);

			/* two's complement, whatever C thinks of the cast */
			memcpy(&p->count, &u, 8);
			p->has_count = true;
		} else {
			struct src_array *a = &p->src[t->field];

			a->kind = SRC_RAW;
			a->esize = t->esize;
			a->raw = raw;
			a->n = t->n;
		}
	}
	*n_layers = count;
	return 0;
}

/*
 * Everything after the header is parsed (into root, an object), with the
 * data buffer data[0..data_len). On success *out holds the batch; on
 * failure nothing is allocated.
 */
static int safet_decode_doc(const char *run, const json_t *root, const uint8_t *data,
			    size_t data_len, const struct ingest_limits *lim,
			    struct ingest_batch **out, struct bn_error *err)
{
	struct ingest_batch hdr;
	struct safet_tensor *ts;
	const json_t *meta, *v;
	const char *k;
	size_t n, i;
	int r;

	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.run, sizeof(hdr.run), "%s", run);
	meta = json_object_get(root, SAFET_META);
	if (meta == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, SAFET_META,
				    SAFET_META " is required: it holds worker, "
					       "step and seq");
	if (!json_is_object(meta))
		return bn_error_set(err, 400, BN_E_TYPE, SAFET_META,
				    SAFET_META " must be an object, not %s",
				    ingest_type_name(meta));
	r = ingest_ident_decode(meta, &ingest_ident_meta, &hdr, err);
	if (r < 0)
		return r;

	/* at most 5 tensors a layer: refuse a flood before allocating */
	n = json_object_size(root) - 1;
	if (n == 0)
		return ingest_check_layer_count(0, lim, SAFET_HEADER, err);
	if ((n + ARR_N) / (ARR_N + 1) > lim->max_layers)
		return bn_error_set(err, 422, BN_E_LIMIT, SAFET_HEADER,
				    "%zu tensors: more than %zu layers (the "
				    "limit) of at most 5 tensors each",
				    n, lim->max_layers);
	ts = calloc(n, sizeof(*ts));
	if (ts == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return -ENOMEM;
	}
	i = 0;
	json_object_foreach((json_t *)root, k, v)
	{
		if (strcmp(k, SAFET_META) == 0)
			continue;
		ts[i].key = k;
		ts[i].key_len = strlen(k);
		ts[i].info = v;
		i++;
	}
	r = ingest_safet_decode_tensors(&hdr, ts, n, data, data_len, lim, out, err);
	free(ts);
	return r;
}

/*
 * What both front ends share once the header is read: the identity in
 * *hdr, the tensors ts[0..n) (n > 0, within the limit), the data buffer
 * data[0..data_len). Checks the tensors (in name order) and the layout,
 * then builds the batch.
 */
int ingest_safet_decode_tensors(const struct ingest_batch *hdr, struct safet_tensor *ts, size_t n,
				const uint8_t *data, size_t data_len,
				const struct ingest_limits *lim, struct ingest_batch **out,
				struct bn_error *err)
{
	struct layer_plan *plans = NULL;
	size_t n_layers = 0, i;
	int r;

	qsort(ts, n, sizeof(*ts), ingest_safet_key_cmp);
	for (i = 0; i < n; i++) {
		r = safet_check_tensor(&ts[i], data_len, err);
		if (r < 0)
			goto done;
	}
	qsort(ts, n, sizeof(*ts), safet_offset_cmp);
	r = safet_check_layout(ts, n, data_len, err);
	if (r < 0)
		goto done;
	qsort(ts, n, sizeof(*ts), safet_layer_cmp);
	r = safet_plan_layers(ts, n, data, lim, &plans, &n_layers, err);
	if (r < 0)
		goto done;
	r = ingest_build_batch(hdr, plans, n_layers, NULL, lim, out, err);
done:
	free(plans);
	return r;
}

/*
 * The checks of the body before its header is read, the same for both
 * front ends: the header length, into *hlen.
 */
static int safet_header_length(const uint8_t *body, size_t len, size_t *hlen, struct bn_error *err)
{
	uint64_t h;

	if (len < 8)
		return bn_error_set(err, 422, BN_E_INVALID, SAFET_HEADER,
				    "a safetensors body starts with an 8-byte "
				    "header length; this one has %zu bytes",
				    len);
	h = load_le64(body);
	if (h > SAFET_HEADER_MAX)
		return bn_error_set(err, 422, BN_E_INVALID, SAFET_HEADER,
				    "header length %llu is more than the limit "
				    "of %d bytes",
				    (unsigned long long)h, SAFET_HEADER_MAX);
	if (h > len - 8)
		return bn_error_set(err, 422, BN_E_INVALID, SAFET_HEADER,
				    "header length %llu goes past the end of "
				    "the body (%zu bytes after the length)",
				    (unsigned long long)h, len - 8);
	*hlen = (size_t)h;
	return 0;
}

/* The header by jansson, from scratch; its length checked already. */
static int safet_decode_jansson(const char *run, const uint8_t *body, size_t len, size_t hlen,
				const struct ingest_limits *limits, struct ingest_batch **out,
				struct bn_error *err)
{
	json_t *root;
	int r;

	r = ingest_json_parse((const char *)body + 8, hlen, SAFET_HEADER,
			      "JSON in the safetensors header", &root, err);
	if (r < 0)
		return r;
	if (!json_is_object(root))
		r = bn_error_set(err, 400, BN_E_MALFORMED, SAFET_HEADER,
				 "the safetensors header must be a JSON "
				 "object, not %s",
				 ingest_type_name(root));
	else
		r = safet_decode_doc(run, root, body + 8 + hlen, len - 8 - hlen, limits, out, err);
	json_decref(root);
	return r;
}

static int safet_decode(const char *run, const uint8_t *body, size_t len,
			const struct ingest_limits *limits, struct ingest_batch **out,
			struct bn_error *err, unsigned paths)
{
	size_t hlen = 0;
	int r = ingest_decode_start(run, &limits, out, err);

	if (r == 0)
		r = safet_header_length(body, len, &hlen, err);
	if (r < 0)
		return r;
	r = INGEST_NOT_HANDLED;
	if (paths & PATH_JSCAN)
		r = ingest_safet_decode_jscan(run, body, len, hlen, limits, out, err);
	if (r == INGEST_NOT_HANDLED && (paths & PATH_JANSSON))
		r = safet_decode_jansson(run, body, len, hlen, limits, out, err);
	return r;
}

int ingest_decode_safetensors_jscan(const char *run, const uint8_t *body, size_t len,
				    const struct ingest_limits *limits, struct ingest_batch **out,
				    struct bn_error *err)
{
	return safet_decode(run, body, len, limits, out, err, PATH_JSCAN);
}

int ingest_decode_safetensors_jansson(const char *run, const uint8_t *body, size_t len,
				      const struct ingest_limits *limits, struct ingest_batch **out,
				      struct bn_error *err)
{
	return safet_decode(run, body, len, limits, out, err, PATH_JANSSON);
}

int ingest_decode_safetensors(const char *run, const uint8_t *body, size_t len,
			      const struct ingest_limits *limits, struct ingest_batch **out,
			      struct bn_error *err)
{
	return safet_decode(run, body, len, limits, out, err, PATH_BOTH);
}
