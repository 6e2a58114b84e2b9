/*
 * fuzz_common: the shared invariants of the fuzz targets (fuzz_common.h).
 */
#include "fuzz_common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "ingest_private.h"

void fuzz_fail(const char *file, int line, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s:%d: invariant broken: ", file, line);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	abort();
}

static void check_values(const double *v, size_t n, bool nonneg, const char *layer,
			 const char *what)
{
	for (size_t i = 0; i < n; i++) {
		FUZZ_ASSERT(isfinite(v[i]), "layer %s: %s[%zu] = %g is not finite", layer, what, i,
			    v[i]);
		FUZZ_ASSERT(!nonneg || v[i] >= 0.0, "layer %s: %s[%zu] = %g < 0", layer, what, i,
			    v[i]);
	}
}

void fuzz_check_batch(const struct ingest_batch *b, const char *run,
		      const struct ingest_limits *lim)
{
	struct ingest_limits dflt = { INGEST_DEFAULT_MAX_LAYERS, INGEST_DEFAULT_MAX_CHANNELS };
	struct ingest_batch copy;

	if (lim == NULL)
		lim = &dflt;
	FUZZ_ASSERT(b != NULL, "accepted without a batch");
	FUZZ_ASSERT(strcmp(b->run, run) == 0, "run \"%s\", not \"%s\"", b->run, run);
	FUZZ_ASSERT(ingest_name_valid(b->run), "run name \"%s\"", b->run);
	FUZZ_ASSERT(ingest_name_valid(b->worker), "worker name \"%s\"", b->worker);
	FUZZ_ASSERT(ingest_name_valid(b->domain), "domain name \"%s\"", b->domain);
	FUZZ_ASSERT(b->step >= 0 && b->seq >= 0, "step %lld, seq %lld", (long long)b->step,
		    (long long)b->seq);
	FUZZ_ASSERT(b->var_kind == STATS_VAR_UNBIASED || b->var_kind == STATS_VAR_BIASED,
		    "var_kind %d", (int)b->var_kind);
	FUZZ_ASSERT(b->n_layers >= 1 && b->n_layers <= lim->max_layers, "%zu layers (limit %zu)",
		    b->n_layers, lim->max_layers);
	for (size_t i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];

		FUZZ_ASSERT(ingest_layer_name_valid(l->name), "layer name \"%s\"", l->name);
		FUZZ_ASSERT(i == 0 || strcmp(b->layers[i - 1].name, l->name) < 0,
			    "layers \"%s\", \"%s\" out of order or repeated", b->layers[i - 1].name,
			    l->name);
		FUZZ_ASSERT(l->count >= 0 && l->count <= (INT64_C(1) << 53), "layer %s: count %lld",
			    l->name, (long long)l->count);
		FUZZ_ASSERT(!(l->count == 1 && b->var_kind == STATS_VAR_UNBIASED),
			    "layer %s: count 1 with an unbiased variance", l->name);
		FUZZ_ASSERT(l->channels <= lim->max_channels, "layer %s: %zu channels (limit %zu)",
			    l->name, l->channels, lim->max_channels);
		FUZZ_ASSERT(l->count == 0 || l->channels >= 1, "layer %s: count %lld, no channel",
			    l->name, (long long)l->count);
		FUZZ_ASSERT((l->channels == 0) == (l->mean == NULL) &&
				    (l->channels == 0) == (l->var == NULL),
			    "layer %s: %zu channels, arrays %p %p", l->name, l->channels,
			    (const void *)l->mean, (const void *)l->var);
		FUZZ_ASSERT((l->ema_mean == NULL) == (l->ema_var == NULL),
			    "layer %s: one EMA array without the other", l->name);
		FUZZ_ASSERT(l->channels > 0 || l->ema_mean == NULL, "layer %s: an EMA, no channel",
			    l->name);
		check_values(l->mean, l->channels, false, l->name, "mean");
		check_values(l->var, l->channels, true, l->name, "var");
		if (l->ema_mean != NULL) {
			check_values(l->ema_mean, l->channels, false, l->name, "ema_mean");
			check_values(l->ema_var, l->channels, true, l->name, "ema_var");
		}
	}
	/* the hash is over the content as it is */
	copy = *b;
	ingest_batch_hash(&copy);
	FUZZ_ASSERT(memcmp(copy.hash, b->hash, sizeof(b->hash)) == 0, "the hash is stale");
}

void fuzz_check_refused(int rc, const struct ingest_batch *b, const struct bn_error *err)
{
	static const char *const codes[] = { BN_E_MALFORMED, BN_E_TYPE, BN_E_MISSING, BN_E_INVALID,
					     BN_E_LIMIT };
	bool known = false;

	FUZZ_ASSERT(rc < 0, "rc %d", rc);
	FUZZ_ASSERT(b == NULL, "a refusal left a batch behind");
	if (rc == -ENOMEM) {
		FUZZ_ASSERT(err->status == 500, "-ENOMEM with status %d", err->status);
		return;
	}
	FUZZ_ASSERT(rc == -EINVAL, "rc %d", rc);
	FUZZ_ASSERT(err->status == 400 || err->status == 422, "status %d", err->status);
	for (size_t i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		known = known || strcmp(err->code, codes[i]) == 0;
	FUZZ_ASSERT(known, "code \"%s\"", err->code);
	FUZZ_ASSERT(err->message[0] != '\0', "a refusal without a message");
	FUZZ_ASSERT(strnlen(err->path, sizeof(err->path)) < sizeof(err->path), "path unterminated");
	/* the code and the status go together (docs/API.md, "Errors") */
	FUZZ_ASSERT((err->status == 400) == (strcmp(err->code, BN_E_MALFORMED) == 0 ||
					     strcmp(err->code, BN_E_TYPE) == 0 ||
					     strcmp(err->code, BN_E_MISSING) == 0),
		    "status %d with code %s", err->status, err->code);
	FUZZ_ASSERT(!err->nonfinite.set || strcmp(err->code, BN_E_INVALID) == 0,
		    "non-finite details with code %s", err->code);
}

static bool same_doubles(const double *a, const double *b, size_t n)
{
	if (a == NULL || b == NULL)
		return a == b;
	return memcmp(a, b, n * sizeof(*a)) == 0;
}

void fuzz_check_same(const char *what, bool order, int r1, const struct ingest_batch *b1,
		     const struct bn_error *e1, int r2, const struct ingest_batch *b2,
		     const struct bn_error *e2)
{
	FUZZ_ASSERT(r1 == r2, "%s: rc %d (%d %s '%s': %s) vs %d (%d %s '%s': %s)", what, r1,
		    e1->status, e1->code, e1->path, e1->message, r2, e2->status, e2->code, e2->path,
		    e2->message);
	if (r1 == 0) {
		FUZZ_ASSERT(strcmp(b1->worker, b2->worker) == 0 &&
				    strcmp(b1->domain, b2->domain) == 0 && b1->step == b2->step &&
				    b1->seq == b2->seq && b1->var_kind == b2->var_kind &&
				    b1->n_layers == b2->n_layers,
			    "%s: the identities differ", what);
		FUZZ_ASSERT(memcmp(b1->hash, b2->hash, sizeof(b1->hash)) == 0, "%s: hashes differ",
			    what);
		for (size_t i = 0; i < b1->n_layers; i++) {
			const struct ingest_layer *x = &b1->layers[i], *y = &b2->layers[i];

			FUZZ_ASSERT(strcmp(x->name, y->name) == 0 && x->count == y->count &&
					    x->channels == y->channels &&
					    (!order || x->order == y->order),
				    "%s: layer %zu differs", what, i);
			FUZZ_ASSERT(same_doubles(x->mean, y->mean, x->channels) &&
					    same_doubles(x->var, y->var, x->channels) &&
					    same_doubles(x->ema_mean, y->ema_mean, x->channels) &&
					    same_doubles(x->ema_var, y->ema_var, x->channels),
				    "%s: layer %s: values differ", what, x->name);
		}
		return;
	}
	FUZZ_ASSERT(e1->status == e2->status && strcmp(e1->code, e2->code) == 0 &&
			    strcmp(e1->path, e2->path) == 0 &&
			    strcmp(e1->message, e2->message) == 0,
		    "%s: %d %s '%s' (%s) vs %d %s '%s' (%s)", what, e1->status, e1->code, e1->path,
		    e1->message, e2->status, e2->code, e2->path, e2->message);
	FUZZ_ASSERT(e1->nonfinite.set == e2->nonfinite.set &&
			    (!e1->nonfinite.set ||
			     (e1->nonfinite.step == e2->nonfinite.step &&
			      e1->nonfinite.channel == e2->nonfinite.channel &&
			      strcmp(e1->nonfinite.worker, e2->nonfinite.worker) == 0 &&
			      strcmp(e1->nonfinite.layer, e2->nonfinite.layer) == 0 &&
			      strcmp(e1->nonfinite.field, e2->nonfinite.field) == 0)),
		    "%s: the non-finite details differ", what);
}

const char *fuzz_file(const uint8_t *data, size_t size)
{
	static int fd = -1;
	static char path[64];
	size_t done = 0;

	if (fd < 0) {
		fd = memfd_create("bnstat-fuzz", 0);
		FUZZ_ASSERT(fd >= 0, "memfd_create: %s", strerror(errno));
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	}
	FUZZ_ASSERT(ftruncate(fd, 0) == 0, "ftruncate: %s", strerror(errno));
	while (done < size) {
		ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);

		FUZZ_ASSERT(n > 0, "pwrite: %s", strerror(errno));
		done += (size_t)n;
	}
	return path;
}

/* A growing buffer for the encoders; out of memory is a failure of the target. */
struct fbuf {
	char *s;
	size_t len, cap;
};

static void fb_add(struct fbuf *f, const void *p, size_t n)
{
	if (f->len + n + 1 > f->cap) {
		size_t cap = f->cap ? f->cap : 256;

		while (f->len + n + 1 > cap)
			cap *= 2;
		f->s = realloc(f->s, cap);
		FUZZ_ASSERT(f->s != NULL, "out of memory");
		f->cap = cap;
	}
	memcpy(f->s + f->len, p, n);
	f->len += n;
	f->s[f->len] = '\0';
}

__attribute__((format(printf, 2, 3))) static void fb_printf(struct fbuf *f, const char *fmt, ...)
{
	char tmp[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
	va_end(ap);
	FUZZ_ASSERT(n >= 0 && (size_t)n < sizeof(tmp), "fb_printf: %d", n);
	fb_add(f, tmp, (size_t)n);
}

static void put_array(struct fbuf *f, const char *key, const double *v, size_t n)
{
	fb_printf(f, ", \"%s\": [", key);
	for (size_t i = 0; i < n; i++)
		fb_printf(f, "%s%.17g", i ? "," : "", v[i]);
	fb_add(f, "]", 1);
}

static const char *kind_name(const struct ingest_batch *b)
{
	return b->var_kind == STATS_VAR_BIASED ? "biased" : "unbiased";
}

char *fuzz_batch_json(const struct ingest_batch *b, size_t *len)
{
	struct fbuf f = { NULL, 0, 0 };

	fb_printf(&f, "{\"worker\": \"%s\", \"domain\": \"%s\", \"step\": %lld, \"seq\": %lld, ",
		  b->worker, b->domain, (long long)b->step, (long long)b->seq);
	fb_printf(&f, "\"var_kind\": \"%s\", \"layers\": {", kind_name(b));
	for (size_t i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];

		fb_printf(&f, "%s\"%s\": {\"count\": %lld", i ? ", " : "", l->name,
			  (long long)l->count);
		if (l->channels > 0) {
			put_array(&f, "mean", l->mean, l->channels);
			put_array(&f, "var", l->var, l->channels);
		}
		if (l->ema_mean != NULL) {
			put_array(&f, "ema_mean", l->ema_mean, l->channels);
			put_array(&f, "ema_var", l->ema_var, l->channels);
		}
		fb_add(&f, "}", 1);
	}
	fb_add(&f, "}}", 2);
	*len = f.len;
	return f.s;
}

static void st_entry(struct fbuf *h, struct fbuf *d, const char *layer, const char *what,
		     const char *dtype, const char *shape, const void *bytes, size_t n)
{
	fb_printf(h,
		  ", \"%s.%s\": {\"dtype\": \"%s\", \"shape\": %s, \"data_offsets\": [%zu, %zu]}",
		  layer, what, dtype, shape, d->len, d->len + n);
	fb_add(d, bytes, n);
}

/* x[0..n) as little-endian doubles (the machines bnstat runs on are little-endian). */
static void st_values(struct fbuf *h, struct fbuf *d, const char *layer, const char *what,
		      const double *x, size_t n)
{
	char shape[32];

	snprintf(shape, sizeof(shape), "[%zu]", n);
	st_entry(h, d, layer, what, "F64", shape, x, n * sizeof(*x));
}

uint8_t *fuzz_batch_safetensors(const struct ingest_batch *b, size_t *len)
{
	struct fbuf h = { NULL, 0, 0 }, d = { NULL, 0, 0 };
	uint8_t *body;
	uint64_t hlen;

	fb_printf(&h, "{\"__metadata__\": {\"worker\": \"%s\", \"domain\": \"%s\", ", b->worker,
		  b->domain);
	fb_printf(&h, "\"step\": \"%lld\", \"seq\": \"%lld\", \"var_kind\": \"%s\"}",
		  (long long)b->step, (long long)b->seq, kind_name(b));
	fb_add(&d, "", 0);
	for (size_t i = 0; i < b->n_layers; i++) {
		const struct ingest_layer *l = &b->layers[i];
		int64_t count = l->count;

		st_entry(&h, &d, l->name, "count", "I64", i % 2 ? "[1]" : "[]", &count,
			 sizeof(count));
		if (l->channels > 0) {
			st_values(&h, &d, l->name, "mean", l->mean, l->channels);
			st_values(&h, &d, l->name, "var", l->var, l->channels);
		}
		if (l->ema_mean != NULL) {
			st_values(&h, &d, l->name, "ema_mean", l->ema_mean, l->channels);
			st_values(&h, &d, l->name, "ema_var", l->ema_var, l->channels);
		}
	}
	fb_add(&h, "}", 1);
	hlen = h.len;
	*len = 8 + h.len + d.len;
	body = malloc(*len);
	FUZZ_ASSERT(body != NULL, "out of memory");
	for (int i = 0; i < 8; i++)
		body[i] = (uint8_t)(hlen >> (8 * i));
	memcpy(body + 8, h.s, h.len);
	if (d.len > 0)
		memcpy(body + 8 + h.len, d.s, d.len);
	free(h.s);
	free(d.s);
	return body;
}

void fuzz_check_reencoded(const struct ingest_batch *b, const struct ingest_limits *lim)
{
	struct ingest_batch *bj = NULL, *bs = NULL;
	struct bn_error ej, es, none;
	size_t jlen, slen;
	char *json = fuzz_batch_json(b, &jlen);
	uint8_t *st = fuzz_batch_safetensors(b, &slen);
	int rj, rs;

	bn_error_clear(&ej);
	bn_error_clear(&es);
	bn_error_clear(&none);
	rj = ingest_decode_json(b->run, json, jlen, lim, &bj, &ej);
	fuzz_check_same("written again as JSON", false, rj, bj, &ej, 0, b, &none);
	rs = ingest_decode_safetensors(b->run, st, slen, lim, &bs, &es);
	fuzz_check_same("written again as safetensors", false, rs, bs, &es, 0, b, &none);
	ingest_batch_free(bj);
	ingest_batch_free(bs);
	free(json);
	free(st);
}

static void decoders_one(const struct fuzz_decoders *d, const void *body, size_t len,
			 const struct ingest_limits *lim)
{
	struct ingest_batch *b = NULL, *bf = NULL, *bj = NULL;
	struct bn_error e, ef, ej;
	int r, rf, rj;
	char what[96];

	bn_error_clear(&e);
	bn_error_clear(&ef);
	bn_error_clear(&ej);
	r = d->decode("r1", body, len, lim, &b, &e);
	rf = d->fast("r1", body, len, lim, &bf, &ef);
	rj = d->slow("r1", body, len, lim, &bj, &ej);
	if (r == 0) {
		fuzz_check_batch(b, "r1", lim);
		fuzz_check_reencoded(b, lim);
	} else {
		fuzz_check_refused(r, b, &e);
	}
	snprintf(what, sizeof(what), "%s vs jansson", d->name);
	fuzz_check_same(what, true, r, b, &e, rj, bj, &ej);
	if (rf == INGEST_NOT_HANDLED)
		FUZZ_ASSERT(bf == NULL && ef.status == 0 && ef.message[0] == '\0',
			    "the fast scanner gave up, leaving a result");
	else
		fuzz_check_same("fast scanner vs jansson", true, rf, bf, &ef, rj, bj, &ej);
	ingest_batch_free(b);
	ingest_batch_free(bf);
	ingest_batch_free(bj);
}

void fuzz_check_decoders(const struct fuzz_decoders *d, const uint8_t *data, size_t size)
{
	static const struct ingest_limits small = { 3, 8 };
	uint8_t *body = malloc(size ? size : 1);

	FUZZ_ASSERT(body != NULL, "out of memory");
	if (size > 0)
		memcpy(body, data, size);
	decoders_one(d, body, size, NULL);
	decoders_one(d, body, size, &small);
	free(body);
}
