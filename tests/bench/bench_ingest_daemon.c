/*
 * bench_ingest_daemon.c: the bnstatd that the ingest benchmark measures,
 * one per body form, spawned on a fresh temporary database
 * (--listen 127.0.0.1:0, --threads, the --daemon-arg arguments).
 */
#include "bench_ingest.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "bench_proc.h"
#include "bench_spawn.h"
#include "bench_util.h"

int daemon_start(struct daemon *d)
{
	char threads[16], *argv[96];
	size_t a = 0, i;
	int fd, port, status = 0;

	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s/bnstat-bench.XXXXXX", opt.tmpdir);
	if (mkdtemp(d->dir) == NULL)
		die("mkdtemp %s: %s", d->dir, strerror(errno));
	snprintf(d->db, sizeof(d->db), "%s/bench.db", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/bnstatd.log", d->dir);
	snprintf(threads, sizeof(threads), "%u", opt.threads);
	argv[a++] = (char *)opt.bnstatd;
	argv[a++] = "--db";
	argv[a++] = d->db;
	argv[a++] = "--listen";
	argv[a++] = "127.0.0.1:0";
	argv[a++] = "--threads";
	argv[a++] = threads;
	for (i = 0; i < opt.n_daemon_args; i++)
		argv[a++] = (char *)opt.daemon_args[i];
	argv[a] = NULL;

	fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("cannot create %s: %s", d->log, strerror(errno));
	d->pid = spawn_daemon(opt.bnstatd, argv, fd, SIGTERM, false);
	close(fd);

	/* its log line "event=listening ... port=N" says where it listens */
	port = spawn_wait_listening(d->pid, d->log, 0, 8192, 15, &status);
	if (port > 0) {
		d->port = (unsigned)port;
		return 0;
	}
	if (port < 0) {
		note("bnstatd exited before listening (status %d)", status);
		print_log_tail(d->log);
		d->pid = 0;
		return -1;
	}
	note("bnstatd did not log event=listening within 15 s");
	print_log_tail(d->log);
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = 0;
	return -1;
}

/* Did the daemon exit on its own (crash, killed)? Reaps it and says how. */
bool daemon_gone(struct daemon *d, char *why, size_t size)
{
	int status;

	if (!d->exited && d->pid > 0 && waitpid(d->pid, &status, WNOHANG) == d->pid) {
		d->exited = true;
		d->status = status;
	}
	if (!d->exited)
		return false;
	if (WIFSIGNALED(d->status))
		snprintf(why, size, "bnstatd died (signal %d)", WTERMSIG(d->status));
	else
		snprintf(why, size, "bnstatd exited (status %d)", WEXITSTATUS(d->status));
	return true;
}

long long daemon_cpu_ticks(const struct daemon *d)
{
	return pid_cpu_ticks(d->pid);
}

/* SIGTERM, then SIGKILL after 20 s. Returns the wait status or -1. */
int daemon_stop(struct daemon *d)
{
	int status;

	if (d->exited)
		return d->status;
	if (d->pid <= 0)
		return -1;
	status = spawn_stop(d->pid, 20);
	d->pid = 0;
	return status;
}

double dir_mib(const char *dir, const char *prefix)
{
	DIR *dd = opendir(dir);
	struct dirent *e;
	struct stat st;
	char path[PATH_MAX + 300];
	double sum = 0;

	if (dd == NULL)
		return 0;
	while ((e = readdir(dd)) != NULL) {
		if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			sum += (double)st.st_size;
	}
	closedir(dd);
	return sum / (1024.0 * 1024.0);
}

void dir_remove(const char *dir)
{
	DIR *dd = opendir(dir);
	struct dirent *e;
	char path[PATH_MAX + 300];

	if (dd == NULL)
		return;
	while ((e = readdir(dd)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(dd);
	if (rmdir(dir) != 0)
		note("cannot remove %s: %s", dir, strerror(errno));
}
