/*
 * unixsock.c - clearing a stale Unix socket file (unixsock.h).
 */
#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "unixsock.h"

int
cqrs_unix_socket_clear(const char *path, const char *what, bool *removed, struct cqrs_err *err)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	struct stat st;
	int fd, e;

	*removed = false;
	if (strlen(path) >= sizeof(sun.sun_path))
		return cqrs_err_set(err, CQRS_ECONFIG, "%s \"%s\" is too long (max %zu bytes)", what,
				    path, sizeof(sun.sun_path) - 1);
	if (lstat(path, &st) != 0)
		return 0;
	if (!S_ISSOCK(st.st_mode))
		return cqrs_err_set(err, CQRS_EIO, "%s \"%s\" exists and is not a socket; "
				    "not removing it", what, path);
	memcpy(sun.sun_path, path, strlen(path) + 1);
	/* nonblocking: a listener with a full backlog says EAGAIN at once */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return cqrs_err_set(err, CQRS_EIO, "socket: %s", strerror(errno));
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == 0) {
		close(fd);
		return cqrs_err_set(err, CQRS_EIO, "another daemon is listening on \"%s\"", path);
	}
	e = errno;
	close(fd);
	if (e == ENOENT)
		return 0;
	if (e != ECONNREFUSED)
		return cqrs_err_set(err, CQRS_EIO, "%s \"%s\" is there but cannot be checked: "
				    "connect: %s; not removing it", what, path, strerror(e));
	if (unlink(path) != 0)
		return cqrs_err_set(err, CQRS_EIO, "cannot remove stale socket \"%s\": %s", path,
				    strerror(errno));
	*removed = true;
	return 0;
}
