/*
 * ingest's own header: what its files share and bnstatd's other modules do
 * not see. The module is one job (validate and decode an upload) in several
 * files, one sub-job each: names.c (name rules, showing names in
 * errors), base64.c, batch_hash.c (the content hash), ingest_build.c
 * (layer plans and the one builder of a batch), ingest_ident.c (the
 * identity of an upload), jscan.c and jscan.h (the fast JSON scanner's
 * primitives), ingest_json.c (the JSON form) and ingest_safetensors.c with
 * ingest_safetensors_scan.c (the safetensors form). Data flows one way:
 * a form's front end reads the body into struct layer_plans and the
 * identity, and ingest_build_batch() checks, builds and hashes the batch.
 * Layers are handled in name order, so which of several bad layers is
 * reported does not depend on the order of the upload.
 *
 * It also holds, for the tests, the two ways each decoder has of reading
 * its JSON, one at a time. ingest_decode_json() first tries a fast, strict
 * scanner specialised to the upload's schema, and runs jansson
 * (json_loadb) from scratch on any body the scanner leaves alone;
 * ingest_decode_safetensors() does the same with its header. Both ways
 * feed the same checks and builder. The tests compare the two on valid,
 * invalid and mutated bodies, and check that the fast path does handle
 * ordinary uploads; bnstatd itself calls only the public decoders of
 * bnstat/ingest.h.
 */
#ifndef BNSTAT_INGEST_PRIVATE_H
#define BNSTAT_INGEST_PRIVATE_H

#include "bnstat/ingest.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ */
/* names.c */

/* How much of an unknown key or an invalid name is echoed in an error. */
#define INGEST_SHOW_MAX 64

/* True when s[0..len) is 1..max characters of [A-Za-z0-9._-]. */
bool ingest_name_valid_n(const char *s, size_t len, size_t max);

/*
 * The length of the NUL-terminated s, but at most max + 1: s may be very
 * long, and anything past max is invalid anyway.
 */
size_t ingest_name_len(const char *s, size_t max);

/*
 * strcmp() order of a[0..alen) and b[0..blen), which hold no NUL and
 * need not be NUL-terminated: the order of layers in a batch.
 */
int ingest_name_cmp(const char *a, size_t alen, const char *b, size_t blen);

/*
 * Copy s[0..len) into dst (of dstsize >= 8 bytes) for an error path or
 * message: at most max bytes, "..." when cut, any byte outside printable
 * ASCII replaced by '?'. Returns dst, which the caller owns; s is only
 * read.
 */
const char *ingest_show(char *dst, size_t dstsize, const char *s, size_t len, size_t max);

/* ------------------------------------------------------------------ */
/* base64.c */

/*
 * The decoded size of base64 text s[0..len) with '=' padding, or
 * (size_t)-1 when len is not a multiple of 4. Looks at the last two
 * characters only; ingest_base64_decode() checks the others.
 */
size_t ingest_base64_decoded_size(const char *s, size_t len);

/* ------------------------------------------------------------------ */
/* batch_hash.c */

/*
 * Compute b->hash over b's content (see struct ingest_batch): var_kind,
 * n_layers, then per layer in the order of b->layers (name order) name,
 * count, channels, whether an EMA was sent and the doubles. b stays the
 * caller's; only b->hash is written. Changing what this computes changes
 * stored hashes, which the store compares with those of retried uploads.
 */
void ingest_batch_hash(struct ingest_batch *b);

/* ------------------------------------------------------------------ */
/* ingest_build.c: layer plans and the one builder of a batch */

/* The value arrays of a layer; ingest_arr_key[] are their keys. */
enum arr_id { ARR_MEAN, ARR_VAR, ARR_EMA_MEAN, ARR_EMA_VAR, ARR_N };

extern const char *const ingest_arr_key[ARR_N];

/* Where the values of one array are, as found before the batch exists. */
enum src_kind {
	SRC_NONE,    /* not sent */
	SRC_NUMBERS, /* a JSON array of numbers */
	SRC_B64,     /* base64 text of little-endian f32/f64 */
	SRC_RAW,     /* little-endian f32/f64 in a safetensors data buffer */
	SRC_DOUBLES, /* numbers already converted by the fast JSON scanner */
};

struct src_array {
	enum src_kind kind;
	size_t esize;	    /* SRC_B64, SRC_RAW: 4 (f32) or 8 (f64) */
	const json_t *json; /* SRC_NUMBERS: the array */
	const char *b64;    /* SRC_B64 */
	size_t b64_len;
	const uint8_t *raw; /* SRC_RAW: at any alignment */
	const double *dbl;  /* SRC_DOUBLES */
	size_t at;	    /* SRC_DOUBLES: index of dbl[0] in the fast
			       scanner's value buffer (which may still move) */
	const char *dtype;  /* SRC_B64 from the fast scanner: the dtype text */
	size_t dtype_len;   /* (not NUL-terminated), until plan_b64() reads it */
	size_t n;	    /* number of values */
};

/*
 * One layer between the passes. Each form fills in the name, the count
 * and where the arrays are; check_layer() then applies the rules of the
 * upload, the same for both forms, and fill_array() reads the values.
 */
struct layer_plan {
	const char *prefix; /* of error paths: "layers." (JSON), "" (safetensors) */
	const char *name;   /* name[0..name_len), not necessarily NUL-terminated */
	size_t name_len;
	const json_t *obj; /* JSON: the layer's object */
	bool has_count;
	int64_t count; /* as sent, until check_layer() has checked it */
	size_t channels;
	struct src_array src[ARR_N];
	size_t order; /* where the layer comes in the upload (any increasing key) */
};

/*
 * Little-endian integers at any alignment: bytes are assembled, never
 * loaded through a cast pointer, because safetensors data need not be
 * aligned (and neither need the body).
 */
static inline uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t load_le64(const uint8_t *p)
{
	return (uint64_t)load_le32(p) | (uint64_t)load_le32(p + 4) << 32;
}

/*
 * Check plans[0..n_layers) (names distinct; the caller has checked their
 * number with ingest_check_layer_count()) and build the batch with the
 * identity in *hdr: the one builder of both forms, so that equal content
 * gives an equal batch and hash whatever the encoding. plans are sorted
 * into name order; `plan`, when not NULL, is called for each layer after
 * its name is checked, to finish what the form needs to look at.
 *
 * Returns 0 and stores in *out a new batch, owned by the caller (release
 * it with ingest_batch_free()), which points into neither plans nor the
 * body. On failure returns a negative errno (-EINVAL, or -ENOMEM with a
 * 500 in *err), describes the problem in *err and leaves *out as it was.
 * plans, *hdr and what the plans point to stay the caller's.
 */
int ingest_build_batch(const struct ingest_batch *hdr, struct layer_plan *plans, size_t n_layers,
		       int (*plan)(struct layer_plan *, struct bn_error *),
		       const struct ingest_limits *lim, struct ingest_batch **out,
		       struct bn_error *err);

/*
 * 0 when there are 1..lim->max_layers layers, else a 422 at `path`
 * (which names the layer set) in *err and -EINVAL.
 */
int ingest_check_layer_count(size_t n, const struct ingest_limits *lim, const char *path,
			     struct bn_error *err);

/* qsort() comparison of two struct layer_plan by name (ingest_name_cmp()). */
int ingest_plan_cmp(const void *a, const void *b);

/*
 * The error helpers every front end reports through. Each sets *err
 * (when err is not NULL) and returns -EINVAL, as bn_error_set() does;
 * every string argument is only read, and client-supplied ones (names,
 * unknown keys) go through ingest_show().
 */

/* bn_error_set() with a message already in a va_list. */
int ingest_error_v(struct bn_error *err, int status, const char *code, const char *path,
		   const char *fmt, va_list ap);

/*
 * bn_error_set() for something in layer p, at the path
 * "<prefix><name>[.<field>][.<sub>][[index]]" (field, sub NULL and
 * index < 0 when absent).
 */
__attribute__((format(printf, 8, 9))) int
ingest_layer_error(struct bn_error *err, int status, const char *code, const struct layer_plan *p,
		   const char *field, const char *sub, long index, const char *fmt, ...);

/*
 * bn_error_set() for a value at `path`, or at field `field` of layer p
 * when p is not NULL.
 */
__attribute__((format(printf, 7, 8))) int
ingest_value_error(struct bn_error *err, int status, const char *code, const char *path,
		   const struct layer_plan *p, const char *field, const char *fmt, ...);

/*
 * A JSON integer v into *out: 0, or a 422 for a real number (the wire
 * contract wants integers written as integers), a 400 for another type.
 * `what` names the value in messages; the path is ingest_value_error()'s.
 * v is borrowed.
 */
int ingest_json_int(const json_t *v, const char *what, int64_t *out, const char *path,
		    const struct layer_plan *p, const char *field, struct bn_error *err);

/* 0 when v is in [0, max], else a 422; arguments as for ingest_json_int(). */
int ingest_uint_range(int64_t v, int64_t max, const char *what, const char *path,
		      const struct layer_plan *p, const char *field, struct bn_error *err);

/* "an object", "a string", ...: v's JSON type for a message (a static string). */
const char *ingest_type_name(const json_t *v);

/* Whether key is one of known[0..n). */
bool ingest_key_known(const char *key, const char *const *known, size_t n);

/* ------------------------------------------------------------------ */
/* ingest_ident.c: the identity of an upload */

/* safetensors' metadata object, which holds the identity in that form. */
#define SAFET_META "__metadata__"

/* How a form spells the identity and options of an upload. */
struct ingest_ident_form {
	const char *prefix;	 /* of error paths */
	const char *const *keys; /* the keys allowed beside them */
	size_t n_keys;
	const char *expected; /* the keys, for the unknown-key message */
	bool strings;	      /* step and seq are decimal strings */
};

/* The JSON body's top level, and safetensors' metadata (all strings). */
extern const struct ingest_ident_form ingest_ident_json;
extern const struct ingest_ident_form ingest_ident_meta;

/*
 * What both decoders do first: *out to NULL, *limits to the defaults when
 * it is NULL, and the run name from the URL checked. 0, or a 422 at "run"
 * in *err and -EINVAL. run is borrowed (NULL is an invalid name).
 */
int ingest_decode_start(const char *run, const struct ingest_limits **limits,
			struct ingest_batch **out, struct bn_error *err);

/*
 * The identity and options of the upload from obj (the JSON body, or
 * safetensors' metadata, as form f spells them) into *hdr's worker, step,
 * seq, domain and var_kind. Unknown keys are looked for first, so that a
 * misspelt key is reported as unknown rather than as missing. 0, or an
 * error in *err and -EINVAL. obj is borrowed.
 */
int ingest_ident_decode(const json_t *obj, const struct ingest_ident_form *f,
			struct ingest_batch *hdr, struct bn_error *err);

/*
 * The checks of single values that both ways of reading a form end in,
 * once the value is known to be a string s[0..len) (borrowed, not
 * necessarily NUL-terminated), `path` being where it was. Each returns 0,
 * or an error in *err and -EINVAL.
 */

/* A name field `key` (worker, domain) into dst (INGEST_NAME_MAX + 1 bytes). */
int ingest_ident_name(const char *key, const char *path, const char *s, size_t len, char *dst,
		      struct bn_error *err);

/* var_kind, "unbiased" or "biased", into *kind. */
int ingest_ident_var_kind(const char *path, const char *s, size_t len, enum stats_var_kind *kind,
			  struct bn_error *err);

/*
 * A step or seq of safetensors metadata into *out: the decimal digits of
 * an integer in [0, INT64_MAX], without sign, space or leading zero.
 */
int ingest_ident_decimal(const char *key, const char *path, const char *s, size_t len, int64_t *out,
			 struct bn_error *err);

/*
 * "<f->prefix><key[0..len)>", the key shown with ingest_show(), into dst
 * (of size > INGEST_SHOW_MAX + strlen(f->prefix) + 4). Returns dst.
 */
const char *ingest_ident_path(char *dst, size_t size, const struct ingest_ident_form *f,
			      const char *key, size_t len);

/* ------------------------------------------------------------------ */
/* ingest_json.c, and what both forms' drivers share */

/*
 * What a fast path (ingest_decode_json_jscan(),
 * ingest_decode_safetensors_jscan() and the functions behind them) returns for a document it leaves
 * to jansson, with *out still NULL and *err untouched.
 */
#define INGEST_NOT_HANDLED 1

/* Which readers a form's driver may use: the fast scanner, jansson, or both in turn. */
enum decode_paths { PATH_JSCAN = 1, PATH_JANSSON = 2, PATH_BOTH = PATH_JSCAN | PATH_JANSSON };

/*
 * Parse text[0..len) with jansson into *root, rejecting duplicate keys
 * and accepting any top-level type (the caller says what it must be).
 * 0 and a new reference in *root, which the caller json_decref()s; or a
 * 400 malformed_json at `path` in *err (its message naming `what` and the
 * position) and -EINVAL, or -ENOMEM (500). text is borrowed.
 */
int ingest_json_parse(const char *text, size_t len, const char *path, const char *what,
		      json_t **root, struct bn_error *err);

/* ------------------------------------------------------------------ */
/* ingest_safetensors.c, ingest_safetensors_scan.c */

#define SAFET_HEADER_MAX 100000000 /* bytes, the reference implementation's */
#define SAFET_HEADER "__header__"
#define SAFET_COUNT ARR_N /* safet_tensor.field of "<layer>.count" */
#define SAFET_FIELDS "count, mean, var, ema_mean, ema_var"

/*
 * One tensor of the header. Either front end fills in the key; the
 * jansson one sets info, and safet_check_tensor() type-checks it and reads
 * dtype, rank, dim and off from it as it goes. The fast scanner
 * (ingest_safet_decode_jscan()) leaves info NULL and fills those in
 * itself, having accepted only well-typed tensors. The checks of values are then the
 * same for both.
 */
struct safet_tensor {
	const char *key; /* the tensor name (NUL-terminated, no NUL inside) */
	size_t key_len;
	size_t layer_len;   /* key[0..layer_len) names the layer */
	unsigned field;	    /* enum arr_id, or SAFET_COUNT */
	const json_t *info; /* jansson: the tensor's value; fast path: NULL */
	const char *dtype;  /* the dtype string, dtype[0..dtype_len) */
	size_t dtype_len;
	size_t rank;	   /* of the shape */
	int64_t dim;	   /* its last dimension (1 for rank 0), >= 0 */
	int64_t off[2];	   /* data_offsets as sent, >= 0 */
	size_t esize;	   /* bytes of one element */
	size_t n;	   /* elements */
	size_t begin, end; /* data_offsets, within the data buffer */
};

/* qsort() comparison of two struct safet_tensor by key (strcmp()). */
int ingest_safet_key_cmp(const void *a, const void *b);

/*
 * What both ways of reading the header share once it is read: the
 * identity in *hdr, the tensors ts[0..n) (n > 0, within the limit; sorted
 * here), the data buffer data[0..data_len). Checks the tensors (in name
 * order) and the layout, then builds the batch: 0 and a new batch in
 * *out, owned by the caller; or an error in *err and a negative errno.
 * ts, *hdr and data stay the caller's; the batch points into none of them.
 */
int ingest_safet_decode_tensors(const struct ingest_batch *hdr, struct safet_tensor *ts, size_t n,
				const uint8_t *data, size_t data_len,
				const struct ingest_limits *lim, struct ingest_batch **out,
				struct bn_error *err);

/*
 * The fast path for the body[0..len) whose header length hlen is checked
 * already: as the jansson path, or INGEST_NOT_HANDLED (with *out still
 * NULL and *err untouched) for a header it leaves to jansson. body is
 * borrowed; the header is scanned in a private copy.
 */
int ingest_safet_decode_jscan(const char *run, const uint8_t *body, size_t len, size_t hlen,
			      const struct ingest_limits *lim, struct ingest_batch **out,
			      struct bn_error *err);

/* ------------------------------------------------------------------ */
/* the decoders one way at a time, for the tests */

/*
 * ingest_decode_json() by the fast scanner alone: the same results,
 * except INGEST_NOT_HANDLED (with *out NULL and *err untouched) for a
 * body that it does not handle, for which ingest_decode_json() would run
 * the jansson path. A run name that is not valid is still an error.
 */
int ingest_decode_json_jscan(const char *run, const char *body, size_t len,
			     const struct ingest_limits *limits, struct ingest_batch **out,
			     struct bn_error *err);

/*
 * ingest_decode_json() by the jansson path alone: how every body was
 * decoded before the fast path, and still how those it gives up on are.
 */
int ingest_decode_json_jansson(const char *run, const char *body, size_t len,
			       const struct ingest_limits *limits, struct ingest_batch **out,
			       struct bn_error *err);

/*
 * The same two ways for ingest_decode_safetensors()'s header: the fast
 * scanner alone (INGEST_NOT_HANDLED, with *out NULL and *err untouched,
 * for a header it leaves to jansson), and jansson alone. The checks
 * before the header (run name, header length) are errors for both.
 */
int ingest_decode_safetensors_jscan(const char *run, const uint8_t *body, size_t len,
				    const struct ingest_limits *limits, struct ingest_batch **out,
				    struct bn_error *err);

int ingest_decode_safetensors_jansson(const char *run, const uint8_t *body, size_t len,
				      const struct ingest_limits *limits, struct ingest_batch **out,
				      struct bn_error *err);

#endif
