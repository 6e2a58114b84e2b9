/*
 * http: the libmicrohttpd daemon, its connections and the state of each
 * request: the body read into the request's own buffer, the replies, and
 * the suspension of a connection while the store's writer works on its job.
 * Which endpoint a request names is http_route.c's business, who may call
 * it auth.c's, what it answers http_handlers.c's, how a reply is written
 * (headers, JSON, errors and their log lines) http_reply.c's, and how long
 * it may take and how much body memory it may hold http_guard.c's.
 *
 * Data flows one way: a request's body is gathered here, decoded by ingest,
 * queued to the store's writer; GETs go to query with a store reader. The
 * only thing that comes back from the writer is the outcome of an upload,
 * through upload_done(), which resumes the suspended connection.
 */
#include "http.h"

#include <errno.h>
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#include "auth.h"
#include "bnstat/ingest.h"
#include "http_private.h"
#include "log.h"
#include "metrics.h"

void http_options_default(struct http_options *o)
{
	memset(o, 0, sizeof(*o));
	o->host = "127.0.0.1";
	o->port = 8650;
	o->threads = 4;
	o->max_body = 64u << 20;
	o->max_connections = 1024;
	o->timeout_s = 60;
	o->header_timeout_s = 10;
	o->body_min_rate = 1024;
	o->body_memory_max = 256u << 20;
	/* well below max_connections: a few addresses cannot take every slot */
	o->max_per_ip = 128;
	o->limits.max_layers = INGEST_DEFAULT_MAX_LAYERS;
	o->limits.max_channels = INGEST_DEFAULT_MAX_CHANNELS;
	o->dygraphs_dir = BNSTAT_DYGRAPHS_DIR;
}

/* --- jobs for the store's writer ------------------------------------------------- */

/* Writer thread: the batch committed (or failed); wake the connection. */
static void upload_done(void *ctx, const struct store_result *r)
{
	struct http_request *rq = ctx;
	struct MHD_Connection *conn = rq->conn;

	pthread_mutex_lock(&rq->mu);
	rq->res = *r;
	rq->done = true;
	pthread_mutex_unlock(&rq->mu);
	/* rq may be freed once resumed; only conn is touched from here on. */
	MHD_resume_connection(conn);
}

bool http_take_result(struct http_request *rq, struct store_result *res)
{
	bool done;

	pthread_mutex_lock(&rq->mu);
	done = rq->done;
	*res = rq->res;
	pthread_mutex_unlock(&rq->mu);
	return done;
}

MHD_Result http_submit(struct http_request *rq, struct ingest_batch *b, struct store_snapshot *snap,
		       enum http_delete del)
{
	struct store *st = rq->srv->store;
	size_t n_layers = b != NULL ? b->n_layers : 0; /* b is the writer's once queued */
	int rc;

	/* mu held across submit and suspend: upload_done() cannot resume first */
	pthread_mutex_lock(&rq->mu);
	if (b != NULL)
		rc = store_submit(st, b, upload_done, rq);
	else if (snap != NULL)
		rc = store_submit_snapshot(st, snap, upload_done, rq);
	else if (del == HTTP_DELETE_RUN)
		rc = store_submit_delete(st, rq->route.run, upload_done, rq);
	else if (del == HTTP_DELETE_SNAPSHOT)
		rc = store_submit_snapshot_delete(st, rq->route.run, rq->route.label, upload_done,
						  rq);
	else
		rc = -EINVAL;
	if (rc == 0) {
		rq->submitted = true;
		MHD_suspend_connection(rq->conn);
	}
	pthread_mutex_unlock(&rq->mu);
	if (rc == 0) {
		log_debug(b != NULL		   ? "upload_queued"
			  : snap != NULL	   ? "snapshot_queued"
			  : del == HTTP_DELETE_RUN ? "delete_queued"
						   : "snapshot_delete_queued",
			  "run=%s layers=%zu", rq->route.run, n_layers);
		return MHD_YES;
	}
	ingest_batch_free(b);
	store_snapshot_free(snap);
	if (rc == -EROFS) {
		struct bn_error err;

		store_health_error(st, &err);
		return http_reply_error(rq, &err);
	}
	return http_fail(rq, 503, BN_E_UNAVAILABLE, NULL,
			 rc == -EAGAIN ? "the write queue is full; retry after a second"
				       : "the server is shutting down");
}

MHD_Result http_submit_import(struct http_request *rq, struct store_runfile *rf)
{
	int rc;

	pthread_mutex_lock(&rq->mu);
	rc = store_submit_import(rq->srv->store, rq->route.run, rf, upload_done, rq);
	if (rc == 0) {
		rq->submitted = true;
		MHD_suspend_connection(rq->conn);
	}
	pthread_mutex_unlock(&rq->mu);
	if (rc == 0) {
		log_debug("import_queued", "run=%s", rq->route.run);
		return MHD_YES;
	}
	store_runfile_free(rf);
	return http_fail(rq, 503, BN_E_UNAVAILABLE, NULL,
			 rc == -EAGAIN ? "the write queue is full; retry after a second"
				       : "the server is shutting down");
}

/* --- the access handler ------------------------------------------------------------- */

/* What body_append() made of a piece of the body. */
enum body_outcome { BODY_OK, BODY_TOO_LARGE, BODY_NO_BUDGET, BODY_NO_MEMORY };

/*
 * Append a piece of the body, growing the buffer (and its share of the
 * body budget: a chunked body reserves as it grows) up to max-body.
 */
static enum body_outcome body_append(struct http_request *rq, const char *data, size_t size)
{
	size_t need = rq->len + size;

	if (need > rq->srv->opt.max_body)
		return BODY_TOO_LARGE;
	if (need + 1 > rq->cap) {
		size_t cap = rq->cap ? rq->cap : 16384;
		char *p;

		while (cap < need + 1)
			cap *= 2;
		if (cap > rq->srv->opt.max_body + 1)
			cap = rq->srv->opt.max_body + 1;
		if (cap > rq->reserved) {
			if (!http_guard_reserve(rq->srv->guard, cap - rq->reserved))
				return BODY_NO_BUDGET;
			rq->reserved = cap;
		}
		p = realloc(rq->body, cap);
		if (p == NULL)
			return BODY_NO_MEMORY;
		rq->body = p;
		rq->cap = cap;
	}
	memcpy(rq->body + rq->len, data, size);
	rq->len += size;
	metrics_bytes(size);
	http_guard_body(rq->gconn, size);
	rq->body[rq->len] = '\0';
	return BODY_OK;
}

void http_body_free(struct http_request *rq)
{
	free(rq->body);
	rq->body = NULL;
	rq->len = rq->cap = 0;
	http_guard_release(rq->srv->guard, rq->reserved);
	rq->reserved = 0;
}

/*
 * May this request go on (auth_check() says who may what)? Returns true,
 * or false with the refusal queued in *ret; a 401 says how to authenticate.
 */
static bool authorize(struct http_request *rq, MHD_Result *ret)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	const char *h = MHD_lookup_connection_value(rq->conn, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_AUTHORIZATION);
	struct bn_error err;

	if (auth_check(rq->srv->opt.auth, rq->route.endpoint, h, ci ? ci->client_addr : NULL,
		       &err) == 0)
		return true;
	rq->unauthorized = err.status == 401;
	*ret = http_reply_error(rq, &err);
	return false;
}

/* The deadline entry of conn (its socket context: on_connection() set it). */
static struct http_conn *conn_guard(struct MHD_Connection *conn)
{
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);

	return ci != NULL ? ci->socket_context : NULL;
}

static struct http_request *request_new(struct http_server *srv, struct MHD_Connection *conn)
{
	struct http_request *rq = calloc(1, sizeof(*rq));

	if (rq == NULL)
		return NULL;
	rq->srv = srv;
	rq->conn = conn;
	rq->gconn = conn_guard(conn);
	atomic_fetch_add(&srv->in_flight, 1);
	pthread_mutex_init(&rq->mu, NULL);
	clock_gettime(CLOCK_MONOTONIC, &rq->started);
	return rq;
}

/* libmicrohttpd's unescape callback (http_private.h): on_request refuses a path holding DEL. */
size_t http_unescape_no_nul(void *cls, struct MHD_Connection *conn, char *s)
{
	size_t n = MHD_http_unescape(s), i;

	(void)cls;
	(void)conn;
	for (i = 0; i < n; i++)
		if (s[i] == '\0')
			s[i] = '\x7f';
	return n;
}

/*
 * The sizes of a request line and headers that bnstatd answers itself
 * (docs/OPERATIONS.md, "Limits and hostile clients"): well inside
 * libmicrohttpd's per-connection pool (HTTP_POOL_BYTES), so that the JSON
 * refusal comes from here rather than libmicrohttpd's HTML one, or none
 * when its pool is exhausted.
 */
#define HTTP_MAX_PARAMS 64
#define HTTP_MAX_URI 8192
#define HTTP_MAX_HEADERS 16384
#define HTTP_MAX_FIELDS 100
#define HTTP_POOL_BYTES (128 * 1024)
/* bytes past max-body read (and dropped) before a chunked upload is cut off */
#define HTTP_CUT_MARGIN (1 << 20)

static MHD_Result count_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
	size_t *n = cls;

	(void)kind;
	n[0]++;
	n[1] += strlen(key) + (value != NULL ? strlen(value) + 1 : 0) + 1;
	return MHD_YES;
}

/* A JSON 414 or 431 for a request line or headers past our limits, or false. */
static bool request_too_big(struct http_request *rq, const char *url, MHD_Result *ret)
{
	size_t args[2] = { 0, 0 }; /* count, bytes with '=' and '&' */
	const union MHD_ConnectionInfo *ci =
		MHD_get_connection_info(rq->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
	size_t n_fields;
	char msg[160];

	MHD_get_connection_values(rq->conn, MHD_GET_ARGUMENT_KIND, count_arg, args);
	if (args[0] > HTTP_MAX_PARAMS) {
		snprintf(msg, sizeof(msg), "%zu query parameters; at most %d are read", args[0],
			 HTTP_MAX_PARAMS);
		*ret = http_fail(rq, 414, BN_E_URI_TOO_LONG, NULL, msg);
		return true;
	}
	if (strlen(url) + args[1] > HTTP_MAX_URI) {
		snprintf(msg, sizeof(msg), "the URL is %zu bytes; the limit is %d",
			 strlen(url) + args[1], HTTP_MAX_URI);
		*ret = http_fail(rq, 414, BN_E_URI_TOO_LONG, NULL, msg);
		return true;
	}
	n_fields = (size_t)MHD_get_connection_values(rq->conn, MHD_HEADER_KIND, NULL, NULL);
	if (n_fields > HTTP_MAX_FIELDS) {
		snprintf(msg, sizeof(msg), "%zu request header fields; at most %d are read",
			 n_fields, HTTP_MAX_FIELDS);
		*ret = http_fail(rq, 431, BN_E_HEADERS_TOO_LARGE, NULL, msg);
		return true;
	}
	if (ci != NULL && ci->header_size > HTTP_MAX_HEADERS) {
		snprintf(msg, sizeof(msg), "the request headers are %zu bytes; the limit is %d",
			 ci->header_size, HTTP_MAX_HEADERS);
		*ret = http_fail(rq, 431, BN_E_HEADERS_TOO_LARGE, NULL, msg);
		return true;
	}
	return false;
}

/*
 * Take the body budget for a body of n bytes (or, for a chunked body of
 * unknown size, for its first buffer) before any of it is read. Returns
 * false with a 503 queued in *ret when the bodies in flight hold the
 * budget.
 */
static bool body_reserve(struct http_request *rq, size_t n, MHD_Result *ret)
{
	char msg[160];

	if (http_guard_reserve(rq->srv->guard, n)) {
		rq->reserved = n;
		return true;
	}
	snprintf(msg, sizeof(msg),
		 "request bodies in flight hold the server's body-memory-max of %zu bytes;"
		 " retry after a second",
		 rq->srv->opt.body_memory_max);
	*ret = http_fail(rq, 503, BN_E_UNAVAILABLE, NULL, msg);
	return false;
}

static MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
			     const char *method, const char *version, const char *upload_data,
			     size_t *upload_data_size, void **req_cls)
{
	struct http_server *srv = cls;
	struct http_request *rq = *req_cls;
	char msg[128];
	MHD_Result ret;
	int rc;

	if (rq == NULL) {
		const char *clen;

		rq = request_new(srv, conn);
		if (rq == NULL)
			return MHD_NO;
		*req_cls = rq;
		http_guard_phase(srv->guard, rq->gconn, HTTP_PHASE_BODY);
		if (strchr(url, '\x7f') != NULL)
			return http_fail(rq, 400, BN_E_NAME, NULL,
					 "the path holds a NUL (%00) or DEL (%7F) byte");
		rc = http_route_parse(method, url, &rq->route);
		if (rc == -ENOENT)
			return http_fail(rq, 404, BN_E_NOT_FOUND, NULL, "no such resource");
		if (rc < 0) {
			snprintf(msg, sizeof(msg), "%s is not allowed here; use %s", method,
				 rq->route.allowed);
			return http_fail(rq, 405, BN_E_METHOD, NULL, msg);
		}
		if (request_too_big(rq, url, &ret) || !authorize(rq, &ret))
			return ret;
		clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						   MHD_HTTP_HEADER_CONTENT_LENGTH);
		if (clen != NULL) {
			unsigned long long n = strtoull(clen, NULL, 10);

			if (n > srv->opt.max_body) {
				snprintf(msg, sizeof(msg),
					 "the body is %llu bytes; the limit is %zu", n,
					 srv->opt.max_body);
				return http_fail(rq, 413, BN_E_TOO_LARGE, NULL, msg);
			}
			if (n > 0) { /* one allocation for the whole body */
				char *p;

				if (!body_reserve(rq, (size_t)n + 1, &ret))
					return ret;
				p = realloc(rq->body, (size_t)n + 1);
				if (p == NULL)
					return MHD_NO;
				rq->body = p;
				rq->cap = (size_t)n + 1;
			}
		} else if (MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						       MHD_HTTP_HEADER_TRANSFER_ENCODING) != NULL &&
			   !body_reserve(rq, 16384, &ret)) {
			return ret;
		}
		return MHD_YES;
	}

	if (*upload_data_size > 0) {
		/*
		 * libmicrohttpd 0.9.75 refuses a reply queued before the upload
		 * ends (MHD_queue_response() returns MHD_NO), so a chunked body
		 * past max-body, or past the body budget, can only be cut off:
		 * MHD_NO closes the connection at once, without a reply. One past
		 * max-body is first read on (not kept) for HTTP_CUT_MARGIN bytes,
		 * so that a body a little too large still gets a 413.
		 */
		switch (rq->too_large ? BODY_TOO_LARGE
				      : body_append(rq, upload_data, *upload_data_size)) {
		case BODY_OK:
			break;
		case BODY_TOO_LARGE:
			/* a body that ends within the margin still gets its 413 */
			rq->too_large += *upload_data_size;
			http_guard_body(rq->gconn, *upload_data_size);
			http_body_free(rq);
			if (rq->too_large > HTTP_CUT_MARGIN) {
				log_warn("upload_too_large",
					 "route=%s limit=%zu action=close margin=%d",
					 rq->route.name, srv->opt.max_body, HTTP_CUT_MARGIN);
				return MHD_NO;
			}
			break;
		case BODY_NO_BUDGET:
			log_warn("body_memory_full", "route=%s bytes=%zu limit=%zu action=close",
				 rq->route.name, rq->len + *upload_data_size,
				 srv->opt.body_memory_max);
			return MHD_NO;
		case BODY_NO_MEMORY:
			return MHD_NO;
		}
		*upload_data_size = 0;
		return MHD_YES;
	}
	http_guard_phase(srv->guard, rq->gconn, HTTP_PHASE_HANDLING);
	if (rq->too_large) {
		snprintf(msg, sizeof(msg), "the body is larger than the limit of %zu bytes",
			 srv->opt.max_body);
		return http_fail(rq, 413, BN_E_TOO_LARGE, NULL, msg);
	}
	return http_handlers_dispatch(rq);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct http_request *rq = *req_cls;
	struct http_server *srv = cls;

	/* a keep-alive connection now waits for its next request */
	http_guard_phase(srv->guard, conn_guard(conn), HTTP_PHASE_IDLE);
	if (rq == NULL)
		return;
	if (rq->submitted && !rq->done)
		log_error("request_abandoned", "run=%s",
			  rq->route.run); /* cannot happen: suspended */
	pthread_mutex_destroy(&rq->mu);
	http_body_free(rq);
	atomic_fetch_sub(&rq->srv->in_flight, 1);
	free(rq);
	*req_cls = NULL;
}

/* A connection accepted or closed: its deadline entry (the socket context). */
static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_context,
			  enum MHD_ConnectionNotificationCode toe)
{
	struct http_server *srv = cls;

	if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
		const union MHD_ConnectionInfo *ci =
			MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
		const union MHD_ConnectionInfo *ai =
			MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);

		*socket_context = ci != NULL ? http_guard_open(srv->guard, ci->connect_fd,
							       ai != NULL ? ai->client_addr : NULL)
					     : NULL;
	} else {
		/* libmicrohttpd closes the socket after this: the guard may no longer touch it */
		http_guard_close(srv->guard, *socket_context);
		*socket_context = NULL;
	}
}

/* libmicrohttpd's accept policy: the slots kept for quiet addresses. */
static MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
	struct http_server *srv = cls;

	(void)addrlen;
	return http_guard_admit(srv->guard, addr) ? MHD_YES : MHD_NO;
}

/*
 * The request line arrived (libmicrohttpd's URI log callback, called before
 * the headers are read): a keep-alive request's header deadline starts now.
 * Returns NULL, which stays the request's req_cls until on_request().
 */
static void *on_request_line(void *cls, const char *uri, struct MHD_Connection *conn)
{
	struct http_server *srv = cls;

	(void)uri;
	http_guard_phase(srv->guard, conn_guard(conn), HTTP_PHASE_HEADERS);
	return NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];
	size_t n;

	vsnprintf(line, sizeof(line), fmt, ap);
	n = strlen(line);
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	for (char *p = line; *p; p++)
		if (*p == '"')
			*p = '\'';
	log_warn("http", "message=\"%s\"", line);
}

/* --- start and stop ------------------------------------------------------------------- */

int http_start(const struct http_options *o, struct store *s, struct replay_cache *replay,
	       struct http_server **out, struct bn_error *err)
{
	struct http_server *srv;
	struct addrinfo hints, *ai = NULL;
	const union MHD_DaemonInfo *info;
	/*
	 * poll(), not epoll: libmicrohttpd 0.9.75's MHD_quiesce_daemon() (our
	 * SIGTERM path) removes the listen socket from an epoll set while the
	 * polling thread may do the same, and the loser of that race aborts the
	 * process ("Failed to remove listen FD from epoll set"). With poll the
	 * quiesce goes through the inter-thread channel.
	 */
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL | MHD_ALLOW_SUSPEND_RESUME |
			 MHD_USE_ERROR_LOG;
	int rc;

	*out = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE;
	rc = getaddrinfo(o->host, NULL, &hints, &ai);
	if (rc != 0)
		return bn_error_set(err, 500, BN_E_INTERNAL, "listen", "cannot resolve %s: %s",
				    o->host, gai_strerror(rc));
	if (ai->ai_family == AF_INET6) {
		((struct sockaddr_in6 *)ai->ai_addr)->sin6_port = htons((uint16_t)o->port);
		flags |= MHD_USE_IPv6;
	} else {
		((struct sockaddr_in *)ai->ai_addr)->sin_port = htons((uint16_t)o->port);
	}

	srv = calloc(1, sizeof(*srv));
	if (srv == NULL) {
		freeaddrinfo(ai);
		return bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
	}
	srv->store = s;
	srv->replay = replay;
	srv->opt = *o;
	{
		struct http_guard_options g = {
			.header_timeout_s = o->header_timeout_s,
			.idle_timeout_s = o->timeout_s,
			.body_min_rate = o->body_min_rate,
			.body_memory_max = o->body_memory_max,
			.max_connections = o->max_connections,
		};

		if (http_guard_start(&g, &srv->guard) < 0) {
			freeaddrinfo(ai);
			free(srv);
			return bn_error_set(err, 500, BN_E_INTERNAL, NULL,
					    "cannot start the connection guard");
		}
	}
	if (o->tls_cert_pem != NULL && o->tls_key_pem != NULL)
		flags |= MHD_USE_TLS;
	srv->mhd = MHD_start_daemon(
		flags, (uint16_t)o->port, on_accept, srv, on_request, srv,
		MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(o->threads ? o->threads : 1),
		MHD_OPTION_CONNECTION_LIMIT, o->max_connections, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
		o->max_per_ip, MHD_OPTION_CONNECTION_TIMEOUT, o->timeout_s,
		/*
		 * bodies are copied out at once; the pool holds the request line
		 * and headers, with room to spare past what request_too_big()
		 * refuses in JSON (64 KiB ran out at ~1,000 query parameters)
		 */
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)HTTP_POOL_BYTES,
		MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_URI_LOG_CALLBACK,
		on_request_line, srv, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
		MHD_OPTION_UNESCAPE_CALLBACK, http_unescape_no_nul, NULL,
		/* the TLS options last: MHD_OPTION_END ends the list when there is no TLS */
		(flags & MHD_USE_TLS) ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, o->tls_cert_pem,
		MHD_OPTION_HTTPS_MEM_KEY, o->tls_key_pem, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (srv->mhd == NULL) {
		http_guard_stop(srv->guard);
		free(srv);
		return bn_error_set(err, 500, BN_E_INTERNAL, "listen",
				    "cannot listen on %s:%u (address in use or not available%s)",
				    o->host, o->port,
				    (flags & MHD_USE_TLS)
					    ? ", or the TLS certificate and key were refused"
					    : "");
	}
	info = MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_BIND_PORT);
	srv->port = info ? info->port : o->port;
	*out = srv;
	return 0;
}

int http_tls_check(const char *cert_pem, const char *key_pem, struct bn_error *err)
{
	/* libmicrohttpd loads the pair at start: start one that listens nowhere. */
	struct MHD_Daemon *d = MHD_start_daemon(
		MHD_USE_TLS | MHD_USE_NO_LISTEN_SOCKET | MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL,
		NULL, on_request, NULL, MHD_OPTION_HTTPS_MEM_CERT, cert_pem,
		MHD_OPTION_HTTPS_MEM_KEY, key_pem, MHD_OPTION_END);

	if (d == NULL)
		return bn_error_set(
			err, 400, BN_E_INVALID, "tls-cert",
			"the TLS certificate and key were refused (not PEM, or not a pair)");
	MHD_stop_daemon(d);
	return 0;
}

unsigned http_port(const struct http_server *h)
{
	return h->port;
}

void http_quiesce(struct http_server *h)
{
	MHD_socket fd;

	if (h == NULL)
		return;
	fd = MHD_quiesce_daemon(h->mhd);
	if (fd != MHD_INVALID_SOCKET)
		close(fd);
}

unsigned http_drain(struct http_server *h, unsigned timeout_ms)
{
	unsigned waited = 0, n;

	/* Idle keep-alive connections do not count: http_stop() closes them. */
	while ((n = atomic_load(&h->in_flight)) > 0 && waited < timeout_ms) {
		usleep(10000);
		waited += 10;
	}
	return n;
}

void http_stop(struct http_server *h)
{
	if (h == NULL)
		return;
	MHD_stop_daemon(h->mhd);
	http_guard_stop(h->guard);
	free(h);
}
