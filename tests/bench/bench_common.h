/*
 * bench_common.h: the helpers bench.c and bench_query.c share.
 *
 * Included by exactly those two programs, each a single translation unit,
 * so everything here is static. Functions one of them does not call are
 * marked unused so that neither build warns.
 *
 * Before including it, a program defines BENCH_PROG, the prefix of its
 * messages on stderr ("bench", "bench_query"). die() calls die_cleanup
 * first when a program has set it.
 */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#ifndef BENCH_PROG
#error "define BENCH_PROG before including bench_common.h"
#endif

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/types.h>

#define BENCH_UNUSED __attribute__((unused))

#define NBS 32 /* images per batch (per GPU): count = NBS * H * W */
#define RESNET50_LAYERS 53
#define RESNET50_CHANNELS 26560

/* ------------------------------------------------------------------------ */
/* small helpers */

/* Called by die() before it exits, when set (bench_query: stop the daemon). */
static void (*die_cleanup)(void);

/* "<prog>: <message>\n" on stderr. */
static void vmsg(const char *fmt, va_list ap)
{
	fputs(BENCH_PROG ": ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
	if (die_cleanup != NULL)
		die_cleanup();
	exit(2);
}

static void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Progress goes to stderr; stdout carries only the Markdown report. */
static void note(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vmsg(fmt, ap);
	va_end(ap);
}

static BENCH_UNUSED void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		die("out of memory (%zu bytes)", n);
	return p;
}

static BENCH_UNUSED void *xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		die("out of memory");
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n ? n : 1);
	if (p == NULL)
		die("out of memory (%zu bytes)", n);
	return p;
}

static BENCH_UNUSED char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		die("out of memory");
	return p;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static BENCH_UNUSED double thread_cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static BENCH_UNUSED void sleep_s(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

/* For qsort: ascending doubles. */
static BENCH_UNUSED int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

/* splitmix64: the deterministic source of every value in the workloads. */
static BENCH_UNUSED uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------ */
/* a growable byte string; always NUL-terminated */

struct sbuf {
	char *p;
	size_t len, cap;
};

static void sb_reserve(struct sbuf *b, size_t add)
{
	size_t need = b->len + add + 1;

	if (need <= b->cap)
		return;
	if (b->cap == 0)
		b->cap = 4096;
	while (b->cap < need)
		b->cap *= 2;
	b->p = xrealloc(b->p, b->cap);
}

static void sb_add(struct sbuf *b, const void *s, size_t n)
{
	sb_reserve(b, n);
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static BENCH_UNUSED void sb_puts(struct sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

static void sb_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static BENCH_UNUSED void sb_printf(struct sbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		die("vsnprintf failed");
	sb_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

static BENCH_UNUSED void sb_free(struct sbuf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* ------------------------------------------------------------------------ */
/* the model: torchvision.models.resnet50's BatchNorm2d layers */

struct bn_layer {
	const char *name; /* as in model.named_modules() */
	unsigned channels;
	unsigned hw;   /* spatial size of its input (224x224 images) */
	int64_t count; /* elements per channel in one batch: NBS * hw * hw */
	size_t offset; /* first channel in the flat arrays */
};

/*
 * In named_modules() order. A stem (conv1/bn1 at 112x112 for a 224x224
 * input, then max-pooling to 56x56) and four stages of Bottleneck blocks
 * (3, 4, 6, 3 blocks; widths 64, 128, 256, 512; expansion 4). Each block
 * has bn1 (width, after the 1x1 conv, at the block's input resolution),
 * bn2 (width, after the 3x3 conv, which carries the stride in torchvision's
 * "v1.5" ResNet), bn3 (4 * width); the first block of each stage also has
 * downsample = Sequential(conv1x1, BatchNorm2d), whose norm is
 * "downsample.1", at the block's output resolution. layers_init() fills in
 * count and offset.
 */
static struct bn_layer layers[] = {
	{ "bn1", 64, 112, 0, 0 },
	{ "layer1.0.bn1", 64, 56, 0, 0 },
	{ "layer1.0.bn2", 64, 56, 0, 0 },
	{ "layer1.0.bn3", 256, 56, 0, 0 },
	{ "layer1.0.downsample.1", 256, 56, 0, 0 },
	{ "layer1.1.bn1", 64, 56, 0, 0 },
	{ "layer1.1.bn2", 64, 56, 0, 0 },
	{ "layer1.1.bn3", 256, 56, 0, 0 },
	{ "layer1.2.bn1", 64, 56, 0, 0 },
	{ "layer1.2.bn2", 64, 56, 0, 0 },
	{ "layer1.2.bn3", 256, 56, 0, 0 },
	{ "layer2.0.bn1", 128, 56, 0, 0 },
	{ "layer2.0.bn2", 128, 28, 0, 0 },
	{ "layer2.0.bn3", 512, 28, 0, 0 },
	{ "layer2.0.downsample.1", 512, 28, 0, 0 },
	{ "layer2.1.bn1", 128, 28, 0, 0 },
	{ "layer2.1.bn2", 128, 28, 0, 0 },
	{ "layer2.1.bn3", 512, 28, 0, 0 },
	{ "layer2.2.bn1", 128, 28, 0, 0 },
	{ "layer2.2.bn2", 128, 28, 0, 0 },
	{ "layer2.2.bn3", 512, 28, 0, 0 },
	{ "layer2.3.bn1", 128, 28, 0, 0 },
	{ "layer2.3.bn2", 128, 28, 0, 0 },
	{ "layer2.3.bn3", 512, 28, 0, 0 },
	{ "layer3.0.bn1", 256, 28, 0, 0 },
	{ "layer3.0.bn2", 256, 14, 0, 0 },
	{ "layer3.0.bn3", 1024, 14, 0, 0 },
	{ "layer3.0.downsample.1", 1024, 14, 0, 0 },
	{ "layer3.1.bn1", 256, 14, 0, 0 },
	{ "layer3.1.bn2", 256, 14, 0, 0 },
	{ "layer3.1.bn3", 1024, 14, 0, 0 },
	{ "layer3.2.bn1", 256, 14, 0, 0 },
	{ "layer3.2.bn2", 256, 14, 0, 0 },
	{ "layer3.2.bn3", 1024, 14, 0, 0 },
	{ "layer3.3.bn1", 256, 14, 0, 0 },
	{ "layer3.3.bn2", 256, 14, 0, 0 },
	{ "layer3.3.bn3", 1024, 14, 0, 0 },
	{ "layer3.4.bn1", 256, 14, 0, 0 },
	{ "layer3.4.bn2", 256, 14, 0, 0 },
	{ "layer3.4.bn3", 1024, 14, 0, 0 },
	{ "layer3.5.bn1", 256, 14, 0, 0 },
	{ "layer3.5.bn2", 256, 14, 0, 0 },
	{ "layer3.5.bn3", 1024, 14, 0, 0 },
	{ "layer4.0.bn1", 512, 14, 0, 0 },
	{ "layer4.0.bn2", 512, 7, 0, 0 },
	{ "layer4.0.bn3", 2048, 7, 0, 0 },
	{ "layer4.0.downsample.1", 2048, 7, 0, 0 },
	{ "layer4.1.bn1", 512, 7, 0, 0 },
	{ "layer4.1.bn2", 512, 7, 0, 0 },
	{ "layer4.1.bn3", 2048, 7, 0, 0 },
	{ "layer4.2.bn1", 512, 7, 0, 0 },
	{ "layer4.2.bn2", 512, 7, 0, 0 },
	{ "layer4.2.bn3", 2048, 7, 0, 0 },
};

#define N_LAYERS (sizeof(layers) / sizeof(layers[0]))

static size_t n_channels;

static void layers_init(void)
{
	size_t i;

	n_channels = 0;
	for (i = 0; i < N_LAYERS; i++) {
		layers[i].count = (int64_t)NBS * layers[i].hw * layers[i].hw;
		layers[i].offset = n_channels;
		n_channels += layers[i].channels;
	}
	if (N_LAYERS != RESNET50_LAYERS || n_channels != RESNET50_CHANNELS)
		die("resnet50 layer table is wrong: %zu layers, %zu channels (want %d, %d)",
		    (size_t)N_LAYERS, n_channels, RESNET50_LAYERS, RESNET50_CHANNELS);
}

/* ------------------------------------------------------------------------ */
/* /proc readers */

/* utime + stime, in clock ticks, from a /proc/.../stat file; -1 on error. */
static long long proc_cpu_ticks(const char *path)
{
	char buf[1024], *p;
	unsigned long long ut, st;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')'); /* comm may hold spaces */
	if (p == NULL)
		return -1;
	/* after ") ": state(3) ppid pgrp session tty tpgid flags minflt cminflt
	 * majflt cmajflt utime(14) stime(15) */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (long long)(ut + st);
}

/* utime + stime of process pid, in clock ticks; -1 on error. */
static long long pid_cpu_ticks(pid_t pid)
{
	char path[64];

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	return proc_cpu_ticks(path);
}

/* A "Vm...:" field of /proc/<pid>/status in kB; -1 on error. */
static long proc_status_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t fl = strlen(field);
	long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (f == NULL)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
			kb = strtol(line + fl + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb;
}

/* The "model name" of the first CPU in /proc/cpuinfo; "unknown" if none. */
static void cpu_model(char *out, size_t size)
{
	char line[512];
	FILE *f = fopen("/proc/cpuinfo", "re");

	snprintf(out, size, "unknown");
	if (f == NULL)
		return;
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, "model name", 10) == 0) {
			char *p = strchr(line, ':');

			if (p != NULL) {
				p++;
				while (*p == ' ' || *p == '\t')
					p++;
				p[strcspn(p, "\n")] = '\0';
				snprintf(out, size, "%s", p);
			}
			break;
		}
	fclose(f);
}

/* ------------------------------------------------------------------------ */
/* the daemon's log */

static void print_log_tail(const char *path)
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

/* ------------------------------------------------------------------------ */
/* TCP to 127.0.0.1 */

/* A connected socket with TCP_NODELAY; -1 with errno set on failure. */
static int tcp_connect(unsigned port, bool nonblocking)
{
	struct sockaddr_in sa;
	int one = 1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
		int e = errno;

		close(fd);
		errno = e;
		return -1;
	}
	if (nonblocking)
		fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
	return fd;
}

#endif /* BENCH_COMMON_H */
