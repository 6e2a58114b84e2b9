/*
 * store_health: whether the database can be written, and the free space
 * beside it (docs/OPERATIONS.md, "A full disk", "A damaged database").
 *
 * Every store_sql_* call notes the SQLite faults it meets on its thread
 * (store_sql.c); after a write that failed, the writer (or store_open)
 * takes that note here: SQLITE_CORRUPT or SQLITE_NOTADB make the store
 * DAMAGED for good, SQLITE_FULL or SQLITE_IOERR make it READ_ONLY, and the
 * writer then tries one small write every STORE_PROBE_SECONDS until one
 * commits. A read that meets SQLITE_CORRUPT marks the store DAMAGED too.
 * While not writable, uploads and the other writes are refused with 503
 * before they are queued; reads go on.
 *
 * The writer also looks at the free space of the database's file system
 * every SPACE_EVERY_MS and warns once when it falls below
 * disk_free_warn_bytes (and says so when it is back above).
 */
#include "store_private.h"

#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>

#include "log.h"

#define SPACE_EVERY_MS 10000

static int64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void store_health_init(struct store *s)
{
	pthread_mutex_init(&s->health.mu, NULL);
	s->health.state = STORE_WRITABLE;
	s->health.reason[0] = '\0';
	s->health.next_space = 0;
}

void store_health_destroy(struct store *s)
{
	pthread_mutex_destroy(&s->health.mu);
}

const char *store_state_name(enum store_state st)
{
	return st == STORE_WRITABLE ? "writable" : st == STORE_READ_ONLY ? "read_only" : "damaged";
}

/* Free bytes for an unprivileged writer on the file system of path's directory. */
static bool free_bytes(const char *path, unsigned long long *out)
{
	char dir[4096];
	struct statvfs v;

	snprintf(dir, sizeof(dir), "%s", path);
	if (statvfs(dirname(dir), &v) != 0)
		return false;
	*out = (unsigned long long)v.f_bavail * (unsigned long long)v.f_frsize;
	return true;
}

void store_health_get(struct store *s, struct store_health *h)
{
	memset(h, 0, sizeof(*h));
	pthread_mutex_lock(&s->health.mu);
	h->state = s->health.state;
	snprintf(h->reason, sizeof(h->reason), "%s", s->health.reason);
	h->since_ms = s->health.since_ms;
	pthread_mutex_unlock(&s->health.mu);
	h->free_known = free_bytes(s->path, &h->free_bytes);
	h->warn_bytes = s->opt.disk_free_warn_bytes;
}

bool store_health_writable(struct store *s)
{
	bool w;

	pthread_mutex_lock(&s->health.mu);
	w = s->health.state == STORE_WRITABLE;
	pthread_mutex_unlock(&s->health.mu);
	return w;
}

int store_health_error(struct store *s, struct bn_error *err)
{
	struct store_health h;

	pthread_mutex_lock(&s->health.mu);
	h.state = s->health.state;
	snprintf(h.reason, sizeof(h.reason), "%s", s->health.reason);
	pthread_mutex_unlock(&s->health.mu);
	if (h.state == STORE_DAMAGED)
		return bn_error_set(
			err, 503, BN_E_DAMAGED, NULL,
			"the database is damaged (%s): writes are refused until it is recovered; "
			"keep this data and send it again later",
			h.reason);
	if (h.state == STORE_READ_ONLY)
		return bn_error_set(err, 503, BN_E_READ_ONLY, NULL,
				    "the database cannot be written (%s): nothing was stored; "
				    "send it again later",
				    h.reason);
	return bn_error_set(err, 503, BN_E_UNAVAILABLE, NULL,
			    "the database could not commit; retry later");
}

/* Leave the writable state (or go from READ_ONLY to DAMAGED), logged once. */
static void leave(struct store *s, enum store_state to, int code, const char *during)
{
	unsigned long long avail = 0;
	bool known = free_bytes(s->path, &avail);
	enum store_state from;

	pthread_mutex_lock(&s->health.mu);
	from = s->health.state;
	if (from == STORE_DAMAGED || from == to) {
		pthread_mutex_unlock(&s->health.mu);
		return;
	}
	s->health.state = to;
	snprintf(s->health.reason, sizeof(s->health.reason), "%s during %s%s", sqlite3_errstr(code),
		 during,
		 to == STORE_READ_ONLY && (code & 0xff) == SQLITE_FULL ? ": the disk is full" : "");
	if (from == STORE_WRITABLE)
		s->health.since_ms = store_now_ms();
	s->health.next_probe = mono_ms() + STORE_PROBE_SECONDS * 1000;
	pthread_mutex_unlock(&s->health.mu);
	if (to == STORE_DAMAGED)
		log_error(
			"database_damaged",
			"db=\"%s\" during=%s error=\"%s\" code=%d action=refusing_writes "
			"reads=served "
			"hint=\"the file is damaged: stop bnstatd, keep the file, restore a backup "
			"or recover it (docs/OPERATIONS.md, A damaged database)\"",
			s->path, during, sqlite3_errstr(code), code);
	else
		log_error("database_read_only",
			  "db=\"%s\" during=%s error=\"%s\" code=%d free_bytes=%lld "
			  "action=refusing_writes reads=served retry_every_s=%d hint=\"free space "
			  "on the database's file system (docs/OPERATIONS.md, A full disk)\"",
			  s->path, during, sqlite3_errstr(code), code,
			  known ? (long long)avail : -1LL, STORE_PROBE_SECONDS);
}

enum store_state store_health_after_write(struct store *s, const char *during)
{
	int code = store_sql_fault_take();
	enum store_state st;

	if (code != 0) {
		if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB)
			leave(s, STORE_DAMAGED, code, during);
		else
			leave(s, STORE_READ_ONLY, code, during);
	}
	pthread_mutex_lock(&s->health.mu);
	st = s->health.state;
	pthread_mutex_unlock(&s->health.mu);
	return st;
}

void store_health_after_read(struct store *s)
{
	int code = store_sql_fault_take();

	if ((code & 0xff) == SQLITE_CORRUPT || (code & 0xff) == SQLITE_NOTADB)
		leave(s, STORE_DAMAGED, code, "a read");
}

/*
 * One small write in its own transaction (page 1, through the schema
 * version it already has): the store is writable again once it commits;
 * a failure is taken as any other write's.
 */
static void probe(struct store *s, const char *during)
{
	char sql[96];
	int64_t since;
	bool was;

	store_sql_fault_take();
	pthread_mutex_lock(&s->health.mu);
	s->health.next_probe = mono_ms() + STORE_PROBE_SECONDS * 1000;
	pthread_mutex_unlock(&s->health.mu);
	snprintf(sql, sizeof(sql), "BEGIN IMMEDIATE; PRAGMA user_version=%d; COMMIT",
		 s->schema_version);
	if (sqlite3_exec(s->wdb, sql, NULL, NULL, NULL) != SQLITE_OK) {
		int code = sqlite3_extended_errcode(s->wdb);

		if (!sqlite3_get_autocommit(s->wdb))
			sqlite3_exec(s->wdb, "ROLLBACK", NULL, NULL, NULL);
		log_debug("write_probe", "result=failed error=\"%s\"", sqlite3_errstr(code));
		store_sql_fault_note(code);
		store_health_after_write(s, during);
		return;
	}
	pthread_mutex_lock(&s->health.mu);
	was = s->health.state == STORE_READ_ONLY;
	if (was) {
		s->health.state = STORE_WRITABLE;
		s->health.reason[0] = '\0';
	}
	since = s->health.since_ms;
	pthread_mutex_unlock(&s->health.mu);
	if (was)
		log_info("database_writable",
			 "db=\"%s\" read_only_seconds=%.1f action=accepting_writes", s->path,
			 (double)(store_now_ms() - since) / 1e3);
}

void store_health_probe_start(struct store *s)
{
	probe(s, "start");
}

/* Warn once when free space falls below the threshold; say when it is back. */
static void look_at_space(struct store *s)
{
	unsigned long long avail, warn = s->opt.disk_free_warn_bytes;

	s->health.next_space = mono_ms() + SPACE_EVERY_MS;
	if (warn == 0 || !free_bytes(s->path, &avail))
		return;
	if (avail < warn && !s->health.low) {
		s->health.low = true;
		log_warn("disk_low",
			 "db=\"%s\" free_bytes=%llu warn_bytes=%llu database_bytes=%llu "
			 "hint=\"free space before the disk fills: uploads are refused then "
			 "(docs/OPERATIONS.md, A full disk)\"",
			 s->path, avail, warn, store_disk_bytes(s));
	} else if (avail >= warn && s->health.low) {
		s->health.low = false;
		log_info("disk_ok", "db=\"%s\" free_bytes=%llu warn_bytes=%llu", s->path, avail,
			 warn);
	}
}

int64_t store_health_idle(struct store *s)
{
	int64_t now = mono_ms(), wait, next_probe;
	enum store_state st;

	pthread_mutex_lock(&s->health.mu);
	st = s->health.state;
	next_probe = s->health.next_probe;
	pthread_mutex_unlock(&s->health.mu);
	if (st == STORE_READ_ONLY && now >= next_probe) {
		probe(s, "a write probe");
		now = mono_ms();
	}
	if (now >= s->health.next_space) {
		look_at_space(s);
		now = mono_ms();
	}
	wait = s->health.next_space - now;
	pthread_mutex_lock(&s->health.mu);
	st = s->health.state;
	next_probe = s->health.next_probe;
	pthread_mutex_unlock(&s->health.mu);
	if (st == STORE_READ_ONLY && next_probe - now < wait)
		wait = next_probe - now;
	return wait < 1 ? 1 : wait;
}
