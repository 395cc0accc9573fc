/*
 * readside.h - the bank's read side: event handlers run by cqrs-consumer
 * (not installed).
 *
 *   projection.c  group "projections": the read model bank_balances
 *   notify.c      group "notifications": logs large withdrawals
 *   process.c     group "transfers": the transfer process manager
 *
 * Each registers its handlers from bank_register() in bank.c.
 */
#ifndef BANK_READSIDE_H
#define BANK_READSIDE_H

#include <libpq-fe.h>

#include <cqrs/plugin.h>

/* Withdrawals of at least this many cents are "large" (notify.c). */
#define BANK_LARGE_WITHDRAWAL 100000

int projection_register(struct cqrs_registry *reg);
int notify_register(struct cqrs_registry *reg);
int process_register(struct cqrs_registry *reg);

/* The aggregate id of a stream "TYPE-ID" (the text after the first '-'),
 * borrowed from stream; NULL when there is none. */
const char *bank_stream_id(const char *stream);

/*
 * The outcome for a failed statement (res may be NULL): a lost connection,
 * a deadlock, a serialization failure, a lock timeout or a shortage of
 * resources are transient (CQRS_HANDLED_RETRY), anything else is a bug or
 * bad data (CQRS_HANDLED_FAIL). The reason names what and the server's
 * message.
 */
int bank_sql_failed(struct cqrs_event_ctx *ctx, PGconn *pg, PGresult *res, const char *what);

#endif
