/*
 * bench_http.h: the HTTP/1.1 clients of the benchmarks, to 127.0.0.1 only.
 *
 *   - tcp_connect() and http_parse(): the pieces the ingest load generator
 *     (bench_ingest_load.c) drives on its own non-blocking sockets;
 *   - http_simple(): one blocking request on its own connection (bench's
 *     probe and correctness check);
 *   - http_do(): requests on a kept-alive connection with a deadline,
 *     chunked or sized bodies (bench_query's fill and queries).
 */
#ifndef BENCH_HTTP_H
#define BENCH_HTTP_H

#include <stdbool.h>
#include <stddef.h>

#include "bench_sbuf.h"

/*
 * A socket connected to 127.0.0.1:port with TCP_NODELAY, non-blocking
 * when asked. Returns the fd (the caller closes it), -1 with errno set.
 */
int tcp_connect(unsigned port, bool nonblocking);

/* What http_parse() found in a response. */
struct http_reply {
	int status;
	size_t head_len, content_length;
	bool close;
};

/*
 * Parse a response held in buf[0..len). Returns 1 when it is complete
 * (filling *r), 0 when more bytes are needed, -1 when it is not HTTP we
 * understand (no Content-Length: MHD always sends one for our replies).
 * The body is buf[r->head_len .. r->head_len + r->content_length).
 */
int http_parse(const char *buf, size_t len, struct http_reply *r);

/*
 * A blocking request on its own connection (Connection: close), with
 * timeout_s on each send and receive. ctype and body may be NULL (no
 * body). The reply body replaces reply's contents (the caller owns
 * reply). Returns the HTTP status or -1.
 */
int http_simple(unsigned port, double timeout_s, const char *method, const char *path,
		const char *ctype, const void *body, size_t body_len, struct sbuf *reply);

/*
 * A kept-alive connection: fd is -1 while closed; in holds what was
 * received and not yet consumed. Zero it with fd = -1 and the port; free
 * in.p when done.
 */
struct http_conn {
	int fd;
	unsigned port;
	struct sbuf in; /* received, not yet consumed */
};

/* A response read by http_do(); body is the caller's to free. */
struct http_resp {
	int status;
	struct sbuf body;
	double retry_after;
};

/* Close c (if open) and drop what it had buffered. */
void http_conn_close(struct http_conn *c);

/* (Re)connect c to 127.0.0.1:c->port. 0, or -errno. */
int http_conn_open(struct http_conn *c);

/*
 * One request on c (connecting when closed) within timeout_s: body is
 * sent with Content-Type ctype when not NULL. The reply's status, body
 * (replacing r->body's contents; the caller owns and frees r->body.p) and
 * Retry-After go to *r. A request on a kept-alive connection that the
 * server closed meanwhile is sent once more on a new connection (uploads
 * are safe to resend: a batch identity is stored once). Returns 0 when a
 * response was read, else -errno (the connection is then closed).
 */
int http_do(struct http_conn *c, const char *method, const char *path, const char *ctype,
	    const void *body, size_t blen, struct http_resp *r, double timeout_s);

#endif /* BENCH_HTTP_H */
