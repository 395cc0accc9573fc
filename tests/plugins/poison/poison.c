/*
 * poison.c - a test plugin for cqrs-consumer: event-handler group "poison"
 * on "poison.*" that records every event it handles and misbehaves on
 * demand, as the event's data says:
 *
 *   "fail": PATH     CQRS_HANDLED_FAIL, unless the file PATH exists (the "fix")
 *   "abort": PATH    abort() the process, unless the file PATH exists
 *   "retry": N       CQRS_HANDLED_RETRY the first N times this process sees it
 *   "sleep_ms": N    sleep first
 *   "wait": PATH     create PATH.held (the test sees an event in hand), then
 *                    block until the file PATH exists (a barrier the test
 *                    opens; given up after two minutes)
 *   "send": COMMAND  cqrs_send() COMMAND to the stream's aggregate with data {}
 *                    (retry when it fails): a handler waiting for cqrs-cmdd
 *   "commit": true   COMMIT the consumer's transaction after the record, then
 *                    return ok (a handler that breaks the rules)
 *   "rollback": true ROLLBACK it after the record, then return ok
 *
 * The record, in the consumer's transaction:
 *   poison_applied (seq bigserial, stream, version, event_id, pid, type, data)
 * (type and data as the handler was given them)
 * so a test sees each event's effect once, in order, or not at all. The
 * reset (replays) empties it.
 */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <cqrs/plugin.h>

#define SQL_CREATE                                                                        \
	"CREATE TABLE IF NOT EXISTS poison_applied (seq bigserial PRIMARY KEY, "            \
	"stream text NOT NULL, version int NOT NULL, event_id uuid NOT NULL, pid int NOT NULL, " \
	"type text NOT NULL, data jsonb NOT NULL)"
#define SQL_RECORD                                                                        \
	"INSERT INTO poison_applied (stream, version, event_id, pid, type, data) "           \
	"VALUES ($1, $2, $3, $4, $5, $6)"

static bool table_ready;

/* retries asked so far, per event id (this process) */
static struct {
	char id[40];
	int n;
} retries[4096];

static int
retries_of(const char *id)
{
	for (size_t i = 0; i < sizeof(retries) / sizeof(retries[0]); i++) {
		if (retries[i].id[0] == '\0') {
			snprintf(retries[i].id, sizeof(retries[i].id), "%s", id);
			return i;
		}
		if (strcmp(retries[i].id, id) == 0)
			return (int)i;
	}
	return 0;
}

static const char *
str_field(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v;

	if (json_object_object_get_ex(ev->data, key, &v) && json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

static int
int_field(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v;

	if (json_object_object_get_ex(ev->data, key, &v) && json_object_is_type(v, json_type_int))
		return json_object_get_int(v);
	return 0;
}

static bool
bool_field(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(ev->data, key, &v) &&
	       json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

static int
sql_failed(struct cqrs_event_ctx *ctx, PGconn *pg, PGresult *res, const char *what)
{
	const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

	if (state != NULL && strcmp(state, "42P01") == 0)
		table_ready = false;
	return cqrs_event_fail(ctx, CQRS_HANDLED_RETRY, "poison_applied: %s: %s", what,
			       PQerrorMessage(pg));
}

static int
on_event(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	const char *path;
	char version[24], pid[24];
	const char *data = json_object_to_json_string_ext(ev->data, JSON_C_TO_STRING_PLAIN);
	const char *params[6] = { ev->stream, version, ev->id, pid, ev->type, data };
	PGresult *res;
	int n, rc = CQRS_HANDLED_OK;

	if ((n = int_field(ev, "sleep_ms")) > 0)
		usleep((useconds_t)n * 1000);
	if ((path = str_field(ev, "wait")) != NULL && access(path, F_OK) != 0) {
		char held[4096];
		FILE *f;

		snprintf(held, sizeof(held), "%s.held", path);
		if ((f = fopen(held, "w")) != NULL)
			fclose(f);
		for (int i = 0; i < 12000 && access(path, F_OK) != 0; i++)
			usleep(10 * 1000);
	}
	if ((path = str_field(ev, "send")) != NULL) {
		struct cqrs_err err = { 0 };

		if (cqrs_send(ctx, "poison", path, ev->stream, json_object_new_object(), &err) < 0)
			return cqrs_event_fail(ctx, CQRS_HANDLED_RETRY, "poison: send %s: %s", path,
					       err.msg);
	}
	if ((path = str_field(ev, "abort")) != NULL && access(path, F_OK) != 0) {
		cqrs_log_warn(cqrs_event_log(ctx), "poison: aborting on %s version %lld", ev->stream,
			      (long long)ev->version);
		abort();
	}
	if ((path = str_field(ev, "fail")) != NULL && access(path, F_OK) != 0)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "poison: %s version %lld refused",
				       ev->stream, (long long)ev->version);
	if ((n = int_field(ev, "retry")) > 0) {
		int i = retries_of(ev->id);

		if (retries[i].n < n) {
			retries[i].n++;
			return cqrs_event_fail(ctx, CQRS_HANDLED_RETRY, "poison: retry %d of %d",
					       retries[i].n, n);
		}
	}
	if (!table_ready) {
		res = PQexec(pg, "SELECT pg_advisory_xact_lock(hashtext('poison_applied')); " SQL_CREATE);
		if (PQresultStatus(res) != PGRES_COMMAND_OK)
			rc = sql_failed(ctx, pg, res, "create");
		else
			table_ready = true;
		PQclear(res);
		if (rc != CQRS_HANDLED_OK)
			return rc;
	}
	snprintf(version, sizeof(version), "%lld", (long long)ev->version);
	snprintf(pid, sizeof(pid), "%d", (int)getpid());
	res = PQexecParams(pg, SQL_RECORD, 6, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = sql_failed(ctx, pg, res, "insert");
	PQclear(res);
	if (rc == CQRS_HANDLED_OK && (bool_field(ev, "commit") || bool_field(ev, "rollback")))
		PQclear(PQexec(pg, bool_field(ev, "commit") ? "COMMIT" : "ROLLBACK"));
	return rc;
}

static int
reset(struct cqrs_event_ctx *ctx)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	PGresult *res = PQexec(pg, "SELECT pg_advisory_xact_lock(hashtext('poison_applied')); " SQL_CREATE
			       "; TRUNCATE poison_applied");
	int rc = CQRS_HANDLED_OK;

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = sql_failed(ctx, pg, res, "reset");
	else
		table_ready = true;
	PQclear(res);
	return rc;
}

static int
poison_register(struct cqrs_registry *reg, void **state)
{
	(void)state;
	return cqrs_register_event_handler(reg, "poison", "poison.*", on_event, reset);
}

static const struct cqrs_plugin poison = {
	.abi_version = CQRS_PLUGIN_ABI,
	.struct_size = sizeof(struct cqrs_plugin),
	.name = "poison",
	.register_all = poison_register,
};

CQRS_PLUGIN_EXPORT const struct cqrs_plugin *
cqrs_plugin_entry(void)
{
	return &poison;
}
