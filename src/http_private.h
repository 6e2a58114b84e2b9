/*
 * http_private: what the files of the http module share and nobody else
 * sees: the parsed route of a request (http_route.c, pure, no
 * libmicrohttpd in it, so that routing can be tested without a server).
 */
#ifndef BNSTAT_HTTP_PRIVATE_H
#define BNSTAT_HTTP_PRIVATE_H

#include "bnstat/ingest.h"
#include "http.h"
#include "store.h"

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
};

/*
 * Parse method and url (the path, without the query string: libmicrohttpd
 * takes it off) into *out, following the endpoint table of docs/API.md.
 * Returns 0 when the path and method name an endpoint; -ENOENT for an
 * unknown path (404; run may still be filled in, for the log line);
 * -ENOTSUP for a known path that does not take method (405; name and
 * allowed are filled in). Method names are case-sensitive, as in HTTP.
 *
 * Pure: no allocation, no I/O, any thread. method and url are borrowed
 * for the call only; out->name and out->allowed point to static strings.
 */
int http_route_parse(const char *method, const char *url, struct http_route *out);

#endif
