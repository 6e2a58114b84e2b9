/*
 * check_http_guard: the deadlines and the body budget of http_guard.c,
 * without a server: a connection is one end of a socketpair, and the
 * guard's shutdown shows as EOF on the other end.
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "check_main.h"
#include "http_private.h"

static const struct http_guard_options opts = {
	.header_timeout_s = 1,
	.idle_timeout_s = 2,
	.body_min_rate = 1000,
	.body_memory_max = 10000,
	.max_connections = 16,
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Seconds until the peer of fd sees EOF, or -1 past `within` seconds. */
static double eof_after(int fd, double within)
{
	double t0 = now_s();
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char c;

	while (now_s() - t0 < within) {
		if (poll(&p, 1, 50) == 1 && read(fd, &c, 1) == 0)
			return now_s() - t0;
	}
	return -1;
}

START_TEST(test_budget)
{
	struct http_guard *g;

	ck_assert_int_eq(http_guard_start(&opts, &g), 0);
	ck_assert(http_guard_reserve(g, 6000));
	ck_assert(http_guard_reserve(g, 4000)); /* exactly the budget */
	ck_assert(!http_guard_reserve(g, 1));
	http_guard_release(g, 4000);
	ck_assert(!http_guard_reserve(g, 4001));
	ck_assert(http_guard_reserve(g, 4000));
	ck_assert(!http_guard_reserve(g, (size_t)-1)); /* no wrap-around */
	http_guard_release(g, 10000);
	ck_assert(http_guard_reserve(g, 10000));
	http_guard_release(g, 10000);
	http_guard_stop(g);
}
END_TEST

START_TEST(test_header_deadline)
{
	struct http_guard *g;
	struct http_conn *c;
	int sv[2];
	double t;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(http_guard_start(&opts, &g), 0);
	c = http_guard_open(g, sv[0], NULL);
	ck_assert_ptr_nonnull(c);
	/* the request line of the first request keeps the clock of the accept */
	http_guard_phase(g, c, HTTP_PHASE_HEADERS);
	t = eof_after(sv[1], 3.0);
	ck_assert_msg(t >= 0.9 && t < 1.6, "closed after %.2f s, header deadline 1 s", t);
	http_guard_close(g, c);
	http_guard_stop(g);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

START_TEST(test_body_rate)
{
	struct http_guard *g;
	struct http_conn *fast, *slow, *busy;
	int a[2], b[2], h[2];
	double t0, t;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, a), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, b), 0);
	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, h), 0);
	ck_assert_int_eq(http_guard_start(&opts, &g), 0);
	fast = http_guard_open(g, a[0], NULL);
	slow = http_guard_open(g, b[0], NULL);
	busy = http_guard_open(g, h[0], NULL);
	http_guard_phase(g, fast, HTTP_PHASE_BODY);
	http_guard_phase(g, slow, HTTP_PHASE_BODY);
	http_guard_phase(g, busy, HTTP_PHASE_HANDLING); /* e.g. suspended for the writer */
	t0 = now_s();
	http_guard_body(fast, 100000); /* far above 1000 B/s for the test's 2 s */
	http_guard_body(slow, 500);
	t = eof_after(b[1], 3.0);
	ck_assert_msg(t >= 0.9 && t < 1.6, "slow body closed after %.2f s", t);
	/* the others stay open past the grace and the idle bound */
	while (now_s() - t0 < 2.5)
		ck_assert_double_lt(eof_after(a[1], 0.1), 0);
	ck_assert_double_lt(eof_after(h[1], 0.1), 0);
	http_guard_close(g, fast);
	http_guard_close(g, slow);
	http_guard_close(g, busy);
	http_guard_stop(g);
	close(a[0]), close(a[1]), close(b[0]), close(b[1]), close(h[0]), close(h[1]);
}
END_TEST

START_TEST(test_idle_bound)
{
	struct http_guard *g;
	struct http_conn *c;
	int sv[2];
	double t;

	ck_assert_int_eq(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	ck_assert_int_eq(http_guard_start(&opts, &g), 0);
	c = http_guard_open(g, sv[0], NULL);
	http_guard_phase(g, c, HTTP_PHASE_IDLE);
	/* past the header deadline, but idle keep-alive has idle_timeout_s */
	t = eof_after(sv[1], 3.5);
	ck_assert_msg(t >= 1.9 && t < 2.6, "idle connection closed after %.2f s", t);
	http_guard_close(g, c);
	http_guard_stop(g);
	close(sv[0]);
	close(sv[1]);
}
END_TEST

static struct sockaddr_in ipv4(const char *dotted)
{
	struct sockaddr_in a = { .sin_family = AF_INET };

	inet_pton(AF_INET, dotted, &a.sin_addr);
	return a;
}

START_TEST(test_kept_slots)
{
	struct http_guard *g;
	struct http_conn *c[16];
	struct sockaddr_in busy = ipv4("10.0.0.1"), quiet = ipv4("10.0.0.2");
	int i;

	ck_assert_int_eq(http_guard_start(&opts, &g), 0);
	/* 14 of 16 open from one address: the last eighth (2) is kept */
	for (i = 0; i < 14; i++) {
		ck_assert(http_guard_admit(g, (struct sockaddr *)&busy));
		c[i] = http_guard_open(g, -1, (struct sockaddr *)&busy);
	}
	ck_assert(!http_guard_admit(g, (struct sockaddr *)&busy));
	ck_assert(http_guard_admit(g, (struct sockaddr *)&quiet));
	c[14] = http_guard_open(g, -1, (struct sockaddr *)&quiet);
	ck_assert(http_guard_admit(g, (struct sockaddr *)&quiet)); /* holds 1 < 4 */
	/* below 7/8 again, anyone */
	http_guard_close(g, c[0]);
	http_guard_close(g, c[1]);
	ck_assert(http_guard_admit(g, (struct sockaddr *)&busy));
	for (i = 2; i < 15; i++)
		http_guard_close(g, c[i]);
	http_guard_stop(g);
}
END_TEST

static Suite *guard_suite(void)
{
	Suite *s = suite_create("http_guard");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_budget);
	tcase_add_test(tc, test_header_deadline);
	tcase_add_test(tc, test_body_rate);
	tcase_add_test(tc, test_idle_bound);
	tcase_add_test(tc, test_kept_slots);
	suite_add_tcase(s, tc);
	return s;
}

CHECK_MAIN(guard_suite)
