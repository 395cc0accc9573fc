/*
 * cqrs/err.h - error codes and the error carrier shared by libcqrs and plugins.
 *
 * A function that can fail returns 0 or a negative CQRS_E* value. When the
 * caller wants the reason in words it passes a struct cqrs_err, which the
 * callee fills with the code and a message naming what was wrong.
 */
#ifndef CQRS_ERR_H
#define CQRS_ERR_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum cqrs_errcode {
	CQRS_OK = 0,
	/* input refused before it reached anything: bad JSON, bad id, too large */
	CQRS_EINVALID = -1,
	/* expected version did not match, or a concurrent writer won */
	CQRS_ECONFLICT = -2,
	/* stream, key or file does not exist */
	CQRS_ENOTFOUND = -3,
	/* a server (PostgreSQL, RabbitMQ) is unreachable: outcome unknown, retry */
	CQRS_EUNAVAILABLE = -4,
	/* a bug or an unexpected answer from a server */
	CQRS_EINTERNAL = -5,
	CQRS_ENOMEM = -6,
	/* configuration file or value is wrong */
	CQRS_ECONFIG = -7,
	/* operating-system call failed (open, read, socket) */
	CQRS_EIO = -8,
	/* a domain rule refused a command */
	CQRS_EREJECTED = -9,
	/* too large */
	CQRS_ETOOLARGE = -10,
	/* a command id was recorded for another stream or another command */
	CQRS_EIDREUSED = -11,
	/* cqrs-cmdd's [access] policy does not allow this sender this command */
	CQRS_EFORBIDDEN = -12,
};

#define CQRS_ERR_MSG_MAX 512

struct cqrs_err {
	int code;
	char msg[CQRS_ERR_MSG_MAX];
};

/*
 * Fill err (may be NULL) with code and a printf-style message; returns code,
 * so callers write `return cqrs_err_set(err, CQRS_EINVALID, "...")`.
 */
int cqrs_err_set(struct cqrs_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Prefix the message already in err with "prefix: ". Returns err->code. */
int cqrs_err_prefix(struct cqrs_err *err, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* Short stable name of a code: "invalid", "conflict", "unavailable", ... */
const char *cqrs_err_name(int code);

#ifdef __cplusplus
}
#endif
#endif
