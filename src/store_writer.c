/*
 * store_writer: the writer thread, its queue, and group commit.
 *
 * The writer thread is the only code that writes. It drains the queue of
 * jobs into one transaction per round (group commit): each job gets a
 * savepoint, so that a batch refused for a reason only the database knows
 * (a layer's channel count, a conflicting resend) rolls back alone while
 * the others commit. Outcomes are reported after COMMIT returns, which is
 * what lets the HTTP layer promise that a 2xx is durable (docs/DESIGN.md,
 * "Data flow").
 */
#include "store_private.h"

#include <string.h>

#include "log.h"
#include "metrics.h"

/*
 * The group failed: every job gets a 503, read_only or database_damaged
 * when the failure left the store so (store_health.c), else unavailable
 * with why.
 */
static void fail_all(struct store *s, struct store_job *group, const char *why)
{
	struct store_job *j;
	struct bn_error err;

	if (store_health_writable(s))
		bn_error_set(&err, 503, BN_E_UNAVAILABLE, NULL, "%s", why ? why : "retry later");
	else
		store_health_error(s, &err);
	/*
	 * Every result, refusals included: a 409 or 422 may have been decided
	 * against rows of this very group, which are gone now.
	 */
	for (j = group; j != NULL; j = j->next) {
		j->res.status = 503;
		j->res.duplicate = false;
		j->res.err = err;
	}
}

/* An imported run: each of its domains changed as an upload would change it. */
static void tell_imported(struct store *s, const struct store_job *j)
{
	const struct store_runfile *rf = j->import;
	size_t i, w = store_rf_tables[STORE_RF_T_DOMAINS].n_cols;
	char name[INGEST_NAME_MAX + 1];

	for (i = 0; i < rf->n_rows[STORE_RF_T_DOMAINS]; i++) {
		const struct store_rf_value *v = &rf->rows[STORE_RF_T_DOMAINS][i * w + 1];

		if (v->len > INGEST_NAME_MAX)
			continue;
		memcpy(name, v->p, v->len);
		name[v->len] = '\0';
		s->opt.changed(s->opt.changed_ctx, j->import_run, name);
	}
}

/* After a commit: every upload the group stored, to whoever watches (store.h). */
static void tell_changed(struct store *s, const struct store_job *group)
{
	const struct store_job *j;

	if (s->opt.changed == NULL)
		return;
	for (j = group; j != NULL; j = j->next) {
		if (j->batch != NULL && j->res.status == 200 && !j->res.duplicate)
			s->opt.changed(s->opt.changed_ctx, j->batch->run, j->batch->domain);
		if (j->import != NULL && j->res.status == 200)
			tell_imported(s, j);
	}
}

/* One group commit: apply every job of the group, commit, report. */
static void write_group(struct store *s, struct store_job *group, size_t count)
{
	struct store_job *j, *next;
	struct timespec t0, t1;
	struct bn_error err;
	size_t accepted = 0, refused = 0, rows = 0;
	bool ok = true;

	if (!store_health_writable(s)) {
		/* queued before the store stopped accepting writes */
		fail_all(s, group, NULL);
		goto report;
	}
	store_checkpoint_bound_wal(s);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	store_sql_fault_take(); /* what this group meets, only */
	if (store_sql_exec(s->wdb, "BEGIN IMMEDIATE", &err) < 0) {
		log_error("commit_failed", "stage=begin error=\"%s\"", err.message);
		store_health_after_write(s, "a commit");
		fail_all(s, group, "the database is unavailable; retry later");
		goto report;
	}
	for (j = group; j != NULL; j = j->next) {
		int rc;

		if (store_sql_exec(s->wdb, "SAVEPOINT batch", &err) < 0) {
			ok = false;
			break;
		}
		if (j->snap != NULL)
			rc = store_snapshot_apply(s, j);
		else if (j->import != NULL)
			rc = store_import_apply(s, j);
		else if (j->delete_label != NULL)
			rc = store_snapshot_delete_apply(s, j);
		else if (j->delete_run != NULL)
			rc = store_delete_apply(s, j);
		else
			rc = store_batch_apply(s, j);
		if (rc < 0) {
			j->res.status = j->res.err.status ? j->res.err.status : 500;
			if (j->res.status >= 500) {
				/* A database failure: in-memory merges may be half done. */
				err = j->res.err;
				ok = false;
				break;
			}
			if (store_sql_exec(s->wdb, "ROLLBACK TO batch", &err) < 0 ||
			    sqlite3_get_autocommit(s->wdb)) {
				ok = false;
				break;
			}
			refused++;
		} else {
			if (j->res.status == 0)
				j->res.status = 200;
			accepted++;
		}
		if (store_sql_exec(s->wdb, "RELEASE batch", &err) < 0) {
			ok = false;
			break;
		}
		/* between jobs, outside any savepoint: the open steps stay within budget */
		if (store_aggcache_bound(s) < 0) {
			store_sql_error(&err, s->wdb, "writing aggregates early");
			ok = false;
			break;
		}
	}
	if (ok && store_aggcache_flush(s, &rows) < 0) {
		store_sql_error(&err, s->wdb, "writing aggregates");
		ok = false;
	}
	if (ok && store_bytes_flush(s) < 0) {
		store_sql_error(&err, s->wdb, "counting the runs' bytes");
		ok = false;
	}
	if (ok && store_sql_exec(s->wdb, "COMMIT", &err) < 0)
		ok = false;
	if (!ok) {
		log_error("commit_failed", "stage=write error=\"%s\"", err.message);
		if (!sqlite3_get_autocommit(s->wdb))
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
		store_health_after_write(s, "a commit");
		fail_all(s, group, "the database could not commit; retry later");
	}
	if (!ok)
		store_bytes_drop(s);
	/* Failed: the cache may hold merges that never reached the disk. */
	store_aggcache_end_group(&s->aggcache, !ok);
	if (ok)
		tell_changed(s, group);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	metrics_commit((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
		       count, ok);
	log_debug("commit", "batches=%zu accepted=%zu refused=%zu rows=%zu ok=%d ms=%.3f", count,
		  accepted, refused, rows, ok,
		  (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
report:
	for (j = group; j != NULL; j = next) {
		next = j->next;
		j->done(j->ctx, &j->res);
		ingest_batch_free(j->batch);
		store_snapshot_free(j->snap);
		free(j->delete_run);
		free(j->delete_label);
		store_runfile_free(j->import);
		free(j->import_run);
		free(j);
	}
}

/* A retention or bucketing pass; a full disk or damage it meets is taken as a commit's. */
static void writer_pass(struct store *s, void (*pass)(struct store *), const char *during)
{
	store_sql_fault_take();
	pass(s);
	store_health_after_write(s, during);
}

static void *writer_main(void *arg)
{
	struct store *s = arg;

	for (;;) {
		struct store_job *group, *last;
		size_t n = 1;

		pthread_mutex_lock(&s->queue.mu);
		while (s->queue.head == NULL && !s->queue.closing) {
			struct timespec until;
			int64_t wait_ms;

			if (store_retention_due(s) && store_health_writable(s)) {
				pthread_mutex_unlock(&s->queue.mu);
				writer_pass(s, store_retention_run, "retention");
				pthread_mutex_lock(&s->queue.mu);
				continue;
			}
			if (store_history_due(s) && store_health_writable(s)) {
				pthread_mutex_unlock(&s->queue.mu);
				writer_pass(s, store_history_run, "bucketing");
				pthread_mutex_lock(&s->queue.mu);
				continue;
			}
			/* a write probe when read-only, a look at free space */
			pthread_mutex_unlock(&s->queue.mu);
			wait_ms = store_health_idle(s);
			pthread_mutex_lock(&s->queue.mu);
			if (s->queue.head != NULL || s->queue.closing)
				break;
			if ((s->opt.retain_steps > 0 || s->opt.retain_runs_days > 0 ||
			     s->history.n > 0) &&
			    wait_ms > 1000)
				wait_ms = 1000;
			clock_gettime(CLOCK_REALTIME, &until);
			until.tv_sec += wait_ms / 1000;
			until.tv_nsec += (wait_ms % 1000) * 1000000;
			if (until.tv_nsec >= 1000000000) {
				until.tv_sec++;
				until.tv_nsec -= 1000000000;
			}
			pthread_cond_timedwait(&s->queue.cv, &s->queue.mu, &until);
		}
		if (s->queue.head == NULL) {
			pthread_mutex_unlock(&s->queue.mu);
			break;
		}
		group = last = s->queue.head;
		while (last->next != NULL && n < s->opt.group_max) {
			last = last->next;
			n++;
		}
		s->queue.head = last->next;
		if (s->queue.head == NULL)
			s->queue.tail = NULL;
		last->next = NULL;
		s->queue.depth -= n;
		pthread_mutex_unlock(&s->queue.mu);

		write_group(s, group, n);
		if (store_retention_due(s) && store_health_writable(s))
			writer_pass(s, store_retention_run, "retention");
		if (store_history_due(s) && store_health_writable(s))
			writer_pass(s, store_history_run, "bucketing");
		(void)store_health_idle(s); /* free space, also while uploads never pause */
	}
	return NULL;
}

int store_writer_start(struct store *s, struct bn_error *err)
{
	if (pthread_create(&s->writer, NULL, writer_main, s) != 0)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL,
				    "cannot start the writer thread");
	s->writer_started = true;
	return 0;
}

void store_stop_writer(struct store *s)
{
	pthread_mutex_lock(&s->queue.mu);
	s->queue.closing = true;
	pthread_cond_broadcast(&s->queue.cv);
	pthread_mutex_unlock(&s->queue.mu);
	if (s->writer_started) {
		pthread_join(s->writer, NULL);
		s->writer_started = false;
	}
}

/* Queue job j (the caller's until queued): 0, or -EAGAIN, -ESHUTDOWN and j freed. */
static int enqueue_job(struct store *s, struct store_job *j)
{
	int rc = 0;

	pthread_mutex_lock(&s->queue.mu);
	if (s->queue.closing)
		rc = -ESHUTDOWN;
	else if (!store_health_writable(s))
		rc = -EROFS;
	else if (s->queue.depth >= s->opt.queue_max)
		rc = -EAGAIN;
	if (rc == 0) {
		if (s->queue.tail != NULL)
			s->queue.tail->next = j;
		else
			s->queue.head = j;
		s->queue.tail = j;
		s->queue.depth++;
		pthread_cond_signal(&s->queue.cv);
	}
	pthread_mutex_unlock(&s->queue.mu);
	if (rc < 0)
		free(j);
	return rc;
}

/* Queue a job for the writer; on failure the caller keeps what it carries. */
static int enqueue(struct store *s, struct ingest_batch *b, struct store_snapshot *snap,
		   char *delete_run, char *delete_label, store_done_fn done, void *ctx)
{
	struct store_job *j;

	j = calloc(1, sizeof(*j));
	if (j == NULL)
		return -ENOMEM;
	j->batch = b;
	j->snap = snap;
	j->delete_run = delete_run;
	j->delete_label = delete_label;
	j->done = done;
	j->ctx = ctx;
	return enqueue_job(s, j);
}

int store_submit(struct store *s, struct ingest_batch *b, store_done_fn done, void *ctx)
{
	return enqueue(s, b, NULL, NULL, NULL, done, ctx);
}

int store_submit_snapshot(struct store *s, struct store_snapshot *snap, store_done_fn done,
			  void *ctx)
{
	return enqueue(s, NULL, snap, NULL, NULL, done, ctx);
}

int store_submit_delete(struct store *s, const char *run, store_done_fn done, void *ctx)
{
	char *name = strdup(run);
	int rc;

	if (name == NULL)
		return -ENOMEM;
	rc = enqueue(s, NULL, NULL, name, NULL, done, ctx);
	if (rc < 0)
		free(name);
	return rc;
}

int store_submit_snapshot_delete(struct store *s, const char *run, const char *label,
				 store_done_fn done, void *ctx)
{
	char *name = strdup(run), *lbl = strdup(label);
	int rc = -ENOMEM;

	if (name != NULL && lbl != NULL)
		rc = enqueue(s, NULL, NULL, name, lbl, done, ctx);
	if (rc < 0) {
		free(name);
		free(lbl);
	}
	return rc;
}

int store_submit_import(struct store *s, const char *run, struct store_runfile *rf,
			store_done_fn done, void *ctx)
{
	struct store_job *j = calloc(1, sizeof(*j));
	char *name = strdup(run);
	int rc;

	if (j == NULL || name == NULL) {
		free(j);
		free(name);
		return -ENOMEM;
	}
	j->import = rf;
	j->import_run = name;
	j->done = done;
	j->ctx = ctx;
	rc = enqueue_job(s, j);
	if (rc < 0)
		free(name);
	return rc;
}

size_t store_queue_depth(struct store *s)
{
	size_t d;

	pthread_mutex_lock(&s->queue.mu);
	d = s->queue.depth;
	pthread_mutex_unlock(&s->queue.mu);
	return d;
}
