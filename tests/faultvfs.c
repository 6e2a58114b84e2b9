/*
 * faultvfs: the fault-injecting SQLite VFS of the tests (see faultvfs.h).
 * Every call goes to the default VFS and its files; only xWrite (and, for
 * FAULT_CORRUPT, page reads) of the database and WAL files look at the
 * armed fault first.
 */
#include "faultvfs.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sqlite3.h>

static struct {
	pthread_mutex_t mu;
	enum fault_mode mode;
	enum fault_files files;
	long pass; /* writes still let through */
	long failed;
	/* the control file of the test daemon, and the version of it last read */
	const char *ctl;
	struct stat seen;
	int installed;
} fault = { .mu = PTHREAD_MUTEX_INITIALIZER };

static sqlite3_vfs *real_vfs;

struct fault_file {
	sqlite3_file base;
	int kind;	    /* SQLITE_OPEN_MAIN_DB, SQLITE_OPEN_WAL, or 0 for other files */
	sqlite3_file *real; /* follows this struct in the same allocation */
};

#define REAL(f) (((struct fault_file *)(void *)(f))->real)

/* Read the control file again when it changed (fault.mu held). */
static void reread_ctl(void)
{
	struct stat st;
	char line[128] = "", mode[16] = "", *p;
	FILE *f;

	if (fault.ctl == NULL || stat(fault.ctl, &st) != 0)
		return;
	if (st.st_ino == fault.seen.st_ino && st.st_size == fault.seen.st_size &&
	    st.st_mtim.tv_sec == fault.seen.st_mtim.tv_sec &&
	    st.st_mtim.tv_nsec == fault.seen.st_mtim.tv_nsec)
		return;
	fault.seen = st;
	f = fopen(fault.ctl, "r");
	if (f == NULL)
		return;
	if (fgets(line, sizeof(line), f) == NULL)
		line[0] = '\0';
	fclose(f);
	sscanf(line, "%15s", mode);
	fault.mode = strcmp(mode, "full") == 0	    ? FAULT_FULL
		     : strcmp(mode, "ioerr") == 0   ? FAULT_IOERR
		     : strcmp(mode, "corrupt") == 0 ? FAULT_CORRUPT
						    : FAULT_OFF;
	fault.pass = (p = strstr(line, "after=")) != NULL ? strtol(p + 6, NULL, 10) : 0;
	fault.files = strstr(line, "file=db") != NULL	 ? FAULT_FILES_DB
		      : strstr(line, "file=wal") != NULL ? FAULT_FILES_WAL
							 : FAULT_FILES_ANY;
	fault.failed = 0;
}

static int hits(const struct fault_file *f)
{
	if (f->kind == 0)
		return 0;
	return fault.files == FAULT_FILES_ANY ||
	       (fault.files == FAULT_FILES_DB && f->kind == SQLITE_OPEN_MAIN_DB) ||
	       (fault.files == FAULT_FILES_WAL && f->kind == SQLITE_OPEN_WAL);
}

/* The code a write to f returns instead of writing, or SQLITE_OK. */
static int write_fault(const struct fault_file *f)
{
	static const int codes[] = { SQLITE_OK, SQLITE_FULL, SQLITE_IOERR_WRITE, SQLITE_CORRUPT };
	int rc = SQLITE_OK;

	pthread_mutex_lock(&fault.mu);
	reread_ctl();
	if (fault.mode != FAULT_OFF && hits(f)) {
		if (fault.pass > 0) {
			fault.pass--;
		} else {
			rc = codes[fault.mode];
			fault.failed++;
		}
	}
	pthread_mutex_unlock(&fault.mu);
	return rc;
}

/* A damaged file: page reads fail too, once the writes that pass are spent. */
static int read_fault(const struct fault_file *f, int amt)
{
	int rc = SQLITE_OK;

	if (amt < 512)
		return SQLITE_OK; /* headers: the file opens, its pages do not read */
	pthread_mutex_lock(&fault.mu);
	reread_ctl();
	if (fault.mode == FAULT_CORRUPT && hits(f) && fault.pass == 0) {
		rc = SQLITE_CORRUPT;
		fault.failed++;
	}
	pthread_mutex_unlock(&fault.mu);
	return rc;
}

static int f_close(sqlite3_file *f)
{
	sqlite3_file *r = REAL(f);
	int rc = r->pMethods != NULL ? r->pMethods->xClose(r) : SQLITE_OK;

	return rc;
}

static int f_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off)
{
	int rc = read_fault((struct fault_file *)(void *)f, amt);

	if (rc != SQLITE_OK)
		return rc;
	return REAL(f)->pMethods->xRead(REAL(f), buf, amt, off);
}

static int f_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off)
{
	int rc = write_fault((struct fault_file *)(void *)f);

	if (rc != SQLITE_OK)
		return rc;
	return REAL(f)->pMethods->xWrite(REAL(f), buf, amt, off);
}

static int f_truncate(sqlite3_file *f, sqlite3_int64 size)
{
	return REAL(f)->pMethods->xTruncate(REAL(f), size);
}

static int f_sync(sqlite3_file *f, int flags)
{
	return REAL(f)->pMethods->xSync(REAL(f), flags);
}

static int f_size(sqlite3_file *f, sqlite3_int64 *size)
{
	return REAL(f)->pMethods->xFileSize(REAL(f), size);
}

static int f_lock(sqlite3_file *f, int lock)
{
	return REAL(f)->pMethods->xLock(REAL(f), lock);
}

static int f_unlock(sqlite3_file *f, int lock)
{
	return REAL(f)->pMethods->xUnlock(REAL(f), lock);
}

static int f_check_lock(sqlite3_file *f, int *out)
{
	return REAL(f)->pMethods->xCheckReservedLock(REAL(f), out);
}

static int f_control(sqlite3_file *f, int op, void *arg)
{
	return REAL(f)->pMethods->xFileControl(REAL(f), op, arg);
}

static int f_sector(sqlite3_file *f)
{
	return REAL(f)->pMethods->xSectorSize(REAL(f));
}

static int f_caps(sqlite3_file *f)
{
	return REAL(f)->pMethods->xDeviceCharacteristics(REAL(f));
}

static int f_shm_map(sqlite3_file *f, int pg, int pgsz, int extend, void volatile **pp)
{
	return REAL(f)->pMethods->xShmMap(REAL(f), pg, pgsz, extend, pp);
}

static int f_shm_lock(sqlite3_file *f, int offset, int n, int flags)
{
	return REAL(f)->pMethods->xShmLock(REAL(f), offset, n, flags);
}

static void f_shm_barrier(sqlite3_file *f)
{
	REAL(f)->pMethods->xShmBarrier(REAL(f));
}

static int f_shm_unmap(sqlite3_file *f, int del)
{
	return REAL(f)->pMethods->xShmUnmap(REAL(f), del);
}

/* Memory-mapped reads would bypass xRead: refuse them (SQLite then reads). */
static int f_fetch(sqlite3_file *f, sqlite3_int64 off, int amt, void **pp)
{
	*pp = NULL;
	return SQLITE_OK;
}

static int f_unfetch(sqlite3_file *f, sqlite3_int64 off, void *p)
{
	return SQLITE_OK;
}

static const sqlite3_io_methods fault_methods = {
	3,	    f_close,	   f_read,	 f_write,   f_truncate, f_sync, f_size,
	f_lock,	    f_unlock,	   f_check_lock, f_control, f_sector,	f_caps, f_shm_map,
	f_shm_lock, f_shm_barrier, f_shm_unmap,	 f_fetch,   f_unfetch,
};

static int v_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags)
{
	struct fault_file *f = (struct fault_file *)(void *)file;
	int rc;

	f->real = (sqlite3_file *)(f + 1);
	f->kind = flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL);
	rc = real_vfs->xOpen(real_vfs, name, f->real, flags, out_flags);
	/* SQLite calls xClose after a failed xOpen only when pMethods is set */
	f->base.pMethods = f->real->pMethods != NULL ? &fault_methods : NULL;
	return rc;
}

static int v_delete(sqlite3_vfs *vfs, const char *name, int sync)
{
	return real_vfs->xDelete(real_vfs, name, sync);
}

static int v_access(sqlite3_vfs *vfs, const char *name, int flags, int *out)
{
	return real_vfs->xAccess(real_vfs, name, flags, out);
}

static int v_full_path(sqlite3_vfs *vfs, const char *name, int n, char *out)
{
	return real_vfs->xFullPathname(real_vfs, name, n, out);
}

static void *v_dl_open(sqlite3_vfs *vfs, const char *name)
{
	return real_vfs->xDlOpen(real_vfs, name);
}

static void v_dl_error(sqlite3_vfs *vfs, int n, char *msg)
{
	real_vfs->xDlError(real_vfs, n, msg);
}

static void (*v_dl_sym(sqlite3_vfs *vfs, void *h, const char *sym))(void)
{
	return real_vfs->xDlSym(real_vfs, h, sym);
}

static void v_dl_close(sqlite3_vfs *vfs, void *h)
{
	real_vfs->xDlClose(real_vfs, h);
}

static int v_random(sqlite3_vfs *vfs, int n, char *out)
{
	return real_vfs->xRandomness(real_vfs, n, out);
}

static int v_sleep(sqlite3_vfs *vfs, int us)
{
	return real_vfs->xSleep(real_vfs, us);
}

static int v_time(sqlite3_vfs *vfs, double *t)
{
	return real_vfs->xCurrentTime(real_vfs, t);
}

static int v_last_error(sqlite3_vfs *vfs, int n, char *msg)
{
	return real_vfs->xGetLastError(real_vfs, n, msg);
}

static int v_time64(sqlite3_vfs *vfs, sqlite3_int64 *t)
{
	return real_vfs->xCurrentTimeInt64(real_vfs, t);
}

static sqlite3_vfs fault_vfs = {
	.iVersion = 2,
	.zName = "bnstat-fault",
	.xOpen = v_open,
	.xDelete = v_delete,
	.xAccess = v_access,
	.xFullPathname = v_full_path,
	.xDlOpen = v_dl_open,
	.xDlError = v_dl_error,
	.xDlSym = v_dl_sym,
	.xDlClose = v_dl_close,
	.xRandomness = v_random,
	.xSleep = v_sleep,
	.xCurrentTime = v_time,
	.xGetLastError = v_last_error,
	.xCurrentTimeInt64 = v_time64,
};

int faultvfs_install(void)
{
	int rc = 0;

	pthread_mutex_lock(&fault.mu);
	if (!fault.installed) {
		real_vfs = sqlite3_vfs_find(NULL);
		if (real_vfs == NULL) {
			rc = -1;
		} else {
			fault_vfs.szOsFile = (int)sizeof(struct fault_file) + real_vfs->szOsFile;
			fault_vfs.mxPathname = real_vfs->mxPathname;
			rc = sqlite3_vfs_register(&fault_vfs, 1) == SQLITE_OK ? 0 : -1;
			fault.installed = rc == 0;
		}
	}
	pthread_mutex_unlock(&fault.mu);
	return rc;
}

void faultvfs_arm(enum fault_mode mode, long after, enum fault_files files)
{
	pthread_mutex_lock(&fault.mu);
	fault.mode = mode;
	fault.pass = after;
	fault.files = files;
	fault.failed = 0;
	pthread_mutex_unlock(&fault.mu);
}

void faultvfs_disarm(void)
{
	faultvfs_arm(FAULT_OFF, 0, FAULT_FILES_ANY);
}

long faultvfs_failed(void)
{
	long n;

	pthread_mutex_lock(&fault.mu);
	reread_ctl();
	n = fault.failed;
	pthread_mutex_unlock(&fault.mu);
	return n;
}

/*
 * The test daemon: with $BNSTAT_FAULT_VFS set, install the shim before
 * main() opens anything, controlled by that file.
 */
__attribute__((constructor)) static void faultvfs_from_env(void)
{
	const char *ctl = getenv("BNSTAT_FAULT_VFS");

	if (ctl == NULL || ctl[0] == '\0')
		return;
	fault.ctl = ctl;
	if (faultvfs_install() != 0) {
		fprintf(stderr, "faultvfs: cannot install the VFS\n");
		abort();
	}
	fprintf(stderr, "faultvfs: installed, control file %s\n", ctl);
}
