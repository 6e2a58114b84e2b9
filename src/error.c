/* error: filling in struct bn_error (see include/bnstat/error.h). */
#include "bnstat/error.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

int bn_error_set(struct bn_error *err, int status, const char *code, const char *path,
		 const char *fmt, ...)
{
	va_list ap;

	if (err != NULL) {
		err->status = status;
		snprintf(err->code, sizeof(err->code), "%s", code);
		snprintf(err->path, sizeof(err->path), "%s", path ? path : "");
		va_start(ap, fmt);
		vsnprintf(err->message, sizeof(err->message), fmt, ap);
		va_end(ap);
		err->nonfinite.set = false;
	}
	return (status >= 400 && status < 500) ? -EINVAL : -EIO;
}

void bn_error_clear(struct bn_error *err)
{
	if (err != NULL)
		memset(err, 0, sizeof(*err));
}
