/*
 * safetensors_write: a whole safetensors file in memory from named F32,
 * F64 and I64 tensors, laid out as the safetensors library writes it: an
 * 8-byte little-endian header length, the header JSON (compact, sorted
 * keys) padded with spaces to a multiple of 8 bytes so that the data starts
 * aligned, then the tensors back to back in the order given.
 *
 * Used by the snapshot export (GET /v1/runs/{run}/snapshots/{label} as
 * safetensors, docs/API.md "Snapshots"); it depends on nothing of bnstat
 * but jansson, so test programs can use it to write binary uploads.
 */
#ifndef BNSTAT_SAFETENSORS_WRITE_H
#define BNSTAT_SAFETENSORS_WRITE_H

#include <stddef.h>
#include <stdint.h>

enum safetensors_dtype {
	SAFETENSORS_F32, /* from doubles, each rounded to the nearest float */
	SAFETENSORS_F64,
	SAFETENSORS_I64,
};

/*
 * One tensor. The values are product(shape[0..rank)) elements in row-major
 * order (one for rank 0): in f for F32 and F64, in i for I64; the other
 * pointer is ignored.
 */
struct safetensors_tensor {
	const char *name;
	enum safetensors_dtype dtype;
	const uint64_t *shape;
	size_t rank;
	const double *f;
	const int64_t *i;
};

/* One entry of the header's "__metadata__" (a string-to-string map). */
struct safetensors_meta {
	const char *key;
	const char *value;
};

/*
 * Write tensors[0..n) and, when n_meta > 0, the metadata meta[0..n_meta)
 * as one safetensors file.
 *
 * Everything passed in is borrowed for the duration of the call only. On
 * success *buf is a new malloc'd buffer of *len bytes owned by the caller
 * (release it with free()). Returns 0, -EINVAL when a name is repeated or
 * is "__metadata__", a tensor has elements but no values, or a size
 * overflows, or -ENOMEM; on failure *buf is NULL. Thread-safe (no state).
 */
int safetensors_write(const struct safetensors_tensor *tensors, size_t n,
		      const struct safetensors_meta *meta, size_t n_meta, char **buf, size_t *len);

#endif
