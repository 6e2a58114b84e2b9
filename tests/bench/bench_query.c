/*
 * bench_query: query latency of bnstatd on a long ResNet-50 run.
 *
 * It fills one run with N steps (default 10,000) of ResNet-50 shaped
 * statistics -- one upload per step from worker rank0, seq 0, with the
 * worker's EMA, from several keep-alive connections that each upload their
 * own contiguous range of steps -- and then times the queries whose cost
 * grows with the length of the run:
 *
 *   - /compare?ema=worker (reads the window and one EMA row per layer),
 *   - /compare?ema=sim: the simulated EMA replays every step of every layer
 *     the first time (cold replay cache), then resumes from the cached
 *     checkpoint (every 64 steps) before the queried step (warm); a second
 *     momentum is a second set of checkpoints; a restart empties the cache,
 *   - /series over the whole run (one channel, every step),
 *   - /stats?window=100 as the reference point,
 *   - a late upload (a batch for step N/2 after step N-1 is in), which makes
 *     the checkpoints from N/2 on stale: the next sim compare replays from
 *     the checkpoint before N/2.
 *
 * Answers that must be equal are compared byte for byte (warm vs cold, and
 * the full replay after the restart vs the partial replay after the late
 * upload), so the benchmark also checks that the cache is exact.
 *
 * The client is a minimal HTTP/1.1 keep-alive client on raw sockets, only
 * to 127.0.0.1. Every loop is bounded by a count and a deadline. The report
 * is Markdown on stdout (ready for docs/PERFORMANCE.md); progress goes to
 * stderr. See "Query benchmark" in tests/bench/README.md.
 *
 * Build (from the source tree):
 *   gcc -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra tests/bench/bench_query.c \
 *       -lpthread -lm -o bench_query
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bench_query writes little-endian binary data with memcpy; port it first"
#endif

#define BENCH_PROG "bench_query"
#include "bench_common.h"

#define MAX_CONNS 64
#define MAX_REPS 1000
#define MAX_RESULTS 64
#define MAX_DAEMON_ARGS 32
#define HEAD_MAX 65536
#define BODY_MAX ((size_t)1 << 31)
#define SEED 0x62ad5ca1e5eedULL
#define DRIFT_PERIOD 1000.0 /* steps */
#define WORKER_MOMENTUM 0.1 /* the EMA rank0 reports, PyTorch's default */

/* ------------------------------------------------------------------------ */
/* small helpers (the rest are in bench_common.h) */

static unsigned long long parse_ull(const char *s, const char *what, unsigned long long max)
{
	char *end;
	unsigned long long v;

	errno = 0;
	if (s == NULL || *s == '\0' || *s == '-')
		die("%s: not a number: '%s'", what, s ? s : "");
	v = strtoull(s, &end, 10);
	if (errno != 0 || *end != '\0' || v > max)
		die("%s: not a number in 0..%llu: '%s'", what, max, s);
	return v;
}

/* ------------------------------------------------------------------------ */
/* the statistics: deterministic, counter-based, any step on its own */

struct rng {
	uint64_t s[4];
};

static inline uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

static inline uint64_t rng_next(struct rng *r) /* xoshiro256** */
{
	uint64_t *s = r->s, out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return out;
}

static void rng_seed(struct rng *r, uint64_t seed)
{
	int i;

	for (i = 0; i < 4; i++)
		r->s[i] = splitmix64(&seed);
}

/* Unit-variance noise from one 64-bit draw: the sum of two uniforms. */
static inline double tri_noise(uint64_t x)
{
	double a = (double)(x >> 40) * (1.0 / 16777216.0);
	double b = (double)(x & 0xFFFFFF) * (1.0 / 16777216.0);

	return (a + b - 1.0) * 2.449489742783178; /* sqrt(6) */
}

/* Per channel: the population the batches are drawn from. */
static double *ch_mu, *ch_sd, *ch_var, *ch_amp;
static double layer_phase[RESNET50_LAYERS];

static void population_init(void)
{
	struct rng r;
	size_t c, l;

	ch_mu = xmalloc(n_channels * sizeof(double));
	ch_sd = xmalloc(n_channels * sizeof(double));
	ch_var = xmalloc(n_channels * sizeof(double));
	ch_amp = xmalloc(n_channels * sizeof(double));
	rng_seed(&r, SEED);
	for (c = 0; c < n_channels; c++) {
		double u = (double)(rng_next(&r) >> 11) * 0x1p-53;

		ch_mu[c] = 0.5 * tri_noise(rng_next(&r));
		ch_var[c] = exp(2.0 * u - 1.0); /* e^-1 .. e^1 */
		ch_sd[c] = sqrt(ch_var[c]);
		ch_amp[c] = 0.5 * ch_sd[c] * (double)(rng_next(&r) >> 11) * 0x1p-53;
	}
	for (l = 0; l < N_LAYERS; l++)
		layer_phase[l] = 6.283185307179586 * (double)(rng_next(&r) >> 11) * 0x1p-53;
}

/*
 * The batch statistics of `step` in stream `stream` (0: the training run,
 * others: extra batches such as the late upload): every layer's mean and
 * unbiased variance, as f32. The population drifts slowly (a sine per
 * layer, period DRIFT_PERIOD steps) so that an EMA lags behind it.
 */
static void gen_step(uint64_t stream, int64_t step, float *mean, float *var)
{
	struct rng r;
	size_t l, c;

	rng_seed(&r, SEED ^ (stream * 0xD1B54A32D192ED03ULL) ^
			     ((uint64_t)step * 0x9E3779B97F4A7C15ULL));
	for (l = 0; l < N_LAYERS; l++) {
		double d = sin(6.283185307179586 * (double)step / DRIFT_PERIOD + layer_phase[l]);
		size_t end = layers[l].offset + layers[l].channels;

		for (c = layers[l].offset; c < end; c++) {
			double zm = tri_noise(rng_next(&r)), zv = tri_noise(rng_next(&r));

			mean[c] = (float)(ch_mu[c] + ch_amp[c] * d + 0.1 * ch_sd[c] * zm);
			var[c] = (float)(ch_var[c] * (1.0 + 0.2 * d) * (1.0 + 0.05 * zv));
		}
	}
}

/* PyTorch's update of running_mean / running_var with this batch. */
static void ema_apply(double *ema, const float *mean, const float *var)
{
	double a = WORKER_MOMENTUM, *em = ema, *ev = ema + n_channels;
	size_t c;

	for (c = 0; c < n_channels; c++) {
		em[c] = a * (double)mean[c] + (1.0 - a) * em[c];
		ev[c] = a * (double)var[c] + (1.0 - a) * ev[c];
	}
}

static void ema_init(double *ema)
{
	size_t c;

	for (c = 0; c < n_channels; c++) {
		ema[c] = 0.0;
		ema[n_channels + c] = 1.0;
	}
}

static void ema_to_f32(const double *ema, float *em, float *ev)
{
	size_t c;

	for (c = 0; c < n_channels; c++) {
		em[c] = (float)ema[c];
		ev[c] = (float)ema[n_channels + c];
	}
}

/* ------------------------------------------------------------------------ */
/* upload bodies */

enum form { FORM_AUTO, FORM_JSON, FORM_SAFETENSORS };

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static void sb_base64(struct sbuf *b, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t i, out = 4 * ((n + 2) / 3);
	char *o;

	sb_reserve(b, out);
	o = b->p + b->len;
	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
		*o++ = b64chars[(v >> 6) & 63];
		*o++ = b64chars[v & 63];
	}
	if (n - i == 1) {
		uint32_t v = (uint32_t)p[i] << 16;

		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
		*o++ = '=';
		*o++ = '=';
	} else if (n - i == 2) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;

		*o++ = b64chars[v >> 18];
		*o++ = b64chars[(v >> 12) & 63];
		*o++ = b64chars[(v >> 6) & 63];
		*o++ = '=';
	}
	b->len += out;
	b->p[b->len] = '\0';
}

/* One batch: the arrays are flat over all channels; ema may be NULL. */
struct batch {
	const char *worker;
	int64_t step;
	int64_t seq;
	const float *mean, *var, *ema_mean, *ema_var;
};

static void body_json(struct sbuf *b, const struct batch *x)
{
	size_t l;

	b->len = 0;
	sb_printf(b, "{\"worker\":\"%s\",\"step\":%" PRId64 ",\"seq\":%" PRId64 ",\"layers\":{",
		  x->worker, x->step, x->seq);
	for (l = 0; l < N_LAYERS; l++) {
		const struct bn_layer *L = &layers[l];
		size_t bytes = L->channels * sizeof(float);

		sb_printf(b,
			  "%s\"%s\":{\"count\":%" PRId64 ",\"mean\":{\"dtype\":\"f32\",\"b64\":\"",
			  l ? "," : "", L->name, L->count);
		sb_base64(b, x->mean + L->offset, bytes);
		sb_puts(b, "\"},\"var\":{\"dtype\":\"f32\",\"b64\":\"");
		sb_base64(b, x->var + L->offset, bytes);
		if (x->ema_mean != NULL) {
			sb_puts(b, "\"},\"ema_mean\":{\"dtype\":\"f32\",\"b64\":\"");
			sb_base64(b, x->ema_mean + L->offset, bytes);
			sb_puts(b, "\"},\"ema_var\":{\"dtype\":\"f32\",\"b64\":\"");
			sb_base64(b, x->ema_var + L->offset, bytes);
		}
		sb_puts(b, "\"}}");
	}
	sb_puts(b, "}}");
}

/*
 * The same batch as a safetensors file (docs/API.md): 8-byte little-endian
 * header length, a JSON header padded with spaces to a multiple of 8, the
 * tensors back to back: per layer "<layer>.count" (I64, shape []),
 * "<layer>.mean", "<layer>.var" [, "<layer>.ema_mean", "<layer>.ema_var"]
 * (F32, shape [C]).
 */
static void body_safetensors(struct sbuf *b, struct sbuf *hdr, const struct batch *x)
{
	const char *const parts[4] = { "mean", "var", "ema_mean", "ema_var" };
	const float *arrays[4] = { x->mean, x->var, x->ema_mean, x->ema_var };
	int n_parts = x->ema_mean != NULL ? 4 : 2, p;
	uint64_t off = 0, hlen;
	size_t l;

	hdr->len = 0;
	sb_printf(hdr,
		  "{\"__metadata__\":{\"worker\":\"%s\",\"step\":\"%" PRId64 "\",\"seq\":\"%" PRId64
		  "\"}",
		  x->worker, x->step, x->seq);
	for (l = 0; l < N_LAYERS; l++) {
		uint64_t bytes = (uint64_t)layers[l].channels * sizeof(float);

		sb_printf(hdr,
			  ",\"%s.count\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[%" PRIu64
			  ",%" PRIu64 "]}",
			  layers[l].name, off, off + 8);
		off += 8;
		for (p = 0; p < n_parts; p++) {
			sb_printf(hdr,
				  ",\"%s.%s\":{\"dtype\":\"F32\",\"shape\":[%u],\"data_offsets\":["
				  "%" PRIu64 ",%" PRIu64 "]}",
				  layers[l].name, parts[p], layers[l].channels, off, off + bytes);
			off += bytes;
		}
	}
	sb_puts(hdr, "}");
	while (hdr->len % 8 != 0)
		sb_puts(hdr, " ");
	hlen = hdr->len;
	b->len = 0;
	sb_reserve(b, 8 + hdr->len + off);
	sb_add(b, &hlen, 8);
	sb_add(b, hdr->p, hdr->len);
	for (l = 0; l < N_LAYERS; l++) {
		sb_add(b, &layers[l].count, 8);
		for (p = 0; p < n_parts; p++)
			sb_add(b, arrays[p] + layers[l].offset, layers[l].channels * sizeof(float));
	}
}

/* ------------------------------------------------------------------------ */
/* a minimal HTTP/1.1 keep-alive client, 127.0.0.1 only */

struct conn {
	int fd;
	unsigned port;
	struct sbuf in; /* received, not yet consumed */
};

struct resp {
	int status;
	struct sbuf body;
	double retry_after;
};

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->in.len = 0;
}

static int conn_open(struct conn *c)
{
	conn_close(c);
	c->fd = tcp_connect(c->port, false);
	if (c->fd < 0)
		return -errno;
	return 0;
}

static int wait_fd(int fd, short events, double deadline)
{
	for (;;) {
		struct pollfd p = { .fd = fd, .events = events };
		double left = deadline - now_s();
		int rc;

		if (left <= 0)
			return -ETIMEDOUT;
		rc = poll(&p, 1, (int)(left * 1000.0) + 1);
		if (rc > 0)
			return 0;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
}

static int send_all(int fd, struct iovec *iov, int n, double deadline)
{
	while (n > 0) {
		struct msghdr m = { .msg_iov = iov, .msg_iovlen = (size_t)n };
		ssize_t w;
		int rc = wait_fd(fd, POLLOUT, deadline);

		if (rc < 0)
			return rc;
		w = sendmsg(fd, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (char *)iov->iov_base + w;
			iov->iov_len -= (size_t)w;
		}
	}
	return 0;
}

/* Read more bytes into c->in; 0 at EOF, >0 bytes read, <0 error. */
static ssize_t recv_more(struct conn *c, double deadline)
{
	for (;;) {
		ssize_t n;
		int rc = wait_fd(c->fd, POLLIN, deadline);

		if (rc < 0)
			return rc;
		sb_reserve(&c->in, 256 * 1024);
		n = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len - 1, MSG_DONTWAIT);
		if (n < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			return -errno;
		}
		c->in.len += (size_t)n;
		c->in.p[c->in.len] = '\0';
		return n;
	}
}

/* Make sure c->in holds at least `need` bytes. */
static int recv_until(struct conn *c, size_t need, double deadline)
{
	while (c->in.len < need) {
		ssize_t n;

		if (need > BODY_MAX)
			return -EFBIG;
		n = recv_more(c, deadline);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -ECONNRESET;
	}
	return 0;
}

static void consume(struct conn *c, size_t n)
{
	memmove(c->in.p, c->in.p + n, c->in.len - n);
	c->in.len -= n;
	c->in.p[c->in.len] = '\0';
}

/* Parse one response from c. *got_any says whether any byte arrived. */
static int read_response(struct conn *c, struct resp *r, double deadline, bool *got_any)
{
	char *eoh = NULL, *line;
	size_t head_len, clen = 0;
	bool has_clen = false, chunked = false, close_after = false;
	int rc;

	*got_any = c->in.len > 0;
	while ((eoh = c->in.len ? strstr(c->in.p, "\r\n\r\n") : NULL) == NULL) {
		ssize_t n;

		if (c->in.len > HEAD_MAX)
			return -EPROTO;
		n = recv_more(c, deadline);
		if (n < 0)
			return (int)n;
		if (n == 0)
			return -ECONNRESET;
		*got_any = true;
	}
	head_len = (size_t)(eoh - c->in.p) + 4;
	if (sscanf(c->in.p, "HTTP/1.%*d %d", &r->status) != 1)
		return -EPROTO;
	r->retry_after = 0;
	for (line = strstr(c->in.p, "\r\n") + 2; line < eoh; line = strstr(line, "\r\n") + 2) {
		if (strncasecmp(line, "Content-Length:", 15) == 0) {
			clen = strtoull(line + 15, NULL, 10);
			has_clen = true;
		} else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0) {
			chunked = strstr(line, "chunked") != NULL &&
				  strstr(line, "chunked") < strstr(line, "\r\n");
		} else if (strncasecmp(line, "Connection:", 11) == 0) {
			char *v = line + 11;

			while (*v == ' ')
				v++;
			close_after = strncasecmp(v, "close", 5) == 0;
		} else if (strncasecmp(line, "Retry-After:", 12) == 0) {
			r->retry_after = strtod(line + 12, NULL);
		}
	}
	consume(c, head_len);
	r->body.len = 0;
	sb_reserve(&r->body, 0);
	r->body.p[0] = '\0';
	if (chunked) {
		for (int guard = 0; guard < 10000000; guard++) {
			char *crlf;
			size_t size;

			while ((crlf = c->in.len ? strstr(c->in.p, "\r\n") : NULL) == NULL) {
				ssize_t n = recv_more(c, deadline);

				if (n <= 0)
					return n < 0 ? (int)n : -ECONNRESET;
			}
			size = strtoull(c->in.p, NULL, 16);
			consume(c, (size_t)(crlf - c->in.p) + 2);
			rc = recv_until(c, size + 2, deadline);
			if (rc < 0)
				return rc;
			sb_add(&r->body, c->in.p, size);
			consume(c, size + 2);
			if (size == 0)
				break;
		}
	} else if (has_clen) {
		rc = recv_until(c, clen, deadline);
		if (rc < 0)
			return rc;
		sb_add(&r->body, c->in.p, clen);
		consume(c, clen);
	} else {
		for (;;) { /* until the server closes */
			ssize_t n = recv_more(c, deadline);

			if (n < 0)
				return (int)n;
			if (n == 0)
				break;
			if (c->in.len > BODY_MAX)
				return -EFBIG;
		}
		sb_add(&r->body, c->in.p, c->in.len);
		consume(c, c->in.len);
		close_after = true;
	}
	if (close_after)
		conn_close(c);
	return 0;
}

/*
 * One request. A request on a kept-alive connection that the server closed
 * meanwhile is sent once more on a new connection (uploads are safe to
 * resend: a batch identity is stored once).
 */
static int http_do(struct conn *c, const char *method, const char *path, const char *ctype,
		   const void *body, size_t blen, struct resp *r, double timeout_s)
{
	double deadline = now_s() + timeout_s;
	int attempt, rc = 0;

	for (attempt = 0; attempt < 2; attempt++) {
		char head[1024];
		struct iovec iov[2];
		bool reused = c->fd >= 0, got_any = false;
		int n;

		if (!reused && (rc = conn_open(c)) < 0)
			return rc;
		if (body != NULL)
			n = snprintf(head, sizeof(head),
				     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nContent-Type: %s\r\n"
				     "Content-Length: %zu\r\n\r\n",
				     method, path, c->port, ctype, blen);
		else
			n = snprintf(head, sizeof(head),
				     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n\r\n", method, path,
				     c->port);
		if (n < 0 || (size_t)n >= sizeof(head))
			return -E2BIG;
		iov[0].iov_base = head;
		iov[0].iov_len = (size_t)n;
		iov[1].iov_base = (void *)body;
		iov[1].iov_len = body ? blen : 0;
		c->in.len = 0;
		rc = send_all(c->fd, iov, body ? 2 : 1, deadline);
		if (rc == 0)
			rc = read_response(c, r, deadline, &got_any);
		if (rc == 0)
			return 0;
		conn_close(c);
		if (!reused || got_any || rc == -ETIMEDOUT)
			return rc;
	}
	return rc;
}

/* ------------------------------------------------------------------------ */
/* options */

static struct {
	const char *bnstatd;
	const char *url;
	const char *run;
	const char *tmpdir;
	const char *db;
	const char *daemon_args[MAX_DAEMON_ARGS];
	size_t n_daemon_args;
	unsigned long long steps;
	unsigned conns;
	unsigned reps;
	unsigned replay_cache_mb; /* 0: the daemon's default */
	double timeout;		  /* per request, s */
	double fill_timeout;	  /* whole fill, s */
	enum form form;
	bool keep, no_fill, no_late, no_restart;
} opt;

static unsigned url_port;

static void usage(void)
{
	printf("Usage: bench_query [OPTION]... [-- BNSTATD-ARG...]\n"
	       "Query latency of bnstatd on a long ResNet-50 run (Markdown report on stdout).\n\n"
	       "  --bnstatd PATH          the daemon (default: $BNSTATD, else ./src/bnstatd)\n"
	       "  --url http://127.0.0.1:PORT  use a running bnstatd instead of spawning one\n"
	       "                          (only 127.0.0.1/localhost; no restart measurement)\n"
	       "  --run NAME              the run (default: bench-query)\n"
	       "  --steps N               steps to fill, 0..N-1 (default: 10000)\n"
	       "  --conns N               upload connections, one range of steps each (default: "
	       "4)\n"
	       "  --reps N                repetitions of each warm query (default: 5)\n"
	       "  --form auto|json|safetensors  upload body (default: auto = safetensors if the\n"
	       "                          server takes it, else JSON with base64 f32 arrays)\n"
	       "  --replay-cache-mb N     passed to the spawned bnstatd\n"
	       "  --tmpdir DIR            where the temporary directory goes (default: $TMPDIR or "
	       "/tmp)\n"
	       "  --db FILE               spawn bnstatd on FILE instead of a temporary database\n"
	       "                          (FILE is never deleted)\n"
	       "  --no-fill               measure the run as it is (its last step is N-1)\n"
	       "  --no-late               skip the late upload (it adds a batch to step N/2)\n"
	       "  --no-restart            skip the restart of the spawned daemon\n"
	       "  --timeout S             limit per request in seconds (default: 1800)\n"
	       "  --fill-timeout S        limit for the whole fill in seconds (default: 21600)\n"
	       "  --keep                  keep the temporary directory (database and log)\n"
	       "  -h, --help              this help\n\n"
	       "Arguments after -- go to the spawned bnstatd (default: --synchronous normal).\n");
}

static void parse_args(int argc, char **argv)
{
	int i;
	bool daemon_args_given = false;

	opt.bnstatd = getenv("BNSTATD") && *getenv("BNSTATD") ? getenv("BNSTATD") : "./src/bnstatd";
	opt.run = "bench-query";
	opt.tmpdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	opt.steps = 10000;
	opt.conns = 4;
	opt.reps = 5;
	opt.timeout = 1800;
	opt.fill_timeout = 21600;
	opt.form = FORM_AUTO;
	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define NEED_VALUE()                                                                               \
	do {                                                                                       \
		if (v == NULL)                                                                     \
			die("%s needs a value", a);                                                \
		i++;                                                                               \
	} while (0)
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage();
			exit(0);
		} else if (strcmp(a, "--") == 0) {
			for (i++; i < argc; i++) {
				if (opt.n_daemon_args == MAX_DAEMON_ARGS)
					die("at most %d bnstatd arguments", MAX_DAEMON_ARGS);
				opt.daemon_args[opt.n_daemon_args++] = argv[i];
			}
			daemon_args_given = true;
		} else if (strcmp(a, "--bnstatd") == 0) {
			NEED_VALUE();
			opt.bnstatd = v;
		} else if (strcmp(a, "--url") == 0) {
			NEED_VALUE();
			opt.url = v;
		} else if (strcmp(a, "--run") == 0) {
			NEED_VALUE();
			opt.run = v;
		} else if (strcmp(a, "--steps") == 0) {
			NEED_VALUE();
			opt.steps = parse_ull(v, "--steps", 100000000ULL);
		} else if (strcmp(a, "--conns") == 0) {
			NEED_VALUE();
			opt.conns = (unsigned)parse_ull(v, "--conns", MAX_CONNS);
		} else if (strcmp(a, "--reps") == 0) {
			NEED_VALUE();
			opt.reps = (unsigned)parse_ull(v, "--reps", MAX_REPS);
		} else if (strcmp(a, "--form") == 0) {
			NEED_VALUE();
			if (strcmp(v, "auto") == 0)
				opt.form = FORM_AUTO;
			else if (strcmp(v, "json") == 0)
				opt.form = FORM_JSON;
			else if (strcmp(v, "safetensors") == 0)
				opt.form = FORM_SAFETENSORS;
			else
				die("--form: auto, json or safetensors, not '%s'", v);
		} else if (strcmp(a, "--replay-cache-mb") == 0) {
			NEED_VALUE();
			opt.replay_cache_mb = (unsigned)parse_ull(v, "--replay-cache-mb", 1u << 20);
		} else if (strcmp(a, "--tmpdir") == 0) {
			NEED_VALUE();
			opt.tmpdir = v;
		} else if (strcmp(a, "--db") == 0) {
			NEED_VALUE();
			opt.db = v;
		} else if (strcmp(a, "--no-fill") == 0) {
			opt.no_fill = true;
		} else if (strcmp(a, "--no-late") == 0) {
			opt.no_late = true;
		} else if (strcmp(a, "--no-restart") == 0) {
			opt.no_restart = true;
		} else if (strcmp(a, "--timeout") == 0) {
			NEED_VALUE();
			opt.timeout = (double)parse_ull(v, "--timeout", 86400);
		} else if (strcmp(a, "--fill-timeout") == 0) {
			NEED_VALUE();
			opt.fill_timeout = (double)parse_ull(v, "--fill-timeout", 7 * 86400);
		} else if (strcmp(a, "--keep") == 0) {
			opt.keep = true;
		} else {
			die("unknown option '%s' (see --help)", a);
		}
#undef NEED_VALUE
	}
	if (!daemon_args_given) {
		opt.daemon_args[opt.n_daemon_args++] = "--synchronous";
		opt.daemon_args[opt.n_daemon_args++] = "normal";
	}
	if (opt.conns == 0)
		die("--conns: 0");
	if (opt.reps == 0)
		die("--reps: 0");
	if (opt.timeout <= 0 || opt.fill_timeout <= 0)
		die("--timeout and --fill-timeout must be > 0");
	if (!opt.no_fill && opt.steps < 10)
		die("--steps: at least 10");
	if (!opt.no_fill && opt.steps < opt.conns)
		die("--steps (%llu) must be at least --conns (%u)", opt.steps, opt.conns);
	for (const char *p = opt.run; *p; p++)
		if (!(p[0] >= 'A' && p[0] <= 'Z') && !(p[0] >= 'a' && p[0] <= 'z') &&
		    !(p[0] >= '0' && p[0] <= '9') && p[0] != '.' && p[0] != '_' && p[0] != '-')
			die("--run: names are [A-Za-z0-9._-]");
	if (opt.url != NULL) {
		const char *h = opt.url, *colon;

		if (strncmp(h, "http://", 7) == 0)
			h += 7;
		if (strncmp(h, "127.0.0.1:", 10) != 0 && strncmp(h, "localhost:", 10) != 0)
			die("--url: only http://127.0.0.1:PORT (or localhost), not '%s'", opt.url);
		colon = strchr(h, ':');
		url_port = (unsigned)strtoul(colon + 1, NULL, 10);
		if (url_port == 0 || url_port > 65535)
			die("--url: no port in '%s'", opt.url);
		if (opt.db != NULL)
			die("--db is for the spawned daemon; not with --url");
		opt.no_restart = true;
	}
	if (opt.no_fill && opt.url == NULL && opt.db == NULL)
		die("--no-fill needs --url or --db (an existing run)");
}

/* ------------------------------------------------------------------------ */
/* the daemon, the temporary directory, cleanup */

static char tmp_dir[PATH_MAX - 64]; /* ours, removed unless --keep */
static char db_path[PATH_MAX];
static char log_path[PATH_MAX];
static char tmp_files[6][PATH_MAX + 16]; /* what the signal handler may unlink */
static volatile pid_t daemon_pid;
static unsigned daemon_port;
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

static int daemon_stop(double limit_s)
{
	double deadline = now_s() + limit_s;
	int status = -1;
	pid_t pid = daemon_pid;

	if (pid <= 0)
		return -1;
	kill(pid, SIGTERM);
	while (now_s() < deadline) {
		if (waitpid(pid, &status, WNOHANG) == pid) {
			daemon_pid = 0;
			return status;
		}
		sleep_s(0.02);
	}
	note("bnstatd did not stop within %.0f s of SIGTERM; killing it", limit_s);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	daemon_pid = 0;
	return status;
}

static void cleanup(void)
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

static void on_signal(int sig)
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

static void setup_paths(void)
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
static void daemon_start(void)
{
	char cache_mb[32], *argv[MAX_DAEMON_ARGS + 16], logbuf[16384];
	double deadline;
	size_t a = 0, i;
	off_t from;
	int fd;
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
	fflush(NULL);
	daemon_pid = fork();
	if (daemon_pid < 0)
		die("fork: %s", strerror(errno));
	if (daemon_pid == 0) {
		int devnull = open("/dev/null", O_RDWR);

		prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the bench */
		dup2(fd, 2);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		signal(SIGPIPE, SIG_DFL);
		signal(SIGINT, SIG_DFL);
		signal(SIGTERM, SIG_DFL);
		execv(opt.bnstatd, argv);
		fprintf(stderr, "bench_query: cannot run %s: %s\n", opt.bnstatd, strerror(errno));
		_exit(127);
	}
	close(fd);

	/* its log line "event=listening ... port=N" (after `from`) says where */
	deadline = now_s() + 60;
	while (now_s() < deadline) {
		int status;

		daemon_port = log_listen_port(log_path, from, logbuf, sizeof(logbuf));
		if (daemon_port > 0)
			return;
		if (waitpid(daemon_pid, &status, WNOHANG) == daemon_pid) {
			daemon_pid = 0;
			print_log_tail(log_path);
			die("bnstatd exited before listening (status %d)", status);
		}
		sleep_s(0.02);
	}
	print_log_tail(log_path);
	die("bnstatd did not log event=listening within 60 s");
}

/* utime + stime of the daemon in ms; -1 when unknown. */
static double daemon_cpu_ms(void)
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
static void daemon_rss(double *rss, double *hwm)
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

static double file_bytes(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0 ? (double)st.st_size : 0.0;
}

/* `bnstatd --version`, first line. */
static void daemon_version(char *out, size_t size)
{
	int p[2];
	pid_t pid;
	ssize_t n;

	snprintf(out, size, "unknown");
	if (pipe(p) != 0)
		return;
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		close(p[0]);
		execl(opt.bnstatd, opt.bnstatd, "--version", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	if (pid > 0) {
		n = read(p[0], out, size - 1);
		if (n > 0) {
			out[n] = '\0';
			out[strcspn(out, "\n")] = '\0';
		} else {
			snprintf(out, size, "unknown");
		}
		waitpid(pid, NULL, 0);
	}
	close(p[0]);
}

/* ------------------------------------------------------------------------ */
/* disk space */

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
static double bytes_per_step(bool with_ema)
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

static void check_disk(double estimate)
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

/* ------------------------------------------------------------------------ */
/* the fill */

static enum form used_form = FORM_JSON;
static char form_note[512];
static unsigned port_now(void)
{
	return opt.url ? url_port : daemon_port;
}

static char run_path[256]; /* /v1/runs/<run> */

static const char *ctype_of(enum form f)
{
	return f == FORM_SAFETENSORS ? "application/octet-stream" : "application/json";
}

static void body_of(enum form f, struct sbuf *b, struct sbuf *hdr, const struct batch *x)
{
	if (f == FORM_SAFETENSORS)
		body_safetensors(b, hdr, x);
	else
		body_json(b, x);
}

static _Atomic bool fill_stop;
static _Atomic unsigned long long fill_done, fill_dups, fill_retries, fill_bytes;

/* POST one body; retries 503 (bounded). 0 on 2xx, else the status or -errno. */
static int upload(struct conn *c, struct resp *r, enum form f, const struct sbuf *b,
		  bool *duplicate, unsigned long long *retries)
{
	char path[300];
	int attempt, rc;

	snprintf(path, sizeof(path), "%s/batches", run_path);
	for (attempt = 0; attempt < 120 && !fill_stop; attempt++) {
		rc = http_do(c, "POST", path, ctype_of(f), b->p, b->len, r, opt.timeout);
		if (rc < 0)
			return rc;
		if (r->status == 503) {
			(*retries)++;
			sleep_s(r->retry_after > 0 && r->retry_after < 10 ? r->retry_after : 1.0);
			continue;
		}
		if (r->status / 100 == 2) {
			*duplicate = strstr(r->body.p, "\"duplicate\":true") != NULL;
			return 0;
		}
		return r->status;
	}
	return fill_stop ? -ECANCELED : 503;
}

struct filler {
	pthread_t tid;
	unsigned idx;
	int64_t from, to; /* [from, to) */
	double *ema;	  /* state after step from-1 */
	char err[1024];
};

static void *filler_main(void *arg)
{
	struct filler *t = arg;
	struct conn c = { .fd = -1, .port = port_now() };
	struct resp r = { 0 };
	struct sbuf body = { 0 }, hdr = { 0 };
	float *v = xmalloc(4 * n_channels * sizeof(float));
	float *mean = v, *var = v + n_channels, *em = v + 2 * n_channels, *ev = v + 3 * n_channels;
	int64_t s;

	for (s = t->from; s < t->to && !fill_stop; s++) {
		struct batch x = { "rank0", s, 0, mean, var, em, ev };
		bool dup = false;
		unsigned long long retries = 0;
		int rc;

		gen_step(0, s, mean, var);
		ema_apply(t->ema, mean, var);
		ema_to_f32(t->ema, em, ev);
		body_of(used_form, &body, &hdr, &x);
		rc = upload(&c, &r, used_form, &body, &dup, &retries);
		fill_retries += retries;
		if (rc != 0) {
			if (rc < 0)
				snprintf(t->err, sizeof(t->err), "step %" PRId64 ": %s", s,
					 strerror(-rc));
			else
				snprintf(t->err, sizeof(t->err), "step %" PRId64 ": HTTP %d %.800s",
					 s, rc, r.body.p ? r.body.p : "");
			fill_stop = true;
			break;
		}
		fill_done++;
		fill_bytes += body.len;
		if (dup)
			fill_dups++;
	}
	conn_close(&c);
	free(c.in.p);
	free(r.body.p);
	free(body.p);
	free(hdr.p);
	free(v);
	return NULL;
}

struct fill_result {
	bool done;
	unsigned long long uploads, dups, retries;
	double seconds, prep_seconds, body_mb;
	double db_main, db_wal, estimate;
};

static struct fill_result fillres;

/* Upload steps 0..steps-1 (the probe may have sent step 0 already). */
static void fill(void)
{
	struct filler *t = xmalloc(opt.conns * sizeof(*t));
	struct conn c = { .fd = -1, .port = port_now() };
	struct resp r = { 0 };
	struct sbuf body = { 0 }, hdr = { 0 };
	float *v = xmalloc(4 * n_channels * sizeof(float));
	double *ema = xmalloc(2 * n_channels * sizeof(double));
	int64_t first = 0, total, s;
	double t0, last_note, deadline;
	unsigned i;

	/* the probe: step 0 in the binary form, if wanted */
	ema_init(ema);
	gen_step(0, 0, v, v + n_channels);
	ema_apply(ema, v, v + n_channels);
	ema_to_f32(ema, v + 2 * n_channels, v + 3 * n_channels);
	if (opt.form != FORM_JSON) {
		struct batch x = { "rank0",	      0, 0, v, v + n_channels, v + 2 * n_channels,
				   v + 3 * n_channels };
		bool dup = false;
		unsigned long long retries = 0;
		int rc;

		body_safetensors(&body, &hdr, &x);
		rc = upload(&c, &r, FORM_SAFETENSORS, &body, &dup, &retries);
		if (rc == 0) {
			used_form = FORM_SAFETENSORS;
			first = 1;
			snprintf(form_note, sizeof(form_note),
				 "safetensors (F32 tensors, Content-Type application/octet-stream; "
				 "%.1f KB a body)",
				 (double)body.len / 1e3);
		} else if (opt.form == FORM_SAFETENSORS) {
			die("the server refused the safetensors probe: %d %s", rc,
			    r.body.p ? r.body.p : "");
		} else {
			used_form = FORM_JSON;
			if (rc == 415)
				snprintf(form_note, sizeof(form_note),
					 "JSON with base64 f32 arrays (the binary form was probed: "
					 "415, not "
					 "implemented by this bnstatd)");
			else
				snprintf(form_note, sizeof(form_note),
					 "JSON with base64 f32 arrays (the binary form was probed "
					 "and refused: "
					 "%d %.200s)",
					 rc, rc > 0 && r.body.p ? r.body.p : strerror(-rc));
			note("safetensors probe: %d %.300s", rc,
			     rc > 0 && r.body.p ? r.body.p : "");
		}
	} else {
		used_form = FORM_JSON;
		snprintf(form_note, sizeof(form_note), "JSON with base64 f32 arrays (--form json)");
	}
	if (used_form == FORM_JSON) {
		struct batch x = { "rank0",	      0, 0, v, v + n_channels, v + 2 * n_channels,
				   v + 3 * n_channels };

		body_json(&body, &x);
		size_t l = strlen(form_note);
		snprintf(form_note + l, sizeof(form_note) - l, "; %.1f KB a body",
			 (double)body.len / 1e3);
	}
	conn_close(&c);
	note("upload form: %s", form_note);
	if (first == 0)
		ema_init(ema); /* step 0 goes with the fill: start from PyTorch's 0 / 1 */

	/* ranges, and the worker EMA at the start of each (one pass over the steps) */
	total = (int64_t)opt.steps - first;
	t0 = now_s();
	for (i = 0; i < opt.conns; i++) {
		t[i].idx = i;
		t[i].from = first + total * (int64_t)i / (int64_t)opt.conns;
		t[i].to = first + total * (int64_t)(i + 1) / (int64_t)opt.conns;
		t[i].ema = xmalloc(2 * n_channels * sizeof(double));
		t[i].err[0] = '\0';
	}
	for (s = first, i = 0; i < opt.conns; i++) {
		for (; s < t[i].from; s++) {
			gen_step(0, s, v, v + n_channels);
			ema_apply(ema, v, v + n_channels);
		}
		memcpy(t[i].ema, ema, 2 * n_channels * sizeof(double));
	}
	fillres.prep_seconds = now_s() - t0;
	note("filling steps %" PRId64 "..%llu with %u connections (prep %.1f s)", first,
	     opt.steps - 1, opt.conns, fillres.prep_seconds);

	t0 = now_s();
	deadline = t0 + opt.fill_timeout;
	last_note = t0;
	for (i = 0; i < opt.conns; i++)
		if (pthread_create(&t[i].tid, NULL, filler_main, &t[i]) != 0)
			die("pthread_create failed");
	while (!fill_stop && fill_done < (unsigned long long)total) {
		double now;

		sleep_s(0.2);
		now = now_s();
		if (now > deadline) {
			note("the fill did not finish within --fill-timeout %.0f s; stopping",
			     opt.fill_timeout);
			fill_stop = true;
			break;
		}
		if (now - last_note >= 15) {
			unsigned long long d = fill_done;

			note("fill: %llu/%" PRId64 " uploads, %.1f/s, %.0f s", d, total,
			     (double)d / (now - t0), now - t0);
			last_note = now;
		}
	}
	for (i = 0; i < opt.conns; i++)
		pthread_join(t[i].tid, NULL);
	fillres.seconds = now_s() - t0;
	for (i = 0; i < opt.conns; i++)
		if (t[i].err[0] != '\0')
			die("upload failed on connection %u: %s", i, t[i].err);
	if (fill_done != (unsigned long long)total)
		die("the fill stopped after %llu of %" PRId64 " uploads",
		    (unsigned long long)fill_done, total);
	fillres.done = true;
	fillres.uploads = fill_done;
	fillres.dups = fill_dups;
	fillres.retries = fill_retries;
	fillres.body_mb = (double)fill_bytes / 1e6;
	for (i = 0; i < opt.conns; i++)
		free(t[i].ema);
	free(t);
	free(v);
	free(ema);
	free(body.p);
	free(hdr.p);
	free(r.body.p);
	free(c.in.p);
}

/* ------------------------------------------------------------------------ */
/* the queries */

struct result {
	char query[200];
	char cache[48];
	unsigned n;
	double min, med, max; /* ms */
	double cpu_med;	      /* server CPU ms, median; <0 unknown */
	size_t bytes;
	int status;
	unsigned mismatches; /* answers that differ from the expected body */
	bool checked;
	char *body; /* the last answer */
};

static struct result results[MAX_RESULTS];
static size_t n_results;
static struct conn qconn = { .fd = -1 };

/*
 * Send GET <run_path>/<query> reps times on the query connection; record
 * the wall clock of each (request written to answer read). If expect is
 * given, every answer is compared with it byte for byte.
 */
static struct result *measure(const char *query, const char *cache, unsigned reps,
			      const char *expect)
{
	struct result *res;
	struct resp r = { 0 };
	double ms[MAX_REPS], cpu[MAX_REPS];
	char path[512];
	unsigned i, n_cpu = 0;

	if (n_results == MAX_RESULTS)
		die("too many results");
	res = &results[n_results++];
	memset(res, 0, sizeof(*res));
	snprintf(res->query, sizeof(res->query), "%s", query);
	snprintf(res->cache, sizeof(res->cache), "%s", cache);
	snprintf(path, sizeof(path), "%s/%s", run_path, query);
	qconn.port = port_now();
	for (i = 0; i < reps; i++) {
		double c0 = daemon_cpu_ms(), t0 = now_s(), t1, c1;
		int rc = http_do(&qconn, "GET", path, NULL, NULL, 0, &r, opt.timeout);

		t1 = now_s();
		c1 = daemon_cpu_ms();
		if (rc < 0)
			die("GET %s: %s", path, strerror(-rc));
		ms[i] = (t1 - t0) * 1e3;
		if (c0 >= 0 && c1 >= 0)
			cpu[n_cpu++] = c1 - c0;
		res->status = r.status;
		res->bytes = r.body.len;
		if (expect != NULL) {
			res->checked = true;
			if (strcmp(expect, r.body.p) != 0)
				res->mismatches++;
		}
		if (r.status != 200) {
			note("GET %s: HTTP %d %.500s", path, r.status, r.body.p);
			i++;
			break;
		}
	}
	res->n = i;
	qsort(ms, res->n, sizeof(double), cmp_double);
	res->min = ms[0];
	res->max = ms[res->n - 1];
	res->med = res->n % 2 ? ms[res->n / 2] : (ms[res->n / 2 - 1] + ms[res->n / 2]) / 2;
	if (n_cpu > 0) {
		qsort(cpu, n_cpu, sizeof(double), cmp_double);
		res->cpu_med =
			n_cpu % 2 ? cpu[n_cpu / 2] : (cpu[n_cpu / 2 - 1] + cpu[n_cpu / 2]) / 2;
	} else {
		res->cpu_med = -1;
	}
	res->body = xstrdup(r.body.p ? r.body.p : "");
	note("%-60s %-22s n=%u median %.1f ms (min %.1f, max %.1f) %zu bytes%s", query, cache,
	     res->n, res->med, res->min, res->max, res->bytes,
	     res->checked ? (res->mismatches ? "  ANSWER DIFFERS" : "  same answer") : "");
	free(r.body.p);
	return res;
}

/* A POST timed like a query (the late upload). */
static struct result *measure_upload(const char *label, const char *cache, const struct sbuf *body)
{
	struct result *res;
	struct resp r = { 0 };
	struct conn c = { .fd = -1, .port = port_now() };
	double c0, t0, t1, c1;
	bool dup = false;
	unsigned long long retries = 0;
	int rc;

	if (n_results == MAX_RESULTS)
		die("too many results");
	res = &results[n_results++];
	memset(res, 0, sizeof(*res));
	snprintf(res->query, sizeof(res->query), "%s", label);
	snprintf(res->cache, sizeof(res->cache), "%s", cache);
	if (conn_open(&c) < 0)
		die("connect to 127.0.0.1:%u failed", c.port);
	c0 = daemon_cpu_ms();
	t0 = now_s();
	rc = upload(&c, &r, used_form, body, &dup, &retries);
	t1 = now_s();
	c1 = daemon_cpu_ms();
	if (rc != 0)
		die("the late upload failed: %d %s", rc,
		    rc > 0 && r.body.p ? r.body.p : strerror(-rc));
	if (dup)
		note("the late upload was a duplicate (already stored): nothing changes");
	res->n = 1;
	res->min = res->med = res->max = (t1 - t0) * 1e3;
	res->cpu_med = c0 >= 0 && c1 >= 0 ? c1 - c0 : -1;
	res->status = r.status;
	res->bytes = r.body.len;
	res->body = xstrdup(r.body.p ? r.body.p : "");
	note("%-60s %-22s %.1f ms", label, cache, res->med);
	conn_close(&c);
	free(c.in.p);
	free(r.body.p);
	return res;
}

/* The run's highest step, from GET /v1/runs/<run>. */
static int64_t run_latest_step(void)
{
	struct resp r = { 0 };
	const char *p;
	int64_t max;
	int rc;

	qconn.port = port_now();
	rc = http_do(&qconn, "GET", run_path, NULL, NULL, 0, &r, opt.timeout);
	if (rc < 0)
		die("GET %s: %s", run_path, strerror(-rc));
	if (r.status != 200)
		die("GET %s: HTTP %d %.500s", run_path, r.status, r.body.p);
	p = strstr(r.body.p, "\"steps\":");
	p = p ? strstr(p, "\"max\":") : NULL;
	if (p == NULL)
		die("GET %s: no steps.max in %.300s", run_path, r.body.p);
	max = strtoll(p + 6, NULL, 10);
	free(r.body.p);
	return max;
}

/* ------------------------------------------------------------------------ */
/* the report */

static void machine_line(void)
{
	char line[512], model[256];
	double mem_gib = 0;
	struct utsname u;
	FILE *f;

	cpu_model(model, sizeof(model));
	f = fopen("/proc/meminfo", "re");
	if (f != NULL) {
		while (fgets(line, sizeof(line), f))
			if (strncmp(line, "MemTotal:", 9) == 0)
				mem_gib = strtod(line + 9, NULL) / 1048576.0;
		fclose(f);
	}
	if (uname(&u) != 0)
		snprintf(u.release, sizeof(u.release), "?");
	printf("- machine: %ld CPUs online (nproc), %s, %.1f GiB RAM, Linux %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), model, mem_gib, u.release);
}

static void command_line(int argc, char **argv)
{
	int i;

	printf("- command: `");
	for (i = 0; i < argc; i++)
		printf("%s%s", i ? " " : "", argv[i]);
	printf("`\n");
}

static void print_table(void)
{
	size_t i;

	printf("\n| # | query (`/v1/runs/{run}/...`) | replay cache | n | min ms | median ms | max "
	       "ms "
	       "| server CPU ms (median) | response bytes |\n");
	printf("|---|---|---|--:|--:|--:|--:|--:|--:|\n");
	for (i = 0; i < n_results; i++) {
		const struct result *r = &results[i];
		char cpu[32];

		if (r->cpu_med >= 0)
			snprintf(cpu, sizeof(cpu), "%.0f", r->cpu_med);
		else
			snprintf(cpu, sizeof(cpu), "n/a");
		printf("| %zu | `%s`%s | %s | %u | %.1f | %.1f | %.1f | %s | %zu%s |\n", i + 1,
		       r->query, r->status == 200 ? "" : " **(error)**", r->cache, r->n, r->min,
		       r->med, r->max, cpu, r->bytes, r->status == 200 ? "" : "");
	}
}

/* ------------------------------------------------------------------------ */

int main(int argc, char **argv)
{
	char version[512], q[512];
	struct result *r, *cold01, *cold001, *late01 = NULL;
	double start_s, restart_s = -1, stop_s = -1, rss = -1, hwm = -1, rss_restart = -1,
			hwm_restart = -1;
	double final_db = -1;
	int64_t latest, older, late_step;
	bool spawned;
	unsigned mism = 0, checked = 0;
	size_t i;

	die_cleanup = cleanup; /* die() stops the daemon and removes the temporary files */
	setvbuf(stdout, NULL, _IOLBF, 0);
	parse_args(argc, argv);
	layers_init();
	population_init();
	spawned = opt.url == NULL;
	snprintf(run_path, sizeof(run_path), "/v1/runs/%s", opt.run);
	signal(SIGPIPE, SIG_IGN);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);

	fillres.estimate = (double)opt.steps * bytes_per_step(true);
	if (spawned) {
		if (access(opt.bnstatd, X_OK) != 0)
			die("cannot run bnstatd at %s (use --bnstatd PATH or $BNSTATD)",
			    opt.bnstatd);
		setup_paths();
		if (!opt.no_fill)
			check_disk(fillres.estimate);
		daemon_version(version, sizeof(version));
		start_s = now_s();
		daemon_start();
		note("bnstatd pid %d listening on 127.0.0.1:%u (db %s, started in %.2f s)",
		     (int)daemon_pid, daemon_port, db_path, now_s() - start_s);
	} else {
		snprintf(version, sizeof(version), "running at %s", opt.url);
		note("using the bnstatd at %s (no disk check: the database is not ours to see)",
		     opt.url);
	}

	if (!opt.no_fill) {
		fill();
		if (spawned) {
			char wal[PATH_MAX + 8];

			snprintf(wal, sizeof(wal), "%s-wal", db_path);
			fillres.db_main = file_bytes(db_path);
			fillres.db_wal = file_bytes(wal);
		}
		note("fill: %llu uploads in %.1f s = %.1f uploads/s; database %.2f GB + WAL %.2f "
		     "GB",
		     fillres.uploads, fillres.seconds, (double)fillres.uploads / fillres.seconds,
		     fillres.db_main / 1e9, fillres.db_wal / 1e9);
	}
	latest = run_latest_step();
	if (opt.no_fill)
		opt.steps = (unsigned long long)latest + 1;
	else if (latest != (int64_t)opt.steps - 1)
		note("the run's last step is %" PRId64 ", not %llu: it had data before", latest,
		     opt.steps - 1);
	older = latest / 4;
	late_step = latest / 2;
	if (older <= 0 || older >= latest)
		older = latest > 0 ? latest - 1 : 0;

	/* 1. the worker EMA; 5. stats as the reference */
	measure("compare?ema=worker&window=100", "n/a", opt.reps, NULL);
	measure("stats?window=100", "n/a", opt.reps, NULL);

	/* 2. the simulated EMA, momentum 0.1: cold, warm, older step */
	cold01 = measure("compare?ema=sim&momentum=0.1&window=100", "cold (first query)", 1, NULL);
	measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, cold01->body);
	snprintf(q, sizeof(q), "compare?ema=sim&momentum=0.1&window=100&step=%" PRId64, older);
	measure(q, "warm", opt.reps, NULL);

	/* 3. a second momentum */
	cold001 =
		measure("compare?ema=sim&momentum=0.01&window=100", "cold (new momentum)", 1, NULL);
	measure("compare?ema=sim&momentum=0.01&window=100", "warm", opt.reps, cold001->body);
	daemon_rss(&rss, &hwm);

	/* 4. series over the whole run */
	measure("series?layer=layer4.2.bn3&channel=7", "n/a (replays 1 channel)", opt.reps, NULL);
	measure("series?layer=layer4.2.bn3&channel=7&points=500", "n/a (replays 1 channel)",
		opt.reps, NULL);
	measure("series?layer=bn1&channel=7", "n/a (replays 1 channel)", opt.reps, NULL);

	/* 6. a late upload into step N/2, then the simulated EMA again */
	if (!opt.no_late) {
		float *v = xmalloc(2 * n_channels * sizeof(float));
		struct sbuf body = { 0 }, hdr = { 0 };
		/* a new identity on every run of the benchmark, so that it is never a duplicate */
		struct batch x = { "late", late_step, (int64_t)time(NULL), v, v + n_channels,
				   NULL,   NULL };
		char label[128];

		gen_step(1, late_step, v, v + n_channels);
		body_of(used_form, &body, &hdr, &x);
		snprintf(label, sizeof(label), "POST batches (late: step %" PRId64 ", worker late)",
			 late_step);
		measure_upload(label, "invalidates >= step", &body);
		late01 = measure("compare?ema=sim&momentum=0.1&window=100", "after the late upload",
				 1, NULL);
		measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, late01->body);
		free(v);
		free(body.p);
		free(hdr.p);
	}

	/* 2'. after a restart: the cache is empty; the full replay must agree */
	if (spawned && !opt.no_restart) {
		double t0 = now_s();

		conn_close(&qconn);
		daemon_stop(120);
		stop_s = now_s() - t0;
		t0 = now_s();
		daemon_start();
		restart_s = now_s() - t0;
		note("restarted bnstatd: stop %.2f s, start %.2f s (pid %d, port %u)", stop_s,
		     restart_s, (int)daemon_pid, daemon_port);
		r = measure("compare?ema=sim&momentum=0.1&window=100", "cold (after restart)", 1,
			    late01 ? late01->body : cold01->body);
		measure("compare?ema=sim&momentum=0.1&window=100", "warm", opt.reps, r->body);
		daemon_rss(&rss_restart, &hwm_restart);
	}
	conn_close(&qconn);

	for (i = 0; i < n_results; i++) {
		if (results[i].checked) {
			checked++;
			mism += results[i].mismatches;
		}
	}
	if (spawned) {
		char wal[PATH_MAX + 8];

		daemon_stop(120);
		snprintf(wal, sizeof(wal), "%s-wal", db_path);
		final_db = file_bytes(db_path) + file_bytes(wal);
	}

	/* the report */
	printf("### Query latency: %llu steps of ResNet-50 (bench_query)\n\n", opt.steps);
	machine_line();
	printf("- bnstatd: `%s`", version);
	if (spawned) {
		printf(", spawned with `--listen 127.0.0.1:0");
		if (opt.replay_cache_mb)
			printf(" --replay-cache-mb %u", opt.replay_cache_mb);
		for (i = 0; i < opt.n_daemon_args; i++)
			printf(" %s", opt.daemon_args[i]);
		printf("` (other options default)");
	}
	printf("\n");
	command_line(argc, argv);
	printf("- run `%s`: %llu steps (0..%" PRId64 ") x %zu BatchNorm layers (%zu channels), one "
	       "upload a step (worker rank0, seq 0, count 32*H*W, with ema_mean/ema_var = "
	       "PyTorch's "
	       "momentum-0.1 EMA of the batches)%s\n",
	       opt.run, opt.steps, latest, (size_t)N_LAYERS, n_channels,
	       opt.no_fill ? " -- as an earlier bench_query filled it (--no-fill)" : "");
	if (fillres.done) {
		printf("- fill: %llu uploads as %s, %u connections (contiguous ranges of steps, "
		       "keep-alive): %.1f s, **%.1f uploads/s** (%.1f MB/s of bodies)",
		       fillres.uploads, form_note, opt.conns, fillres.seconds,
		       (double)fillres.uploads / fillres.seconds,
		       fillres.body_mb / fillres.seconds);
		if (fillres.dups)
			printf("; %llu duplicates", fillres.dups);
		if (fillres.retries)
			printf("; %llu retries after 503", fillres.retries);
		printf("\n");
		if (spawned)
			printf("- database after the fill: **%.2f GB** (main file %.2f GB + WAL "
			       "%.2f GB) = "
			       "%.0f KB a step (estimate %.0f KB: 7 arrays of doubles a channel, 5 "
			       "for the "
			       "statistics and 2 for the worker EMA); %.2f GB after the clean "
			       "shutdown\n",
			       (fillres.db_main + fillres.db_wal) / 1e9, fillres.db_main / 1e9,
			       fillres.db_wal / 1e9,
			       (fillres.db_main + fillres.db_wal) / (double)opt.steps / 1e3,
			       fillres.estimate / (double)opt.steps / 1e3, final_db / 1e9);
	} else if (spawned) {
		printf("- no fill (--no-fill); database %.2f GB\n", final_db / 1e9);
	}
	printf("- queries: wall clock from writing the request to reading the whole answer, one "
	       "keep-alive connection, one request at a time; warm rows repeat %u times. The step "
	       "is the "
	       "latest (%" PRId64 ") unless given; the older step is %" PRId64 "",
	       opt.reps, latest, older);
	if (!opt.no_late)
		printf("; the late upload goes to step %" PRId64 "", late_step);
	printf(".\n");
	if (rss >= 0)
		printf("- bnstatd memory after both momenta were replayed: RSS %.0f MiB (peak %.0f "
		       "MiB)",
		       rss, hwm);
	if (rss_restart >= 0)
		printf("; after the restart and one momentum: RSS %.0f MiB", rss_restart);
	if (rss >= 0)
		printf("\n");
	if (restart_s >= 0)
		printf("- restart: SIGTERM to exit %.2f s, start to listening %.2f s\n", stop_s,
		       restart_s);
	printf("- exactness: %u rows compared byte for byte with the answer they must equal (warm "
	       "= "
	       "cold%s): %s\n",
	       checked,
	       restart_s >= 0 && !opt.no_late ? "; after the restart, the full replay = the replay "
						"resumed after the late upload"
					      : "",
	       mism == 0 ? "all equal" : "**SOME DIFFER**");
	print_table();
	printf("\n");

	cleanup();
	return mism == 0 ? 0 : 1;
}
