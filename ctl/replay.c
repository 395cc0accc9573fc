/*
 * replay.c - cqrsctl replay NAME: rebuild a consumer's read models from the
 * store.
 *
 * The rebuild runs the consumer's own handlers, so it needs its plugins,
 * its configuration and its bookkeeping: it is `cqrs-consumer -n NAME
 * --replay --once`, run from here (from the directory of this cqrsctl, else
 * from PATH) and waited for. That process resets the handlers, feeds them
 * every event of the store in commit-safe order and exits once caught up; a
 * consumer daemon of the same name that runs meanwhile waits on the
 * consumer's lock and then goes on from its queue, without a gap or a double
 * (consumer/catchup.c).
 */
#include <errno.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"

extern char **environ;

/* cqrs-consumer beside this program, or NULL to search PATH. */
static char *
sibling(const char *name)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash, *path;

	if (n <= 0)
		return NULL;
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (slash == NULL)
		return NULL;
	*slash = '\0';
	if (asprintf(&path, "%s/%s", self, name) < 0)
		return NULL;
	if (access(path, X_OK) != 0) {
		free(path);
		return NULL;
	}
	return path;
}

int
ctl_replay(struct ctl *ctl, int argc, char **argv)
{
	const struct ctl_verb *verb = NULL;
	char *path = NULL;
	char *args[9];
	int n = 0, status, rc;
	pid_t pid;

	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		if (strcmp(v->name, "replay") == 0)
			verb = v;
	if (argc != 2 || argv[1][0] == '-')
		return ctl_usage(ctl, verb);
	path = sibling("cqrs-consumer");
	args[n++] = path != NULL ? path : "cqrs-consumer";
	args[n++] = "-n";
	args[n++] = argv[1];
	if (ctl->config_path != NULL) {
		args[n++] = "-c";
		args[n++] = (char *)ctl->config_path;
	}
	args[n++] = "--replay";
	args[n++] = "--once";
	args[n] = NULL;
	fflush(ctl->out);
	fflush(ctl->err);
	rc = path != NULL ? posix_spawn(&pid, path, NULL, NULL, args, environ)
			  : posix_spawnp(&pid, "cqrs-consumer", NULL, NULL, args, environ);
	free(path);
	if (rc != 0)
		return ctl_fail(ctl, "cannot run cqrs-consumer: %s", strerror(rc));
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return ctl_fail(ctl, "waiting for cqrs-consumer: %s", strerror(errno));
	}
	if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
		fprintf(ctl->out, "replayed consumer \"%s\": caught up with the store\n", argv[1]);
		return 0;
	}
	if (WIFEXITED(status))
		return ctl_fail(ctl, "replay of consumer \"%s\" failed (cqrs-consumer exited with %d)",
				argv[1], WEXITSTATUS(status));
	return ctl_fail(ctl, "replay of consumer \"%s\" failed (cqrs-consumer killed by signal %d)",
			argv[1], WTERMSIG(status));
}
