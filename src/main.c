/*
 * main: bnstatd's entry point. Reads the configuration, opens the store,
 * starts the HTTP server and waits for signals: SIGTERM or SIGINT stop
 * accepting, let uploads in flight commit and exit 0; SIGHUP re-reads the
 * token file and reopens the log file. Under systemd (Type=notify) it tells
 * the service manager when it is ready and when it stops.
 */
#include "build-config.h"
#include "config.h"

#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>

#include "auth.h"
#include "gauges.h"
#include "http.h"
#include "log.h"
#include "replay.h"
#include "store.h"

/* Does dir hold the dashboard's page (docs/OPERATIONS.md, "The dashboard")? */
static bool ui_dir_has_page(const char *dir)
{
	char path[4200];

	snprintf(path, sizeof(path), "%s/index.html", dir);
	return access(path, R_OK) == 0;
}

/*
 * The sd_notify protocol: one datagram to the AF_UNIX socket named by
 * $NOTIFY_SOCKET ('@' for the abstract namespace). A dozen lines, so no
 * dependency on libsystemd; without the variable it does nothing.
 */
static void notify(const char *state)
{
	const char *path = getenv("NOTIFY_SOCKET");
	struct sockaddr_un sa;
	socklen_t len;
	int fd;

	if (path == NULL || path[0] == '\0' || strlen(path) >= sizeof(sa.sun_path))
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sun_family = AF_UNIX;
	memcpy(sa.sun_path, path, strlen(path));
	if (sa.sun_path[0] == '@')
		sa.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
		log_warn("notify_failed", "error=\"%s\"", strerror(errno));
	close(fd);
}

/* Read a whole (small) file into a new NUL-terminated string. */
static char *read_file(const char *path, struct bn_error *err)
{
	FILE *f = fopen(path, "rb");
	char *buf = NULL;
	size_t len = 0, cap = 0, n;

	if (f == NULL) {
		bn_error_set(err, 400, BN_E_INVALID, NULL, "cannot read %s: %s", path,
			     strerror(errno));
		return NULL;
	}
	do {
		if (len + 4096 + 1 > cap) {
			char *p;

			cap = cap ? 2 * cap : 8192;
			p = realloc(buf, cap);
			if (p == NULL) {
				free(buf);
				fclose(f);
				bn_error_set(err, 500, BN_E_INTERNAL, NULL, "out of memory");
				return NULL;
			}
			buf = p;
		}
		n = fread(buf + len, 1, 4096, f);
		len += n;
	} while (n > 0 && len < (1u << 20));
	fclose(f);
	buf[len] = '\0';
	return buf;
}

int main(int argc, char **argv)
{
	struct config cfg;
	struct bn_error err;
	struct store *store = NULL;
	struct http_server *http = NULL;
	struct replay_cache *replay = NULL;
	struct gauges *gauges = NULL;
	struct auth *auth = NULL;
	char *cert = NULL, *key = NULL;
	sigset_t sigs;
	int sig = 0, status = 1;

	bn_error_clear(&err);
	if (config_parse(&cfg, argc, argv, &err) < 0) {
		fprintf(stderr, "bnstatd: %s\n", err.message);
		return 2;
	}
	if (cfg.help) {
		config_usage(argv[0]);
		return 0;
	}
	if (cfg.version) {
		printf("bnstatd %s (libmicrohttpd %s, jansson %s, SQLite %s)\n", PACKAGE_VERSION,
		       MHD_get_version(), JANSSON_VERSION, sqlite3_libversion());
		return 0;
	}
	if (cfg.token_file[0] != '\0' && auth_load(cfg.token_file, &auth, &err) < 0) {
		fprintf(stderr, "bnstatd: %s\n", err.message);
		return 2;
	}
	if (cfg.tls_cert[0] != '\0') {
		cert = read_file(cfg.tls_cert, &err);
		key = cert ? read_file(cfg.tls_key, &err) : NULL;
		if (key == NULL || http_tls_check(cert, key, &err) < 0) {
			fprintf(stderr, "bnstatd: %s\n", err.message);
			status = 2;
			goto out;
		}
		cfg.http.tls_cert_pem = cert;
		cfg.http.tls_key_pem = key;
	}
	if (cfg.test_config) {
		printf("bnstatd: configuration OK (db=%s listen=%s tokens=%u tls=%s)\n", cfg.db,
		       cfg.listen, auth ? auth_count(auth) : 0, cert ? "yes" : "no");
		status = 0;
		goto out;
	}
	if (cfg.log_file[0] != '\0' && log_open_file(cfg.log_file) < 0) {
		fprintf(stderr, "bnstatd: cannot open log file %s: %s\n", cfg.log_file,
			strerror(errno));
		status = 2;
		goto out;
	}
	log_set_level(cfg.log_level);
	cfg.http.auth = auth;
	/*
	 * Upload bodies and decoded batches are a few hundred KB each: served
	 * from mmap and trimmed back after every request, each one would fault
	 * in fresh zeroed pages. Keep them in the heap and keep the heap; memory
	 * stays bounded by connections x body size.
	 */
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);

	/* Signals are taken by sigwait() below, never by the worker threads. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* the writer tells the gauges which runs changed (docs/DESIGN.md, "Drift gauges") */
	gauges = gauges_new(cfg.metrics_interval_ms);
	if (gauges == NULL) {
		log_error("start_failed", "error=\"out of memory\"");
		goto out;
	}
	cfg.store.changed = gauges_changed;
	cfg.store.changed_ctx = gauges;
	if (store_open(cfg.db, &cfg.store, &store, &err) < 0) {
		log_error("start_failed", "db=%s error=\"%s\"", cfg.db, err.message);
		goto out;
	}
	if (gauges_start(gauges, store, &err) < 0) {
		log_error("start_failed", "error=\"%s\"", err.message);
		goto out;
	}
	replay = replay_cache_new(cfg.replay_cache_mb << 20);
	if (replay == NULL) {
		log_error("start_failed", "error=\"out of memory\"");
		goto out;
	}
	if (http_start(&cfg.http, store, replay, &http, &err) < 0) {
		log_error("start_failed", "listen=%s error=\"%s\"", cfg.listen, err.message);
		goto out;
	}
	if (auth == NULL)
		log_warn("auth", "tokens=none access=loopback-only hint=\"set token-file to serve "
				 "other hosts\"");
	else
		log_info("auth", "tokens=%u", auth_count(auth));
	if (cfg.ui_dir[0] == '\0')
		log_info("ui", "dir=none");
	else if (ui_dir_has_page(cfg.ui_dir))
		log_info("ui", "dir=%s path=/ui/", cfg.ui_dir);
	else
		log_warn("ui",
			 "dir=%s index=missing hint=\"the dashboard answers 404: set ui-dir to the"
			 " directory of its index.html\"",
			 cfg.ui_dir);
	log_info("listening", "host=%s port=%u db=%s schema=%d threads=%u tls=%s version=%s",
		 cfg.host, http_port(http), cfg.db, store_schema_version(store), cfg.http.threads,
		 cert ? "yes" : "no", PACKAGE_VERSION);
	notify("READY=1\nSTATUS=accepting uploads");

	for (;;) {
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig != SIGHUP)
			break;
		if (cfg.log_file[0] != '\0' && log_open_file(cfg.log_file) < 0)
			log_error("sighup", "action=reopen_log error=\"%s\"", strerror(errno));
		if (auth != NULL) {
			if (auth_reload(auth, cfg.token_file, &err) < 0)
				log_error("sighup",
					  "action=reload_tokens result=kept_old error=\"%s\"",
					  err.message);
			else
				log_info("sighup", "action=reload_tokens tokens=%u",
					 auth_count(auth));
		} else {
			log_info("sighup", "action=none");
		}
	}

	notify("STOPPING=1\nSTATUS=finishing uploads in flight");
	log_info("stopping", "signal=%s queued=%zu", sig == SIGTERM ? "TERM" : "INT",
		 store_queue_depth(store));
	http_quiesce(http);
	http_drain(http, 10000);
	store_stop_writer(store);
	http_drain(http, 2000);
	gauges_stop(gauges);
	log_info("stopped", NULL);
	status = 0;
out:
	http_stop(http);
	gauges_stop(gauges); /* its reader goes back before the store closes */
	replay_cache_free(replay);
	store_close(store);
	gauges_free(gauges); /* after the writer, which tells it of commits, stopped */
	auth_free(auth);
	free(cert);
	free(key);
	return status;
}
