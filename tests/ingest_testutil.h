/*
 * What the ingest test programs (tests/check_ingest*.c) share: a string
 * builder, base64 and little-endian writers, the encodings of a value
 * array, decoding helpers that assert, the fixtures' files, the bodies of
 * the hash tests, the comparison of two results, the fast path against
 * jansson for a JSON body, and the random body generator. The safetensors
 * writer is in safetensors_testutil.h.
 *
 * Everything returned is the caller's: free() what is allocated,
 * ingest_batch_free() a batch. Every helper asserts (Check's ck_assert)
 * rather than return an error, so a test never sees a half-made value.
 */
#ifndef BNSTAT_INGEST_TESTUTIL_H
#define BNSTAT_INGEST_TESTUTIL_H

#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <check.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The default limits, spelt out. */
extern const struct ingest_limits limits;

/* ------------------------------------------------------------------ */
/* helpers */

/* A growing string. */
struct sbuf {
	char *s;
	size_t len, cap;
};

__attribute__((format(printf, 2, 3))) void sb_printf(struct sbuf *b, const char *fmt, ...);

/* Release b's text and empty b. */
void sb_free(struct sbuf *b);

/* Standard base64 of data[0..len) appended to b. */
void sb_base64(struct sbuf *b, const void *data, size_t len);

/* u as 4 (8) little-endian bytes at p. */
void put_le32(unsigned char *p, uint32_t u);
void put_le64(unsigned char *p, uint64_t u);

/* Encodings of a value array in a test body. */
enum enc { NUMBERS, F32, F64 };

/*
 * x[0..n) as little-endian f32 (e == F32) or f64 (else) in a new buffer
 * (for the caller to free()) of *size bytes.
 */
unsigned char *pack_values(const double *x, size_t n, enum enc e, size_t *size);

/* Append the JSON for x[0..n) in encoding e. */
void sb_values(struct sbuf *b, const double *x, size_t n, enum enc e);

/*
 * ingest_decode_json() of body (with lim, or the defaults), asserting
 * success: the batch is the caller's.
 */
struct ingest_batch *decode_ok_lim(const char *body, const struct ingest_limits *lim);
struct ingest_batch *decode_ok(const char *body);

/* ingest_decode_json() of body, asserting this refusal and no batch. */
void expect_error_lim(const char *body, const struct ingest_limits *lim, int status,
		      const char *code, const char *path);
void expect_error(const char *body, int status, const char *code, const char *path);

/* $BNSTAT_FIXTURES, else "tests/fixtures" (a static string). */
const char *fixtures_dir(void);

/* Whole file into a NUL-terminated buffer; NULL when it cannot be read. */
char *read_file(const char *path, size_t *len);

/* qsort() comparison of two char * by strcmp(). */
int name_cmp(const void *a, const void *b);

/* Sorted names (without suffix) of the files *<suffix> in dir; *n their number. */
char **list_files(const char *dir, const char *suffix, size_t *n);

/* Release list_files()'s result. */
void free_names(char **names, size_t n);

/* ------------------------------------------------------------------ */
/* hash */

/*
 * A batch of 3 layers: "bn.a" (5 channels, with ema), "bn.b" (count 0,
 * no arrays), "bn.c" (7 channels). Values are floats so that every
 * encoding carries them exactly. enc[k] picks the encoding of array k
 * (mean, var, ema_mean, ema_var of bn.a; mean, var of bn.c); `reverse`
 * writes the layers in reverse order. tweak() may change the values.
 */
struct hbatch {
	const char *var_kind;
	int64_t count_a, count_c;
	double a[4][5];
	double c[2][7];
};

void hbatch_init(struct hbatch *h);

/* h as a JSON body (the caller free()s it), arrays in encodings enc[]. */
char *hbatch_json(const struct hbatch *h, const enum enc enc[6], bool reverse);

/* The hash of hbatch_json(h, enc, reverse), decoded. */
void hbatch_hash(const struct hbatch *h, const enum enc enc[6], bool reverse,
		 uint8_t out[INGEST_HASH_SIZE]);

/* What the fast path did with a body (of either form). */
enum fast_outcome { FAST_GAVE_UP, FAST_OK, FAST_ERROR };

/* Two batches with the same identity, content and hash. */
void batch_assert_equal(const struct ingest_batch *a, const struct ingest_batch *b);

/* The next number of the xorshift32 sequence in *x (not 0). */
uint32_t fuzz_next(uint32_t *x);

/* ------------------------------------------------------------------ */
/* the fast JSON path against the jansson path */

/*
 * ingest_decode_json() first tries a scanner specialised to the upload
 * and runs jansson when the scanner gives up (ingest_private.h exposes
 * each path alone). On every body, the fast path must either give up,
 * touching nothing, or give exactly the jansson path's result: the same
 * return value and error (status, code, path, message, the non-finite
 * detail), or batches equal byte for byte, hash included; and
 * ingest_decode_json() must always give
 * the jansson path's result. Bodies are copied into buffers of exactly
 * their length, with no NUL after them, so that ASan and valgrind see any
 * read past the end.
 */

/* Two results of decoding one body: return value, batch, error. */
void results_assert_equal(const char *what, const char *body, size_t len, int r1,
			  const struct ingest_batch *b1, const struct bn_error *e1, int r2,
			  const struct ingest_batch *b2, const struct bn_error *e2);

/*
 * Decode body[0..len) by the jansson path, the fast path and
 * ingest_decode_json(), check that they agree, and say what the fast
 * path did.
 */
enum fast_outcome same_both_ways(const char *body, size_t len, const struct ingest_limits *lim);

/* same_both_ways() of a NUL-terminated body, with the default limits. */
enum fast_outcome same_both_ways_str(const char *body);

/*
 * A generator of random valid uploads: random names, counts, key order,
 * whitespace, number spellings and encodings. With dup set, one key of
 * one object (any level) is written twice.
 */
struct gen {
	uint32_t x;
	struct sbuf s;
	int dup;     /* < 0: no duplicate; else the member to write twice */
	int members; /* members written so far */
};

/* The next random number of g. */
uint32_t gen_next(struct gen *g);

/* Whitespace, mostly none. */
void gen_ws(struct gen *g);

/* A random double of any magnitude from 1e-20 to 1e20. */
double gen_double(struct gen *g, bool nonneg);

/* One array element: a random value in a random spelling. */
void gen_number(struct gen *g, bool nonneg);

/* "key": with whitespace around, counting members for g->dup. */
bool gen_key(struct gen *g, const char *key);

/* An order of n things, in o. */
void gen_shuffle(struct gen *g, int *o, int n);

/* One value array of n channels, as numbers or f32/f64 base64. */
void gen_array(struct gen *g, size_t n, bool nonneg);

/* A random name [A-Za-z0-9._-]{1,len} + suffix. */
void gen_name(struct gen *g, size_t len, const char *suffix);

/* One layer's object. */
void gen_layer(struct gen *g, bool biased);

/*
 * Member l of "layers": a name (with the suffix .l, so names are unique)
 * and a layer; the same name twice when it is the duplicated member.
 */
void gen_layer_member(struct gen *g, size_t l, bool biased, bool comma);

/* A whole body into g->s (reset first). */
void gen_body(struct gen *g, int dup);

/* ------------------------------------------------------------------ */
/* fixtures */

/* What a refused fixture must give: <name>.expect, "<status> <code> <path>". */
struct expect {
	int status;
	char code[64];
	char path[1024]; /* "" for "-" */
};

void read_expect(const char *dir, const char *name, struct expect *e);

/* 1 (and a line on stderr) when a decode of a refused fixture went otherwise. */
int misjudged(const char *where, const char *name, int r, const struct ingest_batch *b,
	      const struct bn_error *err, const struct expect *e);

#endif
