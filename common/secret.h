/*
 * secret.h - passwords kept apart from cqrs.conf, which the daemons' group
 * reads: in files only the daemons' user can read, named by the config
 * (absolute paths), or systemd credentials (a bare name is looked up in
 * $CREDENTIALS_DIRECTORY: LoadCredential=NAME:PATH in the unit).
 *
 *   [store]  passfile = /etc/cqrs/pgpass       libpq's password file (PGPASSFILE)
 *   [broker] password_file = broker-password   the broker user's password
 *
 * A file holding a password that anyone but its owner may read gets a
 * warning naming it; so does cqrs.conf when it holds a password itself.
 */
#ifndef CQRS_SECRET_H
#define CQRS_SECRET_H

#include <stddef.h>

#include "cqrs/err.h"

struct config;

/* The path a passfile or password_file setting names (a bare name: in
 * $CREDENTIALS_DIRECTORY); malloc'd, or NULL with err set. key names the
 * setting in messages ("broker.password_file"). */
char *cqrs_secret_path(const char *key, const char *value, struct cqrs_err *err);

/* Reads the password of the file key names: its first line, without the
 * line end (malloc'd; the caller wipes and frees it). */
char *cqrs_secret_read(const char *key, const char *value, struct cqrs_err *err);

/* The start of a daemon: [store] passfile becomes PGPASSFILE; cqrs.conf
 * holding a password where others read it is warned about. */
int cqrs_secret_setup(const struct config *cfg, struct cqrs_err *err)
	__attribute__((warn_unused_result));

#endif
