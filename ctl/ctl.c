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
	{ "send", ctl_send,
	  "send COMMAND AGGREGATE_ID [JSON] [--expected N] [--id UUID] [--metadata JSON] | send -",
	  "Sends one command to cqrs-cmdd and prints its answer line, e.g.\n"
	  "  cqrsctl send account.deposit 42 '{\"amount\":100}' --expected 3\n"
	  "JSON is the command's data (default {}).\n"
	  "  --expected N      answer conflict unless the stream is at version N\n"
	  "                    (0: the stream must not exist yet)\n"
	  "  --id UUID         command id and idempotency key: a repeat appends\n"
	  "                    nothing and answers the first outcome (\"duplicate\":true)\n"
	  "  --metadata JSON   object copied into every event the command causes\n"
	  "`send -` reads request lines from stdin (the protocol's JSON objects,\n"
	  "one a line), pipelines them and prints the answers in order.\n"
	  "  --socket PATH     the daemon's socket (default: cmd.socket, else\n"
	  "                    /run/cqrs/cmd.sock)\n"
	  "  --timeout S       give up after S seconds without progress (default 60)\n"
	  "Exit status: 0 every answer ok, 1 any refused or the connection failed\n"
	  "(an unanswered command's outcome is unknown: resend it with the same id),\n"
	  "2 usage.\n" },
	{ "status", ctl_status, "status [--name NAME] [--json]",
	  "Shows where the tracker stands: its checkpoint (XID:POSITION and the\n"
	  "position), its lag in events (committed, not yet published) and in\n"
	  "seconds (age of the oldest of them), how many of them an open transaction\n"
	  "holds back and since when, and which cqrs-tracker is active (the session\n"
	  "holding its lock: host and pid). Uses store.conninfo.\n"
	  "  --name NAME  the tracker's name (default: tracker.name, else \"tracker\")\n"
	  "  --json       one JSON object instead of text\n" },
	{ "replay", ctl_replay, "replay NAME",
	  "Rebuilds the read models of consumer NAME from the store: runs\n"
	  "`cqrs-consumer -n NAME --replay --once` (found beside cqrsctl, else in\n"
	  "PATH) with the same config file, which calls each handler's reset, feeds\n"
	  "every event of the store to the handlers in commit-safe order and exits\n"
	  "once caught up. A cqrs-consumer of that name that runs meanwhile waits,\n"
	  "then goes on from its queue without a gap or a double.\n"
	  "Exit status: 0 caught up, 1 failed (the consumer's log says why).\n" },
	{ "dead", ctl_dead, "dead NAME [--json] [--retry ID | --all]",
	  "Lists the events that consumer NAME dead-lettered (queue QUEUE.dead, QUEUE\n"
	  "being consumer.NAME.queue, default cqrs.NAME), with why: the handler's\n"
	  "reason, or the queue's delivery limit for an event the consumer kept\n"
	  "dying on. Uses broker.url.\n"
	  "  --json      one JSON object a line: id, stream, version, position, type,\n"
	  "              reason, failed_at, deaths\n"
	  "  --retry ID  put the dead letter of event ID back into the consumer's queue\n"
	  "  --all       put them all back\n"
	  "The consumer handles what is put back like any delivery: once, in stream\n"
	  "order (an event already handled since is a duplicate). A letter leaves the\n"
	  "dead queue only once the consumer's queue holds it; a queue that is not\n"
	  "there is an error naming it (exit status 1), and the letters stay dead.\n" },
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
	const char *ci = cqrs_config_get(ctl->cfg, "store", "conninfo", NULL);

	if (ci == NULL || ci[0] == '\0') {
		ctl_fail(ctl, "store.conninfo is not set (in the config file's [store] "
			      "section or CQRS_STORE_CONNINFO)");
		return NULL;
	}
	return ci;
}
