/*
 * bench: the ingest benchmark of bnstatd (SPEC section 6, "Fast").
 *
 * One program, one run, everything side by side on the same machine:
 *
 *   - sink: a bare libmicrohttpd server inside this process, configured like
 *     bnstatd's (internal polling thread pool, epoll, same thread count),
 *     that reads each POST body into memory, drops it and answers {}: the
 *     ceiling for a given body;
 *   - bnstatd, spawned as a child process on a temporary database, fed
 *     ResNet-50 sized uploads as safetensors, JSON with base64 arrays and
 *     JSON with number arrays;
 *   - in process, one thread: fvcore's _PopulationVarianceEstimator update
 *     in float32 (what PreciseBN users run today) and jansson's json_loadb
 *     alone on the two JSON bodies.
 *
 * The load generator is a minimal HTTP/1.1 keep-alive client on raw
 * non-blocking sockets driven by epoll, with the request bodies rendered
 * once up front and sent with writev, so that it costs little next to the
 * server. Workers upload as in training: every worker sends its batch of
 * step s, then all wait for each other (a barrier), then step s+1.
 *
 * tests/bench/README.md says how each number is measured.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>

#if MHD_VERSION < 0x00097002
typedef int MHD_Result;
#else
typedef enum MHD_Result MHD_Result;
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "bench writes little-endian binary bodies with memcpy; port it first"
#endif

#define BENCH_PROG "bench"
#include "bench_common.h"

#define RESNET50_LAYERS 53
#define RESNET50_CHANNELS 26560
#define NBS 32 /* images per batch (per GPU) */

#define MAX_CONNS 1024
#define RBUF_SIZE 16384
#define REQ_HEAD_MAX 1024
#define STATUS_MAX 600

/* ------------------------------------------------------------------------ */
/* small helpers (the rest are in bench_common.h) */

static double uniform01(uint64_t *s)
{
	return (double)(splitmix64(s) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------------------------ */
/* options */

enum form { F_ST, F_B64, F_JSON, F_COUNT };

static const char *const form_names[F_COUNT] = { "safetensors", "b64", "json" };

struct options {
	const char *bnstatd;
	double seconds;
	bool seconds_given;
	uint64_t uploads;     /* per cell, 0 = bounded by time only */
	uint64_t uploads_rss; /* --uploads-rss mode when > 0 */
	unsigned conns[16];
	size_t n_conns;
	bool run_sink, run_form[F_COUNT], run_estimator, run_parse;
	unsigned threads;
	unsigned batches_per_step;
	unsigned client_threads;
	unsigned variants;
	double timeout;
	const char *tmpdir;
	bool keep;
	const char *daemon_args[64];
	size_t n_daemon_args;
	int dump_form; /* --dump-body: -1 or a form */
};

static struct options opt;

static void usage(FILE *f, const char *argv0)
{
	fprintf(f,
		"Usage: %s [OPTION]... [BNSTATD]\n"
		"The ingest benchmark of bnstatd: a bare libmicrohttpd sink, bnstatd with\n"
		"safetensors, base64 and JSON-number bodies, and the in-process baselines,\n"
		"side by side. Prints a Markdown report on stdout, progress on stderr.\n\n"
		"  --bnstatd PATH          the daemon (default: $BNSTATD, else ./src/bnstatd)\n"
		"  --seconds S             length of each cell (default 5)\n"
		"  --uploads N             or: uploads per cell (a count; time still bounds it)\n"
		"  --conns LIST            concurrent connections = workers (default 8,64)\n"
		"  --forms LIST            of sink,safetensors,b64,json,estimator,parse\n"
		"                          (default: all)\n"
		"  --threads N             bnstatd --threads and the sink's pool (default 4)\n"
		"  --batches-per-step K    uploads per worker per step, seq 0..K-1 (default 1)\n"
		"  --client-threads N      load generator threads (default 2)\n"
		"  --variants N            distinct value sets, rendered up front (default 8)\n"
		"  --timeout S             per request (default 60)\n"
		"  --daemon-arg ARG        pass ARG to bnstatd (repeat: --daemon-arg\n"
		"                          --synchronous --daemon-arg normal)\n"
		"  --uploads-rss N         memory mode: N uploads of the first bnstatd form\n"
		"                          of --forms at the first --conns, RSS sampled as it\n"
		"                          goes (bounded by --seconds, default then 600)\n"
		"  --tmpdir DIR            where the temporary database goes ($TMPDIR, /tmp)\n"
		"  --keep                  keep the temporary directories\n"
		"  --dump-body FORM        write one upload body (rank0, step 0) to stdout\n"
		"                          and exit (to check a decoder against it)\n"
		"  -h, --help              this text\n",
		argv0);
}

static unsigned long parse_ulong(const char *s, const char *what, unsigned long max)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-')
		die("%s: not a number in 0..%lu: '%s'", what, max, s);
	return v;
}

static void parse_forms(const char *list)
{
	char *copy = strdup(list), *save = NULL, *tok;
	int f;

	if (copy == NULL)
		die("out of memory");
	opt.run_sink = opt.run_estimator = opt.run_parse = false;
	for (f = 0; f < F_COUNT; f++)
		opt.run_form[f] = false;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		bool known = false;

		for (f = 0; f < F_COUNT; f++)
			if (strcmp(tok, form_names[f]) == 0)
				opt.run_form[f] = known = true;
		if (strcmp(tok, "sink") == 0)
			opt.run_sink = known = true;
		if (strcmp(tok, "estimator") == 0)
			opt.run_estimator = known = true;
		if (strcmp(tok, "parse") == 0)
			opt.run_parse = known = true;
		if (!known)
			die("--forms: unknown form '%s' (sink, safetensors, b64, json, "
			    "estimator, parse)",
			    tok);
	}
	free(copy);
}

static void parse_conns(const char *list)
{
	char *copy = strdup(list), *save = NULL, *tok;

	if (copy == NULL)
		die("out of memory");
	opt.n_conns = 0;
	for (tok = strtok_r(copy, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		if (opt.n_conns == sizeof(opt.conns) / sizeof(opt.conns[0]))
			die("--conns: at most 16 values");
		opt.conns[opt.n_conns] = (unsigned)parse_ulong(tok, "--conns", MAX_CONNS);
		if (opt.conns[opt.n_conns] == 0)
			die("--conns: 0 connections");
		opt.n_conns++;
	}
	if (opt.n_conns == 0)
		die("--conns: empty list");
	free(copy);
}

static void parse_options(int argc, char **argv)
{
	int i;

	opt.seconds = 5;
	opt.conns[0] = 8;
	opt.conns[1] = 64;
	opt.n_conns = 2;
	parse_forms("sink,safetensors,b64,json,estimator,parse");
	opt.threads = 4;
	opt.batches_per_step = 1;
	opt.client_threads = 2;
	opt.variants = 8;
	opt.timeout = 60;
	opt.dump_form = -1;
	opt.tmpdir = getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	opt.bnstatd = getenv("BNSTATD") && *getenv("BNSTATD") ? getenv("BNSTATD") : "./src/bnstatd";

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;

#define NEEDV()                                                                                    \
	do {                                                                                       \
		if (v == NULL)                                                                     \
			die("%s needs a value", a);                                                \
		i++;                                                                               \
	} while (0)
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			usage(stdout, argv[0]);
			exit(0);
		} else if (strcmp(a, "--bnstatd") == 0) {
			NEEDV();
			opt.bnstatd = v;
		} else if (strcmp(a, "--seconds") == 0) {
			char *end;

			NEEDV();
			opt.seconds = strtod(v, &end);
			if (*end != '\0' || !(opt.seconds > 0) || opt.seconds > 86400)
				die("--seconds: not a positive number: '%s'", v);
			opt.seconds_given = true;
		} else if (strcmp(a, "--uploads") == 0) {
			NEEDV();
			opt.uploads = parse_ulong(v, a, 1000000000ul);
		} else if (strcmp(a, "--uploads-rss") == 0) {
			NEEDV();
			opt.uploads_rss = parse_ulong(v, a, 1000000000ul);
		} else if (strcmp(a, "--conns") == 0) {
			NEEDV();
			parse_conns(v);
		} else if (strcmp(a, "--forms") == 0) {
			NEEDV();
			parse_forms(v);
		} else if (strcmp(a, "--threads") == 0) {
			NEEDV();
			opt.threads = (unsigned)parse_ulong(v, a, 256);
			if (opt.threads == 0)
				die("--threads: 0");
		} else if (strcmp(a, "--batches-per-step") == 0) {
			NEEDV();
			opt.batches_per_step = (unsigned)parse_ulong(v, a, 100000);
			if (opt.batches_per_step == 0)
				die("--batches-per-step: 0");
		} else if (strcmp(a, "--client-threads") == 0) {
			NEEDV();
			opt.client_threads = (unsigned)parse_ulong(v, a, 256);
			if (opt.client_threads == 0)
				die("--client-threads: 0");
		} else if (strcmp(a, "--variants") == 0) {
			NEEDV();
			opt.variants = (unsigned)parse_ulong(v, a, 1024);
			if (opt.variants == 0)
				die("--variants: 0");
		} else if (strcmp(a, "--timeout") == 0) {
			NEEDV();
			opt.timeout = (double)parse_ulong(v, a, 86400);
			if (opt.timeout == 0)
				die("--timeout: 0");
		} else if (strcmp(a, "--daemon-arg") == 0) {
			NEEDV();
			if (opt.n_daemon_args ==
			    sizeof(opt.daemon_args) / sizeof(opt.daemon_args[0]))
				die("too many --daemon-arg");
			opt.daemon_args[opt.n_daemon_args++] = v;
		} else if (strcmp(a, "--tmpdir") == 0) {
			NEEDV();
			opt.tmpdir = v;
		} else if (strcmp(a, "--keep") == 0) {
			opt.keep = true;
		} else if (strcmp(a, "--dump-body") == 0) {
			int f;

			NEEDV();
			for (f = 0; f < F_COUNT && strcmp(v, form_names[f]) != 0; f++)
				;
			if (f == F_COUNT)
				die("--dump-body: one of safetensors, b64, json");
			opt.dump_form = f;
		} else if (a[0] == '-' && a[1] != '\0') {
			usage(stderr, argv[0]);
			die("unknown option '%s'", a);
		} else {
			opt.bnstatd = a;
		}
#undef NEEDV
	}
	if (opt.uploads > 0 && !opt.seconds_given)
		opt.seconds = 600; /* the count bounds the cell; time is only a safety net */
	if (opt.uploads_rss > 0 && !opt.seconds_given)
		opt.seconds = 600;
}

/* ------------------------------------------------------------------------ */
/* the workload: torchvision resnet50's BatchNorm layers (layers[] in bench_common.h) */

/*
 * A variant: one set of per-channel batch statistics for every layer, and
 * its three bodies' layer parts rendered once. Uploads pick a variant from
 * (worker, step, seq), so consecutive uploads differ and the in-process
 * baselines see the same numbers.
 */
struct variant {
	float *mean, *var;   /* [n_channels] */
	struct sbuf json;    /* "layers":{...}}  (closes the root object) */
	struct sbuf b64;     /* the same with {"dtype":"f32","b64":...} arrays */
	struct sbuf st_data; /* safetensors data buffer */
};

static struct variant *variants;
static struct sbuf st_desc; /* ,"bn1.count":{...},...}  the tensors of the header */

static unsigned variant_of(unsigned worker, int64_t step, unsigned seq)
{
	uint64_t s = ((uint64_t)worker << 40) ^ ((uint64_t)step << 12) ^ seq;

	return (unsigned)(splitmix64(&s) % opt.variants);
}

static void b64_append(struct sbuf *b, const void *data, size_t n)
{
	static const char tab[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const uint8_t *p = data;
	size_t i;
	char *o;

	sb_reserve(b, (n + 2) / 3 * 4);
	o = b->p + b->len;
	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = tab[(v >> 6) & 63];
		*o++ = tab[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);

		*o++ = tab[v >> 18];
		*o++ = tab[(v >> 12) & 63];
		*o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
		*o++ = '=';
	}
	b->len = (size_t)(o - b->p);
	b->p[b->len] = '\0';
}

static void render_json_array(struct sbuf *b, const float *x, size_t n)
{
	char num[32];
	size_t i;

	sb_puts(b, "[");
	for (i = 0; i < n; i++) {
		int k = snprintf(num, sizeof(num), i ? ",%.9g" : "%.9g", (double)x[i]);

		sb_add(b, num, (size_t)k);
	}
	sb_puts(b, "]");
}

static void make_variants(void)
{
	unsigned v;
	size_t i, off;

	variants = xcalloc(opt.variants, sizeof(*variants));
	for (v = 0; v < opt.variants; v++) {
		struct variant *vr = &variants[v];
		uint64_t seed = 0xB5A7u + (uint64_t)v * 0x1000193u;

		vr->mean = xmalloc(n_channels * sizeof(float));
		vr->var = xmalloc(n_channels * sizeof(float));
		for (i = 0; i < n_channels; i++) {
			/* Box-Muller: mean ~ N(0, 1); var ~ U(0.5, 2) */
			double u1 = uniform01(&seed), u2 = uniform01(&seed);

			vr->mean[i] = (float)(sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2));
			vr->var[i] = (float)(0.5 + 1.5 * uniform01(&seed));
		}

		sb_puts(&vr->json, "\"layers\":{");
		sb_puts(&vr->b64, "\"layers\":{");
		for (i = 0; i < N_LAYERS; i++) {
			const struct bn_layer *l = &layers[i];

			sb_printf(&vr->json,
				  "%s\"%s\":{\"count\":%" PRId64 ",\"mean\":", i ? "," : "",
				  l->name, l->count);
			render_json_array(&vr->json, vr->mean + l->offset, l->channels);
			sb_puts(&vr->json, ",\"var\":");
			render_json_array(&vr->json, vr->var + l->offset, l->channels);
			sb_puts(&vr->json, "}");

			sb_printf(&vr->b64,
				  "%s\"%s\":{\"count\":%" PRId64
				  ",\"mean\":{\"dtype\":\"f32\",\"b64\":\"",
				  i ? "," : "", l->name, l->count);
			b64_append(&vr->b64, vr->mean + l->offset, l->channels * sizeof(float));
			sb_puts(&vr->b64, "\"},\"var\":{\"dtype\":\"f32\",\"b64\":\"");
			b64_append(&vr->b64, vr->var + l->offset, l->channels * sizeof(float));
			sb_puts(&vr->b64, "\"}}");

			sb_add(&vr->st_data, &l->count, sizeof(int64_t));
			sb_add(&vr->st_data, vr->mean + l->offset, l->channels * sizeof(float));
			sb_add(&vr->st_data, vr->var + l->offset, l->channels * sizeof(float));
		}
		sb_puts(&vr->json, "}}");
		sb_puts(&vr->b64, "}}");
	}

	/* the tensor table of the safetensors header: the same for every variant */
	off = 0;
	for (i = 0; i < N_LAYERS; i++) {
		const struct bn_layer *l = &layers[i];
		size_t fb = l->channels * sizeof(float);

		sb_printf(&st_desc,
			  ",\"%s.count\":{\"dtype\":\"I64\",\"shape\":[],"
			  "\"data_offsets\":[%zu,%zu]}",
			  l->name, off, off + 8);
		off += 8;
		sb_printf(&st_desc,
			  ",\"%s.mean\":{\"dtype\":\"F32\",\"shape\":[%u],"
			  "\"data_offsets\":[%zu,%zu]}",
			  l->name, l->channels, off, off + fb);
		off += fb;
		sb_printf(&st_desc,
			  ",\"%s.var\":{\"dtype\":\"F32\",\"shape\":[%u],"
			  "\"data_offsets\":[%zu,%zu]}",
			  l->name, l->channels, off, off + fb);
		off += fb;
	}
	sb_puts(&st_desc, "}");
	if (off != variants[0].st_data.len)
		die("safetensors offsets (%zu) do not cover the data (%zu)", off,
		    variants[0].st_data.len);
}

/*
 * One upload as HTTP: the request line, headers and the body's small
 * per-upload head go into head[]; the big parts are borrowed from the
 * variant. Fills iov[] and returns the number of entries.
 */
struct request {
	char head[REQ_HEAD_MAX];
	struct iovec iov[5];
	int iovcnt;
	size_t body_len;
};

static const char spaces[8] = "        ";

static void request_build(struct request *r, enum form form, const char *run, unsigned port,
			  unsigned worker, int64_t step, unsigned seq)
{
	const struct variant *vr = &variants[variant_of(worker, step, seq)];
	char bhead[512];
	size_t hl, bl;
	int n;

	if (form == F_ST) {
		uint64_t hlen;
		size_t pad;

		n = snprintf(bhead + 8, sizeof(bhead) - 8,
			     "{\"__metadata__\":{\"worker\":\"rank%u\",\"step\":\"%" PRId64
			     "\",\"seq\":\"%u\",\"domain\":\"default\",\"var_kind\":\"unbiased\"}",
			     worker, step, seq);
		/* the header is padded with spaces to a multiple of 8 bytes, as
		 * the safetensors writer does, so the data stays aligned */
		pad = (8 - ((size_t)n + st_desc.len) % 8) % 8;
		hlen = (uint64_t)n + st_desc.len + pad;
		memcpy(bhead, &hlen, 8);
		bl = 8 + (size_t)n;
		r->body_len = 8 + hlen + vr->st_data.len;
		r->iov[1] = (struct iovec){ (void *)st_desc.p, st_desc.len };
		r->iov[2] = (struct iovec){ (void *)spaces, pad };
		r->iov[3] = (struct iovec){ vr->st_data.p, vr->st_data.len };
		r->iovcnt = 4;
	} else {
		const struct sbuf *part = form == F_JSON ? &vr->json : &vr->b64;

		n = snprintf(bhead, sizeof(bhead),
			     "{\"worker\":\"rank%u\",\"step\":%" PRId64 ",\"seq\":%u,"
			     "\"domain\":\"default\",\"var_kind\":\"unbiased\",",
			     worker, step, seq);
		bl = (size_t)n;
		r->body_len = bl + part->len;
		r->iov[1] = (struct iovec){ part->p, part->len };
		r->iovcnt = 2;
	}
	n = snprintf(r->head, sizeof(r->head),
		     "POST /v1/runs/%s/batches HTTP/1.1\r\nHost: 127.0.0.1:%u\r\n"
		     "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n",
		     run, port, form == F_ST ? "application/octet-stream" : "application/json",
		     r->body_len);
	hl = (size_t)n;
	if (hl + bl > sizeof(r->head))
		die("request head too long");
	memcpy(r->head + hl, bhead, bl);
	r->iov[0] = (struct iovec){ r->head, hl + bl };
}

/* A whole body (for the in-process parse and the probe). */
static void body_render(struct sbuf *out, enum form form, unsigned worker, int64_t step,
			unsigned seq)
{
	struct request r;
	int i;
	size_t hl;

	request_build(&r, form, "x", 1, worker, step, seq);
	hl = (size_t)(strstr(r.head, "\r\n\r\n") - r.head) + 4;
	out->len = 0;
	sb_add(out, r.head + hl, r.iov[0].iov_len - hl);
	for (i = 1; i < r.iovcnt; i++)
		sb_add(out, r.iov[i].iov_base, r.iov[i].iov_len);
}

/* ------------------------------------------------------------------------ */
/* /proc readers (more in bench_common.h) */

/* The thread ids of this process. */
static size_t self_tids(pid_t *out, size_t max)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *e;
	size_t n = 0;

	if (d == NULL)
		return 0;
	while ((e = readdir(d)) != NULL && n < max)
		if (isdigit((unsigned char)e->d_name[0]))
			out[n++] = (pid_t)atoi(e->d_name);
	closedir(d);
	return n;
}

/* ------------------------------------------------------------------------ */
/* the sink: a bare libmicrohttpd server with bnstatd's configuration */

struct sink_req {
	char *body;
	size_t len, cap;
};

struct sink {
	struct MHD_Daemon *mhd;
	unsigned port;
	pid_t tids[256]; /* MHD's threads, for their CPU time */
	size_t n_tids;
};

static MHD_Result sink_on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **req_cls)
{
	static char reply[] = "{}";
	struct sink_req *rq = *req_cls;
	struct MHD_Response *resp;
	MHD_Result ret;

	if (rq == NULL) {
		const char *clen = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
							       MHD_HTTP_HEADER_CONTENT_LENGTH);

		rq = calloc(1, sizeof(*rq));
		if (rq == NULL)
			return MHD_NO;
		*req_cls = rq;
		if (clen != NULL) { /* one allocation for the body, as bnstatd does */
			unsigned long long n = strtoull(clen, NULL, 10);

			if (n > 0 && n < (1ull << 30)) {
				rq->body = malloc((size_t)n + 1);
				if (rq->body == NULL)
					return MHD_NO;
				rq->cap = (size_t)n + 1;
			}
		}
		return MHD_YES;
	}
	if (*upload_data_size > 0) {
		if (rq->len + *upload_data_size + 1 > rq->cap) {
			size_t cap = rq->cap ? rq->cap : 16384;
			char *p;

			while (cap < rq->len + *upload_data_size + 1)
				cap *= 2;
			p = realloc(rq->body, cap);
			if (p == NULL)
				return MHD_NO;
			rq->body = p;
			rq->cap = cap;
		}
		memcpy(rq->body + rq->len, upload_data, *upload_data_size);
		rq->len += *upload_data_size;
		*upload_data_size = 0;
		return MHD_YES;
	}
	resp = MHD_create_response_from_buffer(2, reply, MHD_RESPMEM_PERSISTENT);
	if (resp == NULL)
		return MHD_NO;
	MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
	ret = MHD_queue_response(conn, MHD_HTTP_OK, resp);
	MHD_destroy_response(resp);
	return ret;
}

static void sink_on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
			      enum MHD_RequestTerminationCode toe)
{
	struct sink_req *rq = *req_cls;

	if (rq == NULL)
		return;
	free(rq->body); /* dropped: the sink only receives */
	free(rq);
	*req_cls = NULL;
}

static void sink_start(struct sink *s)
{
	pid_t before[256], after[256];
	size_t nb = self_tids(before, 256), na, i, j;
	struct sockaddr_in sa;
	const union MHD_DaemonInfo *info;

	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = 0;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->mhd = MHD_start_daemon(
		MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG, 0, NULL, NULL,
		sink_on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
		MHD_OPTION_THREAD_POOL_SIZE, opt.threads, MHD_OPTION_CONNECTION_LIMIT,
		(unsigned)1024, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)60,
		MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(256 * 1024),
		MHD_OPTION_NOTIFY_COMPLETED, sink_on_completed, NULL, MHD_OPTION_END);
	if (s->mhd == NULL)
		die("cannot start the libmicrohttpd sink");
	info = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);
	if (info == NULL || info->port == 0)
		die("the sink has no port");
	s->port = info->port;
	na = self_tids(after, 256);
	s->n_tids = 0;
	for (i = 0; i < na; i++) {
		bool old = false;

		for (j = 0; j < nb; j++)
			old = old || after[i] == before[j];
		if (!old)
			s->tids[s->n_tids++] = after[i];
	}
}

/*
 * CPU seconds of the sink's threads. Their CPU clocks are read directly
 * (the clock id Linux gives a thread, as pthread_getcpuclockid() builds
 * it: ~tid << 3 | CPUCLOCK_PERTHREAD | CPUCLOCK_SCHED), for nanoseconds
 * rather than the 10 ms ticks of /proc/self/task/<tid>/stat, which are the
 * fallback.
 */
static double sink_cpu_s(const struct sink *s)
{
	char path[64];
	double sum = 0;
	size_t i;

	for (i = 0; i < s->n_tids; i++) {
		clockid_t cid = (clockid_t)(((unsigned)~s->tids[i] << 3) | 6u);
		struct timespec ts;
		long long t;

		if (clock_gettime(cid, &ts) == 0) {
			sum += (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
			continue;
		}
		snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)s->tids[i]);
		t = proc_cpu_ticks(path);
		if (t >= 0)
			sum += (double)t / (double)sysconf(_SC_CLK_TCK);
	}
	return sum;
}

/* ------------------------------------------------------------------------ */
/* the daemon */

struct daemon {
	pid_t pid;
	unsigned port;
	bool exited; /* on its own, before we stopped it */
	int status;  /* its wait status once exited */
	char dir[PATH_MAX], db[PATH_MAX + 16], log[PATH_MAX + 16];
};

static int daemon_start(struct daemon *d)
{
	char threads[16], *argv[96], logbuf[8192];
	double deadline;
	size_t a = 0, i;
	int fd;

	memset(d, 0, sizeof(*d));
	snprintf(d->dir, sizeof(d->dir), "%s/bnstat-bench.XXXXXX", opt.tmpdir);
	if (mkdtemp(d->dir) == NULL)
		die("mkdtemp %s: %s", d->dir, strerror(errno));
	snprintf(d->db, sizeof(d->db), "%s/bench.db", d->dir);
	snprintf(d->log, sizeof(d->log), "%s/bnstatd.log", d->dir);
	snprintf(threads, sizeof(threads), "%u", opt.threads);
	argv[a++] = (char *)opt.bnstatd;
	argv[a++] = "--db";
	argv[a++] = d->db;
	argv[a++] = "--listen";
	argv[a++] = "127.0.0.1:0";
	argv[a++] = "--threads";
	argv[a++] = threads;
	for (i = 0; i < opt.n_daemon_args; i++)
		argv[a++] = (char *)opt.daemon_args[i];
	argv[a] = NULL;

	fd = open(d->log, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		die("cannot create %s: %s", d->log, strerror(errno));
	fflush(NULL);
	d->pid = fork();
	if (d->pid < 0)
		die("fork: %s", strerror(errno));
	if (d->pid == 0) {
		int devnull = open("/dev/null", O_RDWR);

		prctl(PR_SET_PDEATHSIG, SIGTERM); /* never outlive the bench */
		dup2(fd, 2);
		if (devnull >= 0) {
			dup2(devnull, 0);
			dup2(devnull, 1);
		}
		signal(SIGPIPE, SIG_DFL);
		execv(opt.bnstatd, argv);
		fprintf(stderr, "bench: cannot run %s: %s\n", opt.bnstatd, strerror(errno));
		_exit(127);
	}
	close(fd);

	/* its log line "event=listening ... port=N" says where it listens */
	deadline = now_s() + 15;
	while (now_s() < deadline) {
		int status;

		d->port = log_listen_port(d->log, 0, logbuf, sizeof(logbuf));
		if (d->port > 0)
			return 0;
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			note("bnstatd exited before listening (status %d)", status);
			print_log_tail(d->log);
			d->pid = 0;
			return -1;
		}
		usleep(20000);
	}
	note("bnstatd did not log event=listening within 15 s");
	print_log_tail(d->log);
	kill(d->pid, SIGKILL);
	waitpid(d->pid, NULL, 0);
	d->pid = 0;
	return -1;
}

/* Did the daemon exit on its own (crash, killed)? Reaps it and says how. */
static bool daemon_gone(struct daemon *d, char *why, size_t size)
{
	int status;

	if (!d->exited && d->pid > 0 && waitpid(d->pid, &status, WNOHANG) == d->pid) {
		d->exited = true;
		d->status = status;
	}
	if (!d->exited)
		return false;
	if (WIFSIGNALED(d->status))
		snprintf(why, size, "bnstatd died (signal %d)", WTERMSIG(d->status));
	else
		snprintf(why, size, "bnstatd exited (status %d)", WEXITSTATUS(d->status));
	return true;
}

static long long daemon_cpu_ticks(const struct daemon *d)
{
	return pid_cpu_ticks(d->pid);
}

/* SIGTERM, then SIGKILL after 20 s. Returns the wait status or -1. */
static int daemon_stop(struct daemon *d)
{
	double deadline = now_s() + 20;
	int status = -1;

	if (d->exited)
		return d->status;
	if (d->pid <= 0)
		return -1;
	kill(d->pid, SIGTERM);
	while (now_s() < deadline) {
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			d->pid = 0;
			return status;
		}
		usleep(20000);
	}
	note("bnstatd did not stop within 20 s of SIGTERM; killing it");
	kill(d->pid, SIGKILL);
	waitpid(d->pid, &status, 0);
	d->pid = 0;
	return status;
}

static double dir_mib(const char *dir, const char *prefix)
{
	DIR *dd = opendir(dir);
	struct dirent *e;
	struct stat st;
	char path[PATH_MAX + 300];
	double sum = 0;

	if (dd == NULL)
		return 0;
	while ((e = readdir(dd)) != NULL) {
		if (strncmp(e->d_name, prefix, strlen(prefix)) != 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (stat(path, &st) == 0 && S_ISREG(st.st_mode))
			sum += (double)st.st_size;
	}
	closedir(dd);
	return sum / (1024.0 * 1024.0);
}

static void dir_remove(const char *dir)
{
	DIR *dd = opendir(dir);
	struct dirent *e;
	char path[PATH_MAX + 300];

	if (dd == NULL)
		return;
	while ((e = readdir(dd)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(dd);
	if (rmdir(dir) != 0)
		note("cannot remove %s: %s", dir, strerror(errno));
}

/* ------------------------------------------------------------------------ */
/* HTTP client pieces */

struct http_reply {
	int status;
	size_t head_len, content_length;
	bool close;
};

/*
 * Parse a response held in buf[0..len). Returns 1 when it is complete
 * (filling *r), 0 when more bytes are needed, -1 when it is not HTTP we
 * understand (no Content-Length: MHD always sends one for our replies).
 */
static int http_parse(const char *buf, size_t len, struct http_reply *r)
{
	const char *end = memmem(buf, len, "\r\n\r\n", 4), *line;
	bool have_length = false;

	if (end == NULL)
		return 0;
	memset(r, 0, sizeof(*r));
	r->head_len = (size_t)(end - buf) + 4;
	if (len < 12 || strncmp(buf, "HTTP/1.", 7) != 0)
		return -1;
	r->status = atoi(buf + 9);
	for (line = strstr(buf, "\r\n"); line != NULL && line < end;
	     line = strstr(line + 2, "\r\n")) {
		const char *h = line + 2;

		if (strncasecmp(h, "Content-Length:", 15) == 0) {
			r->content_length = strtoul(h + 15, NULL, 10);
			have_length = true;
		} else if (strncasecmp(h, "Connection:", 11) == 0) {
			const char *v = h + 11;

			while (*v == ' ')
				v++;
			if (strncasecmp(v, "close", 5) == 0)
				r->close = true;
		}
	}
	if (!have_length)
		return -1;
	return len >= r->head_len + r->content_length ? 1 : 0;
}

/*
 * A blocking request on its own connection (Connection: close), for the
 * probe and the correctness check. The reply body goes to *body. Returns
 * the status or -1.
 */
static int http_simple(unsigned port, const char *method, const char *path, const char *ctype,
		       const void *body, size_t body_len, struct sbuf *reply)
{
	struct timeval tv = { .tv_sec = (time_t)opt.timeout, .tv_usec = 0 };
	struct http_reply r;
	struct sbuf req = { 0 }, in = { 0 };
	size_t off = 0;
	int fd = tcp_connect(port, false), rc;

	if (fd < 0)
		return -1;
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	sb_printf(&req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%u\r\nConnection: close\r\n", method,
		  path, port);
	if (ctype != NULL)
		sb_printf(&req, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, body_len);
	sb_puts(&req, "\r\n");
	if (body != NULL)
		sb_add(&req, body, body_len);
	while (off < req.len) {
		ssize_t n = send(fd, req.p + off, req.len - off, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break; /* the server may have answered early; read it */
		off += (size_t)n;
	}
	for (;;) {
		ssize_t n;

		sb_reserve(&in, 65536);
		n = recv(fd, in.p + in.len, in.cap - in.len - 1, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		in.len += (size_t)n;
		in.p[in.len] = '\0';
		if (http_parse(in.p, in.len, &r) == 1)
			break;
	}
	close(fd);
	sb_free(&req);
	rc = in.len > 0 ? http_parse(in.p, in.len, &r) : -1;
	if (rc != 1) {
		sb_free(&in);
		return -1;
	}
	reply->len = 0;
	sb_add(reply, in.p + r.head_len, r.content_length);
	sb_free(&in);
	return r.status;
}

/* ------------------------------------------------------------------------ */
/* a cell: one target, one body form, one concurrency, ~seconds long */

enum target { T_SINK, T_DAEMON };

enum ack { ACK_NONE = 0, ACK_OK = 1, ACK_UNKNOWN = 2 };

struct cell;

enum conn_state { C_IDLE, C_SEND, C_RECV };

struct conn {
	int fd;
	unsigned worker;
	enum conn_state state;
	unsigned seq;
	int64_t step;
	struct request req;
	int iov_i;
	double t_start;
	char rbuf[RBUF_SIZE];
	size_t rlen;
};

struct client {
	struct cell *cell;
	pthread_t thread;
	struct conn *conns;
	size_t n;
	int ep;
	/* results, read by the serial thread at barriers and by main at the end */
	uint64_t done, ok, dup, http_err, io_err, bytes;
	double *lat; /* ms, of every completed response */
	size_t n_lat, cap_lat;
	unsigned status[STATUS_MAX];
	char last_err[256];
	double cpu_s;
};

struct cell {
	enum target target;
	enum form form;
	unsigned conns, k;
	char run[64];
	unsigned port;
	const struct sink *sink;
	const struct daemon *daemon;
	double seconds;
	uint64_t max_uploads;

	struct client *clients;
	size_t n_clients;
	pthread_barrier_t bar;
	bool stop, broken;
	double t0, t1;
	double cpu0, cpu1; /* server CPU seconds at the start and the end */
	size_t steps_done, steps_cap;
	uint8_t *ack; /* [step][worker][seq] enum ack */

	/* --uploads-rss: RSS sampled every rss_every uploads */
	uint64_t rss_every, rss_next;
	long rss_kb[64];
	uint64_t rss_at[64];
	size_t n_rss;

	/* totals after the run */
	uint64_t done, ok, dup, http_err, io_err, bytes;
	unsigned status[STATUS_MAX];
	char last_err[256];
	double elapsed, p50, p99, server_cpu_s, client_cpu_s;
};

static uint8_t *ack_at(struct cell *c, size_t step, unsigned worker, unsigned seq)
{
	return &c->ack[(step * c->conns + worker) * c->k + seq];
}

/* CPU seconds of the server so far: the sink's threads, or the whole daemon
 * (utime + stime of /proc/<pid>/stat, in clock ticks); < 0 when unknown. */
static double cell_server_cpu_s(const struct cell *c)
{
	long long t;

	if (c->target == T_SINK)
		return sink_cpu_s(c->sink);
	t = daemon_cpu_ticks(c->daemon);
	return t < 0 ? -1 : (double)t / (double)sysconf(_SC_CLK_TCK);
}

static int conn_open(struct client *cl, struct conn *c)
{
	struct epoll_event ev;

	c->fd = tcp_connect(cl->cell->port, true);
	if (c->fd < 0)
		return -1;
	ev.events = EPOLLIN | EPOLLOUT | EPOLLET | EPOLLRDHUP;
	ev.data.ptr = c;
	if (epoll_ctl(cl->ep, EPOLL_CTL_ADD, c->fd, &ev) != 0) {
		close(c->fd);
		c->fd = -1;
		return -1;
	}
	return 0;
}

static void conn_close(struct conn *c)
{
	if (c->fd >= 0)
		close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	c->state = C_IDLE;
}

/* Try to read the reply. 1: complete; 0: more to come; -1: broken. */
static int conn_recv(struct conn *c, struct http_reply *r)
{
	for (;;) {
		ssize_t n;
		int rc;

		if (c->rlen >= sizeof(c->rbuf) - 1)
			return -1; /* our replies are small */
		n = read(c->fd, c->rbuf + c->rlen, sizeof(c->rbuf) - 1 - c->rlen);
		if (n > 0) {
			c->rlen += (size_t)n;
			c->rbuf[c->rlen] = '\0';
			rc = http_parse(c->rbuf, c->rlen, r);
			if (rc != 0)
				return rc;
			continue;
		}
		if (n == 0)
			return -1;
		if (errno == EINTR)
			continue;
		return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
	}
}

/* Send what the socket takes. 1: all sent; 0: wait; -1: broken. */
static int conn_send(struct conn *c)
{
	while (c->iov_i < c->req.iovcnt) {
		ssize_t n = writev(c->fd, c->req.iov + c->iov_i, c->req.iovcnt - c->iov_i);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
		}
		while (n > 0 && c->iov_i < c->req.iovcnt) {
			struct iovec *v = &c->req.iov[c->iov_i];

			if ((size_t)n >= v->iov_len) {
				n -= (ssize_t)v->iov_len;
				v->iov_len = 0;
				c->iov_i++;
			} else {
				v->iov_base = (char *)v->iov_base + n;
				v->iov_len -= (size_t)n;
				n = 0;
			}
		}
		while (c->iov_i < c->req.iovcnt && c->req.iov[c->iov_i].iov_len == 0)
			c->iov_i++;
	}
	return 1;
}

static void client_record(struct client *cl, struct conn *c, int rc, const struct http_reply *r)
{
	struct cell *cell = cl->cell;
	uint8_t *a = ack_at(cell, (size_t)c->step, c->worker, c->seq);

	cl->done++;
	if (rc == 1) {
		double ms = (now_s() - c->t_start) * 1e3;

		if (cl->n_lat == cl->cap_lat) {
			cl->cap_lat = cl->cap_lat ? 2 * cl->cap_lat : 1024;
			cl->lat = xrealloc(cl->lat, cl->cap_lat * sizeof(double));
		}
		cl->lat[cl->n_lat++] = ms;
		cl->bytes += c->req.body_len;
		if (r->status >= 0 && r->status < STATUS_MAX)
			cl->status[r->status]++;
		if (r->status == 200) {
			cl->ok++;
			*a = ACK_OK;
			if (memmem(c->rbuf + r->head_len, r->content_length, "\"duplicate\":true",
				   16))
				cl->dup++;
		} else {
			size_t n = r->content_length < sizeof(cl->last_err) - 1
					   ? r->content_length
					   : sizeof(cl->last_err) - 1;

			cl->http_err++;
			*a = ACK_NONE; /* a rejected upload stores nothing */
			memcpy(cl->last_err, c->rbuf + r->head_len, n);
			cl->last_err[n] = '\0';
		}
		if (r->close)
			conn_close(c);
		else
			c->state = C_IDLE;
	} else {
		/* the connection broke: whether the server stored it is unknown */
		cl->io_err++;
		*a = ACK_UNKNOWN;
		snprintf(cl->last_err, sizeof(cl->last_err),
			 "connection broken (worker %u, step %" PRId64 ", seq %u)", c->worker,
			 c->step, c->seq);
		conn_close(c);
	}
}

/*
 * Start (and push as far as it goes) the upload of c->seq at step. Returns
 * 0 when in flight, 1 when it already finished (recorded), -1 when it could
 * not even start (recorded as an I/O error).
 */
static int conn_start(struct client *cl, struct conn *c, int64_t step)
{
	struct http_reply r;
	int rc;

	if (c->fd < 0 && conn_open(cl, c) < 0) {
		c->step = step;
		client_record(cl, c, -1, NULL);
		return -1;
	}
	c->step = step;
	request_build(&c->req, cl->cell->form, cl->cell->run, cl->cell->port, c->worker, step,
		      c->seq);
	c->iov_i = 0;
	c->rlen = 0;
	c->state = C_SEND;
	c->t_start = now_s();
	rc = conn_send(c);
	if (rc == 0)
		return 0;
	if (rc == 1) {
		c->state = C_RECV;
		rc = conn_recv(c, &r);
		if (rc == 0)
			return 0;
		client_record(cl, c, rc, &r);
		return 1;
	}
	/* the send failed: the server may have answered early and closed */
	rc = conn_recv(c, &r);
	client_record(cl, c, rc == 1 ? 1 : -1, &r);
	return 1;
}

/* Make progress on c after an event. Returns 1 when its request finished. */
static int conn_progress(struct client *cl, struct conn *c, uint32_t events)
{
	struct http_reply r;
	int rc;

	if (c->state == C_SEND) {
		rc = conn_send(c);
		if (rc == 0 && (events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
			/* an early reply (e.g. 413) while we still send */
			rc = conn_recv(c, &r);
			if (rc == 1) {
				r.close = true;
				client_record(cl, c, 1, &r);
				return 1;
			}
		}
		if (rc == 0)
			return 0;
		if (rc < 0) {
			rc = conn_recv(c, &r);
			client_record(cl, c, rc == 1 ? 1 : -1, &r);
			return 1;
		}
		c->state = C_RECV;
	}
	if (c->state != C_RECV)
		return 0;
	rc = conn_recv(c, &r);
	if (rc == 0)
		return 0;
	client_record(cl, c, rc, &r);
	return 1;
}

/* All of this thread's workers upload their k batches of one step. */
static void client_step(struct client *cl, int64_t step)
{
	struct epoll_event evs[64];
	size_t pending = 0, i;
	unsigned k = cl->cell->k;

	for (i = 0; i < cl->n; i++) {
		struct conn *c = &cl->conns[i];

		for (c->seq = 0; c->seq < k; c->seq++)
			if (conn_start(cl, c, step) == 0)
				break;
		if (c->seq < k)
			pending++;
	}
	while (pending > 0) {
		int n = epoll_wait(cl->ep, evs, 64, 250), e;
		double now;

		for (e = 0; e < n; e++) {
			struct conn *c = evs[e].data.ptr;

			if (c->state == C_IDLE || conn_progress(cl, c, evs[e].events) == 0)
				continue;
			/* finished: the next batch of this worker, or done for the step */
			for (c->seq++; c->seq < k; c->seq++)
				if (conn_start(cl, c, step) == 0)
					break;
			if (c->seq >= k)
				pending--;
		}
		now = now_s();
		for (i = 0; i < cl->n; i++) {
			struct conn *c = &cl->conns[i];

			if (c->state == C_IDLE || now - c->t_start < opt.timeout)
				continue;
			client_record(cl, c, -1, NULL); /* timed out */
			for (c->seq++; c->seq < k; c->seq++)
				if (conn_start(cl, c, step) == 0)
					break;
			if (c->seq >= k)
				pending--;
		}
	}
}

static uint64_t cell_sum_done(const struct cell *c)
{
	uint64_t s = 0;
	size_t i;

	for (i = 0; i < c->n_clients; i++)
		s += c->clients[i].done;
	return s;
}

/* Between two steps, on the one thread the barrier picked. */
static void cell_between_steps(struct cell *c, size_t step)
{
	double now = now_s();
	uint64_t done = cell_sum_done(c), ok_in_step = 0;
	unsigned w, s;

	c->steps_done = step + 1;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			ok_in_step += *ack_at(c, step, w, s) == ACK_OK;
	if (ok_in_step == 0)
		c->broken = true; /* nothing went through: stop, do not spin */
	if (c->rss_every > 0 && c->daemon != NULL && done >= c->rss_next && c->n_rss < 63) {
		c->rss_at[c->n_rss] = done;
		c->rss_kb[c->n_rss++] = proc_status_kb(c->daemon->pid, "VmRSS");
		c->rss_next += c->rss_every;
	}
	if (c->broken || now - c->t0 >= c->seconds ||
	    (c->max_uploads > 0 && done >= c->max_uploads)) {
		c->stop = true;
		c->t1 = now;
		c->cpu1 = cell_server_cpu_s(c);
		return;
	}
	if (c->steps_done + 1 > c->steps_cap) {
		size_t old = c->steps_cap, per = (size_t)c->conns * c->k;

		c->steps_cap *= 2;
		c->ack = xrealloc(c->ack, c->steps_cap * per);
		memset(c->ack + old * per, 0, (c->steps_cap - old) * per);
	}
}

static void *client_main(void *arg)
{
	struct client *cl = arg;
	struct cell *c = cl->cell;
	double cpu0;
	size_t i, step;

	cl->ep = epoll_create1(EPOLL_CLOEXEC);
	if (cl->ep < 0)
		die("epoll_create1: %s", strerror(errno));
	for (i = 0; i < cl->n; i++)
		if (conn_open(cl, &cl->conns[i]) < 0)
			note("cannot connect to 127.0.0.1:%u: %s", c->port, strerror(errno));
	if (pthread_barrier_wait(&c->bar) == PTHREAD_BARRIER_SERIAL_THREAD) {
		c->t0 = now_s();
		c->cpu0 = cell_server_cpu_s(c);
	}
	pthread_barrier_wait(&c->bar);
	cpu0 = thread_cpu_s();
	for (step = 0;; step++) {
		client_step(cl, (int64_t)step);
		if (pthread_barrier_wait(&c->bar) == PTHREAD_BARRIER_SERIAL_THREAD)
			cell_between_steps(c, step);
		pthread_barrier_wait(&c->bar);
		if (c->stop)
			break;
	}
	cl->cpu_s = thread_cpu_s() - cpu0;
	for (i = 0; i < cl->n; i++)
		conn_close(&cl->conns[i]);
	close(cl->ep);
	return NULL;
}

/* nearest-rank percentile of sorted v[0..n) */
static double percentile(const double *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return NAN;
	i = (size_t)ceil(p * (double)n);
	return v[i > 0 ? i - 1 : 0];
}

static void cell_run(struct cell *c)
{
	size_t t, i, nt = c->conns < opt.client_threads ? c->conns : opt.client_threads;
	double *all;
	size_t n_all = 0;

	c->n_clients = nt;
	c->clients = xcalloc(nt, sizeof(*c->clients));
	c->steps_cap = 64;
	c->ack = xcalloc(c->steps_cap * c->conns * c->k, 1);
	if (pthread_barrier_init(&c->bar, NULL, (unsigned)nt) != 0)
		die("pthread_barrier_init");
	for (t = 0; t < nt; t++) {
		struct client *cl = &c->clients[t];

		cl->cell = c;
		cl->conns = xcalloc((c->conns + nt - 1) / nt, sizeof(struct conn));
		for (i = t; i < c->conns; i += nt) {
			struct conn *cn = &cl->conns[cl->n++];

			cn->fd = -1;
			cn->worker = (unsigned)i;
		}
	}
	for (t = 0; t < nt; t++)
		if (pthread_create(&c->clients[t].thread, NULL, client_main, &c->clients[t]) != 0)
			die("pthread_create");
	for (t = 0; t < nt; t++)
		pthread_join(c->clients[t].thread, NULL);
	pthread_barrier_destroy(&c->bar);

	c->elapsed = c->t1 - c->t0;
	for (t = 0; t < nt; t++) {
		struct client *cl = &c->clients[t];

		c->done += cl->done;
		c->ok += cl->ok;
		c->dup += cl->dup;
		c->http_err += cl->http_err;
		c->io_err += cl->io_err;
		c->bytes += cl->bytes;
		c->client_cpu_s += cl->cpu_s;
		for (i = 0; i < STATUS_MAX; i++)
			c->status[i] += cl->status[i];
		if (cl->last_err[0])
			memcpy(c->last_err, cl->last_err, sizeof(c->last_err));
		n_all += cl->n_lat;
	}
	all = xmalloc(n_all * sizeof(double));
	n_all = 0;
	for (t = 0; t < nt; t++) {
		memcpy(all + n_all, c->clients[t].lat, c->clients[t].n_lat * sizeof(double));
		n_all += c->clients[t].n_lat;
		free(c->clients[t].lat);
		free(c->clients[t].conns);
	}
	qsort(all, n_all, sizeof(double), cmp_double);
	c->p50 = percentile(all, n_all, 0.50);
	c->p99 = percentile(all, n_all, 0.99);
	free(all);
	c->server_cpu_s = c->cpu0 >= 0 && c->cpu1 >= 0 ? c->cpu1 - c->cpu0 : NAN;
}

static void cell_free(struct cell *c)
{
	free(c->clients);
	free(c->ack);
	c->clients = NULL;
	c->ack = NULL;
}

/* ------------------------------------------------------------------------ */
/* correctness: what bnstatd says it merged vs what it acknowledged */

struct verify {
	bool ran, ok;
	struct sbuf text; /* one Markdown line */
};

/*
 * What the daemon was sent for one value, as a double: the f32 widened for
 * the binary forms, the %.9g decimal read back for the json form.
 */
static double sent_value(enum form form, float x)
{
	char num[32];

	if (form != F_JSON)
		return (double)x;
	snprintf(num, sizeof(num), "%.9g", (double)x);
	return strtod(num, NULL);
}

/*
 * The exact merge of the acknowledged uploads of one step for layer l, per
 * channel: pooled mean and population variance M2/n, computed two-pass in
 * double (every upload of a layer has the same count), from the values as
 * sent.
 */
static void reference(struct cell *c, size_t step, const struct bn_layer *l, double *mean,
		      double *var)
{
	unsigned w, s;
	size_t ch, k = 0;
	double n = (double)l->count;

	for (ch = 0; ch < l->channels; ch++)
		mean[ch] = var[ch] = 0;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			if (*ack_at(c, step, w, s) == ACK_OK) {
				const struct variant *v =
					&variants[variant_of(w, (int64_t)step, s)];

				for (ch = 0; ch < l->channels; ch++)
					mean[ch] += sent_value(c->form, v->mean[l->offset + ch]);
				k++;
			}
	for (ch = 0; ch < l->channels; ch++)
		mean[ch] /= (double)k;
	for (w = 0; w < c->conns; w++)
		for (s = 0; s < c->k; s++)
			if (*ack_at(c, step, w, s) == ACK_OK) {
				const struct variant *v =
					&variants[variant_of(w, (int64_t)step, s)];

				for (ch = 0; ch < l->channels; ch++) {
					double m = sent_value(c->form, v->mean[l->offset + ch]);
					double d = m - mean[ch];

					var[ch] += sent_value(c->form, v->var[l->offset + ch]) *
							   (n - 1) +
						   n * d * d;
				}
			}
	for (ch = 0; ch < l->channels; ch++)
		var[ch] /= n * (double)k;
}

/* Largest |a - b| / max(1, |b|) of a JSON array against b; -1 if malformed. */
static double max_rel_diff(const json_t *arr, const double *b, size_t n)
{
	double worst = 0;
	size_t i;

	if (!json_is_array(arr) || json_array_size(arr) != n)
		return -1;
	for (i = 0; i < n; i++) {
		const json_t *x = json_array_get(arr, i);
		double d;

		if (!json_is_number(x))
			return -1;
		d = fabs(json_number_value(x) - b[i]) / fmax(1.0, fabs(b[i]));
		if (d > worst)
			worst = d;
	}
	return worst;
}

static void verify_cell(struct cell *c, struct verify *v)
{
	size_t check[3], n_check = 0, i, li;
	double tol = 1e-12, worst = 0;
	double *rm = xmalloc(2048 * sizeof(double)), *rv = xmalloc(2048 * sizeof(double));
	struct sbuf body = { 0 }, steps = { 0 };
	const size_t ref_layers[2] = { 0, RESNET50_LAYERS - 1 };

	v->ran = true;
	v->ok = true;
	if (c->steps_done == 0) {
		v->ok = false;
		sb_printf(&v->text, "no step completed");
		goto out;
	}
	check[n_check++] = 0;
	if (c->steps_done > 2)
		check[n_check++] = c->steps_done / 2;
	if (c->steps_done > 1)
		check[n_check++] = c->steps_done - 1;
	for (i = 0; i < n_check; i++) {
		size_t step = check[i], acked = 0, unknown = 0;
		unsigned w, s;
		char path[256];
		json_t *root, *jl;
		json_error_t jerr;
		int status;

		for (w = 0; w < c->conns; w++)
			for (s = 0; s < c->k; s++) {
				acked += *ack_at(c, step, w, s) == ACK_OK;
				unknown += *ack_at(c, step, w, s) == ACK_UNKNOWN;
			}
		sb_printf(&steps, "%s%zu (%zu)", i ? ", " : "", step, acked);
		snprintf(path, sizeof(path), "/v1/runs/%s/stats?step=%zu", c->run, step);
		status = http_simple(c->port, "GET", path, NULL, NULL, 0, &body);
		if (acked + unknown == 0) {
			if (status != 404) {
				v->ok = false;
				sb_printf(&v->text,
					  "step %zu: nothing acknowledged but GET stats "
					  "answered %d; ",
					  step, status);
			}
			continue;
		}
		if (status != 200) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: GET stats answered %d; ", step, status);
			continue;
		}
		root = json_loadb(body.p, body.len, 0, &jerr);
		jl = json_object_get(root, "layers");
		if (root == NULL || !json_is_object(jl)) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: unreadable stats reply; ", step);
			json_decref(root);
			continue;
		}
		if (json_integer_value(json_object_get(root, "step")) != (json_int_t)step) {
			v->ok = false;
			sb_printf(&v->text, "step %zu: reply is for another step; ", step);
		}
		for (li = 0; li < N_LAYERS; li++) {
			const struct bn_layer *l = &layers[li];
			json_t *lo = json_object_get(jl, l->name);
			json_int_t batches = json_integer_value(json_object_get(lo, "batches"));
			json_int_t count = json_integer_value(json_object_get(lo, "count"));
			json_int_t ch = json_integer_value(json_object_get(lo, "channels"));

			if (lo == NULL || ch != (json_int_t)l->channels ||
			    batches < (json_int_t)acked ||
			    batches > (json_int_t)(acked + unknown) ||
			    count != batches * (json_int_t)l->count) {
				v->ok = false;
				sb_printf(&v->text,
					  "step %zu layer %s: batches %lld, count %lld, "
					  "channels %lld; acknowledged %zu (+%zu unknown); ",
					  step, l->name, (long long)batches, (long long)count,
					  (long long)ch, acked, unknown);
				break;
			}
		}
		if (unknown == 0) {
			for (li = 0; li < 2; li++) {
				const struct bn_layer *l = &layers[ref_layers[li]];
				json_t *lo = json_object_get(jl, l->name);
				double dm, dv;

				reference(c, step, l, rm, rv);
				dm = max_rel_diff(json_object_get(lo, "mean"), rm, l->channels);
				dv = max_rel_diff(json_object_get(lo, "var"), rv, l->channels);
				if (dm < 0 || dv < 0 || dm > tol || dv > tol) {
					v->ok = false;
					sb_printf(&v->text,
						  "step %zu layer %s: mean/var differ from "
						  "the exact merge by %.3g/%.3g; ",
						  step, l->name, dm, dv);
				}
				worst = fmax(worst, fmax(dm, dv));
			}
		}
		json_decref(root);
	}
	if (v->ok)
		sb_printf(&v->text,
			  "steps %s: `batches` = acknowledged uploads and `count` = "
			  "their sum for all %zu layers; mean/var of %s and %s equal the exact "
			  "merge (max rel. diff %.2g)",
			  steps.p, N_LAYERS, layers[0].name, layers[RESNET50_LAYERS - 1].name,
			  worst);
	else
		sb_printf(&v->text, "(steps checked, acknowledged: %s)", steps.p);
out:
	sb_free(&body);
	sb_free(&steps);
	free(rm);
	free(rv);
}

/* ------------------------------------------------------------------------ */
/* in process */

struct inproc {
	const char *what;
	double per_s, mb_s, us_each;
	size_t iters;
};

/*
 * fvcore.nn.precise_bn._PopulationVarianceEstimator.update, per layer, in
 * float32 as torch does it on float tensors (the Python float factors are
 * cast to float32):
 *   tot += n
 *   batch_square_mean = batch_mean^2 + batch_var * ((n - 1) / n)
 *   pop_mean += (batch_mean - pop_mean) * (n / tot)
 *   pop_square_mean += (batch_square_mean - pop_square_mean) * (n / tot)
 * with batch_var the unbiased batch variance (bn.running_var at momentum 1).
 * The arithmetic only: no tensor or Python overhead.
 */
static void bench_estimator(struct inproc *r)
{
	float *pm = xcalloc(n_channels, sizeof(float)), *ps = xcalloc(n_channels, sizeof(float));
	int64_t tot[RESNET50_LAYERS] = { 0 };
	double t0 = now_s(), t;
	size_t it = 0, li, ch;
	volatile float keep;

	do {
		const struct variant *v = &variants[it % opt.variants];

		for (li = 0; li < N_LAYERS; li++) {
			const struct bn_layer *l = &layers[li];
			const float *m = v->mean + l->offset, *var = v->var + l->offset;
			float *pmean = pm + l->offset, *psq = ps + l->offset;
			float unbias, w;

			tot[li] += l->count;
			unbias = (float)((double)(l->count - 1) / (double)l->count);
			w = (float)((double)l->count / (double)tot[li]);
			for (ch = 0; ch < l->channels; ch++) {
				float bsq = m[ch] * m[ch] + var[ch] * unbias;

				pmean[ch] += (m[ch] - pmean[ch]) * w;
				psq[ch] += (bsq - psq[ch]) * w;
			}
		}
		it++;
		t = now_s() - t0;
	} while (t < 1.0 || it < 100);
	keep = pm[it % n_channels] + ps[it % n_channels];
	(void)keep;
	r->what = "fvcore `_PopulationVarianceEstimator.update`, f32, 53 layers (arithmetic only)";
	r->iters = it;
	r->per_s = (double)it / t;
	r->mb_s = (double)it * (double)n_channels * 2 * sizeof(float) / t / 1e6;
	r->us_each = t / (double)it * 1e6;
	free(pm);
	free(ps);
}

/* json_loadb with the flags bnstatd's ingest uses, then json_decref. */
static void bench_parse(struct inproc *r, enum form form)
{
	struct sbuf body = { 0 };
	json_error_t err;
	double t0, t;
	size_t it = 0;

	body_render(&body, form, 0, 0, 0);
	t0 = now_s();
	do {
		json_t *root = json_loadb(body.p, body.len,
					  JSON_REJECT_DUPLICATES | JSON_DECODE_ANY, &err);

		if (root == NULL)
			die("json_loadb of our own %s body: %s", form_names[form], err.text);
		json_decref(root);
		it++;
		t = now_s() - t0;
	} while (t < 1.0 || it < 10);
	r->what = form == F_JSON ? "jansson `json_loadb` alone, json body"
				 : "jansson `json_loadb` alone, b64 body";
	r->iters = it;
	r->per_s = (double)it / t;
	r->mb_s = (double)it * (double)body.len / t / 1e6;
	r->us_each = t / (double)it * 1e6;
	sb_free(&body);
}

/* ------------------------------------------------------------------------ */
/* the report */

struct row {
	enum target target;
	enum form form;
	unsigned conns;
	bool unsupported, failed;
	char why[256];
	struct cell cell;
	struct verify verify;
};

struct form_mem {
	bool ran;
	long rss_start, rss_end, hwm;
	double db_mib;
	size_t steps;
	int exit_status;
};

static struct row *rows;
static size_t n_rows;
static struct form_mem mem[F_COUNT];

static struct row *row_add(enum target t, enum form f, unsigned conns)
{
	struct row *r;

	rows = xrealloc(rows, (n_rows + 1) * sizeof(*rows));
	r = &rows[n_rows++];
	memset(r, 0, sizeof(*r));
	r->target = t;
	r->form = f;
	r->conns = conns;
	return r;
}

static const struct row *row_find(enum target t, enum form f, unsigned conns)
{
	size_t i;

	for (i = 0; i < n_rows; i++)
		if (rows[i].target == t && rows[i].form == f && rows[i].conns == conns &&
		    !rows[i].unsupported && !rows[i].failed)
			return &rows[i];
	return NULL;
}

static void cell_setup(struct cell *c, enum target t, enum form f, unsigned conns, unsigned port)
{
	memset(c, 0, sizeof(*c));
	c->target = t;
	c->form = f;
	c->conns = conns;
	c->k = opt.batches_per_step;
	c->port = port;
	c->seconds = opt.seconds;
	c->max_uploads = opt.uploads;
	c->cpu0 = c->cpu1 = -1;
	snprintf(c->run, sizeof(c->run), "bench-%s-c%u", form_names[f], conns);
}

static void machine_line(void)
{
	char model[256];
	struct utsname u;

	cpu_model(model, sizeof(model));
	uname(&u);
	printf("- machine: %ld CPUs online (nproc), %s, Linux %s %s\n",
	       sysconf(_SC_NPROCESSORS_ONLN), model, u.release, u.machine);
}

/* First line of `bnstatd --version`. */
static void daemon_version(char *out, size_t size)
{
	int p[2];
	pid_t pid;
	ssize_t n;
	size_t len = 0;

	snprintf(out, size, "unknown version");
	if (pipe2(p, O_CLOEXEC) != 0)
		return;
	fflush(NULL);
	pid = fork();
	if (pid == 0) {
		dup2(p[1], 1);
		dup2(p[1], 2);
		execl(opt.bnstatd, opt.bnstatd, "--version", (char *)NULL);
		_exit(127);
	}
	close(p[1]);
	while (pid > 0 && len < size - 1 && (n = read(p[0], out + len, size - 1 - len)) > 0)
		len += (size_t)n;
	close(p[0]);
	if (pid > 0)
		waitpid(pid, NULL, 0);
	if (len == 0) {
		snprintf(out, size, "unknown version");
		return;
	}
	out[len] = '\0';
	out[strcspn(out, "\n")] = '\0';
}

static void print_command(int argc, char **argv)
{
	int i;

	printf("- command: `");
	for (i = 0; i < argc; i++) {
		const char *a = argv[i];
		bool plain = *a != '\0' &&
			     strspn(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				       "0123456789-_./=,:") == strlen(a);

		printf(plain ? "%s%s" : "%s'%s'", i ? " " : "", a);
	}
	printf("`\n");
}

static void print_header(int argc, char **argv)
{
	char ver[256];
	struct sbuf b[F_COUNT] = { { 0 } };
	int f;

	for (f = 0; f < F_COUNT; f++)
		body_render(&b[f], (enum form)f, 0, 0, 0);
	daemon_version(ver, sizeof(ver));
	printf("# bnstat ingest benchmark\n\n");
	machine_line();
	printf("- bnstatd: `%s` (%s), `--threads %u`", opt.bnstatd, ver, opt.threads);
	for (size_t i = 0; i < opt.n_daemon_args; i++)
		printf(" `%s`", opt.daemon_args[i]);
	printf("; libmicrohttpd %s, jansson %s\n", MHD_get_version(), jansson_version_str());
	print_command(argc, argv);
	printf("- workload: torchvision ResNet-50, %zu BatchNorm layers, %zu channels, "
	       "batch %d (count = %d·H·W per layer); body bytes: safetensors %zu, b64 %zu, "
	       "json %zu\n",
	       N_LAYERS, n_channels, NBS, NBS, b[F_ST].len, b[F_B64].len, b[F_JSON].len);
	printf("- each cell: N connections = N workers (`rank0`…), %u upload(s) per worker per "
	       "step, a barrier between steps, %s; %u client thread(s); one bnstatd per form on "
	       "a fresh database in %s\n\n",
	       opt.batches_per_step, opt.uploads ? "bounded by --uploads" : "bounded by --seconds",
	       opt.client_threads, opt.tmpdir);
	for (f = 0; f < F_COUNT; f++)
		sb_free(&b[f]);
	fflush(stdout);
}

static void fmt_num(char *out, size_t size, double v, int prec)
{
	if (isnan(v))
		snprintf(out, size, "—");
	else
		snprintf(out, size, "%.*f", prec, v);
}

static double kb_mib(long kb)
{
	return kb < 0 ? NAN : (double)kb / 1024.0;
}

static void print_table(void)
{
	size_t i;

	printf("## Uploads over HTTP\n\n");
	printf("| target | body | conns | uploads | errors | uploads/s | MB/s | p50 ms | p99 ms "
	       "| server CPU ms/upload | server CPU %% of a core | client CPU ms/upload | vs sink "
	       "|\n");
	printf("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];
		const struct cell *c = &r->cell;
		const char *tname = r->target == T_SINK ? "sink" : "bnstatd";
		char ups[32], mbs[32], p50[32], p99[32], scpu[32], spct[32], ccpu[32], ratio[32];
		double rate, n;
		const struct row *s;

		if (r->unsupported || r->failed) {
			printf("| %s | %s | %u | — | — | %s | | | | | | | |\n", tname,
			       form_names[r->form], r->conns, r->why);
			continue;
		}
		n = c->ok > 0 ? (double)c->done : NAN;
		rate = c->elapsed > 0 ? (double)c->ok / c->elapsed : NAN;
		fmt_num(ups, sizeof(ups), rate, 1);
		fmt_num(mbs, sizeof(mbs),
			c->elapsed > 0 ? (double)c->bytes / c->elapsed / 1e6 : NAN, 1);
		fmt_num(p50, sizeof(p50), c->p50, 2);
		fmt_num(p99, sizeof(p99), c->p99, 2);
		fmt_num(scpu, sizeof(scpu), c->server_cpu_s * 1e3 / n, 3);
		fmt_num(spct, sizeof(spct), c->server_cpu_s / c->elapsed * 100, 0);
		fmt_num(ccpu, sizeof(ccpu), c->client_cpu_s * 1e3 / n, 3);
		s = row_find(T_SINK, r->form, r->conns);
		if (r->target == T_SINK)
			snprintf(ratio, sizeof(ratio), "1");
		else if (s != NULL && s->cell.ok > 0)
			fmt_num(ratio, sizeof(ratio), rate / ((double)s->cell.ok / s->cell.elapsed),
				2);
		else
			snprintf(ratio, sizeof(ratio), "—");
		printf("| %s | %s | %u | %" PRIu64 " | %" PRIu64 " | %s | %s | %s | %s | %s | %s "
		       "| %s | %s |\n",
		       tname, form_names[r->form], r->conns, c->ok, c->http_err + c->io_err, ups,
		       mbs, p50, p99, scpu, spct, ccpu, ratio);
	}
	printf("\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];
		const struct cell *c = &r->cell;

		if (r->unsupported || r->failed || c->http_err + c->io_err + c->dup == 0)
			continue;
		printf("- %s %s c%u: %" PRIu64 " HTTP errors, %" PRIu64 " broken connections, "
		       "%" PRIu64 " duplicates",
		       r->target == T_SINK ? "sink" : "bnstatd", form_names[r->form], r->conns,
		       c->http_err, c->io_err, c->dup);
		if (c->http_err > 0) {
			printf("; statuses:");
			for (int s = 0; s < STATUS_MAX; s++)
				if (c->status[s] && s != 200)
					printf(" %d×%u", s, c->status[s]);
		}
		printf("; last: `%s`\n", c->last_err);
	}
}

static void print_inproc(const struct inproc *ip, size_t n)
{
	size_t i, j;

	if (n == 0)
		return;
	printf("## In process, one thread\n\n");
	printf("| what | per second | MB/s | µs each |\n|---|--:|--:|--:|\n");
	for (i = 0; i < n; i++)
		printf("| %s | %.1f | %.1f | %.1f |\n", ip[i].what, ip[i].per_s, ip[i].mb_s,
		       ip[i].us_each);
	printf("\n");
	for (i = 0; i < n; i++) {
		if (strstr(ip[i].what, "json body") == NULL &&
		    strstr(ip[i].what, "b64 body") == NULL)
			continue;
		for (j = 0; j < opt.n_conns; j++) {
			enum form f = strstr(ip[i].what, "json body") ? F_JSON : F_B64;
			const struct row *r = row_find(T_DAEMON, f, opt.conns[j]);

			if (r == NULL || r->cell.elapsed <= 0)
				continue;
			printf("- bnstatd/%s at %u conns: %.1f uploads/s = %.2f × the rate of "
			       "`json_loadb` alone on one thread\n",
			       form_names[f], opt.conns[j], (double)r->cell.ok / r->cell.elapsed,
			       (double)r->cell.ok / r->cell.elapsed / ip[i].per_s);
		}
	}
	printf("\n");
}

static void print_memory(void)
{
	int f;
	size_t i;
	bool any = false;

	for (f = 0; f < F_COUNT; f++)
		any = any || mem[f].ran;
	if (!any)
		return;
	printf("## bnstatd memory and storage\n\n");
	printf("| body | RSS at start MiB | RSS at end MiB | peak RSS (VmHWM) MiB | database MiB | "
	       "steps stored | exit |\n|---|--:|--:|--:|--:|--:|---|\n");
	for (f = 0; f < F_COUNT; f++) {
		if (!mem[f].ran)
			continue;
		char a[32], b[32], c[32];

		fmt_num(a, sizeof(a), kb_mib(mem[f].rss_start), 1);
		fmt_num(b, sizeof(b), kb_mib(mem[f].rss_end), 1);
		fmt_num(c, sizeof(c), kb_mib(mem[f].hwm), 1);
		printf("| %s | %s | %s | %s | %.1f | %zu | %s |\n", form_names[f], a, b, c,
		       mem[f].db_mib, mem[f].steps,
		       mem[f].exit_status == 0 ? "0 (SIGTERM)" : "**not 0**");
	}
	printf("\n## Correctness (bnstatd)\n\n");
	for (i = 0; i < n_rows; i++) {
		const struct row *r = &rows[i];

		if (r->target != T_DAEMON || !r->verify.ran)
			continue;
		printf("- %s %s, run `%s`: %s\n", r->verify.ok ? "ok" : "**FAILED**",
		       form_names[r->form], r->cell.run, r->verify.text.p);
	}
	printf("\n");
}

/* ------------------------------------------------------------------------ */
/* the runs */

static void run_sink_cells(void)
{
	struct sink s;
	int f;
	size_t j;
	bool any_form = false;

	for (f = 0; f < F_COUNT; f++)
		any_form = any_form || opt.run_form[f];
	sink_start(&s);
	note("sink listening on 127.0.0.1:%u with %zu threads", s.port, s.n_tids);
	for (f = 0; f < F_COUNT; f++) {
		if (any_form && !opt.run_form[f])
			continue;
		for (j = 0; j < opt.n_conns; j++) {
			struct row *r = row_add(T_SINK, (enum form)f, opt.conns[j]);

			cell_setup(&r->cell, T_SINK, (enum form)f, opt.conns[j], s.port);
			r->cell.sink = &s;
			note("sink %s c%u ...", form_names[f], opt.conns[j]);
			cell_run(&r->cell);
			note("  %" PRIu64 " uploads in %.2f s", r->cell.ok, r->cell.elapsed);
			cell_free(&r->cell);
		}
	}
	MHD_stop_daemon(s.mhd);
}

/* One upload outside the timing: is the form supported, is our body right? */
static int probe(const struct daemon *d, enum form f, char *why, size_t size)
{
	struct sbuf body = { 0 }, reply = { 0 };
	int status;

	body_render(&body, f, 0, 0, 0);
	status = http_simple(d->port, "POST", "/v1/runs/bench-probe/batches",
			     f == F_ST ? "application/octet-stream" : "application/json", body.p,
			     body.len, &reply);
	if (status == 415)
		snprintf(why, size, "unsupported (415)");
	else if (status != 200)
		snprintf(why, size, "probe upload answered %d: `%.150s`", status,
			 reply.p ? reply.p : "");
	sb_free(&body);
	sb_free(&reply);
	return status;
}

static void run_daemon_form(enum form f)
{
	struct daemon d;
	size_t j;
	int status;
	char why[256];

	if (daemon_start(&d) < 0) {
		for (j = 0; j < opt.n_conns; j++) {
			struct row *r = row_add(T_DAEMON, f, opt.conns[j]);

			r->failed = true;
			snprintf(r->why, sizeof(r->why), "bnstatd did not start");
		}
		return;
	}
	note("bnstatd %s: pid %d, port %u, db %s", form_names[f], (int)d.pid, d.port, d.db);
	mem[f].ran = true;
	mem[f].rss_start = proc_status_kb(d.pid, "VmRSS");
	status = probe(&d, f, why, sizeof(why));
	for (j = 0; j < opt.n_conns; j++) {
		struct row *r = row_add(T_DAEMON, f, opt.conns[j]);

		if (status == 200 && daemon_gone(&d, why, sizeof(why))) {
			r->failed = true;
			snprintf(r->why, sizeof(r->why), "%s", why);
			continue;
		}
		if (status != 200) {
			r->unsupported = status == 415;
			r->failed = status != 415;
			snprintf(r->why, sizeof(r->why), "%s", why);
			continue;
		}
		cell_setup(&r->cell, T_DAEMON, f, opt.conns[j], d.port);
		r->cell.daemon = &d;
		note("bnstatd %s c%u ...", form_names[f], opt.conns[j]);
		cell_run(&r->cell);
		note("  %" PRIu64 " uploads in %.2f s; checking", r->cell.ok, r->cell.elapsed);
		if (daemon_gone(&d, why, sizeof(why))) {
			note("%s during the cell", why);
			r->verify.ran = true;
			sb_printf(&r->verify.text, "%s during the cell", why);
			print_log_tail(d.log);
		} else {
			verify_cell(&r->cell, &r->verify);
		}
		mem[f].steps += r->cell.steps_done;
		cell_free(&r->cell);
	}
	if (status != 200)
		note("bnstatd %s: %s", form_names[f], why);
	mem[f].rss_end = proc_status_kb(d.pid, "VmRSS");
	mem[f].hwm = proc_status_kb(d.pid, "VmHWM");
	mem[f].db_mib = dir_mib(d.dir, "bench.db");
	mem[f].exit_status = daemon_stop(&d);
	if (mem[f].exit_status != 0 && !d.exited)
		print_log_tail(d.log);
	if (opt.keep)
		note("kept %s", d.dir);
	else
		dir_remove(d.dir);
}

/* --uploads-rss N: many uploads through one daemon, RSS sampled as it goes. */
static int run_rss(void)
{
	struct daemon d;
	struct cell c;
	enum form f = F_COUNT;
	char why[256];
	int status = 0, ff, exit_status;
	size_t i;
	long rss0, rss1, hwm;
	double db;
	struct verify v = { 0 };

	{
		/* bnstatd keeps one aggregate row per (step, layer): 5 doubles a
		 * channel, whatever the number of workers */
		uint64_t per_step = (uint64_t)opt.conns[0] * opt.batches_per_step;
		double steps = ceil((double)opt.uploads_rss / (double)per_step);
		double need = steps * (double)n_channels * 5 * 8 * 1.1;
		struct statvfs sv;

		if (statvfs(opt.tmpdir, &sv) == 0 &&
		    need > 0.5 * (double)sv.f_bavail * (double)sv.f_frsize)
			die("--uploads-rss %" PRIu64 " at %u conns x %u per step is %.0f steps, "
			    "about %.1f GiB of database, more than half the free space of %s; "
			    "use more --batches-per-step (a PreciseBN pass: many batches at one "
			    "step) or more --conns",
			    opt.uploads_rss, opt.conns[0], opt.batches_per_step, steps,
			    need / 1073741824.0, opt.tmpdir);
	}
	if (daemon_start(&d) < 0)
		return 1;
	for (ff = 0; ff < F_COUNT && f == F_COUNT; ff++) {
		if (!opt.run_form[ff])
			continue;
		status = probe(&d, (enum form)ff, why, sizeof(why));
		if (status == 200)
			f = (enum form)ff;
		else
			note("%s: %s", form_names[ff], why);
	}
	if (f == F_COUNT) {
		daemon_stop(&d);
		dir_remove(d.dir);
		die("--uploads-rss: no body form of --forms is accepted by this bnstatd");
	}
	rss0 = proc_status_kb(d.pid, "VmRSS");
	cell_setup(&c, T_DAEMON, f, opt.conns[0], d.port);
	snprintf(c.run, sizeof(c.run), "bench-rss-%s", form_names[f]);
	c.daemon = &d;
	c.max_uploads = opt.uploads_rss;
	c.rss_every = opt.uploads_rss / 10 ? opt.uploads_rss / 10 : 1;
	c.rss_next = c.rss_every;
	note("--uploads-rss %" PRIu64 ": %s, %u conns, %u per worker per step, at most %.0f s; "
	     "the database grows by about %.1f MiB per step",
	     opt.uploads_rss, form_names[f], c.conns, c.k, c.seconds,
	     (double)n_channels * 5 * 8 / 1048576.0);
	cell_run(&c);
	rss1 = proc_status_kb(d.pid, "VmRSS");
	hwm = proc_status_kb(d.pid, "VmHWM");
	db = dir_mib(d.dir, "bench.db");
	if (daemon_gone(&d, why, sizeof(why))) {
		v.ran = true;
		sb_printf(&v.text, "%s during the run", why);
		print_log_tail(d.log);
	} else {
		verify_cell(&c, &v);
	}

	printf("## bnstatd memory over %" PRIu64 " uploads (%s)\n\n", c.ok, form_names[f]);
	printf("| body | conns | uploads | errors | seconds | uploads/s | RSS start MiB | "
	       "RSS end MiB | peak RSS MiB | database MiB | steps |\n"
	       "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
	printf("| %s | %u | %" PRIu64 " | %" PRIu64 " | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f "
	       "| %zu |\n\n",
	       form_names[f], c.conns, c.ok, c.http_err + c.io_err, c.elapsed,
	       (double)c.ok / c.elapsed, kb_mib(rss0), kb_mib(rss1), kb_mib(hwm), db, c.steps_done);
	printf("RSS (MiB) after N uploads: 0: %.1f", kb_mib(rss0));
	for (i = 0; i < c.n_rss; i++)
		printf(", %" PRIu64 ": %.1f", c.rss_at[i], kb_mib(c.rss_kb[i]));
	printf(", end: %.1f\n\n", kb_mib(rss1));
	printf("- correctness: %s %s\n", v.ok ? "ok" : "**FAILED**", v.text.p);
	if (c.http_err + c.io_err > 0)
		printf("- errors: last `%s`\n", c.last_err);
	cell_free(&c);
	exit_status = daemon_stop(&d);
	printf("- bnstatd exit status after SIGTERM: %d\n", exit_status);
	if (opt.keep)
		note("kept %s", d.dir);
	else
		dir_remove(d.dir);
	return v.ok && exit_status == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
	struct inproc ip[3];
	size_t n_ip = 0, i;
	int f, rc = 0;
	bool any_daemon = false;

	signal(SIGPIPE, SIG_IGN);
	parse_options(argc, argv);
	layers_init();
	for (f = 0; f < F_COUNT; f++)
		any_daemon = any_daemon || opt.run_form[f];
	if (opt.dump_form >= 0) {
		struct sbuf b = { 0 };

		opt.variants = 1;
		make_variants();
		body_render(&b, (enum form)opt.dump_form, 0, 0, 0);
		return fwrite(b.p, 1, b.len, stdout) == b.len && fflush(stdout) == 0 ? 0 : 1;
	}
	if ((any_daemon || opt.uploads_rss) && access(opt.bnstatd, X_OK) != 0)
		die("bnstatd not found or not executable: %s (use --bnstatd PATH or BNSTATD)",
		    opt.bnstatd);
	note("rendering %u variants of the three bodies", opt.variants);
	make_variants();
	print_header(argc, argv);
	if (opt.uploads_rss > 0)
		return run_rss();

	/* in-process baselines first, while nothing else of ours runs */
	if (opt.run_estimator) {
		note("fvcore estimator in process ...");
		bench_estimator(&ip[n_ip++]);
	}
	if (opt.run_parse) {
		note("json_loadb in process ...");
		bench_parse(&ip[n_ip++], F_JSON);
		bench_parse(&ip[n_ip++], F_B64);
	}
	if (opt.run_sink)
		run_sink_cells();
	for (f = 0; f < F_COUNT; f++)
		if (opt.run_form[f])
			run_daemon_form((enum form)f);

	print_table();
	print_inproc(ip, n_ip);
	print_memory();
	for (i = 0; i < n_rows; i++) {
		if (rows[i].failed || (rows[i].verify.ran && !rows[i].verify.ok))
			rc = 1;
		sb_free(&rows[i].verify.text);
	}
	for (f = 0; f < F_COUNT; f++)
		if (mem[f].ran && mem[f].exit_status != 0)
			rc = 1;
	return rc;
}
