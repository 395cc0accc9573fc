/*
 * pipeline.c - batches in flight: read in commit-safe order, publish, and
 * move the checkpoint over what the broker confirmed.
 *
 * Up to tracker.inflight batches' worth of messages (inflight x batch_size)
 * are published ahead of their confirms.
 * Waiting for each batch's confirms before reading the next would add the
 * broker's disk flush to every event's latency (an event committed while a
 * batch waits would wait for it) and leave the broker idle between batches;
 * with several batches out, the broker flushes them together and a new event
 * is published as soon as it is read. Nothing is lost by it: the checkpoint
 * only ever moves to the end of a batch whose messages, and all before them,
 * are confirmed; after any failure, reading starts again at the checkpoint
 * and what was in flight is published again (at least once).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "tracker_int.h"

/*
 * cqrs_store_read_all_sql with ORDER BY on the table's column: in
 * cqrs_store_read_all_sql, "ORDER BY xid" names the output column xid::text (an
 * output name wins in ORDER BY), so it sorts as text and "1001" comes
 * before "995".
 */
const char pipeline_read_sql[] =
	"SELECT e.id, e.stream, e.version, e.position, e.type, e.data::text, e.metadata::text, "
	"to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
	"e.xid::text FROM cqrs.events e "
	"WHERE (e.xid, e.position) > ($1::xid8, $2::bigint) "
	"AND e.xid < pg_snapshot_xmin(pg_current_snapshot()) "
	"ORDER BY e.xid, e.position LIMIT $3";

void
pipeline_reset(struct tracker *t)
{
	t->qlen = 0;
	t->unconfirmed = 0;
	t->read_at = tracker_checkpoint(t);
}

/*
 * Room is counted in messages (inflight x batch_size), not batches: at a low
 * rate every batch is one event, and a few batches waiting for a broker that
 * flushes to disk would hold up the next event.
 */
bool
pipeline_has_room(const struct tracker *t)
{
	return t->unconfirmed < (size_t)t->cfg->inflight * (size_t)t->cfg->batch_size;
}

size_t
pipeline_pending(const struct tracker *t)
{
	return t->qlen;
}

bool
pipeline_settleable(const struct tracker *t)
{
	return t->qlen > 0 && t->mq != NULL && cqrs_broker_confirmed(t->mq) >= t->q[0].last_tag;
}

static bool
in_order(const struct store_checkpoint *a, const struct store_checkpoint *b)
{
	return b->xid > a->xid || (b->xid == a->xid && b->position > a->position);
}

/* ---- the message body --------------------------------------------------------- */

struct buf {
	char *p;
	size_t len, cap;
};

static bool
buf_room(struct buf *b, size_t more)
{
	if (b->len + more + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 4096;
		char *p;
		while (cap < b->len + more + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (p == NULL)
			return false;
		b->p = p;
		b->cap = cap;
	}
	return true;
}

static void
put(struct buf *b, const char *s, size_t n)
{
	memcpy(b->p + b->len, s, n);
	b->len += n;
}

/* A JSON string as json-c writes it with JSON_C_TO_STRING_NOSLASHESCAPE. */
static bool
put_string(struct buf *b, const char *s)
{
	static const char hex[] = "0123456789abcdef";

	if (!buf_room(b, strlen(s) * 6 + 2))
		return false;
	b->p[b->len++] = '"';
	for (const unsigned char *c = (const unsigned char *)s; *c != '\0'; c++) {
		switch (*c) {
		case '"': put(b, "\\\"", 2); break;
		case '\\': put(b, "\\\\", 2); break;
		case '\b': put(b, "\\b", 2); break;
		case '\f': put(b, "\\f", 2); break;
		case '\n': put(b, "\\n", 2); break;
		case '\r': put(b, "\\r", 2); break;
		case '\t': put(b, "\\t", 2); break;
		default:
			if (*c < 0x20) {
				char u[6] = { '\\', 'u', '0', '0', hex[*c >> 4], hex[*c & 15] };
				put(b, u, 6);
			} else {
				b->p[b->len++] = (char)*c;
			}
		}
	}
	b->p[b->len++] = '"';
	return true;
}

/*
 * PostgreSQL's text of a jsonb value without the blanks it puts after ':'
 * and ',': the same bytes as json-c's plain output of the parsed value (keys
 * stay in jsonb's order, which json-c keeps; strings are escaped alike;
 * numbers are written as stored).
 */
static bool
put_compact(struct buf *b, const char *json)
{
	bool in_string = false;

	if (!buf_room(b, strlen(json)))
		return false;
	for (const char *c = json; *c != '\0'; c++) {
		if (in_string) {
			b->p[b->len++] = *c;
			if (*c == '\\' && c[1] != '\0')
				b->p[b->len++] = *++c;
			else if (*c == '"')
				in_string = false;
		} else if (*c == '"') {
			in_string = true;
			b->p[b->len++] = *c;
		} else if (*c != ' ' && *c != '\n' && *c != '\t' && *c != '\r') {
			b->p[b->len++] = *c;
		}
	}
	return true;
}

/*
 * The envelope of row i of pipeline_read_sql, byte for byte what
 * cqrs_envelope_encode() makes of the event, without parsing data and metadata
 * into json-c objects and writing them out again (which was most of the
 * tracker's CPU time).
 */
static bool
encode_row(struct buf *b, PGresult *res, int i)
{
	char num[64];
	int n;

	b->len = 0;
	if (!buf_room(b, 64))
		return false;
	put(b, "{\"id\":", 6);
	if (!put_string(b, PQgetvalue(res, i, 0)) || !buf_room(b, 16))
		return false;
	put(b, ",\"stream\":", 10);
	if (!put_string(b, PQgetvalue(res, i, 1)))
		return false;
	n = snprintf(num, sizeof(num), ",\"version\":%s,\"position\":%s,\"type\":",
		     PQgetvalue(res, i, 2), PQgetvalue(res, i, 3));
	if (n < 0 || (size_t)n >= sizeof(num) || !buf_room(b, (size_t)n))
		return false;
	put(b, num, (size_t)n);
	if (!put_string(b, PQgetvalue(res, i, 4)) || !buf_room(b, 16))
		return false;
	put(b, ",\"data\":", 8);
	if (!put_compact(b, PQgetvalue(res, i, 5)) || !buf_room(b, 16))
		return false;
	put(b, ",\"metadata\":", 12);
	if (!put_compact(b, PQgetvalue(res, i, 6)) || !buf_room(b, 32))
		return false;
	put(b, ",\"recorded_at\":", 15);
	if (!put_string(b, PQgetvalue(res, i, 7)) || !buf_room(b, 2))
		return false;
	b->p[b->len++] = '}';
	b->p[b->len] = '\0';
	return true;
}

/* ---- batches ------------------------------------------------------------------- */

int
pipeline_fill(struct tracker *t, size_t *n)
{
	char xid[24], pos[24], lim[16];
	const char *params[3] = { xid, pos, lim };
	struct store_checkpoint at = t->read_at, prev;
	struct cqrs_err err = { 0 };
	struct buf body = { t->body, 0, t->body_cap };
	uint64_t tag = 0;
	PGresult *res;
	int rows;

	*n = 0;
	if (!pipeline_has_room(t))
		return 0;
	if (t->qlen == t->qcap) {
		size_t cap = t->qcap ? t->qcap * 2 : 8;
		struct inflight *q = realloc(t->q, cap * sizeof(*q));
		if (q == NULL) {
			cqrs_log_error(&t->log, "out of memory");
			return -1;
		}
		t->q = q;
		t->qcap = cap;
	}
	snprintf(xid, sizeof(xid), "%" PRIu64, t->read_at.xid);
	snprintf(pos, sizeof(pos), "%" PRId64, t->read_at.position);
	snprintf(lim, sizeof(lim), "%d", t->cfg->batch_size);
	t->wake = false;	/* a NOTIFY from now on means: read again */
	res = tracker_pg_query(t, "PostgreSQL: reading events", pipeline_read_sql, 3, params,
			       PGRES_TUPLES_OK);
	if (res == NULL)
		return -1;
	rows = PQntuples(res);
	for (int i = 0; i < rows; i++) {
		char key[BROKER_SHORTSTR_MAX + 1];
		struct broker_message m;

		prev = at;
		at.xid = strtoull(PQgetvalue(res, i, 8), NULL, 10);
		at.position = strtoll(PQgetvalue(res, i, 3), NULL, 10);
		/* The order is what makes the checkpoint safe; a break of it
		 * would skip events for good, so it is checked, not trusted. */
		if (!in_order(&prev, &at)) {
			char msg[160];
			snprintf(msg, sizeof(msg), "events out of commit-safe order: %" PRIu64 ":%" PRId64
				 " after %" PRIu64 ":%" PRId64, at.xid, at.position, prev.xid,
				 prev.position);
			PQclear(res);
			tracker_pg_lost(t, "reading events", msg);
			return -1;
		}
		if (!encode_row(&body, res, i)) {
			t->body = body.p;
			t->body_cap = body.cap;
			PQclear(res);
			cqrs_log_error(&t->log, "out of memory");
			return -1;
		}
		cqrs_broker_routing_key(PQgetvalue(res, i, 1), PQgetvalue(res, i, 4), key, sizeof(key));
		memset(&m, 0, sizeof(m));
		m.routing_key = key;
		m.body = body.p;
		m.body_len = body.len;
		m.message_id = PQgetvalue(res, i, 0);
		m.type = PQgetvalue(res, i, 4);
		m.stream = PQgetvalue(res, i, 1);
		m.version = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		m.position = at.position;
		if (cqrs_broker_publish(t->mq, &m, &tag, &err) < 0) {
			t->body = body.p;
			t->body_cap = body.cap;
			PQclear(res);
			tracker_mq_lost(t, "RabbitMQ: publishing", err.msg);
			return -1;
		}
	}
	t->body = body.p;
	t->body_cap = body.cap;
	PQclear(res);
	*n = (size_t)rows;
	if (rows == 0)
		return 0;
	t->q[t->qlen].last_tag = tag;
	t->q[t->qlen].cp = at;
	t->q[t->qlen].n = (size_t)rows;
	t->q[t->qlen].sent_ms = cqrs_now_ms();
	t->qlen++;
	t->unconfirmed += (size_t)rows;
	t->read_at = at;
	cqrs_log_debug(&t->log, "published %d events up to %" PRIu64 ":%" PRId64 " (%zu batches "
				"in flight)", rows, at.xid, at.position, t->qlen);
	return 0;
}

int
pipeline_settle(struct tracker *t)
{
	struct store_checkpoint cp;
	char xid[24], pos[24];
	const char *params[3] = { t->cfg->name, xid, pos };
	size_t k = 0, n = 0;
	PGresult *res;

	if (t->qlen == 0 || t->mq == NULL)
		return 0;
	while (k < t->qlen && t->q[k].last_tag <= cqrs_broker_confirmed(t->mq))
		n += t->q[k++].n;
	if (k == 0) {
		if (cqrs_now_ms() - t->q[0].sent_ms > t->cfg->confirm_timeout_ms) {
			char msg[128];
			snprintf(msg, sizeof(msg), "no confirm for %zu messages within %" PRId64 " ms",
				 cqrs_broker_unconfirmed(t->mq), t->cfg->confirm_timeout_ms);
			tracker_mq_lost(t, "RabbitMQ: waiting for confirms", msg);
			return -1;
		}
		return 0;
	}
	cp = t->q[k - 1].cp;
	snprintf(xid, sizeof(xid), "%" PRIu64, cp.xid);
	snprintf(pos, sizeof(pos), "%" PRId64, cp.position);
	res = tracker_pg_query(t, "PostgreSQL: writing the checkpoint", tracker_save_checkpoint_sql,
			       3, params, PGRES_COMMAND_OK);
	if (res == NULL)
		return -1;
	if (strcmp(PQcmdTuples(res), "1") != 0) {
		PQclear(res);
		cqrs_log_error(&t->log, "lost the lock of tracker \"%s\": the checkpoint was not "
					"moved; standing by", t->cfg->name);
		tracker_pg_lost(t, "PostgreSQL: lock lost",
				"this session no longer holds the tracker lock");
		return -1;
	}
	PQclear(res);
	memmove(t->q, t->q + k, (t->qlen - k) * sizeof(*t->q));
	t->qlen -= k;
	t->unconfirmed -= n;
	tracker_note_done(t, n, k, &cp);
	cqrs_log_debug(&t->log, "checkpoint %s:%s (%zu events confirmed)", xid, pos, n);
	return 0;
}

void
pipeline_flush(struct tracker *t)
{
	struct cqrs_err err = { 0 };

	if (t->qlen == 0 || t->mq == NULL || t->pg == NULL)
		return;
	if (cqrs_broker_wait_confirms(t->mq, t->q[t->qlen - 1].last_tag,
				 (int)t->cfg->confirm_timeout_ms, &err) < 0) {
		tracker_mq_lost(t, "RabbitMQ: waiting for the last confirms", err.msg);
		return;
	}
	(void)pipeline_settle(t);
}

void
pipeline_free(struct tracker *t)
{
	free(t->body);
	t->body = NULL;
	t->body_cap = 0;
	free(t->q);
	t->q = NULL;
	t->qlen = t->qcap = 0;
}
