/*
 * bench_ingest_sink.c: the ceiling of the ingest benchmark, a bare
 * libmicrohttpd server inside the bench, set up like bnstatd
 * (MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL, --threads threads,
 * 256 KiB connection memory), that reads each body into one allocation
 * from Content-Length, drops it and answers {}.
 */
#include "bench_ingest.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <microhttpd.h>

#include "bench_proc.h"
#include "bench_util.h"

#if MHD_VERSION < 0x00097002
typedef int MHD_Result;
#else
typedef enum MHD_Result MHD_Result;
#endif

struct sink_req {
	char *body;
	size_t len, cap;
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

void sink_start(struct sink *s)
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
double sink_cpu_s(const struct sink *s)
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

void sink_stop(struct sink *s)
{
	MHD_stop_daemon(s->mhd);
}
