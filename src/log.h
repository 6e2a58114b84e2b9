/*
 * log: one line per event on stderr, as key=value pairs:
 *
 *   ts=2026-11-29T19:30:00.123Z level=info event=listening host=127.0.0.1 port=8650
 *
 * The event name comes first so that lines grep well; values with spaces
 * are quoted by the caller's format. Safe to call from any thread.
 */
#ifndef BNSTAT_LOG_H
#define BNSTAT_LOG_H

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3 };

/* Lines below this level are dropped (default LOG_INFO). */
void log_set_level(enum log_level level);

/*
 * Send stderr (our lines and libraries' alike) to the file at path,
 * appending; called again (SIGHUP) it reopens the file, for log rotation.
 * Returns 0 or a negative errno.
 */
int log_open_file(const char *path);

/* Parse "debug", "info", "warn" or "error": 0 and *out, or -EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/* Write one event line; fmt (may be NULL) adds the key=value pairs. */
void log_event(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_debug(ev, ...) log_event(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...) log_event(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...) log_event(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_event(LOG_ERROR, ev, __VA_ARGS__)

#endif
