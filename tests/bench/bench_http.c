/*
 * bench_http.c: the benchmarks' HTTP/1.1 clients to 127.0.0.1 (bench_http.h).
 */
#include "bench_http.h"

#include <errno.h>
#include <fcntl.h>
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

#include "bench_util.h"

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
