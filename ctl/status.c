/* status.c - cqrsctl status: where the tracker stands (cqrs.tracker_status). */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <libpq-fe.h>

#include "config.h"
#include "ctl.h"
#include "store.h"

/* Columns of cqrs.tracker_status (sql/002_tracker.sql, sql/005), in order. */
enum {
	C_XID, C_POS, C_AT, C_LAG_EVENTS, C_LAG_SECONDS, C_HELD, C_B_PID, C_B_APP, C_B_XID,
	C_B_SECONDS, C_A_PID, C_A_APP, C_A_CLIENT, C_A_SINCE, C_COUNT
};

static const char sql_status[] =
	"SELECT checkpoint_xid::text, checkpoint_position, "
	"to_char(checkpoint_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), "
	"lag_events, round(lag_seconds::numeric, 3), held_events, blocker_pid, "
	"blocker_application, blocker_xid::text, round(blocker_seconds::numeric, 3), "
	"active_pid, active_application, active_client, "
	"to_char(active_since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
	"FROM cqrs.tracker_status($1)";

static const char *
val(PGresult *res, int col)
{
	return PQgetisnull(res, 0, col) ? NULL : PQgetvalue(res, 0, col);
}

/* Whether a count of cqrs.tracker_status was counted, not estimated: the
 * function counts up to STORE_TRACKER_STATUS_LIMIT (sql/005). */
static bool
counted(const char *n)
{
	return n == NULL || strtoll(n, NULL, 10) <= STORE_TRACKER_STATUS_LIMIT;
}

static struct json_object *
jstr(const char *s)
{
	return s != NULL ? json_object_new_string(s) : NULL;
}

static struct json_object *
jint(const char *s)
{
	return s != NULL ? json_object_new_int64(strtoll(s, NULL, 10)) : NULL;
}

/* A number as PostgreSQL wrote it (round(x, 3)), not re-printed by json-c. */
static struct json_object *
jdouble(const char *s)
{
	return s != NULL ? json_object_new_double_s(strtod(s, NULL), s) : NULL;
}

/*
 * The tracker's own pid and host, from its application_name
 * "cqrs-tracker@HOST:PID"; false for a session that is not a cqrs-tracker.
 */
static bool
parse_app(const char *app, char *host, size_t size, long *pid)
{
	const char *at, *colon;
	char *end;

	if (app == NULL || strncmp(app, "cqrs-tracker@", 13) != 0)
		return false;
	at = app + 13;
	colon = strrchr(at, ':');
	if (colon == NULL)
		return false;
	*pid = strtol(colon + 1, &end, 10);
	if (end == colon + 1 || *end != '\0')
		return false;
	snprintf(host, size, "%.*s", (int)(colon - at), at);
	return true;
}

static void
print_json(struct ctl *ctl, const char *name, PGresult *res)
{
	struct json_object *o = json_object_new_object();
	char host[128], cp[64];
	long pid;

	snprintf(cp, sizeof(cp), "%s:%s", val(res, C_XID), val(res, C_POS));
	json_object_object_add(o, "name", json_object_new_string(name));
	json_object_object_add(o, "checkpoint", json_object_new_string(cp));
	json_object_object_add(o, "xid", jint(val(res, C_XID)));
	json_object_object_add(o, "position", jint(val(res, C_POS)));
	json_object_object_add(o, "checkpoint_at", jstr(val(res, C_AT)));
	json_object_object_add(o, "lag_events", jint(val(res, C_LAG_EVENTS)));
	json_object_object_add(o, "lag_exact",
			       json_object_new_boolean(counted(val(res, C_LAG_EVENTS))));
	json_object_object_add(o, "lag_seconds",
			       jdouble(val(res, C_LAG_SECONDS) ? val(res, C_LAG_SECONDS) : "0"));
	json_object_object_add(o, "held_events", jint(val(res, C_HELD)));
	if (val(res, C_B_XID) != NULL) {
		struct json_object *b = json_object_new_object();
		json_object_object_add(b, "backend_pid", jint(val(res, C_B_PID)));
		json_object_object_add(b, "application", jstr(val(res, C_B_APP)));
		json_object_object_add(b, "xid", jint(val(res, C_B_XID)));
		json_object_object_add(b, "seconds", jdouble(val(res, C_B_SECONDS)));
		json_object_object_add(o, "oldest_transaction", b);
	} else {
		json_object_object_add(o, "oldest_transaction", NULL);
	}
	if (val(res, C_A_PID) != NULL) {
		struct json_object *a = json_object_new_object();
		json_object_object_add(a, "application", jstr(val(res, C_A_APP)));
		if (parse_app(val(res, C_A_APP), host, sizeof(host), &pid)) {
			json_object_object_add(a, "host", json_object_new_string(host));
			json_object_object_add(a, "pid", json_object_new_int64(pid));
		}
		json_object_object_add(a, "backend_pid", jint(val(res, C_A_PID)));
		json_object_object_add(a, "client", jstr(val(res, C_A_CLIENT)));
		json_object_object_add(a, "since", jstr(val(res, C_A_SINCE)));
		json_object_object_add(o, "active", a);
	} else {
		json_object_object_add(o, "active", NULL);
	}
	fprintf(ctl->out, "%s\n", json_object_to_json_string_ext(o,
		JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
	json_object_put(o);
}

static void
print_text(struct ctl *ctl, const char *name, PGresult *res)
{
	const char *app = val(res, C_A_APP), *since;
	char host[128], limit_text[24];
	long pid;

	snprintf(limit_text, sizeof(limit_text), "%d", STORE_TRACKER_STATUS_LIMIT);

	fprintf(ctl->out, "tracker: %s\n", name);
	fprintf(ctl->out, "checkpoint: %s:%s (position %s)", val(res, C_XID), val(res, C_POS),
		val(res, C_POS));
	if (val(res, C_AT) != NULL)
		fprintf(ctl->out, ", written %s", val(res, C_AT));
	else
		fprintf(ctl->out, ", never written");
	fputc('\n', ctl->out);
	if (strcmp(val(res, C_LAG_EVENTS), "0") == 0)
		fprintf(ctl->out, "lag: 0 events\n");
	else if (!counted(val(res, C_LAG_EVENTS)))
		fprintf(ctl->out, "lag: about %s events (more than %d; estimated from positions), "
				  "%s s (age of the oldest unpublished event)\n",
			val(res, C_LAG_EVENTS), STORE_TRACKER_STATUS_LIMIT, val(res, C_LAG_SECONDS));
	else
		fprintf(ctl->out, "lag: %s events, %s s (age of the oldest unpublished event)\n",
			val(res, C_LAG_EVENTS), val(res, C_LAG_SECONDS));
	if (strcmp(val(res, C_HELD), "0") != 0)
		fprintf(ctl->out, "held back: %s%s of them, by a transaction open for %s s "
				  "(backend pid %s, application \"%s\", xid %s)\n",
			counted(val(res, C_HELD)) ? "" : "more than ",
			counted(val(res, C_HELD)) ? val(res, C_HELD) : limit_text,
			val(res, C_B_SECONDS) ? val(res, C_B_SECONDS) : "?",
			val(res, C_B_PID) ? val(res, C_B_PID) : "none: prepared",
			val(res, C_B_APP) ? val(res, C_B_APP) : "", val(res, C_B_XID) ? val(res, C_B_XID) : "?");
	/* another role's session shows no start time (pg_stat_activity) */
	since = val(res, C_A_SINCE) != NULL ? val(res, C_A_SINCE) : "? (not shown to this role)";
	if (val(res, C_A_PID) == NULL)
		fprintf(ctl->out, "active: none\n");
	else if (parse_app(app, host, sizeof(host), &pid))
		fprintf(ctl->out, "active: %s (pid %ld on %s; backend pid %s, client %s, since %s)\n",
			app, pid, host, val(res, C_A_PID), val(res, C_A_CLIENT), since);
	else
		fprintf(ctl->out, "active: application \"%s\" (backend pid %s, client %s, since %s)\n",
			app ? app : "", val(res, C_A_PID), val(res, C_A_CLIENT), since);
}

int
ctl_status(struct ctl *ctl, int argc, char **argv)
{
	static const struct option opts[] = {
		{ "name", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' },
		{ NULL, 0, NULL, 0 },
	};
	const struct ctl_verb *verb = NULL;
	const char *name, *ci, *params[1];
	bool json = false;
	PGconn *pg = NULL;
	PGresult *res = NULL;
	int c, rc = 1;

	for (const struct ctl_verb *v = ctl_verbs; v->name != NULL; v++)
		if (strcmp(v->name, "status") == 0)
			verb = v;
	name = cqrs_config_get(ctl->cfg, "tracker", "name", "tracker");
	optind = 0;		/* glibc: start over, this is a new argv */
	while ((c = getopt_long(argc, argv, "n:j", opts, NULL)) != -1) {
		switch (c) {
		case 'n': name = optarg; break;
		case 'j': json = true; break;
		default: return ctl_usage(ctl, verb);
		}
	}
	if (optind != argc)
		return ctl_usage(ctl, verb);
	if ((ci = ctl_conninfo(ctl)) == NULL)
		return 1;
	pg = PQconnectdb(ci);
	if (PQstatus(pg) != CONNECTION_OK) {
		const char *m = PQerrorMessage(pg);
		rc = ctl_fail(ctl, "status: could not connect to PostgreSQL: %.*s",
			      (int)strcspn(m, "\n"), m);
		goto out;
	}
	params[0] = name;
	res = PQexecParams(pg, sql_status, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1 ||
	    PQnfields(res) != C_COUNT) {
		const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
		if (m == NULL)
			m = PQerrorMessage(pg);
		rc = ctl_fail(ctl, "status: %.*s (is the schema migrated? cqrsctl migrate)",
			      (int)strcspn(m, "\n"), m);
		goto out;
	}
	if (json)
		print_json(ctl, name, res);
	else
		print_text(ctl, name, res);
	rc = 0;
out:
	PQclear(res);
	PQfinish(pg);
	return rc;
}
