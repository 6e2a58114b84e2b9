/*
 * query_slide: the precise window ending at each entry of a walk over
 * steps, slid along with the walk (docs/API.md, "Momentum advisor").
 *
 * A two-stack queue: entries are pushed on the back stack (kept as they
 * are, their merge built only when asked for); when the oldest entry
 * leaves the window and the front stack is empty, the back stack is turned
 * into the front one as suffix merges, oldest on top. Each entry is so
 * merged O(1) times however wide the window, and memory holds the
 * window's entries only.
 *
 * Which entries the window ending at an entry holds is decided in one
 * place, slide_drops() and slide_reaches() below.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bnstat/stats.h"
#include "query_private.h"

/*
 * Does the oldest entry (at oldest_step) leave the window ending at
 * newest_step? The window of `window` steps is (newest - window, newest];
 * window=auto's is the smallest one of min_batches batches counted over all
 * layers (docs/API.md, "window=auto"), looked up in the rule's table, so
 * that every layer and /compare agree on it.
 */
static bool slide_drops(const struct query_slide_rule *rule, int64_t oldest_step,
			int64_t newest_step)
{
	return oldest_step <= query_window_low(rule->autow, rule->window, newest_step);
}

/* Can an entry at `step` be inside the window ending at a later entry `at`? */
static bool slide_reaches(const struct query_slide_rule *rule, int64_t step, int64_t at)
{
	return step > query_window_low(rule->autow, rule->window, at);
}

bool query_slide_wanted(const struct query_slide *s, int64_t step, int64_t at)
{
	return slide_reaches(&s->rule, step, at);
}

int query_slide_init(struct query_slide *s, size_t channels, const struct query_slide_rule *rule)
{
	memset(s, 0, sizeof(*s));
	s->channels = channels;
	s->rule = *rule;
	s->back_sum.mean = calloc(2 * channels, sizeof(double));
	if (s->back_sum.mean == NULL)
		return -ENOMEM;
	s->back_sum.m2 = s->back_sum.mean + channels;
	return 0;
}

static void slots_free(struct query_slide_slot *v, size_t cap)
{
	size_t i;

	for (i = 0; i < cap; i++)
		free(v[i].mean);
	free(v);
}

void query_slide_free(struct query_slide *s)
{
	slots_free(s->back, s->back_cap);
	slots_free(s->front, s->front_cap);
	free(s->back_sum.mean);
	memset(s, 0, sizeof(*s));
}

/* Slot i of a stack, grown as needed, with its arrays; NULL when out of memory. */
static struct query_slide_slot *slot_at(struct query_slide_slot **v, size_t *cap, size_t i,
					size_t channels)
{
	if (i == *cap) {
		size_t ncap = *cap ? 2 * *cap : 8;
		struct query_slide_slot *p = realloc(*v, ncap * sizeof(*p));

		if (p == NULL)
			return NULL;
		memset(p + *cap, 0, (ncap - *cap) * sizeof(*p));
		*v = p;
		*cap = ncap;
	}
	if ((*v)[i].mean == NULL) {
		(*v)[i].mean = malloc(2 * channels * sizeof(double));
		if ((*v)[i].mean == NULL)
			return NULL;
		(*v)[i].m2 = (*v)[i].mean + channels;
	}
	return &(*v)[i];
}

/* out = a merged with b, per channel (out may be a). */
static void slot_merge(size_t channels, struct query_slide_slot *out,
		       const struct query_slide_slot *a, const struct query_slide_slot *b)
{
	size_t i;

	for (i = 0; i < channels; i++) {
		int64_t n = a->n;
		double mean = a->mean[i], m2 = a->m2[i];

		stats_merge1(&n, &mean, &m2, b->n, b->mean[i], b->m2[i]);
		out->mean[i] = mean;
		out->m2[i] = m2;
	}
	out->n = a->n + b->n;
}

/* Turn the back stack into the front one: suffix merges, the oldest entry's on top. */
static int slide_turn(struct query_slide *s)
{
	size_t c = s->channels, k;

	for (k = 0; k < s->n_back; k++) {
		const struct query_slide_slot *e = &s->back[s->n_back - 1 - k];
		struct query_slide_slot *f = slot_at(&s->front, &s->front_cap, k, c);

		if (f == NULL)
			return -ENOMEM;
		if (k == 0) {
			memcpy(f->mean, e->mean, 2 * c * sizeof(double));
			f->n = e->n;
		} else {
			slot_merge(c, f, e, &s->front[k - 1]);
		}
		f->step = e->step;
	}
	s->n_front = s->n_back;
	s->n_back = 0;
	s->back_merged = 0;
	s->back_sum.n = 0;
	return 0;
}

int query_slide_push(struct query_slide *s, int64_t step, int64_t n, const double *mean,
		     const double *m2)
{
	size_t c = s->channels;
	struct query_slide_slot *e = slot_at(&s->back, &s->back_cap, s->n_back, c);

	if (e == NULL)
		return -ENOMEM;
	e->step = step;
	e->n = n;
	memcpy(e->mean, mean, c * sizeof(double));
	memcpy(e->m2, m2, c * sizeof(double));
	s->n_back++;
	/* drop the entries that left the window ending here (never the newest) */
	while (s->n_front + s->n_back > 1) {
		const struct query_slide_slot *old =
			s->n_front > 0 ? &s->front[s->n_front - 1] : &s->back[0];

		if (!slide_drops(&s->rule, old->step, step))
			break;
		if (s->n_front == 0 && slide_turn(s) < 0)
			return -ENOMEM;
		s->n_front--;
	}
	return 0;
}

void query_slide_estimate(struct query_slide *s, double *mean_out, double *var_out)
{
	size_t c = s->channels, i;
	struct query_slide_slot *sum = &s->back_sum;
	struct query_slide_slot out = { .mean = mean_out, .m2 = var_out };

	/* the back stack's merge, extended over the entries pushed since */
	for (; s->back_merged < s->n_back; s->back_merged++) {
		const struct query_slide_slot *e = &s->back[s->back_merged];

		if (s->back_merged == 0) {
			memcpy(sum->mean, e->mean, 2 * c * sizeof(double));
			sum->n = e->n;
		} else {
			slot_merge(c, sum, sum, e);
		}
	}
	if (s->n_front > 0 && s->n_back > 0) {
		slot_merge(c, &out, &s->front[s->n_front - 1], sum);
	} else {
		const struct query_slide_slot *one =
			s->n_front > 0 ? &s->front[s->n_front - 1] : sum;

		memcpy(mean_out, one->mean, c * sizeof(double));
		memcpy(var_out, one->m2, c * sizeof(double));
		out.n = s->n_front + s->n_back > 0 ? one->n : 0;
	}
	/* population variance M2/n, as every precise estimate */
	for (i = 0; i < c; i++)
		var_out[i] = out.n > 0 ? var_out[i] / (double)out.n : 0.0;
}
