/*
 * test_cmdd_protocol.c - cqrs-cmdd's command protocol (DESIGN.md, "Command
 * protocol"), the daemon driven as a separate process against a real
 * PostgreSQL with the bank example plugin: every error code, the fine
 * print, pipelining, idempotency, and cqrsctl send.
 */
#include <check.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "../../cmd/cmdd.h"
#include "cmdclient.h"
#include "daemon.h"
#include "fixture.h"
#include "scrape.h"
#include "uuid.h"

static char *conninfo;		/* this test's database */
static PGconn *pg;

static void
setup(void)
{
	conninfo = NULL;
	pg = NULL;
}

static void
teardown(void)
{
	if (pg != NULL)
		PQfinish(pg);
	pg = NULL;
	daemon_gc_run();
}

static struct daemon *
start_cmdd(const char *plugins)
{
	struct daemon *d;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, plugins);
	daemon_start(d);
	return d;
}

static PGconn *
db(void)
{
	if (pg == NULL)
		pg = fixture_connect(conninfo);
	return pg;
}

static long long
qint(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static long long
qint(const char *fmt, ...)
{
	va_list ap;
	char *sql = NULL;
	long long v;

	va_start(ap, fmt);
	ck_assert_int_ge(vasprintf(&sql, fmt, ap), 0);
	va_end(ap);
	v = fixture_query_int(db(), sql);
	free(sql);
	return v;
}

/* One text value of a query, or NULL for SQL NULL / no row (gc'd). */
static char *
qstr(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
qstr(const char *fmt, ...)
{
	va_list ap;
	char *sql = NULL, *r = NULL;
	PGresult *res;

	va_start(ap, fmt);
	ck_assert_int_ge(vasprintf(&sql, fmt, ap), 0);
	va_end(ap);
	res = PQexec(db(), sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK, "%s: %s", sql,
		      PQerrorMessage(db()));
	if (PQntuples(res) > 0 && !PQgetisnull(res, 0, 0))
		r = daemon_gc(strdup(PQgetvalue(res, 0, 0)));
	PQclear(res);
	free(sql);
	return r;
}

static long long
stream_count(const char *stream)
{
	return qint("SELECT count(*) FROM cqrs.events WHERE stream = '%s'", stream);
}

static long long
balance(const char *stream)
{
	return qint("SELECT coalesce((SELECT (data->>'balance')::bigint FROM cqrs.events "
		    "WHERE stream = '%s' AND data ? 'balance' ORDER BY version DESC LIMIT 1), 0)",
		    stream);
}

static char *
new_id(void)
{
	char *u = malloc(UUID_STR_LEN);

	ck_assert_ptr_nonnull(u);
	cqrs_uuid_v4(u);
	return daemon_gc(u);
}

static const char *
open_line(const char *id, const char *agg)
{
	return daemon_fmt("{\"id\":\"%s\",\"command\":\"account.open\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"owner\":\"Owner of %s\"}}", id, agg, agg);
}

static const char *
deposit_line(const char *id, const char *agg, long long amount)
{
	return daemon_fmt("{\"id\":\"%s\",\"command\":\"account.deposit\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"amount\":%lld}}", id, agg, amount);
}

/* The answer's "id": true when it is null (want NULL) or the string want. */
static bool
answer_id_is(const char *line, const char *want)
{
	json_object *o = daemon_json(line), *v = NULL;
	bool r;

	if (!json_object_object_get_ex(o, "id", &v))
		r = false;
	else if (want == NULL)
		r = v == NULL;
	else
		r = v != NULL && json_object_is_type(v, json_type_string) &&
		    strcmp(json_object_get_string(v), want) == 0;
	json_object_put(o);
	return r;
}

/* The error message of an answer contains needle. */
static bool
message_has(const char *line, const char *needle)
{
	char *m = daemon_answer_str(line, "error.message");

	return m != NULL && strstr(m, needle) != NULL;
}

/* ---- ok answers ------------------------------------------------------------------- */

START_TEST(ok_answers_have_the_documented_shape)
{
	struct daemon *d = start_cmdd("bank");
	const char *id = new_id();
	char *a, *evid, *gen;
	long long pos;

	a = daemon_gc(daemon_call(d, open_line(id, "42")));
	DAEMON_ASSERT_OK(a);
	ck_assert_msg(answer_id_is(a, id), "answer must echo the id: %s", a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), "account-42");
	ck_assert_int_eq(daemon_answer_int(a, "version"), 1);
	ck_assert_str_eq(daemon_answer_str(a, "events.0.type"), "AccountOpened");
	ck_assert_int_eq(daemon_answer_int(a, "events.0.version"), 1);
	ck_assert_ptr_null(daemon_answer_str(a, "events.1.type"));
	evid = daemon_answer_str(a, "events.0.id");
	ck_assert_msg(evid != NULL && cqrs_uuid_valid(evid), "event id: %s", a);
	pos = daemon_answer_int(a, "events.0.position");
	ck_assert_int_gt(pos, 0);
	ck_assert_msg(!strstr(a, "\"duplicate\":true") && !strstr(a, "\"duplicate\": true"),
		      "a first execution is not a duplicate: %s", a);
	/* the answer describes what is in the store */
	ck_assert_int_eq(qint("SELECT position FROM cqrs.events WHERE id = '%s'", evid), pos);
	ck_assert_str_eq(qstr("SELECT stream || ' ' || version || ' ' || type FROM cqrs.events "
			      "WHERE id = '%s'", evid), "account-42 1 AccountOpened");

	a = daemon_gc(daemon_call(d, deposit_line(new_id(), "42", 100)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	ck_assert_str_eq(daemon_answer_str(a, "events.0.type"), "MoneyDeposited");
	ck_assert_int_gt(daemon_answer_int(a, "events.0.position"), pos);
	ck_assert_int_eq(balance("account-42"), 100);

	/* no id: the daemon makes one, answers it, and uses it as causation id */
	a = daemon_gc(daemon_call(d, "{\"command\":\"account.deposit\",\"aggregate_id\":\"42\","
				     "\"data\":{\"amount\":5}}"));
	DAEMON_ASSERT_OK(a);
	gen = daemon_answer_str(a, "id");
	ck_assert_msg(gen != NULL && cqrs_uuid_valid(gen), "a generated id must be a UUID: %s", a);
	evid = daemon_answer_str(a, "events.0.id");
	ck_assert_str_eq(qstr("SELECT metadata->>'causation_id' FROM cqrs.events WHERE id = '%s'",
			      evid), gen);
	ck_assert_int_eq(balance("account-42"), 105);

	/* expected_version that matches */
	a = daemon_gc(daemon_call(d, daemon_fmt("{\"command\":\"account.deposit\",\"aggregate_id\":"
						"\"42\",\"expected_version\":3,\"data\":{\"amount\":1}}")));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 4);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(aggregate_id_charset_and_length)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	char id200[201], id201[202];
	const char *a;

	memset(id200, 'z', 200);
	id200[200] = '\0';
	memset(id201, 'z', 201);
	id201[201] = '\0';

	a = daemon_gc(daemon_conn_call(c, open_line(new_id(), "Az09-_.:@x")));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), "account-Az09-_.:@x");
	a = daemon_gc(daemon_conn_call(c, daemon_fmt("{\"command\":\"account.open\","
		"\"aggregate_id\":\"%s\",\"data\":{\"owner\":\"o\"}}", id200)));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "stream"), daemon_fmt("account-%s", id200));

	{
		const char *bad[] = { id201, "", "a b", "a/b", "a\\nb", "caf\xc3\xa9", "a*", "a'b",
				      "a\\\"b", "a,b", "a+b", "%41" };
		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			const char *id = new_id();
			a = daemon_gc(daemon_conn_call(c, open_line(id, bad[i])));
			ck_assert_msg(daemon_answer_error(a, "malformed"),
				      "aggregate_id \"%s\": expected malformed, got %s", bad[i], a);
			ck_assert_msg(answer_id_is(a, id), "answer must echo the id: %s", a);
			ck_assert_msg(message_has(a, "aggregate_id"),
				      "the message should name aggregate_id: %s", a);
		}
	}
	/* nothing but the two good ones was written */
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events"), 2);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(answers_echo_the_id_as_sent)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *upper = "0B8F5A52-3F4E-4C8E-9A0B-2A1F3C4D5E6F";
	const char *lower = "0b8f5a52-3f4e-4c8e-9a0b-2a1f3c4d5e6f";
	const char *a, *b;

	/* a UUID in capitals is a UUID; the answer gives back what was sent,
	 * so a client can match answers to requests by comparing strings */
	a = daemon_gc(daemon_conn_call(c, open_line(upper, "up1")));
	DAEMON_ASSERT_OK(a);
	ck_assert_msg(answer_id_is(a, upper), "answer id is not the request's id %s: %s", upper, a);
	/* the same UUID in small letters is the same command */
	b = daemon_gc(daemon_conn_call(c, open_line(lower, "up1")));
	DAEMON_ASSERT_OK(b);
	ck_assert_msg(strstr(b, "\"duplicate\":true") != NULL, "%s", b);
	ck_assert_msg(answer_id_is(b, lower), "answer id is not the request's id %s: %s", lower, b);
	ck_assert_int_eq(stream_count("account-up1"), 1);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- malformed --------------------------------------------------------------------- */

struct bad_case {
	const char *line;
	const char *field;	/* the message should name it (NULL: no check) */
	int echo;		/* 0: answer id null, 1: the request's id (U), 2: null or the
				 * id's text (an id that is not a UUID), 3: null or a UUID */
	const char *echo_text;
};

#define U "0b8f5a52-3f4e-4c8e-9a0b-2a1f3c4d5e6f"

static const struct bad_case bad_cases[] = {
	{ "not json", NULL, 3, NULL },
	{ "{\"command\":\"account.open\"", NULL, 3, NULL },
	{ "{\"command\":\"account.open\",}", NULL, 3, NULL },
	{ "[1,2]", NULL, 3, NULL },
	{ "\"account.open\"", NULL, 3, NULL },
	{ "42", NULL, 3, NULL },
	{ "null", NULL, 3, NULL },
	{ "true", NULL, 3, NULL },
	{ "{}", NULL, 3, NULL },
	{ "{\"id\":\"" U "\",\"aggregate_id\":\"m1\",\"data\":{}}", "command", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"data\":{\"owner\":\"x\"}}",
	  "aggregate_id", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\"}", "data", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":5,\"aggregate_id\":\"m1\",\"data\":{}}", "command", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":null,\"aggregate_id\":\"m1\",\"data\":{}}", "command", 1,
	  NULL },
	{ "{\"id\":\"" U "\",\"command\":[\"account.open\"],\"aggregate_id\":\"m1\",\"data\":{}}",
	  "command", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":42,"
	  "\"data\":{\"owner\":\"x\"}}", "aggregate_id", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":null,"
	  "\"data\":{\"owner\":\"x\"}}", "aggregate_id", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\",\"data\":[]}",
	  "data", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\",\"data\":\"x\"}",
	  "data", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\",\"data\":null}",
	  "data", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"metadata\":\"x\"}", "metadata", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"metadata\":[1]}", "metadata", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"expected_version\":\"0\"}", "expected_version", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"expected_version\":-1}", "expected_version", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"expected_version\":1.5}", "expected_version", 1, NULL },
	{ "{\"id\":\"" U "\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"},\"expected_version\":true}", "expected_version", 1, NULL },
	{ "{\"id\":\"not-a-uuid\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"}}", "id", 2, "not-a-uuid" },
	{ "{\"id\":\"\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"}}", "id", 2, "" },
	{ "{\"id\":\"0b8f5a523f4e4c8e9a0b2a1f3c4d5e6f\",\"command\":\"account.open\","
	  "\"aggregate_id\":\"m1\",\"data\":{\"owner\":\"x\"}}", "id", 2,
	  "0b8f5a523f4e4c8e9a0b2a1f3c4d5e6f" },
	{ "{\"id\":\"" U "x\",\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"}}", "id", 2, U "x" },
	{ "{\"id\":123,\"command\":\"account.open\",\"aggregate_id\":\"m1\","
	  "\"data\":{\"owner\":\"x\"}}", "id", 0, NULL },
};

START_TEST(malformed_requests_keep_the_connection)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *a;

	for (size_t i = 0; i < sizeof(bad_cases) / sizeof(bad_cases[0]); i++) {
		const struct bad_case *bc = &bad_cases[i];
		a = daemon_gc(daemon_conn_call(c, bc->line));
		ck_assert_msg(daemon_answer_error(a, "malformed"),
			      "request %s: expected malformed, got %s", bc->line, a);
		switch (bc->echo) {
		case 0:
			ck_assert_msg(answer_id_is(a, NULL), "request %s: id must be null: %s",
				      bc->line, a);
			break;
		case 1:
			ck_assert_msg(answer_id_is(a, U), "request %s: id must be echoed: %s",
				      bc->line, a);
			break;
		case 2:
			ck_assert_msg(answer_id_is(a, NULL) || answer_id_is(a, bc->echo_text),
				      "request %s: id must be null or echoed: %s", bc->line, a);
			break;
		default: {
			char *id = daemon_answer_str(a, "id");
			ck_assert_msg(answer_id_is(a, NULL) || (id != NULL && cqrs_uuid_valid(id)),
				      "request %s: id must be null (or a generated id): %s",
				      bc->line, a);
			break;
		}
		}
		if (bc->field != NULL)
			ck_assert_msg(message_has(a, bc->field),
				      "request %s: the message should name \"%s\": %s", bc->line,
				      bc->field, a);
	}
	/* the same connection still works, and nothing was written */
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events"), 0);
	a = daemon_gc(daemon_conn_call(c, open_line(U, "m1")));
	DAEMON_ASSERT_OK(a);
	ck_assert(answer_id_is(a, U));
	ck_assert_int_eq(stream_count("account-m1"), 1);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(blank_and_whitespace_around_requests)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id();
	const char *a;

	/* JSON allows whitespace around the object; \r\n line ends are common */
	daemon_conn_send(c, daemon_fmt("  %s  \r", open_line(id, "ws1")));
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	ck_assert_msg(daemon_answer_ok(a) || daemon_answer_error(a, "malformed"),
		      "whitespace around a request: %s", a ? a : "(closed)");
	/* whatever that was, the connection is usable */
	a = daemon_gc(daemon_conn_call(c, open_line(new_id(), "ws2")));
	DAEMON_ASSERT_OK(a);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- framing errors: too_large, invalid UTF-8 -------------------------------------------- */

/* A valid open request of exactly size bytes (padded in its metadata). */
static const char *
padded_open(const char *id, const char *agg, size_t size)
{
	static const char fmt[] = "{\"id\":\"%s\",\"command\":\"account.open\","
				  "\"aggregate_id\":\"%s\",\"data\":{\"owner\":\"o\"},"
				  "\"metadata\":{\"pad\":\"%s\"}}";
	size_t fixed = strlen(daemon_fmt(fmt, id, agg, ""));
	size_t pad = size > fixed ? size - fixed : 0;
	char *p = daemon_gc(malloc(pad + 1));
	const char *line;

	memset(p, 'p', pad);
	p[pad] = '\0';
	line = daemon_fmt(fmt, id, agg, p);
	ck_assert_uint_eq(strlen(line), size);
	return line;
}

START_TEST(too_large_answers_then_closes)
{
	struct daemon *d;
	struct daemon_conn *c;
	const char *ok_id = new_id(), *big_id = new_id(), *after_id = new_id();
	char *a;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "max_request_bytes", "4096");
	daemon_start(d);

	/* the limit is the line without its newline: 4096 bytes are fine, 4097 not */
	a = daemon_gc(daemon_call(d, padded_open(new_id(), "under", 4096)));
	DAEMON_ASSERT_OK(a);
	c = daemon_connect(d);
	daemon_conn_send(c, padded_open(new_id(), "over", 4097));
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	DAEMON_ASSERT_ERROR(a, "too_large");
	ck_assert_msg(daemon_conn_wait_closed(c, 10000), "not closed after too_large");
	daemon_conn_close(c);
	ck_assert_int_eq(stream_count("account-over"), 0);

	/* pipelined: ok, too large, then the connection is closed: the third
	 * request is never executed */
	c = daemon_connect(d);
	{
		const char *three = daemon_fmt("%s\n%s\n%s\n", open_line(ok_id, "before"),
					       padded_open(big_id, "big", 5000),
					       open_line(after_id, "after"));
		int rc = daemon_conn_try_write(c, three, strlen(three));
		ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "write: %s",
			      strerror(-rc));
	}
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	DAEMON_ASSERT_OK(a);
	ck_assert(answer_id_is(a, ok_id));
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	DAEMON_ASSERT_ERROR(a, "too_large");
	ck_assert_msg(daemon_conn_wait_closed(c, 10000),
		      "the connection must be closed after too_large");
	daemon_conn_close(c);
	ck_assert_int_eq(stream_count("account-before"), 1);
	ck_assert_int_eq(stream_count("account-big"), 0);
	ck_assert_int_eq(stream_count("account-after"), 0);

	/* the daemon must not wait for a newline that may never come */
	c = daemon_connect(d);
	{
		size_t n = 64 * 1024;
		char *junk = daemon_gc(malloc(n));
		memset(junk, ' ', n);
		memcpy(junk, "{\"pad\":\"", 8);
		for (size_t i = 8; i < n; i++)
			junk[i] = 'q';
		int rc = daemon_conn_try_write(c, junk, n);
		ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "write: %s",
			      strerror(-rc));
	}
	a = daemon_gc(daemon_conn_recv(c, 10000));
	DAEMON_ASSERT_ERROR(a, "too_large");
	ck_assert(daemon_conn_wait_closed(c, 10000));
	daemon_conn_close(c);

	/* others are not disturbed */
	a = daemon_gc(daemon_call(d, deposit_line(new_id(), "before", 7)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(default_limit_is_one_mebibyte)
{
	struct daemon *d = start_cmdd("bank");
	char *a;

	a = daemon_gc(daemon_call(d, padded_open(new_id(), "900k", 900 * 1024)));
	DAEMON_ASSERT_OK(a);
	{
		struct daemon_conn *c = daemon_connect(d);
		const char *line = padded_open(new_id(), "1100k", 1100 * 1024);
		int rc;
		char *buf = daemon_fmt("%s\n", line);
		rc = daemon_conn_try_write(c, buf, strlen(buf));
		ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "write: %s",
			      strerror(-rc));
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		DAEMON_ASSERT_ERROR(a, "too_large");
		ck_assert(daemon_conn_wait_closed(c, 10000));
		daemon_conn_close(c);
	}
	ck_assert_int_eq(stream_count("account-1100k"), 0);
	daemon_free(d);
}
END_TEST

/* A field of /proc/PID/status in kB ("VmRSS", "VmHWM"). */
static long long
status_kb(pid_t pid, const char *field)
{
	char path[64], line[256];
	size_t flen = strlen(field);
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/status", (long)pid);
	f = fopen(path, "r");
	ck_assert_msg(f != NULL, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f) != NULL)
		if (strncmp(line, field, flen) == 0 && line[flen] == ':')
			kb = strtoll(line + flen + 1, NULL, 10);
	fclose(f);
	ck_assert_msg(kb >= 0, "%s: no %s", path, field);
	return kb;
}

/* Waits up to 30 s until the daemon at port has answered n requests malformed. */
static void
wait_malformed(uint16_t port, double n)
{
	long long deadline = proc_now_ms() + 30000;
	double got;

	for (;;) {
		struct scrape *m = scrape_metrics(port);
		got = scrape_value(m, "cqrs_cmdd_commands_total", "outcome=\"malformed\"");
		scrape_free(m);
		if (got >= n || proc_now_ms() >= deadline)
			break;
		(void)poll(NULL, 0, 20);
	}
	ck_assert_msg(got >= n, "%.0f of %.0f requests answered malformed", got, n);
}

/*
 * After a framing error the daemon owes the client one last answer, and it
 * keeps the connection until that is flushed. A client that streams on and
 * never reads must not make it buffer what it sends meanwhile: it stops
 * reading, and the client's writes fail once the daemon has stopped taking
 * bytes.
 */
START_TEST(a_closing_connection_is_read_no_more)
{
	enum { FILLER = 20000 };	/* malformed requests before the framing error */
	const size_t stream_total = (size_t)256 << 20, chunk_len = (size_t)1 << 20;
	const long long bound_kb = 64 * 1024;
	struct daemon *d;
	struct daemon_conn *c;
	char *filler = daemon_gc(malloc((size_t)FILLER * 3)), *chunk = daemon_gc(malloc(chunk_len));
	long long hwm_before, hwm_after, rss_after, deadline;
	size_t sent = 0;
	int werr = 0, fd;
	const char *a;
	uint16_t port;
	pid_t pid;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "max_request_bytes", "4096");
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	daemon_start(d);
	pid = daemon_pid(d);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 30000));
	{
		char *log = daemon_gc(daemon_log(d));
		port = scrape_port_from_log(strstr(log, "metrics and health on "));
		ck_assert_uint_ne(port, 0);
	}
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line(new_id(), "cl1"))));

	/*
	 * Requests whose answers (about 2 MB: more than a Unix socket holds,
	 * less than the daemon's output high-water mark) the client does not
	 * read: the daemon cannot flush its last answer, so the connection
	 * stays open after the framing error.
	 */
	for (int i = 0; i < FILLER; i++)
		memcpy(filler + (size_t)i * 3, "{}\n", 3);
	c = daemon_connect(d);
	fd = daemon_conn_fd(c);
	daemon_conn_write(c, filler, (size_t)FILLER * 3);
	/* the baseline once they are answered (what answering them allocates,
	 * and with ASan its quarantine, is not what is measured here) */
	wait_malformed(port, FILLER);
	hwm_before = status_kb(pid, "VmHWM");

	/* then a line that never ends: too_large, and on and on */
	memset(chunk, 'q', chunk_len);
	deadline = proc_now_ms() + 60000;
	while (sent < stream_total) {
		size_t n = stream_total - sent < chunk_len ? stream_total - sent : chunk_len;
		ssize_t w = send(fd, chunk, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		struct pollfd p = { .fd = fd, .events = POLLOUT };

		if (w > 0) {
			sent += (size_t)w;
			continue;
		}
		if (w < 0 && (errno == EPIPE || errno == ECONNRESET)) {
			werr = errno;
			break;
		}
		ck_assert_msg(w < 0 && (errno == EAGAIN || errno == EINTR), "send: %s",
			      strerror(errno));
		ck_assert_msg(proc_now_ms() < deadline,
			      "after %zu bytes the daemon neither reads on nor stops the writer", sent);
		(void)poll(&p, 1, 1000);
	}
	hwm_after = status_kb(pid, "VmHWM");
	rss_after = status_kb(pid, "VmRSS");
	ck_assert_msg(hwm_after - hwm_before < bound_kb,
		      "the daemon's peak RSS grew by %lld kB (now %lld kB RSS) while a closing "
		      "client streamed %zu bytes", hwm_after - hwm_before, rss_after, sent);
	ck_assert_msg(werr == EPIPE || werr == ECONNRESET,
		      "the daemon took all %zu bytes after too_large", sent);

	/* another client is served meanwhile */
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, deposit_line(new_id(), "cl1", 5))));

	/* the closing client gets every answer, the last one too_large, then the end */
	for (int i = 0; i < FILLER; i++) {
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		ck_assert_msg(daemon_answer_error(a, "malformed"), "answer %d: expected malformed, "
			      "got %s", i, a ? a : "(closed)");
	}
	a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
	DAEMON_ASSERT_ERROR(a, "too_large");
	ck_assert_msg(daemon_conn_wait_closed(c, 30000), "not closed after too_large");
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

START_TEST(invalid_utf8_answers_malformed_then_closes)
{
	struct daemon *d = start_cmdd("bank");
	static const char *const bad[] = {
		"\xff\xfe",		/* never valid */
		"\xc0\xaf",		/* overlong '/' */
		"\xed\xa0\x80",		/* a UTF-16 surrogate */
		"ab\xe2\x82",		/* truncated sequence */
		"\xf8\x88\x80\x80\x80",	/* 5-byte form */
	};
	char *a;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct daemon_conn *c = daemon_connect(d);
		const char *ok_id = new_id(), *agg = daemon_fmt("utf%zu", i);
		const char *line = daemon_fmt("{\"id\":\"%s\",\"command\":\"account.open\","
					      "\"aggregate_id\":\"%s\",\"data\":{\"owner\":\"%s\"}}",
					      new_id(), agg, bad[i]);
		const char *three = daemon_fmt("%s\n%s\n%s\n", open_line(ok_id, "fine"), line,
					       open_line(new_id(), "later"));
		int rc = daemon_conn_try_write(c, three, strlen(three));
		ck_assert_msg(rc == 0 || rc == -EPIPE || rc == -ECONNRESET, "write: %s",
			      strerror(-rc));
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		ck_assert_msg(daemon_answer_ok(a) || daemon_answer_error(a, "rejected"),
			      "the request before: %s", a ? a : "(closed)");
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		ck_assert_msg(daemon_answer_error(a, "malformed"), "case %zu: expected malformed, "
			      "got %s", i, a ? a : "(closed)");
		ck_assert_msg(daemon_conn_wait_closed(c, 10000),
			      "case %zu: the connection must be closed after invalid UTF-8", i);
		daemon_conn_close(c);
		ck_assert_int_eq(stream_count(daemon_fmt("account-%s", agg)), 0);
	}
	ck_assert_int_eq(stream_count("account-later"), 0);

	/* outside a string too */
	{
		struct daemon_conn *c = daemon_connect(d);
		daemon_conn_send(c, "{\"command\":\xff\"account.open\"}");
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		DAEMON_ASSERT_ERROR(a, "malformed");
		ck_assert(daemon_conn_wait_closed(c, 10000));
		daemon_conn_close(c);
	}

	/* valid non-ASCII is kept as is */
	a = daemon_gc(daemon_call(d, "{\"command\":\"account.open\",\"aggregate_id\":\"zoe\","
				     "\"data\":{\"owner\":\"Zo\xc3\xab \xf0\x9f\x98\x80 \\u00e9\"}}"));
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(qstr("SELECT data->>'owner' FROM cqrs.events WHERE stream = 'account-zoe'"),
			 "Zo\xc3\xab \xf0\x9f\x98\x80 \xc3\xa9");
	daemon_free(d);
}
END_TEST

/*
 * JSON strings may hold U+0000. C strings end there, so a field read as a C
 * string would be cut short: "account.open\u0000xyz" would run account.open.
 * PostgreSQL's jsonb cannot store U+0000 at all. Either way the request must
 * be refused up front, and nothing cut short may be written.
 */
START_TEST(nul_characters_are_refused_not_truncated)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	struct {
		const char *line, *stream;
	} cases[] = {
		{ "{\"command\":\"account.open\\u0000xyz\",\"aggregate_id\":\"nul1\","
		  "\"data\":{\"owner\":\"x\"}}", "account-nul1" },
		{ "{\"command\":\"account.open\",\"aggregate_id\":\"nul2\\u0000evil\","
		  "\"data\":{\"owner\":\"x\"}}", "account-nul2" },
		{ "{\"id\":\"" U "\\u0000\",\"command\":\"account.open\",\"aggregate_id\":\"nul3\","
		  "\"data\":{\"owner\":\"x\"}}", "account-nul3" },
		{ "{\"command\":\"account.open\",\"aggregate_id\":\"nul4\",\"data\":{\"owner\":\"x\"},"
		  "\"metadata\":{\"correlation_id\":\"c\\u0000d\"}}", "account-nul4" },
		{ "{\"command\":\"account.open\",\"aggregate_id\":\"nul5\",\"data\":{\"owner\":\"x\"},"
		  "\"metadata\":{\"note\":\"\\u0000\"}}", "account-nul5" },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *a = daemon_gc(daemon_conn_call(c, cases[i].line));
		ck_assert_msg(daemon_answer_error(a, "malformed") || daemon_answer_error(a, "invalid") ||
			      daemon_answer_error(a, "unknown_command"),
			      "request %s: expected it refused (malformed), got %s", cases[i].line, a);
		ck_assert_msg(stream_count(cases[i].stream) == 0, "request %s wrote %s", cases[i].line,
			      cases[i].stream);
	}
	/* raw NUL bytes after the object are not blanks (found by
	 * tests/fuzz/fuzz_request.c): the request is refused, nothing written */
	for (int n = 1; n <= 2; n++) {
		const char *agg = daemon_fmt("nulraw%d", n);
		const char *line = open_line(new_id(), agg);
		size_t len = strlen(line);
		char buf[512];
		const char *a;

		ck_assert(len + 4 < sizeof(buf));
		memcpy(buf, line, len);
		memcpy(buf + len, n == 1 ? "\0\n" : " \0 \r\n", n == 1 ? 2 : 5);
		daemon_conn_write(c, buf, len + (n == 1 ? 2 : 5));
		a = daemon_gc(daemon_conn_recv(c, DAEMON_RECV_TIMEOUT_MS));
		ck_assert_msg(daemon_answer_error(a, "malformed") && strstr(a, "after the object"),
			      "NUL after the object (%d): expected malformed, got %s", n,
			      a ? a : "(closed)");
		ck_assert_int_eq(stream_count(daemon_fmt("account-%s", agg)), 0);
	}
	/* the connection is still usable */
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "nul6"))));
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- unknown_command, invalid, rejected, conflict ---------------------------------------- */

START_TEST(unknown_command)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	/* names with bytes no command type has may also be malformed */
	const char *names[] = { "account.explode", "counter.add", "account", "Account.open",
				"account.open ", "", "account/open" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		const char *id = new_id();
		const char *a = daemon_gc(daemon_conn_call(c, daemon_fmt(
			"{\"id\":\"%s\",\"command\":\"%s\",\"aggregate_id\":\"u1\",\"data\":{}}", id,
			names[i])));
		if (names[i][0] == '\0' || strpbrk(names[i], " /") != NULL)
			ck_assert_msg(daemon_answer_error(a, "unknown_command") ||
				      daemon_answer_error(a, "malformed"), "command \"%s\": %s",
				      names[i], a);
		else
			ck_assert_msg(daemon_answer_error(a, "unknown_command"),
				      "command \"%s\": expected unknown_command, got %s", names[i], a);
		ck_assert_msg(answer_id_is(a, id), "answer must echo the id: %s", a);
	}
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events"), 0);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(invalid_payload_names_the_field)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	char owner201[202];
	struct {
		const char *command, *agg, *data, *field;
	} cases[] = {
		{ "account.deposit", "nobody", "{}", "amount" },
		{ "account.deposit", "nobody", "{\"amount\":0}", "amount" },
		{ "account.deposit", "nobody", "{\"amount\":-5}", "amount" },
		{ "account.deposit", "nobody", "{\"amount\":\"5\"}", "amount" },
		{ "account.deposit", "nobody", "{\"amount\":1.5}", "amount" },
		{ "account.deposit", "nobody", "{\"amount\":null}", "amount" },
		{ "account.withdraw", "nobody", "{}", "amount" },
		{ "account.withdraw", "nobody", "{\"amount\":0}", "amount" },
		{ "account.open", "nobody", "{}", "owner" },
		{ "account.open", "nobody", "{\"owner\":\"\"}", "owner" },
		{ "account.open", "nobody", "{\"owner\":5}", "owner" },
		{ "account.open", "nobody", NULL, "owner" },	/* 201 bytes */
		{ "account.open", "nobody", "{\"owner\":\"x\",\"overdraft_limit\":-1}",
		  "overdraft_limit" },
		{ "account.open", "nobody", "{\"owner\":\"x\",\"overdraft_limit\":\"10\"}",
		  "overdraft_limit" },
		/* an account that exists: still invalid, not rejected */
		{ "account.deposit", "real", "{\"amount\":0}", "amount" },
		{ "account.open", "real", "{}", "owner" },
	};
	const char *a;

	memset(owner201, 'o', 201);
	owner201[201] = '\0';
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "real"))));
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *id = new_id();
		const char *data = cases[i].data ? cases[i].data
						 : daemon_fmt("{\"owner\":\"%s\"}", owner201);
		a = daemon_gc(daemon_conn_call(c, daemon_fmt(
			"{\"id\":\"%s\",\"command\":\"%s\",\"aggregate_id\":\"%s\",\"data\":%s}", id,
			cases[i].command, cases[i].agg, data)));
		ck_assert_msg(daemon_answer_error(a, "invalid"),
			      "%s %s %s: expected invalid, got %s", cases[i].command, cases[i].agg,
			      data, a);
		ck_assert_msg(message_has(a, cases[i].field), "%s %s: message should name \"%s\": %s",
			      cases[i].command, data, cases[i].field, a);
		ck_assert(answer_id_is(a, id));
	}
	/* the 200-byte owner is fine */
	memset(owner201, 'o', 200);
	owner201[200] = '\0';
	a = daemon_gc(daemon_conn_call(c, daemon_fmt("{\"command\":\"account.open\","
		"\"aggregate_id\":\"o200\",\"data\":{\"owner\":\"%s\"}}", owner201)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.events"), 2);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

static const char *
call_cmd(struct daemon_conn *c, const char *command, const char *agg, const char *data)
{
	return daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"%s\",\"aggregate_id\":\"%s\",\"data\":%s}", new_id(),
		command, agg, data)));
}

START_TEST(rejected_by_domain_rules)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *a;

	a = call_cmd(c, "account.deposit", "r1", "{\"amount\":10}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	a = call_cmd(c, "account.close", "r1", "{}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	DAEMON_ASSERT_OK(call_cmd(c, "account.open", "r1", "{\"owner\":\"Ann\"}"));
	a = call_cmd(c, "account.open", "r1", "{\"owner\":\"Ann\"}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	a = call_cmd(c, "account.withdraw", "r1", "{\"amount\":1}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	ck_assert_msg(message_has(a, "insufficient funds"), "%s", a);
	DAEMON_ASSERT_OK(call_cmd(c, "account.deposit", "r1", "{\"amount\":50}"));
	a = call_cmd(c, "account.close", "r1", "{}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	a = call_cmd(c, "account.withdraw", "r1", "{\"amount\":51}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	ck_assert_msg(message_has(a, "insufficient funds"), "%s", a);
	a = call_cmd(c, "account.withdraw", "r1", "{\"amount\":50}");
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "events.0.type"), "MoneyWithdrawn");
	ck_assert_int_eq(balance("account-r1"), 0);
	a = call_cmd(c, "account.close", "r1", "{}");
	DAEMON_ASSERT_OK(a);
	ck_assert_str_eq(daemon_answer_str(a, "events.0.type"), "AccountClosed");
	a = call_cmd(c, "account.deposit", "r1", "{\"amount\":1}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	a = call_cmd(c, "account.open", "r1", "{\"owner\":\"Ann\"}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	ck_assert_int_eq(stream_count("account-r1"), 4);

	/* overdraft */
	DAEMON_ASSERT_OK(call_cmd(c, "account.open", "r2", "{\"owner\":\"Bo\",\"overdraft_limit\":100}"));
	a = call_cmd(c, "account.withdraw", "r2", "{\"amount\":100}");
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(balance("account-r2"), -100);
	a = call_cmd(c, "account.withdraw", "r2", "{\"amount\":1}");
	DAEMON_ASSERT_ERROR(a, "rejected");
	ck_assert_msg(message_has(a, "insufficient funds"), "%s", a);
	ck_assert_int_eq(stream_count("account-r2"), 2);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

static const char *
with_expected(struct daemon_conn *c, const char *command, const char *agg, const char *data,
	      long long expected)
{
	return daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"%s\",\"aggregate_id\":\"%s\","
		"\"expected_version\":%lld,\"data\":%s}", new_id(), command, agg, expected, data)));
}

START_TEST(conflict_on_expected_version)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *a;

	a = with_expected(c, "account.open", "c1", "{\"owner\":\"x\"}", 0);
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 1);
	/* 0: the stream must not exist yet */
	a = with_expected(c, "account.deposit", "c1", "{\"amount\":1}", 0);
	DAEMON_ASSERT_ERROR(a, "conflict");
	a = with_expected(c, "account.deposit", "c1", "{\"amount\":1}", 5);
	DAEMON_ASSERT_ERROR(a, "conflict");
	a = with_expected(c, "account.deposit", "c1", "{\"amount\":1}", 1);
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	a = with_expected(c, "account.deposit", "c1", "{\"amount\":1}", 1);
	DAEMON_ASSERT_ERROR(a, "conflict");
	a = with_expected(c, "account.deposit", "c1", "{\"amount\":1}", 2);
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 3);
	/* a stream that does not exist is at version 0 */
	a = with_expected(c, "account.open", "c2", "{\"owner\":\"x\"}", 3);
	DAEMON_ASSERT_ERROR(a, "conflict");
	ck_assert_int_eq(stream_count("account-c1"), 3);
	ck_assert_int_eq(stream_count("account-c2"), 0);
	ck_assert_int_eq(balance("account-c1"), 2);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- metadata ----------------------------------------------------------------------- */

START_TEST(metadata_is_copied_with_correlation_and_causation)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *u1 = new_id(), *u2 = new_id(), *a, *ev1, *ev2, *ev3;
	char *out = NULL, *cmd;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "m1"))));
	a = daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"account.deposit\",\"aggregate_id\":\"m1\","
		"\"data\":{\"amount\":3},\"metadata\":{\"user\":\"alice\",\"n\":7}}", u1)));
	DAEMON_ASSERT_OK(a);
	ev1 = daemon_answer_str(a, "events.0.id");
	ck_assert_str_eq(qstr("SELECT metadata->>'user' FROM cqrs.events WHERE id = '%s'", ev1),
			 "alice");
	ck_assert_int_eq(qint("SELECT (metadata->>'n')::int FROM cqrs.events WHERE id = '%s'", ev1),
			 7);
	ck_assert_str_eq(qstr("SELECT metadata->>'correlation_id' FROM cqrs.events WHERE id = '%s'",
			      ev1), u1);
	ck_assert_str_eq(qstr("SELECT metadata->>'causation_id' FROM cqrs.events WHERE id = '%s'",
			      ev1), u1);

	/* a given correlation id is kept; causation is always the command id */
	a = daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"account.deposit\",\"aggregate_id\":\"m1\","
		"\"data\":{\"amount\":4},\"metadata\":{\"correlation_id\":\"corr-7\","
		"\"causation_id\":\"spoofed\",\"user\":\"bob\"}}", u2)));
	DAEMON_ASSERT_OK(a);
	ev2 = daemon_answer_str(a, "events.0.id");
	ck_assert_str_eq(qstr("SELECT metadata->>'correlation_id' FROM cqrs.events WHERE id = '%s'",
			      ev2), "corr-7");
	ck_assert_str_eq(qstr("SELECT metadata->>'causation_id' FROM cqrs.events WHERE id = '%s'",
			      ev2), u2);
	ck_assert_str_eq(qstr("SELECT metadata->>'user' FROM cqrs.events WHERE id = '%s'", ev2),
			 "bob");

	/* no metadata at all: both ids still there */
	a = daemon_gc(daemon_conn_call(c, "{\"command\":\"account.deposit\",\"aggregate_id\":\"m1\","
					  "\"data\":{\"amount\":5}}"));
	DAEMON_ASSERT_OK(a);
	ev3 = daemon_answer_str(a, "events.0.id");
	ck_assert_str_eq(qstr("SELECT metadata->>'causation_id' FROM cqrs.events WHERE id = '%s'",
			      ev3), daemon_answer_str(a, "id"));
	ck_assert_str_eq(qstr("SELECT metadata->>'correlation_id' FROM cqrs.events WHERE id = '%s'",
			      ev3), daemon_answer_str(a, "id"));

	/* what operators see through cqrsctl read */
	cmd = daemon_fmt("%s -c %s read account-m1", fixture_bin("cqrsctl"), daemon_config_path(d));
	ck_assert_int_eq(fixture_run(cmd, &out), 0);
	daemon_gc(out);
	{
		char *line2 = strchr(out, '\n');
		json_object *e;
		ck_assert_ptr_nonnull(line2);
		line2++;
		*strchr(line2, '\n') = '\0';
		e = daemon_json(line2);
		ck_assert_str_eq(daemon_jstr(e, "id"), ev1);
		ck_assert_str_eq(daemon_jstr(e, "type"), "MoneyDeposited");
		ck_assert_str_eq(daemon_jstr(e, "metadata.user"), "alice");
		ck_assert_str_eq(daemon_jstr(e, "metadata.correlation_id"), u1);
		ck_assert_str_eq(daemon_jstr(e, "metadata.causation_id"), u1);
		ck_assert_int_eq(json_object_get_int64(daemon_jget(e, "data.amount")), 3);
		ck_assert_int_eq(json_object_get_int64(daemon_jget(e, "data.balance")), 3);
		json_object_put(e);
	}
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- pipelining ------------------------------------------------------------------------ */

START_TEST(pipelined_1000_answered_in_order)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	enum { N = 1000, ACCOUNTS = 10 };
	const char *lines[N], *ids[N];
	char kind[N];		/* o ok, i invalid, m malformed, u unknown, r rejected */
	long long expect_balance[ACCOUNTS] = { 0 };
	char **answers;

	for (int i = 0; i < N; i++) {
		const char *agg = daemon_fmt("p%d", i % ACCOUNTS);
		ids[i] = new_id();
		if (i < ACCOUNTS) {
			lines[i] = open_line(ids[i], agg);
			kind[i] = 'o';
		} else if (i % 7 == 0) {
			lines[i] = deposit_line(ids[i], agg, 0);
			kind[i] = 'i';
		} else if (i % 11 == 0) {
			lines[i] = daemon_fmt("{\"id\":\"%s\",\"command\":\"account.deposit\","
					      "\"aggregate_id\":\"%s\"}", ids[i], agg);
			kind[i] = 'm';
		} else if (i % 13 == 0) {
			lines[i] = daemon_fmt("{\"id\":\"%s\",\"command\":\"account.nope\","
					      "\"aggregate_id\":\"%s\",\"data\":{}}", ids[i], agg);
			kind[i] = 'u';
		} else if (i % 17 == 0) {
			lines[i] = deposit_line(ids[i], daemon_fmt("unopened%d", i), 1);
			kind[i] = 'r';
		} else {
			lines[i] = deposit_line(ids[i], agg, i);
			kind[i] = 'o';
			expect_balance[i % ACCOUNTS] += i;
		}
	}
	answers = daemon_conn_pipeline(c, lines, N, 60000);
	for (int i = 0; i < N; i++) {
		const char *a = answers[i];
		ck_assert_msg(answer_id_is(a, ids[i]),
			      "answer %d is not for request %d (out of order?): %s", i, i, a);
		switch (kind[i]) {
		case 'o':
			ck_assert_msg(daemon_answer_ok(a), "request %d %s: %s", i, lines[i], a);
			break;
		case 'i':
			ck_assert_msg(daemon_answer_error(a, "invalid"), "request %d: %s", i, a);
			break;
		case 'm':
			ck_assert_msg(daemon_answer_error(a, "malformed"), "request %d: %s", i, a);
			break;
		case 'u':
			ck_assert_msg(daemon_answer_error(a, "unknown_command"), "request %d: %s", i, a);
			break;
		case 'r':
			ck_assert_msg(daemon_answer_error(a, "rejected"), "request %d: %s", i, a);
			break;
		}
	}
	daemon_lines_free(answers, N);
	for (int k = 0; k < ACCOUNTS; k++)
		ck_assert_int_eq(balance(daemon_fmt("account-p%d", k)), expect_balance[k]);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(pipelined_on_one_aggregate_versions_follow)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	enum { N = 1000 };
	const char *lines[N];
	char **answers;
	long long sum = 0;

	lines[0] = open_line(new_id(), "one");
	for (int i = 1; i < N; i++) {
		lines[i] = deposit_line(new_id(), "one", i);
		sum += i;
	}
	answers = daemon_conn_pipeline(c, lines, N, 60000);
	for (int i = 0; i < N; i++) {
		ck_assert_msg(daemon_answer_ok(answers[i]), "request %d: %s", i, answers[i]);
		ck_assert_msg(daemon_answer_int(answers[i], "version") == i + 1,
			      "request %d should make version %d: %s", i, i + 1, answers[i]);
	}
	daemon_lines_free(answers, N);
	ck_assert_int_eq(stream_count("account-one"), N);
	ck_assert_int_eq(balance("account-one"), sum);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/*
 * Commands that finish without a store round trip (refused as invalid),
 * queued by the thousand behind one whose append waits on the stream's
 * lock, held here: when the lock goes, the queue runs one after the other
 * in order. The daemon runs with a 1 MiB stack, so a queue run by
 * recursion (one nesting per job) would overflow it.
 */
START_TEST(long_queue_on_one_aggregate_runs_without_recursion)
{
	enum { N = 50000 };
	struct rlimit old, small;
	struct daemon *d;
	struct daemon_conn *c;
	PGconn *locker;
	uint16_t port;
	char *log, *buf, *p, *a;
	size_t len = 0, cap = (size_t)N * 160;
	struct timespec t0, now;
	double queued = 0;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "max_pipeline", "65536");
	/* some 4 KiB held per queued deposit: room for all of them */
	daemon_set(d, "cmd", "client_budget", "1G");
	daemon_set(d, "cmd", "memory_budget", "1G");
	/* the held append stays held however long reading 50,000 lines takes */
	daemon_set(d, "cmd", "store_timeout", "1h");
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	/* the daemon inherits the limit; this test's own stack is far smaller */
	ck_assert_int_eq(getrlimit(RLIMIT_STACK, &old), 0);
	small = old;
	small.rlim_cur = 1024 * 1024;
	ck_assert_int_eq(setrlimit(RLIMIT_STACK, &small), 0);
	daemon_start(d);
	ck_assert_int_eq(setrlimit(RLIMIT_STACK, &old), 0);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 10000));
	log = daemon_log(d);
	port = scrape_port_from_log(strstr(log, "metrics and health on "));
	free(log);
	ck_assert_int_ne(port, 0);

	c = daemon_connect(d);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "deep"))));
	/* the append's lock on the stream (sql/001_event_store.sql) */
	locker = fixture_connect(conninfo);
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-deep'))");

	buf = malloc(cap);
	ck_assert_ptr_nonnull(buf);
	p = buf;
	len = (size_t)sprintf(p, "%s\n", deposit_line(new_id(), "deep", 7));
	for (int i = 1; i < N; i++)
		len += (size_t)sprintf(buf + len,
				       "{\"command\":\"account.deposit\",\"aggregate_id\":\"deep\","
				       "\"data\":{\"amount\":0},\"metadata\":{\"n\":%d}}\n", i);
	ck_assert_uint_lt(len, cap);
	daemon_conn_write(c, buf, len);
	free(buf);

	/* every request read and waiting: none can be answered before the first */
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct scrape *m = scrape_metrics(port);
		queued = scrape_value(m, "cqrs_cmdd_commands_in_flight", NULL);
		scrape_free(m);
		if (queued >= N)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		ck_assert_msg(now.tv_sec - t0.tv_sec < 120, "%.0f of %d requests in flight",
			      queued, N);
		usleep(20000);
	}
	ck_assert_int_eq(qint("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
			      "AND NOT granted AND database = (SELECT oid FROM pg_database "
			      "WHERE datname = current_database())"), 1);
	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");

	a = daemon_conn_recv(c, 60000);
	ck_assert_msg(a != NULL, "the daemon closed the connection: %s",
		      (char *)daemon_gc(daemon_log_tail(d, 20)));
	DAEMON_ASSERT_OK(daemon_gc(a));
	ck_assert_int_eq(daemon_answer_int(a, "version"), 2);
	for (int i = 1; i < N; i++) {
		a = daemon_conn_recv(c, 60000);
		ck_assert_msg(a != NULL, "answer %d: the daemon closed the connection: %s", i,
			      (char *)daemon_gc(daemon_log_tail(d, 20)));
		ck_assert_msg(strstr(a, "\"code\":\"invalid\"") != NULL, "answer %d: %s", i, a);
		free(a);
	}
	ck_assert(daemon_running(d));
	/* the aggregate is free again, its state up to date */
	a = daemon_gc(daemon_conn_call(c, deposit_line(new_id(), "deep", 1)));
	DAEMON_ASSERT_OK(a);
	ck_assert_int_eq(daemon_answer_int(a, "version"), 3);
	ck_assert_int_eq(balance("account-deep"), 8);
	PQfinish(locker);
	daemon_conn_close(c);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/* ---- byte budgets ---------------------------------------------------------------------- */

/* A deposit line (with its '\n') of about size bytes: metadata padding. */
static char *
padded_deposit(const char *agg, size_t size)
{
	size_t pad = size - 200;
	char *p = malloc(pad + 1), *line;

	ck_assert_ptr_nonnull(p);
	memset(p, 'x', pad);
	p[pad] = '\0';
	line = daemon_fmt("{\"id\":\"%s\",\"command\":\"account.deposit\",\"aggregate_id\":\"%s\","
			  "\"data\":{\"amount\":1},\"metadata\":{\"pad\":\"%s\"}}\n", new_id(), agg, p);
	free(p);
	return line;
}

/* Lines written to a socket as far as it takes them, never blocking. */
struct feed {
	int fd;
	char **lines;
	size_t n, i, off;	/* lines[i] is written up to off */
	size_t written;
};

/* Writes what the socket takes now; returns how much it took. */
static size_t
feed_now(struct feed *f)
{
	size_t before = f->written;

	while (f->i < f->n) {
		size_t len = strlen(f->lines[f->i]);
		ssize_t w = send(f->fd, f->lines[f->i] + f->off, len - f->off,
				 MSG_DONTWAIT | MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0 && errno == EAGAIN)
			break;
		ck_assert_msg(w > 0, "send: %s", strerror(errno));
		f->off += (size_t)w;
		f->written += (size_t)w;
		if (f->off == len) {
			f->i++;
			f->off = 0;
		}
	}
	return f->written - before;
}

/* Lines sent whole, after writing the rest of one begun (blocking). */
static size_t
feed_finish_line(struct feed *f, struct daemon_conn *c)
{
	if (f->off > 0) {
		daemon_conn_write(c, f->lines[f->i] + f->off, strlen(f->lines[f->i]) - f->off);
		f->i++;
		f->off = 0;
	}
	return f->i;
}

static double
gauge(uint16_t port, const char *name)
{
	struct scrape *m = scrape_metrics(port);
	double v = scrape_value(m, name, NULL);

	scrape_free(m);
	ck_assert_msg(!isnan(v), "no %s in /metrics", name);
	return v;
}

/*
 * A client that pipelines big commands and reads no answer, at an aggregate
 * whose append is held by the stream's lock: the daemon reads it up to
 * cmd.client_budget, then no more (its writes stop being taken). A second
 * client then finds the daemon's budget spent and waits for it. /metrics
 * shows both, and the bytes held, while it lasts; all of it goes once the
 * lock goes and the answers are read.
 */
START_TEST(budgets_stop_reading_and_metrics_show_it)
{
	enum { LINES = 40, LINE = 200 * 1024, BIG = 500 * 1024 };
	const size_t budget = 2 * 1024 * 1024, daemon_budget = 2560 * 1024;
	struct daemon *d;
	struct daemon_conn *ca, *cc;
	struct feed fa = { 0 }, fc = { 0 };
	PGconn *locker;
	uint16_t port;
	long long deadline;
	double held, paused, waiting;
	size_t sent_a, sent_c;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "client_budget", "2M");
	/* room past A's budget for more than A's next line (A waits for its
	 * own budget), less than C's line (C waits for the daemon's) */
	daemon_set(d, "cmd", "memory_budget", "2560K");
	daemon_set(d, "cmd", "max_request_bytes", "512K");
	/* the held append waits for the lock, not for a deadline */
	daemon_set(d, "cmd", "store_timeout", "10m");
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	daemon_start(d);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 30000));
	port = scrape_port_from_log(strstr(daemon_gc(daemon_log(d)), "metrics and health on "));
	ck_assert_uint_ne(port, 0);
	DAEMON_ASSERT_OK(daemon_gc(daemon_call(d, open_line(new_id(), "gauge"))));
	ck_assert(gauge(port, "cqrs_cmdd_client_bytes") == 0);
	ck_assert(gauge(port, "cqrs_cmdd_clients_paused") == 0);
	ck_assert(gauge(port, "cqrs_cmdd_clients_waiting_budget") == 0);
	/* the append's lock on the stream (sql/001_event_store.sql) */
	locker = fixture_connect(conninfo);
	fixture_exec(locker, "SELECT pg_advisory_lock(1129468499, hashtext('account-gauge'))");

	/* A: 8 MB of commands, far more than its budget and the socket hold */
	ca = daemon_connect(d);
	fa.fd = daemon_conn_fd(ca);
	fa.n = LINES;
	fa.lines = daemon_gc(calloc(LINES, sizeof(char *)));
	for (int i = 0; i < LINES; i++)
		fa.lines[i] = padded_deposit("gauge", LINE);
	deadline = proc_now_ms() + 30000;
	for (;;) {
		struct pollfd p = { .fd = fa.fd, .events = POLLOUT };

		feed_now(&fa);
		paused = gauge(port, "cqrs_cmdd_clients_paused");
		held = gauge(port, "cqrs_cmdd_client_bytes");
		if (paused >= 1 && held >= (double)budget / 2)
			break;
		ck_assert_msg(proc_now_ms() < deadline, "A: %zu bytes written, %.0f held, %.0f "
			      "clients paused", fa.written, held, paused);
		(void)poll(&p, 1, 100);
	}
	ck_assert_msg(fa.i < LINES, "the daemon took all %d lines of A", LINES);
	ck_assert_msg(held <= budget + CMDD_READ_CHUNK, "A: %.0f bytes held, over cmd.client_budget "
		      "(%zu) and a read", held, budget);
	ck_assert(gauge(port, "cqrs_cmdd_clients_waiting_budget") == 0);

	/* C: one line bigger than the room A leaves in the daemon's budget */
	cc = daemon_connect(d);
	fc.fd = daemon_conn_fd(cc);
	fc.n = 1;
	fc.lines = daemon_gc(calloc(1, sizeof(char *)));
	fc.lines[0] = padded_deposit("gauge", BIG);
	deadline = proc_now_ms() + 30000;
	for (;;) {
		struct pollfd p = { .fd = fc.fd, .events = POLLOUT };

		feed_now(&fc);
		waiting = gauge(port, "cqrs_cmdd_clients_waiting_budget");
		if (waiting >= 1)
			break;
		ck_assert_msg(proc_now_ms() < deadline, "C: %zu bytes written, no client waits "
			      "for the daemon's budget", fc.written);
		(void)poll(&p, 1, 100);
	}
	ck_assert(gauge(port, "cqrs_cmdd_clients_paused") == 2);
	ck_assert(gauge(port, "cqrs_cmdd_clients_waiting_budget") == 1);

	/*
	 * Neither is read any more: their writes are not taken, and the bytes
	 * held stay within the budget. Each scrape is a turn of the daemon's
	 * loop, in which a readable client would be read.
	 */
	while (feed_now(&fa) > 0 || feed_now(&fc) > 0)
		;
	sent_a = fa.written;
	sent_c = fc.written;
	held = gauge(port, "cqrs_cmdd_client_bytes");
	for (int k = 0; k < 10; k++) {
		double now = gauge(port, "cqrs_cmdd_client_bytes");

		ck_assert_msg(feed_now(&fa) == 0 && feed_now(&fc) == 0,
			      "the daemon read on: A %zu, C %zu bytes taken after they were paused",
			      fa.written - sent_a, fc.written - sent_c);
		ck_assert_msg(now == held, "bytes held moved from %.0f to %.0f", held, now);
	}
	ck_assert_msg(held <= daemon_budget + 2 * CMDD_CLIENT_FLOOR + CMDD_READ_CHUNK,
		      "%.0f bytes held, over cmd.memory_budget (%zu), two floors and a read", held,
		      daemon_budget);
	ck_assert_int_eq(qint("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
			      "AND NOT granted AND database = (SELECT oid FROM pg_database "
			      "WHERE datname = current_database())"), 1);

	/* the lock goes: every line sent whole is answered, in order */
	fixture_exec(locker, "SELECT pg_advisory_unlock_all()");
	PQfinish(locker);
	feed_finish_line(&fc, cc);
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_recv(cc, 60000)));
	for (size_t i = 0, n = feed_finish_line(&fa, ca); i < n; i++) {
		char *a = daemon_gc(daemon_conn_recv(ca, 60000));
		ck_assert_msg(a != NULL && daemon_answer_ok(a), "A's answer %zu: %s", i,
			      a ? a : "(closed)");
	}
	ck_assert_int_eq(balance("account-gauge"), (long long)fa.i + 1);
	deadline = proc_now_ms() + 30000;
	while (gauge(port, "cqrs_cmdd_clients_paused") != 0 ||
	       gauge(port, "cqrs_cmdd_clients_waiting_budget") != 0) {
		ck_assert_msg(proc_now_ms() < deadline, "clients still paused once answered");
		(void)poll(NULL, 0, 50);
	}
	daemon_conn_close(ca);
	daemon_conn_close(cc);
	deadline = proc_now_ms() + 30000;
	while ((held = gauge(port, "cqrs_cmdd_client_bytes")) != 0) {
		ck_assert_msg(proc_now_ms() < deadline, "%.0f bytes held with no client", held);
		(void)poll(NULL, 0, 50);
	}
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/*
 * Clients that each send a 64 KiB read of requests ending in a few bytes of
 * an unfinished line, and wait: the daemon keeps those few bytes, counted at
 * what it holds for them, not a buffer the size of the read (an evbuffer
 * chain of 128 KiB each, uncounted, for as long as the client waits).
 */
START_TEST(unfinished_lines_keep_no_read_buffer)
{
	enum { CLIENTS = 400, READ = 64 * 1024, TAIL = 10 };
	const long long bound_kb = 8 * 1024;
	struct daemon *d;
	struct daemon_conn **cs = daemon_gc(calloc(CLIENTS + 1, sizeof(*cs)));
	char *blob = daemon_gc(malloc(READ)), *line;
	size_t len = 0, n = 0, linelen;
	long long before, after;
	const char *asan = getenv("ASAN_OPTIONS");
	uint16_t port;
	pid_t pid;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "http", "127.0.0.1:0");
	/* ASan keeps freed blocks resident (its quarantine): measure what is held */
	daemon_setenv(d, "ASAN_OPTIONS", daemon_fmt("%s%squarantine_size_mb=0", asan ? asan : "",
						    asan && *asan ? ":" : ""));
	daemon_start(d);
	pid = daemon_pid(d);
	ck_assert(daemon_wait_log(d, "metrics and health on ", 30000));
	port = scrape_port_from_log(strstr(daemon_gc(daemon_log(d)), "metrics and health on "));
	ck_assert_uint_ne(port, 0);

	/* 1 KiB requests answered at once (no such command), then a line begun */
	line = daemon_fmt("{\"command\":\"no.such\",\"aggregate_id\":\"a\",\"data\":{},"
			  "\"metadata\":{\"pad\":\"%0900d\"}}\n", 0);
	linelen = strlen(line);
	while (len + linelen <= READ - TAIL) {
		memcpy(blob + len, line, linelen);
		len += linelen;
		n++;
	}
	memset(blob + len, ' ', READ - TAIL - len);
	memcpy(blob + READ - TAIL, "{\"command\"", TAIL);
	for (int i = 0; i <= CLIENTS; i++) {
		cs[i] = daemon_connect(d);
		daemon_conn_write(cs[i], blob, READ);
		for (size_t k = 0; k < n; k++)
			DAEMON_ASSERT_ERROR(daemon_gc(daemon_conn_recv(cs[i], 30000)), "unknown_command");
		if (i == 0)	/* the first one warms up what every connection shares */
			before = status_kb(pid, "VmRSS");
	}
	after = status_kb(pid, "VmRSS");
	{
		struct scrape *m = scrape_metrics(port);
		double held = scrape_value(m, "cqrs_cmdd_client_bytes", NULL);
		double clients = scrape_value(m, "cqrs_cmdd_clients", NULL);

		scrape_free(m);
		ck_assert(clients == CLIENTS + 1);
		/* each holds its unfinished line: the spaces and the 10 bytes */
		ck_assert_msg(held == (double)(CLIENTS + 1) * (READ - len),
			      "%.0f bytes counted for %d clients' %zu bytes each", held, CLIENTS + 1,
			      (size_t)READ - len);
	}
	ck_assert_msg(after - before < bound_kb, "%d clients waiting with %zu bytes of a line "
		      "each: the daemon's RSS grew by %lld kB", CLIENTS, (size_t)READ - len,
		      after - before);
	for (int i = 0; i <= CLIENTS; i++)
		daemon_conn_close(cs[i]);
	ck_assert_int_eq(daemon_stop(d), 0);
	daemon_free(d);
}
END_TEST

/* ---- idempotency ---------------------------------------------------------------------- */

static bool
same_events(const char *a, const char *b)
{
	json_object *x = daemon_json(a), *y = daemon_json(b);
	json_object *ex = daemon_jget(x, "events"), *ey = daemon_jget(y, "events");
	bool r = ex != NULL && ey != NULL && json_object_equal(ex, ey) &&
		 daemon_answer_int(a, "version") == daemon_answer_int(b, "version") &&
		 json_object_equal(daemon_jget(x, "stream"), daemon_jget(y, "stream"));

	json_object_put(x);
	json_object_put(y);
	return r;
}

static bool
is_duplicate(const char *a)
{
	json_object *o = daemon_json(a), *v = daemon_jget(o, "duplicate");
	bool r = v != NULL && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);

	json_object_put(o);
	return r;
}

START_TEST(repeated_command_id_is_a_duplicate)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id(), *first, *again, *other;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "d1"))));
	first = daemon_gc(daemon_conn_call(c, deposit_line(id, "d1", 10)));
	DAEMON_ASSERT_OK(first);
	ck_assert(!is_duplicate(first));
	again = daemon_gc(daemon_conn_call(c, deposit_line(id, "d1", 10)));
	DAEMON_ASSERT_OK(again);
	ck_assert_msg(is_duplicate(again), "a repeat must say duplicate:true: %s", again);
	ck_assert_msg(same_events(first, again), "a repeat must give the first outcome:\n%s\n%s",
		      first, again);
	ck_assert(answer_id_is(again, id));
	/* on another connection, and with another payload: still the first outcome */
	other = daemon_gc(daemon_call(d, deposit_line(id, "d1", 999)));
	DAEMON_ASSERT_OK(other);
	ck_assert(is_duplicate(other));
	ck_assert(same_events(first, other));
	ck_assert_int_eq(stream_count("account-d1"), 2);
	ck_assert_int_eq(balance("account-d1"), 10);

	/* an open that succeeded, repeated, is not "rejected: already open" */
	{
		const char *oid = new_id();
		const char *o1 = daemon_gc(daemon_conn_call(c, open_line(oid, "d2")));
		const char *o2 = daemon_gc(daemon_conn_call(c, open_line(oid, "d2")));
		DAEMON_ASSERT_OK(o1);
		DAEMON_ASSERT_OK(o2);
		ck_assert(is_duplicate(o2));
		ck_assert(same_events(o1, o2));
	}
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(repeat_while_in_flight_gets_the_first_outcome)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id();
	const char *lines[3];
	char **answers;
	int firsts = 0;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "f1"))));
	/* pipelined on one connection: the second is in flight behind the first */
	lines[0] = deposit_line(id, "f1", 5);
	lines[1] = deposit_line(id, "f1", 5);
	lines[2] = deposit_line(id, "f1", 5);
	answers = daemon_conn_pipeline(c, lines, 3, 30000);
	DAEMON_ASSERT_OK(answers[0]);
	ck_assert(!is_duplicate(answers[0]));
	for (int i = 1; i < 3; i++) {
		DAEMON_ASSERT_OK(answers[i]);
		ck_assert_msg(is_duplicate(answers[i]), "%s", answers[i]);
		ck_assert(same_events(answers[0], answers[i]));
	}
	daemon_lines_free(answers, 3);
	ck_assert_int_eq(stream_count("account-f1"), 2);

	/* the same new id from 8 connections at once: one append, one first */
	{
		enum { K = 8 };
		struct daemon_conn *cs[K];
		char *as[K];
		const char *id2 = new_id();
		const char *line = daemon_fmt("%s\n", deposit_line(id2, "f1", 7));
		for (int i = 0; i < K; i++)
			cs[i] = daemon_connect(d);
		for (int i = 0; i < K; i++)
			daemon_conn_write(cs[i], line, strlen(line));
		for (int i = 0; i < K; i++) {
			as[i] = daemon_gc(daemon_conn_recv(cs[i], DAEMON_RECV_TIMEOUT_MS));
			DAEMON_ASSERT_OK(as[i]);
			if (!is_duplicate(as[i]))
				firsts++;
			ck_assert(same_events(as[0], as[i]));
			daemon_conn_close(cs[i]);
		}
		ck_assert_msg(firsts == 1, "%d answers without duplicate, want 1", firsts);
	}
	ck_assert_int_eq(stream_count("account-f1"), 3);
	ck_assert_int_eq(balance("account-f1"), 12);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

static const char *
error_code(const char *a)
{
	return daemon_answer_str(a, "error.code");
}

START_TEST(command_id_reused_for_another_stream)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id(), *id2 = new_id(), *a;
	const char *lines[2];
	char **answers;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(id, "ra"))));
	/* the same id for an open of another account: nothing appended there */
	a = daemon_gc(daemon_conn_call(c, open_line(id, "rb")));
	ck_assert_msg(!daemon_answer_ok(a), "%s", a);
	ck_assert_msg(error_code(a) != NULL && strcmp(error_code(a), "id_reused") == 0, "%s", a);
	ck_assert(answer_id_is(a, id));
	ck_assert_int_eq(stream_count("account-rb"), 0);
	ck_assert_int_eq(stream_count("account-ra"), 1);
	/* a command the domain refuses on the other stream: still id_reused */
	a = daemon_gc(daemon_conn_call(c, deposit_line(id2, "ra", 5)));
	DAEMON_ASSERT_OK(a);
	a = daemon_gc(daemon_conn_call(c, deposit_line(id2, "nobody", 5)));
	ck_assert_msg(error_code(a) != NULL && strcmp(error_code(a), "id_reused") == 0, "%s", a);
	ck_assert_int_eq(stream_count("account-nobody"), 0);
	/* the first stream still answers the repeat as before */
	a = daemon_gc(daemon_conn_call(c, deposit_line(id2, "ra", 5)));
	DAEMON_ASSERT_OK(a);
	ck_assert(is_duplicate(a));
	ck_assert_int_eq(stream_count("account-ra"), 2);

	/* the repeat arrives while the first is still in flight */
	{
		const char *id3 = new_id();
		lines[0] = open_line(id3, "rc");
		lines[1] = open_line(id3, "rd");
		answers = daemon_conn_pipeline(c, lines, 2, 30000);
		DAEMON_ASSERT_OK(answers[0]);
		ck_assert_msg(error_code(answers[1]) != NULL &&
			      strcmp(error_code(answers[1]), "id_reused") == 0, "%s", answers[1]);
		daemon_lines_free(answers, 2);
		ck_assert_int_eq(stream_count("account-rc"), 1);
		ck_assert_int_eq(stream_count("account-rd"), 0);
	}
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(command_id_reused_for_another_command)
{
	struct daemon *d = start_cmdd("bank");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id(), *a;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, open_line(new_id(), "rx"))));
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c, deposit_line(id, "rx", 10))));
	a = daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"account.withdraw\",\"aggregate_id\":\"rx\","
		"\"data\":{\"amount\":5}}", id)));
	ck_assert_msg(error_code(a) != NULL && strcmp(error_code(a), "id_reused") == 0, "%s", a);
	ck_assert(message_has(a, "account.deposit"));
	ck_assert_int_eq(stream_count("account-rx"), 2);
	ck_assert_int_eq(balance("account-rx"), 10);
	/* the first command again: its outcome */
	a = daemon_gc(daemon_conn_call(c, deposit_line(id, "rx", 10)));
	DAEMON_ASSERT_OK(a);
	ck_assert(is_duplicate(a));
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

START_TEST(eventless_command_repeated_is_a_duplicate)
{
	struct daemon *d = start_cmdd("bank other");
	struct daemon_conn *c = daemon_connect(d);
	const char *id = new_id(), *first, *again, *line;

	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c,
		"{\"command\":\"counter.add\",\"aggregate_id\":\"e1\",\"data\":{\"by\":5}}")));
	line = daemon_fmt("{\"id\":\"%s\",\"command\":\"counter.check\",\"aggregate_id\":\"e1\","
			  "\"data\":{\"at_most\":10}}", id);
	first = daemon_gc(daemon_conn_call(c, line));
	DAEMON_ASSERT_OK(first);
	ck_assert(!is_duplicate(first));
	ck_assert_int_eq(daemon_answer_int(first, "version"), 1);
	ck_assert_int_eq(qint("SELECT count(*) FROM cqrs.commands WHERE id = '%s'", id), 1);
	again = daemon_gc(daemon_conn_call(c, line));
	DAEMON_ASSERT_OK(again);
	ck_assert_msg(is_duplicate(again), "a repeat must say duplicate:true: %s", again);
	ck_assert(same_events(first, again));
	/* after the stream moved on, the repeat still gives the first outcome */
	DAEMON_ASSERT_OK(daemon_gc(daemon_conn_call(c,
		"{\"command\":\"counter.add\",\"aggregate_id\":\"e1\",\"data\":{\"by\":1}}")));
	again = daemon_gc(daemon_conn_call(c, daemon_fmt(
		"{\"id\":\"%s\",\"command\":\"counter.check\",\"aggregate_id\":\"e1\","
		"\"data\":{\"at_most\":0}}", id)));
	DAEMON_ASSERT_OK(again);
	ck_assert(is_duplicate(again));
	ck_assert_int_eq(daemon_answer_int(again, "version"), 1);
	ck_assert_int_eq(stream_count("counter-e1"), 2);
	daemon_conn_close(c);
	daemon_free(d);
}
END_TEST

/* ---- cqrsctl send -------------------------------------------------------------------------- */

static int
ctl(struct daemon *d, const char *args, char **out)
{
	char *cmd = daemon_fmt("%s -c %s %s", fixture_bin("cqrsctl"), daemon_config_path(d), args);
	int rc = fixture_run(cmd, out);

	if (out != NULL)
		daemon_gc(*out);
	return rc;
}

START_TEST(cqrsctl_send_one)
{
	struct daemon *d = start_cmdd("bank");
	const char *id = new_id();
	char *out, *errpath = daemon_fmt("%s/ctl.err", daemon_dir(d));
	int rc;

	rc = ctl(d, daemon_fmt("send account.open s1 '{\"owner\":\"Sam\"}' --id %s", id), &out);
	ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
	ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "one line: %s", out);
	DAEMON_ASSERT_OK(out);
	ck_assert(answer_id_is(out, id));
	ck_assert_str_eq(daemon_answer_str(out, "stream"), "account-s1");

	rc = ctl(d, "send account.deposit s1 '{\"amount\":25}' --expected 1 "
		    "--metadata '{\"user\":\"carol\"}'", &out);
	ck_assert_msg(rc == 0, "rc %d: %s", rc, out);
	ck_assert_int_eq(daemon_answer_int(out, "version"), 2);
	ck_assert_str_eq(qstr("SELECT metadata->>'user' FROM cqrs.events WHERE stream = 'account-s1'"
			      " AND version = 2"), "carol");

	/* a nack is printed and exits 1 */
	rc = ctl(d, "send account.deposit s1 '{\"amount\":1}' --expected 1", &out);
	ck_assert_int_eq(rc, 1);
	DAEMON_ASSERT_ERROR(out, "conflict");
	rc = ctl(d, "send account.close s1", &out);	/* data defaults to {} */
	ck_assert_int_eq(rc, 1);
	DAEMON_ASSERT_ERROR(out, "rejected");
	/* a repeat */
	rc = ctl(d, daemon_fmt("send account.open s1 '{\"owner\":\"Sam\"}' --id %s", id), &out);
	ck_assert_int_eq(rc, 0);
	ck_assert(is_duplicate(out));

	/* usage */
	ck_assert_int_eq(ctl(d, "send account.open 2>/dev/null", NULL), 2);
	ck_assert_int_eq(ctl(d, "send account.open s1 'not json' 2>/dev/null", NULL), 2);
	ck_assert_int_eq(ctl(d, "send account.open s1 '{}' --expected x 2>/dev/null", NULL), 2);

	/* no daemon there: exit 1, and the message names the socket */
	rc = ctl(d, daemon_fmt("send --socket %s/nope.sock account.open s1 2>%s", daemon_dir(d),
			       errpath), &out);
	ck_assert_int_eq(rc, 1);
	{
		char *cmd = daemon_fmt("cat %s", errpath), *err = NULL;
		ck_assert_int_eq(fixture_run(cmd, &err), 0);
		daemon_gc(err);
		ck_assert_msg(strstr(err, daemon_fmt("%s/nope.sock", daemon_dir(d))) != NULL,
			      "the message should name the socket: %s", err);
	}
	daemon_free(d);
}
END_TEST

START_TEST(cqrsctl_send_pipelined_from_stdin)
{
	struct daemon *d = start_cmdd("bank");
	enum { N = 20000 };
	const char *in = daemon_fmt("%s/in.jsonl", daemon_dir(d));
	FILE *f = fopen(in, "w");
	char *out;
	int rc, lines = 0;

	ck_assert_ptr_nonnull(f);
	fprintf(f, "%s\n\n", open_line(new_id(), "big"));
	for (int i = 1; i < N; i++)
		fprintf(f, "{\"id\":\"00000000-0000-4000-8000-%012d\",\"command\":\"account.deposit\","
			   "\"aggregate_id\":\"big\",\"data\":{\"amount\":1},"
			   "\"metadata\":{\"pad\":\"%0100d\"}}\n", i, i);
	fclose(f);
	rc = ctl(d, daemon_fmt("send - --timeout 120 < %s", in), &out);
	ck_assert_msg(rc == 0, "rc %d, output ends: %s", rc,
		      strlen(out) > 500 ? out + strlen(out) - 500 : out);
	for (char *p = out, *nl; (nl = strchr(p, '\n')) != NULL; p = nl + 1) {
		*nl = '\0';
		if (lines > 0) {
			char want[64];
			snprintf(want, sizeof(want), "00000000-0000-4000-8000-%012d", lines);
			ck_assert_msg(answer_id_is(p, want), "answer %d out of order: %s", lines, p);
		}
		DAEMON_ASSERT_OK(p);
		lines++;
	}
	ck_assert_int_eq(lines, N);
	ck_assert_int_eq(balance("account-big"), N - 1);

	/* one nack among oks: every answer printed, exit 1 */
	f = fopen(in, "w");
	fprintf(f, "%s\n%s\n%s", deposit_line(new_id(), "big", 1), deposit_line(new_id(), "big", 0),
		deposit_line(new_id(), "big", 1) /* no final newline */);
	fclose(f);
	rc = ctl(d, daemon_fmt("send - < %s", in), &out);
	ck_assert_int_eq(rc, 1);
	ck_assert_int_eq(balance("account-big"), N + 1);
	{
		char *l2 = strchr(out, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
		DAEMON_ASSERT_OK(out);
		DAEMON_ASSERT_ERROR(l2, "invalid");
		DAEMON_ASSERT_OK(l3);
	}
	daemon_free(d);
}
END_TEST

START_TEST(cqrsctl_send_when_the_daemon_closes)
{
	struct daemon *d;
	const char *in;
	FILE *f;
	char *out;
	int rc;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "max_request_bytes", "2048");
	daemon_start(d);
	in = daemon_fmt("%s/in.jsonl", daemon_dir(d));
	f = fopen(in, "w");
	ck_assert_ptr_nonnull(f);
	fprintf(f, "%s\n%s\n%s\n", open_line(new_id(), "cl"), padded_open(new_id(), "x", 4000),
		open_line(new_id(), "never"));
	fclose(f);
	rc = ctl(d, daemon_fmt("send - < %s 2>%s/err", in, daemon_dir(d)), &out);
	ck_assert_int_eq(rc, 1);
	{
		char *l2 = strchr(out, '\n');
		ck_assert_ptr_nonnull(l2);
		*l2++ = '\0';
		DAEMON_ASSERT_OK(out);
		DAEMON_ASSERT_ERROR(l2, "too_large");
	}
	ck_assert_int_eq(stream_count("account-never"), 0);
	daemon_free(d);
}
END_TEST

/* ---- the library client the process managers use ------------------------------------- */

START_TEST(cmdclient_against_the_daemon)
{
	struct daemon *d;
	struct cmdclient *c = NULL;
	struct cqrs_err err = { 0 };
	char *answer = NULL, longpath[200];
	const char *line;
	size_t len;

	conninfo = daemon_gc(fixture_db_new(true));
	d = daemon_new_cmdd(conninfo, "bank");
	daemon_set(d, "cmd", "max_request_bytes", "4096");
	daemon_start(d);

	ck_assert_int_eq(cqrs_cmdclient_connect(daemon_socket(d), 5000, &c, &err), 0);
	ck_assert_int_eq(cqrs_cmdclient_call(c, open_line(new_id(), "cc1"), 5000, &answer, &err), 0);
	DAEMON_ASSERT_OK(answer);
	free(answer);
	/* a request already ending in a newline gets no second one */
	ck_assert_int_eq(cqrs_cmdclient_call(c, daemon_fmt("%s\n", deposit_line(new_id(), "cc1", 4)),
					5000, &answer, &err), 0);
	DAEMON_ASSERT_OK(answer);
	ck_assert_int_eq(daemon_answer_int(answer, "version"), 2);
	free(answer);
	/* nothing asked, nothing comes: a timeout, reported as unavailable */
	ck_assert_int_eq(cqrs_cmdclient_recv(c, 200, &line, &len, &err), CQRS_EUNAVAILABLE);
	ck_assert_msg(strstr(err.msg, "timed out") != NULL, "%s", err.msg);
	cqrs_cmdclient_free(c);
	c = NULL;

	/* pipelined through send/recv */
	ck_assert_int_eq(cqrs_cmdclient_connect(daemon_socket(d), 5000, &c, &err), 0);
	for (int i = 0; i < 50; i++) {
		const char *l = deposit_line(new_id(), "cc1", 1);
		ck_assert_int_eq(cqrs_cmdclient_send(c, l, strlen(l), 5000, &err), 0);
	}
	for (int i = 0; i < 50; i++) {
		ck_assert_int_eq(cqrs_cmdclient_recv(c, 5000, &line, &len, &err), 0);
		ck_assert_uint_eq(strlen(line), len);
		ck_assert_int_eq(daemon_answer_int(line, "version"), 3 + i);
	}
	/* an answer over the client's limit */
	cqrs_cmdclient_set_max_line(c, 50);
	ck_assert_int_eq(cqrs_cmdclient_call(c, deposit_line(new_id(), "cc1", 1), 5000, &answer, &err),
			 CQRS_ETOOLARGE);
	cqrs_cmdclient_free(c);
	c = NULL;

	/* the daemon closes after a framing error: the client says so */
	ck_assert_int_eq(cqrs_cmdclient_connect(daemon_socket(d), 5000, &c, &err), 0);
	ck_assert_int_eq(cqrs_cmdclient_call(c, padded_open(new_id(), "toolong", 5000), 5000, &answer,
					&err), 0);
	DAEMON_ASSERT_ERROR(answer, "too_large");
	free(answer);
	ck_assert_int_eq(cqrs_cmdclient_recv(c, 5000, &line, &len, &err), CQRS_EUNAVAILABLE);
	ck_assert_msg(strstr(err.msg, "closed") != NULL, "%s", err.msg);
	cqrs_cmdclient_free(c);
	c = NULL;

	/* nobody there, and a path that cannot be a socket address */
	ck_assert_int_eq(cqrs_cmdclient_connect(daemon_fmt("%s/none.sock", daemon_dir(d)), 1000, &c, &err),
			 CQRS_EUNAVAILABLE);
	ck_assert_msg(strstr(err.msg, daemon_fmt("%s/none.sock", daemon_dir(d))) != NULL, "%s",
		      err.msg);
	memset(longpath, 'x', sizeof(longpath) - 1);
	longpath[0] = '/';
	longpath[sizeof(longpath) - 1] = '\0';
	ck_assert_int_eq(cqrs_cmdclient_connect(longpath, 1000, &c, &err), CQRS_EINVALID);
	ck_assert_ptr_null(c);
	cqrs_cmdclient_free(NULL);

	/* the daemon goes away between two calls */
	ck_assert_int_eq(cqrs_cmdclient_connect(daemon_socket(d), 5000, &c, &err), 0);
	ck_assert_int_eq(daemon_stop(d), 0);
	ck_assert_int_eq(cqrs_cmdclient_call(c, deposit_line(new_id(), "cc1", 1), 5000, &answer, &err),
			 CQRS_EUNAVAILABLE);
	cqrs_cmdclient_free(c);
	daemon_free(d);
}
END_TEST

static Suite *
cmdd_protocol_suite(void)
{
	Suite *s = suite_create("cmdd_protocol");
	TCase *tc = tcase_create("protocol");

	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, ok_answers_have_the_documented_shape);
	tcase_add_test(tc, answers_echo_the_id_as_sent);
	tcase_add_test(tc, aggregate_id_charset_and_length);
	tcase_add_test(tc, malformed_requests_keep_the_connection);
	tcase_add_test(tc, blank_and_whitespace_around_requests);
	tcase_add_test(tc, too_large_answers_then_closes);
	tcase_add_test(tc, default_limit_is_one_mebibyte);
	tcase_add_test(tc, a_closing_connection_is_read_no_more);
	tcase_add_test(tc, invalid_utf8_answers_malformed_then_closes);
	tcase_add_test(tc, nul_characters_are_refused_not_truncated);
	tcase_add_test(tc, unknown_command);
	tcase_add_test(tc, invalid_payload_names_the_field);
	tcase_add_test(tc, rejected_by_domain_rules);
	tcase_add_test(tc, conflict_on_expected_version);
	tcase_add_test(tc, metadata_is_copied_with_correlation_and_causation);
	tcase_add_test(tc, pipelined_1000_answered_in_order);
	tcase_add_test(tc, pipelined_on_one_aggregate_versions_follow);
	tcase_add_test(tc, repeated_command_id_is_a_duplicate);
	tcase_add_test(tc, repeat_while_in_flight_gets_the_first_outcome);
	tcase_add_test(tc, cqrsctl_send_one);
	tcase_add_test(tc, cqrsctl_send_pipelined_from_stdin);
	tcase_add_test(tc, cqrsctl_send_when_the_daemon_closes);
	tcase_add_test(tc, cmdclient_against_the_daemon);
	suite_add_tcase(s, tc);

	tc = tcase_create("ids");
	tcase_set_timeout(tc, 120);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, command_id_reused_for_another_stream);
	tcase_add_test(tc, command_id_reused_for_another_command);
	tcase_add_test(tc, eventless_command_repeated_is_a_duplicate);
	suite_add_tcase(s, tc);

	tc = tcase_create("queue");
	tcase_set_timeout(tc, 300);
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, long_queue_on_one_aggregate_runs_without_recursion);
	tcase_add_test(tc, budgets_stop_reading_and_metrics_show_it);
	tcase_add_test(tc, unfinished_lines_keep_no_read_buffer);
	suite_add_tcase(s, tc);
	return s;
}

int
main(void)
{
	SRunner *sr = srunner_create(cmdd_protocol_suite());
	int failed;

	/* start (or find) the shared PostgreSQL here, not in each forked test */
	(void)fixture_pg_admin_conninfo();
	srunner_run_all(sr, CK_NORMAL);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed == 0 ? 0 : 1;
}
