/* check_config: defaults, flags, the config file and their precedence. */
#include <check.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "file_testutil.h"

static char path[64];

static void write_file(const char *text)
{
	tu_write_temp(path, sizeof(path), "check_config", text);
}

static int parse(struct config *c, struct bn_error *err, int argc, ...)
{
	char *argv[16];
	va_list ap;
	int i;

	ck_assert_int_lt(argc, 15);
	argv[0] = "bnstatd";
	va_start(ap, argc);
	for (i = 1; i <= argc; i++)
		argv[i] = va_arg(ap, char *);
	va_end(ap);
	argv[argc + 1] = NULL;
	bn_error_clear(err);
	return config_parse(c, argc + 1, argv, err);
}

START_TEST(test_defaults)
{
	struct config c;
	struct bn_error err;

	ck_assert_int_eq(parse(&c, &err, 0), 0);
	ck_assert_str_eq(c.db, "./bnstat.db");
	ck_assert_str_eq(c.host, "127.0.0.1");
	ck_assert_uint_eq(c.port, 8650);
	ck_assert_str_eq(c.http.host, "127.0.0.1");
	ck_assert_uint_eq(c.http.port, 8650);
	ck_assert(c.store.sync_full);
	ck_assert_int_eq(c.log_level, LOG_INFO);
	/* the limits against hostile clients (docs/OPERATIONS.md) */
	ck_assert_uint_eq(c.http.header_timeout_s, 10);
	ck_assert_uint_eq(c.http.body_min_rate, 1024);
	ck_assert_uint_eq(c.http.body_memory_max, 256u << 20);
	/* a handful of addresses cannot take every connection */
	ck_assert_uint_le(c.http.max_per_ip * 8, c.http.max_connections);
	/* this program runs from the build tree: the dashboard of the source tree */
	ck_assert_str_eq(c.ui_dir, BNSTAT_UI_SRCDIR);
	ck_assert_ptr_eq(c.http.ui_dir, c.ui_dir);
	/* the free-space warning (docs/OPERATIONS.md, "A full disk") */
	ck_assert_uint_eq(c.store.disk_free_warn_bytes, (size_t)1 << 30);
	ck_assert_int_eq(parse(&c, &err, 2, "--disk-free-warn-mb", "0"), 0);
	ck_assert_uint_eq(c.store.disk_free_warn_bytes, 0);
	ck_assert_int_eq(parse(&c, &err, 1, "--disk-free-warn-mb=300"), 0);
	ck_assert_uint_eq(c.store.disk_free_warn_bytes, (size_t)300 << 20);
	ck_assert_int_lt(parse(&c, &err, 2, "--disk-free-warn-mb", "-1"), 0);
	ck_assert_str_eq(err.path, "disk-free-warn-mb");
}
END_TEST

START_TEST(test_ui_dir)
{
	struct config c;
	struct bn_error err;

	ck_assert_int_eq(parse(&c, &err, 2, "--ui-dir", "/srv/ui"), 0);
	ck_assert_str_eq(c.http.ui_dir, "/srv/ui");
	ck_assert_int_eq(parse(&c, &err, 1, "--ui-dir="), 0);
	ck_assert_str_eq(c.http.ui_dir, "");
	ck_assert_int_eq(parse(&c, &err, 2, "--ui-dir", "auto"), 0);
	ck_assert_str_eq(c.http.ui_dir, BNSTAT_UI_SRCDIR);
}
END_TEST

START_TEST(test_client_limits)
{
	struct config c;
	struct bn_error err;

	ck_assert_int_eq(parse(&c, &err, 5, "--header-timeout", "3", "--body-min-rate=0",
			       "--body-memory-max", "1048576"),
			 0);
	ck_assert_uint_eq(c.http.header_timeout_s, 3);
	ck_assert_uint_eq(c.http.body_min_rate, 0);
	ck_assert_uint_eq(c.http.body_memory_max, 1048576);
	ck_assert_int_lt(parse(&c, &err, 2, "--header-timeout", "0"), 0);
	ck_assert_str_eq(err.path, "header-timeout");
	/* a budget below one buffer would refuse every body */
	ck_assert_int_lt(parse(&c, &err, 2, "--body-memory-max", "65536"), 0);
	ck_assert_str_eq(err.path, "body-memory-max");
}
END_TEST

START_TEST(test_flags)
{
	struct config c;
	struct bn_error err;

	ck_assert_int_eq(parse(&c, &err, 6, "--db", "/tmp/x.db", "--listen=[::1]:0", "--max-body",
			       "2048", "--synchronous=normal"),
			 0);
	ck_assert_str_eq(c.db, "/tmp/x.db");
	ck_assert_str_eq(c.host, "::1");
	ck_assert_uint_eq(c.port, 0);
	ck_assert_uint_eq(c.http.max_body, 2048);
	ck_assert(!c.store.sync_full);

	ck_assert_int_eq(parse(&c, &err, 1, "--help"), 0);
	ck_assert(c.help);
	ck_assert_int_eq(parse(&c, &err, 1, "-V"), 0);
	ck_assert(c.version);
}
END_TEST

START_TEST(test_bad_flags)
{
	struct config c;
	struct bn_error err;

	ck_assert_int_lt(parse(&c, &err, 2, "--listen", "8650"), 0);
	ck_assert_ptr_nonnull(strstr(err.message, "HOST:PORT"));
	ck_assert_int_lt(parse(&c, &err, 2, "--listen", "127.0.0.1:70000"), 0);
	ck_assert_int_lt(parse(&c, &err, 2, "--threads", "0"), 0);
	ck_assert_ptr_nonnull(strstr(err.message, "--threads"));
	ck_assert_int_lt(parse(&c, &err, 2, "--threads", "-1"), 0);
	ck_assert_int_lt(parse(&c, &err, 2, "--max-body", "12x"), 0);
	ck_assert_int_lt(parse(&c, &err, 2, "--log-level", "loud"), 0);
	ck_assert_int_lt(parse(&c, &err, 2, "--no-such-option", "1"), 0);
	ck_assert_ptr_nonnull(strstr(err.message, "--no-such-option"));
	ck_assert_int_lt(parse(&c, &err, 1, "--db"), 0);
	ck_assert_int_lt(parse(&c, &err, 1, "stray"), 0);
}
END_TEST

START_TEST(test_file_and_precedence)
{
	struct config c;
	struct bn_error err;

	write_file(
		"# comment\n\n db = \"/var/lib/x.db\" \nmax_layers = 12\nlisten = 0.0.0.0:9000\n");
	ck_assert_int_eq(parse(&c, &err, 4, "--listen", "127.0.0.1:1", "-c", path), 0);
	ck_assert_str_eq(c.db, "/var/lib/x.db");
	ck_assert_uint_eq(c.http.limits.max_layers, 12);
	ck_assert_str_eq(c.host, "127.0.0.1"); /* the flag wins, wherever it stands */
	ck_assert_uint_eq(c.port, 1);
	unlink(path);
}
END_TEST

START_TEST(test_file_errors_name_the_line)
{
	struct config c;
	struct bn_error err;

	write_file("db = a.db\n# fine\ncolour = blue\n");
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":3:"));
	ck_assert_ptr_nonnull(strstr(err.message, "colour"));
	unlink(path);

	write_file("threads = 4\nthreads = many\n");
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":2:"));
	unlink(path);

	write_file("just words\n");
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":1:"));
	unlink(path);

	ck_assert_int_lt(parse(&c, &err, 2, "--config", "/nonexistent/bnstatd.conf"), 0);
	ck_assert_ptr_nonnull(strstr(err.message, "/nonexistent/bnstatd.conf"));
}
END_TEST

/* A line longer than any buffer is one line: the tail of a comment sets nothing. */
START_TEST(test_long_lines)
{
	static char text[40000];
	struct config c;
	struct bn_error err;
	size_t n, len;

	for (len = 8180; len < 8200; len++) {
		n = (size_t)snprintf(text, sizeof(text), "# ");
		memset(text + n, 'x', len);
		snprintf(text + n + len, sizeof(text) - n - len, "db = /tmp/evil.db\n");
		write_file(text);
		ck_assert_int_eq(parse(&c, &err, 2, "--config", path), 0);
		ck_assert_str_eq(c.db, "./bnstat.db");
		unlink(path);
	}

	/* a long value is read whole, then refused by its own check */
	n = (size_t)snprintf(text, sizeof(text), "db = ");
	memset(text + n, 'd', 30000);
	snprintf(text + n + 30000, sizeof(text) - n - 30000, "\n");
	write_file(text);
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":1:"));
	unlink(path);
}
END_TEST

/*
 * A NUL byte refuses the file, naming its line: it would end the line
 * early, so that "db = /tmp/a\0.db" set db to "/tmp/a" and the tail went
 * unread (found by tests/fuzz/fuzz_config).
 */
START_TEST(test_nul_byte)
{
	static const char db[] = "threads = 2\ndb = /tmp/a\0.db\n";
	static const char comment[] = "# a comment\0 with a NUL\n";
	struct config c;
	struct bn_error err;

	tu_write_temp_n(path, sizeof(path), "check_config", db, sizeof(db) - 1);
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_int_eq(err.status, 400);
	ck_assert_ptr_nonnull(strstr(err.message, ":2: a NUL byte"));
	unlink(path);
	tu_write_temp_n(path, sizeof(path), "check_config", comment, sizeof(comment) - 1);
	ck_assert_int_lt(parse(&c, &err, 2, "--config", path), 0);
	ck_assert_ptr_nonnull(strstr(err.message, ":1: a NUL byte"));
	unlink(path);
}
END_TEST

int main(void)
{
	Suite *s = suite_create("config");
	TCase *tc = tcase_create("core");
	SRunner *sr;
	int failed;

	tcase_add_test(tc, test_defaults);
	tcase_add_test(tc, test_client_limits);
	tcase_add_test(tc, test_flags);
	tcase_add_test(tc, test_ui_dir);
	tcase_add_test(tc, test_bad_flags);
	tcase_add_test(tc, test_file_and_precedence);
	tcase_add_test(tc, test_file_errors_name_the_line);
	tcase_add_test(tc, test_long_lines);
	tcase_add_test(tc, test_nul_byte);
	suite_add_tcase(s, tc);
	sr = srunner_create(s);
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
