/*
 * account.c - the "account" aggregate (stream "account-<id>").
 *
 *   account.open     {"owner": string, "overdraft_limit"?: int >= 0}
 *                    -> AccountOpened {owner, overdraft_limit}
 *   account.deposit  {"amount": int > 0} -> MoneyDeposited {amount, balance}
 *   account.withdraw {"amount": int > 0} -> MoneyWithdrawn {amount, balance}
 *   account.close    {}                  -> AccountClosed {}
 *
 * "balance" in the money events is the balance after the event: read
 * models can show it without summing, and the appliers check it against
 * their own sum, so a stream that does not add up is refused as corrupt.
 *
 * Handlers check the payload first, then the state, as the protocol asks:
 * a wrong payload is "invalid" even for an account that does not exist.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bank.h"

enum account_status {
	ACCOUNT_NONE = 0,	/* no event yet */
	ACCOUNT_OPEN,
	ACCOUNT_CLOSED,
};

struct account {
	enum account_status status;
	int64_t balance;		/* cents; >= -overdraft_limit */
	int64_t overdraft_limit;	/* cents, >= 0 */
	/* fixed size: appliers then cannot fail for want of memory */
	char owner[BANK_OWNER_MAX + 1];
};

static const char *const status_names[] = {
	[ACCOUNT_NONE] = "none",
	[ACCOUNT_OPEN] = "open",
	[ACCOUNT_CLOSED] = "closed",
};

/* ---- state and snapshot ------------------------------------------------- */

static void *
account_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, sizeof(struct account));
}

static void
account_free(void *state)
{
	free(state);
}

static struct json_object *
account_encode(const void *state)
{
	const struct account *a = state;
	struct json_object *o;

	o = json_with_str(json_object_new_object(), "status", status_names[a->status]);
	if (a->status == ACCOUNT_NONE)
		return o;
	o = json_with_str(o, "owner", a->owner);
	o = json_with_int(o, "balance", a->balance);
	return json_with_int(o, "overdraft_limit", a->overdraft_limit);
}

static int
account_decode(void *state, struct json_object *snap)
{
	struct account *a = state;
	struct account s;
	char status[16];

	memset(&s, 0, sizeof(s));
	if (field_str(snap, "status", status, sizeof(status)) < 0)
		return -1;
	if (strcmp(status, "none") == 0) {
		*a = s;
		return 0;
	}
	if (strcmp(status, "open") == 0)
		s.status = ACCOUNT_OPEN;
	else if (strcmp(status, "closed") == 0)
		s.status = ACCOUNT_CLOSED;
	else
		return -1;
	if (field_str(snap, "owner", s.owner, sizeof(s.owner)) < 0 || s.owner[0] == '\0' ||
	    field_int(snap, "overdraft_limit", 0, BANK_AMOUNT_MAX, &s.overdraft_limit) < 0 ||
	    field_int(snap, "balance", -BANK_BALANCE_MAX, BANK_BALANCE_MAX, &s.balance) < 0)
		return -1;
	/* a state that no sequence of events can reach is not a snapshot */
	if (s.balance < -s.overdraft_limit)
		return -1;
	*a = s;			/* all or nothing */
	return 0;
}

/* ---- appliers ----------------------------------------------------------- */

static int
on_opened(void *state, const struct cqrs_event *ev)
{
	struct account *a = state;
	int64_t limit = 0;

	if (a->status != ACCOUNT_NONE)
		return -1;
	if (field_str(ev->data, "owner", a->owner, sizeof(a->owner)) < 0)
		return -1;
	if (json_object_object_get_ex(ev->data, "overdraft_limit", NULL) &&
	    field_int(ev->data, "overdraft_limit", 0, BANK_AMOUNT_MAX, &limit) < 0)
		return -1;
	a->status = ACCOUNT_OPEN;
	a->balance = 0;
	a->overdraft_limit = limit;
	return 0;
}

/* The recorded balance, when there is one, must be the one we compute. */
static int
check_balance(const struct cqrs_event *ev, int64_t balance)
{
	int64_t recorded;

	if (!json_object_object_get_ex(ev->data, "balance", NULL))
		return 0;
	if (field_int(ev->data, "balance", -BANK_BALANCE_MAX, BANK_BALANCE_MAX, &recorded) < 0)
		return -1;
	return recorded == balance ? 0 : -1;
}

static int
on_deposited(void *state, const struct cqrs_event *ev)
{
	struct account *a = state;
	int64_t amount;

	if (a->status != ACCOUNT_OPEN ||
	    field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &amount) < 0 ||
	    a->balance > BANK_BALANCE_MAX - amount ||
	    check_balance(ev, a->balance + amount) < 0)
		return -1;
	a->balance += amount;
	return 0;
}

static int
on_withdrawn(void *state, const struct cqrs_event *ev)
{
	struct account *a = state;
	int64_t amount;

	/* facts are applied as they are; only arithmetic is guarded here,
	 * the overdraft rule was the handler's to enforce */
	if (a->status != ACCOUNT_OPEN ||
	    field_int(ev->data, "amount", 1, BANK_AMOUNT_MAX, &amount) < 0 ||
	    a->balance < -BANK_BALANCE_MAX + amount ||
	    check_balance(ev, a->balance - amount) < 0)
		return -1;
	a->balance -= amount;
	return 0;
}

static int
on_closed(void *state, const struct cqrs_event *ev)
{
	struct account *a = state;

	(void)ev;
	if (a->status != ACCOUNT_OPEN)
		return -1;
	a->status = ACCOUNT_CLOSED;
	return 0;
}

/* ---- command handlers --------------------------------------------------- */

/* "rejected" for an account that is not open, naming why. */
static int
reject_not_open(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd,
		const struct account *a)
{
	if (a->status == ACCOUNT_NONE)
		return bank_reject(ctx, cmd, "account does not exist");
	return bank_reject(ctx, cmd, "account is closed");
}

static int
account_open(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	     int64_t version)
{
	static const char *const fields[] = { "owner", "overdraft_limit", NULL };
	const struct account *a = state;
	const char *owner = NULL;
	int64_t limit = 0;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = payload_string(ctx, cmd->data, "owner", 1, BANK_OWNER_MAX, &owner)) !=
		    CQRS_OUTCOME_OK ||
	    (rc = payload_int(ctx, cmd->data, "overdraft_limit", false, 0, BANK_AMOUNT_MAX,
			      ">= 0", &limit)) != CQRS_OUTCOME_OK)
		return rc;
	/* an id is never reused, not even after the account was closed */
	if (a->status != ACCOUNT_NONE)
		return bank_reject(ctx, cmd, "account already exists");

	if (cqrs_emit(ctx, "AccountOpened",
		      json_with_int(json_with_str(json_object_new_object(), "owner", owner),
				    "overdraft_limit", limit)) < 0)
		return -1;	/* the daemon answers "internal" */
	cqrs_log_debug(cqrs_cmd_log(ctx), "opening %s, overdraft limit %" PRId64,
		       cmd->stream, limit);
	return CQRS_OUTCOME_OK;
}

static int
account_deposit(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
		int64_t version)
{
	static const char *const fields[] = { "amount", NULL };
	const struct account *a = state;
	int64_t amount = 0;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = payload_int(ctx, cmd->data, "amount", true, 1, BANK_AMOUNT_MAX, "> 0",
			      &amount)) != CQRS_OUTCOME_OK)
		return rc;
	if (a->status != ACCOUNT_OPEN)
		return reject_not_open(ctx, cmd, a);
	if (a->balance > BANK_BALANCE_MAX - amount)
		return bank_reject(ctx, cmd, "balance would exceed %" PRId64, BANK_BALANCE_MAX);

	if (cqrs_emit(ctx, "MoneyDeposited",
		      json_with_int(json_with_int(json_object_new_object(), "amount", amount),
				    "balance", a->balance + amount)) < 0)
		return -1;
	cqrs_log_debug(cqrs_cmd_log(ctx), "deposit of %" PRId64 " on %s, balance %" PRId64,
		       amount, cmd->stream, a->balance + amount);
	return CQRS_OUTCOME_OK;
}

static int
account_withdraw(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
		 int64_t version)
{
	static const char *const fields[] = { "amount", NULL };
	const struct account *a = state;
	int64_t amount = 0;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = payload_int(ctx, cmd->data, "amount", true, 1, BANK_AMOUNT_MAX, "> 0",
			      &amount)) != CQRS_OUTCOME_OK)
		return rc;
	if (a->status != ACCOUNT_OPEN)
		return reject_not_open(ctx, cmd, a);
	/* both terms are within 10^18 in size: no overflow */
	if (a->balance - amount < -a->overdraft_limit)
		return bank_reject(ctx, cmd, "insufficient funds");

	if (cqrs_emit(ctx, "MoneyWithdrawn",
		      json_with_int(json_with_int(json_object_new_object(), "amount", amount),
				    "balance", a->balance - amount)) < 0)
		return -1;
	cqrs_log_debug(cqrs_cmd_log(ctx), "withdrawal of %" PRId64 " on %s, balance %" PRId64,
		       amount, cmd->stream, a->balance - amount);
	return CQRS_OUTCOME_OK;
}

static int
account_close(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	      int64_t version)
{
	static const char *const fields[] = { NULL };
	const struct account *a = state;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK)
		return rc;
	if (a->status != ACCOUNT_OPEN)
		return reject_not_open(ctx, cmd, a);
	if (a->balance != 0)
		return bank_reject(ctx, cmd, "balance is not zero (%" PRId64 ")", a->balance);

	if (cqrs_emit(ctx, "AccountClosed", json_object_new_object()) < 0)
		return -1;
	return CQRS_OUTCOME_OK;
}

/* ---- registration ------------------------------------------------------- */

static const struct cqrs_aggregate_type account_type = {
	.name = "account",
	.state_new = account_new,
	.state_free = account_free,
	.snapshot_encode = account_encode,
	.snapshot_decode = account_decode,
};

static const struct {
	const char *event_type;
	cqrs_applier_fn fn;
} appliers[] = {
	{ "AccountOpened", on_opened },
	{ "MoneyDeposited", on_deposited },
	{ "MoneyWithdrawn", on_withdrawn },
	{ "AccountClosed", on_closed },
};

static const struct {
	const char *command_type;
	cqrs_command_fn fn;
} commands[] = {
	{ "account.open", account_open },
	{ "account.deposit", account_deposit },
	{ "account.withdraw", account_withdraw },
	{ "account.close", account_close },
};

int
account_register(struct cqrs_registry *reg)
{
	size_t i;
	int rc;

	/* a failing call has told the registry why; just stop */
	rc = cqrs_register_aggregate(reg, &account_type);
	for (i = 0; rc == 0 && i < sizeof(appliers) / sizeof(appliers[0]); i++)
		rc = cqrs_register_applier(reg, "account", appliers[i].event_type, appliers[i].fn);
	for (i = 0; rc == 0 && i < sizeof(commands) / sizeof(commands[0]); i++)
		rc = cqrs_register_command(reg, commands[i].command_type, "account",
					   commands[i].fn);
	return rc;
}
