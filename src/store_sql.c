/*
 * store_sql: the SQLite plumbing every part of the store runs on: opening
 * a connection, running SQL text, and the one loop that steps a statement
 * through its rows, so that binding, stepping, resetting and turning a
 * failed step into -EIO read the same everywhere.
 */
#include "store_private.h"

#include <stdint.h>

/* What store_sql_fault_take() reports (store_private.h); one per thread. */
static _Thread_local int sql_fault;

static int fault_rank(int rc)
{
	switch (rc & 0xff) {
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return 3;
	case SQLITE_FULL:
		return 2;
	case SQLITE_IOERR:
		return 1;
	default:
		return 0;
	}
}

void store_sql_fault_note(int rc)
{
	if (fault_rank(rc) > fault_rank(sql_fault))
		sql_fault = rc;
}

int store_sql_fault_take(void)
{
	int rc = sql_fault;

	sql_fault = 0;
	return rc;
}

int store_sql_error(struct bn_error *err, sqlite3 *db, const char *what)
{
	return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "%s: %s", what,
			    db ? sqlite3_errmsg(db) : "out of memory");
}

int store_sql_open(const char *path, bool writer, sqlite3 **out, struct bn_error *err)
{
	sqlite3 *db = NULL;
	int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX;
	int rc;

	if (writer)
		flags |= SQLITE_OPEN_CREATE;
	rc = sqlite3_open_v2(path, &db, flags, NULL);
	if (rc != SQLITE_OK) {
		store_sql_fault_note(db ? sqlite3_extended_errcode(db) : rc);
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "cannot open database %s: %s", path,
			     db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
		sqlite3_close(db);
		return -EIO;
	}
	sqlite3_busy_timeout(db, 10000);
	sqlite3_extended_result_codes(db, 1);
	*out = db;
	return 0;
}

int store_sql_exec(sqlite3 *db, const char *sql, struct bn_error *err)
{
	char *msg = NULL;
	int rc = sqlite3_exec(db, sql, NULL, NULL, &msg);

	if (rc != SQLITE_OK) {
		store_sql_fault_note(sqlite3_extended_errcode(db));
		bn_error_set(err, 500, BN_E_INTERNAL, NULL, "%s: %s", sql,
			     msg ? msg : sqlite3_errstr(rc));
		sqlite3_free(msg);
		return -EIO;
	}
	return 0;
}

int store_sql_rows(sqlite3_stmt *st, store_sql_row_fn fn, void *ctx)
{
	int rc = 0, src;

	while ((src = sqlite3_step(st)) == SQLITE_ROW) {
		rc = fn != NULL ? fn(ctx, st) : 1;
		if (rc != 0)
			break;
	}
	if (rc == 0 && src != SQLITE_DONE) {
		store_sql_fault_note(sqlite3_extended_errcode(sqlite3_db_handle(st)));
		rc = -EIO;
	}
	sqlite3_reset(st);
	return rc;
}

int store_sql_run(sqlite3_stmt *st)
{
	int rc = sqlite3_step(st);

	if (rc != SQLITE_DONE)
		store_sql_fault_note(sqlite3_extended_errcode(sqlite3_db_handle(st)));
	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : -EIO;
}

int store_sql_prepare(sqlite3 *db, const char *sql, sqlite3_stmt **st)
{
	if (sqlite3_prepare_v2(db, sql, -1, st, NULL) == SQLITE_OK)
		return 0;
	store_sql_fault_note(sqlite3_extended_errcode(db));
	return -EIO;
}

/* Column 0 of the first row, unless it is NULL (then -ENOENT). */
static int first_int64(void *ctx, sqlite3_stmt *st)
{
	if (sqlite3_column_type(st, 0) == SQLITE_NULL)
		return -ENOENT;
	*(int64_t *)ctx = sqlite3_column_int64(st, 0);
	return 1;
}

void store_sql_bind_ints(sqlite3_stmt *st, const int64_t *a, int n)
{
	int i;

	for (i = 0; i < n; i++)
		sqlite3_bind_int64(st, i + 1, a[i]);
}

int store_sql_select(sqlite3 *db, const char *sql, const int64_t *args, int n, store_sql_row_fn fn,
		     void *ctx)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(db, sql, &st) < 0)
		return -EIO;
	store_sql_bind_ints(st, args, n);
	rc = store_sql_rows(st, fn, ctx);
	sqlite3_finalize(st);
	return rc;
}

int store_sql_int64(sqlite3 *db, const char *sql, int64_t a, int64_t b, const char *text,
		    int64_t *out)
{
	sqlite3_stmt *st;
	int rc;

	if (store_sql_prepare(db, sql, &st) < 0)
		return -EIO;
	if (text != NULL) {
		sqlite3_bind_text(st, 1, text, -1, SQLITE_STATIC);
	} else {
		sqlite3_bind_int64(st, 1, a);
		sqlite3_bind_int64(st, 2, b);
	}
	rc = store_sql_rows(st, first_int64, out);
	sqlite3_finalize(st);
	return rc > 0 ? 0 : rc == 0 ? -ENOENT : rc;
}
