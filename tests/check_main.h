/*
 * check_main: the main() of every Check program. CHECK_MAIN(suite_fn) runs
 * the suite suite_fn() builds, with the verbosity of $CK_VERBOSITY (normal
 * when unset), and exits 0 when no test failed, 1 otherwise.
 */
#ifndef BNSTAT_CHECK_MAIN_H
#define BNSTAT_CHECK_MAIN_H

#include <check.h>

static inline int check_main_run(Suite *s)
{
	SRunner *sr = srunner_create(s);
	int failed;

	srunner_run_all(sr, CK_ENV);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}

#define CHECK_MAIN(suite_fn)                                                                       \
	int main(void)                                                                             \
	{                                                                                          \
		return check_main_run(suite_fn());                                                 \
	}

#endif
