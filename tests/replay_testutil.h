/*
 * replay_testutil: what the Check programs of the replay module share — a
 * long deterministic run (about 400 steps, two domains, several workers per
 * step, gaps) submitted through ingest_decode_json() and store_submit() as a
 * worker would, the independent long double reference of the simulated EMA,
 * and the store-side helpers that replay and compare. The programs use one
 * fixture (setup/teardown: a temporary directory and database path).
 */
#ifndef BNSTAT_REPLAY_TESTUTIL_H
#define BNSTAT_REPLAY_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "replay.h"
#include "store.h"
#include "store_testutil.h"

#define C 5	    /* channels of both layers */
#define MAXSTEP 420 /* steps 0 .. MAXSTEP-1 */
#define N_LAYERS 2
#define N_DOMS 2
#define BIG_CACHE ((size_t)64 << 20)
#define MAX_PENDING 256
#define N_SOME 21

/* One layer of one uploaded batch, as the reference sees it. */
struct gb {
	int dom, layer, step;
	int64_t count;
	int biased;
	double mean[C], var[C];
};

/* Per (domain or all, layer, step): pooled statistics of the step. */
struct pooled {
	int64_t n;
	long double mean[C], m2[C];
};

struct ids {
	int64_t run, dom[N_DOMS + 1], layer[N_LAYERS];
};

struct ema {
	double mean[C], var[C];
	int64_t applied;
};

extern const char *const layer_names[N_LAYERS];
extern const char *const dom_names[N_DOMS];
extern char dir[256];
extern char dbpath[300];
extern uint64_t rng_state;
extern struct gb *gbs;
extern size_t n_gbs, cap_gbs;
extern struct pooled pool[N_DOMS + 1][N_LAYERS][MAXSTEP + 8];
extern struct outcome pending[MAX_PENDING];
extern size_t n_pending;
extern int64_t all_steps[MAXSTEP + 6];
extern const int64_t some_steps[N_SOME];

uint64_t rng_next(void);
double rng_unit(void);
void setup(void);
void teardown(void);
void submit_json(struct store *s, const char *json);
void wait_all(void);
void add_gb(const struct gb *g);
size_t append_array(char *p, size_t room, const double *v);
void make_batch(struct store *s, int dom, const char *worker, int step, int seq, const bool *layers,
		const bool *unused);
bool has_a(int s);
bool has_b(int s);
void fill_run(struct store *s, uint64_t seed);
void build_pool(void);
int64_t ref_replay(int dom_idx, int layer, double a, int64_t step, double *mean, double *var);
struct store *open_store(void); /* keeps no replay states: see open_store_with() */
struct store *open_store_with(const struct store_options *o);
struct ids lookup_ids(struct store_reader *r);
struct ema replay(struct replay_cache *cache, struct store_reader *r, const struct ids *ids, int d,
		  int l, double a, int64_t step);
void assert_same_bits(const struct ema *x, const struct ema *y, const char *what, int d, int l,
		      double a, int64_t step);
void assert_matches_ref(const struct ema *e, int d, int l, double a, int64_t step);
size_t n_checkpoints(struct replay_cache *c);
void check_steps(struct replay_cache *c, struct replay_cache *zero, struct store_reader *r,
		 const struct ids *ids, int d, int l, double a, const int64_t *steps, size_t n);
void scramble_steps(uint64_t seed);

/* Every point of replay_channel equals replay_layer at that step, bit for bit. */
struct points {
	int64_t step[MAXSTEP + 8];
	double mean[MAXSTEP + 8], var[MAXSTEP + 8];
	size_t n;
};
int collect_point(void *ctx, int64_t step, double mean, double var, double bound);
void check_channel(struct replay_cache *c, struct store_reader *r, const struct ids *ids, int d,
		   int l, double a, int ch, int64_t from_excl, int64_t to);

#endif
