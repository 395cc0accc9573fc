/* ctl.c - the verb table and what the verbs share. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "config.h"
#include "ctl.h"

const struct ctl_verb ctl_verbs[] = {
	{ "migrate", ctl_migrate, "migrate",
	  "Applies the schema migrations that the database lacks (safe to run\n"
	  "from several hosts at once). Uses store.conninfo.\n" },
	{ "append", ctl_append,
	  "append STREAM [--expected N|any|no-stream] [--command-id UUID] [FILE|-]",
	  "Appends events read from FILE (or stdin) to STREAM, atomically. The\n"
	  "input is one JSON event or an array of them:\n"
	  "  [{\"type\":\"MoneyDeposited\",\"data\":{\"amount\":5},\"metadata\":{},\"id\":\"uuid\"}]\n"
	  "(metadata and id optional). Prints the outcome as one JSON line.\n"
	  "  --expected N     fail with a conflict unless the stream is at version N\n"
	  "                   (0 or no-stream: the stream must not exist; any: default)\n"
	  "  --command-id ID  idempotency key: a repeat appends nothing and prints\n"
	  "                   the first outcome with \"duplicate\":true\n"
	  "Exit status: 0 appended, 1 refused or failed (message on stderr),\n"
	  "3 conflict.\n" },
	{ "read", ctl_read, "read STREAM [--from VERSION] [--limit N]",
	  "Prints the events of STREAM in version order, one JSON envelope per line.\n" },
	{ "read-all", ctl_read_all, "read-all [--after CHECKPOINT] [--limit N]",
	  "Prints events of all streams in commit-safe order (the order the tracker\n"
	  "publishes), one JSON envelope per line, from just after CHECKPOINT\n"
	  "(XID:POSITION, as printed; default: the beginning). The checkpoint after\n"
	  "the last event printed goes to stderr as \"checkpoint XID:POSITION\".\n" },
	{ NULL, NULL, NULL, NULL },
};

int
ctl_fail(struct ctl *ctl, const char *fmt, ...)
{
	va_list ap;

	fputs("cqrsctl: ", ctl->err);
	va_start(ap, fmt);
	vfprintf(ctl->err, fmt, ap);
	va_end(ap);
	fputc('\n', ctl->err);
	return 1;
}

int
ctl_usage(struct ctl *ctl, const struct ctl_verb *verb)
{
	fprintf(ctl->err, "usage: cqrsctl [-c FILE] %s\n", verb->usage);
	return 2;
}

int
ctl_wants_help(int argc, char **argv)
{
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--") == 0)
			break;
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
			return 1;
	}
	return 0;
}

const char *
ctl_conninfo(struct ctl *ctl)
{
	const char *ci = config_get(ctl->cfg, "store", "conninfo", NULL);

	if (ci == NULL || ci[0] == '\0') {
		ctl_fail(ctl, "store.conninfo is not set (in the config file's [store] "
			      "section or CQRS_STORE_CONNINFO)");
		return NULL;
	}
	return ci;
}
