/*
 * store_checkpoint: WAL checkpoints off the writer (docs/DESIGN.md, "Data
 * flow", "Checkpoints off the writer").
 *
 * Checkpoints copy WAL frames back into the database file: as many bytes
 * again as the commits wrote. Done by the writer (SQLite's default) they
 * would stall every upload behind them, so the writer turns automatic
 * checkpoints off and its WAL hook wakes this thread instead, which runs
 * PASSIVE checkpoints on its own connection while the writer goes on.
 *
 * The WAL only starts over when the writer begins a transaction at a moment
 * when every frame has been copied back; a writer that never pauses would
 * never see that moment, and the WAL would grow without bound. So once the
 * WAL passes CKPT_WRITER_PAGES, the writer runs a PASSIVE checkpoint itself
 * before its next group: little is left to copy by then (the thread did the
 * rest), and its next transaction restarts the WAL.
 */
#include "store_private.h"

#include "log.h"

#define CKPT_PAGES 256
#define CKPT_WRITER_PAGES (8 * CKPT_PAGES)

static int on_wal(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct store *s = arg;

	s->ckpt.wal_pages = pages; /* the writer's own thread: no lock needed */
	if (pages >= CKPT_PAGES) {
		pthread_mutex_lock(&s->ckpt.mu);
		s->ckpt.wanted = true;
		pthread_cond_signal(&s->ckpt.cv);
		pthread_mutex_unlock(&s->ckpt.mu);
	}
	return SQLITE_OK;
}

/*
 * Run one PASSIVE checkpoint on db, waiting for one in progress on the
 * other connection to end first (a checkpoint that meets another one gives
 * up with SQLITE_BUSY, and the WAL could then never start over).
 */
static void checkpoint(struct store *s, sqlite3 *db, const char *who)
{
	int log_pages = 0, done_pages = 0, rc;

	pthread_mutex_lock(&s->ckpt.mu);
	while (s->ckpt.running)
		pthread_cond_wait(&s->ckpt.idle, &s->ckpt.mu);
	s->ckpt.running = true;
	pthread_mutex_unlock(&s->ckpt.mu);

	rc = sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &log_pages,
				       &done_pages);
	/*
	 * A checkpoint that fails (a full disk: the database file cannot grow)
	 * fails again at every commit: logged at error the first time, then at
	 * debug until one succeeds.
	 */
	if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
		if (s->ckpt.failed++ == 0)
			log_error("checkpoint_failed", "by=%s error=\"%s\" wal_pages=%d", who,
				  sqlite3_errmsg(db), log_pages);
		else
			log_debug("checkpoint_failed", "by=%s error=\"%s\" wal_pages=%d failed=%d",
				  who, sqlite3_errmsg(db), log_pages, s->ckpt.failed);
	} else {
		if (s->ckpt.failed > 0 && rc == SQLITE_OK)
			log_info("checkpoint_recovered", "by=%s failed=%d wal_pages=%d", who,
				 s->ckpt.failed, log_pages);
		if (rc == SQLITE_OK)
			s->ckpt.failed = 0;
		log_debug("checkpoint", "by=%s rc=%d wal_pages=%d copied=%d", who, rc, log_pages,
			  done_pages);
	}

	pthread_mutex_lock(&s->ckpt.mu);
	s->ckpt.running = false;
	pthread_cond_broadcast(&s->ckpt.idle);
	pthread_mutex_unlock(&s->ckpt.mu);
}

void store_checkpoint_bound_wal(struct store *s)
{
	if (s->ckpt.wal_pages < CKPT_WRITER_PAGES)
		return;
	checkpoint(s, s->wdb, "writer");
	s->ckpt.wal_pages = 0;
}

static void *checkpointer_main(void *arg)
{
	struct store *s = arg;

	for (;;) {
		pthread_mutex_lock(&s->ckpt.mu);
		while (!s->ckpt.wanted && !s->ckpt.stop)
			pthread_cond_wait(&s->ckpt.cv, &s->ckpt.mu);
		if (s->ckpt.stop) {
			pthread_mutex_unlock(&s->ckpt.mu);
			break;
		}
		s->ckpt.wanted = false;
		pthread_mutex_unlock(&s->ckpt.mu);
		checkpoint(s, s->ckpt.db, "thread");
	}
	return NULL;
}

int store_checkpoint_start(struct store *s, struct bn_error *err)
{
	if (store_sql_exec(s->wdb, "PRAGMA wal_autocheckpoint=0", err) < 0 ||
	    store_sql_exec(s->wdb, "PRAGMA journal_size_limit=67108864", err) < 0 ||
	    store_sql_open(s->path, false, &s->ckpt.db, err) < 0 ||
	    /* a first read makes the connection see the database in WAL mode */
	    store_sql_exec(s->ckpt.db, "SELECT count(*) FROM sqlite_master", err) < 0)
		return -EIO;
	sqlite3_wal_hook(s->wdb, on_wal, s);
	if (pthread_create(&s->ckpt.thread, NULL, checkpointer_main, s) != 0)
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL,
				    "cannot start the checkpoint thread");
	s->ckpt.started = true;
	return 0;
}

void store_checkpoint_stop(struct store *s)
{
	if (s->ckpt.started) {
		pthread_mutex_lock(&s->ckpt.mu);
		s->ckpt.stop = true;
		pthread_cond_signal(&s->ckpt.cv);
		pthread_mutex_unlock(&s->ckpt.mu);
		pthread_join(s->ckpt.thread, NULL);
		s->ckpt.started = false;
	}
	sqlite3_close(s->ckpt.db);
	s->ckpt.db = NULL;
}
