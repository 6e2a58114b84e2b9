/*
 * bench_query_fill.c: the fill of the query benchmark. Step 0 probes the
 * binary form; then --conns connections upload one contiguous range of
 * steps each (so that most uploads land below the run's newest step, as
 * with a backfill), each starting from the worker EMA at its first step.
 */
#include "bench_query.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <stdatomic.h>

#include "bench_util.h"

char run_path[256]; /* /v1/runs/<run> */
enum form used_form = FORM_JSON;
char form_note[512];

static _Atomic bool fill_stop;
static _Atomic unsigned long long fill_done, fill_dups, fill_retries, fill_bytes;

/* POST one body; retries 503 (bounded). 0 on 2xx, else the status or -errno. */
int upload(struct http_conn *c, struct http_resp *r, enum form f, const struct sbuf *b,
	   bool *duplicate, unsigned long long *retries)
{
	char path[300];
	int attempt, rc;

	snprintf(path, sizeof(path), "%s/batches", run_path);
	for (attempt = 0; attempt < 120 && !fill_stop; attempt++) {
		rc = http_do(c, "POST", path, ctype_of(f), b->p, b->len, r, opt.timeout);
		if (rc < 0)
			return rc;
		if (r->status == 503) {
			(*retries)++;
			sleep_s(r->retry_after > 0 && r->retry_after < 10 ? r->retry_after : 1.0);
			continue;
		}
		if (r->status / 100 == 2) {
			*duplicate = strstr(r->body.p, "\"duplicate\":true") != NULL;
			return 0;
		}
		return r->status;
	}
	return fill_stop ? -ECANCELED : 503;
}

struct filler {
	pthread_t tid;
	unsigned idx;
	int64_t from, to; /* [from, to) */
	double *ema;	  /* state after step from-1 */
	char err[1024];
};

static void *filler_main(void *arg)
{
	struct filler *t = arg;
	struct http_conn c = { .fd = -1, .port = port_now() };
	struct http_resp r = { 0 };
	struct sbuf body = { 0 }, hdr = { 0 };
	float *v = xmalloc(4 * n_channels * sizeof(float));
	float *mean = v, *var = v + n_channels, *em = v + 2 * n_channels, *ev = v + 3 * n_channels;
	int64_t s;

	for (s = t->from; s < t->to && !fill_stop; s++) {
		struct batch x = { "rank0", s, 0, mean, var, em, ev };
		bool dup = false;
		unsigned long long retries = 0;
		int rc;

		gen_step(0, s, mean, var);
		ema_apply(t->ema, mean, var);
		ema_to_f32(t->ema, em, ev);
		body_of(used_form, &body, &hdr, &x);
		rc = upload(&c, &r, used_form, &body, &dup, &retries);
		fill_retries += retries;
		if (rc != 0) {
			if (rc < 0)
				snprintf(t->err, sizeof(t->err), "step %" PRId64 ": %s", s,
					 strerror(-rc));
			else
				snprintf(t->err, sizeof(t->err), "step %" PRId64 ": HTTP %d %.800s",
					 s, rc, r.body.p ? r.body.p : "");
			fill_stop = true;
			break;
		}
		fill_done++;
		fill_bytes += body.len;
		if (dup)
			fill_dups++;
	}
	http_conn_close(&c);
	free(c.in.p);
	free(r.body.p);
	free(body.p);
	free(hdr.p);
	free(v);
	return NULL;
}

struct fill_result fillres;

/* Upload steps 0..steps-1 (the probe may have sent step 0 already). */
void fill(void)
{
	struct filler *t = xmalloc(opt.conns * sizeof(*t));
	struct http_conn c = { .fd = -1, .port = port_now() };
	struct http_resp r = { 0 };
	struct sbuf body = { 0 }, hdr = { 0 };
	float *v = xmalloc(4 * n_channels * sizeof(float));
	double *ema = xmalloc(2 * n_channels * sizeof(double));
	/* step 0 of rank0, with the EMA after it: the probe */
	struct batch x0 = {
		"rank0", 0, 0, v, v + n_channels, v + 2 * n_channels, v + 3 * n_channels
	};
	int64_t first = 0, total, s;
	double t0, last_note, deadline;
	unsigned i;

	/* the probe: step 0 in the binary form, if wanted */
	ema_init(ema);
	gen_step(0, 0, v, v + n_channels);
	ema_apply(ema, v, v + n_channels);
	ema_to_f32(ema, v + 2 * n_channels, v + 3 * n_channels);
	if (opt.form != FORM_JSON) {
		bool dup = false;
		unsigned long long retries = 0;
		int rc;

		body_safetensors(&body, &hdr, &x0);
		rc = upload(&c, &r, FORM_SAFETENSORS, &body, &dup, &retries);
		if (rc == 0) {
			used_form = FORM_SAFETENSORS;
			first = 1;
			snprintf(form_note, sizeof(form_note),
				 "safetensors (F32 tensors, Content-Type application/octet-stream; "
				 "%.1f KB a body)",
				 (double)body.len / 1e3);
		} else if (opt.form == FORM_SAFETENSORS) {
			die("the server refused the safetensors probe: %d %s", rc,
			    r.body.p ? r.body.p : "");
		} else {
			used_form = FORM_JSON;
			if (rc == 415)
				snprintf(form_note, sizeof(form_note),
					 "JSON with base64 f32 arrays (the binary form was probed: "
					 "415, not "
					 "implemented by this bnstatd)");
			else
				snprintf(form_note, sizeof(form_note),
					 "JSON with base64 f32 arrays (the binary form was probed "
					 "and refused: "
					 "%d %.200s)",
					 rc, rc > 0 && r.body.p ? r.body.p : strerror(-rc));
			note("safetensors probe: %d %.300s", rc,
			     rc > 0 && r.body.p ? r.body.p : "");
		}
	} else {
		used_form = FORM_JSON;
		snprintf(form_note, sizeof(form_note), "JSON with base64 f32 arrays (--form json)");
	}
	if (used_form == FORM_JSON) {
		body_json(&body, &x0);
		size_t l = strlen(form_note);
		snprintf(form_note + l, sizeof(form_note) - l, "; %.1f KB a body",
			 (double)body.len / 1e3);
	}
	http_conn_close(&c);
	note("upload form: %s", form_note);
	if (first == 0)
		ema_init(ema); /* step 0 goes with the fill: start from PyTorch's 0 / 1 */

	/* ranges, and the worker EMA at the start of each (one pass over the steps) */
	total = (int64_t)opt.steps - first;
	t0 = now_s();
	for (i = 0; i < opt.conns; i++) {
		t[i].idx = i;
		t[i].from = first + total * (int64_t)i / (int64_t)opt.conns;
		t[i].to = first + total * (int64_t)(i + 1) / (int64_t)opt.conns;
		t[i].ema = xmalloc(2 * n_channels * sizeof(double));
		t[i].err[0] = '\0';
	}
	for (s = first, i = 0; i < opt.conns; i++) {
		for (; s < t[i].from; s++) {
			gen_step(0, s, v, v + n_channels);
			ema_apply(ema, v, v + n_channels);
		}
		memcpy(t[i].ema, ema, 2 * n_channels * sizeof(double));
	}
	fillres.prep_seconds = now_s() - t0;
	note("filling steps %" PRId64 "..%llu with %u connections (prep %.1f s)", first,
	     opt.steps - 1, opt.conns, fillres.prep_seconds);

	t0 = now_s();
	deadline = t0 + opt.fill_timeout;
	last_note = t0;
	for (i = 0; i < opt.conns; i++)
		if (pthread_create(&t[i].tid, NULL, filler_main, &t[i]) != 0)
			die("pthread_create failed");
	while (!fill_stop && fill_done < (unsigned long long)total) {
		double now;

		sleep_s(0.2);
		now = now_s();
		if (now > deadline) {
			note("the fill did not finish within --fill-timeout %.0f s; stopping",
			     opt.fill_timeout);
			fill_stop = true;
			break;
		}
		if (now - last_note >= 15) {
			unsigned long long d = fill_done;

			note("fill: %llu/%" PRId64 " uploads, %.1f/s, %.0f s", d, total,
			     (double)d / (now - t0), now - t0);
			last_note = now;
		}
	}
	for (i = 0; i < opt.conns; i++)
		pthread_join(t[i].tid, NULL);
	fillres.seconds = now_s() - t0;
	for (i = 0; i < opt.conns; i++)
		if (t[i].err[0] != '\0')
			die("upload failed on connection %u: %s", i, t[i].err);
	if (fill_done != (unsigned long long)total)
		die("the fill stopped after %llu of %" PRId64 " uploads",
		    (unsigned long long)fill_done, total);
	fillres.done = true;
	fillres.uploads = fill_done;
	fillres.dups = fill_dups;
	fillres.retries = fill_retries;
	fillres.body_mb = (double)fill_bytes / 1e6;
	for (i = 0; i < opt.conns; i++)
		free(t[i].ema);
	free(t);
	free(v);
	free(ema);
	free(body.p);
	free(hdr.p);
	free(r.body.p);
	free(c.in.p);
}
