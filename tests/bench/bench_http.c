/*
 * bench_http.c: the benchmarks' HTTP/1.1 clients to 127.0.0.1 (bench_http.h).
 */
#include "bench_http.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/uio.h>

#include "bench_util.h"

#define HEAD_MAX 65536
#define BODY_MAX ((size_t)1 << 31)

/* A connected socket with TCP_NODELAY; -1 with errno set on failure. */
int tcp_connect(unsigned port, bool nonblocking)
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

/*
 * Parse a response held in buf[0..len). Returns 1 when it is complete
 * (filling *r), 0 when more bytes are needed, -1 when it is not HTTP we
 * understand (no Content-Length: MHD always sends one for our replies).
 */
int http_parse(const char *buf, size_t len, struct http_reply *r)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4), *line;
	bool have_length = false;

	if (end == NULL)
		return 0;
	memset(r, 0, sizeof(*r));
	r->head_len = (size_t)(end - buf) + 4;
	if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
		return -1;
	r->status = atoi(buf + 9);
	for (line = strstr(buf, "\r\n"); line != NULL && line < end;
	     line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;

		if (strncasecmp(h, "Content-Length:", 15) == 0) {
			r->content_length = strtoul(h + 15, NULL, 10);
			have_length = true;
		} else if (strncasecmp(h, "Connection:", 11) == 0) {
			const char *v = h + 11;

			while (*v == ' ')
				v++;
			if (strncasecmp(v, "close", 5) == 0)
				r->close = true;
		}
	}
	if (!have_length)
		return -1;
	return len >= r->head_len + r->content_length ? 1 : 0;
}

/*
 * A blocking request on its own connection (Connection: close), for the
 * probe and the correctness check. The reply body goes to *body. Returns
 * the status or -1.
 */
int http_simple(unsigned port, double timeout_s, const char *method, const char *path,
		const char *ctype, const void *body, size_t body_len, struct sbuf *reply)
{
	struct timeval tv = { .tv_sec = (time_t)timeout_s, .tv_usec = 0 };
	struct http_reply r;
	struct sbuf req = { 0 }, in = { 0 };
	size_t off = 0;
	int fd = tcp_connect(port, false), rc;

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	sb_printf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nConnection: close\r\n", method,
		  path, port);
	if (ctype != NULL)
		sb_printf(&req, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, body_len);
	sb_puts(&req, "\r\n");
	if (body != NULL)
		sb_add(&req, body, body_len);
	while (off < req.len) {
		ssize_t n = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* the server may have answered early; read it */
		off += (size_t)n;
	}
	for (;;) {
		ssize_t n;

		sb_reserve(&in, 65536);
		n = recv(fd, in.p + in.len, in.cap - in.len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		in.len += (size_t)n;
		in.p[in.len] = '\0';
		if (http_parse(in.p, in.len, &r) == 1)
			break;
	}
	close(fd);
	sb_free(&req);
	rc = in.len > 0 ? http_parse(in.p, in.len, &r) : -1;
	if (rc != 1) {
		sb_free(&in);
		return -1;
	}
	reply->len = 0;
	sb_add(reply, in.p + r.head_len, r.content_length);
	sb_free(&in);
	return r.status;
}

/* ---- the kept-alive client ---- */

void http_conn_close(struct http_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->in.len = 0;
}

int http_conn_open(struct http_conn *c)
{
	http_conn_close(c);
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
static ssize_t recv_more(struct http_conn *c, double deadline)
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

/* recv_more(), with the peer's close as -ECONNRESET: 0, or -errno. */
static int recv_some(struct http_conn *c, double deadline)
{
	ssize_t n = recv_more(c, deadline);

	if (n < 0)
		return (int)n;
	return n == 0 ? -ECONNRESET : 0;
}

/* Make sure c->in holds at least `need` bytes. */
static int recv_until(struct http_conn *c, size_t need, double deadline)
{
	while (c->in.len < need) {
		int rc;

		if (need > BODY_MAX)
			return -EFBIG;
		rc = recv_some(c, deadline);
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void consume(struct http_conn *c, size_t n)
{
	memmove(c->in.p, c->in.p + n, c->in.len - n);
	c->in.len -= n;
	c->in.p[c->in.len] = '\0';
}

/* Parse one response from c. *got_any says whether any byte arrived. */
static int read_response(struct http_conn *c, struct http_resp *r, double deadline, bool *got_any)
{
	char *eoh = NULL, *line;
	size_t head_len, clen = 0;
	bool has_clen = false, chunked = false, close_after = false;
	int rc;

	*got_any = c->in.len > 0;
	while ((eoh = c->in.len ? strstr(c->in.p, "\r\n\r\n") : NULL) == NULL) {
		if (c->in.len > HEAD_MAX)
			return -EPROTO;
		rc = recv_some(c, deadline);
		if (rc < 0)
			return rc;
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
				rc = recv_some(c, deadline);
				if (rc < 0)
					return rc;
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
		http_conn_close(c);
	return 0;
}

/*
 * One request. A request on a kept-alive connection that the server closed
 * meanwhile is sent once more on a new connection (uploads are safe to
 * resend: a batch identity is stored once).
 */
int http_do(struct http_conn *c, const char *method, const char *path, const char *ctype,
	    const void *body, size_t blen, struct http_resp *r, double timeout_s)
{
	double deadline = now_s() + timeout_s;
	int attempt, rc = 0;

	for (attempt = 0; attempt < 2; attempt++) {
		char head[1024];
		struct iovec iov[2];
		bool reused = c->fd >= 0, got_any = false;
		int n;

		if (!reused && (rc = http_conn_open(c)) < 0)
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
		http_conn_close(c);
		if (!reused || got_any || rc == -ETIMEDOUT)
			return rc;
	}
	return rc;
}
