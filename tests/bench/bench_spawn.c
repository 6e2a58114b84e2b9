/*
 * bench_spawn.c: bnstatd as a child process of a benchmark (bench_spawn.h).
 */
#include "bench_spawn.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "bench_util.h"

void print_log_tail(const char *path)
{
	char buf[4096];
	FILE *f = fopen(path, "re");
	long size;
	size_t n;

	if (f == NULL)
		return;
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, size > (long)sizeof(buf) - 1 ? size - (long)sizeof(buf) + 1 : 0, SEEK_SET);
	n = fread(buf, 1, sizeof(buf) - 1, f);
	buf[n] = '\0';
	fclose(f);
	fprintf(stderr, "--- %s (tail) ---\n%s--- end ---\n", path, buf);
}

/*
 * The port in bnstatd's log line "event=listening ... port=N", read from
 * byte `from` of the log at path into buf[size]; 0 while there is none.
 */
static unsigned log_listen_port(const char *path, off_t from, char *buf, size_t size)
{
	FILE *f = fopen(path, "re");
	size_t n = 0;
	char *ev, *eol, *p;

	if (f != NULL) {
		if (from > 0)
			fseeko(f, from, SEEK_SET);
		n = fread(buf, 1, size - 1, f);
		fclose(f);
	}
	buf[n] = '\0';
	ev = strstr(buf, "event=listening");
	eol = ev ? strchr(ev, '\n') : NULL;
	p = ev ? strstr(ev, " port=") : NULL;
	if (p != NULL && eol != NULL && p < eol)
		return (unsigned)strtoul(p + 6, NULL, 10);
	return 0;
}

pid_t spawn_daemon(const char *path, char *const argv[], int log_fd, int deathsig,
		   bool default_signals)
{
	pid_t pid;

	fflush(NULL);
	pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		int devnull = open("/dev/null", O_RDWR);

		prctl(PR_SET_PDEATHSIG, deathsig); /* never outlive the bench */
		dup2(log_fd, 2);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		signal(SIGPIPE, SIG_DFL);
		if (default_signals) {
			signal(SIGINT, SIG_DFL);
			signal(SIGTERM, SIG_DFL);
		}
		execv(path, argv);
		fprintf(stderr, "%s: cannot run %s: %s\n", bench_prog, path, strerror(errno));
		_exit(127);
	}
	return pid;
}

int spawn_wait_listening(pid_t pid, const char *path, off_t from, size_t buf_size, double limit_s,
			 int *status)
{
	char *buf = xmalloc(buf_size);
	double deadline = now_s() + limit_s;
	int port = 0;

	while (now_s() < deadline) {
		port = (int)log_listen_port(path, from, buf, buf_size);
		if (port > 0)
			break;
		if (waitpid(pid, status, WNOHANG) == pid) {
			port = -1;
			break;
		}
		sleep_s(0.02);
	}
	free(buf);
	return port;
}

int spawn_stop(pid_t pid, double limit_s)
{
	double deadline = now_s() + limit_s;
	int status = -1;

	if (pid <= 0)
		return -1;
	kill(pid, SIGTERM);
	while (now_s() < deadline) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return status;
		sleep_s(0.02);
	}
	note("bnstatd did not stop within %.0f s of SIGTERM; killing it", limit_s);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	return status;
}

void spawn_version(const char *path, char *out, size_t size, bool with_stderr, const char *unknown)
{
	int p[2];
	pid_t pid;
	ssize_t n;
	size_t len = 0;

	snprintf(out, size, "%s", unknown);
	if (pipe2(p, O_CLOEXEC) != 0)
		return;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		if (with_stderr)
			dup2(p[1], 2);
		execl(path, path, "--version", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	while (pid > 0 && len < size - 1 && (n = read(p[0], out + len, size - 1 - len)) > 0)
		len += (size_t)n;
	close(p[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	if (len == 0) {
		snprintf(out, size, "%s", unknown);
		return;
	}
	out[len] = '\0';
	out[strcspn(out, "\n")] = '\0';
}
