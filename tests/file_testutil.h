/*
 * file_testutil: a temporary file holding given text, for the Check
 * programs of the file readers (config, token file).
 */
#ifndef BNSTAT_FILE_TESTUTIL_H
#define BNSTAT_FILE_TESTUTIL_H

#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Write bytes[0..len) (which may hold NUL bytes) to a new
 * /tmp/<name>.XXXXXX; its path goes to path[0..size).
 */
static inline void tu_write_temp_n(char *path, size_t size, const char *name, const char *bytes,
				   size_t len)
{
	int fd;
	FILE *f;

	snprintf(path, size, "/tmp/%s.XXXXXX", name);
	fd = mkstemp(path);
	ck_assert_int_ge(fd, 0);
	f = fdopen(fd, "w");
	ck_assert_ptr_nonnull(f);
	ck_assert_uint_eq(fwrite(bytes, 1, len, f), len);
	fclose(f);
}

/* Write text to a new /tmp/<name>.XXXXXX; its path goes to path[0..size). */
static inline void tu_write_temp(char *path, size_t size, const char *name, const char *text)
{
	tu_write_temp_n(path, size, name, text, strlen(text));
}

#endif
