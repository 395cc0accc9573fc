/*
 * pipeline.c - batches in flight: read in commit-safe order, publish, and
 * move the checkpoint over what the broker confirmed.
 *
 * Up to tracker.inflight batches are published ahead of their confirms.
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

#include "tracker_int.h"

/*
 * store_read_all_sql with ORDER BY on the table's column: in
 * store_read_all_sql, "ORDER BY xid" names the output column xid::text (an
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
	t->read_at = tracker_checkpoint(t);
}

bool
pipeline_has_room(const struct tracker *t)
{
	return t->qlen < (size_t)t->cfg->inflight;
}

size_t
pipeline_pending(const struct tracker *t)
{
	return t->qlen;
}

bool
pipeline_settleable(const struct tracker *t)
{
	return t->qlen > 0 && t->mq != NULL && broker_confirmed(t->mq) >= t->q[0].last_tag;
}

static bool
in_order(const struct store_checkpoint *a, const struct store_checkpoint *b)
{
	return b->xid > a->xid || (b->xid == a->xid && b->position > a->position);
}

int
pipeline_fill(struct tracker *t, size_t *n)
{
	char xid[24], pos[24], lim[16];
	const char *params[3] = { xid, pos, lim };
	struct store_events evs = { 0 };
	struct cqrs_err err = { 0 };
	uint64_t tag = 0;
	PGresult *res;
	int rc;

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
	rc = store_events_parse(res, &evs, &err);
	PQclear(res);
	if (rc < 0) {
		tracker_pg_lost(t, "reading events", err.msg);
		return -1;
	}
	/* The order is what makes the checkpoint safe; a break of it would
	 * skip events for good, so it is checked rather than trusted. */
	for (size_t i = 0; i < evs.n; i++) {
		const struct store_checkpoint *prev = i == 0 ? &t->read_at : &evs.at[i - 1];
		if (!in_order(prev, &evs.at[i])) {
			char msg[160];
			snprintf(msg, sizeof(msg), "events out of commit-safe order: %" PRIu64 ":%" PRId64
				 " after %" PRIu64 ":%" PRId64, evs.at[i].xid, evs.at[i].position,
				 prev->xid, prev->position);
			store_events_clear(&evs);
			tracker_pg_lost(t, "reading events", msg);
			return -1;
		}
	}
	*n = evs.n;
	if (evs.n == 0)
		return 0;
	for (size_t i = 0; i < evs.n; i++) {
		if (broker_publish_event(t->mq, evs.ev[i], &tag, &err) < 0) {
			store_events_clear(&evs);
			tracker_mq_lost(t, "RabbitMQ: publishing", err.msg);
			return -1;
		}
	}
	t->q[t->qlen].last_tag = tag;
	t->q[t->qlen].cp = evs.at[evs.n - 1];
	t->q[t->qlen].n = evs.n;
	t->q[t->qlen].sent_ms = tracker_now_ms();
	t->qlen++;
	t->read_at = evs.at[evs.n - 1];
	cqrs_log_debug(&t->log, "published %zu events up to %" PRIu64 ":%" PRId64 " (%zu batches "
				"in flight)", evs.n, t->read_at.xid, t->read_at.position, t->qlen);
	store_events_clear(&evs);
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
	while (k < t->qlen && t->q[k].last_tag <= broker_confirmed(t->mq))
		n += t->q[k++].n;
	if (k == 0) {
		if (tracker_now_ms() - t->q[0].sent_ms > t->cfg->confirm_timeout_ms) {
			char msg[128];
			snprintf(msg, sizeof(msg), "no confirm for %zu messages within %" PRId64 " ms",
				 broker_unconfirmed(t->mq), t->cfg->confirm_timeout_ms);
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
	if (broker_wait_confirms(t->mq, t->q[t->qlen - 1].last_tag,
				 (int)t->cfg->confirm_timeout_ms, &err) < 0) {
		tracker_mq_lost(t, "RabbitMQ: waiting for the last confirms", err.msg);
		return;
	}
	(void)pipeline_settle(t);
}

void
pipeline_free(struct tracker *t)
{
	free(t->q);
	t->q = NULL;
	t->qlen = t->qcap = 0;
}
