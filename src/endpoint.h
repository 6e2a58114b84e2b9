/*
 * endpoint: the names of the API's endpoints, shared by the router (http)
 * and the access policy (auth) so that neither includes the other.
 */
#ifndef BNSTAT_ENDPOINT_H
#define BNSTAT_ENDPOINT_H

/*
 * The endpoints of docs/API.md, one per method and path: what a request
 * asks for once its URL is parsed (see http_private.h), and what auth's
 * policy (auth_endpoint_role()) is keyed on.
 */
enum http_endpoint {
	HTTP_NONE,	      /* no such resource (404) */
	HTTP_HEALTHZ,	      /* GET /healthz */
	HTTP_METRICS,	      /* GET /metrics */
	HTTP_RUNS,	      /* GET /v1/runs */
	HTTP_RUN,	      /* GET /v1/runs/{run} */
	HTTP_RUN_DELETE,      /* DELETE /v1/runs/{run} */
	HTTP_BATCHES,	      /* POST /v1/runs/{run}/batches */
	HTTP_STATS,	      /* GET /v1/runs/{run}/stats */
	HTTP_COMPARE,	      /* GET /v1/runs/{run}/compare */
	HTTP_SERIES,	      /* GET /v1/runs/{run}/series */
	HTTP_DRIFT,	      /* GET /v1/runs/{run}/drift */
	HTTP_MOMENTUM,	      /* GET /v1/runs/{run}/momentum */
	HTTP_DOMAINS,	      /* GET /v1/runs/{run}/domains */
	HTTP_SHIFT,	      /* GET /v1/runs/{run}/shift */
	HTTP_SNAPSHOTS,	      /* GET /v1/runs/{run}/snapshots */
	HTTP_SNAPSHOT_CREATE, /* POST /v1/runs/{run}/snapshots */
	HTTP_SNAPSHOT,	      /* GET /v1/runs/{run}/snapshots/{label} */
	HTTP_SNAPSHOT_DELETE, /* DELETE /v1/runs/{run}/snapshots/{label} */
	HTTP_EXPORT,	      /* GET /v1/runs/{run}/export */
	HTTP_IMPORT,	      /* POST /v1/runs/{run}/import */
	HTTP_ROOT,	      /* GET / and /ui: a redirect to /ui/ */
	HTTP_UI,	      /* GET /ui/{path}: the dashboard's files */
};

#endif
