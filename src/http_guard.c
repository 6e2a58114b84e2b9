/*
 * http_guard: what keeps hostile or broken clients from holding the server
 * (docs/OPERATIONS.md, "Limits and hostile clients"): a deadline for each
 * request's headers, a minimum rate for its body, and the global budget of
 * request bodies held in memory.
 *
 * libmicrohttpd 0.9.75 only knows an idle timeout, which a client that
 * sends a byte every few seconds never reaches. So every connection is
 * registered here (from the daemon's connection callback) with the phase
 * its request is in, and a thread of our own looks at them four times a
 * second: a connection past its phase's deadline is shut down (shutdown(2)
 * on its socket, under the lock that its close callback takes, so the * descriptor cannot have been
 * closed and reused meanwhile), and libmicrohttpd then closes it as it would for a client that went
 * away.
 *
 * The deadline frees a slot, but a client that reconnects at once takes it
 * again; so the last eighth of max_connections is kept for addresses that
 * hold fewer than GUARD_FEW connections (the accept policy below), and a
 * few busy addresses cannot lock everyone else out.
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "http_private.h"
#include "log.h"

#define GUARD_TICK_MS 250
#define GUARD_FEW 4 /* connections an address may hold and still get a kept slot */
struct http_conn {
	struct http_conn *prev, *next;
	int fd;
	enum http_phase phase;
	double since;		 /* monotonic seconds the phase began */
	_Atomic size_t body_len; /* bytes of the body read in HTTP_PHASE_BODY */
	bool cut;		 /* shut down already */
	unsigned char addr[16];	 /* the client's address (addr_key()) */
	size_t addr_len;
};

struct http_guard {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t thread;
	bool stop;
	struct http_conn *head;
	unsigned n_conns;	 /* in the list */
	unsigned long n_refused; /* by the accept policy since the last log line */
	struct http_guard_options opt;
	_Atomic size_t body_bytes; /* reserved by requests in flight */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The bytes of sa's address (not its port) in key[16]; returns their count. */
static size_t addr_key(const struct sockaddr *sa, unsigned char key[16])
{
	if (sa != NULL && sa->sa_family == AF_INET) {
		memcpy(key, &((const struct sockaddr_in *)(const void *)sa)->sin_addr, 4);
		return 4;
	}
	if (sa != NULL && sa->sa_family == AF_INET6) {
		memcpy(key, &((const struct sockaddr_in6 *)(const void *)sa)->sin6_addr, 16);
		return 16;
	}
	return 0;
}

/* Is c past its phase's deadline at time t? Called with g->mu held. */
static bool overdue(const struct http_guard *g, const struct http_conn *c, double t)
{
	double e = t - c->since;

	switch (c->phase) {
	case HTTP_PHASE_HEADERS:
		return e > g->opt.header_timeout_s;
	case HTTP_PHASE_IDLE:
		/* an idle client sends nothing and meets libmicrohttpd's own timeout */ return e >
			g->opt.idle_timeout_s;
	case HTTP_PHASE_BODY:
		return g->opt.body_min_rate > 0 && e > g->opt.header_timeout_s &&
		       (double)atomic_load(&c->body_len) < (double)g->opt.body_min_rate * e;
	case HTTP_PHASE_HANDLING:
		return false;
	}
	return false;
}

static void *guard_main(void *arg)
{
	struct http_guard *g = arg;

	pthread_mutex_lock(&g->mu);
	while (!g->stop) {
		struct timespec until;
		unsigned long n_headers = 0, n_idle = 0, n_body = 0, n_refused;
		unsigned n_open;
		double t = now_s();

		for (struct http_conn *c = g->head; c != NULL; c = c->next) {
			if (c->cut || !overdue(g, c, t))
				continue;
			c->cut = true;
			shutdown(c->fd, SHUT_RDWR);
			if (c->phase == HTTP_PHASE_HEADERS)
				n_headers++;
			else if (c->phase == HTTP_PHASE_IDLE)
				n_idle++;
			else
				n_body++;
		}
		n_refused = g->n_refused;
		n_open = g->n_conns;
		g->n_refused = 0;
		/* one line a tick, not one per connection: a flood stays a few lines */
		pthread_mutex_unlock(&g->mu);
		if (n_headers + n_idle + n_body > 0)
			log_info("connections_closed",
				 "header_timeout=%lu idle_trickle=%lu body_too_slow=%lu", n_headers,
				 n_idle, n_body);
		if (n_refused > 0)
			log_info("connections_refused", "reason=reserve refused=%lu open=%u",
				 n_refused, n_open);
		pthread_mutex_lock(&g->mu);
		if (g->stop)
			break;
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += GUARD_TICK_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&g->cv, &g->mu, &until);
	}
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

int http_guard_start(const struct http_guard_options *o, struct http_guard **out)
{
	struct http_guard *g = calloc(1, sizeof(*g));

	*out = NULL;
	if (g == NULL)
		return -ENOMEM;
	g->opt = *o;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	if (pthread_create(&g->thread, NULL, guard_main, g) != 0) {
		pthread_cond_destroy(&g->cv);
		pthread_mutex_destroy(&g->mu);
		free(g);
		return -EAGAIN;
	}
	*out = g;
	return 0;
}

void http_guard_stop(struct http_guard *g)
{
	if (g == NULL)
		return;
	pthread_mutex_lock(&g->mu);
	g->stop = true;
	pthread_cond_signal(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(g->thread, NULL);
	while (g->head != NULL) { /* none left once libmicrohttpd has stopped */
		struct http_conn *c = g->head;

		g->head = c->next;
		free(c);
	}
	pthread_cond_destroy(&g->cv);
	pthread_mutex_destroy(&g->mu);
	free(g);
}

bool http_guard_admit(struct http_guard *g, const struct sockaddr *addr)
{
	unsigned char key[16];
	size_t len = addr_key(addr, key);
	unsigned reserve = g->opt.max_connections / 8, held = 0;
	bool ok = true;

	pthread_mutex_lock(&g->mu);
	if (g->n_conns + reserve >= g->opt.max_connections) {
		for (const struct http_conn *c = g->head; c != NULL && held < GUARD_FEW;
		     c = c->next)
			held += c->addr_len == len && memcmp(c->addr, key, len) == 0;
		ok = held < GUARD_FEW;
		if (!ok)
			g->n_refused++;
	}
	pthread_mutex_unlock(&g->mu);
	return ok;
}

struct http_conn *http_guard_open(struct http_guard *g, int fd, const struct sockaddr *addr)
{
	struct http_conn *c = calloc(1, sizeof(*c));

	if (c == NULL)
		return NULL;
	c->fd = fd;
	c->addr_len = addr_key(addr, c->addr);
	c->phase = HTTP_PHASE_HEADERS;
	c->since = now_s();
	pthread_mutex_lock(&g->mu);
	c->next = g->head;
	if (g->head != NULL)
		g->head->prev = c;
	g->head = c;
	g->n_conns++;
	pthread_mutex_unlock(&g->mu);
	return c;
}

void http_guard_close(struct http_guard *g, struct http_conn *c)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&g->mu);
	if (c->prev != NULL)
		c->prev->next = c->next;
	else
		g->head = c->next;
	if (c->next != NULL)
		c->next->prev = c->prev;
	g->n_conns--;
	pthread_mutex_unlock(&g->mu);
	free(c);
}

void http_guard_phase(struct http_guard *g, struct http_conn *c, enum http_phase p)
{
	if (c == NULL)
		return;
	pthread_mutex_lock(&g->mu);
	/* the request line of a keep-alive request: its headers' clock starts now */
	if (!(p == HTTP_PHASE_HEADERS && c->phase == HTTP_PHASE_HEADERS)) {
		c->phase = p;
		c->since = now_s();
		atomic_store(&c->body_len, 0);
	}
	pthread_mutex_unlock(&g->mu);
}

void http_guard_body(struct http_conn *c, size_t n)
{
	if (c != NULL)
		atomic_fetch_add(&c->body_len, n);
}

bool http_guard_reserve(struct http_guard *g, size_t n)
{
	size_t cur = atomic_load(&g->body_bytes);

	do {
		if (n > g->opt.body_memory_max || cur > g->opt.body_memory_max - n)
			return false;
	} while (!atomic_compare_exchange_weak(&g->body_bytes, &cur, cur + n));
	return true;
}

void http_guard_release(struct http_guard *g, size_t n)
{
	atomic_fetch_sub(&g->body_bytes, n);
}
