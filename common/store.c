/*
 * store.c - the event store on PostgreSQL.
 *
 * All SQL is parameterized. The append is one call of cqrs.append() (see
 * sql/001_event_store.sql): one round trip, one transaction.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>
#include <libpq-fe.h>

#include "cqrs/log.h"
#include "envelope.h"
#include "migrations.h"
#include "store.h"
#include "uuid.h"

struct store {
	PGconn *pg;
	char *conninfo;
};

/* Advisory lock keys (two int4 form); the first half spells "CQRS". */
#define LOCK_CLASS 1129468499
#define LOCK_MIGRATE 1

static const char read_cols[] =
	"id, stream, version, position, type, data::text, metadata::text, "
	"to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
	"xid::text";

const char cqrs_store_read_all_sql[] =
	"SELECT id, stream, version, position, type, data::text, metadata::text, "
	"to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
	"xid::text FROM cqrs.events e "
	"WHERE (e.xid, e.position) > ($1::xid8, $2::bigint) "
	"AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) "
	/* qualified: a bare "xid" here is the text column of the select
	 * list, and "1000" sorts before "999" */
	"ORDER BY e.xid, e.position LIMIT $3";

int
cqrs_store_result_error(PGresult *res, PGconn *pg, const char *what, struct cqrs_err *err)
{
	const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	int code = CQRS_EINTERNAL;

	if (msg == NULL)
		msg = pg ? PQerrorMessage(pg) : "no answer from PostgreSQL (connection lost or timed out)";
	if ((pg != NULL && PQstatus(pg) == CONNECTION_BAD) || res == NULL) {
		code = CQRS_EUNAVAILABLE;
	} else if (state != NULL) {
		if (strncmp(state, "08", 2) == 0 || strcmp(state, "57P01") == 0 ||
		    strcmp(state, "57P02") == 0 || strcmp(state, "57P03") == 0 ||
		    strcmp(state, "53300") == 0)
			code = CQRS_EUNAVAILABLE;
		else if (strcmp(state, "CQ409") == 0 || strcmp(state, "40001") == 0 ||
			 strcmp(state, "40P01") == 0)
			code = CQRS_ECONFLICT;
		else if (strncmp(state, "22", 2) == 0 || strncmp(state, "23", 2) == 0 ||
			 strcmp(state, "CQ403") == 0)
			code = CQRS_EINVALID;
		else if (strcmp(state, "CQ422") == 0)
			code = CQRS_EIDREUSED;
	}
	/* libpq messages end with a newline */
	size_t len = strlen(msg);
	while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
		len--;
	return cqrs_err_set(err, code, "%s: %.*s", what, (int)len, msg);
}

/* Server notices ("already exists, skipping") go to the debug log. */
static void
notice_to_log(void *arg, const char *message)
{
	(void)arg;
	cqrs_log_debug(NULL, "PostgreSQL: %.*s", (int)strcspn(message, "\n"), message);
}

int
cqrs_store_connect(const char *conninfo, struct store **out, struct cqrs_err *err)
{
	struct store *st = calloc(1, sizeof(*st));

	if (st == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "store: out of memory");
	st->conninfo = strdup(conninfo ? conninfo : "");
	if (st->conninfo == NULL) {
		free(st);
		return cqrs_err_set(err, CQRS_ENOMEM, "store: out of memory");
	}
	st->pg = PQconnectdb(st->conninfo);
	if (st->pg == NULL || PQstatus(st->pg) != CONNECTION_OK) {
		int rc = cqrs_store_result_error(NULL, st->pg, "could not connect to PostgreSQL", err);
		cqrs_store_free(st);
		return rc;
	}
	PQsetNoticeProcessor(st->pg, notice_to_log, NULL);
	*out = st;
	return 0;
}

void
cqrs_store_free(struct store *st)
{
	if (st == NULL)
		return;
	PQfinish(st->pg);
	free(st->conninfo);
	free(st);
}

PGconn *
cqrs_store_pg(struct store *st)
{
	return st->pg;
}

int
cqrs_store_reset(struct store *st, struct cqrs_err *err)
{
	PQreset(st->pg);
	if (PQstatus(st->pg) != CONNECTION_OK)
		return cqrs_store_result_error(NULL, st->pg, "could not reconnect to PostgreSQL", err);
	return 0;
}

/* Runs one statement without parameters; TUPLES_OK or COMMAND_OK is fine. */
static int
exec_simple(PGconn *pg, const char *sql, const char *what, struct cqrs_err *err)
{
	PGresult *res = PQexec(pg, sql);
	ExecStatusType s = PQresultStatus(res);
	int rc = 0;

	if (s != PGRES_COMMAND_OK && s != PGRES_TUPLES_OK)
		rc = cqrs_store_result_error(res, pg, what, err);
	PQclear(res);
	return rc;
}

/* Applies one migration if it is not recorded yet; *done set when applied. */
static int
migrate_one(PGconn *pg, const struct migration *m, bool *done, struct cqrs_err *err)
{
	char vbuf[16];
	const char *params[2] = { vbuf, m->name };
	PGresult *res = NULL;
	int rc;

	*done = false;
	rc = exec_simple(pg, "BEGIN", "migrate: BEGIN", err);
	if (rc < 0)
		return rc;
	/* Serializes concurrent migrators; the schema and the bookkeeping table
	 * are created under the lock so two first runs do not race on them. */
	rc = exec_simple(pg, "SELECT pg_advisory_xact_lock(1129468499, 1)",
			 "migrate: lock", err);
	if (rc < 0)
		goto rollback;
	rc = exec_simple(pg,
			 "CREATE SCHEMA IF NOT EXISTS cqrs;"
			 "CREATE TABLE IF NOT EXISTS cqrs.migrations ("
			 " version int PRIMARY KEY, name text NOT NULL,"
			 " applied_at timestamptz NOT NULL DEFAULT now())",
			 "migrate: bookkeeping", err);
	if (rc < 0)
		goto rollback;
	snprintf(vbuf, sizeof(vbuf), "%d", m->version);
	res = PQexecParams(pg, "SELECT 1 FROM cqrs.migrations WHERE version = $1",
			   1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = cqrs_store_result_error(res, pg, "migrate: read cqrs.migrations", err);
		goto rollback;
	}
	if (PQntuples(res) == 0) {
		PQclear(res);
		res = PQexec(pg, m->sql);
		if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		    PQresultStatus(res) != PGRES_TUPLES_OK) {
			rc = cqrs_store_result_error(res, pg, "migrate", err);
			cqrs_err_prefix(err, "migration %s", m->name);
			goto rollback;
		}
		PQclear(res);
		res = PQexecParams(pg, "INSERT INTO cqrs.migrations (version, name) VALUES ($1, $2)",
				   2, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) != PGRES_COMMAND_OK) {
			rc = cqrs_store_result_error(res, pg, "migrate: record", err);
			goto rollback;
		}
		*done = true;
	}
	PQclear(res);
	res = NULL;
	rc = exec_simple(pg, "COMMIT", "migrate: COMMIT", err);
	if (rc < 0)
		*done = false;
	return rc;
rollback:
	PQclear(res);
	PQclear(PQexec(pg, "ROLLBACK"));
	return rc;
}

int
cqrs_store_migrate(struct store *st, int *applied, struct cqrs_err *err)
{
	int count = 0;

	for (int i = 0; i < cqrs_migrations_count; i++) {
		bool done;
		int rc = migrate_one(st->pg, &cqrs_migrations[i], &done, err);
		if (rc < 0)
			return rc;
		count += done;
	}
	if (applied != NULL)
		*applied = count;
	return 0;
}

/* ---- append ------------------------------------------------------------ */

void
cqrs_store_append_result_clear(struct store_append_result *r)
{
	if (r == NULL)
		return;
	free(r->events);
	memset(r, 0, sizeof(*r));
}

struct json_object *
cqrs_store_append_result_json(const char *id, const char *stream, const struct store_append_result *r)
{
	struct json_object *o = json_object_new_object();
	struct json_object *evs = json_object_new_array_ext((int)r->n);

	if (id != NULL)
		json_object_object_add(o, "id", json_object_new_string(id));
	json_object_object_add(o, "ok", json_object_new_boolean(1));
	json_object_object_add(o, "stream", json_object_new_string(stream));
	json_object_object_add(o, "version", json_object_new_int64(r->version));
	if (r->duplicate)
		json_object_object_add(o, "duplicate", json_object_new_boolean(1));
	for (size_t i = 0; i < r->n; i++) {
		struct json_object *e = json_object_new_object();
		json_object_object_add(e, "id", json_object_new_string(r->events[i].id));
		json_object_object_add(e, "type", json_object_new_string(r->events[i].type));
		json_object_object_add(e, "version", json_object_new_int64(r->events[i].version));
		json_object_object_add(e, "position", json_object_new_int64(r->events[i].position));
		json_object_array_add(evs, e);
	}
	json_object_object_add(o, "events", evs);
	return o;
}

void
cqrs_store_append_req_clear(struct store_append_req *req)
{
	if (req == NULL)
		return;
	free(req->events_json);
	memset(req, 0, sizeof(*req));
}

/* Parses text that must be one JSON object; *out gets a new reference. */
static int
parse_object(const char *text, const char *what, size_t idx,
	     struct json_object **out, struct cqrs_err *err)
{
	struct json_tokener *tok;
	struct json_object *obj;
	size_t len = strlen(text);

	if (len > CQRS_EVENT_MAX_BYTES)
		return cqrs_err_set(err, CQRS_EINVALID,
				    "event %zu: %s is %zu bytes, over the limit of %d",
				    idx, what, len, CQRS_EVENT_MAX_BYTES);
	tok = json_tokener_new();
	if (tok == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
	obj = json_tokener_parse_ex(tok, text, (int)len);
	if (obj == NULL || json_tokener_get_parse_end(tok) != len) {
		enum json_tokener_error je = json_tokener_get_error(tok);
		json_object_put(obj);
		json_tokener_free(tok);
		return cqrs_err_set(err, CQRS_EINVALID, "event %zu: %s is not valid JSON: %s",
				    idx, what,
				    je == json_tokener_success ? "trailing characters" :
				    json_tokener_error_desc(je));
	}
	json_tokener_free(tok);
	if (!json_object_is_type(obj, json_type_object)) {
		json_object_put(obj);
		return cqrs_err_set(err, CQRS_EINVALID, "event %zu: %s is not a JSON object",
				    idx, what);
	}
	*out = obj;
	return 0;
}

int
cqrs_store_append_prepare(struct store_append_req *req, const char *stream,
		     int64_t expected, const struct store_event_in *evs, size_t n,
		     const char *command_id, const char *command, struct cqrs_err *err)
{
	char *buf = NULL;
	size_t at = 0, cap = 0;
	int rc;

	memset(req, 0, sizeof(*req));
	if (stream == NULL || (rc = cqrs_envelope_check_stream(stream, err)) < 0)
		return stream ? rc : cqrs_err_set(err, CQRS_EINVALID, "stream is missing");
	if (expected < STORE_ANY || expected > INT32_MAX)
		return cqrs_err_set(err, CQRS_EINVALID,
				    "expected version %" PRId64 " is out of range", expected);
	if (command_id != NULL && !cqrs_uuid_valid(command_id))
		return cqrs_err_set(err, CQRS_EINVALID, "command id \"%.64s\" is not a UUID",
				    command_id);
	if (n > CQRS_APPEND_MAX_EVENTS)
		return cqrs_err_set(err, CQRS_EINVALID,
				    "%zu events in one append, over the limit of %d",
				    n, CQRS_APPEND_MAX_EVENTS);

	for (size_t i = 0; i < n; i++) {
		const struct store_event_in *e = &evs[i];
		struct json_object *o = NULL, *data = NULL, *meta = NULL;
		char idbuf[UUID_STR_LEN];
		const char *text;
		size_t bytes, len;

		if (e->id != NULL && !cqrs_uuid_valid(e->id)) {
			rc = cqrs_err_set(err, CQRS_EINVALID, "event %zu: id \"%.64s\" is not a UUID",
					  i, e->id);
			goto fail;
		}
		if (e->type == NULL) {
			rc = cqrs_err_set(err, CQRS_EINVALID, "event %zu: type is missing", i);
			goto fail;
		}
		if ((rc = cqrs_envelope_check_type("event type", e->type, err)) < 0) {
			cqrs_err_prefix(err, "event %zu", i);
			goto fail;
		}
		if (e->data_obj != NULL) {
			if (!json_object_is_type(e->data_obj, json_type_object)) {
				rc = cqrs_err_set(err, CQRS_EINVALID,
						  "event %zu: data is not a JSON object", i);
				goto fail;
			}
			data = json_object_get(e->data_obj);
		} else if (e->data != NULL) {
			if ((rc = parse_object(e->data, "data", i, &data, err)) < 0)
				goto fail;
		} else {
			rc = cqrs_err_set(err, CQRS_EINVALID, "event %zu: data is missing", i);
			goto fail;
		}
		if (e->metadata_obj != NULL) {
			if (!json_object_is_type(e->metadata_obj, json_type_object)) {
				json_object_put(data);
				rc = cqrs_err_set(err, CQRS_EINVALID,
						  "event %zu: metadata is not a JSON object", i);
				goto fail;
			}
			meta = json_object_get(e->metadata_obj);
		} else if (e->metadata != NULL) {
			if ((rc = parse_object(e->metadata, "metadata", i, &meta, err)) < 0) {
				json_object_put(data);
				goto fail;
			}
		} else {
			meta = json_object_new_object();
		}
		if (e->id == NULL)
			cqrs_uuid_v7(idbuf);
		o = json_object_new_object();
		if (o == NULL) {
			json_object_put(data);
			json_object_put(meta);
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto fail;
		}
		json_object_object_add(o, "id", json_object_new_string(e->id ? e->id : idbuf));
		json_object_object_add(o, "type", json_object_new_string(e->type));
		json_object_object_add(o, "data", data);
		json_object_object_add(o, "metadata", meta);
		/* written once, here: its text (json-c keeps it on o, ours, not
		 * on the caller's data and metadata) is the size and the part */
		text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN |
						      JSON_C_TO_STRING_NOSLASHESCAPE);
		len = strlen(text);
		/* {"id":"…","type":"…","data":…,"metadata":…}: the type needs no escape */
		bytes = len - 39 - strlen(e->id ? e->id : idbuf) - strlen(e->type);
		if (bytes > CQRS_EVENT_MAX_BYTES) {
			json_object_put(o);
			rc = cqrs_err_set(err, CQRS_EINVALID,
					  "event %zu: data and metadata are %zu bytes, over the limit of %d",
					  i, bytes, CQRS_EVENT_MAX_BYTES);
			goto fail;
		}
		if (at + len + 3 > cap) {	/* with its comma, and "]" and NUL after */
			size_t ncap = cap * 2 > at + len + 3 ? cap * 2 : at + len + 3;
			char *nbuf = realloc(buf, ncap);
			if (nbuf == NULL) {
				json_object_put(o);
				rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
				goto fail;
			}
			buf = nbuf;
			cap = ncap;
		}
		buf[at++] = i == 0 ? '[' : ',';
		memcpy(buf + at, text, len);
		at += len;
		json_object_put(o);
	}
	if (n == 0) {
		if (cap < 3) {
			char *nbuf = realloc(buf, 3);
			if (nbuf == NULL) {
				rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
				goto fail;
			}
			buf = nbuf;
		}
		buf[at++] = '[';
	}
	buf[at++] = ']';
	buf[at] = '\0';
	req->events_json = buf;
	buf = NULL;
	snprintf(req->expected, sizeof(req->expected), "%" PRId64, expected);
	req->values[0] = stream;
	req->values[1] = req->expected;
	req->values[2] = command_id;
	req->values[3] = req->events_json;
	req->values[4] = command;
	return 0;
fail:
	free(buf);
	return rc;
}

int
cqrs_store_append_parse(PGresult *res, PGconn *pg, const char *stream,
		   struct store_append_result *r, struct cqrs_err *err)
{
	int rows;

	memset(r, 0, sizeof(*r));
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		int rc = cqrs_store_result_error(res, pg, "append", err);
		if (rc == CQRS_ECONFLICT) {
			const char *detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
			r->version = detail ? strtoll(detail, NULL, 10) : -1;
		} else {
			cqrs_err_prefix(err, "stream \"%s\"", stream);
		}
		return rc;
	}
	rows = PQntuples(res);
	if (rows == 1 && PQgetisnull(res, 0, 0)) {
		/* a recorded command id whose command appended no events */
		r->duplicate = true;
		r->version = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
		return 0;
	}
	if (rows > 0) {
		r->events = calloc((size_t)rows, sizeof(*r->events));
		if (r->events == NULL)
			return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	}
	r->n = (size_t)rows;
	for (int i = 0; i < rows; i++) {
		struct store_written *w = &r->events[i];
		snprintf(w->id, sizeof(w->id), "%s", PQgetvalue(res, i, 0));
		w->version = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		w->position = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		snprintf(w->type, sizeof(w->type), "%s", PQgetvalue(res, i, 3));
		r->duplicate = PQgetvalue(res, i, 4)[0] == 't';
		r->version = w->version;
	}
	return 0;
}

/* One command of a batch: {"stream","expected","id"?,"command"?,"events"}. */
static size_t
batch_item(char *out, const struct store_append_req *req)
{
	size_t n = 0;

#define PUT(text)                                                                         \
	do {                                                                              \
		size_t l_ = strlen(text);                                                 \
		if (out != NULL)                                                          \
			memcpy(out + n, text, l_);                                        \
		n += l_;                                                                  \
	} while (0)
	PUT("{\"stream\":");
	n += cqrs_json_quote(out ? out + n : NULL, req->values[0]);
	PUT(",\"expected\":");
	PUT(req->values[1]);
	if (req->values[2] != NULL) {
		PUT(",\"id\":");
		n += cqrs_json_quote(out ? out + n : NULL, req->values[2]);
	}
	if (req->values[4] != NULL) {
		PUT(",\"command\":");
		n += cqrs_json_quote(out ? out + n : NULL, req->values[4]);
	}
	PUT(",\"events\":");
	PUT(req->values[3]);
	PUT("}");
#undef PUT
	return n;
}

char *
cqrs_store_batch_json(const struct store_append_req *const *reqs, size_t n, size_t *len)
{
	size_t size = 2, at = 0;
	char *out;

	for (size_t i = 0; i < n; i++)
		size += batch_item(NULL, reqs[i]) + 1;
	out = malloc(size + 1);
	if (out == NULL)
		return NULL;
	out[at++] = '[';
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			out[at++] = ',';
		at += batch_item(out + at, reqs[i]);
	}
	out[at++] = ']';
	out[at] = '\0';
	if (len != NULL)
		*len = at;
	return out;
}

int
cqrs_store_batch_parse(PGresult *res, PGconn *pg, struct store_batch_outcome *out, size_t n,
		       struct cqrs_err *err)
{
	int rows, rc = 0;
	size_t *count;

	for (size_t i = 0; i < n; i++)
		memset(&out[i], 0, sizeof(out[i]));
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK)
		return cqrs_store_result_error(res, pg, "batch append", err);
	rows = PQntuples(res);
	count = calloc(n ? n : 1, sizeof(*count));
	if (count == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	/* the rows of each command, to size its events */
	for (int r = 0; r < rows; r++) {
		long k = strtol(PQgetvalue(res, r, 0), NULL, 10);
		if (k < 1 || (size_t)k > n) {
			rc = cqrs_err_set(err, CQRS_EINTERNAL, "batch append: row for command %ld of %zu",
					  k, n);
			goto out;
		}
		count[k - 1]++;
	}
	for (size_t i = 0; i < n; i++) {
		if (count[i] == 0) {
			out[i].rc = cqrs_err_set(&out[i].err, CQRS_EINTERNAL,
						 "batch append: no outcome for this command");
			continue;
		}
		out[i].result.events = calloc(count[i], sizeof(*out[i].result.events));
		if (out[i].result.events == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto out;
		}
	}
	for (int r = 0; r < rows; r++) {
		struct store_batch_outcome *o = &out[strtol(PQgetvalue(res, r, 0), NULL, 10) - 1];
		const char *status = PQgetvalue(res, r, 1);
		const char *detail = PQgetvalue(res, r, 6);
		int64_t version = PQgetisnull(res, r, 3) ? -1 : strtoll(PQgetvalue(res, r, 3), NULL, 10);

		if (strcmp(status, "ok") == 0 || strcmp(status, "duplicate") == 0) {
			o->result.duplicate = status[0] == 'd';
			o->result.version = version;
			if (PQgetisnull(res, r, 2))
				continue;	/* a command that wrote no event */
			struct store_written *w = &o->result.events[o->result.n++];
			snprintf(w->id, sizeof(w->id), "%s", PQgetvalue(res, r, 2));
			w->version = version;
			w->position = strtoll(PQgetvalue(res, r, 4), NULL, 10);
			snprintf(w->type, sizeof(w->type), "%s", PQgetvalue(res, r, 5));
		} else if (strcmp(status, "conflict") == 0) {
			o->result.version = version;
			o->rc = cqrs_err_set(&o->err, CQRS_ECONFLICT, "%s", detail);
		} else if (strcmp(status, "id_reused") == 0) {
			o->rc = cqrs_err_set(&o->err, CQRS_EIDREUSED, "%s", detail);
		} else {
			o->rc = cqrs_err_set(&o->err, CQRS_EINVALID, "append refused: %s", detail);
		}
	}
out:
	free(count);
	if (rc != 0)
		for (size_t i = 0; i < n; i++)
			cqrs_store_append_result_clear(&out[i].result);
	return rc;
}

/* The current version of a stream, for an append that wrote no events. */
static int
stream_version(PGconn *pg, const char *stream, int64_t *out, struct cqrs_err *err)
{
	const char *params[1] = { stream };
	PGresult *res = PQexecParams(pg,
		"SELECT coalesce(max(version), 0) FROM cqrs.events WHERE stream = $1",
		1, NULL, params, NULL, NULL, 0);
	int rc = 0;

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = cqrs_store_result_error(res, pg, "read stream version", err);
	else
		*out = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return rc;
}

int
cqrs_store_append(struct store *st, const char *stream, int64_t expected,
	     const struct store_event_in *evs, size_t n, const char *command_id,
	     struct store_append_result *r, struct cqrs_err *err)
{
	struct store_append_req req;
	PGresult *res;
	int rc;

	memset(r, 0, sizeof(*r));
	rc = cqrs_store_append_prepare(&req, stream, expected, evs, n, command_id, NULL, err);
	if (rc < 0)
		return rc;
	res = PQexecParams(st->pg, STORE_APPEND_SQL, STORE_APPEND_NPARAMS, NULL,
			   req.values, NULL, NULL, 0);
	rc = cqrs_store_append_parse(res, st->pg, stream, r, err);
	PQclear(res);
	cqrs_store_append_req_clear(&req);
	if (rc == 0 && r->n == 0 && !r->duplicate)
		rc = stream_version(st->pg, stream, &r->version, err);
	return rc;
}

/* ---- reading ----------------------------------------------------------- */

int
cqrs_store_checkpoint_parse(const char *s, struct store_checkpoint *out, struct cqrs_err *err)
{
	unsigned long long xid;
	long long pos;
	char *end;

	if (s == NULL || *s == '\0')
		return cqrs_err_set(err, CQRS_EINVALID, "checkpoint is empty");
	if (strcmp(s, "0") == 0) {
		*out = STORE_CHECKPOINT_START;
		return 0;
	}
	errno = 0;
	xid = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != ':' || s[0] == '-')
		goto bad;
	s = end + 1;
	pos = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || pos < 0)
		goto bad;
	out->xid = xid;
	out->position = pos;
	return 0;
bad:
	return cqrs_err_set(err, CQRS_EINVALID,
			    "checkpoint \"%.64s\" is not XID:POSITION (two integers) or 0", s);
}

void
cqrs_store_checkpoint_format(const struct store_checkpoint *cp, char *buf, size_t size)
{
	snprintf(buf, size, "%" PRIu64 ":%" PRId64, cp->xid, cp->position);
}

void
cqrs_store_events_clear(struct store_events *evs)
{
	if (evs == NULL)
		return;
	for (size_t i = 0; i < evs->n; i++)
		cqrs_event_free(evs->ev[i]);
	free(evs->ev);
	free(evs->at);
	memset(evs, 0, sizeof(*evs));
}

int
cqrs_store_events_parse(PGresult *res, struct store_events *out, struct cqrs_err *err)
{
	int rows = PQntuples(res);

	memset(out, 0, sizeof(*out));
	if (rows == 0)
		return 0;
	out->ev = calloc((size_t)rows, sizeof(*out->ev));
	out->at = calloc((size_t)rows, sizeof(*out->at));
	if (out->ev == NULL || out->at == NULL) {
		cqrs_store_events_clear(out);
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	}
	for (int i = 0; i < rows; i++) {
		struct json_object *data = json_tokener_parse(PQgetvalue(res, i, 5));
		struct json_object *meta = json_tokener_parse(PQgetvalue(res, i, 6));
		struct cqrs_event *ev = NULL;

		if (data != NULL && meta != NULL)
			ev = cqrs_event_new(PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
				       strtoll(PQgetvalue(res, i, 2), NULL, 10),
				       strtoll(PQgetvalue(res, i, 3), NULL, 10),
				       PQgetvalue(res, i, 4), data, meta, PQgetvalue(res, i, 7));
		json_object_put(data);
		json_object_put(meta);
		if (ev == NULL) {
			cqrs_store_events_clear(out);
			return cqrs_err_set(err, CQRS_ENOMEM, "reading event %d: out of memory", i);
		}
		out->ev[i] = ev;
		out->at[i].xid = strtoull(PQgetvalue(res, i, 8), NULL, 10);
		out->at[i].position = ev->position;
		out->n++;
	}
	return 0;
}

static int
read_events(struct store *st, const char *sql, int nparams, const char *const *params,
	    const char *what, struct store_events *out, struct cqrs_err *err)
{
	PGresult *res = PQexecParams(st->pg, sql, nparams, NULL, params, NULL, NULL, 0);
	int rc;

	if (PQresultStatus(res) != PGRES_TUPLES_OK)
		rc = cqrs_store_result_error(res, st->pg, what, err);
	else
		rc = cqrs_store_events_parse(res, out, err);
	PQclear(res);
	return rc;
}

int
cqrs_store_read_stream(struct store *st, const char *stream, int64_t from_version,
		  int limit, struct store_events *out, struct cqrs_err *err)
{
	char from[24], lim[16];
	const char *params[3] = { stream, from, lim };
	char sql[512];
	int rc;

	memset(out, 0, sizeof(*out));
	if (stream == NULL)
		return cqrs_err_set(err, CQRS_EINVALID, "stream is missing");
	if ((rc = cqrs_envelope_check_stream(stream, err)) < 0)
		return rc;
	if (limit < 1 || limit > 10000)
		return cqrs_err_set(err, CQRS_EINVALID, "limit %d is not in 1..10000", limit);
	snprintf(from, sizeof(from), "%" PRId64, from_version < 1 ? 1 : from_version);
	snprintf(lim, sizeof(lim), "%d", limit);
	snprintf(sql, sizeof(sql), "SELECT %s FROM cqrs.events WHERE stream = $1 "
		 "AND version >= $2 ORDER BY version LIMIT $3", read_cols);
	rc = read_events(st, sql, 3, params, "read stream", out, err);
	if (rc < 0)
		cqrs_err_prefix(err, "stream \"%s\"", stream);
	return rc;
}

int
cqrs_store_read_all(struct store *st, const struct store_checkpoint *after, int limit,
	       struct store_events *out, struct cqrs_err *err)
{
	char xid[24], pos[24], lim[16];
	const char *params[3] = { xid, pos, lim };

	memset(out, 0, sizeof(*out));
	if (limit < 1 || limit > 10000)
		return cqrs_err_set(err, CQRS_EINVALID, "limit %d is not in 1..10000", limit);
	snprintf(xid, sizeof(xid), "%" PRIu64, after->xid);
	snprintf(pos, sizeof(pos), "%" PRId64, after->position);
	snprintf(lim, sizeof(lim), "%d", limit);
	return read_events(st, cqrs_store_read_all_sql, 3, params, "read all", out, err);
}
