/*
 * ingest: validate and decode one upload into a struct ingest_batch.
 *
 * Everything that can be checked without the database is checked here, on
 * the HTTP thread that received the body: JSON syntax and types, names,
 * integers, finiteness, variance signs, lengths, base64 and dtypes, limits.
 * What needs stored state (a layer's channel count fixed by an earlier
 * upload, a batch identity seen before) is checked by the store's writer.
 * A batch that leaves ingest is internally consistent; one that does not
 * left nothing behind. The rules are those of docs/API.md, "Upload" and
 * "The binary form (safetensors)".
 *
 * Ownership, for every function here: arguments are borrowed for the
 * call only (nothing keeps a pointer to them); what is returned through
 * an out-parameter is new and the caller's. No function here has state
 * of its own, so any thread may call any of them, concurrently.
 */
#ifndef BNSTAT_INGEST_H
#define BNSTAT_INGEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "bnstat/batch.h"
#include "bnstat/error.h"
#include "bnstat/stats.h"

struct ingest_limits {
	size_t max_layers;   /* layers per upload */
	size_t max_channels; /* channels per layer */
};

/* Default limits (documented in docs/API.md). */
#define INGEST_DEFAULT_MAX_LAYERS 4096
#define INGEST_DEFAULT_MAX_CHANNELS 65536

/*
 * True when the NUL-terminated s is a valid run, worker or domain name:
 * [A-Za-z0-9._-]{1,128} (docs/API.md, "Names"). NULL is not valid. s is
 * borrowed, and read at most one byte past the longest valid name.
 */
bool ingest_name_valid(const char *s);

/*
 * True when the NUL-terminated s is a valid layer name:
 * [A-Za-z0-9._-]{1,256}. As ingest_name_valid() otherwise.
 */
bool ingest_layer_name_valid(const char *s);

/*
 * Decode the JSON upload body[0..len) for run `run` (taken from the URL;
 * validated here too). On success returns 0 and stores in *out a batch that
 * the caller owns and releases with ingest_batch_free(). On failure returns
 * a negative errno, leaves *out NULL and describes the problem in *err:
 * 400 (malformed JSON, wrong type, missing field) or 422 (invalid value,
 * limit), with the path of the offending field ("worker",
 * "layers.<name>.var[17]", "layers.<name>.mean.b64"; "" for the body as a
 * whole). -EINVAL for those; -ENOMEM (with 500 "internal") when memory
 * runs out. limits NULL means the defaults; err may be NULL. run, body
 * and limits are borrowed for the call; body need not be NUL-terminated,
 * and the batch does not point into it.
 */
int ingest_decode_json(const char *run, const char *body, size_t len,
		       const struct ingest_limits *limits, struct ingest_batch **out,
		       struct bn_error *err);

/*
 * Decode the binary upload body[0..len) for run `run`: a safetensors file
 * (8-byte little-endian header length N, N bytes of JSON header, then the
 * data buffer) with tensors "<layer>.count" (I64, shape [] or [1]),
 * "<layer>.mean", "<layer>.var" and optionally "<layer>.ema_mean",
 * "<layer>.ema_var" (F32 or F64, shape [C]), and "__metadata__" holding
 * worker, step, seq, domain and var_kind as strings (step and seq in
 * decimal digits). The rules and the result are those of
 * ingest_decode_json(): the same values give an equal batch and hash.
 * The header is untrusted: its length, every dtype, shape and
 * data_offsets are checked, and the tensors must cover the data buffer
 * exactly, back to back. Data may be at any alignment.
 *
 * On success returns 0 and stores in *out a batch that the caller owns
 * and releases with ingest_batch_free(); the batch does not point into
 * body. On failure returns a negative errno, leaves *out NULL and
 * describes the problem in *err: 400 (header not JSON or not an object:
 * malformed_json; a wrong JSON type; a missing field) or 422 (invalid
 * value, limit), with the path of the offending item: the tensor name
 * ("layer1.0.bn1.var", "layer1.0.bn1.var[17]" for a value),
 * "__metadata__.<key>", or "__header__" for the file as a whole (length,
 * layout, syntax). -EINVAL for those; -ENOMEM (with 500 "internal") when
 * memory runs out. limits NULL means the defaults; err may be NULL. run,
 * body and limits are borrowed for the call.
 */
int ingest_decode_safetensors(const char *run, const uint8_t *body, size_t len,
			      const struct ingest_limits *limits, struct ingest_batch **out,
			      struct bn_error *err);

/*
 * Decode standard base64 (RFC 4648, with '=' padding, no whitespace) of
 * src[0..len) into dst, which has room for at least len/4*3 bytes
 * (exactly the decoded size is enough: no byte past it is written).
 * Returns the number of bytes written, or -EINVAL on a bad character,
 * bad length or bad padding (including non-zero unused bits before the
 * padding, so that each byte string has one accepted encoding). On
 * -EINVAL the contents of dst are unspecified. src and dst stay the
 * caller's: nothing keeps a pointer to them.
 */
long ingest_base64_decode(const char *src, size_t len, uint8_t *dst);

#endif
