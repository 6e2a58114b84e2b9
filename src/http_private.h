/*
 * http_private: what the files of the http module share and nobody else
 * sees: the parsed route of a request (http_route.c, pure, no
 * libmicrohttpd in it, so that routing can be tested without a server),
 * the server and request state (http.c) and the handlers' entry point
 * (http_handlers.c).
 */
#ifndef BNSTAT_HTTP_PRIVATE_H
#define BNSTAT_HTTP_PRIVATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <time.h>

#include <jansson.h>
#include <microhttpd.h>

#include "bnstat/ingest.h"
#include "http.h"
#include "store.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result;
#else
typedef enum MHD_Result MHD_Result;
#endif

/* The longest {path} below /ui/ that names a file of the dashboard. */
#define HTTP_ASSET_MAX 255

/*
 * A request's method and path, parsed. run and label hold one byte more
 * than a valid name can have, so that an over-long name is cut where name
 * validation still refuses it (422) rather than silently shortened into a
 * valid one.
 */
struct http_route {
	enum http_endpoint endpoint; /* HTTP_NONE unless http_route_parse() returned 0 */
	const char *name;	     /* the path's name in log lines: "run", "snapshots", "none" */
	const char *allowed;	     /* the path's methods, for 405's Allow; NULL: unknown path */
	char run[INGEST_NAME_MAX + 2];	 /* {run}, "" when the path has none */
	char label[STORE_LABEL_MAX + 2]; /* {label} of /snapshots/{label}, else "" */
	char asset[HTTP_ASSET_MAX + 1];	 /* {path} of /ui/{path} ("" for /ui/), else "" */
};

/*
 * Parse method and url (the path, without the query string: libmicrohttpd
 * takes it off) into *out, following the endpoint table of docs/API.md.
 * Returns 0 when the path and method name an endpoint; -ENOENT for an
 * unknown path (404; run may still be filled in, for the log line);
 * -ENOTSUP for a known path that does not take method (405; name and
 * allowed are filled in). Method names are case-sensitive, as in HTTP.
 * A {path} below /ui/ names a file only when each of its '/'-separated
 * segments is made of [A-Za-z0-9._-] and does not begin with a dot (no
 * "..", no hidden file, no empty segment) and it is at most
 * HTTP_ASSET_MAX bytes; any other is an unknown path.
 *
 * Pure: no allocation, no I/O, any thread. method and url are borrowed
 * for the call only; out->name and out->allowed point to static strings.
 */
int http_route_parse(const char *method, const char *url, struct http_route *out);

/*
 * libmicrohttpd's unescaping of the path and of every query argument and
 * value (MHD_OPTION_UNESCAPE_CALLBACK; cls and conn unused), but a %00,
 * which would end the string early so that "/v1/runs/r%00x" named run
 * "r", becomes DEL, a byte that no name or number allows. Unescapes s in
 * place and returns its new length, which is also its strlen(). In
 * http.c; the fuzz target of request targets calls it too.
 */
size_t http_unescape_no_nul(void *cls, struct MHD_Connection *conn, char *s);

/* --- deadlines and the body budget (http_guard.c) ---------------------------------------- */

/* Where a connection's current request is, for its deadline. */
enum http_phase {
	HTTP_PHASE_HEADERS,  /* request line and headers: header_timeout_s from the first byte */
	HTTP_PHASE_BODY,     /* the body: at least body_min_rate bytes a second on average */
	HTTP_PHASE_HANDLING, /* answered or being answered: no deadline of ours */
	HTTP_PHASE_IDLE,     /* keep-alive between requests: idle_timeout_s at most */
};

struct http_guard_options {
	unsigned header_timeout_s; /* also the grace before the body rate is checked */
	unsigned idle_timeout_s;   /* libmicrohttpd's idle timeout, as an absolute bound */
	size_t body_min_rate;	   /* bytes per second; 0: not checked */
	size_t body_memory_max;	   /* bytes of request bodies in flight at most */
	unsigned max_connections;  /* the server's; its last eighth is kept (http_guard_admit) */
};

struct http_guard;
struct http_conn;

/*
 * Start the guard's thread with the limits *o (copied). On success *out is
 * a new guard owned by the caller (http_guard_stop()). Returns 0 or a
 * negative errno.
 */
int http_guard_start(const struct http_guard_options *o, struct http_guard **out);

/* Stop the thread and free g (NULL is fine); call after libmicrohttpd stopped. */
void http_guard_stop(struct http_guard *g);

/*
 * May a connection from addr (borrowed; NULL or another family than IPv4
 * and IPv6 count as one address) be accepted? Yes while fewer than 7/8 of
 * max_connections are open; past that only for an address that holds
 * fewer than 4 connections. Refusals are counted in the log. Any thread.
 */
bool http_guard_admit(struct http_guard *g, const struct sockaddr *addr);

/*
 * Register an accepted connection on socket fd from addr (borrowed for the
 * call), in HTTP_PHASE_HEADERS from now. Returns the entry, owned by the
 * guard until http_guard_close(), or NULL when out of memory (the
 * connection then has no deadline).
 */
struct http_conn *http_guard_open(struct http_guard *g, int fd, const struct sockaddr *addr);

/* Forget c (NULL is fine) and free it; call before fd is closed. */
void http_guard_close(struct http_guard *g, struct http_conn *c);

/*
 * c's request enters phase p now (NULL c is fine). Entering
 * HTTP_PHASE_HEADERS again keeps the clock of a request already in it,
 * so that a first request is timed from the accept.
 */
void http_guard_phase(struct http_guard *g, struct http_conn *c, enum http_phase p);

/* n more bytes of c's body were read (NULL c is fine); any thread. */
void http_guard_body(struct http_conn *c, size_t n);

/*
 * Take n bytes of the body budget. Returns false, taking nothing, when the
 * bodies in flight would pass body_memory_max. Any thread.
 */
bool http_guard_reserve(struct http_guard *g, size_t n);

/* Give back n bytes taken with http_guard_reserve(). */
void http_guard_release(struct http_guard *g, size_t n);

/* --- the server and its requests (http.c) -------------------------------------------- */

/* Retry-After of a 503 read_only (a few write probes of the store later) and database_damaged */
#define HTTP_RETRY_READ_ONLY "5"
#define HTTP_RETRY_DAMAGED "60"

struct http_server {
	struct MHD_Daemon *mhd;
	struct store *store;	     /* borrowed, see http_start() */
	struct replay_cache *replay; /* borrowed */
	struct http_options opt;
	struct http_guard *guard;
	_Atomic unsigned in_flight; /* requests begun and not completed */
	unsigned port;
};

/*
 * One request, from its first call of the access handler to the completion
 * callback, which frees it (libmicrohttpd's req_cls). Only the connection's
 * thread touches it, but for mu, done and res that the writer's callback
 * sets.
 */
struct http_request {
	struct http_server *srv;
	struct MHD_Connection *conn;
	struct http_route route;
	struct http_conn *gconn; /* the connection's deadline entry (the guard's), or NULL */
	bool unauthorized;	 /* a 401: say how to authenticate */
	const char *retry_after; /* a 503's Retry-After (NULL: "1") */
	struct timespec started;

	/* the body, NUL-terminated (owned; a handler may take it and set it NULL) */
	char *body;
	size_t len, cap;
	size_t reserved;  /* bytes of the body budget taken (http_guard_reserve()) */
	size_t too_large; /* bytes read past max-body (dropped), 0: within it */

	/* a job handed to the writer; mu orders suspend before resume */
	pthread_mutex_t mu;
	bool submitted;
	bool done;
	struct store_result res;
};

/*
 * Queue resp (taken: destroyed here) with status as the reply, with the
 * headers every reply carries (X-Content-Type-Options: nosniff) and those
 * of its status: 405s carry Allow, 401s WWW-Authenticate, 503s
 * Retry-After. Returns what the access handler returns.
 */
MHD_Result http_queue(struct http_request *rq, unsigned status, struct MHD_Response *resp);

/*
 * Queue text (len bytes, content_type; NULL for a reply without a body,
 * such as a 204) with status as the reply. text is stolen: freed by libmicrohttpd once sent, or
 * here on failure. 405s carry Allow, 401s WWW-Authenticate, 503s Retry-After (rq->retry_after,
 * else 1). Returns what the access handler returns.
 */
MHD_Result http_reply_text(struct http_request *rq, unsigned status, char *text, size_t len,
			   const char *content_type);

/* Queue doc (stolen, NULL allowed: MHD_NO) as a JSON reply with status. */
MHD_Result http_reply_json(struct http_request *rq, unsigned status, json_t *doc);

/*
 * Queue {"error": ...} from *err (borrowed), log the refusal (or the
 * failure, from 500 on) and count a refused upload in the metrics.
 */
MHD_Result http_reply_error(struct http_request *rq, const struct bn_error *err);

/* http_reply_error() with an error made of status, code, path (NULL: none), msg. */
MHD_Result http_fail(struct http_request *rq, int status, const char *code, const char *path,
		     const char *msg);

/* The deletions http_submit() hands the writer, named by the request's route. */
enum http_delete {
	HTTP_DELETE_NONE,     /* none: the job is a batch or a snapshot */
	HTTP_DELETE_RUN,      /* rq->route.run */
	HTTP_DELETE_SNAPSHOT, /* snapshot rq->route.label of rq->route.run */
};

/*
 * Hand one job to the store's writer (a batch b, a snapshot snap, or with
 * b and snap NULL the deletion `del`) and suspend the connection until the
 * writer's outcome resumes it; the handler is then called again with
 * rq->submitted set and takes the outcome with http_take_result(). b and
 * snap are stolen: the store's once queued, freed here when the writer
 * refuses them (a full queue, a shutdown: 503 with Retry-After).
 */
MHD_Result http_submit(struct http_request *rq, struct ingest_batch *b, struct store_snapshot *snap,
		       enum http_delete del);

/* http_submit() of a run file to import as rq->route.run (rf stolen). */
MHD_Result http_submit_import(struct http_request *rq, struct store_runfile *rf);

/*
 * Copy the writer's outcome into *res. Returns false while it has not
 * arrived (the handler answers nothing yet); then *res is not meaningful.
 */
bool http_take_result(struct http_request *rq, struct store_result *res);

/*
 * Free rq's body and give its share of body-memory-max back: a handler
 * that has decoded the body calls it (what is queued for the writer is
 * bounded by queue-max, not by the body budget).
 */
void http_body_free(struct http_request *rq);

/* --- the dashboard's files (http_static.c) --------------------------------------------- */

/*
 * Answer GET / (HTTP_ROOT: a redirect to /ui/) or GET /ui/{path}
 * (HTTP_UI: the file rq->route.asset of the server's ui_dir, index.html
 * for "", and vendor/dygraphs/{file} from the system's dygraphs; see
 * docs/API.md, "Dashboard"). A file that is not there, whose type is not
 * one the dashboard uses, or whose real path leaves its directory (a
 * symbolic link out of it) is a JSON 404.
 */
MHD_Result http_static_answer(struct http_request *rq);

/* --- the handlers (http_handlers.c) ---------------------------------------------------- */

/*
 * Answer rq (its body complete, the client authorized) with the handler of
 * rq->route.endpoint. Called on the connection's thread, once, or twice for
 * a job handed to the writer (again when it resumes the connection).
 */
MHD_Result http_handlers_dispatch(struct http_request *rq);

#endif
