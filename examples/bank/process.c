/*
 * process.c - group "transfers": the process manager that moves the money
 * of a transfer (transfer.c) between two accounts (account.c).
 *
 *   TransferStarted {from, to, amount}
 *     -> account.withdraw {amount} to `from`                 (key "withdraw")
 *        refused (insufficient funds, no such account)
 *        -> transfer.fail {reason}                           (key "fail")
 *   MoneyWithdrawn caused by that withdraw
 *     -> account.deposit {amount} to `to`                    (key "deposit")
 *        -> transfer.complete {}                             (key "complete")
 *        refused (no such account, closed)
 *        -> transfer.fail {reason}, then account.deposit back to `from`
 *                                                            (key "refund")
 *
 * Money is never created or lost, whatever is delivered again:
 *  - every command id derives from the causing event and the key
 *    (cqrs_send), so a rerun of a handler repeats the same commands and
 *    cqrs-cmdd answers those that succeeded as duplicates, appending nothing;
 *  - decisions are read back from the store, not from memory: before acting,
 *    a handler looks at the transfer's own stream. A concluded transfer
 *    (TransferCompleted or TransferFailed recorded) is not withdrawn from
 *    again, and a failed one whose money was withdrawn gets the refund (again
 *    a duplicate if it was made). The fail is recorded before the refund, so
 *    a crash between the two is finished by the redelivery, and a deposit
 *    that was refused once but would pass now can no longer pay out twice;
 *  - the MoneyWithdrawn of a transfer is recognized by the metadata that
 *    cqrs-consumer adds to the commands it sends (cause_stream =
 *    "transfer-ID", cause_type = "TransferStarted"), which cqrs-cmdd copies
 *    into the events, so no table of its own has to be committed before the
 *    next step can run on another consumer.
 * Only a refund refused (the source account closed meanwhile) cannot finish:
 * the event is dead-lettered for an operator, the money still accounted for
 * in the store (withdrawn, never deposited).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bank.h"
#include "readside.h"

enum transfer_state { T_STARTED, T_COMPLETED, T_FAILED };

#define SQL_CONCLUDED                                                                     \
	"SELECT type FROM cqrs.events WHERE stream = $1 "                                   \
	"AND type IN ('TransferCompleted', 'TransferFailed') ORDER BY version LIMIT 1"
#define SQL_TERMS                                                                         \
	"SELECT data->>'from', data->>'to', data->>'amount' FROM cqrs.events "             \
	"WHERE stream = $1 AND type = 'TransferStarted' ORDER BY version LIMIT 1"

/* 0 with *state, or a handled outcome (reason set). */
static int
transfer_state(struct cqrs_event_ctx *ctx, PGconn *pg, const char *stream,
	       enum transfer_state *state)
{
	const char *params[1] = { stream };
	PGresult *res = PQexecParams(pg, SQL_CONCLUDED, 1, NULL, params, NULL, NULL, 0);
	int rc = 0;

	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = bank_sql_failed(ctx, pg, res, "read the transfer's state");
	} else if (PQntuples(res) == 0) {
		*state = T_STARTED;
	} else {
		*state = strcmp(PQgetvalue(res, 0, 0), "TransferCompleted") == 0 ? T_COMPLETED
										   : T_FAILED;
	}
	PQclear(res);
	return rc;
}

static struct json_object *
amount_data(int64_t amount)
{
	return json_with_int(json_object_new_object(), "amount", amount);
}

/* The outcome of a send that should have worked: transient errors retry. */
static int
send_failed(struct cqrs_event_ctx *ctx, int rc, const struct cqrs_err *err)
{
	return cqrs_event_fail(ctx,
			       rc == CQRS_EUNAVAILABLE || rc == CQRS_ECONFLICT ? CQRS_HANDLED_RETRY
									      : CQRS_HANDLED_FAIL,
			       "%s", err->msg);
}

/* transfer.fail; an already concluded transfer is fine. */
static int
fail_transfer(struct cqrs_event_ctx *ctx, const char *transfer, const char *why)
{
	struct cqrs_err err = { 0 };
	char reason[BANK_REASON_MAX + 1];
	int rc;

	snprintf(reason, sizeof(reason), "%s", why);
	rc = cqrs_send(ctx, "fail", "transfer.fail", transfer,
		       json_with_str(json_object_new_object(), "reason", reason), &err);
	if (rc == 0 || rc == CQRS_EREJECTED)
		return CQRS_HANDLED_OK;
	return send_failed(ctx, rc, &err);
}

static int
on_started(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	const char *transfer = bank_stream_id(ev->stream);
	char from[BANK_ID_MAX + 1], why[CQRS_ERR_MSG_MAX + 64];
	struct cqrs_err err = { 0 };
	enum transfer_state state;
	int64_t amount;
	int rc;

	if (transfer == NULL || field_str(ev->data, "from", from, sizeof(from)) < 0 ||
	    field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &amount) < 0)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "TransferStarted without from/amount");
	if ((rc = transfer_state(ctx, pg, ev->stream, &state)) != 0)
		return rc;
	/* concluded already (this is a redelivery or a replay): a withdrawal
	 * refused then might pass now, and must not */
	if (state != T_STARTED)
		return CQRS_HANDLED_OK;
	rc = cqrs_send(ctx, "withdraw", "account.withdraw", from, amount_data(amount), &err);
	if (rc == 0)
		return CQRS_HANDLED_OK;
	if (rc != CQRS_EREJECTED && rc != CQRS_EINVALID)
		return send_failed(ctx, rc, &err);
	cqrs_log_info(cqrs_event_log(ctx), "transfer %s: withdrawal refused: %s", transfer,
		      err.msg);
	snprintf(why, sizeof(why), "withdrawal refused: %s", err.msg);
	return fail_transfer(ctx, transfer, why);
}

static const char *
meta_str(const struct cqrs_event *ev, const char *key)
{
	struct json_object *v;

	if (json_object_object_get_ex(ev->metadata, key, &v) &&
	    json_object_is_type(v, json_type_string))
		return json_object_get_string(v);
	return NULL;
}

static int
on_withdrawn(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	PGconn *pg = (PGconn *)cqrs_event_pg(ctx);
	const char *cause = meta_str(ev, "cause_stream");
	const char *cause_type = meta_str(ev, "cause_type");
	const char *transfer, *account = bank_stream_id(ev->stream);
	const char *params[1];
	char from[BANK_ID_MAX + 1], to[BANK_ID_MAX + 1], why[CQRS_ERR_MSG_MAX + 64];
	struct cqrs_err err = { 0 };
	enum transfer_state state;
	int64_t amount, terms_amount;
	PGresult *res;
	int rc;

	/* a withdrawal of the transfer's own making, or not ours */
	if (cause == NULL || cause_type == NULL || strncmp(cause, "transfer-", 9) != 0 ||
	    strcmp(cause_type, "TransferStarted") != 0)
		return CQRS_HANDLED_OK;
	transfer = cause + 9;
	if (field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &amount) < 0 || account == NULL)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "MoneyWithdrawn without an amount");
	params[0] = cause;
	res = PQexecParams(pg, SQL_TERMS, 1, NULL, params, NULL, NULL, 0);
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		rc = bank_sql_failed(ctx, pg, res, "read the transfer's terms");
		PQclear(res);
		return rc;
	}
	if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0) || PQgetisnull(res, 0, 1) ||
	    PQgetisnull(res, 0, 2)) {
		PQclear(res);
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "transfer %s has no TransferStarted",
				       transfer);
	}
	snprintf(from, sizeof(from), "%s", PQgetvalue(res, 0, 0));
	snprintf(to, sizeof(to), "%s", PQgetvalue(res, 0, 1));
	terms_amount = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
	PQclear(res);
	if (strcmp(from, account) != 0 || terms_amount != amount)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL,
				       "transfer %s is %" PRId64 " from %s, but %" PRId64
				       " was withdrawn from %s",
				       transfer, terms_amount, from, amount, account);

	if ((rc = transfer_state(ctx, pg, cause, &state)) != 0)
		return rc;
	if (state == T_COMPLETED)
		return CQRS_HANDLED_OK;	/* deposited, then completed: nothing left */
	if (state == T_STARTED) {
		rc = cqrs_send(ctx, "deposit", "account.deposit", to, amount_data(amount), &err);
		if (rc == 0) {
			rc = cqrs_send(ctx, "complete", "transfer.complete", transfer,
				       json_object_new_object(), &err);
			if (rc == 0 || rc == CQRS_EREJECTED)
				return CQRS_HANDLED_OK;
			return send_failed(ctx, rc, &err);
		}
		if (rc != CQRS_EREJECTED && rc != CQRS_EINVALID)
			return send_failed(ctx, rc, &err);
		cqrs_log_info(cqrs_event_log(ctx), "transfer %s: deposit to %s refused, refunding "
						   "%s: %s",
			      transfer, to, from, err.msg);
		/* recorded before the refund: see the top of this file */
		snprintf(why, sizeof(why), "deposit refused: %s", err.msg);
		if ((rc = fail_transfer(ctx, transfer, why)) != CQRS_HANDLED_OK)
			return rc;
	}
	/* failed: the money goes back */
	rc = cqrs_send(ctx, "refund", "account.deposit", from, amount_data(amount), &err);
	if (rc == 0)
		return CQRS_HANDLED_OK;
	if (rc == CQRS_EREJECTED || rc == CQRS_EINVALID)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL,
				       "transfer %s failed and its refund of %" PRId64
				       " to %s is refused: %s",
				       transfer, amount, from, err.msg);
	return send_failed(ctx, rc, &err);
}

int
process_register(struct cqrs_registry *reg)
{
	int rc = cqrs_register_event_handler(reg, "transfers", "transfer.TransferStarted",
					     on_started, NULL);

	if (rc == 0)
		rc = cqrs_register_event_handler(reg, "transfers", "account.MoneyWithdrawn",
						 on_withdrawn, NULL);
	return rc;
}
