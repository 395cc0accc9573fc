/*
 * projection.c - group "projections": the read model of accounts,
 *
 *   bank_balances (account_id text PRIMARY KEY,   -- the aggregate id
 *                  owner text, balance bigint, status 'open' | 'closed',
 *                  version int)                   -- the stream version shown
 *
 * kept by one statement per event in the consumer's transaction, so it
 * changes exactly when the consumer records the event as handled. Balances
 * are added up from the amounts (not copied from the events' "balance"), so
 * an event applied twice or skipped would show; the tests compare the
 * result with the store.
 *
 * The table is created by the first handler call of a process (CREATE TABLE
 * IF NOT EXISTS, in the transaction) and emptied by the reset for replays.
 */
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bank.h"
#include "readside.h"

#define SQL_CREATE                                                                        \
	"CREATE TABLE IF NOT EXISTS bank_balances ("                                        \
	" account_id text PRIMARY KEY,"                                                     \
	" owner text NOT NULL,"                                                             \
	" balance bigint NOT NULL DEFAULT 0,"                                               \
	" status text NOT NULL CHECK (status IN ('open', 'closed')),"                      \
	" version int NOT NULL)"
#define SQL_OPENED                                                                        \
	"INSERT INTO bank_balances (account_id, owner, balance, status, version) "          \
	"VALUES ($1, $2, 0, 'open', $3) ON CONFLICT (account_id) DO UPDATE "                \
	"SET owner = excluded.owner, balance = 0, status = 'open', version = excluded.version"
#define SQL_MONEY                                                                         \
	"UPDATE bank_balances SET balance = balance + $2, version = $3 WHERE account_id = $1"
#define SQL_CLOSED                                                                        \
	"UPDATE bank_balances SET status = 'closed', version = $2 WHERE account_id = $1"
#define SQL_VERSION "UPDATE bank_balances SET version = $2 WHERE account_id = $1"

/* Whether this process has made sure the table exists. When the transaction
 * that created it rolls back, the next statement says "undefined table" and
 * this is cleared (see bank_sql_failed's caller below). */
static bool table_ready;

/*
 * The statements are prepared once per session: parsing and planning an
 * UPDATE costs about as much as running it. The consumer may reconnect, so
 * the session they were prepared on is remembered by connection and backend
 * pid; a statement found missing anyway (SQLSTATE 26000) is prepared again
 * on the retry.
 */
static const struct {
	const char *name, *sql;
	int nparams;
} statements[] = {
	{ "bank_opened", SQL_OPENED, 3 },
	{ "bank_money", SQL_MONEY, 3 },
	{ "bank_closed", SQL_CLOSED, 2 },
	{ "bank_version", SQL_VERSION, 2 },
};
static const PGconn *prepared_on;
static int prepared_pid;

const char *
bank_stream_id(const char *stream)
{
	const char *dash = strchr(stream, '-');

	return dash != NULL && dash[1] != '\0' ? dash + 1 : NULL;
}

int
bank_sql_failed(struct cqrs_event_ctx *ctx, PGconn *pg, PGresult *res, const char *what)
{
	const char *state = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	const char *msg = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
	bool transient = res == NULL || PQstatus(pg) != CONNECTION_OK;

	if (msg == NULL)
		msg = PQerrorMessage(pg);
	if (state != NULL)
		transient = transient || strncmp(state, "40", 2) == 0 ||
			    strncmp(state, "08", 2) == 0 || strncmp(state, "53", 2) == 0 ||
			    strncmp(state, "57", 2) == 0 || strcmp(state, "55P03") == 0 ||
			    strcmp(state, "42P01") == 0;
	if (state != NULL && strcmp(state, "42P01") == 0)
		table_ready = false;
	if (state != NULL && strcmp(state, "26000") == 0) {
		prepared_on = NULL;
		transient = true;
	}
	return cqrs_event_fail(ctx, transient ? CQRS_HANDLED_RETRY : CQRS_HANDLED_FAIL,
			       "bank_balances: %s: %.*s", what, (int)strcspn(msg, "\n"), msg);
}

static int
prepare(struct cqrs_event_ctx *ctx, PGconn *pg)
{
	if (prepared_on == pg && prepared_pid == PQbackendPID(pg))
		return CQRS_HANDLED_OK;
	for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
		PGresult *res = PQprepare(pg, statements[i].name, statements[i].sql,
					  statements[i].nparams, NULL);
		const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		int rc = CQRS_HANDLED_OK;

		/* 42P05: this session has them already */
		if (PQresultStatus(res) != PGRES_COMMAND_OK &&
		    (state == NULL || strcmp(state, "42P05") != 0))
			rc = bank_sql_failed(ctx, pg, res, "prepare");
		PQclear(res);
		if (rc != CQRS_HANDLED_OK)
			return rc;
	}
	prepared_on = pg;
	prepared_pid = PQbackendPID(pg);
	return CQRS_HANDLED_OK;
}

/* Runs one prepared statement; 1 row changed: CQRS_HANDLED_OK. */
static int
run(struct cqrs_event_ctx *ctx, PGconn *pg, const char *what, const char *stmt, int n,
    const char *const *params, bool must_change)
{
	PGresult *res = PQexecPrepared(pg, stmt, n, params, NULL, NULL, 0);
	int rc = CQRS_HANDLED_OK;

	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = bank_sql_failed(ctx, pg, res, what);
	else if (must_change && strcmp(PQcmdTuples(res), "1") != 0)
		rc = cqrs_event_fail(ctx, CQRS_HANDLED_FAIL,
				     "bank_balances: %s: account %s is not in the read model "
				     "(was its AccountOpened handled?)",
				     what, params[0]);
	PQclear(res);
	return rc;
}

static int
ensure_table(struct cqrs_event_ctx *ctx, PGconn *pg)
{
	PGresult *res;
	int rc = CQRS_HANDLED_OK;

	if (table_ready)
		return rc;
	/* Two consumers creating the table at once would collide in the
	 * catalog (a unique violation on pg_type): the lock makes the second
	 * wait for the first's commit and find the table there. */
	res = PQexec(pg, "SELECT pg_advisory_xact_lock(hashtext('bank_balances')); " SQL_CREATE);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		bank_sql_failed(ctx, pg, res, "create table");
		rc = CQRS_HANDLED_RETRY;	/* whatever it was, the next try may pass */
	} else {
		table_ready = true;
	}
	PQclear(res);
	return rc;
}

static int
on_account_event(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	const char *id = bank_stream_id(ev->stream);
	char version[24], amount[24], owner[BANK_OWNER_MAX + 1];
	int64_t n;
	int rc;

	if (id == NULL)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "stream \"%s\" has no account id",
				       ev->stream);
	if ((rc = ensure_table(ctx, pg)) != CQRS_HANDLED_OK ||
	    (rc = prepare(ctx, pg)) != CQRS_HANDLED_OK)
		return rc;
	snprintf(version, sizeof(version), "%" PRId64, ev->version);
	if (strcmp(ev->type, "AccountOpened") == 0) {
		const char *params[3] = { id, owner, version };

		if (field_str(ev->data, "owner", owner, sizeof(owner)) < 0)
			return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "AccountOpened without owner");
		return run(ctx, pg, "AccountOpened", "bank_opened", 3, params, false);
	}
	if (strcmp(ev->type, "MoneyDeposited") == 0 || strcmp(ev->type, "MoneyWithdrawn") == 0) {
		const char *params[3] = { id, amount, version };
		bool out = ev->type[5] == 'W';

		if (field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &n) < 0)
			return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "%s without a valid amount",
					       ev->type);
		snprintf(amount, sizeof(amount), "%" PRId64, out ? -n : n);
		return run(ctx, pg, ev->type, "bank_money", 3, params, true);
	}
	if (strcmp(ev->type, "AccountClosed") == 0) {
		const char *params[2] = { id, version };

		return run(ctx, pg, "AccountClosed", "bank_closed", 2, params, true);
	}
	/* an account event this version does not know: the version moves on */
	{
		const char *params[2] = { id, version };

		return run(ctx, pg, ev->type, "bank_version", 2, params, false);
	}
}

/* Replays start from an empty read model. */
static int
reset(struct cqrs_event_ctx *ctx)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	PGresult *res;
	int rc = CQRS_HANDLED_OK;

	res = PQexec(pg, "SELECT pg_advisory_xact_lock(hashtext('bank_balances')); " SQL_CREATE
			 "; TRUNCATE bank_balances");
	if (PQresultStatus(res) != PGRES_COMMAND_OK)
		rc = bank_sql_failed(ctx, pg, res, "reset");
	else
		table_ready = true;
	PQclear(res);
	cqrs_log_info(cqrs_event_log(ctx), "bank_balances emptied for a replay");
	return rc;
}

int
projection_register(struct cqrs_registry *reg)
{
	return cqrs_register_event_handler(reg, "projections", "account.*", on_account_event,
					   reset);
}
