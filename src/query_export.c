/*
 * query_export: the run file (docs/API.md, "Moving a run"): a run's rows
 * written out as one JSON document for GET /v1/runs/{run}/export, and read
 * back, checked against the format, for POST /v1/runs/{run}/import (the
 * writer stores it: store_import.c).
 *
 * Every table is {"columns": [...], "rows": [[...], ...]}, its columns
 * those of store_rf_tables; integers are JSON integers, doubles JSON
 * numbers written with 17 significant digits (they read back to the same
 * bits), names JSON strings, and the stored arrays and hashes the stored
 * bytes themselves in base64: exact to the bit.
 */
#include "query_private.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/ingest.h"

#define RUNFILE_FORMAT "bnstat-run"

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with '=' padding of p[0..len), as a new JSON string. */
static json_t *b64_string(const uint8_t *p, size_t len)
{
	size_t n = (len + 2) / 3 * 4, i, o = 0;
	char *text = malloc(n + 1);
	json_t *s;

	if (text == NULL)
		return NULL;
	for (i = 0; i + 2 < len; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		text[o++] = b64_alphabet[v >> 18];
		text[o++] = b64_alphabet[(v >> 12) & 63];
		text[o++] = b64_alphabet[(v >> 6) & 63];
		text[o++] = b64_alphabet[v & 63];
	}
	if (i < len) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);

		text[o++] = b64_alphabet[v >> 18];
		text[o++] = b64_alphabet[(v >> 12) & 63];
		text[o++] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
		text[o++] = '=';
	}
	s = json_stringn(text, o);
	free(text);
	return s;
}

/* --- export --------------------------------------------------------------------------- */

struct export_walk {
	json_t *rows[STORE_RF_TABLES];
	size_t bytes, max_bytes; /* of the file so far (about), and at most */
};

/* About the bytes a value takes in the file. */
static size_t value_bytes(const struct store_rf_column *col, const struct store_rf_value *v)
{
	if (v->null)
		return 5;
	if (col->type == STORE_RF_BLOB)
		return (v->len + 2) / 3 * 4 + 3;
	if (col->type == STORE_RF_TEXT)
		return v->len + 3;
	return 21;
}

static json_t *value_json(const struct store_rf_column *col, const struct store_rf_value *v)
{
	if (v->null)
		return json_null();
	switch (col->type) {
	case STORE_RF_REAL:
		return json_real(v->d);
	case STORE_RF_TEXT:
		return json_stringn(v->p, v->len);
	case STORE_RF_BLOB:
		return b64_string(v->p, v->len);
	default:
		return json_integer((json_int_t)v->i);
	}
}

static int export_row(void *ctx, size_t table, const struct store_rf_value *vals)
{
	struct export_walk *ex = ctx;
	const struct store_rf_table *t = &store_rf_tables[table];
	json_t *row = json_array();
	size_t c;

	for (c = 0; c < t->n_cols; c++)
		ex->bytes += value_bytes(&t->cols[c], &vals[c]);
	if (ex->bytes > ex->max_bytes) {
		json_decref(row);
		return -EFBIG;
	}
	if (row == NULL || json_array_append_new(ex->rows[table], row) < 0)
		return -ENOMEM;
	for (c = 0; c < t->n_cols; c++) {
		json_t *v = value_json(&t->cols[c], &vals[c]);

		/* a text that is not UTF-8 cannot be a JSON string: no name is one */
		if (v == NULL || json_array_append_new(row, v) < 0)
			return -EILSEQ;
	}
	return 0;
}

int query_export(struct store_reader *r, const char *run, size_t max_bytes, json_t **out,
		 struct bn_error *err)
{
	struct export_walk ex = { .max_bytes = max_bytes };
	json_t *doc = NULL, *tables;
	int64_t run_id;
	size_t t, c;
	int rc;

	*out = NULL;
	store_read_begin(r);
	rc = query_run_find(r, run, &run_id, err);
	if (rc < 0)
		goto done;
	doc = json_pack("{s:s, s:i, s:s, s:{}}", "format", RUNFILE_FORMAT, "version",
			STORE_RF_VERSION, "run", run, "tables");
	if (doc == NULL) {
		rc = query_oom(err);
		goto done;
	}
	tables = json_object_get(doc, "tables");
	for (t = 0; t < STORE_RF_TABLES; t++) {
		const struct store_rf_table *tab = &store_rf_tables[t];
		json_t *cols = json_array();

		ex.rows[t] = json_array();
		if (cols == NULL || ex.rows[t] == NULL ||
		    json_object_set_new(
			    tables, tab->name,
			    json_pack("{s:o, s:O}", "columns", cols, "rows", ex.rows[t])) < 0) {
			rc = query_oom(err);
			goto done;
		}
		for (c = 0; c < tab->n_cols; c++)
			if (json_array_append_new(cols, json_string(tab->cols[c].name)) < 0) {
				rc = query_oom(err);
				goto done;
			}
	}
	rc = store_runfile_walk(r, run_id, export_row, &ex);
	if (rc == -ENOMEM)
		rc = query_oom(err);
	else if (rc == -EFBIG)
		rc = bn_error_set(
			err, 413, BN_E_TOO_LARGE, NULL,
			"the run file would be larger than %zu bytes (max-body), more than "
			"an import takes: raise max-body on both servers",
			max_bytes);
	else if (rc == -EILSEQ)
		rc = bn_error_set(err, 500, BN_E_INTERNAL, NULL, "a stored name is not UTF-8");
	else if (rc < 0)
		rc = query_read_failed(err);
	if (rc == 0) {
		*out = doc;
		doc = NULL;
	}
done:
	store_read_end(r);
	for (t = 0; t < STORE_RF_TABLES; t++)
		json_decref(ex.rows[t]);
	json_decref(doc);
	return rc;
}

/* --- import: the file, checked against the format --------------------------------------- */

static int bad(struct bn_error *err, int status, const char *code, const char *path,
	       const char *why)
{
	return bn_error_set(err, status, code, path, "%s", why);
}

/* One JSON value of a row into *v (bytes copied): 0 or a negative errno with *err. */
static int read_value(const struct store_rf_column *col, json_t *j, struct store_rf_value *v,
		      const char *path, struct bn_error *err)
{
	memset(v, 0, sizeof(*v));
	if (json_is_null(j)) {
		if (!col->nullable)
			return bad(err, 400, BN_E_TYPE, path, "this column is never null");
		v->null = true;
		return 0;
	}
	switch (col->type) {
	case STORE_RF_REAL:
		if (!json_is_real(j))
			return bad(err, 400, BN_E_TYPE, path,
				   "a number with a fraction or exponent");
		v->d = json_real_value(j);
		return 0;
	case STORE_RF_TEXT:
		if (!json_is_string(j))
			return bad(err, 400, BN_E_TYPE, path, "a string");
		v->len = json_string_length(j);
		v->p = malloc(v->len + 1);
		if (v->p == NULL)
			return query_oom(err);
		memcpy((void *)v->p, json_string_value(j), v->len + 1);
		return 0;
	case STORE_RF_BLOB: {
		const char *s;
		size_t n;
		long got;
		uint8_t *b;

		if (!json_is_string(j))
			return bad(err, 400, BN_E_TYPE, path, "a base64 string");
		s = json_string_value(j);
		n = json_string_length(j);
		b = malloc(n / 4 * 3 + 1);
		if (b == NULL)
			return query_oom(err);
		got = ingest_base64_decode(s, n, b);
		if (got < 0) {
			free(b);
			return bad(err, 422, BN_E_INVALID, path, "not base64 (RFC 4648, padded)");
		}
		v->p = b;
		v->len = (size_t)got;
		return 0;
	}
	default:
		if (!json_is_integer(j))
			return bad(err, 400, BN_E_TYPE, path, "an integer");
		v->i = (int64_t)json_integer_value(j);
		return 0;
	}
}

/* Table t of the file into rf: 0 or a negative errno with *err. */
static int read_table(json_t *tables, size_t t, struct store_runfile *rf, struct bn_error *err)
{
	const struct store_rf_table *tab = &store_rf_tables[t];
	json_t *o = json_object_get(tables, tab->name), *cols, *rows, *row;
	char path[BN_ERROR_PATH_MAX];
	size_t i, c;
	int rc;

	snprintf(path, sizeof(path), "tables.%s", tab->name);
	if (!json_is_object(o))
		return bad(err, 400, BN_E_MISSING, path, "every table of the format, as an object");
	cols = json_object_get(o, "columns");
	rows = json_object_get(o, "rows");
	if (!json_is_array(cols) || !json_is_array(rows))
		return bad(err, 400, BN_E_MISSING, path, "a table has columns and rows (arrays)");
	if (json_array_size(cols) != tab->n_cols)
		return bad(err, 422, BN_E_INVALID, path,
			   "the columns are not this format version's");
	for (c = 0; c < tab->n_cols; c++) {
		const char *name = json_string_value(json_array_get(cols, c));

		if (name == NULL || strcmp(name, tab->cols[c].name) != 0)
			return bad(err, 422, BN_E_INVALID, path,
				   "the columns are not this format version's");
	}
	rf->rows[t] = calloc(json_array_size(rows) * tab->n_cols + 1, sizeof(*rf->rows[t]));
	if (rf->rows[t] == NULL)
		return query_oom(err);
	json_array_foreach(rows, i, row)
	{
		if (!json_is_array(row) || json_array_size(row) != tab->n_cols) {
			snprintf(path, sizeof(path), "tables.%s.rows[%zu]", tab->name, i);
			return bad(err, 400, BN_E_TYPE, path, "a row is an array of every column");
		}
		rf->n_rows[t] = i + 1; /* what store_runfile_free() frees */
		for (c = 0; c < tab->n_cols; c++) {
			snprintf(path, sizeof(path), "tables.%s.rows[%zu][%zu]", tab->name, i, c);
			rc = read_value(&tab->cols[c], json_array_get(row, c),
					&rf->rows[t][i * tab->n_cols + c], path, err);
			if (rc < 0)
				return rc;
		}
	}
	return 0;
}

int query_import_decode(const char *body, size_t len, struct store_runfile **out,
			struct bn_error *err)
{
	struct store_runfile *rf;
	json_error_t jerr;
	json_t *doc, *tables, *version;
	const char *format, *key;
	json_t *val;
	size_t t;
	int rc = 0;

	*out = NULL;
	doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (doc == NULL)
		return bn_error_set(err, 400, BN_E_MALFORMED, NULL, "not a run file: %s",
				    jerr.text);
	format = json_string_value(json_object_get(doc, "format"));
	version = json_object_get(doc, "version");
	tables = json_object_get(doc, "tables");
	if (format == NULL || strcmp(format, RUNFILE_FORMAT) != 0)
		rc = bad(err, 422, BN_E_INVALID, "format", "not a run file (format bnstat-run)");
	else if (!json_is_integer(version) || json_integer_value(version) != STORE_RF_VERSION)
		rc = bad(err, 422, BN_E_INVALID, "version",
			 "a run file of a version this server does not read (it reads 1)");
	else if (!json_is_object(tables))
		rc = bad(err, 400, BN_E_MISSING, "tables", "a run file has tables");
	if (rc < 0) {
		json_decref(doc);
		return rc;
	}
	/* a table this version does not know would be dropped: refuse it */
	json_object_foreach(tables, key, val)
	{
		for (t = 0; t < STORE_RF_TABLES; t++)
			if (strcmp(key, store_rf_tables[t].name) == 0)
				break;
		if (t == STORE_RF_TABLES) {
			/* key is the document's: the message first */
			rc = bn_error_set(err, 422, BN_E_INVALID, "tables",
					  "table %s is not of this format version", key);
			json_decref(doc);
			return rc;
		}
	}
	rf = calloc(1, sizeof(*rf));
	if (rf == NULL) {
		json_decref(doc);
		return query_oom(err);
	}
	for (t = 0; t < STORE_RF_TABLES && rc == 0; t++)
		rc = read_table(tables, t, rf, err);
	if (rc == 0 && rf->n_rows[STORE_RF_T_RUNS] != 1)
		rc = bad(err, 422, BN_E_INVALID, "tables.runs",
			 "a run file holds one run: one row of runs");
	json_decref(doc);
	if (rc < 0) {
		store_runfile_free(rf);
		return rc;
	}
	*out = rf;
	return 0;
}
