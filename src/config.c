/*
 * config: defaults, the config file and command-line flags (see config.h).
 *
 * One table describes every option, so that the file, the flags and --help
 * can never disagree about names, ranges or defaults.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum opt_type {
	T_STRING,
	T_OPTSTRING,
	T_UINT,
	T_SIZE,
	T_I64,
	T_LISTEN,
	T_LEVEL,
	T_SYNC,
	T_CHECK,
	T_MOMENTA,
	T_MIB
};

struct option_def {
	const char *name;
	enum opt_type type;
	size_t offset; /* into struct config */
	size_t size;   /* of the field, for T_STRING and T_UINT/T_SIZE */
	unsigned long long min, max;
	const char *help;
};

#define F(field) offsetof(struct config, field), sizeof(((struct config *)0)->field)

static const struct option_def options[] = {
	{ "db", T_STRING, F(db), 0, 0, "SQLite database file (created if missing)" },
	{ "listen", T_LISTEN, F(listen), 0, 0,
	  "HOST:PORT to listen on ([::1]:PORT for IPv6; port 0: any)" },
	{ "threads", T_UINT, F(http.threads), 1, 256, "HTTP worker threads" },
	{ "max-body", T_SIZE, F(http.max_body), 1024, 1ull << 31,
	  "largest request body in bytes (413 above)" },
	{ "max-layers", T_SIZE, F(http.limits.max_layers), 1, 1u << 20, "layers per upload" },
	{ "max-channels", T_SIZE, F(http.limits.max_channels), 1, 1u << 24, "channels per layer" },
	{ "max-connections", T_UINT, F(http.max_connections), 1, 1u << 20,
	  "open connections at most" },
	{ "max-connections-per-ip", T_UINT, F(http.max_per_ip), 0, 1u << 20,
	  "open connections per client address (0: no limit)" },
	{ "timeout", T_UINT, F(http.timeout_s), 1, 86400, "seconds an idle connection is kept" },
	{ "header-timeout", T_UINT, F(http.header_timeout_s), 1, 3600,
	  "seconds a request's line and headers may take to arrive (then closed)" },
	{ "body-min-rate", T_SIZE, F(http.body_min_rate), 0, 1u << 30,
	  "bytes per second a request body must average after header-timeout (0: any)" },
	{ "body-memory-max", T_SIZE, F(http.body_memory_max), 1u << 20, 1ull << 40,
	  "bytes of request bodies held in memory at once (503 past it)" },
	{ "queue-max", T_SIZE, F(store.queue_max), 1, 1u << 20,
	  "uploads waiting for the writer before 503" },
	{ "group-max", T_SIZE, F(store.group_max), 1, 1u << 20,
	  "uploads committed in one transaction at most" },
	{ "synchronous", T_SYNC, F(store.sync_full), 0, 0,
	  "full (durable on power loss) or normal (on process crash)" },
	{ "integrity-check", T_CHECK, F(store.integrity_check), 0, 0,
	  "quick (PRAGMA quick_check at start: a damaged database is refused) or off" },
	{ "retain-steps", T_I64, F(store.retain_steps), 0, 1ull << 62,
	  "keep per-step statistics of the last N steps of each run (0: all)" },
	{ "history-full-steps", T_I64, F(store.history_full_steps), 0, 1ull << 62,
	  "newest steps of each run and domain kept per step; older ones are merged into buckets"
	  " (0: never)" },
	{ "sim-momenta", T_MOMENTA, F(store.sim_momenta), 0, 0,
	  "momenta (comma list, or none) whose simulated EMA stays exact over buckets" },
	{ "open-steps-mb", T_MIB, F(store.open_steps_bytes), 1, 1u << 20,
	  "MiB of open steps' statistics the writer keeps in memory; past it they are written"
	  " early" },
	{ "disk-free-warn-mb", T_MIB, F(store.disk_free_warn_bytes), 0, 1u << 24,
	  "MiB free on the database's file system below which the log and /metrics warn"
	  " (0: never)" },
	{ "retain-runs-days", T_I64, F(store.retain_runs_days), 0, 1000000,
	  "delete a run this many days after its last upload (0: keep runs)" },
	{ "token-file", T_OPTSTRING, F(token_file), 0, 0,
	  "bearer tokens and roles, TOKEN ROLE per line (none: loopback clients only)" },
	{ "tls-cert", T_OPTSTRING, F(tls_cert), 0, 0,
	  "PEM certificate: serve HTTPS (with tls-key)" },
	{ "tls-key", T_OPTSTRING, F(tls_key), 0, 0, "PEM private key of tls-cert" },
	{ "ui-dir", T_OPTSTRING, F(ui_dir), 0, 0,
	  "directory of the dashboard's files served under /ui/ (auto: the installed ones, or"
	  " the source tree's for a bnstatd run from its build tree; empty: no dashboard)" },
	{ "log-file", T_OPTSTRING, F(log_file), 0, 0,
	  "append logs to this file instead of stderr (reopened on SIGHUP)" },
	{ "replay-cache-mb", T_SIZE, F(replay_cache_mb), 0, 1u << 20,
	  "MiB of simulated-EMA replay checkpoints kept in memory" },
	{ "metrics-interval-ms", T_UINT, F(metrics_interval_ms), 10, 3600000,
	  "milliseconds at least between two recomputations of a run's drift gauges" },
	{ "log-level", T_LEVEL, F(log_level), 0, 0, "debug, info, warn or error" },
};

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->db, sizeof(c->db), "./bnstat.db");
	snprintf(c->listen, sizeof(c->listen), "127.0.0.1:8650");
	snprintf(c->host, sizeof(c->host), "127.0.0.1");
	c->port = 8650;
	c->log_level = LOG_INFO;
	c->replay_cache_mb = 256;
	c->metrics_interval_ms = 1000;
	snprintf(c->ui_dir, sizeof(c->ui_dir), "auto");
	http_options_default(&c->http);
	store_options_default(&c->store);
}

/* Names match with '-' and '_' interchangeable. */
static const struct option_def *find_option(const char *name, size_t len)
{
	size_t i, j;

	for (i = 0; i < N_OPTIONS; i++) {
		const char *o = options[i].name;

		if (strlen(o) != len)
			continue;
		for (j = 0; j < len; j++) {
			char a = name[j] == '_' ? '-' : name[j];

			if (a != o[j])
				break;
		}
		if (j == len)
			return &options[i];
	}
	return NULL;
}

static int parse_listen(struct config *c, const char *v, const char *where, struct bn_error *err)
{
	const char *colon;
	const char *host = v;
	size_t hlen;
	char *end;
	unsigned long port;

	if (v[0] == '[') {
		const char *close = strchr(v, ']');

		if (close == NULL || close[1] != ':')
			goto bad;
		host = v + 1;
		hlen = (size_t)(close - host);
		colon = close + 1;
	} else {
		colon = strrchr(v, ':');
		if (colon == NULL)
			goto bad;
		hlen = (size_t)(colon - v);
	}
	if (hlen == 0 || hlen >= sizeof(c->host))
		goto bad;
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || errno != 0 || port > 65535)
		goto bad;
	memcpy(c->host, host, hlen);
	c->host[hlen] = '\0';
	c->port = (unsigned)port;
	snprintf(c->listen, sizeof(c->listen), "%s", v);
	return 0;
bad:
	return bn_error_set(
		err, 400, BN_E_INVALID, "listen",
		"%s: listen must be HOST:PORT (e.g. 127.0.0.1:8650 or [::1]:8650), got \"%s\"",
		where, v);
}

/* A comma list of momenta in (0, 1], or "none": the store's sim_momenta. */
static int parse_momenta(struct store_options *o, const char *v, const char *where,
			 struct bn_error *err)
{
	const char *p = v;
	size_t n = 0;

	if (strcmp(v, "none") == 0) {
		o->n_sim_momenta = 0;
		return 0;
	}
	for (;;) {
		char *end;
		double m;

		errno = 0;
		m = strtod(p, &end);
		if (end == p || errno != 0 || !(m > 0.0 && m <= 1.0) ||
		    (*end != ',' && *end != '\0'))
			return bn_error_set(
				err, 400, BN_E_INVALID, "sim-momenta",
				"%s: sim-momenta must be a comma list of numbers in (0, 1]"
				" or none, got \"%s\"",
				where, v);
		if (n == STORE_SIM_MOMENTA_MAX)
			return bn_error_set(err, 400, BN_E_INVALID, "sim-momenta",
					    "%s: sim-momenta takes at most %d momenta", where,
					    STORE_SIM_MOMENTA_MAX);
		o->sim_momenta[n++] = m;
		if (*end == '\0')
			break;
		p = end + 1;
	}
	o->n_sim_momenta = n;
	return 0;
}

static void format_momenta(const struct store_options *o, char *buf, size_t size)
{
	size_t i, len = 0;

	snprintf(buf, size, "none");
	for (i = 0; i < o->n_sim_momenta && len < size; i++)
		len += (size_t)snprintf(buf + len, size - len, "%s%g", i ? "," : "",
					o->sim_momenta[i]);
}

static int set_option(struct config *c, const struct option_def *o, const char *v,
		      const char *where, struct bn_error *err)
{
	char *field = (char *)c + o->offset;
	unsigned long long n;
	char *end;

	switch (o->type) {
	case T_OPTSTRING: /* may be set to "" to unset it */
	case T_STRING:
		if ((*v == '\0' && o->type == T_STRING) || strlen(v) >= o->size)
			return bn_error_set(
				err, 400, BN_E_INVALID, o->name,
				"%s: %s must be a non-empty string shorter than %zu bytes", where,
				o->name, o->size);
		memcpy(field, v, strlen(v) + 1);
		return 0;
	case T_LISTEN:
		return parse_listen(c, v, where, err);
	case T_LEVEL:
		if (log_level_parse(v, (enum log_level *)(void *)field) < 0)
			return bn_error_set(
				err, 400, BN_E_INVALID, o->name,
				"%s: log-level must be debug, info, warn or error, got \"%s\"",
				where, v);
		return 0;
	case T_SYNC:
		if (strcmp(v, "full") == 0 || strcmp(v, "normal") == 0) {
			*(bool *)(void *)field = strcmp(v, "full") == 0;
			return 0;
		}
		return bn_error_set(err, 400, BN_E_INVALID, o->name,
				    "%s: synchronous must be full or normal, got \"%s\"", where, v);
	case T_CHECK:
		if (strcmp(v, "quick") == 0 || strcmp(v, "off") == 0) {
			*(bool *)(void *)field = strcmp(v, "quick") == 0;
			return 0;
		}
		return bn_error_set(err, 400, BN_E_INVALID, o->name,
				    "%s: integrity-check must be quick or off, got \"%s\"", where,
				    v);
	case T_MOMENTA:
		return parse_momenta(&c->store, v, where, err);
	case T_UINT:
	case T_SIZE:
	case T_I64:
	case T_MIB:
		errno = 0;
		n = strtoull(v, &end, 10);
		if (*v == '\0' || *v == '-' || *end != '\0' || errno != 0 || n < o->min ||
		    n > o->max)
			return bn_error_set(
				err, 400, BN_E_INVALID, o->name,
				"%s: %s must be an integer from %llu to %llu, got \"%s\"", where,
				o->name, o->min, o->max, v);
		if (o->type == T_UINT)
			*(unsigned *)(void *)field = (unsigned)n;
		else if (o->type == T_I64)
			*(int64_t *)(void *)field = (int64_t)n;
		else if (o->type == T_MIB)
			*(size_t *)(void *)field = (size_t)n << 20;
		else
			*(size_t *)(void *)field = (size_t)n;
		return 0;
	}
	return -EINVAL;
}

static char *trim(char *s)
{
	char *e;

	while (*s == ' ' || *s == '\t')
		s++;
	e = s + strlen(s);
	while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\n' || e[-1] == '\r'))
		*--e = '\0';
	return s;
}

static int load_file(struct config *c, const char *path, struct bn_error *err)
{
	FILE *f = fopen(path, "r");
	char *line = NULL, where[4200]; /* getline: a line of any length is read whole */
	size_t cap = 0;
	ssize_t n;
	unsigned lineno = 0;
	int rc = 0;

	if (f == NULL)
		return bn_error_set(err, 400, BN_E_INVALID, "config",
				    "cannot open config file %s: %s", path, strerror(errno));
	while ((n = getline(&line, &cap, f)) != -1) {
		char *s, *eq, *key, *val;
		const struct option_def *o;

		lineno++;
		snprintf(where, sizeof(where), "%s:%u", path, lineno);
		/* a NUL would end the line early, and its tail would go unread */
		if (memchr(line, '\0', (size_t)n) != NULL) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "config",
					  "%s: a NUL byte: a config file is text", where);
			break;
		}
		s = trim(line);
		if (*s == '\0' || *s == '#')
			continue;
		eq = strchr(s, '=');
		if (eq == NULL) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "config",
					  "%s: expected key = value, got \"%s\"", where, s);
			break;
		}
		*eq = '\0';
		key = trim(s);
		val = trim(eq + 1);
		if (strlen(val) >= 2 && val[0] == '"' && val[strlen(val) - 1] == '"') {
			val[strlen(val) - 1] = '\0';
			val++;
		}
		o = find_option(key, strlen(key));
		if (o == NULL) {
			rc = bn_error_set(err, 400, BN_E_INVALID, "config",
					  "%s: unknown key \"%s\"", where, key);
			break;
		}
		rc = set_option(c, o, val, where, err);
		if (rc < 0)
			break;
	}
	free(line);
	fclose(f);
	return rc;
}

void config_ui_dir_auto(char *buf, size_t size)
{
	char exe[PATH_MAX], build[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	size_t len;

	if (n > 0 && realpath(BNSTAT_BUILDDIR, build) != NULL) {
		exe[n] = '\0';
		len = strlen(build);
		if (strncmp(exe, build, len) == 0 && exe[len] == '/') {
			snprintf(buf, size, "%s", BNSTAT_UI_SRCDIR);
			return;
		}
	}
	snprintf(buf, size, "%s", BNSTAT_UI_DIR);
}

int config_parse(struct config *c, int argc, char **argv, struct bn_error *err)
{
	int i, pass, rc;

	config_defaults(c);
	/* Pass 0 finds --config and the commands; pass 1 applies the flags over the file. */
	for (pass = 0; pass < 2; pass++) {
		for (i = 1; i < argc; i++) {
			const char *a = argv[i], *val = NULL, *name;
			const struct option_def *o;
			size_t len;
			char where[300];

			if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
				c->help = true;
				continue;
			}
			if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0) {
				c->version = true;
				continue;
			}
			if (strcmp(a, "-t") == 0 || strcmp(a, "--test-config") == 0) {
				c->test_config = true;
				continue;
			}
			if (strcmp(a, "-c") == 0 || strcmp(a, "--config") == 0 ||
			    strncmp(a, "--config=", 9) == 0) {
				val = a[1] == 'c' ? argv[++i] : a[8] == '=' ? a + 9 : argv[++i];
				if (val == NULL)
					return bn_error_set(err, 400, BN_E_INVALID, "config",
							    "%s needs a file name", a);
				if (pass == 0)
					snprintf(c->config_file, sizeof(c->config_file), "%s", val);
				continue;
			}
			if (strncmp(a, "--", 2) != 0)
				return bn_error_set(err, 400, BN_E_INVALID, NULL,
						    "unexpected argument \"%s\" (see --help)", a);
			name = a + 2;
			len = strcspn(name, "=");
			o = find_option(name, len);
			if (o == NULL)
				return bn_error_set(err, 400, BN_E_INVALID, NULL,
						    "unknown option %s (see --help)", a);
			if (name[len] == '=') {
				val = name + len + 1;
			} else {
				if (i + 1 >= argc)
					return bn_error_set(err, 400, BN_E_INVALID, o->name,
							    "--%s needs a value", o->name);
				val = argv[++i];
			}
			if (pass == 0)
				continue;
			snprintf(where, sizeof(where), "--%s", o->name);
			rc = set_option(c, o, val, where, err);
			if (rc < 0)
				return rc;
		}
		if (pass == 0 && c->config_file[0] != '\0' && !c->help && !c->version) {
			rc = load_file(c, c->config_file, err);
			if (rc < 0)
				return rc;
		}
	}
	c->http.host = c->host;
	c->http.port = c->port;
	if (strcmp(c->ui_dir, "auto") == 0)
		config_ui_dir_auto(c->ui_dir, sizeof(c->ui_dir));
	c->http.ui_dir = c->ui_dir;
	if ((c->tls_cert[0] == '\0') != (c->tls_key[0] == '\0'))
		return bn_error_set(err, 400, BN_E_INVALID, "tls-cert",
				    "tls-cert and tls-key go together: give both or neither");
	return 0;
}

void config_usage(const char *prog)
{
	struct config d;
	size_t i;

	config_defaults(&d);
	printf("Usage: %s [OPTION]...\n"
	       "bnstatd: exact BatchNorm population statistics (PreciseBN) as a service.\n\n"
	       "  -c, --config FILE       read options from FILE (key = value lines; flags win)\n"
	       "  -t, --test-config       check the configuration and exit\n"
	       "  -h, --help              show this help and exit\n"
	       "  -V, --version           show the version and exit\n",
	       prog);
	for (i = 0; i < N_OPTIONS; i++) {
		const struct option_def *o = &options[i];
		const char *field = (const char *)&d + o->offset;
		char def[128] = "";

		switch (o->type) {
		case T_STRING:
		case T_LISTEN:
			snprintf(def, sizeof(def), "%s", field);
			break;
		case T_OPTSTRING:
			snprintf(def, sizeof(def), "%s", field[0] != '\0' ? field : "none");
			break;
		case T_UINT:
			snprintf(def, sizeof(def), "%u", *(const unsigned *)(const void *)field);
			break;
		case T_SIZE:
			snprintf(def, sizeof(def), "%zu", *(const size_t *)(const void *)field);
			break;
		case T_I64:
			snprintf(def, sizeof(def), "%lld",
				 (long long)*(const int64_t *)(const void *)field);
			break;
		case T_LEVEL:
			snprintf(def, sizeof(def), "info");
			break;
		case T_SYNC:
			snprintf(def, sizeof(def), "full");
			break;
		case T_CHECK:
			snprintf(def, sizeof(def), "quick");
			break;
		case T_MOMENTA:
			format_momenta(&d.store, def, sizeof(def));
			break;
		case T_MIB:
			snprintf(def, sizeof(def), "%zu",
				 *(const size_t *)(const void *)field >> 20);
			break;
		}
		printf("      --%-18s %s (default: %s)\n", o->name, o->help, def);
	}
	printf("\nEvery option can also be set in the config file as name = value.\n"
	       "Logs go to stderr, one key=value line per event.\n");
}
