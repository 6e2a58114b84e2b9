/*
 * bench_query_daemon.c: the bnstatd that the query benchmark spawns, its
 * database and log (in a temporary directory unless --db), their cleanup
 * on exit and on signals, its CPU and memory, and the disk check before a
 * fill.
 */
#include "bench_query.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/wait.h>

#include "bench_proc.h"
#include "bench_spawn.h"
#include "bench_util.h"

static char tmp_dir[PATH_MAX - 64]; /* ours, removed unless --keep */
char db_path[PATH_MAX];
static char log_path[PATH_MAX];
static char tmp_files[6][PATH_MAX + 16]; /* what the signal handler may unlink */
volatile pid_t daemon_pid;
unsigned daemon_port;
static volatile sig_atomic_t cleaned;

static void remove_tmp(void)
{
	size_t i;

	if (tmp_dir[0] == '\0' || opt.keep)
		return;
	for (i = 0; i < sizeof(tmp_files) / sizeof(tmp_files[0]); i++)
		if (tmp_files[i][0] != '\0')
			unlink(tmp_files[i]);
	if (rmdir(tmp_dir) != 0)
		note("could not remove %s: %s", tmp_dir, strerror(errno));
}

int daemon_stop(double limit_s)
{
	int status = spawn_stop(daemon_pid, limit_s);

	daemon_pid = 0;
	return status;
}

void cleanup(void)
{
	if (cleaned)
		return;
	cleaned = 1;
	if (daemon_pid > 0)
		daemon_stop(30);
	remove_tmp();
	if (tmp_dir[0] != '\0' && opt.keep)
		note("kept %s", tmp_dir);
}

void on_signal(int sig)
{
	size_t i;

	if (daemon_pid > 0)
		kill(daemon_pid, SIGKILL);
	if (tmp_dir[0] != '\0' && !opt.keep) {
		for (i = 0; i < sizeof(tmp_files) / sizeof(tmp_files[0]); i++)
			if (tmp_files[i][0] != '\0')
				unlink(tmp_files[i]);
		rmdir(tmp_dir);
	}
	signal(sig, SIG_DFL);
	raise(sig);
}

void setup_paths(void)
{
	if (opt.db != NULL) {
		const char *slash = strrchr(opt.db, '/');

		snprintf(db_path, sizeof(db_path), "%s", opt.db);
		if (slash == NULL)
			snprintf(log_path, sizeof(log_path), "bench_query-bnstatd.log");
		else
			snprintf(log_path, sizeof(log_path), "%.*s/bench_query-bnstatd.log",
				 (int)(slash - opt.db), opt.db);
		return;
	}
	if (strlen(opt.tmpdir) + 32 > sizeof(tmp_dir))
		die("--tmpdir: path too long");
	snprintf(tmp_dir, sizeof(tmp_dir), "%s/bnstat-bench-query.XXXXXX", opt.tmpdir);
	if (mkdtemp(tmp_dir) == NULL) {
		tmp_dir[0] = '\0';
		die("mkdtemp in %s: %s", opt.tmpdir, strerror(errno));
	}
	snprintf(db_path, sizeof(db_path), "%s/bench.db", tmp_dir);
	snprintf(log_path, sizeof(log_path), "%s/bnstatd.log", tmp_dir);
	snprintf(tmp_files[0], sizeof(tmp_files[0]), "%s", db_path);
	snprintf(tmp_files[1], sizeof(tmp_files[1]), "%s-wal", db_path);
	snprintf(tmp_files[2], sizeof(tmp_files[2]), "%s-shm", db_path);
	snprintf(tmp_files[3], sizeof(tmp_files[3]), "%s-journal", db_path);
	snprintf(tmp_files[4], sizeof(tmp_files[4]), "%s", log_path);
}

/* Spawn bnstatd on db_path; sets daemon_pid and daemon_port. */
void daemon_start(void)
{
	char cache_mb[32], *argv[MAX_DAEMON_ARGS + 16];
	size_t a = 0, i;
	off_t from;
	int fd, port, status = 0;
	struct stat st;

	argv[a++] = (char *)opt.bnstatd;
	argv[a++] = "--db";
	argv[a++] = db_path;
	argv[a++] = "--listen";
	argv[a++] = "127.0.0.1:0";
	if (opt.replay_cache_mb > 0) {
		snprintf(cache_mb, sizeof(cache_mb), "%u", opt.replay_cache_mb);
		argv[a++] = "--replay-cache-mb";
		argv[a++] = cache_mb;
	}
	for (i = 0; i < opt.n_daemon_args; i++)
		argv[a++] = (char *)opt.daemon_args[i];
	argv[a] = NULL;

	fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		die("cannot open %s: %s", log_path, strerror(errno));
	from = fstat(fd, &st) == 0 ? st.st_size : 0;
	daemon_pid = spawn_daemon(opt.bnstatd, argv, fd, SIGKILL, true);
	close(fd);

	/* its log line "event=listening ... port=N" (after `from`) says where */
	port = spawn_wait_listening(daemon_pid, log_path, from, 16384, 60, &status);
	if (port > 0) {
		daemon_port = (unsigned)port;
		return;
	}
	if (port < 0) {
		daemon_pid = 0;
		print_log_tail(log_path);
		die("bnstatd exited before listening (status %d)", status);
	}
	print_log_tail(log_path);
	die("bnstatd did not log event=listening within 60 s");
}

/* utime + stime of the daemon in ms; -1 when unknown. */
double daemon_cpu_ms(void)
{
	long long ticks;

	if (daemon_pid <= 0)
		return -1;
	ticks = pid_cpu_ticks(daemon_pid);
	if (ticks < 0)
		return -1;
	return (double)ticks * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

/* VmRSS and VmHWM of the daemon in MiB. */
void daemon_rss(double *rss, double *hwm)
{
	long kb;

	*rss = *hwm = -1;
	if (daemon_pid <= 0)
		return;
	kb = proc_status_kb(daemon_pid, "VmRSS");
	if (kb >= 0)
		*rss = (double)kb / 1024.0;
	kb = proc_status_kb(daemon_pid, "VmHWM");
	if (kb >= 0)
		*hwm = (double)kb / 1024.0;
}

double file_bytes(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (double)st.st_size : 0.0;
}

/* `bnstatd --version`, first line. */
void daemon_version(char *out, size_t size)
{
	spawn_version(opt.bnstatd, out, size, false, "unknown");
}

/* Bytes of one blob of `bytes` bytes in SQLite overflow pages of 4 KiB. */
static double blob_pages(double bytes)
{
	return ceil(bytes / 4092.0) * 4096.0;
}

/*
 * What one step costs on disk: per layer an aggs row (5 arrays of doubles)
 * and an emas row (2 arrays), each in its own chain of overflow pages, plus
 * rows and index entries (~300 bytes a layer, a guess).
 */
double bytes_per_step(bool with_ema)
{
	double b = 0;
	size_t l;

	for (l = 0; l < N_LAYERS; l++) {
		b += blob_pages(5.0 * layers[l].channels * 8.0) + 300;
		if (with_ema)
			b += blob_pages(2.0 * layers[l].channels * 8.0);
	}
	return b;
}

void check_disk(double estimate)
{
	struct statvfs vfs;
	char dir[PATH_MAX];
	const char *slash;
	double avail;

	snprintf(dir, sizeof(dir), "%s", db_path);
	slash = strrchr(dir, '/');
	if (slash == NULL)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == dir)
		dir[1] = '\0';
	else
		dir[slash - dir] = '\0';
	if (statvfs(dir, &vfs) != 0)
		die("statvfs %s: %s", dir, strerror(errno));
	avail = (double)vfs.f_bavail * (double)vfs.f_frsize;
	note("disk: %.2f GB free in %s; this fill needs about %.2f GB", avail / 1e9, dir,
	     estimate / 1e9);
	if (avail < 2.0 * estimate)
		die("not enough disk space: %llu steps of ResNet-50 statistics need about %.2f GB "
		    "in "
		    "%s, and %.2f GB are free; this benchmark wants twice the estimate (%.2f GB) "
		    "free. "
		    "Use --steps to run smaller (e.g. --steps %.0f) or --tmpdir to put it "
		    "elsewhere.",
		    opt.steps, estimate / 1e9, dir, avail / 1e9, 2.0 * estimate / 1e9,
		    floor(avail / 2.0 / (estimate / (double)opt.steps)));
}

unsigned port_now(void)
{
	return opt.url ? url_port : daemon_port;
}
