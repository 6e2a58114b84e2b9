/*
 * bench_spawn.h: bnstatd as a child process of a benchmark: start it with
 * its stderr in a log file, learn its port from the log, stop it, ask its
 * version.
 *
 * The daemon listens on 127.0.0.1:0 and logs "event=listening ... port=N";
 * reading that line is how a benchmark knows where to connect without
 * picking a port that may be taken.
 */
#ifndef BENCH_SPAWN_H
#define BENCH_SPAWN_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/*
 * fork and execv(path, argv) with stderr on log_fd, stdin and stdout on
 * /dev/null, SIGPIPE (and when default_signals, SIGINT and SIGTERM) back
 * to their defaults, and deathsig sent to the child when the benchmark
 * dies, so that it never outlives it. Flushes stdio first; die()s when
 * fork fails. Returns the child's pid. log_fd stays the caller's to close.
 */
pid_t spawn_daemon(const char *path, char *const argv[], int log_fd, int deathsig,
		   bool default_signals);

/*
 * Wait up to limit_s seconds for the "event=listening" line that the
 * child pid writes to the log at path after byte from (buf_size bytes of
 * it are read). Returns the port (> 0); 0 when the time ran out (the
 * child still runs); -1 when the child exited first (reaped, its wait
 * status in *status).
 */
int spawn_wait_listening(pid_t pid, const char *path, off_t from, size_t buf_size, double limit_s,
			 int *status);

/*
 * SIGTERM to pid, then SIGKILL when it has not exited after limit_s
 * seconds (with a note). Reaps it; returns its wait status, -1 when pid
 * is not > 0.
 */
int spawn_stop(pid_t pid, double limit_s);

/*
 * The first line of `path --version` (stdout, and stderr when
 * with_stderr) into out[size]; unknown when it says nothing.
 */
void spawn_version(const char *path, char *out, size_t size, bool with_stderr, const char *unknown);

/* The last 4 KiB of the log at path, on stderr between two marker lines. */
void print_log_tail(const char *path);

#endif /* BENCH_SPAWN_H */
