/* log: key=value event lines on stderr (see log.h). */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static enum log_level min_level = LOG_INFO;
static const char *const level_names[] = { "debug", "info", "warn", "error" };

void log_set_level(enum log_level level)
{
	min_level = level;
}

int log_open_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	int rc = 0;

	if (fd < 0)
		return -errno;
	if (dup2(fd, STDERR_FILENO) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

int log_level_parse(const char *s, enum log_level *out)
{
	int i;

	for (i = 0; i < 4; i++) {
		if (strcmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

void log_event(enum log_level level, const char *event, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	size_t n;
	va_list ap;

	if (level < min_level)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = strftime(line, sizeof(line), "ts=%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(line + n, sizeof(line) - n, ".%03ldZ level=%s event=%s",
			      ts.tv_nsec / 1000000, level_names[level], event);
	if (fmt != NULL && *fmt != '\0' && n < sizeof(line) - 2) {
		size_t i;

		line[n++] = ' ';
		va_start(ap, fmt);
		vsnprintf(line + n, sizeof(line) - n, fmt, ap);
		va_end(ap);
		/*
		 * Values can carry client text (a run name from the URL, decoded
		 * from %0A): one event must stay one line.
		 */
		for (i = n; line[i] != '\0'; i++)
			if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
				line[i] = '?';
		n = strlen(line);
	}
	if (n > sizeof(line) - 2)
		n = sizeof(line) - 2;
	line[n++] = '\n';
	/* One write per line keeps lines whole when threads log at once. */
	fwrite(line, 1, n, stderr);
}
