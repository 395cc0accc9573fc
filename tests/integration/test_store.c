/* test_store.c - the event store against a real PostgreSQL. */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <json-c/json.h>

#include "envelope.h"
#include "fixture.h"
#include "store.h"
#include "uuid.h"

static struct store *
open_store(const char *conninfo)
{
	struct store *st = NULL;
	struct cqrs_err err = { 0 };

	if (cqrs_store_connect(conninfo, &st, &err) < 0)
		ck_abort_msg("connect: %s", err.msg);
	return st;
}

static struct store *
fresh_store(void)
{
	char *ci = fixture_db_new(true);
	struct store *st = open_store(ci);
	free(ci);
	return st;
}

static int
append1(struct store *st, const char *stream, int64_t expected, const char *type,
	const char *data, const char *cmd, struct store_append_result *r, struct cqrs_err *err)
{
	struct store_event_in ev = { .type = type, .data = data };
	return cqrs_store_append(st, stream, expected, &ev, 1, cmd, r, err);
}

START_TEST(append_and_read_back)
{
	struct store *st = fresh_store();
	struct cqrs_err err = { 0 };
	struct store_append_result r;
	struct store_events evs;
	struct store_event_in in[3] = {
		{ .type = "AccountOpened", .data = "{\"owner\":\"Ana \\u00e9\"}",
		  .metadata = "{\"correlation_id\":\"c1\"}" },
		{ .type = "MoneyDeposited", .data = "{\"amount\":9007199254740993}" },
		{ .type = "MoneyDeposited", .data = "{\"amount\":5,\"note\":\"x\\\"y\"}" },
	};
	char id0[UUID_STR_LEN];

	cqrs_uuid_v4(id0);
	in[0].id = id0;
	ck_assert_int_eq(cqrs_store_append(st, "account-1", STORE_ANY, in, 3, NULL, &r, &err), 0);
	ck_assert(!r.duplicate);
	ck_assert_int_eq(r.n, 3);
	ck_assert_int_eq(r.version, 3);
	ck_assert_str_eq(r.events[0].id, id0);
	ck_assert_int_eq(r.events[2].version, 3);
	ck_assert_str_eq(r.events[1].type, "MoneyDeposited");
	ck_assert(r.events[0].position < r.events[1].position);
	cqrs_store_append_result_clear(&r);

	ck_assert_int_eq(cqrs_store_read_stream(st, "account-1", 1, 100, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 3);
	ck_assert_str_eq(evs.ev[0]->id, id0);
	ck_assert_str_eq(evs.ev[0]->stream, "account-1");
	ck_assert_str_eq(evs.ev[0]->type, "AccountOpened");
	ck_assert_str_eq(json_object_get_string(json_object_object_get(evs.ev[0]->data, "owner")),
			 "Ana \xc3\xa9");
	ck_assert_str_eq(json_object_get_string(json_object_object_get(evs.ev[0]->metadata,
								       "correlation_id")), "c1");
	ck_assert_int_eq(json_object_get_int64(json_object_object_get(evs.ev[1]->data, "amount")),
			 9007199254740993LL);
	ck_assert_str_eq(json_object_get_string(json_object_object_get(evs.ev[2]->data, "note")),
			 "x\"y");
	for (size_t i = 0; i < 3; i++)
		ck_assert_int_eq(evs.ev[i]->version, (int64_t)i + 1);
	ck_assert_int_eq(strlen(evs.ev[0]->recorded_at), 27);
	ck_assert(evs.ev[0]->recorded_at[26] == 'Z');
	/* the envelope of a stored event validates */
	ck_assert_int_eq(cqrs_envelope_validate(evs.ev[1], &err), 0);
	cqrs_store_events_clear(&evs);

	/* from_version and limit */
	ck_assert_int_eq(cqrs_store_read_stream(st, "account-1", 2, 1, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 1);
	ck_assert_int_eq(evs.ev[0]->version, 2);
	cqrs_store_events_clear(&evs);
	/* an unknown stream is empty, not an error */
	ck_assert_int_eq(cqrs_store_read_stream(st, "account-none", 1, 10, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 0);
	cqrs_store_free(st);
}
END_TEST

START_TEST(expected_version_cases)
{
	struct store *st = fresh_store();
	struct cqrs_err err = { 0 };
	struct store_append_result r;

	/* exact version on a stream that does not exist */
	ck_assert_int_eq(append1(st, "a-1", 2, "E", "{}", NULL, &r, &err), CQRS_ECONFLICT);
	ck_assert_int_eq(r.version, 0);
	ck_assert_ptr_nonnull(strstr(err.msg, "expected 2"));
	/* must-not-exist on a new stream */
	ck_assert_int_eq(append1(st, "a-1", STORE_NO_STREAM, "E", "{}", NULL, &r, &err), 0);
	ck_assert_int_eq(r.version, 1);
	cqrs_store_append_result_clear(&r);
	/* must-not-exist on an existing stream */
	ck_assert_int_eq(append1(st, "a-1", STORE_NO_STREAM, "E", "{}", NULL, &r, &err),
			 CQRS_ECONFLICT);
	ck_assert_int_eq(r.version, 1);
	ck_assert_ptr_nonnull(strstr(err.msg, "a-1"));
	/* exact, right */
	ck_assert_int_eq(append1(st, "a-1", 1, "E", "{}", NULL, &r, &err), 0);
	ck_assert_int_eq(r.version, 2);
	cqrs_store_append_result_clear(&r);
	/* exact, stale */
	ck_assert_int_eq(append1(st, "a-1", 1, "E", "{}", NULL, &r, &err), CQRS_ECONFLICT);
	ck_assert_int_eq(r.version, 2);
	/* exact, ahead */
	ck_assert_int_eq(append1(st, "a-1", 7, "E", "{}", NULL, &r, &err), CQRS_ECONFLICT);
	/* any */
	ck_assert_int_eq(append1(st, "a-1", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	ck_assert_int_eq(r.version, 3);
	cqrs_store_append_result_clear(&r);
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st),
					   "SELECT count(*) FROM cqrs.events WHERE stream = 'a-1'"), 3);
	cqrs_store_free(st);
}
END_TEST

START_TEST(duplicate_command_id)
{
	struct store *st = fresh_store();
	struct cqrs_err err = { 0 };
	struct store_append_result r1, r2;
	struct store_event_in in[2] = { { .type = "A", .data = "{\"n\":1}" },
					{ .type = "B", .data = "{\"n\":2}" } };
	char cmd[UUID_STR_LEN];

	cqrs_uuid_v4(cmd);
	ck_assert_int_eq(append1(st, "s-1", STORE_ANY, "X", "{}", NULL, &r1, &err), 0);
	cqrs_store_append_result_clear(&r1);
	ck_assert_int_eq(cqrs_store_append(st, "s-1", 1, in, 2, cmd, &r1, &err), 0);
	ck_assert(!r1.duplicate);
	/* same command again, even with a now-stale expected version */
	ck_assert_int_eq(cqrs_store_append(st, "s-1", 1, in, 2, cmd, &r2, &err), 0);
	ck_assert(r2.duplicate);
	ck_assert_int_eq(r2.n, 2);
	ck_assert_int_eq(r2.version, 3);
	for (size_t i = 0; i < 2; i++) {
		ck_assert_str_eq(r1.events[i].id, r2.events[i].id);
		ck_assert_int_eq(r1.events[i].position, r2.events[i].position);
		ck_assert_int_eq(r1.events[i].version, r2.events[i].version);
	}
	cqrs_store_append_result_clear(&r1);
	cqrs_store_append_result_clear(&r2);
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st), "SELECT count(*) FROM cqrs.events"), 3);
	cqrs_store_free(st);
}
END_TEST

START_TEST(failed_append_leaves_nothing)
{
	struct store *st = fresh_store();
	struct cqrs_err err = { 0 };
	struct store_append_result r;
	char used[UUID_STR_LEN], cmd[UUID_STR_LEN];
	struct store_event_in first = { .id = used, .type = "A", .data = "{}" };
	struct store_event_in in[3] = { { .type = "B", .data = "{}" },
					{ .type = "C", .data = "{}" },
					{ .id = used, .type = "D", .data = "{}" } };

	cqrs_uuid_v4(used);
	cqrs_uuid_v4(cmd);
	ck_assert_int_eq(cqrs_store_append(st, "t-1", STORE_ANY, &first, 1, NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	/* the third event reuses an event id: the server refuses the whole append */
	ck_assert_int_eq(cqrs_store_append(st, "t-1", STORE_ANY, in, 3, cmd, &r, &err), CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "t-1"));
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st), "SELECT count(*) FROM cqrs.events"), 1);
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st), "SELECT count(*) FROM cqrs.commands"), 0);
	/* and the stream goes on at version 2 */
	ck_assert_int_eq(append1(st, "t-1", 1, "E", "{}", NULL, &r, &err), 0);
	ck_assert_int_eq(r.version, 2);
	cqrs_store_append_result_clear(&r);
	cqrs_store_free(st);
}
END_TEST

START_TEST(bad_input_refused_before_the_database)
{
	struct store_append_req req;
	struct cqrs_err err = { 0 };
	char *big;
	size_t bigsz = CQRS_EVENT_MAX_BYTES + 64;
	struct store_event_in ev = { .type = "E", .data = "{}" };

	/* cqrs_store_append_prepare needs no connection: these never reach a server */
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "stream"));
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, "not-a-uuid", NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "command id"));
	ev.id = "1234";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "not a UUID"));
	ev.id = NULL;
	ev.data = "{\"a\":";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "not valid JSON"));
	ev.data = "{\"a\":1} x";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ev.data = "[1,2]";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "not a JSON object"));
	ev.data = "{}";
	ev.metadata = "7";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "metadata"));
	ev.metadata = NULL;
	ev.type = "";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "type"));
	ev.type = "E";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", -5, &ev, 1, NULL, NULL, &err), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev,
					      CQRS_APPEND_MAX_EVENTS + 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	/* oversized */
	big = malloc(bigsz);
	ck_assert_ptr_nonnull(big);
	memset(big, 'a', bigsz);
	memcpy(big, "{\"s\":\"", 6);
	memcpy(big + bigsz - 3, "\"}", 3);
	ev.data = big;
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", STORE_ANY, &ev, 1, NULL, NULL, &err),
			 CQRS_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "over the limit"));
	free(big);
	/* and a good one builds the parameters */
	ev.data = "{\"x\":1}";
	ck_assert_int_eq(cqrs_store_append_prepare(&req, "s-1", 4, &ev, 1, NULL, NULL, &err), 0);
	ck_assert_str_eq(req.values[1], "4");
	ck_assert_ptr_null(req.values[2]);
	ck_assert_ptr_nonnull(strstr(req.values[3], "\"x\":1"));
	cqrs_store_append_req_clear(&req);
}
END_TEST

START_TEST(events_are_append_only)
{
	struct store *st = fresh_store();
	struct cqrs_err err = { 0 };
	struct store_append_result r;
	PGresult *res;

	ck_assert_int_eq(append1(st, "u-1", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	res = PQexec(cqrs_store_pg(st), "UPDATE cqrs.events SET type = 'F'");
	ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
	ck_assert_ptr_nonnull(strstr(PQresultErrorMessage(res), "append-only"));
	PQclear(res);
	res = PQexec(cqrs_store_pg(st), "DELETE FROM cqrs.events");
	ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
	PQclear(res);
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st),
					   "SELECT count(*) FROM cqrs.events WHERE type = 'E'"), 1);
	cqrs_store_free(st);
}
END_TEST

START_TEST(lost_connection_is_unavailable)
{
	char *ci = fixture_db_new(true);
	struct store *st = open_store(ci);
	struct cqrs_err err = { 0 };
	struct store_append_result r;
	PGconn *killer = fixture_connect(ci);
	char sql[128];

	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%d)", PQbackendPID(cqrs_store_pg(st)));
	fixture_exec(killer, sql);
	ck_assert_int_eq(append1(st, "v-1", STORE_ANY, "E", "{}", NULL, &r, &err),
			 CQRS_EUNAVAILABLE);
	ck_assert_int_eq(cqrs_store_reset(st, &err), 0);
	ck_assert_int_eq(append1(st, "v-1", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	PQfinish(killer);
	cqrs_store_free(st);
	free(ci);
}
END_TEST

START_TEST(migrations_concurrent_and_idempotent)
{
	char *ci = fixture_db_new(false);
	pid_t kids[4];
	struct store *st;
	struct cqrs_err err = { 0 };
	int applied = -1;

	for (int i = 0; i < 4; i++) {
		kids[i] = fork();
		ck_assert_int_ge(kids[i], 0);
		if (kids[i] == 0) {
			struct store *s = NULL;
			struct cqrs_err e = { 0 };
			int rc = cqrs_store_connect(ci, &s, &e);
			if (rc == 0)
				rc = cqrs_store_migrate(s, NULL, &e);
			if (rc != 0)
				fprintf(stderr, "migrate %d: %s\n", i, e.msg);
			cqrs_store_free(s);
			_exit(rc == 0 ? 0 : 1);
		}
	}
	for (int i = 0; i < 4; i++) {
		int status;
		ck_assert_int_eq(waitpid(kids[i], &status, 0), kids[i]);
		ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	st = open_store(ci);
	ck_assert_int_eq(cqrs_store_migrate(st, &applied, &err), 0);
	ck_assert_int_eq(applied, 0);
	ck_assert_int_eq(fixture_query_int(cqrs_store_pg(st),
					   "SELECT count(*) - count(DISTINCT version) FROM cqrs.migrations"), 0);
	ck_assert_int_ge(fixture_query_int(cqrs_store_pg(st), "SELECT count(*) FROM cqrs.migrations"), 1);
	cqrs_store_free(st);
	free(ci);
}
END_TEST

/* ---- concurrency ------------------------------------------------------- */

#define WRITERS 8
#define PER_WRITER 60

struct writer {
	const char *conninfo;
	int n;
	int exact;		/* use exact expected versions and retry conflicts */
	char ids[PER_WRITER][UUID_STR_LEN];
	int conflicts;
	int failed;
};

static void *
one_stream_writer(void *arg)
{
	struct writer *w = arg;
	struct store *st = NULL;
	struct cqrs_err err = { 0 };

	if (cqrs_store_connect(w->conninfo, &st, &err) < 0) {
		w->failed = 1;
		return NULL;
	}
	for (int i = 0; i < w->n; i++) {
		struct store_event_in ev = { .id = w->ids[i], .type = "Tick", .data = "{}" };
		struct store_append_result r;
		for (;;) {
			int64_t expected = STORE_ANY;
			int rc;
			if (w->exact) {
				PGresult *res = PQexec(cqrs_store_pg(st),
					"SELECT coalesce(max(version),0) FROM cqrs.events WHERE stream='one-1'");
				expected = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
				PQclear(res);
			}
			rc = cqrs_store_append(st, "one-1", expected, &ev, 1, NULL, &r, &err);
			cqrs_store_append_result_clear(&r);
			if (rc == 0)
				break;
			if (rc != CQRS_ECONFLICT) {
				w->failed = 1;
				goto out;
			}
			w->conflicts++;
		}
	}
out:
	cqrs_store_free(st);
	return NULL;
}

START_TEST(concurrent_writers_one_stream)
{
	char *ci = fixture_db_new(true);
	struct writer *ws = calloc(WRITERS, sizeof(*ws));
	pthread_t th[WRITERS];
	PGconn *pg;
	int conflicts = 0;

	for (int i = 0; i < WRITERS; i++) {
		ws[i].conninfo = ci;
		ws[i].n = PER_WRITER;
		ws[i].exact = i % 2;
		for (int j = 0; j < PER_WRITER; j++)
			cqrs_uuid_v4(ws[i].ids[j]);
		ck_assert_int_eq(pthread_create(&th[i], NULL, one_stream_writer, &ws[i]), 0);
	}
	for (int i = 0; i < WRITERS; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(ws[i].failed, 0);
		conflicts += ws[i].conflicts;
	}
	pg = fixture_connect(ci);
	/* every version 1..N written exactly once, and every event is there */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events"),
			 WRITERS * PER_WRITER);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(DISTINCT version) FROM cqrs.events "
					   "WHERE version BETWEEN 1 AND 480"), WRITERS * PER_WRITER);
	for (int i = 0; i < WRITERS; i++) {
		for (int j = 0; j < PER_WRITER; j += 7) {
			char sql[128];
			snprintf(sql, sizeof(sql), "SELECT count(*) FROM cqrs.events WHERE id='%s'",
				 ws[i].ids[j]);
			ck_assert_int_eq(fixture_query_int(pg, sql), 1);
		}
	}
	printf("concurrent_writers_one_stream: %d conflicts retried\n", conflicts);
	PQfinish(pg);
	free(ws);
	free(ci);
}
END_TEST

/* ---- the batch append (group commit) ------------------------------------------------ */

/* One row of a batch's answer for command n (1-based), with the status. */
static int
batch_rows(PGresult *res, int n, const char *status)
{
	int count = 0;

	for (int r = 0; r < PQntuples(res); r++)
		if (atoi(PQgetvalue(res, r, 0)) == n && strcmp(PQgetvalue(res, r, 1), status) == 0)
			count++;
	return count;
}

/*
 * One batch, each command with its own outcome: two ok (one on a new
 * stream, one with two events), a stale expected version, a duplicate id,
 * an id recorded for another stream, a command with no events and an id,
 * and two events the store refuses (data not an object; an event id that
 * exists). The refused ones write nothing; the others all that they should,
 * in one transaction.
 */
START_TEST(batch_append_outcomes)
{
	char *ci = fixture_db_new(true);
	PGconn *pg = fixture_connect(ci);
	const char *dup = "00000000-0000-4000-8000-0000000000d1";
	const char *batch =
		"[{\"stream\":\"b-1\",\"expected\":0,\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000001\","
		"\"type\":\"A\",\"data\":{\"k\":1}}]},"
		"{\"stream\":\"b-2\",\"id\":\"20000000-0000-4000-8000-000000000002\",\"command\":\"c\","
		"\"metadata\":{\"m\":2},\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000002\",\"type\":\"A\",\"data\":{}},"
		"{\"id\":\"10000000-0000-4000-8000-000000000003\",\"type\":\"B\",\"data\":{}}]},"
		"{\"stream\":\"b-old\",\"expected\":5,\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000004\","
		"\"type\":\"A\",\"data\":{}}]},"
		"{\"stream\":\"b-old\x01\",\"events\":[]},"
		"{\"stream\":\"b-dup\",\"id\":\"00000000-0000-4000-8000-0000000000d1\",\"command\":\"c\","
		"\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000005\",\"type\":\"A\",\"data\":{}}]},"
		"{\"stream\":\"b-reuse\",\"id\":\"00000000-0000-4000-8000-0000000000d2\",\"command\":\"c\","
		"\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000006\",\"type\":\"A\",\"data\":{}}]},"
		"{\"stream\":\"b-none\",\"id\":\"20000000-0000-4000-8000-000000000007\",\"events\":[]},"
		"{\"stream\":\"b-array\",\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000008\","
		"\"type\":\"A\",\"data\":[1]}]},"
		"{\"stream\":\"b-taken\",\"events\":[{\"id\":\"10000000-0000-4000-8000-000000000009\","
		"\"type\":\"A\",\"data\":{}},{\"id\":\"00000000-0000-4000-8000-0000000000e1\",\"type\":\"A\","
		"\"data\":{}}]}]";
	PGresult *res;

	(void)dup;
	/* what is there before: b-old at version 1, b-dup written by the id, an event id in use */
	fixture_exec(pg, "SELECT count(*) FROM cqrs.append('b-old', 0, NULL, "
		     "'[{\"id\":\"00000000-0000-4000-8000-0000000000e1\",\"type\":\"A\",\"data\":{}}]')");
	fixture_exec(pg, "SELECT count(*) FROM cqrs.append('b-dup', 0, "
		     "'00000000-0000-4000-8000-0000000000d1', "
		     "'[{\"id\":\"00000000-0000-4000-8000-0000000000e2\",\"type\":\"A\",\"data\":{}}]', 'c')");
	fixture_exec(pg, "SELECT count(*) FROM cqrs.append('b-other', 0, "
		     "'00000000-0000-4000-8000-0000000000d2', "
		     "'[{\"id\":\"00000000-0000-4000-8000-0000000000e3\",\"type\":\"A\",\"data\":{}}]', 'c')");
	/* a stream name with a control character is the batch's error: the JSON
	 * text is built by the daemon, and 0x01 is not JSON */
	res = PQexecParams(pg, STORE_APPEND_BATCH_SQL, 1, NULL, (const char *const[]){ batch }, NULL,
			   NULL, 0);
	ck_assert_int_ne(PQresultStatus(res), PGRES_TUPLES_OK);
	PQclear(res);
	{
		char *fixed = strdup(batch), *p = strstr(fixed, "b-old\x01");
		p[5] = '2';	/* "b-old2" */
		res = PQexecParams(pg, STORE_APPEND_BATCH_SQL, 1, NULL,
				   (const char *const[]){ fixed }, NULL, NULL, 0);
		free(fixed);
	}
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
	ck_assert_int_eq(batch_rows(res, 1, "ok"), 1);
	ck_assert_int_eq(batch_rows(res, 2, "ok"), 2);
	ck_assert_int_eq(batch_rows(res, 3, "conflict"), 1);
	ck_assert_int_eq(batch_rows(res, 4, "ok"), 1);		/* no events, no id */
	ck_assert_int_eq(batch_rows(res, 5, "duplicate"), 1);
	ck_assert_int_eq(batch_rows(res, 6, "id_reused"), 1);
	ck_assert_int_eq(batch_rows(res, 7, "ok"), 1);		/* no events, recorded */
	ck_assert_int_eq(batch_rows(res, 8, "invalid"), 1);
	ck_assert_int_eq(batch_rows(res, 9, "invalid"), 1);
	ck_assert_int_eq(PQntuples(res), 10);
	for (int r = 0; r < PQntuples(res); r++) {
		int n = atoi(PQgetvalue(res, r, 0));
		if (n == 3)	/* the stream's version, and the message names it */
			ck_assert(strcmp(PQgetvalue(res, r, 3), "1") == 0 &&
				  strstr(PQgetvalue(res, r, 6), "b-old") != NULL);
		if (n == 5)	/* the first outcome: version 1 of b-dup */
			ck_assert_str_eq(PQgetvalue(res, r, 2), "00000000-0000-4000-8000-0000000000e2");
		if (n == 6)
			ck_assert_msg(strstr(PQgetvalue(res, r, 6), "b-other") != NULL, "%s",
				      PQgetvalue(res, r, 6));
		if (n == 8)
			ck_assert_msg(strstr(PQgetvalue(res, r, 6), "events_data_check") != NULL, "%s",
				      PQgetvalue(res, r, 6));
		if (n == 9)
			ck_assert_msg(strstr(PQgetvalue(res, r, 6), "events_id_key") != NULL, "%s",
				      PQgetvalue(res, r, 6));
		if (n == 2 && strcmp(PQgetvalue(res, r, 5), "B") == 0)
			ck_assert_str_eq(PQgetvalue(res, r, 3), "2");
	}
	PQclear(res);
	/* written: b-1 (1), b-2 (2, with the command's metadata), nothing else new */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events"), 3 + 3);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events WHERE stream IN "
					   "('b-reuse', 'b-array', 'b-taken', 'b-none', 'b-old2')"), 0);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events WHERE stream = 'b-2' "
					   "AND metadata = '{\"m\":2}'"), 2);
	/* the ok ones in one transaction */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(DISTINCT xid) FROM cqrs.events "
					   "WHERE stream IN ('b-1', 'b-2')"), 1);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.commands WHERE id = "
					   "'20000000-0000-4000-8000-000000000007' AND last_version = 0"), 1);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.commands WHERE stream = "
					   "'b-2' AND first_version = 1 AND last_version = 2"), 1);

	/* the append functions plan once and never scan a table whole: a plan
	 * cached while cqrs.commands was empty scanned it at every call, each
	 * call slower than the last (bench-cmd with command ids: 260 against
	 * 96 us of PostgreSQL CPU per event) */
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM pg_proc WHERE "
		"pronamespace = 'cqrs'::regnamespace AND proname IN ('append', 'append_batch') AND "
		"'enable_seqscan=off' = ANY (proconfig) AND "
		"'plan_cache_mode=force_generic_plan' = ANY (proconfig)"), 2);

	/* a batch with one stream twice is refused whole */
	res = PQexecParams(pg, STORE_APPEND_BATCH_SQL, 1, NULL, (const char *const[]){
		"[{\"stream\":\"b-9\",\"events\":[]},{\"stream\":\"b-9\",\"events\":[]}]" },
		NULL, NULL, 0);
	ck_assert_str_eq(PQresultErrorField(res, PG_DIAG_SQLSTATE), "22023");
	PQclear(res);
	PQfinish(pg);
	free(ci);
}
END_TEST

/*
 * Commit-safe reading. Writers append in transactions that they sometimes
 * hold open and sometimes roll back; a reader loops on cqrs_store_read_all from
 * its checkpoint. A reader that went by position alone would pass over the
 * events of a transaction that commits after a later position is visible.
 */
#define CS_WRITERS 6
#define CS_TXNS 40
#define CS_STREAMS 10

struct cs_writer {
	const char *conninfo;
	int seed;
	int committed;
	char rolled_back[CS_TXNS * 3][UUID_STR_LEN];
	int n_rolled_back;
	int failed;
};

static volatile int cs_writers_done;

static void *
cs_write(void *arg)
{
	struct cs_writer *w = arg;
	PGconn *pg = PQconnectdb(w->conninfo);
	unsigned seed = (unsigned)w->seed;

	if (PQstatus(pg) != CONNECTION_OK) {
		w->failed = 1;
		PQfinish(pg);
		return NULL;
	}
	for (int t = 0; t < CS_TXNS; t++) {
		char stream[32];
		struct store_append_req req;
		struct store_event_in ev[2] = { { .type = "A", .data = "{}" },
						{ .type = "B", .data = "{}" } };
		char ids[2][UUID_STR_LEN];
		int roll = rand_r(&seed) % 8 == 0;
		int hold_ms = rand_r(&seed) % 4 == 0 ? 20 + rand_r(&seed) % 150 : 0;
		PGresult *res;
		struct cqrs_err err;

		cqrs_uuid_v4(ids[0]);
		cqrs_uuid_v4(ids[1]);
		ev[0].id = ids[0];
		ev[1].id = ids[1];
		int s1 = rand_r(&seed) % CS_STREAMS;
		snprintf(stream, sizeof(stream), "cs-%d", s1);
		if (cqrs_store_append_prepare(&req, stream, STORE_ANY, ev, 2, NULL, NULL, &err) < 0) {
			w->failed = 1;
			break;
		}
		PQclear(PQexec(pg, "BEGIN"));
		if (t % 2 == 0) {
			res = PQexecParams(pg, STORE_APPEND_SQL, STORE_APPEND_NPARAMS, NULL,
					   req.values, NULL, NULL, 0);
		} else {
			/* every other one a batch: its second stream's event too */
			struct store_append_req req2;
			struct store_event_in ev2 = { .type = "C", .data = "{}" };
			const struct store_append_req *reqs[2] = { &req, &req2 };
			char other[32], *json;

			snprintf(other, sizeof(other), "cs-%d", (s1 + 1 + rand_r(&seed) % (CS_STREAMS - 1)) %
				 CS_STREAMS);
			if (cqrs_store_append_prepare(&req2, other, STORE_ANY, &ev2, 1, NULL, NULL,
						      &err) < 0) {
				w->failed = 1;
				break;
			}
			json = cqrs_store_batch_json(reqs, 2, NULL);
			res = PQexecParams(pg, STORE_APPEND_BATCH_SQL, 1, NULL,
					   (const char *const[]){ json }, NULL, NULL, 0);
			if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 3) {
				char id[UUID_STR_LEN];

				snprintf(id, sizeof(id), "%s", PQgetvalue(res, 2, 2));
				if (roll)
					memcpy(w->rolled_back[w->n_rolled_back++], id, UUID_STR_LEN);
				else
					w->committed++;
			} else {
				w->failed = 1;
			}
			free(json);
			cqrs_store_append_req_clear(&req2);
		}
		if (PQresultStatus(res) != PGRES_TUPLES_OK)
			w->failed = 1;
		PQclear(res);
		cqrs_store_append_req_clear(&req);
		if (hold_ms)
			usleep((useconds_t)hold_ms * 1000);
		if (roll) {
			PQclear(PQexec(pg, "ROLLBACK"));
			memcpy(w->rolled_back[w->n_rolled_back++], ids[0], UUID_STR_LEN);
			memcpy(w->rolled_back[w->n_rolled_back++], ids[1], UUID_STR_LEN);
		} else {
			res = PQexec(pg, "COMMIT");
			if (PQresultStatus(res) != PGRES_COMMAND_OK)
				w->failed = 1;
			PQclear(res);
			w->committed += 2;
		}
	}
	PQfinish(pg);
	return NULL;
}

START_TEST(commit_safe_read_all_skips_nothing)
{
	char *ci = fixture_db_new(true);
	struct cs_writer ws[CS_WRITERS];
	pthread_t th[CS_WRITERS];
	struct store *reader = open_store(ci);
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	struct cqrs_err err = { 0 };
	json_object *seen = json_object_new_object();	/* id -> count */
	json_object *last = json_object_new_object();	/* stream -> version */
	int total_seen = 0, committed = 0, reads = 0, idle_after_done = 0;
	bool joined[CS_WRITERS] = { false };
	PGconn *pg;

	memset(ws, 0, sizeof(ws));
	cs_writers_done = 0;
	for (int i = 0; i < CS_WRITERS; i++) {
		ws[i].conninfo = ci;
		ws[i].seed = 1000 + i;
		ck_assert_int_eq(pthread_create(&th[i], NULL, cs_write, &ws[i]), 0);
	}
	/* writers are joined from this thread below, after the reader drains */
	for (;;) {
		struct store_events evs;
		int done = 1;
		ck_assert_int_eq(cqrs_store_read_all(reader, &cp, 7, &evs, &err), 0);
		reads++;
		for (size_t i = 0; i < evs.n; i++) {
			const struct cqrs_event *e = evs.ev[i];
			json_object *prev = json_object_object_get(last, e->stream);
			json_object *cnt = json_object_object_get(seen, e->id);
			ck_assert_msg(cnt == NULL, "event %s seen twice", e->id);
			json_object_object_add(seen, e->id, json_object_new_int(1));
			if (prev != NULL)
				ck_assert_msg(e->version == json_object_get_int64(prev) + 1,
					      "stream %s: version %" PRId64 " after %" PRId64,
					      e->stream, e->version, json_object_get_int64(prev));
			else
				ck_assert_int_eq(e->version, 1);
			json_object_object_add(last, e->stream, json_object_new_int64(e->version));
			cp = evs.at[i];
			total_seen++;
		}
		cqrs_store_events_clear(&evs);
		for (int i = 0; i < CS_WRITERS; i++) {
			if (!joined[i] && pthread_tryjoin_np(th[i], NULL) == 0)
				joined[i] = true;
			if (!joined[i])
				done = 0;
		}
		if (done && ++idle_after_done > 3)
			break;
		if (!done)
			usleep(2000);
	}
	for (int i = 0; i < CS_WRITERS; i++) {
		ck_assert_int_eq(ws[i].failed, 0);
		committed += ws[i].committed;
		for (int j = 0; j < ws[i].n_rolled_back; j++)
			ck_assert_msg(json_object_object_get(seen, ws[i].rolled_back[j]) == NULL,
				      "rolled-back event %s was read", ws[i].rolled_back[j]);
	}
	pg = fixture_connect(ci);
	ck_assert_int_eq(fixture_query_int(pg, "SELECT count(*) FROM cqrs.events"), committed);
	ck_assert_int_eq(total_seen, committed);
	printf("commit_safe_read_all: %d events in %d reads\n", total_seen, reads);
	PQfinish(pg);
	json_object_put(seen);
	json_object_put(last);
	cqrs_store_free(reader);
	free(ci);
}
END_TEST

/* The folder of a cluster one test starts: named by main() before the tests
 * fork, so that main() stops it afterwards even when a failed assertion
 * ended the test early. */
static char own_cluster[256];

static void
stop_own_cluster(void)
{
	char cmd[700];

	if (own_cluster[0] == '\0')
		return;
	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh stop %s/pg >/dev/null 2>&1; rm -rf %s",
		 CQRS_SRCDIR, own_cluster, own_cluster);
	if (system(cmd) != 0)
		fprintf(stderr, "could not stop the PostgreSQL in %s\n", own_cluster);
	own_cluster[0] = '\0';
}

/*
 * Transaction ids grow past a power of ten while events are written: the
 * commit-safe order must compare them as numbers ("1000" after "999"). A
 * cluster of its own, so the next power of ten is a few hundred ids away.
 */
START_TEST(read_all_orders_xids_as_numbers)
{
	char *dir = strdup(own_cluster);
	char cmd[1024], *out = NULL, *ci;
	struct store *st;
	struct cqrs_err err = { 0 };
	struct store_append_result r;
	struct store_events evs;
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	long long xid, next10 = 10;
	int64_t last_pos = 0;
	int rc;

	snprintf(cmd, sizeof(cmd), "sh %s/deploy/dev/pg.sh start %s/pg --fast >/dev/null 2>&1 && "
		 "sed -n \"s/^CQRS_STORE_CONNINFO='\\(.*\\)'$/\\1/p\" %s/pg/env",
		 CQRS_SRCDIR, dir, dir);
	rc = fixture_run(cmd, &out);
	ck_assert_msg(rc == 0 && out[0] != '\0', "could not start a PostgreSQL in %s", dir);
	out[strcspn(out, "\n")] = '\0';
	ci = out;
	st = open_store(ci);
	ck_assert_int_eq(cqrs_store_migrate(st, NULL, &err), 0);
	ck_assert_int_eq(append1(st, "num-1", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	xid = fixture_query_int(cqrs_store_pg(st), "SELECT pg_current_xact_id()::text::bigint");
	while (next10 <= xid)
		next10 *= 10;
	ck_assert_msg(next10 - xid < 20000, "xid %lld: too far from %lld", xid, next10);
	/* burn transaction ids up to the next power of ten */
	while (fixture_query_int(cqrs_store_pg(st), "SELECT pg_current_xact_id()::text::bigint") <
	       next10)
		;
	ck_assert_int_eq(append1(st, "num-1", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	ck_assert_int_eq(append1(st, "num-2", STORE_ANY, "E", "{}", NULL, &r, &err), 0);
	cqrs_store_append_result_clear(&r);
	/* one event at a time, so each read starts from the checkpoint */
	for (int i = 0; i < 3; i++) {
		ck_assert_int_eq(cqrs_store_read_all(st, &cp, 1, &evs, &err), 0);
		ck_assert_int_eq(evs.n, 1);
		ck_assert_msg(evs.ev[0]->position > last_pos, "position %lld after %lld",
			      (long long)evs.ev[0]->position, (long long)last_pos);
		last_pos = evs.ev[0]->position;
		cp = evs.at[0];
		cqrs_store_events_clear(&evs);
	}
	ck_assert_int_eq(cqrs_store_read_all(st, &cp, 10, &evs, &err), 0);
	ck_assert_int_eq(evs.n, 0);
	cqrs_store_free(st);
	stop_own_cluster();
	free(out);
	free(dir);
}
END_TEST

START_TEST(checkpoint_text)
{
	struct store_checkpoint cp;
	struct cqrs_err err = { 0 };
	char buf[64];

	ck_assert_int_eq(cqrs_store_checkpoint_parse("0", &cp, &err), 0);
	ck_assert(cp.xid == 0 && cp.position == 0);
	ck_assert_int_eq(cqrs_store_checkpoint_parse("751:1234", &cp, &err), 0);
	ck_assert(cp.xid == 751 && cp.position == 1234);
	cqrs_store_checkpoint_format(&cp, buf, sizeof(buf));
	ck_assert_str_eq(buf, "751:1234");
	ck_assert_int_eq(cqrs_store_checkpoint_parse("751", &cp, &err), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_store_checkpoint_parse("a:1", &cp, &err), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_store_checkpoint_parse("1:-1", &cp, &err), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_store_checkpoint_parse("1:2x", &cp, &err), CQRS_EINVALID);
	ck_assert_int_eq(cqrs_store_checkpoint_parse("", &cp, &err), CQRS_EINVALID);
}
END_TEST

static Suite *
store_suite(void)
{
	Suite *s = suite_create("store");
	TCase *tc = tcase_create("store");

	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, append_and_read_back);
	tcase_add_test(tc, expected_version_cases);
	tcase_add_test(tc, duplicate_command_id);
	tcase_add_test(tc, failed_append_leaves_nothing);
	tcase_add_test(tc, bad_input_refused_before_the_database);
	tcase_add_test(tc, events_are_append_only);
	tcase_add_test(tc, lost_connection_is_unavailable);
	tcase_add_test(tc, migrations_concurrent_and_idempotent);
	tcase_add_test(tc, concurrent_writers_one_stream);
	tcase_add_test(tc, batch_append_outcomes);
	tcase_add_test(tc, commit_safe_read_all_skips_nothing);
	tcase_add_test(tc, read_all_orders_xids_as_numbers);
	tcase_add_test(tc, checkpoint_text);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(store_suite());
	int failed;

	(void)fixture_pg_admin_conninfo();	/* one cluster for every forked test */
	{
		char *dir = fixture_tmpdir();
		snprintf(own_cluster, sizeof(own_cluster), "%s", dir);
		free(dir);
	}
	srunner_run_all(sr, CK_NORMAL);
	stop_own_cluster();
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
