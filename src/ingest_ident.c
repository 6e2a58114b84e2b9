/*
 * ingest: the identity and options of an upload (docs/API.md, "Upload"):
 * the run from the URL, and worker, step, seq, domain and var_kind from
 * the JSON body's top level or from safetensors' "__metadata__". The two
 * forms spell them differently (step and seq are JSON integers in one,
 * decimal strings in the other), described by a struct ingest_ident_form;
 * the checks of their values are the same functions for both forms and
 * for both ways of reading each (jansson, the fast scanner), so that the
 * same value gives the same error whatever the path.
 */
#include "bnstat/ingest.h"
#include "ingest_private.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

/* What a decoder given NULL limits uses. */
static const struct ingest_limits default_limits = { INGEST_DEFAULT_MAX_LAYERS,
						     INGEST_DEFAULT_MAX_CHANNELS };

static const char *const json_keys[] = { "worker", "step", "seq", "domain", "var_kind", "layers" };
const struct ingest_ident_form ingest_ident_json = { "", json_keys,
						     sizeof(json_keys) / sizeof(*json_keys),
						     "worker, step, seq, domain, var_kind, layers",
						     false };

/*
 * safetensors: the "__metadata__" object, a string-to-string map. "format"
 * is what safetensors' own writers add ("pt"); it is allowed and ignored.
 */
static const char *const meta_keys[] = { "worker", "step", "seq", "domain", "var_kind", "format" };
const struct ingest_ident_form ingest_ident_meta = { SAFET_META ".", meta_keys,
						     sizeof(meta_keys) / sizeof(*meta_keys),
						     "worker, step, seq, domain, var_kind, format",
						     true };

/* "<prefix><key>" into dst (of size > INGEST_SHOW_MAX + strlen(prefix) + 4). */
const char *ingest_ident_path(char *dst, size_t size, const struct ingest_ident_form *f,
			      const char *key, size_t len)
{
	char shown[INGEST_SHOW_MAX + 4];

	snprintf(dst, size, "%s%s", f->prefix,
		 ingest_show(shown, sizeof(shown), key, len, INGEST_SHOW_MAX));
	return dst;
}

/*
 * The value s[0..len) of name field `key` (worker, domain) into dst, once
 * it is known to be a string: both JSON parsers end here.
 */
int ingest_ident_name(const char *key, const char *path, const char *s, size_t len, char *dst,
		      struct bn_error *err)
{
	if (!ingest_name_valid_n(s, len, INGEST_NAME_MAX)) {
		char shown[INGEST_SHOW_MAX + 4];

		return bn_error_set(err, 422, BN_E_INVALID, path,
				    "%s \"%s\" must match [A-Za-z0-9._-]{1,%d}", key,
				    ingest_show(shown, sizeof(shown), s, len, INGEST_SHOW_MAX),
				    INGEST_NAME_MAX);
	}
	memcpy(dst, s, len);
	dst[len] = '\0';
	return 0;
}

/*
 * The value s[0..len) of var_kind into *kind, once it is known to be a
 * string; `path` is where it was.
 */
int ingest_ident_var_kind(const char *path, const char *s, size_t len, enum stats_var_kind *kind,
			  struct bn_error *err)
{
	char shown[INGEST_SHOW_MAX + 4];

	if (len == 6 && memcmp(s, "biased", 6) == 0)
		*kind = STATS_VAR_BIASED;
	else if (len == 8 && memcmp(s, "unbiased", 8) == 0)
		*kind = STATS_VAR_UNBIASED;
	else
		return bn_error_set(err, 422, BN_E_INVALID, path,
				    "var_kind \"%s\" is not \"unbiased\" or "
				    "\"biased\"",
				    ingest_show(shown, sizeof(shown), s, len, INGEST_SHOW_MAX));
	return 0;
}

/* A name field (worker, domain) of obj into dst. */
static int get_name(const json_t *obj, const char *key, const char *path, bool required,
		    const char *dflt, char *dst, struct bn_error *err)
{
	const json_t *v = json_object_get(obj, key);

	if (v == NULL) {
		if (required)
			return bn_error_set(err, 400, BN_E_MISSING, path, "%s is required", key);
		snprintf(dst, INGEST_NAME_MAX + 1, "%s", dflt);
		return 0;
	}
	if (!json_is_string(v))
		return bn_error_set(err, 400, BN_E_TYPE, path, "%s must be a string, not %s", key,
				    ingest_type_name(v));
	return ingest_ident_name(key, path, json_string_value(v), json_string_length(v), dst, err);
}

/*
 * A step or seq of safetensors metadata, where every value is a string:
 * the decimal digits of an integer in [0, INT64_MAX] and nothing else (no
 * sign, space, decimal point or exponent), without leading zeros so that
 * each number has one spelling, as in JSON.
 */
int ingest_ident_decimal(const char *key, const char *path, const char *s, size_t len, int64_t *out,
			 struct bn_error *err)
{
	char shown[INGEST_SHOW_MAX + 4];
	size_t i;
	uint64_t x = 0;

	ingest_show(shown, sizeof(shown), s, len, INGEST_SHOW_MAX);
	for (i = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++)
		;
	if (len == 0 || i < len || (len > 1 && s[0] == '0'))
		return bn_error_set(err, 422, BN_E_INVALID, path,
				    "%s \"%s\" must be an integer >= 0 in "
				    "decimal digits (no sign, space, decimal "
				    "point or leading zero)",
				    key, shown);
	/* 19 digits always fit in 64 bits */
	for (i = 0; i < len && i < 19; i++)
		x = x * 10 + (uint64_t)(s[i] - '0');
	if (len > 19 || x > (uint64_t)INT64_MAX)
		return bn_error_set(err, 422, BN_E_INVALID, path, "%s \"%s\" must be <= %lld", key,
				    shown, (long long)INT64_MAX);
	*out = (int64_t)x;
	return 0;
}

/* ingest_ident_decimal() for v, once it is known to be a string. */
static int get_decimal(const json_t *v, const char *key, const char *path, int64_t *out,
		       struct bn_error *err)
{
	if (!json_is_string(v))
		return bn_error_set(err, 400, BN_E_TYPE, path,
				    "%s must be a string (safetensors metadata "
				    "maps strings to strings), not %s",
				    key, ingest_type_name(v));
	return ingest_ident_decimal(key, path, json_string_value(v), json_string_length(v), out,
				    err);
}

/*
 * The identity and options of the upload from obj (the JSON body, or
 * safetensors' metadata) into *hdr. Unknown keys are looked for first, so
 * that a misspelt key is reported as unknown rather than as missing.
 */
int ingest_ident_decode(const json_t *obj, const struct ingest_ident_form *f,
			struct ingest_batch *hdr, struct bn_error *err)
{
	static const char *const int_keys[2] = { "step", "seq" };
	int64_t *ints[2] = { &hdr->step, &hdr->seq };
	char path[INGEST_SHOW_MAX + 32], shown[INGEST_SHOW_MAX + 4];
	const json_t *v;
	const char *k;
	int r, i;

	json_object_foreach((json_t *)obj, k, v)
	{
		if (!ingest_key_known(k, f->keys, f->n_keys))
			return bn_error_set(
				err, 422, BN_E_INVALID,
				ingest_ident_path(path, sizeof(path), f, k, strlen(k)),
				"unknown key \"%s\" (expected %s)",
				ingest_show(shown, sizeof(shown), k, strlen(k), INGEST_SHOW_MAX),
				f->expected);
	}

	r = get_name(obj, "worker", ingest_ident_path(path, sizeof(path), f, "worker", 6), true,
		     NULL, hdr->worker, err);
	if (r < 0)
		return r;
	for (i = 0; i < 2; i++) {
		ingest_ident_path(path, sizeof(path), f, int_keys[i], strlen(int_keys[i]));
		v = json_object_get(obj, int_keys[i]);
		if (v == NULL)
			return bn_error_set(err, 400, BN_E_MISSING, path, "%s is required",
					    int_keys[i]);
		if (f->strings)
			r = get_decimal(v, int_keys[i], path, ints[i], err);
		else if ((r = ingest_json_int(v, int_keys[i], ints[i], path, NULL, NULL, err)) == 0)
			r = ingest_uint_range(*ints[i], INT64_MAX, int_keys[i], path, NULL, NULL,
					      err);
		if (r < 0)
			return r;
	}
	r = get_name(obj, "domain", ingest_ident_path(path, sizeof(path), f, "domain", 6), false,
		     "default", hdr->domain, err);
	if (r < 0)
		return r;

	hdr->var_kind = STATS_VAR_UNBIASED;
	v = json_object_get(obj, "var_kind");
	if (v == NULL)
		return 0;
	ingest_ident_path(path, sizeof(path), f, "var_kind", 8);
	if (!json_is_string(v))
		return bn_error_set(err, 400, BN_E_TYPE, path, "var_kind must be a string, not %s",
				    ingest_type_name(v));
	return ingest_ident_var_kind(path, json_string_value(v), json_string_length(v),
				     &hdr->var_kind, err);
}

/*
 * What both decoders do first: *out to NULL, the default limits when
 * *limits is NULL, and the run name from the URL checked.
 */
int ingest_decode_start(const char *run, const struct ingest_limits **limits,
			struct ingest_batch **out, struct bn_error *err)
{
	size_t run_len = run ? ingest_name_len(run, INGEST_NAME_MAX) : 0;
	char shown[INGEST_SHOW_MAX + 4];

	*out = NULL;
	if (*limits == NULL)
		*limits = &default_limits;
	if (ingest_name_valid_n(run ? run : "", run_len, INGEST_NAME_MAX))
		return 0;
	return bn_error_set(
		err, 422, BN_E_INVALID, "run", "run \"%s\" must match [A-Za-z0-9._-]{1,%d}",
		ingest_show(shown, sizeof(shown), run ? run : "", run_len, INGEST_SHOW_MAX),
		INGEST_NAME_MAX);
}
