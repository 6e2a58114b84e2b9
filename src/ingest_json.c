/*
 * ingest: the JSON form of an upload (docs/API.md, "Upload"), a JSON
 * object with worker, step, seq, domain, var_kind and layers, each
 * layer's arrays as JSON numbers or as {"dtype", "b64"}.
 *
 * A body is read one of two ways, which end in the same checks and the
 * same ingest_build_batch(): a fast, strict scanner for the shape of an
 * ordinary upload (built on jscan.h), and jansson for everything else.
 * ingest_decode_json() tries the scanner first and runs jansson from
 * scratch on any body the scanner leaves alone.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"
#include "jscan.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Parse text[0..len) into *root, rejecting duplicate keys; a syntax error
 * is a 400 at `path`, its message naming `what` and the position.
 */
int ingest_json_parse(const char *text, size_t len, const char *path, const char *what,
		      json_t **root, struct bn_error *err)
{
	char shown[JSON_ERROR_TEXT_LENGTH + 4];
	json_error_t jerr;

	/* JSON_DECODE_ANY so that a scalar is a wrong type rather than a
	 * syntax error; the callers say what the top level must be */
	*root = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &jerr);
	if (*root != NULL)
		return 0;
	if (json_error_code(&jerr) == json_error_out_of_memory) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return -ENOMEM;
	}
	/* jansson quotes the offending input, which may be binary */
	ingest_show(shown, sizeof(shown), jerr.text, strlen(jerr.text), JSON_ERROR_TEXT_LENGTH);
	return bn_error_set(err, 400, BN_E_MALFORMED, path,
			    "malformed %s at line %d, column %d: %s", what, jerr.line, jerr.column,
			    shown);
}

/* ------------------------------------------------------------------ */
/* the jansson path */

/*
 * The dtype s[0..len) of base64 array `id` of layer p, once it is known
 * to be a string, into p->src[id].esize: both JSON parsers end here.
 */
static int plan_dtype(struct layer_plan *p, enum arr_id id, const char *s, size_t len,
		      struct bn_error *err)
{
	struct src_array *a = &p->src[id];
	char shown[INGEST_SHOW_MAX + 4];

	if (len == 3 && memcmp(s, "f32", 3) == 0)
		a->esize = 4;
	else if (len == 3 && memcmp(s, "f64", 3) == 0)
		a->esize = 8;
	else
		return ingest_layer_error(
			err, 422, BN_E_INVALID, p, ingest_arr_key[id], "dtype", -1,
			"unknown dtype \"%s\" (expected \"f32\" or "
			"\"f64\")",
			ingest_show(shown, sizeof(shown), s, len, INGEST_SHOW_MAX));
	return 0;
}

/*
 * The base64 text s[0..len) of array `id` of layer p, whose esize
 * plan_dtype() has set: its length against the dtype. The text is
 * decoded later, by fill_array(), straight into the batch.
 */
static int plan_b64(struct layer_plan *p, enum arr_id id, const char *s, size_t len,
		    struct bn_error *err)
{
	struct src_array *a = &p->src[id];
	const char *key = ingest_arr_key[id];
	size_t bytes = ingest_base64_decoded_size(s, len);

	if (bytes == (size_t)-1)
		return ingest_layer_error(err, 422, BN_E_INVALID, p, key, "b64", -1,
					  "bad base64: length %zu is not a multiple "
					  "of 4 (standard alphabet, '=' padding)",
					  len);
	if (bytes % a->esize != 0)
		return ingest_layer_error(err, 422, BN_E_INVALID, p, key, "b64", -1,
					  "decodes to %zu bytes, not a multiple of "
					  "%zu (%s)",
					  bytes, a->esize, a->esize == 4 ? "f32" : "f64");
	a->b64 = s;
	a->b64_len = len;
	a->kind = SRC_B64;
	a->n = bytes / a->esize;
	return 0;
}

/*
 * Where one value array of a JSON layer is: its encoding and its length;
 * everything but the values themselves is checked.
 */
static int plan_array(struct layer_plan *p, enum arr_id id, struct bn_error *err)
{
	const char *key = ingest_arr_key[id];
	struct src_array *a = &p->src[id];
	const json_t *v = json_object_get(p->obj, key);
	const json_t *dt, *b64, *x;
	const char *k;
	int r;

	a->kind = SRC_NONE;
	a->n = 0;
	if (v == NULL)
		return 0;
	if (json_is_array(v)) {
		a->kind = SRC_NUMBERS;
		a->json = v;
		a->n = json_array_size(v);
		return 0;
	}
	if (!json_is_object(v))
		return ingest_layer_error(err, 400, BN_E_TYPE, p, key, NULL, -1,
					  "must be an array of numbers or "
					  "{\"dtype\", \"b64\"}, not %s",
					  ingest_type_name(v));
	json_object_foreach((json_t *)v, k, x)
	{
		if (strcmp(k, "dtype") != 0 && strcmp(k, "b64") != 0)
			return ingest_layer_error(err, 422, BN_E_INVALID, p, key, k, -1,
						  "unknown key (expected \"dtype\" "
						  "and \"b64\")");
	}
	dt = json_object_get(v, "dtype");
	if (dt == NULL)
		return ingest_layer_error(err, 400, BN_E_MISSING, p, key, "dtype", -1,
					  "dtype is required (\"f32\" or \"f64\")");
	if (!json_is_string(dt))
		return ingest_layer_error(err, 400, BN_E_TYPE, p, key, "dtype", -1,
					  "dtype must be a string, not %s", ingest_type_name(dt));
	r = plan_dtype(p, id, json_string_value(dt), json_string_length(dt), err);
	if (r < 0)
		return r;
	b64 = json_object_get(v, "b64");
	if (b64 == NULL)
		return ingest_layer_error(err, 400, BN_E_MISSING, p, key, "b64", -1,
					  "b64 is required");
	if (!json_is_string(b64))
		return ingest_layer_error(err, 400, BN_E_TYPE, p, key, "b64", -1,
					  "b64 must be a string, not %s", ingest_type_name(b64));
	return plan_b64(p, id, json_string_value(b64), json_string_length(b64), err);
}

/* What ingest_build_batch() needs of a JSON layer beyond its name. */
static int json_plan_layer(struct layer_plan *p, struct bn_error *err)
{
	static const char *const layer_keys[] = { "count", "mean", "var", "ema_mean", "ema_var" };
	const json_t *v;
	const char *k;
	size_t i;
	int r;

	if (!json_is_object(p->obj))
		return ingest_layer_error(err, 400, BN_E_TYPE, p, NULL, NULL, -1,
					  "a layer must be an object, not %s",
					  ingest_type_name(p->obj));
	json_object_foreach((json_t *)p->obj, k, v)
	{
		if (!ingest_key_known(k, layer_keys, 5))
			return ingest_layer_error(err, 422, BN_E_INVALID, p, k, NULL, -1,
						  "unknown key (expected count, mean, "
						  "var, ema_mean, ema_var)");
	}
	v = json_object_get(p->obj, "count");
	if (v != NULL) {
		r = ingest_json_int(v, "count", &p->count, NULL, p, "count", err);
		if (r < 0)
			return r;
		p->has_count = true;
	}
	for (i = 0; i < ARR_N; i++) {
		r = plan_array(p, (enum arr_id)i, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/*
 * Everything after the JSON document is parsed. On success *out holds the
 * batch; on failure nothing is allocated.
 */
static int json_decode_doc(const char *run, const json_t *root, const struct ingest_limits *lim,
			   struct ingest_batch **out, struct bn_error *err)
{
	struct ingest_batch hdr;
	struct layer_plan *plans;
	const json_t *layers, *v;
	const char *k;
	size_t n_layers, j;
	int r;

	if (!json_is_object(root))
		return bn_error_set(err, 400, BN_E_TYPE, NULL,
				    "the body must be a JSON object, not %s",
				    ingest_type_name(root));
	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.run, sizeof(hdr.run), "%s", run);
	r = ingest_ident_decode(root, &ingest_ident_json, &hdr, err);
	if (r < 0)
		return r;

	layers = json_object_get(root, "layers");
	if (layers == NULL)
		return bn_error_set(err, 400, BN_E_MISSING, "layers", "layers is required");
	if (!json_is_object(layers))
		return bn_error_set(err, 400, BN_E_TYPE, "layers",
				    "layers must be an object, not %s", ingest_type_name(layers));
	n_layers = json_object_size(layers);
	r = ingest_check_layer_count(n_layers, lim, "layers", err);
	if (r < 0)
		return r;

	plans = calloc(n_layers, sizeof(*plans));
	if (plans == NULL) {
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
		return -ENOMEM;
	}
	j = 0;
	json_object_foreach((json_t *)layers, k, v)
	{
		plans[j].prefix = "layers.";
		plans[j].name = k;
		plans[j].name_len = strlen(k);
		plans[j].obj = v;
		plans[j].order = j;
		j++;
	}
	r = ingest_build_batch(&hdr, plans, n_layers, json_plan_layer, lim, out, err);
	free(plans);
	return r;
}

/*
 * The JSON body as jansson sees it, without the fast path: parse, then
 * decode the document. *out and the limits are ingest_decode_start()'s.
 */
static int json_decode_jansson(const char *run, const char *body, size_t len,
			       const struct ingest_limits *limits, struct ingest_batch **out,
			       struct bn_error *err)
{
	json_t *root;
	int r;

	r = ingest_json_parse(body, len, NULL, "JSON", &root, err);
	if (r < 0)
		return r;
	r = json_decode_doc(run, root, limits, out, err);
	json_decref(root);
	return r;
}

/* ------------------------------------------------------------------ */
/* the fast path */

/*
 * json_loadb() is most of the cost of an upload: it lexes strings a byte
 * at a time (a base64 body is mostly one long string) and makes an object
 * for every number. The fast path scans the body once, in place, for
 * exactly the shape of a well-formed upload, and hands the same
 * layer_plans to the same ingest_build_batch() as the jansson path.
 *
 * It is strict and gives up (INGEST_NOT_HANDLED) on anything else: a
 * syntax error, a string with an escape, a control character or a byte
 * outside printable ASCII, a duplicate or unknown key, a missing required
 * field, a type the schema does not expect, an integer outside int64 or a
 * real that overflows (both syntax errors to jansson), trailing bytes,
 * more layers than the limit, a number token longer than
 * JSCAN_NUMBER_MAX. Then ingest_decode_json() runs the jansson path from
 * scratch, so every such body is reported exactly as before. What is left
 * for a body the scanner accepted are the checks of values (names,
 * ranges, var_kind, dtypes, base64, lengths, finiteness, limits), and
 * those run in the same order through the same functions as on the
 * jansson path; so the fast path never makes an error of its own and, on
 * a body it accepts, gives the same batch or the same error as the
 * jansson path. tests/check_ingest_parity.c holds the two paths to that.
 */

/* The JSON form's scanner: the cursor, and what it has read so far. */
struct json_scan {
	struct jscan sc; /* the cursor, the end of the body */
	struct layer_plan *plans;
	size_t n_plans, cap_plans;
	size_t max_plans; /* more layers than the limit: give up (the
			     jansson path reports it) rather than grow */
	double *vals;	  /* the values of number arrays, back to back */
	size_t n_vals, cap_vals;
};

/* What the top level may hold, as bits of a mask of keys seen. */
enum json_scan_key { JK_WORKER, JK_STEP, JK_SEQ, JK_DOMAIN, JK_VAR_KIND, JK_LAYERS };

/* A number array, its '[' read, into s->vals and *a. */
static bool json_scan_numbers(struct json_scan *s, struct src_array *a)
{
	bool more = true, is_int;
	int64_t i;
	double d;

	a->kind = SRC_DOUBLES;
	a->at = s->n_vals;
	a->n = 0;
	jscan_ws(&s->sc);
	if (s->sc.p < s->sc.end && *s->sc.p == ']') {
		s->sc.p++;
		return true;
	}
	while (more) {
		if (!jscan_number(&s->sc, &is_int, &i, &d))
			return false;
		if (s->n_vals == s->cap_vals) {
			size_t cap = s->cap_vals ? 2 * s->cap_vals : 1024;
			double *v;

			if (cap > SIZE_MAX / sizeof(*v) ||
			    (v = realloc(s->vals, cap * sizeof(*v))) == NULL)
				return false;
			s->vals = v;
			s->cap_vals = cap;
		}
		s->vals[s->n_vals++] = is_int ? (double)i : d;
		a->n++;
		if (!jscan_next(&s->sc, ']', &more))
			return false;
	}
	return true;
}

/* {"dtype": "...", "b64": "..."}, its '{' read, into *a. */
static bool json_scan_b64(struct json_scan *s, struct src_array *a)
{
	unsigned seen = 0;
	bool more = true;
	const char *key;
	size_t len;

	a->kind = SRC_B64;
	while (more) {
		unsigned bit;

		if (!jscan_key(&s->sc, &key, &len))
			return false;
		if (jscan_key_is(key, len, "dtype")) {
			bit = 1;
			if (!jscan_string(&s->sc, &a->dtype, &a->dtype_len))
				return false;
		} else if (jscan_key_is(key, len, "b64")) {
			bit = 2;
			if (!jscan_string(&s->sc, &a->b64, &a->b64_len))
				return false;
		} else {
			return false;
		}
		if (!jscan_member_end(&s->sc, &seen, bit, &more))
			return false;
	}
	return seen == 3;
}

/* One layer's object into *p. */
static bool json_scan_layer(struct json_scan *s, struct layer_plan *p)
{
	unsigned seen = 0;
	bool more = true;
	const char *key;
	size_t len, id;

	if (!jscan_char(&s->sc, '{'))
		return false;
	while (more) {
		if (!jscan_key(&s->sc, &key, &len))
			return false;
		if (jscan_key_is(key, len, "count")) {
			id = ARR_N;
			if (!jscan_int(&s->sc, &p->count))
				return false;
			p->has_count = true;
		} else {
			for (id = 0; id < ARR_N; id++)
				if (jscan_key_is(key, len, ingest_arr_key[id]))
					break;
			if (id == ARR_N)
				return false;
			if (jscan_char(&s->sc, '[')) {
				if (!json_scan_numbers(s, &p->src[id]))
					return false;
			} else if (s->sc.p < s->sc.end && *s->sc.p == '{') {
				s->sc.p++;
				if (!json_scan_b64(s, &p->src[id]))
					return false;
			} else {
				return false;
			}
		}
		if (seen & 1u << id)
			return false;
		seen |= 1u << id;
		if (!jscan_next(&s->sc, '}', &more))
			return false;
	}
	return p->has_count;
}

/* The "layers" object into s->plans. */
static bool json_scan_layers(struct json_scan *s)
{
	bool more = true;

	if (!jscan_char(&s->sc, '{'))
		return false;
	jscan_ws(&s->sc);
	if (s->sc.p < s->sc.end && *s->sc.p == '}') {
		s->sc.p++;
		return true;
	}
	while (more) {
		struct layer_plan *p;

		if (s->n_plans == s->max_plans)
			return false;
		if (s->n_plans == s->cap_plans) {
			size_t cap = s->cap_plans ? 2 * s->cap_plans : 64;

			if (cap > SIZE_MAX / sizeof(*p) ||
			    (p = realloc(s->plans, cap * sizeof(*p))) == NULL)
				return false;
			s->plans = p;
			s->cap_plans = cap;
		}
		p = &s->plans[s->n_plans];
		memset(p, 0, sizeof(*p));
		p->order = s->n_plans++;
		p->prefix = "layers.";
		if (!jscan_key(&s->sc, &p->name, &p->name_len) || !json_scan_layer(s, p) ||
		    !jscan_next(&s->sc, '}', &more))
			return false;
	}
	return true;
}

/*
 * The whole body: the top-level object into the identity strings and
 * integers and s->plans, then nothing but whitespace.
 */
static bool json_scan_body(struct json_scan *s, const char *str[JK_LAYERS],
			   size_t str_len[JK_LAYERS], int64_t ints[2], unsigned *seen)
{
	bool more = true;
	const char *key;
	size_t len;
	unsigned k;
	static const char *const keys[] = {
		"worker", "step", "seq", "domain", "var_kind", "layers"
	};

	*seen = 0;
	if (!jscan_char(&s->sc, '{'))
		return false;
	while (more) {
		if (!jscan_key(&s->sc, &key, &len))
			return false;
		for (k = 0; k <= JK_LAYERS; k++)
			if (jscan_key_is(key, len, keys[k]))
				break;
		if (k > JK_LAYERS || (*seen & 1u << k))
			return false;
		*seen |= 1u << k;
		if (k == JK_STEP || k == JK_SEQ) {
			if (!jscan_int(&s->sc, &ints[k - JK_STEP]))
				return false;
		} else if (k == JK_LAYERS) {
			if (!json_scan_layers(s))
				return false;
		} else if (!jscan_string(&s->sc, &str[k], &str_len[k])) {
			return false;
		}
		if (!jscan_next(&s->sc, '}', &more))
			return false;
	}
	jscan_ws(&s->sc);
	return s->sc.p == s->sc.end;
}

/*
 * json_plan_layer() for a layer the scanner read: the count is an
 * integer and the arrays well-typed already, so what is left is the
 * dtype and base64 length of each base64 array, in the same order.
 */
static int json_scan_plan_layer(struct layer_plan *p, struct bn_error *err)
{
	size_t i;
	int r;

	for (i = 0; i < ARR_N; i++) {
		struct src_array *a = &p->src[i];

		if (a->kind != SRC_B64)
			continue;
		r = plan_dtype(p, (enum arr_id)i, a->dtype, a->dtype_len, err);
		if (r == 0)
			r = plan_b64(p, (enum arr_id)i, a->b64, a->b64_len, err);
		if (r < 0)
			return r;
	}
	return 0;
}

/*
 * ingest_ident_decode() and json_decode_doc() for a body the scanner read:
 * the same checks of values, in the same order, through the same
 * functions (the type checks have passed already).
 */
static int json_scan_doc(const char *run, struct json_scan *s, const char *const str[JK_LAYERS],
			 const size_t str_len[JK_LAYERS], const int64_t ints[2], unsigned seen,
			 const struct ingest_limits *lim, struct ingest_batch **out,
			 struct bn_error *err)
{
	static const char *const int_keys[2] = { "step", "seq" };
	struct ingest_batch hdr;
	int r, i;

	memset(&hdr, 0, sizeof(hdr));
	snprintf(hdr.run, sizeof(hdr.run), "%s", run);
	r = ingest_ident_name("worker", "worker", str[JK_WORKER], str_len[JK_WORKER], hdr.worker,
			      err);
	if (r < 0)
		return r;
	for (i = 0; i < 2; i++) {
		r = ingest_uint_range(ints[i], INT64_MAX, int_keys[i], int_keys[i], NULL, NULL,
				      err);
		if (r < 0)
			return r;
	}
	hdr.step = ints[0];
	hdr.seq = ints[1];
	if (seen & 1u << JK_DOMAIN)
		r = ingest_ident_name("domain", "domain", str[JK_DOMAIN], str_len[JK_DOMAIN],
				      hdr.domain, err);
	else
		snprintf(hdr.domain, sizeof(hdr.domain), "%s", "default");
	if (r < 0)
		return r;
	hdr.var_kind = STATS_VAR_UNBIASED;
	if (seen & 1u << JK_VAR_KIND) {
		r = ingest_ident_var_kind("var_kind", str[JK_VAR_KIND], str_len[JK_VAR_KIND],
					  &hdr.var_kind, err);
		if (r < 0)
			return r;
	}

	r = ingest_check_layer_count(s->n_plans, lim, "layers", err);
	if (r < 0)
		return r;
	return ingest_build_batch(&hdr, s->plans, s->n_plans, json_scan_plan_layer, lim, out, err);
}

/*
 * The fast path: as the jansson path (json_decode_jansson()), or
 * INGEST_NOT_HANDLED, with *out still NULL and err untouched, for a body it
 * leaves to jansson.
 */
static int json_decode_jscan(const char *run, const char *body, size_t len,
			     const struct ingest_limits *limits, struct ingest_batch **out,
			     struct bn_error *err)
{
	struct json_scan s;
	const char *str[JK_LAYERS] = { NULL };
	size_t str_len[JK_LAYERS] = { 0 }, i, j;
	int64_t ints[2] = { 0, 0 };
	unsigned seen;
	const unsigned need = 1u << JK_WORKER | 1u << JK_STEP | 1u << JK_SEQ | 1u << JK_LAYERS;
	int r = INGEST_NOT_HANDLED;

	if (body == NULL)
		return INGEST_NOT_HANDLED;
	memset(&s, 0, sizeof(s));
	s.sc.p = body;
	s.sc.end = body + len;
	s.max_plans = limits->max_layers;
	if (!json_scan_body(&s, str, str_len, ints, &seen) || (seen & need) != need)
		goto done;
	/* duplicate layer names: jansson's JSON_REJECT_DUPLICATES */
	if (s.n_plans > 1)
		qsort(s.plans, s.n_plans, sizeof(*s.plans), ingest_plan_cmp);
	for (i = 1; i < s.n_plans; i++)
		if (ingest_plan_cmp(&s.plans[i - 1], &s.plans[i]) == 0)
			goto done;
	/* s.vals stays put from here on; NULL when every array is empty, and
	 * then no dbl is read (NULL + 0 is undefined, so none is formed) */
	for (i = 0; s.vals != NULL && i < s.n_plans; i++)
		for (j = 0; j < ARR_N; j++)
			if (s.plans[i].src[j].kind == SRC_DOUBLES)
				s.plans[i].src[j].dbl = s.vals + s.plans[i].src[j].at;
	r = json_scan_doc(run, &s, str, str_len, ints, seen, limits, out, err);
done:
	free(s.plans);
	free(s.vals);
	return r;
}

static int json_decode(const char *run, const char *body, size_t len,
		       const struct ingest_limits *limits, struct ingest_batch **out,
		       struct bn_error *err, unsigned paths)
{
	int r = ingest_decode_start(run, &limits, out, err);

	if (r < 0)
		return r;
	r = INGEST_NOT_HANDLED;
	if (paths & PATH_JSCAN)
		r = json_decode_jscan(run, body, len, limits, out, err);
	if (r == INGEST_NOT_HANDLED && (paths & PATH_JANSSON))
		r = json_decode_jansson(run, body, len, limits, out, err);
	return r;
}

int ingest_decode_json_jscan(const char *run, const char *body, size_t len,
			     const struct ingest_limits *limits, struct ingest_batch **out,
			     struct bn_error *err)
{
	return json_decode(run, body, len, limits, out, err, PATH_JSCAN);
}

int ingest_decode_json_jansson(const char *run, const char *body, size_t len,
			       const struct ingest_limits *limits, struct ingest_batch **out,
			       struct bn_error *err)
{
	return json_decode(run, body, len, limits, out, err, PATH_JANSSON);
}

int ingest_decode_json(const char *run, const char *body, size_t len,
		       const struct ingest_limits *limits, struct ingest_batch **out,
		       struct bn_error *err)
{
	return json_decode(run, body, len, limits, out, err, PATH_BOTH);
}
