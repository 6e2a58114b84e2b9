/*
 * check_http_route: every endpoint of docs/API.md parsed from its method and
 * path, what the paths and methods that name none are answered (404,
 * or 405 with the path's Allow), and the unescape callback's %00.
 */
#include <check.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "http_private.h"

static struct http_route route;

static int parse(const char *method, const char *url)
{
	return http_route_parse(method, url, &route);
}

/* method url parse to endpoint ep, logged as name, with {run} run and {label} label. */
static void expect(const char *method, const char *url, enum http_endpoint ep, const char *name,
		   const char *allowed, const char *run, const char *label)
{
	ck_assert_msg(parse(method, url) == 0, "%s %s does not parse", method, url);
	ck_assert_int_eq(route.endpoint, ep);
	ck_assert_str_eq(route.name, name);
	ck_assert_str_eq(route.allowed, allowed);
	ck_assert_str_eq(route.run, run);
	ck_assert_str_eq(route.label, label);
}

/* No such resource: 404, logged as route=none. */
static void expect_unknown(const char *method, const char *url)
{
	ck_assert_msg(parse(method, url) == -ENOENT, "%s %s: not a 404", method, url);
	ck_assert_int_eq(route.endpoint, HTTP_NONE);
	ck_assert_str_eq(route.name, "none");
	ck_assert_ptr_null(route.allowed);
	ck_assert_str_eq(route.label, "");
}

/* A known path that does not take method: 405 with Allow: allowed. */
static void expect_method(const char *method, const char *url, const char *name,
			  const char *allowed)
{
	ck_assert_msg(parse(method, url) == -ENOTSUP, "%s %s: not a 405", method, url);
	ck_assert_int_eq(route.endpoint, HTTP_NONE);
	ck_assert_str_eq(route.name, name);
	ck_assert_str_eq(route.allowed, allowed);
}

START_TEST(test_outside_runs)
{
	expect("GET", "/healthz", HTTP_HEALTHZ, "healthz", "GET", "", "");
	expect("GET", "/metrics", HTTP_METRICS, "metrics", "GET", "", "");
	expect("GET", "/v1/runs", HTTP_RUNS, "runs", "GET", "", "");
	expect("GET", "/v1/runs/", HTTP_RUNS, "runs", "GET", "", "");
}
END_TEST

START_TEST(test_run_endpoints)
{
	expect("GET", "/v1/runs/r1", HTTP_RUN, "run", "GET, DELETE", "r1", "");
	expect("GET", "/v1/runs/r1/", HTTP_RUN, "run", "GET, DELETE", "r1", "");
	expect("DELETE", "/v1/runs/r1", HTTP_RUN_DELETE, "run", "GET, DELETE", "r1", "");
	expect("DELETE", "/v1/runs/r1/", HTTP_RUN_DELETE, "run", "GET, DELETE", "r1", "");
	expect("POST", "/v1/runs/demo/batches", HTTP_BATCHES, "batches", "POST", "demo", "");
	expect("GET", "/v1/runs/demo/stats", HTTP_STATS, "stats", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/compare", HTTP_COMPARE, "compare", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/series", HTTP_SERIES, "series", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/drift", HTTP_DRIFT, "drift", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/momentum", HTTP_MOMENTUM, "momentum", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/domains", HTTP_DOMAINS, "domains", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/shift", HTTP_SHIFT, "shift", "GET", "demo", "");
	expect("GET", "/v1/runs/demo/snapshots", HTTP_SNAPSHOTS, "snapshots", "GET, POST", "demo",
	       "");
	expect("POST", "/v1/runs/demo/snapshots", HTTP_SNAPSHOT_CREATE, "snapshots", "GET, POST",
	       "demo", "");
	expect("GET", "/v1/runs/demo/snapshots/final", HTTP_SNAPSHOT, "snapshot", "GET, DELETE",
	       "demo", "final");
	expect("DELETE", "/v1/runs/demo/snapshots/final", HTTP_SNAPSHOT_DELETE, "snapshot",
	       "GET, DELETE", "demo", "final");
	expect("GET", "/v1/runs/demo/export", HTTP_EXPORT, "export", "GET", "demo", "");
	expect("POST", "/v1/runs/demo/import", HTTP_IMPORT, "import", "POST", "demo", "");
	/* names are taken as they come: validating them is the handlers' job */
	expect("GET", "/v1/runs/a.b-c_D/snapshots/v1.0", HTTP_SNAPSHOT, "snapshot", "GET, DELETE",
	       "a.b-c_D", "v1.0");
	expect("GET", "/v1/runs/x\nlevel=error/stats", HTTP_STATS, "stats", "GET", "x\nlevel=error",
	       "");
	expect("GET", "/v1/runs/stats/stats", HTTP_STATS, "stats", "GET", "stats", "");
	expect("GET", "/v1/runs/r/snapshots/snapshots", HTTP_SNAPSHOT, "snapshot", "GET, DELETE",
	       "r", "snapshots");
}
END_TEST

START_TEST(test_over_long_names)
{
	char url[1024], name[600];

	/* cut one byte past the longest valid name, so that validation still refuses it */
	memset(name, 'a', 300);
	name[300] = '\0';
	snprintf(url, sizeof(url), "/v1/runs/%s/stats", name);
	ck_assert_int_eq(parse("GET", url), 0);
	ck_assert_int_eq(route.endpoint, HTTP_STATS);
	ck_assert_uint_eq(strlen(route.run), INGEST_NAME_MAX + 1);
	ck_assert_int_eq(strncmp(route.run, name, INGEST_NAME_MAX + 1), 0);

	snprintf(url, sizeof(url), "/v1/runs/r/snapshots/%s", name);
	ck_assert_int_eq(parse("GET", url), 0);
	ck_assert_int_eq(route.endpoint, HTTP_SNAPSHOT);
	ck_assert_uint_eq(strlen(route.label), STORE_LABEL_MAX + 1);

	/* the longest valid names pass whole */
	name[INGEST_NAME_MAX] = '\0';
	snprintf(url, sizeof(url), "/v1/runs/%s", name);
	ck_assert_int_eq(parse("DELETE", url), 0);
	ck_assert_str_eq(route.run, name);
	name[STORE_LABEL_MAX] = '\0';
	snprintf(url, sizeof(url), "/v1/runs/r/snapshots/%s", name);
	ck_assert_int_eq(parse("GET", url), 0);
	ck_assert_str_eq(route.label, name);
}
END_TEST

START_TEST(test_unknown_paths)
{
	expect_unknown("GET", "");
	expect_unknown("GET", "/v1");
	expect_unknown("GET", "/v1/");
	expect_unknown("GET", "/v1/run");
	expect_unknown("GET", "/v1/runsx");
	expect_unknown("GET", "/v2/runs");
	expect_unknown("GET", "/V1/runs");
	expect_unknown("GET", "/Healthz");
	expect_unknown("GET", "/healthz/");
	expect_unknown("GET", "/metrics/");
	expect_unknown("GET", "//v1/runs");
	expect_unknown("GET", "/v1//runs");
	/* an empty run segment is no resource at all */
	expect_unknown("GET", "/v1/runs//stats");
	ck_assert_str_eq(route.run, "");
	expect_unknown("GET", "/v1/runs//");
	expect_unknown("POST", "/v1/runs//batches");
	/* trailing slashes below a run, empty labels, deeper paths */
	expect_unknown("GET", "/v1/runs/r//");
	expect_unknown("GET", "/v1/runs/r/stats/");
	expect_unknown("POST", "/v1/runs/r/batches/");
	expect_unknown("GET", "/v1/runs/r/snapshots/");
	expect_unknown("GET", "/v1/runs/r/snapshots//");
	expect_unknown("GET", "/v1/runs/r/snapshots/final/");
	expect_unknown("GET", "/v1/runs/r/snapshots/a/b");
	expect_unknown("GET", "/v1/runs/r/stats/extra");
	expect_unknown("GET", "/v1/runs/r/Stats");
	expect_unknown("GET", "/v1/runs/r/snapshot");
	expect_unknown("GET", "/v1/runs/r/unknown");
	/* the run is kept for the log line of the 404 */
	ck_assert_str_eq(route.run, "r");
	/* an unknown path is a 404 whatever the method */
	expect_unknown("PUT", "/v1/runs/r/unknown");
	expect_unknown("DELETE", "/nowhere");
}
END_TEST

/* The dashboard: / and /ui redirect, /ui/{path} a file with a plain path. */
START_TEST(test_dashboard)
{
	char long_path[300];

	expect("GET", "/", HTTP_ROOT, "root", "GET, HEAD", "", "");
	expect("HEAD", "/ui", HTTP_ROOT, "root", "GET, HEAD", "", "");
	expect("GET", "/ui/", HTTP_UI, "ui", "GET, HEAD", "", "");
	ck_assert_str_eq(route.asset, "");
	expect("GET", "/ui/app.js", HTTP_UI, "ui", "GET, HEAD", "", "");
	ck_assert_str_eq(route.asset, "app.js");
	expect("HEAD", "/ui/vendor/dygraphs/dygraph.min.css", HTTP_UI, "ui", "GET, HEAD", "", "");
	ck_assert_str_eq(route.asset, "vendor/dygraphs/dygraph.min.css");
	expect_method("POST", "/ui/app.js", "ui", "GET, HEAD");
	expect_method("DELETE", "/", "root", "GET, HEAD");
	/* no way up, no hidden file, no empty segment, no directory, no odd byte */
	expect_unknown("GET", "/ui/..");
	expect_unknown("GET", "/ui/../src/main.c");
	expect_unknown("GET", "/ui/vendor/../../etc/passwd");
	expect_unknown("GET", "/ui/./app.js");
	expect_unknown("GET", "/ui/.hidden.js");
	expect_unknown("GET", "/ui/vendor/.x/a.js");
	expect_unknown("GET", "/ui//app.js");
	expect_unknown("GET", "/ui/vendor/");
	expect_unknown("GET", "/ui/a b.js");
	expect_unknown("GET", "/ui/a\\b.js");
	expect_unknown("GET", "/ui/a\x7f.js");
	expect_unknown("GET", "/ui/%2e%2e/x.js"); /* '%' itself: MHD unescapes before */
	ck_assert_str_eq(route.asset, "");
	expect_unknown("GET", "/uix");
	expect_unknown("GET", "/ui/x/");
	memset(long_path, 'a', sizeof(long_path));
	memcpy(long_path, "/ui/", 4);
	long_path[4 + HTTP_ASSET_MAX] = '\0';
	expect("GET", long_path, HTTP_UI, "ui", "GET, HEAD", "", "");
	long_path[4 + HTTP_ASSET_MAX] = 'a';
	long_path[5 + HTTP_ASSET_MAX] = '\0';
	expect_unknown("GET", long_path);
}
END_TEST

START_TEST(test_wrong_methods)
{
	expect_method("POST", "/healthz", "healthz", "GET");
	expect_method("HEAD", "/healthz", "healthz", "GET");
	expect_method("DELETE", "/metrics", "metrics", "GET");
	expect_method("POST", "/v1/runs", "runs", "GET");
	expect_method("DELETE", "/v1/runs/", "runs", "GET");
	expect_method("POST", "/v1/runs/r", "run", "GET, DELETE");
	expect_method("PUT", "/v1/runs/r/", "run", "GET, DELETE");
	expect_method("GET", "/v1/runs/r/batches", "batches", "POST");
	ck_assert_str_eq(route.run, "r");
	expect_method("PUT", "/v1/runs/r/batches", "batches", "POST");
	expect_method("POST", "/v1/runs/r/stats", "stats", "GET");
	expect_method("DELETE", "/v1/runs/r/compare", "compare", "GET");
	expect_method("POST", "/v1/runs/r/series", "series", "GET");
	expect_method("POST", "/v1/runs/r/domains", "domains", "GET");
	expect_method("POST", "/v1/runs/r/shift", "shift", "GET");
	expect_method("DELETE", "/v1/runs/r/snapshots", "snapshots", "GET, POST");
	expect_method("POST", "/v1/runs/r/snapshots/final", "snapshot", "GET, DELETE");
	ck_assert_str_eq(route.label, "final");
	expect_method("PUT", "/v1/runs/r/snapshots/final", "snapshot", "GET, DELETE");
	/* methods are case-sensitive and matched whole */
	expect_method("get", "/v1/runs", "runs", "GET");
	expect_method("post", "/v1/runs/r/batches", "batches", "POST");
	expect_method("GE", "/v1/runs", "runs", "GET");
	expect_method("GETS", "/v1/runs", "runs", "GET");
	expect_method("ET", "/v1/runs", "runs", "GET");
	expect_method("GET, DELETE", "/v1/runs/r", "run", "GET, DELETE");
	expect_method("DELETE ", "/v1/runs/r", "run", "GET, DELETE");
	expect_method("", "/v1/runs/r", "run", "GET, DELETE");
}
END_TEST

/* A second parse into the same route leaves nothing of the first. */
START_TEST(test_route_is_reset)
{
	expect("GET", "/v1/runs/first/snapshots/label", HTTP_SNAPSHOT, "snapshot", "GET, DELETE",
	       "first", "label");
	expect_unknown("GET", "/elsewhere");
	ck_assert_str_eq(route.run, "");
	expect("GET", "/healthz", HTTP_HEALTHZ, "healthz", "GET", "", "");
}
END_TEST

/* The unescape callback: %00 becomes DEL, so that the string never ends early. */
START_TEST(test_unescape_no_nul)
{
	char s[] = "/v1/runs/r%00x%2Fy%41/stats", t[] = "a%00%00", u[] = "plain";

	ck_assert_uint_eq(http_unescape_no_nul(NULL, NULL, s), strlen("/v1/runs/r?x/yA/stats"));
	ck_assert_str_eq(s, "/v1/runs/r\x7f" "x/yA/stats");
	ck_assert_uint_eq(http_unescape_no_nul(NULL, NULL, t), 3);
	ck_assert_str_eq(t, "a\x7f\x7f");
	ck_assert_uint_eq(http_unescape_no_nul(NULL, NULL, u), 5);
	ck_assert_str_eq(u, "plain");
}
END_TEST

static Suite *route_suite(void)
{
	Suite *s = suite_create("http_route");
	TCase *tc = tcase_create("parse");

	tcase_add_test(tc, test_outside_runs);
	tcase_add_test(tc, test_run_endpoints);
	tcase_add_test(tc, test_over_long_names);
	tcase_add_test(tc, test_unknown_paths);
	tcase_add_test(tc, test_wrong_methods);
	tcase_add_test(tc, test_dashboard);
	tcase_add_test(tc, test_route_is_reset);
	tcase_add_test(tc, test_unescape_no_nul);
	suite_add_tcase(s, tc);
	return s;
}

int main(void)
{
	SRunner *sr = srunner_create(route_suite());
	int failed;

	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
