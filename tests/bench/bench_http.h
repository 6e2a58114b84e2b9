/*
 * bench_http.h: the HTTP/1.1 clients of the benchmarks, to 127.0.0.1 only.
 *
 *   - tcp_connect() and http_parse(): the pieces the ingest load generator
 *     (bench_ingest_load.c) drives on its own non-blocking sockets;
 *   - http_simple(): one blocking request on its own connection (bench's
 *     probe and correctness check).
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

#endif /* BENCH_HTTP_H */
