/* query_fixture: the run every query Check program starts from (see query_testutil.h). */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#include <jansson.h>

#include "query.h"
#include "replay.h"
#include "store.h"
#include "store_testutil.h"
#include "query_testutil.h"

/*
 * Run r1. Layer bn has 2 channels, head.bn 1. Domain default: steps 1 and
 * 2, workers w1 (count 4) and w2 (count 12), so that a step pools 16
 * elements; w1 and w2 send their EMA of bn. Domain val: step 2, w1 only.
 */
const char *const qtu_uploads[] = {
	"{\"worker\":\"w1\",\"step\":1,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[0.5,-1],\"var\":[1,0.5],"
	"\"ema_mean\":[0.25,-0.5],\"ema_var\":[0.75,0.5]},"
	"\"head.bn\":{\"count\":4,\"mean\":[1],\"var\":[2]}}}",
	"{\"worker\":\"w2\",\"step\":1,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":12,\"mean\":[1.5,-0.75],\"var\":[1.5,0.25],"
	"\"ema_mean\":[0.375,-0.5],\"ema_var\":[1,0.625]},"
	"\"head.bn\":{\"count\":12,\"mean\":[-0.5],\"var\":[0.5]}}}",
	"{\"worker\":\"w1\",\"step\":2,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[1,-2],\"var\":[1,0.5],"
	"\"ema_mean\":[0.5,-1],\"ema_var\":[0.75,0.5]},"
	"\"head.bn\":{\"count\":4,\"mean\":[0],\"var\":[2]}}}",
	"{\"worker\":\"w2\",\"step\":2,\"seq\":0,\"layers\":{"
	"\"bn\":{\"count\":12,\"mean\":[2,-1.75],\"var\":[1.5,0.25],"
	"\"ema_mean\":[0.625,-1],\"ema_var\":[1,0.625]},"
	"\"head.bn\":{\"count\":12,\"mean\":[-0.5],\"var\":[0.5]}}}",
	"{\"worker\":\"w1\",\"step\":2,\"seq\":0,\"domain\":\"val\",\"layers\":{"
	"\"bn\":{\"count\":4,\"mean\":[2,0.5],\"var\":[2,0.25]}}}",
};

const size_t qtu_n_uploads = sizeof(qtu_uploads) / sizeof(qtu_uploads[0]);

char qtu_dir[256];
char qtu_dbpath[300];
struct store *st;
struct store_reader *rd;
struct replay_cache *cache;

void qtu_setup(void)
{
	struct bn_error err;

	tu_tmpdir_make(qtu_dir, sizeof(qtu_dir), qtu_dbpath, sizeof(qtu_dbpath), "check_query");
	if (store_open(qtu_dbpath, NULL, &st, &err) < 0)
		ck_abort_msg("store_open: %s", err.message);
	qtu_upload_all(st, qtu_uploads, qtu_n_uploads);
	if (store_reader_get(st, &rd, &err) < 0)
		ck_abort_msg("store_reader_get: %s", err.message);
	cache = replay_cache_new((size_t)1 << 20);
	ck_assert_ptr_nonnull(cache);
}

void qtu_teardown(void)
{
	replay_cache_free(cache);
	store_reader_put(st, rd);
	store_close(st);
	tu_tmpdir_remove(qtu_dir);
}

json_t *qtu_layer_of(json_t *doc, const char *name)
{
	json_t *l = json_object_get(json_object_get(doc, "layers"), name);

	ck_assert_msg(json_is_object(l), "no layer %s", name);
	return l;
}
