/*
 * http_route: which endpoint of docs/API.md a method and a path name, and
 * the {run} and {label} segments of the path (see http_private.h).
 */
#include "http_private.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* A path and the endpoint each of its methods reaches. */
struct resource {
	const char *name;    /* in log lines */
	const char *allowed; /* for 405's Allow, in the order of by_method */
	struct {
		const char *method;
		enum http_endpoint endpoint;
	} by_method[2];
};

static const struct resource healthz = { "healthz", "GET", { { "GET", HTTP_HEALTHZ } } };
static const struct resource metrics = { "metrics", "GET", { { "GET", HTTP_METRICS } } };
static const struct resource runs = { "runs", "GET", { { "GET", HTTP_RUNS } } };
static const struct resource run = { "run",
				     "GET, DELETE",
				     { { "GET", HTTP_RUN }, { "DELETE", HTTP_RUN_DELETE } } };
static const struct resource root = { "root",
				      "GET, HEAD",
				      { { "GET", HTTP_ROOT }, { "HEAD", HTTP_ROOT } } };
static const struct resource ui = { "ui",
				    "GET, HEAD",
				    { { "GET", HTTP_UI }, { "HEAD", HTTP_UI } } };
static const struct resource snapshot = {
	"snapshot", "GET, DELETE", { { "GET", HTTP_SNAPSHOT }, { "DELETE", HTTP_SNAPSHOT_DELETE } }
};

/* The paths below /v1/runs/{run}, but for /snapshots/{label}. */
static const struct {
	const char *suffix;
	struct resource res;
} run_paths[] = {
	{ "/batches", { "batches", "POST", { { "POST", HTTP_BATCHES } } } },
	{ "/stats", { "stats", "GET", { { "GET", HTTP_STATS } } } },
	{ "/compare", { "compare", "GET", { { "GET", HTTP_COMPARE } } } },
	{ "/series", { "series", "GET", { { "GET", HTTP_SERIES } } } },
	{ "/drift", { "drift", "GET", { { "GET", HTTP_DRIFT } } } },
	{ "/momentum", { "momentum", "GET", { { "GET", HTTP_MOMENTUM } } } },
	{ "/domains", { "domains", "GET", { { "GET", HTTP_DOMAINS } } } },
	{ "/shift", { "shift", "GET", { { "GET", HTTP_SHIFT } } } },
	{ "/export", { "export", "GET", { { "GET", HTTP_EXPORT } } } },
	{ "/import", { "import", "POST", { { "POST", HTTP_IMPORT } } } },
	{ "/snapshots",
	  { "snapshots",
	    "GET, POST",
	    { { "GET", HTTP_SNAPSHOTS }, { "POST", HTTP_SNAPSHOT_CREATE } } } },
};

/* The path is res: which endpoint does method reach there? */
static int resolve(const struct resource *res, const char *method, struct http_route *out)
{
	size_t i;

	out->name = res->name;
	out->allowed = res->allowed;
	for (i = 0; i < sizeof(res->by_method) / sizeof(res->by_method[0]); i++) {
		if (res->by_method[i].method != NULL &&
		    strcmp(method, res->by_method[i].method) == 0) {
			out->endpoint = res->by_method[i].endpoint;
			return 0;
		}
	}
	return -ENOTSUP;
}

/* Does p name a file below /ui/ (see http_route_parse())? */
static bool asset_valid(const char *p)
{
	size_t seg = 0; /* bytes of the current segment */

	if (strlen(p) > HTTP_ASSET_MAX)
		return false;
	for (; *p != '\0'; p++) {
		if (*p == '/') {
			if (seg == 0)
				return false;
			seg = 0;
			continue;
		}
		if (seg == 0 && *p == '.')
			return false;
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return false;
		seg++;
	}
	return true;
}

int http_route_parse(const char *method, const char *url, struct http_route *out)
{
	const char *p, *slash;
	size_t n, i;

	memset(out, 0, sizeof(*out));
	out->endpoint = HTTP_NONE;
	out->name = "none";
	if (strcmp(url, "/healthz") == 0)
		return resolve(&healthz, method, out);
	if (strcmp(url, "/metrics") == 0)
		return resolve(&metrics, method, out);
	if (strcmp(url, "/") == 0 || strcmp(url, "/ui") == 0)
		return resolve(&root, method, out);
	if (strncmp(url, "/ui/", 4) == 0) {
		/* a directory (a trailing '/') is no file, but /ui/ is index.html */
		if (!asset_valid(url + 4) || (url[4] != '\0' && url[strlen(url) - 1] == '/'))
			return -ENOENT;
		snprintf(out->asset, sizeof(out->asset), "%s", url + 4);
		return resolve(&ui, method, out);
	}
	if (strcmp(url, "/v1/runs") == 0 || strcmp(url, "/v1/runs/") == 0)
		return resolve(&runs, method, out);
	if (strncmp(url, "/v1/runs/", 9) != 0)
		return -ENOENT;
	p = url + 9;
	slash = strchr(p, '/');
	n = slash ? (size_t)(slash - p) : strlen(p);
	if (n == 0)
		return -ENOENT; /* "/v1/runs//stats": no such resource */
	if (n >= sizeof(out->run))
		n = sizeof(out->run) - 1; /* too long: caught by name validation */
	memcpy(out->run, p, n);
	out->run[n] = '\0';
	if (slash == NULL || strcmp(slash, "/") == 0)
		return resolve(&run, method, out);
	for (i = 0; i < sizeof(run_paths) / sizeof(run_paths[0]); i++)
		if (strcmp(slash, run_paths[i].suffix) == 0)
			return resolve(&run_paths[i].res, method, out);
	if (strncmp(slash, "/snapshots/", 11) == 0 && slash[11] != '\0' &&
	    strchr(slash + 11, '/') == NULL) {
		snprintf(out->label, sizeof(out->label), "%s", slash + 11);
		return resolve(&snapshot, method, out);
	}
	return -ENOENT;
}
