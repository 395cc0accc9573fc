/*
 * tracker.c - cqrs-tracker's loop: connections, the lock, batches, waiting.
 *
 * Configuration (DESIGN.md, "Configuration"; every key may be overridden by
 * CQRS_<SECTION>_<KEY> in the environment):
 *
 *   [store]
 *   conninfo = host=/run/postgresql dbname=cqrs
 *       libpq connection string (required). The tracker adds
 *       application_name=cqrs-tracker@HOST:PID (which `cqrsctl status`
 *       shows) and, unless given, connect_timeout=10, TCP keepalives and
 *       tcp_user_timeout (CQRS_PG_DEFAULT_KEYS, common/store.h).
 *   [broker]                  url (required), heartbeat, verify, cacert, cert,
 *                             key: common/broker_config.c.
 *   [tracker]
 *   name = tracker            checkpoint name and lock name; trackers with the
 *                             same name are one active and the rest standby.
 *   batch_size = 500          events read and published together (1..10000).
 *   inflight = 4              messages published ahead of their confirms,
 *                             in batches' worth (at most inflight x
 *                             batch_size unconfirmed; 1..64); the checkpoint
 *                             follows the confirms.
 *   poll_ms = 1000            ceiling of the adaptive poll (10ms..1h): how
 *                             long, at most, an event from a writer that sends
 *                             no NOTIFY (or one released by the end of an old
 *                             transaction) waits. Wake-ups come from
 *                             LISTEN cqrs_events.
 *   lag_warn = 30s            warn when events are held back by a transaction
 *                             open longer than this.
 *   confirm_timeout = 30s     give up on a broker that does not confirm a
 *                             batch within this; reconnect and publish again.
 *   status_interval = 5s      how often lag is measured for STATUS and logs.
 *   http =                    /health and /metrics (Prometheus text) at
 *                             ADDRESS:PORT, as cmd.http (metrics.c); empty: off.
 *   http_allow_remote = false serve on a non-loopback address.
 *   [log]
 *   level = info              error, warn, info or debug.
 *
 * The loop, in order of priority: keep a PostgreSQL session and an AMQP
 * connection (each reconnected with backoff on its own); hold the advisory
 * lock of tracker.name (else stand by, trying again every second); read
 * batches in commit-safe order and publish them, up to tracker.inflight
 * ahead of their confirms (pipeline.c); as confirms come, write the
 * checkpoint in a statement that also checks that this session still holds
 * the lock. Nothing is skipped: the checkpoint only ever names events whose
 * confirms, and those of every event before them, came. A crash between
 * publish and checkpoint publishes those batches again (at least once).
 *
 * The lock, LISTEN, the reads and the checkpoint share one session on
 * purpose: a read that succeeds proves the session, hence the lock, is alive
 * just before the batch it returns is published, and a session that dies
 * takes the lock with it. (With the lock on a separate connection, the
 * worker could go on publishing after the lock connection had died.)
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "config.h"
#include "sdnotify.h"
#include "store.h"
#include "tracker_int.h"

#define POLL_MIN_MS 10		/* first poll after activity */
#define LOCK_RETRY_MS 1000	/* standby: how often to try the lock */
#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 2000
#define SLICE_MS 250		/* longest sleep: bounds the reaction to tracker_stop() */
#define MQ_POLL_MS 1000		/* service AMQP heartbeats at least this often */
#define REPEAT_LOG_MS 30000	/* an unchanged connection error is logged again after this */
#define LAG_WARN_REPEAT_MS 60000

static const char *const tracker_keys[] = {
	"name", "batch_size", "inflight", "poll_ms", "lag_warn", "confirm_timeout",
	"status_interval", HTTPD_CONFIG_KEYS, NULL,
};

static const char sql_try_lock[] = "SELECT cqrs.tracker_try_lock($1)";
static const char sql_holder[] = "SELECT pid, application_name FROM cqrs.tracker_holder($1)";
static const char sql_load_checkpoint[] =
	"SELECT xid::text, position FROM cqrs.checkpoints WHERE name = $1";
/* Moves the checkpoint only while this session holds the lock: 0 rows
 * written means the lock is gone. */
const char tracker_save_checkpoint_sql[] =
	"INSERT INTO cqrs.checkpoints AS c (name, xid, position, updated_at) "
	"SELECT $1, $2::xid8, $3::bigint, clock_timestamp() WHERE cqrs.tracker_holds_lock($1) "
	"ON CONFLICT (name) DO UPDATE SET xid = excluded.xid, position = excluded.position, "
	"updated_at = excluded.updated_at";
static const char sql_status[] =
	"SELECT lag_events, coalesce(lag_seconds, 0), held_events, blocker_pid, "
	"blocker_application, coalesce(blocker_seconds, 0) FROM cqrs.tracker_status($1)";

/* ---- config ---------------------------------------------------------------- */

static char *
dup_opt(const char *s)
{
	return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

int
tracker_config_load(const struct config *cfg, struct tracker_config *out, struct cqrs_err *err)
{
	int64_t v;
	int rc;

	memset(out, 0, sizeof(*out));
	if ((rc = cqrs_config_check_keys(cfg, "tracker", tracker_keys, err)) < 0)
		return rc;
	out->conninfo = dup_opt(cqrs_config_get(cfg, "store", "conninfo", NULL));
	if (out->conninfo == NULL) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "store.conninfo is not set (config [store] "
				  "conninfo, or CQRS_STORE_CONNINFO)");
		goto bad;
	}
	if ((rc = cqrs_broker_config_load(cfg, &out->broker, err)) < 0)
		goto bad;
	out->name = strdup(cqrs_config_get(cfg, "tracker", "name", "tracker"));
	if (out->name == NULL) {
		rc = cqrs_err_set(err, CQRS_ENOMEM, "out of memory");
		goto bad;
	}
	if (out->name[0] == '\0' || strlen(out->name) > 200) {
		rc = cqrs_err_set(err, CQRS_ECONFIG, "tracker.name must be 1 to 200 bytes");
		goto bad;
	}
	if ((rc = cqrs_config_get_int(cfg, "tracker", "batch_size", 500, 1, 10000, &v, err)) < 0)
		goto bad;
	out->batch_size = (int)v;
	if ((rc = cqrs_config_get_int(cfg, "tracker", "inflight", 4, 1, 64, &v, err)) < 0)
		goto bad;
	out->inflight = (int)v;
	if ((rc = cqrs_config_get_ms(cfg, "tracker", "poll_ms", 1000, POLL_MIN_MS, 3600000,
				&out->poll_ms, err)) < 0)
		goto bad;
	if ((rc = cqrs_config_get_ms(cfg, "tracker", "lag_warn", 30000, 0, 86400000,
				&out->lag_warn_ms, err)) < 0)
		goto bad;
	if ((rc = cqrs_config_get_ms(cfg, "tracker", "confirm_timeout", 30000, 100, 3600000,
				&out->confirm_timeout_ms, err)) < 0)
		goto bad;
	if ((rc = cqrs_config_get_ms(cfg, "tracker", "status_interval", 5000, 100, 3600000,
				&out->status_ms, err)) < 0)
		goto bad;
	if ((rc = cqrs_httpd_config_load(cfg, "tracker", &out->http, err)) < 0)
		goto bad;
	return 0;
bad:
	tracker_config_clear(out);
	return rc;
}

void
tracker_config_clear(struct tracker_config *c)
{
	free(c->conninfo);
	free(c->name);
	cqrs_broker_config_clear(&c->broker);
	memset(c, 0, sizeof(*c));
}

/* ---- small things ---------------------------------------------------------- */

static bool
stopping(struct tracker *t)
{
	return atomic_load(&t->stop) != 0;
}

/* libpq messages end with a newline */
static void
pg_message(PGconn *pg, PGresult *res, char *buf, size_t size)
{
	const char *m = res != NULL ? PQresultErrorMessage(res) : NULL;
	size_t n;

	if (m == NULL || m[0] == '\0')
		m = PQerrorMessage(pg);
	snprintf(buf, size, "%s", m);
	n = strlen(buf);
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
}

static void
stats_update(struct tracker *t, void (*fn)(struct tracker_stats *, void *), void *arg)
{
	pthread_mutex_lock(&t->mu);
	fn(&t->stats, arg);
	pthread_mutex_unlock(&t->mu);
}

static void
set_lag(struct tracker_stats *s, void *arg)
{
	const struct tracker *t = arg;

	s->lag_events = t->lag_events;
	s->held_events = t->held_events;
	s->lag_seconds = t->lag_seconds;
	s->blocker_seconds = t->blocker_seconds;
}

static void
set_up(struct tracker_stats *s, void *arg)
{
	const struct tracker *t = arg;

	s->pg_up = t->pg != NULL;
	s->mq_up = t->mq != NULL;
}

static void
set_active(struct tracker_stats *s, void *arg)
{
	s->active = *(bool *)arg;
	if (s->active)
		s->activations++;
}

static void
set_ready(struct tracker_stats *s, void *arg)
{
	(void)arg;
	s->ready = true;
}

struct batch_done {
	size_t n, k;
	struct store_checkpoint cp;
};

static void
add_batches(struct tracker_stats *s, void *arg)
{
	struct batch_done *b = arg;

	s->published += b->n;
	s->batches += b->k;
	s->checkpoint = b->cp;
}

void
tracker_note_done(struct tracker *t, size_t n, size_t k, const struct store_checkpoint *cp)
{
	struct batch_done b = { n, k, *cp };

	stats_update(t, add_batches, &b);
}

static void
set_checkpoint(struct tracker_stats *s, void *arg)
{
	s->checkpoint = *(struct store_checkpoint *)arg;
}

struct store_checkpoint
tracker_checkpoint(struct tracker *t)
{
	struct store_checkpoint cp;

	pthread_mutex_lock(&t->mu);
	cp = t->stats.checkpoint;
	pthread_mutex_unlock(&t->mu);
	return cp;
}

void
tracker_get_stats(const struct tracker *t, struct tracker_stats *out)
{
	struct tracker *m = (struct tracker *)t;

	pthread_mutex_lock(&m->mu);
	*out = m->stats;
	pthread_mutex_unlock(&m->mu);
}

const char *
tracker_app_name(const struct tracker *t)
{
	return t->app;
}

static bool
is_active(struct tracker *t)
{
	bool a;

	pthread_mutex_lock(&t->mu);
	a = t->stats.active;
	pthread_mutex_unlock(&t->mu);
	return a;
}

/* ---- life ------------------------------------------------------------------ */

int
tracker_new(const struct tracker_config *cfg, struct tracker **out, struct cqrs_err *err)
{
	struct tracker *t = calloc(1, sizeof(*t));
	char host[64];

	if (t == NULL)
		return cqrs_err_set(err, CQRS_ENOMEM, "tracker: out of memory");
	t->cfg = cfg;
	if (gethostname(host, sizeof(host)) != 0)
		snprintf(host, sizeof(host), "localhost");
	host[sizeof(host) - 1] = '\0';
	snprintf(t->app, sizeof(t->app), "cqrs-tracker@%s:%d", host, (int)getpid());
	t->log.comp = "tracker";
	atomic_init(&t->stop, 0);
	pthread_mutex_init(&t->mu, NULL);
	cqrs_broker_options_default(&t->bopt);
	cqrs_broker_config_options(&cfg->broker, &t->bopt);
	t->bopt.connection_name = t->app;
	/* up to 20% jitter, so that several trackers do not knock in step */
	backoff_init(&t->pg_backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS, 20);
	backoff_init(&t->mq_backoff, BACKOFF_MIN_MS, BACKOFF_MAX_MS, 20);
	t->poll_interval = POLL_MIN_MS;
	cqrs_daemon_watchdog_init(&t->watchdog);
	srandom((unsigned)getpid() ^ (unsigned)cqrs_now_ms());
	*out = t;
	return 0;
}

void
tracker_free(struct tracker *t)
{
	if (t == NULL)
		return;
	cqrs_broker_free(t->mq);
	PQfinish(t->pg);
	pipeline_free(t);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

void
tracker_stop(struct tracker *t)
{
	atomic_store(&t->stop, 1);
}

/* ---- connections ------------------------------------------------------------ */

/*
 * A connection error: logged when it is new or after REPEAT_LOG_MS, so a
 * server that stays down for an hour gives a line every half minute, not
 * ten a second.
 */
static void
note_error(struct tracker *t, char *last, int64_t *last_log, const char *what, const char *msg,
	   int64_t retry_ms)
{
	int64_t now = cqrs_now_ms();

	if (strcmp(last, msg) != 0 || now - *last_log >= REPEAT_LOG_MS) {
		cqrs_log_error(&t->log, "%s: %s (retrying in %" PRId64 " ms)", what, msg, retry_ms);
		cqrs_sdnotify_status("%s: %s", what, msg);
		*last_log = now;
		snprintf(last, CQRS_ERR_MSG_MAX, "%s", msg);
	}
}

static void
set_inactive(struct tracker *t)
{
	bool no = false;

	if (is_active(t))
		stats_update(t, set_active, &no);
}

void
tracker_pg_lost(struct tracker *t, const char *what, const char *msg)
{
	int64_t delay = backoff_next(&t->pg_backoff);

	if (is_active(t))
		cqrs_log_warn(&t->log, "stopped publishing: the PostgreSQL session holding the "
				       "lock of tracker \"%s\" is gone", t->cfg->name);
	note_error(t, t->pg_last_err, &t->pg_last_log, what, msg, delay);
	PQfinish(t->pg);
	t->pg = NULL;
	set_inactive(t);
	pipeline_reset(t);
	t->pg_retry_at = cqrs_now_ms() + delay;
}

static void
pg_lost_res(struct tracker *t, const char *what, PGresult *res)
{
	char msg[CQRS_ERR_MSG_MAX];

	pg_message(t->pg, res, msg, sizeof(msg));
	tracker_pg_lost(t, what, msg);
}

void
tracker_mq_lost(struct tracker *t, const char *what, const char *msg)
{
	int64_t delay = backoff_next(&t->mq_backoff);

	note_error(t, t->mq_last_err, &t->mq_last_log, what, msg, delay);
	cqrs_broker_free(t->mq);
	t->mq = NULL;
	pipeline_reset(t);	/* what was not confirmed goes out again */
	t->mq_retry_at = cqrs_now_ms() + delay;
}

static int
pg_open(struct tracker *t)
{
	/* Defaults first, then the user's conninfo (expanded from "dbname"),
	 * then application_name, which must name us for cqrsctl status. */
	const char *keys[] = { CQRS_PG_DEFAULT_KEYS, "dbname", "application_name", NULL };
	const char *vals[] = { CQRS_PG_DEFAULT_VALUES, t->cfg->conninfo, t->app, NULL };
	PGresult *res;

	t->pg = PQconnectdbParams(keys, vals, 1);
	if (t->pg == NULL || PQstatus(t->pg) != CONNECTION_OK) {
		char msg[CQRS_ERR_MSG_MAX];
		pg_message(t->pg, NULL, msg, sizeof(msg));
		tracker_pg_lost(t, "cannot connect to PostgreSQL", msg);
		return -1;
	}
	/* A checkpoint lost in a crash only means publishing its batch again,
	 * so the checkpoint writes need not wait for the WAL flush. */
	res = PQexec(t->pg, "SET synchronous_commit TO off");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		pg_lost_res(t, "PostgreSQL: SET synchronous_commit", res);
		PQclear(res);
		return -1;
	}
	PQclear(res);
	if (t->pg_last_err[0] != '\0')
		cqrs_log_info(&t->log, "connected to PostgreSQL again");
	t->pg_last_err[0] = '\0';
	t->holder[0] = '\0';
	t->next_lock_try = 0;
	return 0;
}

static int
mq_open(struct tracker *t)
{
	struct cqrs_err err = { 0 };

	if (cqrs_broker_connect(t->cfg->broker.url, &t->bopt, &t->mq, &err) < 0 ||
	    cqrs_broker_declare_topology(t->mq, &err) < 0) {
		tracker_mq_lost(t, "cannot connect to RabbitMQ", err.msg);
		return -1;
	}
	if (t->mq_last_err[0] != '\0')
		cqrs_log_info(&t->log, "connected to RabbitMQ %s again", cqrs_broker_name(t->mq));
	else
		cqrs_log_info(&t->log, "connected to RabbitMQ %s", cqrs_broker_name(t->mq));
	t->mq_last_err[0] = '\0';
	backoff_reset(&t->mq_backoff);
	t->mq_blocked_logged = false;
	t->next_mq_poll = cqrs_now_ms() + MQ_POLL_MS;
	return 0;
}

/* Collects NOTIFYs that libpq has already read: any of them is a wake-up. */
static void
drain_notifies(struct tracker *t)
{
	PGnotify *n;

	if (t->pg == NULL)
		return;
	while ((n = PQnotifies(t->pg)) != NULL) {
		t->wake = true;
		PQfreemem(n);
	}
}

/*
 * Waits for the answer to the statement sent on t->pg, pinging the watchdog
 * and keeping the AMQP heartbeats going meanwhile: a statement may take long
 * (a table lock an operator holds, a slow disk) and that is no reason for
 * systemd to kill the loop, nor for RabbitMQ to drop the connection. An
 * AMQP error here only marks the broker broken; the loop notices it at its
 * next call, not in the middle of a batch. 0, or -1 when the session broke.
 */
static int
pg_wait_answer(struct tracker *t)
{
	for (;;) {
		struct pollfd p = { .fd = PQsocket(t->pg), .events = POLLIN };
		int64_t timeout = cqrs_daemon_tick(&t->watchdog), now;

		if (!PQconsumeInput(t->pg))
			return -1;
		if (!PQisBusy(t->pg))
			return 0;
		now = cqrs_now_ms();
		if (t->mq != NULL && now >= t->next_mq_poll) {
			struct cqrs_err err = { 0 };
			/* an error leaves the broker broken: mq_service() drops it */
			int rc = cqrs_broker_poll(t->mq, &err);

			(void)rc;
			t->next_mq_poll = now + MQ_POLL_MS;
		}
		if (timeout > SLICE_MS)
			timeout = SLICE_MS;
		if (t->mq != NULL && t->next_mq_poll - now < timeout)
			timeout = t->next_mq_poll - now;
		if (timeout < 0)
			timeout = 0;
		if (poll(&p, 1, (int)timeout) < 0 && errno != EINTR) {
			cqrs_log_error(&t->log, "poll: %s", strerror(errno));
			usleep(100000);
		}
	}
}

PGresult *
tracker_pg_query(struct tracker *t, const char *what, const char *sql, int n,
		 const char *const *params, ExecStatusType want)
{
	PGresult *res = NULL, *more;

	if (PQsendQueryParams(t->pg, sql, n, NULL, params, NULL, NULL, 0) &&
	    pg_wait_answer(t) == 0) {
		res = PQgetResult(t->pg);
		while ((more = PQgetResult(t->pg)) != NULL)
			PQclear(more);
	}
	if (PQresultStatus(res) != want) {
		pg_lost_res(t, what, res);
		PQclear(res);
		return NULL;
	}
	drain_notifies(t);
	return res;
}

/* ---- the lock ----------------------------------------------------------------- */

/* Standby: logs who is active when that changes. */
static void
note_holder(struct tracker *t)
{
	const char *params[1] = { t->cfg->name };
	PGresult *res = tracker_pg_query(t, "PostgreSQL: who holds the lock", sql_holder, 1,
					 params, PGRES_TUPLES_OK);
	char holder[128];

	if (res == NULL)
		return;
	if (PQntuples(res) > 0)
		snprintf(holder, sizeof(holder), "%s (backend pid %s)", PQgetvalue(res, 0, 1),
			 PQgetvalue(res, 0, 0));
	else
		snprintf(holder, sizeof(holder), "nobody (it was just released)");
	PQclear(res);
	if (strcmp(holder, t->holder) != 0) {
		cqrs_log_info(&t->log, "standby: tracker \"%s\" is active at %s", t->cfg->name, holder);
		snprintf(t->holder, sizeof(t->holder), "%s", holder);
	}
	cqrs_sdnotify_status("standby: tracker \"%s\" is active at %s", t->cfg->name, holder);
}

/* Tries the lock; when won, loads the checkpoint and starts listening. */
static void
try_activate(struct tracker *t)
{
	const char *params[1] = { t->cfg->name };
	struct store_checkpoint cp = STORE_CHECKPOINT_START;
	char cpbuf[48];
	PGresult *res;
	bool won, yes = true;

	res = tracker_pg_query(t, "PostgreSQL: taking the tracker lock (is the schema migrated? "
			       "cqrsctl migrate)", sql_try_lock, 1, params, PGRES_TUPLES_OK);
	if (res == NULL)
		return;
	won = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "t") == 0;
	PQclear(res);
	backoff_reset(&t->pg_backoff);	/* the session works */
	if (!won) {
		note_holder(t);
		return;
	}
	res = tracker_pg_query(t, "PostgreSQL: reading the checkpoint", sql_load_checkpoint, 1,
			       params, PGRES_TUPLES_OK);
	if (res == NULL)
		return;
	if (PQntuples(res) == 1) {
		cp.xid = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		cp.position = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
	}
	PQclear(res);
	res = tracker_pg_query(t, "PostgreSQL: LISTEN cqrs_events", "LISTEN cqrs_events", 0,
			       NULL, PGRES_COMMAND_OK);
	if (res == NULL)
		return;
	PQclear(res);
	stats_update(t, set_checkpoint, &cp);
	stats_update(t, set_active, &yes);
	pipeline_reset(t);
	t->wake = true;		/* read at once */
	t->next_status = 0;
	cqrs_store_checkpoint_format(&cp, cpbuf, sizeof(cpbuf));
	cqrs_log_info(&t->log, "active: holding the lock of tracker \"%s\", publishing after "
			       "checkpoint %s", t->cfg->name, cpbuf);
}

/* ---- status --------------------------------------------------------------------- */

static void
post_status(struct tracker *t)
{
	/* beyond cqrs.tracker_status's count limit, lag is an estimate */
	const char *about = t->lag_exact ? "" : "about ";
	struct tracker_stats s;
	char cpbuf[48];

	tracker_get_stats(t, &s);
	cqrs_store_checkpoint_format(&s.checkpoint, cpbuf, sizeof(cpbuf));
	if (t->held_events > 0)
		cqrs_sdnotify_status("active: checkpoint %s, %" PRIu64 " published, lag %s%" PRId64
				" events (%.1f s), %" PRId64 " held back by a transaction open "
				"for %.1f s", cpbuf, s.published, about, t->lag_events,
				t->lag_seconds, t->held_events, t->blocker_seconds);
	else
		cqrs_sdnotify_status("active: checkpoint %s, %" PRIu64 " published, lag %s%" PRId64
				" events (%.1f s)", cpbuf, s.published, about, t->lag_events,
				t->lag_seconds);
}

/*
 * Measures lag (cqrs.tracker_status) and warns about a transaction that
 * holds events back: the price of never skipping one is that an event
 * committed after an old open transaction waits for it to end.
 */
static void
check_lag(struct tracker *t)
{
	const char *params[1] = { t->cfg->name };
	PGresult *res = tracker_pg_query(t, "PostgreSQL: measuring lag", sql_status, 1, params,
					 PGRES_TUPLES_OK);
	int64_t now = cqrs_now_ms();

	if (res == NULL || PQntuples(res) != 1) {
		PQclear(res);
		return;
	}
	t->lag_events = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	t->lag_seconds = strtod(PQgetvalue(res, 0, 1), NULL);
	t->held_events = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	t->blocker_seconds = strtod(PQgetvalue(res, 0, 5), NULL);
	t->lag_exact = t->lag_events <= STORE_TRACKER_STATUS_LIMIT;
	stats_update(t, set_lag, t);
	if (t->held_events > 0 && t->blocker_seconds * 1000 >= (double)t->cfg->lag_warn_ms) {
		if (t->lag_warned_at == 0 || now - t->lag_warned_at >= LAG_WARN_REPEAT_MS) {
			cqrs_log_warn(&t->log, "%" PRId64 " committed events are held back by a "
					       "transaction open for %.1f s (backend pid %s, "
					       "application \"%s\"): they are published when it ends",
				      t->held_events, t->blocker_seconds,
				      PQgetisnull(res, 0, 3) ? "none: prepared" : PQgetvalue(res, 0, 3),
				      PQgetvalue(res, 0, 4));
			t->lag_warned_at = now;
		}
	} else if (t->lag_warned_at != 0 && t->held_events == 0) {
		cqrs_log_info(&t->log, "no more events held back by open transactions");
		t->lag_warned_at = 0;
	}
	PQclear(res);
	post_status(t);
}

/* ---- waiting ---------------------------------------------------------------------- */

static void
mq_service(struct tracker *t)
{
	struct cqrs_err err = { 0 };
	const char *reason;

	if (t->mq == NULL)
		return;
	if (cqrs_broker_poll(t->mq, &err) < 0) {
		tracker_mq_lost(t, "RabbitMQ", err.msg);
		return;
	}
	if (cqrs_broker_blocked(t->mq, &reason) != t->mq_blocked_logged) {
		t->mq_blocked_logged = !t->mq_blocked_logged;
		if (t->mq_blocked_logged)
			cqrs_log_warn(&t->log, "RabbitMQ %s blocks publishing: %s", cqrs_broker_name(t->mq),
				      reason);
		else
			cqrs_log_info(&t->log, "RabbitMQ %s accepts publishing again",
				      cqrs_broker_name(t->mq));
	}
	t->next_mq_poll = cqrs_now_ms() + MQ_POLL_MS;
}

/*
 * Sleeps until `until`, a NOTIFY that can be acted on, confirms that let
 * the checkpoint move, or tracker_stop(), while keeping both connections
 * serviced: notifications and a lost session on the PostgreSQL socket,
 * acks, heartbeats and closes on the AMQP one, and the watchdog.
 */
static void
wait_until(struct tracker *t, int64_t until)
{
	for (;;) {
		struct pollfd fds[2];
		int nfds = 0, pg_i = -1, mq_i = -1;
		int64_t now, timeout, watchdog_left;

		drain_notifies(t);
		if (stopping(t))
			return;
		if (is_active(t) && ((t->wake && pipeline_has_room(t)) || pipeline_settleable(t)))
			return;
		now = cqrs_now_ms();
		watchdog_left = cqrs_daemon_tick(&t->watchdog);
		if (t->mq != NULL && now >= t->next_mq_poll)
			mq_service(t);
		if (now >= until)
			return;
		timeout = until - now;
		if (timeout > SLICE_MS)
			timeout = SLICE_MS;
		if (watchdog_left < timeout)
			timeout = watchdog_left;
		if (t->mq != NULL && t->next_mq_poll - now < timeout)
			timeout = t->next_mq_poll - now;
		if (timeout < 0)
			timeout = 0;
		if (t->pg != NULL) {
			fds[nfds].fd = PQsocket(t->pg);
			fds[nfds].events = POLLIN;
			pg_i = nfds++;
		}
		if (t->mq != NULL && cqrs_broker_fd(t->mq) >= 0) {
			fds[nfds].fd = cqrs_broker_fd(t->mq);
			fds[nfds].events = POLLIN;
			mq_i = nfds++;
		}
		if (poll(fds, (nfds_t)nfds, (int)timeout) < 0) {
			/* EINTR: a signal (SIGTERM); revents are not set then */
			if (errno != EINTR) {
				cqrs_log_error(&t->log, "poll: %s", strerror(errno));
				usleep(100000);
			}
			continue;
		}
		if (pg_i >= 0 && (fds[pg_i].revents & (POLLIN | POLLERR | POLLHUP))) {
			/* a NOTIFY, or the server going away */
			if (!PQconsumeInput(t->pg) || PQstatus(t->pg) == CONNECTION_BAD)
				pg_lost_res(t, "PostgreSQL connection lost", NULL);
		}
		if (mq_i >= 0 && (fds[mq_i].revents & (POLLIN | POLLERR | POLLHUP)))
			mq_service(t);	/* acks, mostly */
	}
}

/* ---- the loop ---------------------------------------------------------------------- */

static int64_t
min64(int64_t a, int64_t b)
{
	return a < b ? a : b;
}

int
tracker_run(struct tracker *t)
{
	int64_t now;

	cqrs_log_info(&t->log, "starting as %s: tracker \"%s\", batch_size %d, inflight %d, "
			       "poll_ms %" PRId64, t->app, t->cfg->name, t->cfg->batch_size,
		      t->cfg->inflight, t->cfg->poll_ms);
	while (!stopping(t)) {
		size_t n = 0;

		now = cqrs_now_ms();
		(void)cqrs_daemon_tick(&t->watchdog);	/* and a SIGHUP's reload */
		if (t->pg == NULL && now >= t->pg_retry_at)
			(void)pg_open(t);
		if (t->mq == NULL && now >= t->mq_retry_at)
			(void)mq_open(t);
		stats_update(t, set_up, t);	/* for /health */
		if (t->pg == NULL || t->mq == NULL) {
			int64_t until = INT64_MAX;
			if (t->pg == NULL)
				until = min64(until, t->pg_retry_at);
			if (t->mq == NULL)
				until = min64(until, t->mq_retry_at);
			wait_until(t, until);
			continue;
		}
		if (!t->stats.ready) {
			stats_update(t, set_ready, NULL);
			cqrs_sdnotify_ready("connected to PostgreSQL and RabbitMQ");
			cqrs_log_info(&t->log, "ready: connected to PostgreSQL and RabbitMQ %s",
				      cqrs_broker_name(t->mq));
		}
		if (!is_active(t)) {
			if (now >= t->next_lock_try) {
				t->next_lock_try = now + LOCK_RETRY_MS;
				try_activate(t);
			}
			if (!is_active(t)) {
				wait_until(t, t->next_lock_try);
				continue;
			}
		}
		mq_service(t);		/* acks, blocked/unblocked */
		if (t->mq == NULL)
			continue;
		if (cqrs_broker_blocked(t->mq, NULL)) {
			/* publishing would only stall in the socket */
			if (pipeline_settle(t) == 0)
				wait_until(t, now + SLICE_MS);
			continue;
		}
		/* new events first (their latency), then the checkpoint over
		 * what the broker has confirmed meanwhile */
		if (pipeline_has_room(t) && pipeline_fill(t, &n) < 0)
			continue;
		if (pipeline_settle(t) < 0)
			continue;
		now = cqrs_now_ms();
		if (t->pg != NULL && is_active(t) && now >= t->next_status) {
			t->next_status = now + t->cfg->status_ms;
			check_lag(t);
		}
		if (n == (size_t)t->cfg->batch_size && pipeline_has_room(t))
			continue;	/* more are waiting */
		if (n > 0 || t->wake)
			t->poll_interval = POLL_MIN_MS;
		else if (pipeline_has_room(t))
			t->poll_interval = min64(t->poll_interval * 2, t->cfg->poll_ms);
		/* window full: wait for confirms (wait_until returns when the
		 * oldest batch can be settled) */
		wait_until(t, now + (pipeline_has_room(t) ? t->poll_interval : SLICE_MS));
		if (t->wake)
			t->poll_interval = POLL_MIN_MS;
	}

	/* the batches in flight: their confirms, then the checkpoint */
	if (is_active(t))
		pipeline_flush(t);
	cqrs_sdnotify_stopping();
	{
		struct tracker_stats s;
		char cpbuf[48];

		tracker_get_stats(t, &s);
		cqrs_store_checkpoint_format(&s.checkpoint, cpbuf, sizeof(cpbuf));
		cqrs_log_info(&t->log, "stopping: %" PRIu64 " events published, checkpoint %s",
			      s.published, cpbuf);
	}
	cqrs_broker_free(t->mq);
	t->mq = NULL;
	PQfinish(t->pg);	/* releases the lock */
	t->pg = NULL;
	set_inactive(t);
	return 0;
}
