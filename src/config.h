/*
 * config: the daemon's settings, from defaults, a config file and flags.
 *
 * Every option has one name, used both as a long flag (--max-body 1048576)
 * and as a key in the config file (max_body = 1048576; dashes and
 * underscores are interchangeable). Flags win over the file.
 */
#ifndef BNSTAT_CONFIG_H
#define BNSTAT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>

#include "bnstat/error.h"
#include "http.h"
#include "log.h"
#include "store.h"

struct config {
	char db[4096];
	char listen[512]; /* HOST:PORT as given */
	char host[256];	  /* parsed from listen */
	unsigned port;
	char config_file[4096];
	enum log_level log_level;
	size_t replay_cache_mb;	      /* simulated-EMA checkpoints, MiB */
	unsigned metrics_interval_ms; /* between passes of the drift gauges (gauges.h) */
	char token_file[4096];	      /* "" : no tokens, loopback clients only */
	char tls_cert[4096];	      /* PEM files; both or neither */
	char tls_key[4096];
	char log_file[4096]; /* "" : stderr */
	char ui_dir[4096];   /* the dashboard's files; "" : none; "auto" resolved by config_parse() */
	struct http_options http;
	struct store_options store;
	bool help;
	bool version;
	bool test_config;
};

/* Set every field to its default. */
void config_defaults(struct config *c);

/*
 * Parse the command line into *c (defaults first, then the file named by
 * -c/--config if any, then the flags). Returns 0 or a negative errno with
 * a message naming the flag, or the file and line, in *err.
 */
int config_parse(struct config *c, int argc, char **argv, struct bn_error *err);

/*
 * Write into buf (size bytes) where ui-dir "auto" points: the source
 * tree's ui/ when the running program lies under the build tree it was
 * built in (bnstatd run from a clone), else the installed
 * $(pkgdatadir)/ui.
 */
void config_ui_dir_auto(char *buf, size_t size);

/* Print --help text to stdout. */
void config_usage(const char *prog);

#endif
