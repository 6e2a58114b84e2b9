/*
 * http_static: the dashboard's files (docs/API.md, "Dashboard"). GET /
 * redirects to /ui/; GET /ui/{path} is a file of the ui directory
 * (ui-dir), and /ui/vendor/dygraphs/{file} one of the system's dygraphs
 * library (Debian's libjs-dygraphs), so that the page needs no other host.
 *
 * The router only lets through paths made of plain segments (no "..", no
 * hidden file); here the file's real path must still lie inside its
 * directory, so that a symbolic link cannot lead out of it, and its type
 * must be one the dashboard uses. Everything else is the API's JSON 404.
 */
#include "http_private.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * The page's policy: scripts, styles, images and API calls from this
 * server only, nothing inline, no frames around it.
 */
#define HTTP_STATIC_CSP "default-src 'self'; frame-ancestors 'none'; base-uri 'none'"

#define VENDOR_DYGRAPHS "vendor/dygraphs/"

static const struct {
	const char *ext;
	const char *type;
} types[] = {
	{ ".html", "text/html; charset=utf-8" },
	{ ".js", "text/javascript; charset=utf-8" },
	{ ".css", "text/css; charset=utf-8" },
	{ ".png", "image/png" },
	{ ".svg", "image/svg+xml" },
	{ ".ico", "image/x-icon" },
};

/* The Content-Type of name, from its extension; NULL for a type not served. */
static const char *content_type(const char *name)
{
	const char *dot = strrchr(name, '.');
	size_t i;

	if (dot == NULL || strchr(dot, '/') != NULL)
		return NULL;
	for (i = 0; i < sizeof(types) / sizeof(types[0]); i++)
		if (strcmp(dot, types[i].ext) == 0)
			return types[i].type;
	return NULL;
}

static MHD_Result not_found(struct http_request *rq)
{
	return http_fail(rq, 404, BN_E_NOT_FOUND, NULL, "no such file of the dashboard");
}

/*
 * Open file name of directory dir when its real path is inside dir's real
 * path and it is a regular file. Returns the descriptor (the caller's) with
 * its size in *size, or -1.
 */
static int open_inside(const char *dir, const char *name, off_t *size)
{
	char path[PATH_MAX], real_dir[PATH_MAX], real[PATH_MAX];
	struct stat st;
	size_t n;
	int fd;

	if (snprintf(path, sizeof(path), "%s/%s", dir, name) >= (int)sizeof(path))
		return -1;
	if (realpath(dir, real_dir) == NULL || realpath(path, real) == NULL)
		return -1;
	n = strlen(real_dir);
	if (strncmp(real, real_dir, n) != 0 || (real[n] != '/' && real_dir[n - 1] != '/'))
		return -1;
	fd = open(real, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return -1;
	}
	*size = st.st_size;
	return fd;
}

static MHD_Result redirect(struct http_request *rq)
{
	struct MHD_Response *resp =
		MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);

	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_LOCATION, "/ui/");
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
	return http_queue(rq, 302, resp);
}

MHD_Result http_static_answer(struct http_request *rq)
{
	const struct http_options *o = &rq->srv->opt;
	const char *name = rq->route.asset[0] != '\0' ? rq->route.asset : "index.html";
	const char *dir = o->ui_dir, *type;
	bool vendor = false;
	struct MHD_Response *resp;
	off_t size = 0;
	int fd;

	if (dir == NULL || dir[0] == '\0')
		return not_found(rq); /* no dashboard */
	if (rq->route.endpoint == HTTP_ROOT)
		return redirect(rq);
	if (strncmp(name, VENDOR_DYGRAPHS, strlen(VENDOR_DYGRAPHS)) == 0) {
		dir = o->dygraphs_dir;
		name += strlen(VENDOR_DYGRAPHS);
		vendor = true;
	}
	type = content_type(name);
	if (dir == NULL || dir[0] == '\0' || name[0] == '\0' || type == NULL)
		return not_found(rq);
	fd = open_inside(dir, name, &size);
	if (fd < 0)
		return not_found(rq);
	resp = MHD_create_response_from_fd((uint64_t)size, fd); /* takes fd */
	if (resp == NULL) {
		close(fd);
		return MHD_NO;
	}
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	/*
	 * The page's own files change with the daemon, under the same names:
	 * revalidate them. The library is the system's, versioned by its package.
	 */
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL,
				vendor ? "public, max-age=86400" : "no-cache");
	MHD_add_response_header(resp, "Content-Security-Policy", HTTP_STATIC_CSP);
	MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
	return http_queue(rq, 200, resp);
}
