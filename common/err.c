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
	char buf[2 * CQRS_ERR_MSG_MAX + 2];
	va_list ap;
	int n;
	size_t len;

	if (err == NULL)
		return CQRS_EINTERNAL;
	memset(buf, 0, sizeof(buf));
	va_start(ap, fmt);
	n = vsnprintf(buf, CQRS_ERR_MSG_MAX, fmt, ap);
	va_end(ap);
	len = n < 0 ? 0 : (size_t)n >= CQRS_ERR_MSG_MAX ? CQRS_ERR_MSG_MAX - 1 : (size_t)n;
	memcpy(buf + len, ": ", 2);
	len += 2;
	memcpy(buf + len, err->msg, strnlen(err->msg, CQRS_ERR_MSG_MAX - 1) + 1);
	/* keep the front: the prefix names the object, the rest the cause */
	memcpy(err->msg, buf, CQRS_ERR_MSG_MAX - 1);
	err->msg[CQRS_ERR_MSG_MAX - 1] = '\0';
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
	case CQRS_EIDREUSED: return "id_reused";
	case CQRS_EFORBIDDEN: return "forbidden";
	}
	return "unknown";
}
