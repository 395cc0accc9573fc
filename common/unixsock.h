/*
 * unixsock.h - a Unix socket's path before bind(): what a process that died
 * left there is removed; anything else stops the caller (cqrs-cmdd's
 * command socket, a daemon's /metrics socket).
 */
#ifndef CQRS_UNIXSOCK_H
#define CQRS_UNIXSOCK_H

#include <stdbool.h>

#include "cqrs/err.h"

/*
 * Nothing at path: 0. A socket file that refuses connections (ECONNREFUSED,
 * what a daemon that died leaves): removed, *removed set, 0. Anything else
 * (a listener, even one with a full backlog; no permission; not a socket)
 * is left in place: CQRS_EIO naming what (the setting, "cmd.socket") and
 * path. The probe connects nonblocking, so a full backlog cannot hang it.
 */
int cqrs_unix_socket_clear(const char *path, const char *what, bool *removed,
			   struct cqrs_err *err) __attribute__((warn_unused_result));

#endif
