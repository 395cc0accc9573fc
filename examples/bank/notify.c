/*
 * notify.c - group "notifications": a side effect outside the database. A
 * withdrawal of BANK_LARGE_WITHDRAWAL cents or more is announced with one log
 * line (a stand-in for a mail or a message to another system).
 *
 * Like every effect that does not go through the consumer's transaction, it
 * happens at least once: a redelivery after a crash before the commit
 * announces again. The line carries the event id, so a receiver can drop
 * what it has seen.
 */
#include <inttypes.h>
#include <stdio.h>

#include "bank.h"
#include "readside.h"

static int
on_withdrawn(struct cqrs_event_ctx *ctx, const struct cqrs_event *ev)
{
	const char *account = bank_stream_id(ev->stream);
	int64_t amount, balance = 0;

	if (field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &amount) < 0)
		return cqrs_event_fail(ctx, CQRS_HANDLED_FAIL, "MoneyWithdrawn without a valid amount");
	if (amount < BANK_LARGE_WITHDRAWAL)
		return CQRS_HANDLED_OK;
	(void)field_int(ev->data, "balance", -BANK_BALANCE_MAX, BANK_BALANCE_MAX, &balance);
	cqrs_log_info(cqrs_event_log(ctx),
		      "large withdrawal: %" PRId64 " cents from account %s (balance %" PRId64
		      ", event %s)",
		      amount, account != NULL ? account : ev->stream, balance, ev->id);
	return CQRS_HANDLED_OK;
}

int
notify_register(struct cqrs_registry *reg)
{
	return cqrs_register_event_handler(reg, "notifications", "account.MoneyWithdrawn",
					   on_withdrawn, NULL);
}
