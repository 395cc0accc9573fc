/*
 * apply.c - one PostgreSQL transaction for a batch of events: the heart of
 * "each event takes effect exactly once and in stream order" (DESIGN.md,
 * "Delivery guarantees").
 *
 * In one transaction:
 *  1. (live) take the consumer's lock in shared mode without waiting, and
 *     check that it is live: a replay or catch-up holds it exclusively while
 *     it feeds the store to the handlers, and live batches must not
 *     interleave with that; and read the store's copy of every delivery (by
 *     id, stream and version, one query): that copy, not the message's
 *     body, is what the handlers get, and a delivery the store does not
 *     hold is dead-lettered;
 *  2. lock this consumer's row of every stream in the batch (SELECT ... FOR
 *     UPDATE, in stream order so two competing consumers lock in the same
 *     order; rows missing are inserted at version 0 first). This serializes
 *     competing consumers per stream and gives each stream's last handled
 *     version;
 *  3. for each event, in order: a version not above the stream's is a
 *     duplicate (a redelivery, or an event a competitor or a catch-up already
 *     handled): skip it. A version more than one above it means earlier
 *     events may be missing (out-of-order delivery, a competitor holding
 *     them): read the stream's events between the two from the store, only
 *     of the types this consumer handles (one read on the index
 *     events_stream_type_version), and handle them first. Then run every
 *     matching handler with the transaction in its context;
 *  4. record the new versions (and, catching up, the checkpoint); COMMIT.
 * The caller acks only after the COMMIT. A redelivery after a crash between
 * the two finds its version recorded: a duplicate.
 *
 * A handler must leave the transaction open: one that commits or rolls it
 * back fails its event (checked after every handler call).
 *
 * A handler that asks for a retry or fails rolls the whole batch back;
 * apply_all() then handles the events before it again without it, reports
 * it, and goes on after it. Later events of the same stream fetch it from the
 * store as missing and so share its fate: a stream never skips an event.
 */
#include <ctype.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <json-c/json.h>

#include "clock.h"
#include "consumer.h"
#include "envelope.h"
#include "hmap.h"
#include "store.h"

#define SQL_LOCK_LIVE                                                                     \
	"SELECT pg_try_advisory_xact_lock_shared(1129468501, hashtext($1)), c.live, "      \
	"coalesce(c.since_position, 0) FROM (SELECT 1) AS one "                            \
	"LEFT JOIN cqrs.consumers c ON c.name = $1"
#define SQL_SELECT_STREAMS                                                                \
	"SELECT stream, version FROM cqrs.consumer_streams "                               \
	"WHERE consumer = $1 AND stream = ANY($2::text[]) ORDER BY stream FOR UPDATE"
#define SQL_INSERT_STREAMS                                                                \
	"INSERT INTO cqrs.consumer_streams (consumer, stream, version) "                   \
	"SELECT $1, s, 0 FROM unnest($2::text[]) AS s ORDER BY s ON CONFLICT DO NOTHING"
#define SQL_UPDATE_STREAMS                                                                \
	"UPDATE cqrs.consumer_streams AS cs SET version = v.version "                      \
	"FROM unnest($2::text[], $3::int[]) AS v(stream, version) "                        \
	"WHERE cs.consumer = $1 AND cs.stream = v.stream"
#define SQL_CHECKPOINT                                                                    \
	"UPDATE cqrs.consumers SET xid = $2::xid8, position = $3::bigint, "                \
	"updated_at = clock_timestamp() WHERE name = $1"
#define EVENT_COLS                                                                        \
	"id, stream, version, position, type, data::text, metadata::text, "                \
	"to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "     \
	"xid::text"
/* The store's copy of the delivered events: a delivery that is not there
 * comes from another store publishing to the same exchange (one RabbitMQ
 * vhost per store), or from someone else, and must not touch the read
 * models; one that is there is handled as the store has it, whatever its
 * body says. One read on the id's index for the batch. */
#define SQL_STORED                                                                        \
	"SELECT " EVENT_COLS " FROM cqrs.events WHERE (id, stream, version) IN "            \
	"(SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[]))"
/* Whether the transaction a handler ended was committed or rolled back. */
#define SQL_XACT_STATUS "SELECT pg_xact_status($1::xid8)"
#define SQL_MISSING_TYPES                                                                 \
	"SELECT " EVENT_COLS " FROM cqrs.events WHERE stream = $1 AND type = ANY($5::text[]) " \
	"AND version > $2 AND version < $3 AND position > $4 ORDER BY version"
#define SQL_MISSING_ALL                                                                   \
	"SELECT " EVENT_COLS " FROM cqrs.events WHERE stream = $1 "                        \
	"AND version > $2 AND version < $3 AND position > $4 ORDER BY version"

/* ---- PostgreSQL session ------------------------------------------------------------ */

#define REPEAT_LOG_MS 30000

/* Server notices ("relation ... already exists, skipping" from a handler's
 * CREATE TABLE IF NOT EXISTS) go to the debug log, not to stderr raw. */
static void
notice_to_log(void *arg, const char *message)
{
	struct consumer *c = arg;

	cqrs_log_debug(&c->log, "PostgreSQL: %.*s", (int)strcspn(message, "\n"), message);
}

int
consumer_pg_open(struct consumer *c)
{
	/* Defaults first, then the user's conninfo (expanded from "dbname"),
	 * then application_name, which names us in pg_stat_activity. */
	const char *keys[] = { CQRS_PG_DEFAULT_KEYS, "dbname", "application_name", NULL };
	const char *vals[] = { CQRS_PG_DEFAULT_VALUES, c->cfg->conninfo, c->app, NULL };
	char msg[CQRS_ERR_MSG_MAX];
	int64_t now = cqrs_now_ms();

	consumer_pg_close(c);
	c->pg = PQconnectdbParams(keys, vals, 1);
	if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
		const char *m = c->pg != NULL ? PQerrorMessage(c->pg) : "out of memory";
		size_t len = strcspn(m, "\n");

		snprintf(msg, sizeof(msg), "%.*s", (int)len, m);
		/* one line per outage, repeated now and then, not per attempt */
		if (strcmp(msg, c->pg_last_err) != 0 || now - c->pg_last_log >= REPEAT_LOG_MS) {
			cqrs_log_error(&c->log, "cannot connect to PostgreSQL: %s (retrying)", msg);
			c->pg_last_log = now;
		}
		snprintf(c->pg_last_err, sizeof(c->pg_last_err), "%s", msg);
		consumer_pg_close(c);
		return CQRS_EUNAVAILABLE;
	}
	PQsetNoticeProcessor(c->pg, notice_to_log, c);
	atomic_store(&c->stats.pg_up, true);
	if (c->pg_last_err[0] != '\0' || c->pg_lost)
		cqrs_log_info(&c->log, "connected to PostgreSQL again");
	c->pg_last_err[0] = '\0';
	c->pg_lost = false;
	return 0;
}

void
consumer_pg_close(struct consumer *c)
{
	if (c->pg != NULL)
		PQfinish(c->pg);
	c->pg = NULL;
	atomic_store(&c->stats.pg_up, false);
}

int
consumer_exec(struct consumer *c, const char *what, const char *sql, int n,
	      const char *const *params, ExecStatusType want, PGresult **out, struct cqrs_err *err)
{
	PGresult *res;
	int rc;

	if (out != NULL)
		*out = NULL;
	if (c->pg == NULL)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "%s: not connected to PostgreSQL", what);
	res = PQexecParams(c->pg, sql, n, NULL, params, NULL, NULL, 0);
	if (res == NULL || PQresultStatus(res) != want) {
		rc = cqrs_store_result_error(res, c->pg, what, err);
		PQclear(res);
		if (rc == CQRS_EUNAVAILABLE) {
			consumer_pg_close(c);
			c->pg_lost = true;
		}
		return rc;
	}
	if (out != NULL)
		*out = res;
	else
		PQclear(res);
	return 0;
}

static void
rollback(struct consumer *c)
{
	if (c->pg == NULL)
		return;
	/* a handler that left a query running: the session cannot be trusted */
	if (PQstatus(c->pg) != CONNECTION_OK || PQtransactionStatus(c->pg) == PQTRANS_ACTIVE) {
		consumer_pg_close(c);
		c->pg_lost = true;
		return;
	}
	PQclear(PQexec(c->pg, "ROLLBACK"));
}

/*
 * Statements sent together, in one round trip (libpq's pipeline mode): the
 * bookkeeping around the handlers costs two round trips a batch, not six.
 * At a low rate a batch is one event, and these are most of its latency.
 */
struct step {
	const char *what;
	const char *sql;
	int n;
	const char *const *params;
	ExecStatusType want;
	bool keep;			/* keep the result in res (the caller clears it) */
	PGresult *res;
};

/* 0, or the first step's error (the later steps are skipped by the server;
 * a transaction begun is then aborted: rollback()). */
static int
pipeline(struct consumer *c, struct step *steps, size_t n, struct cqrs_err *err)
{
	PGconn *pg = c->pg;
	PGresult *res;
	int rc = 0;

	if (pg == NULL)
		return cqrs_err_set(err, CQRS_EUNAVAILABLE, "%s: not connected to PostgreSQL",
				    steps[0].what);
	if (PQenterPipelineMode(pg) != 1)
		goto lost;
	for (size_t i = 0; i < n; i++)
		if (PQsendQueryParams(pg, steps[i].sql, steps[i].n, NULL, steps[i].params, NULL,
				      NULL, 0) != 1)
			goto lost;
	if (PQpipelineSync(pg) != 1)
		goto lost;
	for (size_t i = 0; i < n; i++) {
		res = PQgetResult(pg);
		if (res == NULL)
			goto lost;
		if (rc == 0 && PQresultStatus(res) != steps[i].want) {
			rc = cqrs_store_result_error(res, pg, steps[i].what, err);
			PQclear(res);
		} else if (rc == 0 && steps[i].keep) {
			steps[i].res = res;
		} else {
			PQclear(res);
		}
		/* each statement's results end with a NULL */
		while ((res = PQgetResult(pg)) != NULL)
			PQclear(res);
	}
	res = PQgetResult(pg);
	if (res == NULL || PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
		PQclear(res);
		goto lost;
	}
	PQclear(res);
	if (PQexitPipelineMode(pg) != 1)
		goto lost;
	if (rc == CQRS_EUNAVAILABLE)
		goto lost;
	return rc;
lost:
	for (size_t i = 0; i < n; i++) {
		PQclear(steps[i].res);
		steps[i].res = NULL;
	}
	rc = cqrs_store_result_error(NULL, pg, steps[0].what, err);
	consumer_pg_close(c);
	c->pg_lost = true;
	return rc == CQRS_EUNAVAILABLE ? rc : CQRS_EUNAVAILABLE;
}

/* ---- text arrays ------------------------------------------------------------------- */

struct buf {
	char *s;
	size_t len, cap;
	bool nomem;
};

static void
buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->nomem)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = (b->len + n + 1) * 2;
		char *p = realloc(b->s, cap);

		if (p == NULL) {
			b->nomem = true;
			return;
		}
		b->s = p;
		b->cap = cap;
	}
	memcpy(b->s + b->len, s, n);
	b->len += n;
	b->s[b->len] = '\0';
}

/* Appends s as a quoted element of a PostgreSQL array literal. */
static void
buf_elem(struct buf *b, const char *s)
{
	buf_add(b, b->len > 1 ? ",\"" : "\"", b->len > 1 ? 2 : 1);
	for (const char *p = s; *p != '\0'; p++) {
		if (*p == '"' || *p == '\\')
			buf_add(b, "\\", 1);
		buf_add(b, p, 1);
	}
	buf_add(b, "\"", 1);
}

/* ---- the batch's streams ----------------------------------------------------------- */

struct streams {
	struct hmap *index;		/* stream -> index + 1 */
	const char **name;		/* borrowed from the events */
	int64_t *version;
	bool *dirty;
	bool *known;			/* its row was read */
	size_t n;
};

static void
streams_free(struct streams *s)
{
	cqrs_hmap_free(s->index);
	free(s->name);
	free(s->version);
	free(s->dirty);
	free(s->known);
	memset(s, 0, sizeof(*s));
}

static long
streams_find(const struct streams *s, const char *stream)
{
	void *v = cqrs_hmap_get(s->index, stream);

	return v != NULL ? (long)((intptr_t)v - 1) : -1;
}

static int
streams_add(struct streams *s, const char *stream)
{
	if (streams_find(s, stream) >= 0)
		return 0;
	if (cqrs_hmap_put(s->index, stream, (void *)(intptr_t)(s->n + 1)) < 0)
		return -1;
	s->name[s->n] = stream;
	s->version[s->n] = 0;
	s->n++;
	return 0;
}

/* The streams as an array literal (malloc'd): all, or those without a row. */
static char *
stream_list(const struct streams *s, bool unknown_only, size_t *count)
{
	struct buf b = { 0 };

	*count = 0;
	buf_add(&b, "{", 1);
	for (size_t i = 0; i < s->n; i++) {
		if (unknown_only && s->known[i])
			continue;
		buf_elem(&b, s->name[i]);
		(*count)++;
	}
	buf_add(&b, "}", 1);
	if (b.nomem) {
		free(b.s);
		return NULL;
	}
	return b.s;
}

/* Marks the rows of a SQL_SELECT_STREAMS result known, with their versions. */
static void
read_rows(struct streams *s, PGresult *res)
{
	for (int i = 0; i < PQntuples(res); i++) {
		long k = streams_find(s, PQgetvalue(res, i, 0));

		if (k < 0)
			continue;
		s->version[k] = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		s->known[k] = true;
	}
}

/* Step 1's answer: 0, APPLY_BUSY or APPLY_NOT_LIVE. */
static int
live_state(struct consumer *c, PGresult *res)
{
	if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
		return APPLY_BUSY;
	if (PQgetisnull(res, 0, 1) || strcmp(PQgetvalue(res, 0, 1), "t") != 0)
		return APPLY_NOT_LIVE;
	c->since_position = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	return 0;
}

/* The array literals of SQL_STORED for the items marked mine (malloc'd). */
static int
known_params(const struct apply_item *items, const bool *mine, size_t n, char **ids,
	     char **streams, char **versions)
{
	struct buf a = { 0 }, b = { 0 }, v = { 0 };
	char num[24];
	size_t k = 0;

	buf_add(&a, "{", 1);
	buf_add(&b, "{", 1);
	buf_add(&v, "{", 1);
	for (size_t i = 0; i < n; i++) {
		if (!mine[i])
			continue;
		buf_elem(&a, items[i].ev->id);
		buf_elem(&b, items[i].ev->stream);
		snprintf(num, sizeof(num), "%s%" PRId64, k++ > 0 ? "," : "", items[i].ev->version);
		buf_add(&v, num, strlen(num));
	}
	buf_add(&a, "}", 1);
	buf_add(&b, "}", 1);
	buf_add(&v, "}", 1);
	*ids = a.s;
	*streams = b.s;
	*versions = v.s;
	if (a.nomem || b.nomem || v.nomem)
		return CQRS_ENOMEM;
	return 0;
}

/*
 * Steps 1 and 2: BEGIN, the transaction's id (c->xact), the lock (live), the
 * store's copy of the deliveries (live), and the rows of the batch's
 * streams, in one round trip when every row exists (the usual case); the
 * missing ones are then inserted and read (locked) again. *stored (live)
 * gets the events found, and *known maps their ids to them (borrowed from
 * *stored).
 */
static int
begin(struct consumer *c, enum apply_mode mode, struct streams *s,
      const struct apply_item *items, const bool *mine, size_t nitems,
      struct store_events *stored, struct hmap *known, struct cqrs_err *err)
{
	const char *name[1] = { c->cfg->name };
	const char *sel[2] = { c->cfg->name, NULL };
	const char *kp[3] = { NULL, NULL, NULL };
	struct step steps[5];		/* BEGIN, xact, lock, stored, streams */
	size_t n = 0, count, i_xact, i_lock = 0, i_sel = 0, i_known = 0;
	char *all = NULL, *missing = NULL, *ids = NULL, *streams = NULL, *versions = NULL;
	int rc;

	memset(steps, 0, sizeof(steps));
	steps[n++] = (struct step){ "BEGIN", "BEGIN", 0, NULL, PGRES_COMMAND_OK, false, NULL };
	/* the row locks below take a transaction id anyway: naming it costs
	 * nothing, and tells later whether a handler that ended the
	 * transaction committed it */
	i_xact = n;
	steps[n++] = (struct step){ "read the transaction's id",
				    "SELECT pg_current_xact_id()::text", 0, NULL, PGRES_TUPLES_OK,
				    true, NULL };
	if (mode == APPLY_LIVE) {
		i_lock = n;
		steps[n++] = (struct step){ "take the consumer's lock", SQL_LOCK_LIVE, 1, name,
					    PGRES_TUPLES_OK, true, NULL };
		if (s->n > 0) {
			if (known_params(items, mine, nitems, &ids, &streams, &versions) < 0) {
				rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
				goto out;
			}
			kp[0] = ids;
			kp[1] = streams;
			kp[2] = versions;
			i_known = n;
			steps[n++] = (struct step){ "read the deliveries from the store", SQL_STORED,
						    3, kp, PGRES_TUPLES_OK, true, NULL };
		}
	}
	if (s->n > 0) {
		if ((all = stream_list(s, false, &count)) == NULL) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto out;
		}
		sel[1] = all;
		i_sel = n;
		steps[n++] = (struct step){ "lock the consumer's streams", SQL_SELECT_STREAMS, 2,
					    sel, PGRES_TUPLES_OK, true, NULL };
	}
	rc = pipeline(c, steps, n, err);
	if (rc < 0)
		goto out;
	snprintf(c->xact, sizeof(c->xact), "%s",
		 PQntuples(steps[i_xact].res) == 1 ? PQgetvalue(steps[i_xact].res, 0, 0) : "");
	if (mode == APPLY_LIVE && (rc = live_state(c, steps[i_lock].res)) != 0)
		goto out;
	if (s->n == 0)
		goto out;
	if (mode == APPLY_LIVE) {
		if ((rc = cqrs_store_events_parse(steps[i_known].res, stored, err)) < 0)
			goto out;
		for (size_t i = 0; i < stored->n; i++)
			if (cqrs_hmap_put(known, stored->ev[i]->id, stored->ev[i]) < 0) {
				rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
				goto out;
			}
	}
	read_rows(s, steps[i_sel].res);
	if ((missing = stream_list(s, true, &count)) == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	if (count > 0) {
		PGresult *res;

		sel[1] = missing;
		rc = consumer_exec(c, "add the consumer's streams", SQL_INSERT_STREAMS, 2, sel,
				   PGRES_COMMAND_OK, NULL, err);
		if (rc < 0)
			goto out;
		/* a competitor may have created some of them meanwhile, and moved
		 * them on: read them again, now locked */
		rc = consumer_exec(c, "lock the consumer's streams", SQL_SELECT_STREAMS, 2, sel,
				   PGRES_TUPLES_OK, &res, err);
		if (rc < 0)
			goto out;
		read_rows(s, res);
		PQclear(res);
	}
	rc = 0;
out:
	for (size_t i = 0; i < n; i++)
		PQclear(steps[i].res);
	free(all);
	free(missing);
	free(ids);
	free(streams);
	free(versions);
	return rc;
}

/* Step 4: the new versions, the checkpoint (catching up), COMMIT: one round
 * trip. */
static int
finish(struct consumer *c, struct streams *s, const struct store_checkpoint *cp,
       struct cqrs_err *err)
{
	struct buf names = { 0 }, vers = { 0 };
	const char *upd[3], *chk[3];
	char num[24], xid[24], pos[24];
	struct step steps[3];
	size_t n = 0, dirty = 0;
	int rc;

	memset(steps, 0, sizeof(steps));
	buf_add(&names, "{", 1);
	buf_add(&vers, "{", 1);
	for (size_t i = 0; i < s->n; i++) {
		if (!s->dirty[i])
			continue;
		buf_elem(&names, s->name[i]);
		snprintf(num, sizeof(num), "%s%" PRId64, dirty > 0 ? "," : "", s->version[i]);
		buf_add(&vers, num, strlen(num));
		dirty++;
	}
	buf_add(&names, "}", 1);
	buf_add(&vers, "}", 1);
	if (names.nomem || vers.nomem) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	if (dirty > 0) {
		upd[0] = c->cfg->name;
		upd[1] = names.s;
		upd[2] = vers.s;
		steps[n++] = (struct step){ "record the streams' versions", SQL_UPDATE_STREAMS, 3,
					    upd, PGRES_COMMAND_OK, false, NULL };
	}
	if (cp != NULL) {
		snprintf(xid, sizeof(xid), "%" PRIu64, cp->xid);
		snprintf(pos, sizeof(pos), "%" PRId64, cp->position);
		chk[0] = c->cfg->name;
		chk[1] = xid;
		chk[2] = pos;
		steps[n++] = (struct step){ "move the checkpoint", SQL_CHECKPOINT, 3, chk,
					    PGRES_COMMAND_OK, false, NULL };
	}
	steps[n++] = (struct step){ "COMMIT", "COMMIT", 0, NULL, PGRES_COMMAND_OK, false, NULL };
	rc = pipeline(c, steps, n, err);
out:
	free(names.s);
	free(vers.s);
	return rc;
}

/* ---- handlers ---------------------------------------------------------------------- */

static const char *
meta_str(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v;

	if (ev->metadata != NULL && json_object_object_get_ex(ev->metadata, key, &v) &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

/*
 * Whether the consumer's transaction is still the open one after handler h:
 * a handler that COMMITs or ROLLBACKs it has undone the stream locks and
 * whatever bookkeeping came before, so nothing after it may go on in that
 * session as if in the batch's transaction (it would run in autocommit, and
 * the versions would be recorded outside the handlers' transaction). When it
 * is not, reason says why, naming the handler. A handler that does this
 * does it again on a retry, committing its writes again each time: such an
 * event fails (dead-lettered) at once rather than being retried.
 */
static bool
xact_open(struct consumer *c, const struct reg_handler *h, char *reason, size_t rsize)
{
	PGTransactionStatusType st = PQtransactionStatus(c->pg);
	const char *what = "left a statement running in", *more = "";
	PGresult *res = NULL;

	if (st == PQTRANS_INTRANS || st == PQTRANS_INERROR)
		return true;
	if (st == PQTRANS_IDLE) {
		const char *params[1] = { c->xact };

		what = "ended";
		if (c->xact[0] != '\0') {
			res = PQexecParams(c->pg, SQL_XACT_STATUS, 1, NULL, params, NULL, NULL, 0);
			if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
			    !PQgetisnull(res, 0, 0)) {
				if (strcmp(PQgetvalue(res, 0, 0), "committed") == 0) {
					what = "committed";
					more = " (what was written in it stays: this event's and "
					       "the batch's earlier events' effects, none of them "
					       "recorded as handled)";
				} else if (strcmp(PQgetvalue(res, 0, 0), "aborted") == 0) {
					what = "rolled back";
				}
			}
		}
	}
	snprintf(reason, rsize,
		 "handler \"%s\" of group \"%s\" (%s) %s the consumer's transaction; a "
		 "handler must leave it open%s",
		 h->pattern, h->group, h->plugin ? h->plugin : "?", what, more);
	PQclear(res);
	return false;
}

/* Runs every handler that wants ev. Returns APPLY_DONE, APPLY_RETRY or
 * APPLY_FAIL (reason set), or CQRS_EUNAVAILABLE when the session died. */
static int
run_handlers(struct consumer *c, const struct cqrs_event *ev, char *reason, size_t rsize)
{
	char key[CONSUMER_KEY_MAX];
	struct cqrs_log_ctx log = c->log;

	consumer_routing_key(ev, key, sizeof(key));
	log.stream = ev->stream;
	log.event_id = ev->id;
	log.correlation_id = meta_str(ev, "correlation_id");
	log.causation_id = meta_str(ev, "causation_id");
	for (size_t i = 0; i < c->n_handlers; i++) {
		const struct reg_handler *h = c->handlers[i];
		struct cqrs_event_ctx ctx;
		int r;

		if (!cqrs_routing_match(h->pattern, key))
			continue;
		/* A batch (a catch-up's is up to catchup_batch events) may take
		 * longer than the watchdog allows: ping between handlers. A
		 * handler stuck in its own code gets no ping, and should not. */
		consumer_watchdog(c);
		cqrs_event_ctx_init(&ctx, h, &log, (struct pg_conn *)c->pg, ev, &c->ops);
		{
			struct timespec t0, t1;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			r = h->fn(&ctx, ev);
			clock_gettime(CLOCK_MONOTONIC, &t1);
			cqrs_httpd_hist_observe_us(&c->stats.handler_time,
					      (uint64_t)((t1.tv_sec - t0.tv_sec) * 1000000 +
							 (t1.tv_nsec - t0.tv_nsec) / 1000));
		}
		if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK)
			return CQRS_EUNAVAILABLE;
		if (!xact_open(c, h, reason, rsize))
			return APPLY_FAIL;
		if (r == CQRS_HANDLED_OK) {
			/* a handler that ignored an error of its own statement: the
			 * transaction cannot commit; transient, as far as we know */
			if (PQtransactionStatus(c->pg) == PQTRANS_INERROR) {
				snprintf(reason, rsize,
					 "handler \"%s\" of group \"%s\" (%s) returned ok in an "
					 "aborted transaction: %.*s",
					 h->pattern, h->group, h->plugin ? h->plugin : "?",
					 (int)strcspn(PQerrorMessage(c->pg), "\n"),
					 PQerrorMessage(c->pg));
				return APPLY_RETRY;
			}
			continue;
		}
		if (r == CQRS_HANDLED_RETRY || r == CQRS_HANDLED_FAIL) {
			if (ctx.reason[0] != '\0')
				snprintf(reason, rsize, "%s", ctx.reason);
			else
				snprintf(reason, rsize, "handler \"%s\" of group \"%s\" (%s) %s",
					 h->pattern, h->group, h->plugin ? h->plugin : "?",
					 r == CQRS_HANDLED_RETRY ? "asked for a retry" : "failed");
			return r == CQRS_HANDLED_RETRY ? APPLY_RETRY : APPLY_FAIL;
		}
		snprintf(reason, rsize,
			 "handler \"%s\" of group \"%s\" (%s) returned %d, not a cqrs_handled",
			 h->pattern, h->group, h->plugin ? h->plugin : "?", r);
		return APPLY_FAIL;
	}
	return APPLY_DONE;
}

/*
 * The event types this consumer handles in streams of ev's aggregate type,
 * as an array literal; NULL in *out when a wildcard may match any of them
 * (then every event in the range is read and filtered here).
 */
static int
handled_types(const struct consumer *c, const struct cqrs_event *ev, char **out)
{
	char agg[CQRS_TYPE_MAX + 1];
	size_t alen;
	struct buf b = { 0 };

	*out = NULL;
	if (cqrs_envelope_stream_type(ev->stream, agg, sizeof(agg)) < 0)
		return 0;
	alen = strlen(agg);
	buf_add(&b, "{", 1);
	for (size_t i = 0; i < c->n_handlers; i++) {
		const char *p = c->handlers[i]->pattern;
		bool wild = strchr(p, '*') != NULL || strchr(p, '#') != NULL;

		if (!wild) {
			if (strncmp(p, agg, alen) == 0 && p[alen] == '.')
				buf_elem(&b, p + alen + 1);
			continue;
		}
		/* a wildcard pattern whose first word may be this type: all */
		if ((p[0] == '*' || p[0] == '#') && (p[1] == '.' || p[1] == '\0')) {
			free(b.s);
			return 0;
		}
		if (strncmp(p, agg, alen) == 0 && p[alen] == '.') {
			free(b.s);
			return 0;
		}
	}
	buf_add(&b, "}", 1);
	if (b.nomem) {
		free(b.s);
		return CQRS_ENOMEM;
	}
	*out = b.s;
	return 0;
}

/*
 * Reads the events of ev's stream after `after` and before ev that this
 * consumer handles, and handles them. Returns as run_handlers(), or a
 * negative code.
 */
static int
handle_missing(struct consumer *c, const struct cqrs_event *ev, int64_t after, char *reason,
	       size_t rsize, struct cqrs_err *err)
{
	char from[24], to[24], since[24];
	char *types = NULL;
	const char *params[5];
	struct store_events evs = { 0 };
	PGresult *res = NULL;
	int rc;

	if ((rc = handled_types(c, ev, &types)) < 0)
		return cqrs_err_set(err, rc, "out of memory");
	snprintf(from, sizeof(from), "%" PRId64, after);
	snprintf(to, sizeof(to), "%" PRId64, ev->version);
	snprintf(since, sizeof(since), "%" PRId64, c->since_position);
	params[0] = ev->stream;
	params[1] = from;
	params[2] = to;
	params[3] = since;
	params[4] = types;
	rc = consumer_exec(c, "read missing events", types != NULL ? SQL_MISSING_TYPES
								   : SQL_MISSING_ALL,
			   types != NULL ? 5 : 4, params, PGRES_TUPLES_OK, &res, err);
	free(types);
	if (rc < 0)
		return rc;
	rc = cqrs_store_events_parse(res, &evs, err);
	PQclear(res);
	if (rc < 0)
		return rc;
	rc = APPLY_DONE;
	for (size_t i = 0; i < evs.n; i++) {
		char key[CONSUMER_KEY_MAX];
		char why[400];

		consumer_routing_key(evs.ev[i], key, sizeof(key));
		if (!consumer_wants(c, key))
			continue;
		c->stats.fetched++;
		cqrs_log_debug(&c->log, "stream %s: handling version %" PRId64
				       " (missing before %" PRId64 ") from the store",
			       ev->stream, evs.ev[i]->version, ev->version);
		rc = run_handlers(c, evs.ev[i], why, sizeof(why));
		if (rc != APPLY_DONE) {
			if (rc == APPLY_RETRY || rc == APPLY_FAIL)
				snprintf(reason, rsize, "earlier event %s version %" PRId64
							" (%s, read from the store): %s",
					 ev->stream, evs.ev[i]->version, evs.ev[i]->id, why);
			break;
		}
	}
	cqrs_store_events_clear(&evs);
	return rc;
}

/* ---- the batch --------------------------------------------------------------------- */

/* The store's copy of a delivery, or NULL. The store prints ids in lower
 * case; a delivery may not. */
static const struct cqrs_event *
stored_copy(const struct hmap *known, const char *id)
{
	char low[64];
	size_t i;

	for (i = 0; id[i] != '\0' && i < sizeof(low) - 1; i++)
		low[i] = (char)tolower((unsigned char)id[i]);
	low[i] = '\0';
	return cqrs_hmap_get(known, low);
}

/* Says so when the delivered body is not the store's: someone edited or
 * forged it on the way. The store's copy is what is handled. */
static void
check_body(struct consumer *c, const struct cqrs_event *got, const struct cqrs_event *ev)
{
	const char *what = NULL;

	if (strcmp(got->type, ev->type) != 0)
		what = "type";
	else if (!json_object_equal(got->data, ev->data))
		what = "data";
	else if (got->metadata != NULL && ev->metadata != NULL &&
		 !json_object_equal(got->metadata, ev->metadata))
		what = "metadata";
	else if (got->position != ev->position)
		what = "position";
	if (what != NULL)
		cqrs_log_warn(&c->log, "delivered event %s (%s version %" PRId64 ", %s) differs "
				       "from the store's in its %s; handling the store's copy (%s)",
			      ev->id, ev->stream, ev->version, got->type, what, ev->type);
}

int
apply_batch(struct consumer *c, enum apply_mode mode, struct apply_item *items, size_t n,
	    const struct store_checkpoint *cp, size_t *at, struct cqrs_err *err)
{
	struct streams s = { 0 };
	struct store_events stored = { 0 };	/* the store's copy of the deliveries (live) */
	struct hmap *known = NULL;	/* id -> its event in stored */
	bool *mine = NULL;		/* pending on entry: ours to decide */
	char key[CONSUMER_KEY_MAX];
	int rc;

	*at = 0;
	mine = calloc(n > 0 ? n : 1, sizeof(*mine));
	known = cqrs_hmap_new();
	s.index = cqrs_hmap_new();
	s.name = calloc(n > 0 ? n : 1, sizeof(*s.name));
	s.version = calloc(n > 0 ? n : 1, sizeof(*s.version));
	s.dirty = calloc(n > 0 ? n : 1, sizeof(*s.dirty));
	s.known = calloc(n > 0 ? n : 1, sizeof(*s.known));
	if (mine == NULL || known == NULL || s.index == NULL || s.name == NULL ||
	    s.version == NULL || s.dirty == NULL || s.known == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (items[i].outcome != APPLY_PENDING)
			continue;
		consumer_routing_key(items[i].ev, key, sizeof(key));
		if (!consumer_wants(c, key)) {
			items[i].outcome = APPLY_IGNORED;
			continue;
		}
		mine[i] = true;
		if (streams_add(&s, items[i].ev->stream) < 0) {
			rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
			goto out;
		}
	}
	if (s.n == 0 && cp == NULL) {
		rc = 0;
		goto out;
	}

	if ((rc = begin(c, mode, &s, items, mine, n, &stored, known, err)) != 0)
		goto undo;
	for (size_t i = 0; i < n; i++) {
		struct apply_item *it = &items[i];
		const struct cqrs_event *ev = it->ev;
		long k;

		if (!mine[i])
			continue;
		k = streams_find(&s, it->ev->stream);
		if (mode == APPLY_LIVE && (ev = stored_copy(known, it->ev->id)) == NULL) {
			snprintf(it->reason, sizeof(it->reason),
				 "event %s (%s version %" PRId64 ") is not in this store: is a "
				 "tracker of another store publishing to the same exchange? (one "
				 "RabbitMQ vhost per store)",
				 it->ev->id, it->ev->stream, it->ev->version);
			it->outcome = APPLY_FAIL;
			*at = i;
			mine[i] = false;
			rc = APPLY_HANDLER;
			goto undo;
		}
		if (ev != it->ev) {
			check_body(c, it->ev, ev);
			consumer_routing_key(ev, key, sizeof(key));
			if (!consumer_wants(c, key)) {
				it->outcome = APPLY_IGNORED;
				continue;
			}
		}
		if (ev->version <= s.version[k]) {
			it->outcome = APPLY_DUPLICATE;
			continue;
		}
		rc = APPLY_DONE;
		/* catching up in commit-safe order, every earlier event of the
		 * stream came before: nothing can be missing */
		if (mode == APPLY_LIVE && ev->version > s.version[k] + 1)
			rc = handle_missing(c, ev, s.version[k], it->reason, sizeof(it->reason), err);
		if (rc == APPLY_DONE)
			rc = run_handlers(c, ev, it->reason, sizeof(it->reason));
		if (rc < 0) {
			/* run_handlers() leaves the dead session for rollback() */
			if (c->pg != NULL)
				cqrs_err_set(err, rc, "lost the PostgreSQL session in a handler: %.*s",
					     (int)strcspn(PQerrorMessage(c->pg), "\n"),
					     PQerrorMessage(c->pg));
			goto undo;
		}
		if (rc != APPLY_DONE) {
			it->outcome = rc;
			*at = i;
			mine[i] = false;	/* keeps its outcome */
			rc = APPLY_HANDLER;
			goto undo;
		}
		it->outcome = APPLY_DONE;
		s.version[k] = ev->version;
		s.dirty[k] = true;
	}
	rc = finish(c, &s, mode == APPLY_CATCHUP ? cp : NULL, err);
	if (rc < 0) {
		/* An error before COMMIT left the transaction aborted. A session
		 * that died (maybe after committing) leaves the outcome unknown:
		 * the events stay unacked and come again, as duplicates if the
		 * commit happened. */
		goto undo;
	}
	c->stats.batches++;
	for (size_t i = 0; i < n; i++) {
		if (!mine[i])
			continue;
		if (items[i].outcome == APPLY_DONE)
			c->stats.handled++;
		else if (items[i].outcome == APPLY_DUPLICATE)
			c->stats.duplicates++;
	}
	rc = 0;
	goto out;
undo:
	rollback(c);
	for (size_t i = 0; i < n; i++)
		if (mine[i])
			items[i].outcome = APPLY_PENDING;
out:
	free(mine);
	cqrs_hmap_free(known);
	cqrs_store_events_clear(&stored);
	streams_free(&s);
	return rc;
}

int
apply_all(struct consumer *c, enum apply_mode mode, struct apply_item *items, size_t n,
	  const struct store_checkpoint *cp, struct cqrs_err *err)
{
	size_t lo = 0, at;
	int rc;

	while (lo < n) {
		rc = apply_batch(c, mode, items + lo, n - lo, cp, &at, err);
		if (rc != APPLY_HANDLER)
			return rc;
		/* items[lo + at] is decided; the ones before it were rolled back
		 * with it: handle them without it, then go on after it */
		if (at > 0 && (rc = apply_all(c, mode, items + lo, at, NULL, err)) != 0)
			return rc;
		lo += at + 1;
	}
	return 0;
}

/* ---- reset ------------------------------------------------------------------------- */

#define SQL_CLEAR_STREAMS "DELETE FROM cqrs.consumer_streams WHERE consumer = $1"
#define SQL_CLEAR_STATE                                                                   \
	"INSERT INTO cqrs.consumers AS c (name, replays, replayed_at) "                    \
	"VALUES ($1, 1, clock_timestamp()) ON CONFLICT (name) DO UPDATE SET xid = '0', "    \
	"position = 0, live = false, since_position = 0, replays = c.replays + 1, "         \
	"replayed_at = clock_timestamp(), updated_at = clock_timestamp()"

int
apply_reset(struct consumer *c, struct cqrs_err *err)
{
	const char *params[1] = { c->cfg->name };
	int rc;

	if ((rc = consumer_exec(c, "BEGIN", "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL, err)) < 0)
		return rc;
	for (size_t i = 0; i < c->n_handlers; i++) {
		const struct reg_handler *h = c->handlers[i];
		struct cqrs_event_ctx ctx;
		bool seen = false;
		int r;

		if (h->reset == NULL)
			continue;
		/* one reset registered with several patterns runs once */
		for (size_t j = 0; j < i && !seen; j++)
			seen = c->handlers[j]->reset == h->reset &&
			       c->handlers[j]->plugin_state == h->plugin_state;
		if (seen)
			continue;
		consumer_watchdog(c);	/* as between handlers */
		cqrs_event_ctx_init(&ctx, h, &c->log, (struct pg_conn *)c->pg, NULL, &c->ops);
		r = h->reset(&ctx);
		if (c->pg == NULL || PQstatus(c->pg) != CONNECTION_OK) {
			consumer_pg_close(c);
			c->pg_lost = true;
			return cqrs_err_set(err, CQRS_EUNAVAILABLE,
					    "reset: lost the PostgreSQL session");
		}
		if (PQtransactionStatus(c->pg) != PQTRANS_INTRANS &&
		    PQtransactionStatus(c->pg) != PQTRANS_INERROR) {
			/* what it cleared may be committed without the rest */
			rc = cqrs_err_set(err, CQRS_EINTERNAL,
					  "the reset of group \"%s\" (%s, pattern \"%s\") ended "
					  "the consumer's transaction; a reset must leave it open",
					  h->group, h->plugin ? h->plugin : "?", h->pattern);
			rollback(c);
			return rc;
		}
		if (r != CQRS_HANDLED_OK || PQtransactionStatus(c->pg) == PQTRANS_INERROR) {
			rc = cqrs_err_set(err, r == CQRS_HANDLED_RETRY ? CQRS_EUNAVAILABLE
								       : CQRS_EINTERNAL,
					  "the reset of group \"%s\" (%s, pattern \"%s\") failed: %s",
					  h->group, h->plugin ? h->plugin : "?", h->pattern,
					  ctx.reason[0] != '\0' ? ctx.reason
								: PQerrorMessage(c->pg));
			rollback(c);
			return rc;
		}
	}
	if ((rc = consumer_exec(c, "clear the consumer's streams", SQL_CLEAR_STREAMS, 1, params,
				PGRES_COMMAND_OK, NULL, err)) < 0 ||
	    (rc = consumer_exec(c, "clear the consumer's checkpoint", SQL_CLEAR_STATE, 1, params,
				PGRES_COMMAND_OK, NULL, err)) < 0) {
		rollback(c);
		return rc;
	}
	return consumer_exec(c, "COMMIT", "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL, err);
}
