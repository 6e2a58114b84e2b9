/*
 * safetensors_write: see safetensors_write.h. The header is built with
 * jansson and dumped with sorted keys, so that the same tensors always
 * give the same bytes.
 */
#include "safetensors_write.h"

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#define METADATA_KEY "__metadata__"

static size_t dtype_size(enum safetensors_dtype dtype)
{
	return dtype == SAFETENSORS_F32 ? 4 : 8;
}

static const char *dtype_name(enum safetensors_dtype dtype)
{
	switch (dtype) {
	case SAFETENSORS_F32:
		return "F32";
	case SAFETENSORS_F64:
		return "F64";
	default:
		return "I64";
	}
}

/* The element count of t in *count; false when it overflows. */
static bool element_count(const struct safetensors_tensor *t, size_t *count)
{
	size_t d, c = 1;

	for (d = 0; d < t->rank; d++) {
		if (t->shape[d] > SIZE_MAX || (t->shape[d] != 0 && c > SIZE_MAX / t->shape[d]))
			return false;
		c *= (size_t)t->shape[d];
	}
	*count = c;
	return true;
}

/* Little-endian whatever the host's order, so that files are portable. */
static void put_le64(unsigned char *p, uint64_t v)
{
	int b;

	for (b = 0; b < 8; b++)
		p[b] = (unsigned char)(v >> (8 * b));
}

static void put_le32(unsigned char *p, uint32_t v)
{
	int b;

	for (b = 0; b < 4; b++)
		p[b] = (unsigned char)(v >> (8 * b));
}

/* The values of t, count of them, at p; returns the end. */
static unsigned char *put_values(unsigned char *p, const struct safetensors_tensor *t, size_t count)
{
	size_t k;

	for (k = 0; k < count; k++) {
		if (t->dtype == SAFETENSORS_F32) {
			float x = (float)t->f[k];
			uint32_t u;

			memcpy(&u, &x, sizeof(u));
			put_le32(p, u);
			p += 4;
		} else if (t->dtype == SAFETENSORS_F64) {
			uint64_t u;

			memcpy(&u, &t->f[k], sizeof(u));
			put_le64(p, u);
			p += 8;
		} else {
			put_le64(p, (uint64_t)t->i[k]);
			p += 8;
		}
	}
	return p;
}

static json_t *tensor_entry(const struct safetensors_tensor *t, size_t off, size_t bytes)
{
	json_t *shape = json_array(), *o;
	size_t d;

	if (shape == NULL)
		return NULL;
	for (d = 0; d < t->rank; d++) {
		if (json_array_append_new(shape, json_integer((json_int_t)t->shape[d])) < 0) {
			json_decref(shape);
			return NULL;
		}
	}
	o = json_pack("{s:s, s:o, s:[I, I]}", "dtype", dtype_name(t->dtype), "shape", shape,
		      "data_offsets", (json_int_t)off, (json_int_t)(off + bytes));
	return o;
}

int safetensors_write(const struct safetensors_tensor *tensors, size_t n,
		      const struct safetensors_meta *meta, size_t n_meta, char **buf, size_t *len)
{
	json_t *header = json_object(), *md = NULL;
	char *htext = NULL, *out = NULL;
	size_t *counts = NULL, i, off = 0, hlen, padded, total;
	unsigned char *p;
	int rc = -ENOMEM;

	*buf = NULL;
	*len = 0;
	counts = calloc(n ? n : 1, sizeof(*counts));
	if (header == NULL || counts == NULL)
		goto done;
	if (n_meta > 0) {
		md = json_object();
		if (md == NULL || json_object_set_new(header, METADATA_KEY, md) < 0)
			goto done;
		for (i = 0; i < n_meta; i++)
			if (json_object_set_new(md, meta[i].key, json_string(meta[i].value)) < 0)
				goto done;
	}
	for (i = 0; i < n; i++) {
		const struct safetensors_tensor *t = &tensors[i];
		size_t bytes;

		rc = -EINVAL;
		if (strcmp(t->name, METADATA_KEY) == 0 ||
		    json_object_get(header, t->name) != NULL || !element_count(t, &counts[i]) ||
		    counts[i] > SIZE_MAX / 8)
			goto done;
		if (counts[i] > 0 && (t->dtype == SAFETENSORS_I64 ? t->i == NULL : t->f == NULL))
			goto done;
		bytes = counts[i] * dtype_size(t->dtype);
		if (off > SIZE_MAX / 2 - bytes)
			goto done;
		rc = -ENOMEM;
		if (json_object_set_new(header, t->name, tensor_entry(t, off, bytes)) < 0)
			goto done;
		off += bytes;
	}
	htext = json_dumps(header, JSON_COMPACT | JSON_SORT_KEYS);
	if (htext == NULL)
		goto done;
	hlen = strlen(htext);
	padded = (hlen + 7) / 8 * 8;
	total = 8 + padded + off;
	out = malloc(total);
	if (out == NULL)
		goto done;
	p = (unsigned char *)out;
	put_le64(p, (uint64_t)padded);
	memcpy(p + 8, htext, hlen);
	memset(p + 8 + hlen, ' ', padded - hlen);
	p += 8 + padded;
	for (i = 0; i < n; i++)
		p = put_values(p, &tensors[i], counts[i]);
	*buf = out;
	*len = total;
	out = NULL;
	rc = 0;
done:
	free(out);
	free(htext);
	free(counts);
	json_decref(header);
	return rc;
}
