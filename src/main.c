/*
 * main: bnstatd's entry point. Reads the configuration, opens the store,
 * starts the HTTP server and waits for a signal; on SIGTERM or SIGINT it
 * stops accepting, lets uploads in flight commit and exits 0.
 */
#include "build-config.h"
#include "config.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <microhttpd.h>
#include <sqlite3.h>

#include "http.h"
#include "log.h"
#include "replay.h"
#include "store.h"

int main(int argc, char **argv)
{
	struct config cfg;
	struct bn_error err;
	struct store *store = NULL;
	struct http_server *http = NULL;
	struct replay_cache *replay = NULL;
	sigset_t sigs;
	int sig = 0;

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
	if (cfg.test_config) {
		printf("bnstatd: configuration OK (db=%s listen=%s)\n", cfg.db, cfg.listen);
		return 0;
	}
	log_set_level(cfg.log_level);

	/* Signals are taken by sigwait() below, never by the worker threads. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if (store_open(cfg.db, &cfg.store, &store, &err) < 0) {
		log_error("start_failed", "db=%s error=\"%s\"", cfg.db, err.message);
		return 1;
	}
	replay = replay_cache_new(cfg.replay_cache_mb << 20);
	if (replay == NULL) {
		log_error("start_failed", "error=\"out of memory\"");
		store_close(store);
		return 1;
	}
	if (http_start(&cfg.http, store, replay, &http, &err) < 0) {
		log_error("start_failed", "listen=%s error=\"%s\"", cfg.listen, err.message);
		replay_cache_free(replay);
		store_close(store);
		return 1;
	}
	log_info("listening", "host=%s port=%u db=%s schema=%d threads=%u version=%s", cfg.host,
		 http_port(http), cfg.db, store_schema_version(store), cfg.http.threads,
		 PACKAGE_VERSION);

	for (;;) {
		if (sigwait(&sigs, &sig) != 0)
			continue;
		if (sig == SIGHUP) {
			log_info("sighup", "action=none");
			continue;
		}
		break;
	}

	log_info("stopping", "signal=%s queued=%zu", sig == SIGTERM ? "TERM" : "INT",
		 store_queue_depth(store));
	http_quiesce(http);
	http_drain(http, 10000);
	store_stop_writer(store);
	http_drain(http, 2000);
	http_stop(http);
	replay_cache_free(replay);
	store_close(store);
	log_info("stopped", NULL);
	return 0;
}
