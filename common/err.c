/* err.c - the error carrier. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "cqrs/err.h"

int
cqrs_err_set(struct cqrs_err *err, int code, const char *fmt, ...)
{
	va_list ap;

	if (err == NULL)
		return code;
	err->code = code;
	va_start(ap, fmt);
	vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
	va_end(ap);
	return code;
}

int
cqrs_err_prefix(struct cqrs_err *err, const char *fmt, ...)
{
	char prefix[CQRS_ERR_MSG_MAX];
	char old[CQRS_ERR_MSG_MAX];
	va_list ap;

	if (err == NULL)
		return CQRS_EINTERNAL;
	va_start(ap, fmt);
	vsnprintf(prefix, sizeof(prefix), fmt, ap);
	va_end(ap);
	memcpy(old, err->msg, sizeof(old));
	snprintf(err->msg, sizeof(err->msg), "%s: %s", prefix, old);
	return err->code;
}

const char *
cqrs_err_name(int code)
{
	switch (code) {
	case CQRS_OK: return "ok";
	case CQRS_EINVALID: return "invalid";
	case CQRS_ECONFLICT: return "conflict";
	case CQRS_ENOTFOUND: return "not_found";
	case CQRS_EUNAVAILABLE: return "unavailable";
	case CQRS_EINTERNAL: return "internal";
	case CQRS_ENOMEM: return "out_of_memory";
	case CQRS_ECONFIG: return "config";
	case CQRS_EIO: return "io";
	case CQRS_EREJECTED: return "rejected";
	case CQRS_ETOOLARGE: return "too_large";
	}
	return "unknown";
}
