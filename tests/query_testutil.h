/*
 * query_testutil: what the query Check programs (tests/check_query_*.c) need beyond store_testutil.h:
 * submitting a list of JSON uploads of run "r1" and waiting for all of
 * them, and comparing doubles with a reference. Header-only, for tests.
 */
#ifndef BNSTAT_QUERY_TESTUTIL_H
#define BNSTAT_QUERY_TESTUTIL_H

#include <check.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include <jansson.h>

#include "store.h"
#include "store_testutil.h"

/* Submit every upload of run "r1" in docs[0..n) and wait for each commit. */
static inline void qtu_upload_all(struct store *s, const char *const *docs, size_t n)
{
	struct outcome *o = calloc(n ? n : 1, sizeof(*o));
	size_t i;

	ck_assert_ptr_nonnull(o);
	for (i = 0; i < n; i++) {
		outcome_init(&o[i]);
		ck_assert_int_eq(store_submit(s, decode(docs[i]), on_done, &o[i]), 0);
	}
	for (i = 0; i < n; i++) {
		outcome_wait(&o[i]);
		ck_assert_msg(o[i].res.status == 200 && !o[i].res.duplicate,
			      "upload %zu: status %d (%s)", i, o[i].res.status,
			      o[i].res.err.message);
	}
	free(o);
}

/*
 * The number at path `key` of object o (a real; NULL reply fails the test).
 * Integers are returned as doubles too.
 */
static inline double qtu_num(const json_t *o, const char *key)
{
	json_t *v = json_object_get(o, key);

	ck_assert_msg(json_is_number(v), "%s is not a number", key);
	return json_number_value(v);
}

/* Element i of the array at `key` of o, as a double. */
static inline double qtu_at(const json_t *o, const char *key, size_t i)
{
	json_t *a = json_object_get(o, key);

	ck_assert_msg(json_is_array(a), "%s is not an array", key);
	ck_assert_msg(json_is_number(json_array_get(a, i)), "%s[%zu] is not a number", key, i);
	return json_number_value(json_array_get(a, i));
}

/* got equals ref within relative error rel (rel 0: the same double). */
#define qtu_assert_close(got, ref, rel, what)                                                      \
	do {                                                                                       \
		double g_ = (got), r_ = (ref);                                                     \
		ck_assert_msg((rel) == 0 ? g_ == r_                                                \
					 : fabs(g_ - r_) <= (rel)*fmax(fabs(r_), 1e-300),          \
			      "%s: got %.17g, expected %.17g", (what), g_, r_);                    \
	} while (0)

/*
 * The fixture of the query Check programs (tests/query_fixture.c): a fresh
 * store holding run r1 (qtu_uploads, described there), a reader rd on it
 * and a replay cache, made by qtu_setup() and removed by qtu_teardown()
 * around each test of a checked fixture.
 */
struct replay_cache;
extern const char *const qtu_uploads[];
extern const size_t qtu_n_uploads;
extern struct store *st;
extern struct store_reader *rd;
extern struct replay_cache *cache;
void qtu_setup(void);
void qtu_teardown(void);

/* doc's layer `name` (borrowed from doc); fails the test when it is absent. */
json_t *qtu_layer_of(json_t *doc, const char *name);

#endif
