/*
 * transfer.c - the "transfer" aggregate (stream "transfer-<id>"): the
 * record of moving money between two accounts. A process manager (an event
 * handler, later) reacts to TransferStarted by withdrawing from "from" and
 * depositing to "to", then completes or fails the transfer; this aggregate
 * only keeps the transfer's own life straight.
 *
 *   transfer.start    {"from": id, "to": id, "amount": int > 0}
 *                     -> TransferStarted {from, to, amount}
 *   transfer.complete {}                -> TransferCompleted {}
 *   transfer.fail     {"reason": string} -> TransferFailed {reason}
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bank.h"

enum transfer_status {
	TRANSFER_NONE = 0,
	TRANSFER_STARTED,
	TRANSFER_COMPLETED,
	TRANSFER_FAILED,
};

struct transfer {
	enum transfer_status status;
	int64_t amount;
	char from[BANK_ID_MAX + 1];
	char to[BANK_ID_MAX + 1];
};

static const char *const status_names[] = {
	[TRANSFER_NONE] = "none",
	[TRANSFER_STARTED] = "started",
	[TRANSFER_COMPLETED] = "completed",
	[TRANSFER_FAILED] = "failed",
};

/* ---- state and snapshot ------------------------------------------------- */

static void *
transfer_new(void *plugin_state)
{
	(void)plugin_state;
	return calloc(1, sizeof(struct transfer));
}

static void
transfer_free(void *state)
{
	free(state);
}

static struct json_object *
transfer_encode(const void *state)
{
	const struct transfer *t = state;
	struct json_object *o;

	o = json_with_str(json_object_new_object(), "status", status_names[t->status]);
	if (t->status == TRANSFER_NONE)
		return o;
	o = json_with_str(o, "from", t->from);
	o = json_with_str(o, "to", t->to);
	return json_with_int(o, "amount", t->amount);
}

/* The parties and amount of a TransferStarted event or a snapshot. */
static int
read_terms(struct json_object *obj, struct transfer *t)
{
	if (field_str(obj, "from", t->from, sizeof(t->from)) < 0 || t->from[0] == '\0' ||
	    field_str(obj, "to", t->to, sizeof(t->to)) < 0 || t->to[0] == '\0' ||
	    field_int(obj, "amount", 1, BANK_AMOUNT_MAX, &t->amount) < 0)
		return -1;
	return 0;
}

static int
transfer_decode(void *state, struct json_object *snap)
{
	struct transfer *t = state;
	struct transfer s;
	char status[16];
	int i;

	memset(&s, 0, sizeof(s));
	if (field_str(snap, "status", status, sizeof(status)) < 0)
		return -1;
	for (i = TRANSFER_NONE; i <= TRANSFER_FAILED; i++)
		if (strcmp(status, status_names[i]) == 0)
			break;
	if (i > TRANSFER_FAILED)
		return -1;
	s.status = (enum transfer_status)i;
	if (s.status != TRANSFER_NONE && read_terms(snap, &s) < 0)
		return -1;
	*t = s;
	return 0;
}

/* ---- appliers ----------------------------------------------------------- */

static int
on_started(void *state, const struct cqrs_event *ev)
{
	struct transfer *t = state;
	struct transfer s;

	if (t->status != TRANSFER_NONE)
		return -1;
	memset(&s, 0, sizeof(s));
	if (read_terms(ev->data, &s) < 0)
		return -1;
	s.status = TRANSFER_STARTED;
	*t = s;
	return 0;
}

static int
on_completed(void *state, const struct cqrs_event *ev)
{
	struct transfer *t = state;

	(void)ev;
	if (t->status != TRANSFER_STARTED)
		return -1;
	t->status = TRANSFER_COMPLETED;
	return 0;
}

static int
on_failed(void *state, const struct cqrs_event *ev)
{
	struct transfer *t = state;

	(void)ev;
	if (t->status != TRANSFER_STARTED)
		return -1;
	t->status = TRANSFER_FAILED;
	return 0;
}

/* ---- command handlers --------------------------------------------------- */

/* "rejected" unless the transfer is started and not finished. */
static int
check_running(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd,
	      const struct transfer *t)
{
	switch (t->status) {
	case TRANSFER_STARTED:
		return CQRS_OUTCOME_OK;
	case TRANSFER_NONE:
		return bank_reject(ctx, cmd, "transfer does not exist");
	case TRANSFER_COMPLETED:
		return bank_reject(ctx, cmd, "transfer is already completed");
	case TRANSFER_FAILED:
		break;
	}
	return bank_reject(ctx, cmd, "transfer has already failed");
}

static int
transfer_start(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	       int64_t version)
{
	static const char *const fields[] = { "from", "to", "amount", NULL };
	const struct transfer *t = state;
	const char *from = NULL;
	const char *to = NULL;
	int64_t amount = 0;
	struct json_object *data;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = payload_id(ctx, cmd->data, "from", &from)) != CQRS_OUTCOME_OK ||
	    (rc = payload_id(ctx, cmd->data, "to", &to)) != CQRS_OUTCOME_OK ||
	    (rc = payload_int(ctx, cmd->data, "amount", true, 1, BANK_AMOUNT_MAX, "> 0",
			      &amount)) != CQRS_OUTCOME_OK)
		return rc;
	if (strcmp(from, to) == 0)
		return cqrs_invalid(ctx, "\"from\" and \"to\" must be different accounts");
	if (t->status != TRANSFER_NONE)
		return bank_reject(ctx, cmd, "transfer already exists");

	data = json_with_str(json_object_new_object(), "from", from);
	data = json_with_str(data, "to", to);
	data = json_with_int(data, "amount", amount);
	if (cqrs_emit(ctx, "TransferStarted", data) < 0)
		return -1;
	cqrs_log_debug(cqrs_cmd_log(ctx), "transfer %s of %" PRId64 " from account %s to %s",
		       cmd->aggregate_id, amount, from, to);
	return CQRS_OUTCOME_OK;
}

static int
transfer_complete(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
		  int64_t version)
{
	static const char *const fields[] = { NULL };
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = check_running(ctx, cmd, state)) != CQRS_OUTCOME_OK)
		return rc;
	if (cqrs_emit(ctx, "TransferCompleted", json_object_new_object()) < 0)
		return -1;
	return CQRS_OUTCOME_OK;
}

static int
transfer_fail(struct cqrs_cmd_ctx *ctx, const struct cqrs_command *cmd, const void *state,
	      int64_t version)
{
	static const char *const fields[] = { "reason", NULL };
	const char *reason = NULL;
	int rc;

	(void)version;
	if ((rc = payload_fields(ctx, cmd->data, fields)) != CQRS_OUTCOME_OK ||
	    (rc = payload_string(ctx, cmd->data, "reason", 1, BANK_REASON_MAX, &reason)) !=
		    CQRS_OUTCOME_OK ||
	    (rc = check_running(ctx, cmd, state)) != CQRS_OUTCOME_OK)
		return rc;
	if (cqrs_emit(ctx, "TransferFailed",
		      json_with_str(json_object_new_object(), "reason", reason)) < 0)
		return -1;
	cqrs_log_debug(cqrs_cmd_log(ctx), "transfer %s failed: %s", cmd->aggregate_id, reason);
	return CQRS_OUTCOME_OK;
}

/* ---- registration ------------------------------------------------------- */

static const struct cqrs_aggregate_type transfer_type = {
	.name = "transfer",
	.state_new = transfer_new,
	.state_free = transfer_free,
	.snapshot_encode = transfer_encode,
	.snapshot_decode = transfer_decode,
};

static const struct {
	const char *event_type;
	cqrs_applier_fn fn;
} appliers[] = {
	{ "TransferStarted", on_started },
	{ "TransferCompleted", on_completed },
	{ "TransferFailed", on_failed },
};

static const struct {
	const char *command_type;
	cqrs_command_fn fn;
} commands[] = {
	{ "transfer.start", transfer_start },
	{ "transfer.complete", transfer_complete },
	{ "transfer.fail", transfer_fail },
};

int
transfer_register(struct cqrs_registry *reg)
{
	size_t i;
	int rc;

	rc = cqrs_register_aggregate(reg, &transfer_type);
	for (i = 0; rc == 0 && i < sizeof(appliers) / sizeof(appliers[0]); i++)
		rc = cqrs_register_applier(reg, "transfer", appliers[i].event_type,
					   appliers[i].fn);
	for (i = 0; rc == 0 && i < sizeof(commands) / sizeof(commands[0]); i++)
		rc = cqrs_register_command(reg, commands[i].command_type, "transfer",
					   commands[i].fn);
	return rc;
}
