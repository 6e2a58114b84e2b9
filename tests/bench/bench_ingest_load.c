/*
 * bench_ingest_load.c: the load generator of the ingest benchmark. A cell
 * is one target, one body form, one concurrency: N workers on N
 * keep-alive connections, spread over --client-threads threads, each
 * thread driving its raw non-blocking sockets with epoll and sending the
 * pre-rendered bodies with writev. Every worker sends its batches of step
 * s, then all wait at a barrier, then step s+1, as in training.
 */
#include "bench_ingest.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/epoll.h>

#include "bench_http.h"
#include "bench_proc.h"
#include "bench_stats.h"
#include "bench_util.h"

uint8_t *ack_at(struct cell *c, size_t step, unsigned worker, unsigned seq)
{
	return &c->ack[(step * c->conns + worker) * c->k + seq];
}

/* CPU seconds of the server so far: the sink's threads, or the whole daemon
 * (utime + stime of /proc/<pid>/stat, in clock ticks); < 0 when unknown. */
static double cell_server_cpu_s(const struct cell *c)
{
	long long t;

	if (c->target == T_SINK)
		return sink_cpu_s(c->sink);
	t = daemon_cpu_ticks(c->daemon);
	return t < 0 ? -1 : (double)t / (double)sysconf(_SC_CLK_TCK);
}

static int conn_open(struct client *cl, struct conn *c)
{
	struct epoll_event ev;

	c->fd = tcp_connect(cl->cell->port, true);
	if (c->fd < 0)
		return -1;
	ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	return 0;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	c->state = C_IDLE;
}

/* Try to read the reply. 1: complete; 0: more to come; -1: broken. */
static int conn_recv(struct conn *c, struct http_reply *r)
{
	for (;;) {
		ssize_t n;
		int rc;

		if (c->rlen >= sizeof(c->rbuf) - 1)
			return -1; /* our replies are small */
		n = read(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - 1 - c->rlen);
		if (n > 0) {
			c->rlen += (size_t)n;
			c->rbuf[c->rlen] = '\0';
			rc = http_parse(c->rbuf, c->rlen, r);
			if (rc != 0)
				return rc;
			continue;
		}
		if (n == 0)
			return -1;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
	}
}

/* Send what the socket takes. 1: all sent; 0: wait; -1: broken. */
static int conn_send(struct conn *c)
{
	while (c->iov_i < c->req.iovcnt) {
		ssize_t n = writev(c->fd, c->req.iov + c->iov_i, c->req.iovcnt - c->iov_i);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
		}
		while (n > 0 && c->iov_i < c->req.iovcnt) {
			struct iovec *v = &c->req.iov[c->iov_i];

			if ((size_t)n >= v->iov_len) {
				n -= (ssize_t)v->iov_len;
				v->iov_len = 0;
				c->iov_i++;
			} else {
				v->iov_base = (char *)v->iov_base + n;
				v->iov_len -= (size_t)n;
				n = 0;
			}
		}
		while (c->iov_i < c->req.iovcnt && c->req.iov[c->iov_i].iov_len == 0)
			c->iov_i++;
	}
	return 1;
}

static void client_record(struct client *cl, struct conn *c, int rc, const struct http_reply *r)
{
	struct cell *cell = cl->cell;
	uint8_t *a = ack_at(cell, (size_t)c->step, c->worker, c->seq);

	cl->done++;
	if (rc == 1) {
		double ms = (now_s() - c->t_start) * 1e3;

		if (cl->n_lat == cl->cap_lat) {
			cl->cap_lat = cl->cap_lat ? 2 * cl->cap_lat : 1024;
			cl->lat = xrealloc(cl->lat, cl->cap_lat * sizeof(double));
		}
		cl->lat[cl->n_lat++] = ms;
		cl->bytes += c->req.body_len;
		if (r->status >= 0 && r->status < STATUS_MAX)
			cl->status[r->status]++;
		if (r->status == 200) {
			cl->ok++;
			*a = ACK_OK;
			if (memmem(c->rbuf + r->head_len, r->content_length, "\"duplicate\":true",
				   16))
				cl->dup++;
		} else {
			size_t n = r->content_length < sizeof(cl->last_err) - 1
					   ? r->content_length
					   : sizeof(cl->last_err) - 1;

			cl->http_err++;
			*a = ACK_NONE; /* a rejected upload stores nothing */
			memcpy(cl->last_err, c->rbuf + r->head_len, n);
			cl->last_err[n] = '\0';
		}
		if (r->close)
			conn_close(c);
		else
			c->state = C_IDLE;
	} else {
		/* the connection broke: whether the server stored it is unknown */
		cl->io_err++;
		*a = ACK_UNKNOWN;
		snprintf(cl->last_err, sizeof(cl->last_err),
			 "connection broken (worker %u, step %" PRId64 ", seq %u)", c->worker,
			 c->step, c->seq);
		conn_close(c);
	}
}

/*
 * Start (and push as far as it goes) the upload of c->seq at step. Returns
 * 0 when in flight, 1 when it already finished (recorded), -1 when it could
 * not even start (recorded as an I/O error).
 */
static int conn_start(struct client *cl, struct conn *c, int64_t step)
{
	struct http_reply r;
	int rc;

	if (c->fd < 0 && conn_open(cl, c) < 0) {
		c->step = step;
		client_record(cl, c, -1, NULL);
		return -1;
	}
	c->step = step;
	request_build(&c->req, cl->cell->form, cl->cell->run, cl->cell->port, c->worker, step,
		      c->seq);
	c->iov_i = 0;
	c->rlen = 0;
	c->state = C_SEND;
	c->t_start = now_s();
	rc = conn_send(c);
	if (rc == 0)
		return 0;
	if (rc == 1) {
		c->state = C_RECV;
		rc = conn_recv(c, &r);
		if (rc == 0)
			return 0;
		client_record(cl, c, rc, &r);
		return 1;
	}
	/* the send failed: the server may have answered early and closed */
	rc = conn_recv(c, &r);
	client_record(cl, c, rc == 1 ? 1 : -1, &r);
	return 1;
}

/* Make progress on c after an event. Returns 1 when its request finished. */
static int conn_progress(struct client *cl, struct conn *c, uint32_t events)
{
	struct http_reply r;
	int rc;

	if (c->state == C_SEND) {
		rc = conn_send(c);
		if (rc == 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
			/* an early reply (e.g. 413) while we still send */
			rc = conn_recv(c, &r);
			if (rc == 1) {
				r.close = true;
				client_record(cl, c, 1, &r);
				return 1;
			}
		}
		if (rc == 0)
			return 0;
		if (rc < 0) {
			rc = conn_recv(c, &r);
			client_record(cl, c, rc == 1 ? 1 : -1, &r);
			return 1;
		}
		c->state = C_RECV;
	}
	if (c->state != C_RECV)
		return 0;
	rc = conn_recv(c, &r);
	if (rc == 0)
		return 0;
	client_record(cl, c, rc, &r);
	return 1;
}

/* All of this thread's workers upload their k batches of one step. */
static void client_step(struct client *cl, int64_t step)
{
	struct epoll_event evs[64];
	size_t pending = 0, i;
	unsigned k = cl->cell->k;

	for (i = 0; i < cl->n; i++) {
		struct conn *c = &cl->conns[i];

		for (c->seq = 0; c->seq < k; c->seq++)
			if (conn_start(cl, c, step) == 0)
				break;
		if (c->seq < k)
			pending++;
	}
	while (pending > 0) {
		int n = epoll_wait(cl->ep, evs, 64, 250), e;
		double now;

		for (e = 0; e < n; e++) {
			struct conn *c = evs[e].data.ptr;

			if (c->state == C_IDLE || conn_progress(cl, c, evs[e].events) == 0)
				continue;
			/* finished: the next batch of this worker, or done for the step */
			for (c->seq++; c->seq < k; c->seq++)
				if (conn_start(cl, c, step) == 0)
					break;
			if (c->seq >= k)
				pending--;
		}
		now = now_s();
		for (i = 0; i < cl->n; i++) {
			struct conn *c = &cl->conns[i];

			if (c->state == C_IDLE || now - c->t_start < opt.timeout)
				continue;
			client_record(cl, c, -1, NULL); /* timed out */
			for (c->seq++; c->seq < k; c->seq++)
				if (conn_start(cl, c, step) == 0)
					break;
			if (c->seq >= k)
				pending--;
		}
	}
}

static uint64_t cell_sum_done(const struct cell *c)
{
	uint64_t s = 0;
	size_t i;

	for (i = 0; i < c->n_clients; i++)
		s += c->clients[i].done;
	return s;
}

/* Between two steps, on the one thread the barrier picked. */
static void cell_between_steps(struct cell *c, size_t step)
{
	double now = now_s();
	uint64_t done = cell_sum_done(c), ok_in_step = 0;
	unsigned w, s;

	c->steps_done = step + 1;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			ok_in_step += *ack_at(c, step, w, s) == ACK_OK;
	if (ok_in_step == 0)
		c->broken = true; /* nothing went through: stop, do not spin */
	if (c->rss_every > 0 && c->daemon != NULL && done >= c->rss_next && c->n_rss < 63) {
		c->rss_at[c->n_rss] = done;
		c->rss_kb[c->n_rss++] = proc_status_kb(c->daemon->pid, "VmRSS");
		c->rss_next += c->rss_every;
	}
	if (c->broken || now - c->t0 >= c->seconds ||
	    (c->max_uploads > 0 && done >= c->max_uploads)) {
		c->stop = true;
		c->t1 = now;
		c->cpu1 = cell_server_cpu_s(c);
		return;
	}
	if (c->steps_done + 1 > c->steps_cap) {
		size_t old = c->steps_cap, per = (size_t)c->conns * c->k;

		c->steps_cap *= 2;
		c->ack = xrealloc(c->ack, c->steps_cap * per);
		memset(c->ack + old * per, 0, (c->steps_cap - old) * per);
	}
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct cell *c = cl->cell;
	double cpu0;
	size_t i, step;

	cl->ep = epoll_create1(EPOLL_CLOEXEC);
	if (cl->ep < 0)
		die("epoll_create1: %s", strerror(errno));
	for (i = 0; i < cl->n; i++)
		if (conn_open(cl, &cl->conns[i]) < 0)
			note("cannot connect to 127.0.0.1:%u: %s", c->port, strerror(errno));
	if (pthread_barrier_wait(&c->bar) == PTHREAD_BARRIER_SERIAL_THREAD) {
		c->t0 = now_s();
		c->cpu0 = cell_server_cpu_s(c);
	}
	pthread_barrier_wait(&c->bar);
	cpu0 = thread_cpu_s();
	for (step = 0;; step++) {
		client_step(cl, (int64_t)step);
		if (pthread_barrier_wait(&c->bar) == PTHREAD_BARRIER_SERIAL_THREAD)
			cell_between_steps(c, step);
		pthread_barrier_wait(&c->bar);
		if (c->stop)
			break;
	}
	cl->cpu_s = thread_cpu_s() - cpu0;
	for (i = 0; i < cl->n; i++)
		conn_close(&cl->conns[i]);
	close(cl->ep);
	return NULL;
}

void cell_run(struct cell *c)
{
	size_t t, i, nt = c->conns < opt.client_threads ? c->conns : opt.client_threads;
	double *all;
	size_t n_all = 0;

	c->n_clients = nt;
	c->clients = xcalloc(nt, sizeof(*c->clients));
	c->steps_cap = 64;
	c->ack = xcalloc(c->steps_cap * c->conns * c->k, 1);
	if (pthread_barrier_init(&c->bar, NULL, (unsigned)nt) != 0)
		die("pthread_barrier_init");
	for (t = 0; t < nt; t++) {
		struct client *cl = &c->clients[t];

		cl->cell = c;
		cl->conns = xcalloc((c->conns + nt - 1) / nt, sizeof(struct conn));
		for (i = t; i < c->conns; i += nt) {
			struct conn *cn = &cl->conns[cl->n++];

			cn->fd = -1;
			cn->worker = (unsigned)i;
		}
	}
	for (t = 0; t < nt; t++)
		if (pthread_create(&c->clients[t].thread, NULL, client_main, &c->clients[t]) != 0)
			die("pthread_create");
	for (t = 0; t < nt; t++)
		pthread_join(c->clients[t].thread, NULL);
	pthread_barrier_destroy(&c->bar);

	c->elapsed = c->t1 - c->t0;
	for (t = 0; t < nt; t++) {
		struct client *cl = &c->clients[t];

		c->done += cl->done;
		c->ok += cl->ok;
		c->dup += cl->dup;
		c->http_err += cl->http_err;
		c->io_err += cl->io_err;
		c->bytes += cl->bytes;
		c->client_cpu_s += cl->cpu_s;
		for (i = 0; i < STATUS_MAX; i++)
			c->status[i] += cl->status[i];
		if (cl->last_err[0])
			memcpy(c->last_err, cl->last_err, sizeof(c->last_err));
		n_all += cl->n_lat;
	}
	all = xmalloc(n_all * sizeof(double));
	n_all = 0;
	for (t = 0; t < nt; t++) {
		memcpy(all + n_all, c->clients[t].lat, c->clients[t].n_lat * sizeof(double));
		n_all += c->clients[t].n_lat;
		free(c->clients[t].lat);
		free(c->clients[t].conns);
	}
	qsort(all, n_all, sizeof(double), cmp_double);
	c->p50 = stats_percentile(all, n_all, 0.50);
	c->p99 = stats_percentile(all, n_all, 0.99);
	free(all);
	c->server_cpu_s = c->cpu0 >= 0 && c->cpu1 >= 0 ? c->cpu1 - c->cpu0 : NAN;
}

void cell_free(struct cell *c)
{
	free(c->clients);
	free(c->ack);
	c->clients = NULL;
	c->ack = NULL;
}

void cell_setup(struct cell *c, enum target t, enum form f, unsigned conns, unsigned port)
{
	memset(c, 0, sizeof(*c));
	c->target = t;
	c->form = f;
	c->conns = conns;
	c->k = opt.batches_per_step;
	c->port = port;
	c->seconds = opt.seconds;
	c->max_uploads = opt.uploads;
	c->cpu0 = c->cpu1 = -1;
	snprintf(c->run, sizeof(c->run), "bench-%s-c%u", form_names[f], conns);
}
