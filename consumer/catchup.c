/*
 * catchup.c - feeding the store to the handlers: the first run of a
 * consumer (from = beginning), and replays.
 *
 * Catching up reads the store in commit-safe order (DESIGN.md, "Event
 * store") from the consumer's checkpoint, in batches of catchup_batch, each
 * handled in one transaction that also moves the checkpoint, so a crash
 * resumes where it stopped. It holds the consumer's exclusive lock
 * throughout, so live batches (shared lock, apply.c) wait and never
 * interleave with it.
 *
 * No gap and no double at the switch to live: the queue is declared and
 * bound before the first read, so every event the tracker publishes from
 * then on is in the queue; every event it published before was readable in
 * commit-safe order then, hence is read here (the oldest running
 * transaction only moves forward). Events found in both are handled once:
 * the per-stream versions make the second a duplicate. The catch-up stops
 * when a read returns less than a full batch; what commits after that comes
 * through the queue.
 *
 * A replay first runs every handler's reset and clears the consumer's
 * versions and checkpoint, in one transaction, then catches up the same way.
 *
 * A handler that fails an event here dead-letters it as the live flow would
 * (through hooks->dead), and with it every later event of its stream in this
 * catch-up, so that a stream never skips an event; putting them back
 * (`cqrsctl dead --retry`) handles them in order. A retry waits and runs the
 * batch again, up to retry_limit.
 */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "clock.h"
#include "consumer.h"
#include "hmap.h"
#include "sdnotify.h"

#define PROGRESS_LOG_MS 10000

#define SQL_TRY_LOCK "SELECT pg_try_advisory_lock(1129468501, hashtext($1))"
#define SQL_UNLOCK "SELECT pg_advisory_unlock(1129468501, hashtext($1))"
#define SQL_LOCK "SELECT pg_advisory_lock(1129468501, hashtext($1))"
#define SQL_LOCK_TIMEOUT "SET LOCAL lock_timeout = '500ms'"
/* from = now: live at once, and missing events before the store's current
 * end are not fetched */
#define SQL_CREATE_STATE                                                                  \
	"INSERT INTO cqrs.consumers (name, live, since_position, live_at) "                \
	"SELECT $1, $2::boolean, CASE WHEN $2::boolean THEN coalesce(max(position), 0) "   \
	"ELSE 0 END, CASE WHEN $2::boolean THEN clock_timestamp() END FROM cqrs.events "   \
	"ON CONFLICT (name) DO NOTHING"
#define SQL_STATE                                                                         \
	"SELECT live, xid::text, position, since_position FROM cqrs.consumers WHERE name = $1"
#define SQL_LIVE                                                                          \
	"UPDATE cqrs.consumers SET live = true, live_at = clock_timestamp(), "             \
	"updated_at = clock_timestamp() WHERE name = $1"

int
catchup_load_state(struct consumer *c, bool *live, struct cqrs_err *err)
{
	const char *params[2] = { c->cfg->name, c->cfg->from_beginning ? "false" : "true" };
	PGresult *res;
	int rc;

	rc = consumer_exec(c, "create the consumer's state", SQL_CREATE_STATE, 2, params,
			   PGRES_COMMAND_OK, NULL, err);
	if (rc < 0)
		return rc;
	rc = consumer_exec(c, "read the consumer's state", SQL_STATE, 1, params, PGRES_TUPLES_OK,
			   &res, err);
	if (rc < 0)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return cqrs_err_set(err, CQRS_EINTERNAL, "cqrs.consumers has no row \"%s\"",
				    c->cfg->name);
	}
	*live = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	c->since_position = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	PQclear(res);
	return 0;
}

static int
tick(const struct catchup_hooks *hooks, struct cqrs_err *err)
{
	if (hooks != NULL && hooks->tick != NULL)
		return hooks->tick(hooks->arg, err);
	return 0;
}

/* Sleeps ms in slices, servicing the broker; 1 when stopped. */
static int
nap(struct consumer *c, const struct catchup_hooks *hooks, int64_t ms, struct cqrs_err *err)
{
	int64_t end = cqrs_now_ms() + ms;
	int rc;

	while (cqrs_now_ms() < end) {
		if (consumer_stopping(c))
			return 1;
		consumer_watchdog(c);
		if ((rc = tick(hooks, err)) < 0)
			return rc;
		usleep(50 * 1000);
	}
	return 0;
}

/*
 * Waits for the exclusive lock: 0 held, 1 stopped, or an error. The wait is
 * a real one in PostgreSQL's lock queue (half a second at a time, so stop
 * requests and heartbeats are served): while an exclusive request waits
 * there, the live batches' non-waiting shared requests are refused, so
 * competing consumers that keep one batch or another in flight all the time
 * cannot starve a replay. A plain try-lock in a loop could wait forever.
 */
static int
lock_exclusive(struct consumer *c, const struct catchup_hooks *hooks, struct cqrs_err *err)
{
	const char *params[1] = { c->cfg->name };
	bool said = false;
	PGresult *res;
	int rc;

	rc = consumer_exec(c, "take the consumer's exclusive lock", SQL_TRY_LOCK, 1, params,
			   PGRES_TUPLES_OK, &res, err);
	if (rc < 0)
		return rc;
	rc = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	if (rc)
		return 0;
	for (;;) {
		if (!said) {
			cqrs_log_info(&c->log, "waiting for the lock of consumer \"%s\" (its live "
					       "batches, or another catch-up or replay)",
				      c->cfg->name);
			said = true;
		}
		if (consumer_stopping(c))
			return 1;
		consumer_watchdog(c);
		if ((rc = tick(hooks, err)) < 0)
			return rc;
		if ((rc = consumer_exec(c, "BEGIN", "BEGIN", 0, NULL, PGRES_COMMAND_OK, NULL,
					err)) < 0 ||
		    (rc = consumer_exec(c, "lock_timeout", SQL_LOCK_TIMEOUT, 0, NULL, PGRES_COMMAND_OK,
					NULL, err)) < 0)
			return rc;
		res = PQexecParams(c->pg, SQL_LOCK, 1, NULL, params, NULL, NULL, 0);
		if (PQresultStatus(res) == PGRES_TUPLES_OK) {
			PQclear(res);
			/* a session lock: it outlives the transaction */
			return consumer_exec(c, "COMMIT", "COMMIT", 0, NULL, PGRES_COMMAND_OK, NULL,
					     err);
		}
		{
			const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
			bool timeout = state != NULL && strcmp(state, "55P03") == 0;

			if (!timeout) {
				rc = cqrs_store_result_error(res, c->pg, "take the consumer's exclusive lock",
							err);
				PQclear(res);
				if (rc == CQRS_EUNAVAILABLE) {
					consumer_pg_close(c);
					c->pg_lost = true;
				} else {
					PQclear(PQexec(c->pg, "ROLLBACK"));
				}
				return rc;
			}
		}
		PQclear(res);
		if ((rc = consumer_exec(c, "ROLLBACK", "ROLLBACK", 0, NULL, PGRES_COMMAND_OK, NULL,
					err)) < 0)
			return rc;
	}
}

static void
unlock_exclusive(struct consumer *c)
{
	const char *params[1] = { c->cfg->name };

	/* a lost session took the lock with it */
	if (c->pg != NULL)
		(void)consumer_exec(c, "release the consumer's lock", SQL_UNLOCK, 1, params,
				    PGRES_TUPLES_OK, NULL, NULL);
}

static int
read_checkpoint(struct consumer *c, bool *live, struct store_checkpoint *cp, struct cqrs_err *err)
{
	const char *params[1] = { c->cfg->name };
	PGresult *res;
	int rc;

	rc = consumer_exec(c, "read the consumer's checkpoint", SQL_STATE, 1, params,
			   PGRES_TUPLES_OK, &res, err);
	if (rc < 0)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return cqrs_err_set(err, CQRS_EINTERNAL, "cqrs.consumers has no row \"%s\"",
				    c->cfg->name);
	}
	*live = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	cp->xid = strtoull(PQgetvalue(res, 0, 1), NULL, 10);
	cp->position = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	c->since_position = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
	PQclear(res);
	return 0;
}

static int
read_batch(struct consumer *c, const struct store_checkpoint *after, struct store_events *out,
	   struct cqrs_err *err)
{
	char xid[24], pos[24], lim[16];
	const char *params[3] = { xid, pos, lim };
	PGresult *res;
	int rc;

	memset(out, 0, sizeof(*out));
	snprintf(xid, sizeof(xid), "%" PRIu64, after->xid);
	snprintf(pos, sizeof(pos), "%" PRId64, after->position);
	snprintf(lim, sizeof(lim), "%d", c->cfg->catchup_batch);
	rc = consumer_exec(c, "read the store", cqrs_store_read_all_sql, 3, params, PGRES_TUPLES_OK,
			   &res, err);
	if (rc < 0)
		return rc;
	rc = cqrs_store_events_parse(res, out, err);
	PQclear(res);
	return rc;
}

struct blocked {
	struct hmap *streams;		/* stream -> id of its first dead letter (in ids) */
	char **ids;			/* owned */
	size_t n;
};

static void
blocked_free(struct blocked *b)
{
	cqrs_hmap_free(b->streams);
	for (size_t i = 0; i < b->n; i++)
		free(b->ids[i]);
	free(b->ids);
	memset(b, 0, sizeof(*b));
}

static int
blocked_add(struct blocked *b, const char *stream, const char *id)
{
	char **v;

	if (cqrs_hmap_get(b->streams, stream) != NULL)
		return 0;
	v = realloc(b->ids, (b->n + 1) * sizeof(*v));
	if (v == NULL)
		return -1;
	b->ids = v;
	if ((b->ids[b->n] = strdup(id)) == NULL)
		return -1;
	b->n++;
	return cqrs_hmap_put(b->streams, stream, b->ids[b->n - 1]);
}

/* Dead-letters item i, and marks its stream blocked for the rest. */
static int
dead(struct consumer *c, const struct catchup_hooks *hooks, struct apply_item *it,
     struct blocked *b, struct cqrs_err *err)
{
	int rc;

	if (hooks == NULL || hooks->dead == NULL)
		return cqrs_err_set(err, CQRS_EINTERNAL, "no dead-letter queue to send %s to",
				    it->ev->id);
	if ((rc = hooks->dead(hooks->arg, it->ev, it->reason, err)) < 0)
		return rc;
	c->stats.dead++;
	cqrs_log_error(&c->log, "dead-lettered %s version %" PRId64 " (%s, %s) while catching "
				"up: %s",
		       it->ev->stream, it->ev->version, it->ev->type, it->ev->id, it->reason);
	if (blocked_add(b, it->ev->stream, it->ev->id) < 0)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	it->outcome = APPLY_FAIL;
	return 0;
}

/* One batch read from the store, handled in one transaction (or a few, when
 * handlers fail or ask for retries). */
static int
handle_batch(struct consumer *c, const struct catchup_hooks *hooks, struct store_events *evs,
	     struct blocked *b, struct cqrs_err *err)
{
	struct apply_item *items;
	int attempts = 0, rc;
	size_t at;

	items = calloc(evs->n, sizeof(*items));
	if (items == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
	for (size_t i = 0; i < evs->n; i++) {
		items[i].ev = evs->ev[i];
		if (cqrs_hmap_get(b->streams, evs->ev[i]->stream) != NULL) {
			snprintf(items[i].reason, sizeof(items[i].reason),
				 "an earlier event of stream %s (%s) is dead-lettered",
				 evs->ev[i]->stream, (const char *)cqrs_hmap_get(b->streams,
									    evs->ev[i]->stream));
			if ((rc = dead(c, hooks, &items[i], b, err)) < 0)
				goto out;
		}
	}
	for (;;) {
		rc = apply_batch(c, APPLY_CATCHUP, items, evs->n, &evs->at[evs->n - 1], &at, err);
		if (rc == 0)
			break;
		if (rc == CQRS_ECONFLICT)
			continue;	/* a deadlock with another writer of the read model */
		if (rc != APPLY_HANDLER)
			goto out;
		if (items[at].outcome == APPLY_RETRY) {
			c->stats.retried++;
			if (++attempts <= c->cfg->retry_limit) {
				int64_t wait = c->cfg->retry_backoff_ms << (attempts < 20 ? attempts - 1 : 19);

				if (wait > c->cfg->retry_backoff_max_ms)
					wait = c->cfg->retry_backoff_max_ms;
				cqrs_log_warn(&c->log, "retrying %s version %" PRId64 " in %" PRId64
						       " ms: %s",
					      items[at].ev->stream, items[at].ev->version, wait,
					      items[at].reason);
				items[at].outcome = APPLY_PENDING;
				if ((rc = nap(c, hooks, wait, err)) != 0)
					goto out;
				continue;
			}
			char why[sizeof(items[at].reason) - 64];
			snprintf(why, sizeof(why), "%.400s", items[at].reason);
			snprintf(items[at].reason, sizeof(items[at].reason),
				 "gave up after %d retries: %s", attempts - 1, why);
		}
		attempts = 0;
		if ((rc = dead(c, hooks, &items[at], b, err)) < 0)
			goto out;
		/* later events of the stream in this batch go with it */
		for (size_t i = at + 1; i < evs->n; i++) {
			if (items[i].outcome != APPLY_PENDING ||
			    strcmp(items[i].ev->stream, items[at].ev->stream) != 0)
				continue;
			snprintf(items[i].reason, sizeof(items[i].reason),
				 "an earlier event of stream %s (%s) is dead-lettered",
				 items[i].ev->stream, items[at].ev->id);
			if ((rc = dead(c, hooks, &items[i], b, err)) < 0)
				goto out;
		}
	}
	rc = 0;
out:
	free(items);
	return rc;
}

int
catchup_run(struct consumer *c, bool replay, const struct catchup_hooks *hooks,
	    struct cqrs_err *err)
{
	const char *params[1] = { c->cfg->name };
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	struct store_events evs = { 0 };
	struct blocked b = { 0 };
	uint64_t total = 0;
	int64_t started = cqrs_now_ms(), next_log = started + PROGRESS_LOG_MS;
	bool live = false;
	int rc;

	if ((rc = lock_exclusive(c, hooks, err)) != 0)
		return rc;
	if (replay) {
		if ((rc = apply_reset(c, err)) < 0)
			goto out;
		cqrs_log_info(&c->log, "replay: the handlers' read models are reset; feeding them "
				       "the store");
	}
	if ((rc = read_checkpoint(c, &live, &cp, err)) < 0)
		goto out;
	if (live) {
		/* another process caught up while we waited for the lock */
		rc = 0;
		goto out;
	}
	b.streams = cqrs_hmap_new();
	if (b.streams == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto out;
	}
	cqrs_log_info(&c->log, "catching up from the store after %" PRIu64 ":%" PRId64,
		      cp.xid, cp.position);
	for (;;) {
		if (consumer_stopping(c)) {
			rc = 1;
			goto out;
		}
		consumer_watchdog(c);
		if ((rc = tick(hooks, err)) < 0)
			goto out;
		if ((rc = read_batch(c, &cp, &evs, err)) < 0)
			goto out;
		if (evs.n == 0)
			break;
		if ((rc = handle_batch(c, hooks, &evs, &b, err)) != 0)
			goto out;
		cp = evs.at[evs.n - 1];
		total += evs.n;
		c->stats.caught_up += evs.n;
		if (cqrs_now_ms() >= next_log) {
			cqrs_log_info(&c->log, "catching up: %" PRIu64 " events so far, at %" PRIu64
					       ":%" PRId64,
				      total, cp.xid, cp.position);
			cqrs_sdnotify_status("catching up: %" PRIu64 " events read from the store", total);
			next_log = cqrs_now_ms() + PROGRESS_LOG_MS;
		}
		if (evs.n < (size_t)c->cfg->catchup_batch)
			break;
		cqrs_store_events_clear(&evs);
	}
	if ((rc = consumer_exec(c, "mark the consumer live", SQL_LIVE, 1, params, PGRES_COMMAND_OK,
				NULL, err)) < 0)
		goto out;
	cqrs_log_info(&c->log, "caught up: %" PRIu64 " events read from the store in %.3f s; "
			       "live from the queue",
		      total, (double)(cqrs_now_ms() - started) / 1000.0);
	rc = 0;
out:
	cqrs_store_events_clear(&evs);
	blocked_free(&b);
	unlock_exclusive(c);
	return rc;
}
