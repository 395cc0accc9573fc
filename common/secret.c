/*
 * secret.c - passwords from files and systemd credentials (secret.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "cqrs/log.h"
#include "secret.h"

/* A password file is one line; anything longer is not one. */
#define SECRET_MAX 4096

char *
cqrs_secret_path(const char *key, const char *value, struct cqrs_err *err)
{
	const char *dir;
	char *path;

	if (value[0] == '/') {
		if ((path = strdup(value)) == NULL)
			cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		return path;
	}
	if (strchr(value, '/') != NULL || strcmp(value, ".") == 0 || strcmp(value, "..") == 0) {
		cqrs_err_set(err, CQRS_ECONFIG, "%s \"%s\": an absolute path, or the name of a "
			     "systemd credential (LoadCredential=)", key, value);
		return NULL;
	}
	dir = getenv("CREDENTIALS_DIRECTORY");
	if (dir == NULL || dir[0] == '\0') {
		cqrs_err_set(err, CQRS_ECONFIG, "%s \"%s\" names a systemd credential, but "
			     "$CREDENTIALS_DIRECTORY is not set (LoadCredential=%s:PATH in the unit, "
			     "or give an absolute path)", key, value, value);
		return NULL;
	}
	if (asprintf(&path, "%s/%s", dir, value) < 0) {
		cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		return NULL;
	}
	return path;
}

/* Warns when the file what ("store.passfile PATH") holds a password (in
 * which: "" or " (KEY)") that others than its owner can read; tail says what
 * to do. */
static void
warn_readable(const char *what, const char *which, mode_t mode, const char *tail)
{
	if ((mode & 077) != 0)
		cqrs_log_warn(NULL, "%s holds a password%s and can be read by %s (mode %04o)%s",
			      what, which, (mode & 007) ? "anyone" : "its group",
			      (unsigned)(mode & 07777), tail);
}

#define ADVICE_FILE ": make it 0600, owned by the daemons' user"

char *
cqrs_secret_read(const char *key, const char *value, struct cqrs_err *err)
{
	char *path = cqrs_secret_path(key, value, err), *buf = NULL, what[600];
	struct stat st;
	ssize_t n;
	size_t len = 0;
	int fd;

	if (path == NULL)
		return NULL;
	if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
		cqrs_err_set(err, CQRS_ECONFIG, "%s: cannot read %s: %s", key, path, strerror(errno));
		goto out;
	}
	snprintf(what, sizeof(what), "%s %s", key, path);
	if (fstat(fd, &st) == 0)
		warn_readable(what, "", st.st_mode, ADVICE_FILE);
	if ((buf = malloc(SECRET_MAX + 1)) == NULL) {
		cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	while (len < SECRET_MAX && (n = read(fd, buf + len, SECRET_MAX - len)) > 0)
		len += (size_t)n;
	buf[len] = '\0';
	len = strcspn(buf, "\r\n");
	if (len == 0 || len >= SECRET_MAX) {
		cqrs_err_set(err, CQRS_ECONFIG, "%s: %s %s", key, path,
			     len == 0 ? "is empty" : "is no password: its first line is too long");
		memset(buf, 0, SECRET_MAX + 1);
		free(buf);
		buf = NULL;
		goto out;
	}
	memset(buf + len, 0, SECRET_MAX + 1 - len);
out:
	if (fd >= 0)
		close(fd);
	free(path);
	return buf;
}

/* Whether a URL (scheme://user:password@host...) carries a password. */
static bool
url_has_password(const char *s)
{
	const char *scheme = s != NULL ? strstr(s, "://") : NULL;
	const char *at, *colon;

	if (scheme == NULL)
		return false;
	at = strchr(scheme + 3, '@');
	colon = strchr(scheme + 3, ':');
	return at != NULL && colon != NULL && colon < at;
}

/* Whether a conninfo (key=value or URI) or a broker URL holds a password. */
static bool
has_password(const char *conninfo, const char *url)
{
	return (conninfo != NULL && (strstr(conninfo, "password=") != NULL ||
				     strstr(conninfo, "password =") != NULL ||
				     url_has_password(conninfo))) ||
	       url_has_password(url);
}

int
cqrs_secret_setup(const struct config *cfg, struct cqrs_err *err)
{
	const char *passfile = cqrs_config_get(cfg, "store", "passfile", NULL);
	const char *path = cqrs_config_path(cfg);
	struct stat st;

	if (passfile != NULL && passfile[0] != '\0') {
		char *p = cqrs_secret_path("store.passfile", passfile, err);

		if (p == NULL)
			return err->code;
		if (access(p, R_OK) != 0) {
			int rc = cqrs_err_set(err, CQRS_ECONFIG, "store.passfile: cannot read %s: %s",
					      p, strerror(errno));
			free(p);
			return rc;
		}
		/* libpq ignores a password file others may read; say so first */
		if (stat(p, &st) == 0) {
			char what[600];

			snprintf(what, sizeof(what), "store.passfile %s", p);
			warn_readable(what, "", st.st_mode, ADVICE_FILE);
		}
		setenv("PGPASSFILE", p, 1);
		free(p);
	}
	if (path != NULL && stat(path, &st) == 0 &&
	    has_password(cqrs_config_get(cfg, "store", "conninfo", NULL),
			 cqrs_config_get(cfg, "broker", "url", NULL)))
		warn_readable(path, " (store.conninfo or broker.url)", st.st_mode,
			      ", also by those who only send commands if they are in its group: "
			      "move it to store.passfile or broker.password_file");
	return 0;
}
