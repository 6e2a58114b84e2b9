/*
 * store_delete: deleting a run with everything it holds (docs/API.md,
 * "Deleting a run"), inside the group's transaction. The schema's foreign
 * keys cascade from the run's row. Writer thread only.
 */
#include "store_private.h"

#include "log.h"

int store_delete_apply(struct store *s, struct store_job *j)
{
	struct bn_error *err = &j->res.err;
	sqlite3_stmt *st;
	int64_t run_id = 0;
	int rc;

	rc = store_intern_find_run(s, j->delete_run, &run_id, err);
	if (rc < 0)
		return rc;
	st = s->wstmt[W_RUN_DEL];
	sqlite3_bind_int64(st, 1, run_id);
	if (store_sql_run(st) < 0)
		return store_sql_error(err, s->wdb, "deleting run");
	/* Uploads of this run earlier in the group must not be written back. */
	store_aggcache_drop_run(&s->aggcache, run_id);
	log_info("run_deleted", "run=%s", j->delete_run);
	return 0;
}
