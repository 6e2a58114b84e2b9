/*
 * http: the libmicrohttpd server that answers the endpoints of
 * docs/API.md. http.c holds the daemon, the connections and each request's
 * state; http_route.c parses a method and path into an endpoint;
 * http_handlers.c answers each endpoint; auth.c says who may call which.
 *
 * Bodies are read incrementally into the request's own buffer (refused with
 * 413 from Content-Length on the first call, and by counting bytes after),
 * within a budget shared by every body in flight; http_guard.c closes
 * connections whose headers or body trickle in (docs/OPERATIONS.md,
 * "Limits and hostile clients").
 * An upload is decoded on the connection's thread, queued for the store's
 * writer and the connection suspended until the writer reports the commit;
 * HTTP threads never wait on SQLite writes.
 */
#ifndef BNSTAT_HTTP_H
#define BNSTAT_HTTP_H

#include <stddef.h>

#include "bnstat/error.h"
#include "endpoint.h"
#include "bnstat/ingest.h"
#include "store.h"

/*
 * How to serve. http_start() copies the struct but not what its pointers
 * point to: the strings and auth are borrowed and must outlive the server.
 */
struct http_options {
	const char *host;	   /* numeric address or name to bind */
	unsigned port;		   /* 0: any free port (see http_port) */
	unsigned threads;	   /* libmicrohttpd thread pool size */
	size_t max_body;	   /* bytes; larger bodies get 413 */
	unsigned max_connections;  /* open connections at most */
	unsigned timeout_s;	   /* idle connection timeout */
	unsigned header_timeout_s; /* request line and headers complete within it */
	size_t body_min_rate;	   /* bytes/s a body must average; 0: no minimum */
	size_t body_memory_max;	   /* bytes of request bodies held at once */
	unsigned max_per_ip;	   /* connections per client address, 0: no limit */
	struct ingest_limits limits;
	struct auth *auth;	  /* bearer tokens; NULL: loopback clients only */
	const char *tls_cert_pem; /* PEM text; both set: HTTPS */
	const char *tls_key_pem;
	const char *ui_dir;	  /* the dashboard's files; NULL or "": none (404) */
	const char *dygraphs_dir; /* the dygraphs library, served as /ui/vendor/dygraphs/ */
};

struct http_server;

/*
 * Fill *o with the defaults (127.0.0.1:8650, 4 threads, 64 MiB bodies,
 * no token file: see docs/OPERATIONS.md, "Options and the config file").
 * The strings set are static.
 */
void http_options_default(struct http_options *o);

struct replay_cache;

/*
 * Bind o->host:o->port and start serving on libmicrohttpd's thread pool
 * with store s and the simulated-EMA cache replay (both borrowed; they, and
 * what o points to, must outlive the server). With o->tls_cert_pem and
 * o->tls_key_pem, HTTPS. On success *out is a new server owned by the
 * caller: stop it with http_stop(). Returns 0, or a negative errno with
 * *err filled in (*out NULL): a name that does not resolve, an address in
 * use, a TLS pair refused. Call from the main thread.
 */
int http_start(const struct http_options *o, struct store *s, struct replay_cache *replay,
	       struct http_server **out, struct bn_error *err);

/*
 * Check that PEM texts cert_pem and key_pem (borrowed for the call) are a
 * certificate and its key that the TLS library accepts, without listening
 * anywhere (for --test-config). Returns 0, or a negative errno with *err
 * filled in (400, path "tls-cert").
 */
int http_tls_check(const char *cert_pem, const char *key_pem, struct bn_error *err);

/* The port h actually bound (useful with port 0); h is borrowed, not NULL. */
unsigned http_port(const struct http_server *h);

/*
 * Stop accepting new connections and close the listening socket; requests
 * in flight and open connections go on. NULL is fine. Call from the thread
 * that will call http_stop(), not from a request.
 */
void http_quiesce(struct http_server *h);

/*
 * Wait up to timeout_ms for requests in flight to be answered (idle
 * keep-alive connections are not waited for), polling every 10 ms. Returns
 * the number still in flight. h is borrowed, not NULL; never call it from
 * a request, which would wait for itself.
 */
unsigned http_drain(struct http_server *h, unsigned timeout_ms);

/*
 * Stop the server, closing every connection (libmicrohttpd waits for its
 * threads), and free it; h is invalid afterwards. NULL is fine. Call from
 * the thread that started it, after the store's writer has answered every
 * job it was given (a suspended request is resumed by the writer).
 */
void http_stop(struct http_server *h);

#endif
