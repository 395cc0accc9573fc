/*
 * exec.c - running commands: the aggregate cache, the per-aggregate queue,
 * loading (snapshot + newer events in one query), the handler, the append
 * (one round trip), conflicts, duplicates and the tracker's wake-up.
 *
 * A job's path:
 *   exec_submit -> queue on its aggregate (one job per aggregate at a time)
 *   -> begin: load or catch up when needed -> run the handler
 *   -> append -> apply the new events to the cached state -> answer.
 * Conflicts (another writer) catch up and re-run the handler, at most
 * cfg.max_retries times, unless the client gave expected_version.
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <json-c/json.h>

#include "clock.h"
#include "cmdd.h"
#include "envelope.h"
#include "hmap.h"
#include "pool.h"

/* Snapshot (when wanted and newer than $3) then events after it, in order. */
static const char load_sql[] =
	"WITH s AS (SELECT version, data FROM cqrs.snapshots"
	"  WHERE stream = $1 AND $2::bool AND version > $3::int) "
	"SELECT 0 AS k, version, NULL::text, data::text, NULL::text, NULL::bigint, NULL::text FROM s "
	"UNION ALL "
	"SELECT 1, e.version, e.type, e.data::text, e.id::text, e.position, e.metadata::text "
	"FROM cqrs.events e WHERE e.stream = $1 "
	"AND e.version > greatest($3::int, coalesce((SELECT version FROM s), 0)) "
	"ORDER BY 1, 2";

/* The first outcome of a command id, if it was recorded, and what for. */
static const char command_sql[] =
	"SELECT c.last_version, e.id, e.version, e.position, e.type, c.stream, c.command "
	"FROM cqrs.commands c "
	"LEFT JOIN cqrs.events e ON e.stream = c.stream "
	"AND e.version BETWEEN c.first_version AND c.last_version "
	"WHERE c.id = $1 ORDER BY e.version";

static const char snapshot_sql[] =
	"INSERT INTO cqrs.snapshots AS s (stream, version, data) VALUES ($1, $2, $3::jsonb) "
	"ON CONFLICT (stream) DO UPDATE SET version = excluded.version, data = excluded.data, "
	"recorded_at = clock_timestamp() WHERE s.version < excluded.version";

static const char notify_sql[] = "NOTIFY cqrs_events";

/* The appends, by these addresses: prepared on each connection (pool_prepare()) */
static const char append_sql[] = STORE_APPEND_SQL;
static const char batch_sql[] = STORE_APPEND_BATCH_SQL;

/* A retry after a lost race runs in a transaction that holds the stream's
 * lock (the key cqrs.append takes) from before its reload to its append. */
static const char begin_sql[] = "BEGIN";
static const char lock_sql[] = "SELECT pg_advisory_xact_lock(1129468499, hashtext($1))";
static const char commit_sql[] = "COMMIT";

/*
 * After a conflict, the aggregate's next commands without expected_version
 * take the locked path at once, until this many in a row found no other
 * writer's events: a stream that other daemons write too is not raced for,
 * and costs one lost append only once in a while.
 */
#define CONTENDED_RUNS 16

/* How long commits are gathered before one NOTIFY covers them all. */
#define NOTIFY_GATHER_US 1000

static void job_begin(struct job *job);
static void job_run(struct job *job);
static void job_finish(struct job *job, char *answer, const char *outcome);
static void job_lock(struct job *job);

/* A query for job: on the connection it holds, if it holds one. */
static int
job_query(struct job *job, const char *sql, int nparams, const char *const *values, pool_cb cb)
{
	if (job->hold != NULL)
		return pool_hold_query(job->hold, sql, nparams, values, cb, job);
	return pool_query(job->d->pool, sql, nparams, values, cb, job);
}

/* ---- aggregate cache --------------------------------------------------- */

static void
agg_free(struct cmdd *d, struct agg *a)
{
	if (a->in_lru)
		TAILQ_REMOVE(&d->lru, a, lru);
	cqrs_hmap_del(d->aggs, a->stream);
	d->n_aggs--;
	if (a->state != NULL && a->type->type.state_free != NULL)
		a->type->type.state_free(a->state);
	free(a->stream);
	free(a);
}

/* Frees idle aggregates beyond the cache size, least recently used first. */
static void
cache_trim(struct cmdd *d)
{
	while (d->n_aggs > d->cfg.cache_size && !TAILQ_EMPTY(&d->lru))
		agg_free(d, TAILQ_FIRST(&d->lru));
}

static struct agg *
agg_get(struct cmdd *d, const char *stream, const struct reg_aggregate *type)
{
	struct agg *a = cqrs_hmap_get(d->aggs, stream);

	if (a != NULL) {
		if (a->in_lru) {
			TAILQ_REMOVE(&d->lru, a, lru);
			a->in_lru = false;
		}
		return a;
	}
	a = calloc(1, sizeof(*a));
	if (a == NULL)
		return NULL;
	a->stream = strdup(stream);
	a->type = type;
	TAILQ_INIT(&a->waiting);
	if (a->stream == NULL || cqrs_hmap_put(d->aggs, stream, a) < 0) {
		free(a->stream);
		free(a);
		return NULL;
	}
	d->n_aggs++;
	return a;
}

/* Drops the state so the next job reloads it (after an apply failed). */
static void
agg_reset(struct agg *a)
{
	if (a->state != NULL && a->type->type.state_free != NULL)
		a->type->type.state_free(a->state);
	a->state = NULL;
	a->version = 0;
	a->status = AGG_EMPTY;
}

/*
 * The job is done with its aggregate: start the next queued job. Many jobs
 * finish without waiting for the store (refused, or nothing to append), and
 * each one's finish releases the aggregate again: starting the next job from
 * here would nest one call chain per queued job. So the next job goes on
 * d->ready_jobs, and only the outermost release runs that list, in a loop. The
 * aggregate stays busy meanwhile, which keeps its jobs in order.
 */
static void
agg_release(struct cmdd *d, struct agg *a)
{
	struct job *next = TAILQ_FIRST(&a->waiting);

	if (next == NULL) {
		a->busy = false;
		TAILQ_INSERT_TAIL(&d->lru, a, lru);
		a->in_lru = true;
		cache_trim(d);
		return;
	}
	TAILQ_REMOVE(&a->waiting, next, agg_link);
	TAILQ_INSERT_TAIL(&d->ready_jobs, next, agg_link);
	if (d->running_ready)
		return;
	d->running_ready = true;
	while ((next = TAILQ_FIRST(&d->ready_jobs)) != NULL) {
		TAILQ_REMOVE(&d->ready_jobs, next, agg_link);
		job_begin(next);
	}
	d->running_ready = false;
}

/* ---- answers ----------------------------------------------------------- */

static void
answer_error(struct job *job, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
answer_error(struct job *job, const char *code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(job->errmsg, sizeof(job->errmsg), fmt, ap);
	va_end(ap);
	job_finish(job, proto_answer_error(request_answer_id(&job->req), code, job->errmsg), code);
}

static const char *
code_of(int rc)
{
	switch (rc) {
	case CQRS_ECONFLICT: return PROTO_CONFLICT;
	case CQRS_EUNAVAILABLE: return PROTO_UNAVAILABLE;
	case CQRS_EINVALID: return PROTO_INVALID;
	case CQRS_EIDREUSED: return PROTO_ID_REUSED;
	default: return PROTO_INTERNAL;
	}
}

/* ---- the tracker's wake-up --------------------------------------------- */

static void notify_fire(evutil_socket_t fd, short what, void *arg);

static void
notify_done(void *arg, PGresult *res, PGconn *pg)
{
	struct cmdd *d = arg;

	(void)res;
	(void)pg;
	d->notify_inflight = false;
	if (d->notify_again) {
		struct timeval tv = { 0, NOTIFY_GATHER_US };
		d->notify_again = false;
		evtimer_add(d->notify_timer, &tv);
	}
}

static void
notify_fire(evutil_socket_t fd, short what, void *arg)
{
	struct cmdd *d = arg;

	(void)fd;
	(void)what;
	if (pool_query(d->notify, notify_sql, 0, NULL, notify_done, d) == 0)
		d->notify_inflight = true;
}

/*
 * Wakes the tracker after commits. At most one NOTIFY is in flight, and
 * commits are gathered for NOTIFY_GATHER_US first, so a busy daemon sends
 * a few hundred a second, not one per command. It runs on its own
 * connection, never inside an append: notifying transactions serialize
 * their commits.
 */
static void
notify_send(struct cmdd *d)
{
	struct timeval tv = { 0, NOTIFY_GATHER_US };

	if (d->notify_inflight)
		d->notify_again = true;
	else if (!evtimer_pending(d->notify_timer, NULL))
		evtimer_add(d->notify_timer, &tv);
}

void
exec_notify_init(struct cmdd *d)
{
	d->notify_timer = evtimer_new(d->base, notify_fire, d);
}

/* ---- snapshots --------------------------------------------------------- */

struct snap_write {
	struct cmdd *d;
	char *stream;
	char version[24];
	char *data;
	const char *params[3];
};

static void
snapshot_done(void *arg, PGresult *res, PGconn *pg)
{
	struct snap_write *w = arg;

	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
		struct cqrs_err err;
		cqrs_store_result_error(res, pg, "snapshot", &err);
		cqrs_log_warn(&w->d->log, "could not write snapshot of %s at version %s: %s",
			      w->stream, w->version, err.msg);
	} else {
		w->d->stats.snapshots++;
	}
	w->d->snapshot_writes--;
	free(w->stream);
	free(w->data);
	free(w);
}

static void
maybe_snapshot(struct cmdd *d, struct agg *a, int64_t before)
{
	int n = d->cfg.snapshot_every;
	struct json_object *o;
	struct snap_write *w;

	if (n <= 0 || a->type->type.snapshot_encode == NULL || a->version / n == before / n)
		return;
	o = a->type->type.snapshot_encode(a->state);
	if (o == NULL)
		return;
	w = calloc(1, sizeof(*w));
	if (w == NULL) {
		json_object_put(o);
		return;
	}
	w->d = d;
	w->stream = strdup(a->stream);
	w->data = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN));
	json_object_put(o);
	snprintf(w->version, sizeof(w->version), "%" PRId64, a->version);
	w->params[0] = w->stream;
	w->params[1] = w->version;
	w->params[2] = w->data;
	if (w->stream == NULL || w->data == NULL ||
	    pool_query(d->pool, snapshot_sql, 3, w->params, snapshot_done, w) != 0) {
		free(w->stream);
		free(w->data);
		free(w);
		return;
	}
	d->snapshot_writes++;
}

/* ---- loading ----------------------------------------------------------- */

static void
load_done(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;
	struct agg *a = job->agg;
	struct cmdd *d = job->d;
	struct cqrs_err err = { 0 };
	int rows;

	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
		int rc = cqrs_store_result_error(res, pg, "loading the aggregate", &err);
		answer_error(job, code_of(rc), "%s: %s", a->stream, err.msg);
		return;
	}
	d->stats.loads++;
	if (a->status == AGG_EMPTY) {
		a->state = a->type->type.state_new(a->type->plugin_state);
		a->version = 0;
		if (a->state == NULL) {
			answer_error(job, PROTO_INTERNAL, "%s: out of memory", a->stream);
			return;
		}
	}
	rows = PQntuples(res);
	for (int i = 0; i < rows; i++) {
		int64_t version = strtoll(PQgetvalue(res, i, 1), NULL, 10);
		struct json_object *data = json_tokener_parse(PQgetvalue(res, i, 3));

		if (PQgetvalue(res, i, 0)[0] == '0') {
			/* a snapshot: decode it into a fresh state */
			void *st = a->type->type.state_new(a->type->plugin_state);
			if (st == NULL || data == NULL || a->type->type.snapshot_decode == NULL ||
			    a->type->type.snapshot_decode(st, data) != 0) {
				cqrs_log_warn(&job->log, "snapshot of %s at version %" PRId64
					      " does not decode: replaying events instead",
					      a->stream, version);
				if (st != NULL && a->type->type.state_free)
					a->type->type.state_free(st);
				json_object_put(data);
				/* reload from the first event, without snapshots */
				agg_reset(a);
				job->params[0] = a->stream;
				job->params[1] = "false";
				job->params[2] = "0";
				a->status = AGG_EMPTY;
				a->state = a->type->type.state_new(a->type->plugin_state);
				if (a->state == NULL ||
				    job_query(job, load_sql, 3, job->params, load_done) != 0)
					answer_error(job, PROTO_UNAVAILABLE, "%s: cannot reload", a->stream);
				else
					a->status = AGG_STALE;
				return;
			}
			if (a->state != NULL && a->type->type.state_free)
				a->type->type.state_free(a->state);
			a->state = st;
			a->version = version;
			json_object_put(data);
			continue;
		}
		struct json_object *meta = json_tokener_parse(PQgetvalue(res, i, 6));
		struct cqrs_event ev = {
			.id = PQgetvalue(res, i, 4),
			.stream = a->stream,
			.version = version,
			.position = strtoll(PQgetvalue(res, i, 5), NULL, 10),
			.type = PQgetvalue(res, i, 2),
			.data = data,
			.metadata = meta,
			.recorded_at = (char *)"",
		};
		int rc = -1;
		if (version != a->version + 1) {
			cqrs_err_set(&err, CQRS_EINTERNAL, "version %" PRId64 " follows %" PRId64,
				     version, a->version);
		} else if (data != NULL && meta != NULL) {
			rc = cqrs_aggregate_apply(d->reg, a->type, a->state, &ev, &err);
		} else {
			cqrs_err_set(&err, CQRS_EINTERNAL, "event %s does not parse", ev.id);
		}
		json_object_put(data);
		json_object_put(meta);
		if (rc != 0) {
			cqrs_log_error(&job->log, "cannot rebuild %s: %s", a->stream, err.msg);
			agg_reset(a);
			answer_error(job, PROTO_INTERNAL, "cannot rebuild %s: %s", a->stream, err.msg);
			return;
		}
		a->version = version;
		job->loaded++;
	}
	a->status = AGG_LOADED;
	job->fresh = true;
	if (job->hold != NULL && a->contended > 0) {
		/* another writer's events: the stream stays contended */
		if (job->loaded > 0)
			a->contended = CONTENDED_RUNS;
		else
			a->contended--;
	}
	job_run(job);
}

/* Reads the aggregate (status EMPTY) or the events it lacks (STALE). */
static void
job_load(struct job *job)
{
	struct agg *a = job->agg;
	bool full = a->status == AGG_EMPTY;

	job->params[0] = a->stream;
	job->params[1] = full ? "true" : "false";
	snprintf(job->pbuf[0], sizeof(job->pbuf[0]), "%" PRId64, full ? (int64_t)0 : a->version);
	job->params[2] = job->pbuf[0];
	if (job_query(job, load_sql, 3, job->params, load_done) != 0)
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
}

static void
job_begin(struct job *job)
{
	struct agg *a = job->agg;

	a->busy = true;
	if (a->contended > 0 && job->req.expected == STORE_ANY)
		job_lock(job);
	else if (a->status != AGG_LOADED)
		job_load(job);
	else
		job_run(job);
}

/* ---- duplicates of finished commands ------------------------------------ */

static void
command_done(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;
	struct cqrs_err err;
	int rows;

	(void)pg;
	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
		int rc = cqrs_store_result_error(res, pg, "looking up the command id", &err);
		answer_error(job, code_of(rc), "%s", err.msg);
		return;
	}
	rows = PQntuples(res);
	if (rows == 0) {
		/* not a repeat: the answer prepared before stands */
		char *answer = job->answer;
		const char *outcome = job->outcome;
		job->answer = NULL;
		job_finish(job, answer, outcome);
		return;
	}
	if (strcmp(PQgetvalue(res, 0, 5), job->stream) != 0 ||
	    (!PQgetisnull(res, 0, 6) && strcmp(PQgetvalue(res, 0, 6), job->req.command) != 0)) {
		answer_error(job, PROTO_ID_REUSED, "command id %s was recorded for %s on stream \"%s\"",
			     job->req.id, PQgetisnull(res, 0, 6) ? "a command" : PQgetvalue(res, 0, 6),
			     PQgetvalue(res, 0, 5));
		return;
	}
	cqrs_store_append_result_clear(&job->result);
	job->result.duplicate = true;
	job->result.version = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	job->result.events = calloc((size_t)rows, sizeof(*job->result.events));
	for (int i = 0; job->result.events != NULL && i < rows; i++) {
		struct store_written *w;
		if (PQgetisnull(res, i, 1))
			continue;
		w = &job->result.events[job->result.n++];
		snprintf(w->id, sizeof(w->id), "%s", PQgetvalue(res, i, 1));
		w->version = strtoll(PQgetvalue(res, i, 2), NULL, 10);
		w->position = strtoll(PQgetvalue(res, i, 3), NULL, 10);
		snprintf(w->type, sizeof(w->type), "%s", PQgetvalue(res, i, 4));
	}
	job->d->stats.duplicates++;
	free(job->answer);
	job->answer = NULL;
	job_finish(job, proto_answer_ok(request_answer_id(&job->req), job->stream, &job->result), "duplicate");
}

/*
 * A refusal (rejected, conflict) may be the echo of this very command having
 * succeeded before (a resend after "unavailable"): a client-given id that
 * the store recorded gets its first outcome instead.
 */
static void
refuse(struct job *job, const char *code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void
refuse(struct job *job, const char *code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(job->errmsg, sizeof(job->errmsg), fmt, ap);
	va_end(ap);
	if (!job->req.id_given) {
		job_finish(job, proto_answer_error(request_answer_id(&job->req), code, job->errmsg),
			   code);
		return;
	}
	job->answer = proto_answer_error(request_answer_id(&job->req), code, job->errmsg);
	job->outcome = code;
	job->params[0] = job->req.id;
	if (job_query(job, command_sql, 1, job->params, command_done) != 0) {
		char *answer = job->answer;
		job->answer = NULL;
		job_finish(job, answer, code);
	}
}

/* ---- the append -------------------------------------------------------- */

/* Frees the prepared append and what it was counted at. */
static void
append_clear(struct job *job)
{
	cqrs_store_append_req_clear(&job->append);
	if (job->append_held > 0) {
		server_job_hold(job, -(long)job->append_held);
		job->append_held = 0;
	}
}

/*
 * The append's outcome for job: rc 0 with job->result, or an error (err).
 * A conflict on a command without expected_version retries on the locked
 * path, which cannot lose again.
 */
static void
append_outcome(struct job *job, int rc, struct cqrs_err *err)
{
	struct agg *a = job->agg;
	struct cmdd *d = job->d;
	int64_t before = a->version;

	if (rc == 0 && job->result.n == 0 && !job->result.duplicate)
		job->result.version = a->version;	/* a command that raised nothing */
	if (rc == CQRS_ECONFLICT) {
		a->status = AGG_STALE;
		if (job->req.expected == STORE_ANY && job->hold == NULL &&
		    job->retries < d->cfg.max_retries) {
			job->retries++;
			d->stats.conflicts_retried++;
			a->contended = CONTENDED_RUNS;
			cqrs_log_debug(&job->log, "conflict on %s at version %" PRId64
				       ": catching up under the stream's lock", a->stream, before);
			cqrs_cmd_ctx_clear(&job->ctx);
			cqrs_store_append_result_clear(&job->result);
			job_lock(job);
			return;
		}
		refuse(job, PROTO_CONFLICT, "%s", err->msg);
		return;
	}
	if (rc == CQRS_EIDREUSED) {
		answer_error(job, PROTO_ID_REUSED, "%s", err->msg);
		return;
	}
	if (rc != 0) {
		/* unknown outcome: the next job on this stream catches up first */
		a->status = AGG_STALE;
		answer_error(job, code_of(rc), "%s", err->msg);
		return;
	}
	if (job->result.duplicate) {
		a->status = AGG_STALE;
		d->stats.duplicates++;
		job_finish(job, proto_answer_ok(request_answer_id(&job->req), job->stream, &job->result), "duplicate");
		return;
	}
	/* fold the new events into the cached state */
	for (size_t i = 0; i < job->result.n; i++) {
		struct store_written *w = &job->result.events[i];
		struct cqrs_event ev = {
			.id = w->id,
			.stream = a->stream,
			.version = w->version,
			.position = w->position,
			.type = w->type,
			.data = job->ctx.events[i].data,
			.metadata = job->event_meta,
			.recorded_at = (char *)"",
		};
		if (cqrs_aggregate_apply(d->reg, a->type, a->state, &ev, err) != 0) {
			cqrs_log_error(&job->log, "applying %s to %s: %s (state dropped)",
				       w->type, a->stream, err->msg);
			agg_reset(a);
			break;
		}
		a->version = w->version;
	}
	if (a->status == AGG_LOADED)
		maybe_snapshot(d, a, before);
	if (job->result.n > 0)
		notify_send(d);
	job_finish(job, proto_answer_ok(request_answer_id(&job->req), job->stream, &job->result), "ok");
}

/* The locked path's COMMIT: the append it holds counts only now. */
static void
commit_done(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;
	struct cqrs_err err = { 0 };

	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
		int rc = cqrs_store_result_error(res, pg, "commit", &err);
		/* a failed COMMIT's outcome is unknown */
		cqrs_store_append_result_clear(&job->result);
		append_outcome(job, rc == CQRS_ECONFLICT ? CQRS_EUNAVAILABLE : rc, &err);
		return;
	}
	pool_release(job->hold);
	job->hold = NULL;
	append_outcome(job, 0, &err);
}

static void
append_done(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;
	struct cqrs_err err = { 0 };
	int rc;

	append_clear(job);
	if (res == NULL)
		rc = cqrs_store_result_error(NULL, pg, "append", &err);
	else
		rc = cqrs_store_append_parse(res, pg, job->stream, &job->result, &err);
	if (rc == 0 && job->hold != NULL) {
		if (pool_hold_query(job->hold, commit_sql, 0, NULL, commit_done, job) != 0) {
			cqrs_store_append_result_clear(&job->result);
			append_outcome(job, CQRS_EUNAVAILABLE,
				       &(struct cqrs_err){ CQRS_EUNAVAILABLE, "commit: connection lost" });
		}
		return;
	}
	append_outcome(job, rc, &err);
}

/* ---- group commit ------------------------------------------------------ */

/* Appends sent as one (cqrs.append_batch), each with its own outcome. */
struct batch {
	struct cmdd *d;
	LIST_ENTRY(batch) link;		/* in d->batches while it runs */
	int n;
	char *json;			/* the one parameter */
	const char *values[1];
	struct job *jobs[];
};

static void
batch_done(void *arg, PGresult *res, PGconn *pg)
{
	struct batch *b = arg;
	struct store_batch_outcome *out = calloc((size_t)b->n, sizeof(*out));
	struct cqrs_err err = { 0 };
	int rc;

	LIST_REMOVE(b, link);
	free(b->json);
	b->json = NULL;
	if (out == NULL)
		rc = cqrs_err_set(&err, CQRS_EUNAVAILABLE, "batch append: out of memory for its outcome");
	else
		rc = cqrs_store_batch_parse(res, pg, out, (size_t)b->n, &err);
	b->d->stats.batches++;
	b->d->stats.batched += (uint64_t)b->n;
	for (int i = 0; i < b->n; i++) {
		struct job *job = b->jobs[i];

		append_clear(job);
		cqrs_store_append_result_clear(&job->result);
		if (rc != 0) {
			append_outcome(job, rc, &err);
			continue;
		}
		job->result = out[i].result;	/* moved */
		append_outcome(job, out[i].rc, &out[i].err);
	}
	free(out);
	free(b);
}

/* The pool's join (struct pool_batcher): n prepared appends as one query. */
static int
batch_join(void *ctx, void *const *args, int n, const char **sql, int *nparams,
	   const char *const **values, pool_cb *cb, void **arg)
{
	const struct store_append_req *reqs[256];
	struct batch *b;

	if (n > 256 || (b = calloc(1, sizeof(*b) + (size_t)n * sizeof(b->jobs[0]))) == NULL)
		return -1;
	b->d = ctx;
	b->n = n;
	for (int i = 0; i < n; i++) {
		b->jobs[i] = args[i];
		reqs[i] = &b->jobs[i]->append;
	}
	b->json = cqrs_store_batch_json(reqs, (size_t)n, NULL);
	if (b->json == NULL) {
		free(b);
		return -1;
	}
	b->values[0] = b->json;
	LIST_INSERT_HEAD(&b->d->batches, b, link);
	*sql = batch_sql;
	*nparams = 1;
	*values = b->values;
	*cb = batch_done;
	*arg = b;
	return 0;
}

void
exec_batch_init(struct cmdd *d)
{
	d->batcher.max = d->cfg.batch_max;
	d->batcher.max_bytes = CMDD_BATCH_BYTES;
	d->batcher.max_inflight = d->cfg.append_connections;
	d->batcher.min_join = d->cfg.batch_max < CMDD_BATCH_MIN_JOIN ? d->cfg.batch_max :
			      CMDD_BATCH_MIN_JOIN;
	d->batcher.stall_ms = CMDD_BATCH_STALL_MS;
	d->batcher.join = batch_join;
	d->batcher.ctx = d;
	LIST_INIT(&d->batches);
	/* what every command sends: parsed and planned once per connection */
	pool_prepare(d->pool, append_sql);
	pool_prepare(d->pool, batch_sql);
	pool_prepare(d->pool, load_sql);
}

/* ---- the locked path --------------------------------------------------- */

static void
locked_fail(struct job *job, PGresult *res, PGconn *pg, const char *what)
{
	struct cqrs_err err;
	int rc = cqrs_store_result_error(res, pg, what, &err);

	job->agg->status = AGG_STALE;
	answer_error(job, code_of(rc == CQRS_ECONFLICT ? CQRS_EUNAVAILABLE : rc), "%s: %s",
		     job->stream, err.msg);
}

static void
locked_locked(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;

	if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
		locked_fail(job, res, pg, "locking the stream");
		return;
	}
	/* what other writers added, read under the lock */
	if (job->agg->status == AGG_LOADED)
		job->agg->status = AGG_STALE;
	job->loaded = 0;
	job_load(job);
}

static void
locked_begun(void *arg, PGresult *res, PGconn *pg)
{
	struct job *job = arg;

	if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
		locked_fail(job, res, pg, "BEGIN");
		return;
	}
	job->params[0] = job->stream;
	if (job_query(job, lock_sql, 1, job->params, locked_locked) != 0)
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
}

static void
locked_held(void *arg, struct pool_hold *h)
{
	struct job *job = arg;

	if (h == NULL) {
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
		return;
	}
	job->hold = h;
	if (job_query(job, begin_sql, 0, NULL, locked_begun) != 0)
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
}

/*
 * Runs job in a transaction that holds its stream's lock: reload what other
 * writers added, run the handler, append, commit. Nobody can append to the
 * stream in between, so the append cannot conflict.
 */
static void
job_lock(struct job *job)
{
	if (pool_hold(job->d->pool, locked_held, job) != 0)
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
}

/* Metadata for the events: the request's, plus correlation, causation, the
 * command's name and who sent it (peer). */
static int
build_event_meta(struct job *job)
{
	struct json_object *m = json_object_new_object();
	struct json_object *corr = NULL;

	if (m == NULL)
		return -1;
	if (job->req.metadata != NULL) {
		json_object_object_foreach(job->req.metadata, k, v)
			json_object_object_add(m, k, json_object_get(v));
	}
	if (json_object_object_get_ex(m, "correlation_id", &corr) &&
	    json_object_is_type(corr, json_type_string) && json_object_get_string_len(corr) > 0)
		snprintf(job->correlation_id, sizeof(job->correlation_id), "%s",
			 json_object_get_string(corr));
	else
		snprintf(job->correlation_id, sizeof(job->correlation_id), "%s", job->req.id);
	json_object_object_add(m, "correlation_id", json_object_new_string(job->correlation_id));
	json_object_object_add(m, "causation_id", json_object_new_string(job->req.id));
	json_object_object_add(m, "command", json_object_new_string(job->req.command));
	if (job->peer.known) {
		struct json_object *p = json_object_new_object();

		if (p == NULL) {
			json_object_put(m);
			return -1;
		}
		json_object_object_add(p, "uid", json_object_new_int64(job->peer.uid));
		json_object_object_add(p, "gid", json_object_new_int64(job->peer.gid));
		json_object_object_add(p, "pid", json_object_new_int64(job->peer.pid));
		if (job->peer.user[0] != '\0')
			json_object_object_add(p, "user", json_object_new_string(job->peer.user));
		json_object_object_add(m, "peer", p);
	}
	job->event_meta = m;
	job->log.correlation_id = job->correlation_id;
	/* its table, keys and new values; the request's values it shares
	 * are counted with the request */
	server_job_hold(job, (long)proto_json_object_bytes(m, job->req.metadata));
	return 0;
}

static void
job_run(struct job *job)
{
	struct agg *a = job->agg;
	struct cmdd *d = job->d;
	struct cqrs_command cmd = {
		.id = job->req.id,
		.type = job->req.command,
		.aggregate_id = job->req.aggregate_id,
		.stream = job->stream,
		.data = job->req.data,
		.metadata = job->event_meta,
	};
	struct store_event_in *in = NULL;
	struct cqrs_err err = { 0 };
	int outcome, rc;

	if (job->req.expected != STORE_ANY && job->req.expected != a->version) {
		if (!job->fresh) {
			/* the cache may be behind another writer: look before refusing */
			a->status = AGG_STALE;
			job_load(job);
			return;
		}
		refuse(job, PROTO_CONFLICT, "stream \"%s\" is at version %" PRId64 ", expected %" PRId64,
		       job->stream, a->version, job->req.expected);
		return;
	}
	cqrs_cmd_ctx_init(&job->ctx, job->rc, &job->log);
	outcome = cqrs_cmd_ctx_run(&job->ctx, job->rc, &cmd, a->state, a->version);
	if (outcome == CQRS_OUTCOME_INVALID) {
		answer_error(job, PROTO_INVALID, "%s", job->ctx.message);
		return;
	}
	if (outcome == CQRS_OUTCOME_REJECTED) {
		if (!job->fresh) {
			/* decided on cached state, which another writer may have
			 * moved on: a refusal must see the stream as it is */
			a->status = AGG_STALE;
			cqrs_cmd_ctx_clear(&job->ctx);
			job_load(job);
			return;
		}
		refuse(job, PROTO_REJECTED, "%s", job->ctx.message);
		return;
	}
	if (outcome != CQRS_OUTCOME_OK) {
		cqrs_log_error(&job->log, "handler of %s failed: %s", job->req.command,
			       job->ctx.message);
		answer_error(job, PROTO_INTERNAL, "%s", job->ctx.message);
		return;
	}
	if (job->ctx.n_events == 0 && !job->req.id_given) {
		/* nothing to record and no id to remember */
		cqrs_store_append_result_clear(&job->result);
		job->result.version = a->version;
		job_finish(job, proto_answer_ok(request_answer_id(&job->req), job->stream, &job->result), "ok");
		return;
	}
	in = calloc(job->ctx.n_events ? job->ctx.n_events : 1, sizeof(*in));
	if (in == NULL) {
		answer_error(job, PROTO_INTERNAL, "out of memory");
		return;
	}
	for (size_t i = 0; i < job->ctx.n_events; i++) {
		in[i].type = job->ctx.events[i].type;
		in[i].data_obj = job->ctx.events[i].data;
		in[i].metadata_obj = job->event_meta;
	}
	/*
	 * expected = the version the handler saw: a concurrent writer conflicts.
	 * The command id is recorded only when the client gave it: an id the
	 * daemon made up is never sent again, and its row would cost every
	 * append a write and an index entry for nothing.
	 */
	rc = cqrs_store_append_prepare(&job->append, job->stream, a->version, in, job->ctx.n_events,
				  job->req.id_given ? job->req.id : NULL, job->req.command, &err);
	free(in);
	if (rc == 0) {
		/* the events, as objects and as the text sent: counted as the
		 * request is (server.c), until the append is answered */
		size_t held = strlen(job->append.events_json) + 1;

		for (size_t i = 0; i < job->ctx.n_events; i++)
			held += proto_json_bytes(job->ctx.events[i].data);
		job->append_held = held;
		server_job_hold(job, (long)held);
	}
	if (rc < 0) {
		cqrs_log_error(&job->log, "handler of %s raised a bad event: %s",
			       job->req.command, err.msg);
		answer_error(job, PROTO_INTERNAL, "%s", err.msg);
		return;
	}
	if (job->hold != NULL)
		rc = pool_hold_query(job->hold, append_sql, STORE_APPEND_NPARAMS,
				     job->append.values, append_done, job);
	else
		rc = pool_query_batched(d->pool, &d->batcher, job->append_held, append_sql,
					STORE_APPEND_NPARAMS, job->append.values, append_done, job);
	if (rc != 0) {
		append_clear(job);
		answer_error(job, PROTO_UNAVAILABLE, "the event store is unavailable");
	}
}

/* ---- entry and exit ---------------------------------------------------- */

void
exec_submit(struct job *job)
{
	struct cmdd *d = job->d;
	struct job *first;
	const struct reg_aggregate *type;
	int n;

	job->started_us = cqrs_now_us();
	job->rc = cqrs_registry_command(d->reg, job->req.command);
	if (job->rc == NULL) {
		answer_error(job, PROTO_UNKNOWN_COMMAND, "unknown command \"%s\"", job->req.command);
		return;
	}
	type = job->rc->aggregate;
	n = snprintf(job->stream, sizeof(job->stream), "%s-%s", type->type.name,
		     job->req.aggregate_id);
	if (n < 0 || (size_t)n >= sizeof(job->stream)) {
		answer_error(job, PROTO_MALFORMED, "stream name is over %d bytes", CQRS_STREAM_MAX);
		return;
	}
	job->log.stream = job->stream;
	if (build_event_meta(job) < 0) {
		answer_error(job, PROTO_INTERNAL, "out of memory");
		return;
	}
	/* a repeat of a command id still in flight waits for its outcome */
	first = job->req.id_given ? cqrs_hmap_get(d->inflight, job->req.id) : NULL;
	if (first != NULL && (strcmp(first->stream, job->stream) != 0 ||
			      strcmp(first->req.command, job->req.command) != 0)) {
		answer_error(job, PROTO_ID_REUSED, "command id %s is in use for %s on stream \"%s\"",
			     job->req.id, first->req.command, first->stream);
		return;
	}
	if (first != NULL) {
		job->first = first;
		TAILQ_INSERT_TAIL(&first->waiters, job, waiter_link);
		return;
	}
	if (job->req.id_given) {
		if (cqrs_hmap_put(d->inflight, job->req.id, job) < 0) {
			answer_error(job, PROTO_INTERNAL, "out of memory");
			return;
		}
		job->in_map = true;
	}
	job->agg = agg_get(d, job->stream, type);
	if (job->agg == NULL) {
		answer_error(job, PROTO_INTERNAL, "out of memory");
		return;
	}
	if (job->agg->busy)
		TAILQ_INSERT_TAIL(&job->agg->waiting, job, agg_link);
	else
		job_begin(job);
}

void
exec_answer(struct job *job, char *answer, const char *outcome)
{
	job_finish(job, answer, outcome);
}

/* Gives a repeat the first job's outcome, marked as a duplicate. */
static void
answer_waiter(struct job *w, struct job *first)
{
	char *answer;

	if (strcmp(first->outcome, "ok") == 0 || strcmp(first->outcome, "duplicate") == 0) {
		struct store_append_result r = first->result;
		r.duplicate = true;
		answer = proto_answer_ok(request_answer_id(&w->req), first->stream, &r);
		w->d->stats.duplicates++;
	} else {
		/* same words, this request's id */
		answer = proto_answer_error(request_answer_id(&w->req), first->outcome, first->errmsg);
	}
	w->first = NULL;
	job_finish(w, answer, "duplicate");
}

static void
job_finish(struct job *job, char *answer, const char *outcome)
{
	struct cmdd *d = job->d;
	struct agg *a = job->agg;

	free(job->answer);
	job->answer = answer ? answer : strdup("{\"id\":null,\"ok\":false,\"error\":"
					       "{\"code\":\"internal\",\"message\":\"out of memory\"}}\n");
	job->outcome = outcome;
	job->done = true;
	metrics_command_done(d, outcome, job->started_us);
	if (strcmp(outcome, "ok") == 0) {
		d->stats.ok++;
		cqrs_log_debug(&job->log, "command %s on %s: ok, version %" PRId64 " (%" PRIu64 " us)",
			       job->req.command, job->stream, job->result.version,
			       cqrs_now_us() - job->started_us);
	} else if (strcmp(outcome, "duplicate") != 0) {
		d->stats.failed++;
		if (strcmp(outcome, PROTO_UNAVAILABLE) == 0 || strcmp(outcome, PROTO_INTERNAL) == 0)
			cqrs_log_warn(&job->log, "command %s: %s", job->req.command ? job->req.command : "-",
				      outcome);
		else
			cqrs_log_info(&job->log, "command %s: %s", job->req.command ? job->req.command : "-",
				      outcome);
	}
	cqrs_cmd_ctx_clear(&job->ctx);
	append_clear(job);
	if (job->hold != NULL) {
		pool_release(job->hold);	/* rolls back what it did not commit */
		job->hold = NULL;
	}
	if (job->in_map) {
		cqrs_hmap_del(d->inflight, job->req.id);
		job->in_map = false;
	}
	while (!TAILQ_EMPTY(&job->waiters)) {
		struct job *w = TAILQ_FIRST(&job->waiters);
		TAILQ_REMOVE(&job->waiters, w, waiter_link);
		answer_waiter(w, job);
	}
	job->agg = NULL;
	if (a != NULL && a->busy)
		agg_release(d, a);
	server_job_done(job);
}

void
job_free(struct job *job)
{
	if (job == NULL)
		return;
	job->d->jobs_active--;
	TAILQ_REMOVE(&job->d->live, job, live_link);
	if (job->client == NULL)
		job->d->detached -= job->held;	/* see job_detach() */
	request_clear(&job->req);
	json_object_put(job->event_meta);
	cqrs_store_append_result_clear(&job->result);
	free(job->answer);
	free(job);
}

static void
exec_free_aggs(struct cmdd *d)
{
	while (!TAILQ_EMPTY(&d->lru))
		agg_free(d, TAILQ_FIRST(&d->lru));
}

void
exec_free_all(struct cmdd *d)
{
	while (!TAILQ_EMPTY(&d->live)) {
		struct job *job = TAILQ_FIRST(&d->live);
		struct agg *a = job->agg;

		/* an aggregate out of the cache is held by its jobs only */
		if (a != NULL && !a->in_lru) {
			TAILQ_INSERT_TAIL(&d->lru, a, lru);
			a->in_lru = true;
		}
		cqrs_cmd_ctx_clear(&job->ctx);
		append_clear(job);
		pool_release(job->hold);
		job->hold = NULL;
		job_free(job);
	}
	/* batches still running when the pool went (a stop past its deadline) */
	while (!LIST_EMPTY(&d->batches)) {
		struct batch *b = LIST_FIRST(&d->batches);
		LIST_REMOVE(b, link);
		free(b->json);
		free(b);
	}
	exec_free_aggs(d);
}
