/*
 * store.h - the event store on PostgreSQL (DESIGN.md, "Event store").
 *
 * A struct store is one libpq connection, used from one thread at a time.
 * Every function that talks to the server returns 0 or a negative cqrs
 * error code, and fills err with a message:
 *   CQRS_EINVALID      input refused before it reached the server (or by it)
 *   CQRS_ECONFLICT     the stream is not at the expected version
 *   CQRS_ENOTFOUND     no such stream / checkpoint
 *   CQRS_EUNAVAILABLE  the connection is gone: outcome unknown, the caller
 *                      may cqrs_store_reset() and retry (with the same command id)
 *   CQRS_EINTERNAL     anything else the server said
 * Messages never contain the conninfo string (it may hold a password).
 */
#ifndef CQRS_STORE_H
#define CQRS_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "cqrs/err.h"
#include "cqrs/event.h"
#include "uuid.h"

struct json_object;
struct store;

#define STORE_ANY (-1)		/* append whatever the stream's version */
#define STORE_NO_STREAM 0	/* append only if the stream does not exist */

/*
 * Connection defaults of the daemons' sessions, given to PQconnectdbParams()
 * (or PQconnectStartParams()) before the user's conninfo, which follows as
 * "dbname" with expand_dbname: whatever the user sets wins. Without them a
 * server that stops answering holds a connection for ever: connect_timeout
 * bounds the connection's setup (libpq's blocking calls only; cqrs-cmdd's
 * asynchronous pool times it itself), keepalives find a peer gone silent
 * after 30 + 3 x 10 s, and tcp_user_timeout (ms) drops a connection whose
 * sent data goes unacknowledged as long. TCP only: libpq ignores the last
 * four on a Unix socket.
 */
#define CQRS_PG_DEFAULT_KEYS \
	"connect_timeout", "keepalives_idle", "keepalives_interval", "keepalives_count", \
	"tcp_user_timeout"
#define CQRS_PG_DEFAULT_VALUES "10", "30", "10", "3", "60000"

/* Connects; *out is owned by the caller (cqrs_store_free). The conninfo is copied
 * for cqrs_store_reset() and is never logged. */
int cqrs_store_connect(const char *conninfo, struct store **out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void cqrs_store_free(struct store *st);

/* The connection, borrowed, for callers that run their own statements. */
PGconn *cqrs_store_pg(struct store *st);

/* Reconnects after CQRS_EUNAVAILABLE. */
int cqrs_store_reset(struct store *st, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Applies the migrations compiled from sql/ that are not yet recorded in
 * cqrs.migrations, each in its own transaction, in order. Two processes may
 * run this at once: a transaction-level advisory lock serializes them and the
 * second finds nothing left to do. *applied (may be NULL) gets the count.
 */
int cqrs_store_migrate(struct store *st, int *applied, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* ---- append ------------------------------------------------------------ */

/* One event to append. Borrowed by the calls below. */
struct store_event_in {
	const char *id;			/* UUID, or NULL to make a v7 one */
	const char *type;		/* event type */
	/* the payload: data_obj when not NULL, else data (JSON object text) */
	struct json_object *data_obj;
	const char *data;
	/* metadata likewise; both NULL means {} */
	struct json_object *metadata_obj;
	const char *metadata;
};

struct store_written {
	char id[UUID_STR_LEN];
	char type[CQRS_TYPE_MAX + 1];
	int64_t version;
	int64_t position;
};

struct store_append_result {
	bool duplicate;			/* the command id had appended before */
	int64_t version;		/* stream version after the append (or of the
					 * duplicate's last event); for a conflict the
					 * stream's current version */
	size_t n;
	struct store_written *events;	/* owned; cqrs_store_append_result_clear() */
};

void cqrs_store_append_result_clear(struct store_append_result *r);

/*
 * The outcome as the command protocol's answer object (a new json-c
 * reference): {"id"?,"ok":true,"stream","version","duplicate"?,"events":[
 * {"id","type","version","position"}]}. id NULL leaves "id" out.
 */
struct json_object *cqrs_store_append_result_json(const char *id, const char *stream,
					     const struct store_append_result *r);

/*
 * Appends n events (0..CQRS_APPEND_MAX_EVENTS) to stream in one round trip
 * and one transaction. expected: STORE_ANY, STORE_NO_STREAM or the version
 * the stream must be at. command_id (NULL or a UUID): when already recorded,
 * nothing is appended and r->duplicate is set with the first outcome.
 */
int cqrs_store_append(struct store *st, const char *stream, int64_t expected,
		 const struct store_event_in *evs, size_t n, const char *command_id,
		 struct store_append_result *r, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * The same append in two halves, for callers with their own (asynchronous)
 * connections: cqrs_store_append_prepare() validates and builds the parameters
 * for STORE_APPEND_SQL; cqrs_store_append_parse() reads its result. command
 * (borrowed, may be NULL) is the command's name, recorded with command_id:
 * the id repeated for another stream, or for another command, is
 * CQRS_EIDREUSED and appends nothing. cqrs_store_append() records no name.
 */
#define STORE_APPEND_SQL \
	"SELECT id, version, position, type, duplicate FROM cqrs.append($1, $2, $3, $4, $5)"
#define STORE_APPEND_NPARAMS 5

struct store_append_req {
	const char *values[STORE_APPEND_NPARAMS];	/* point into the fields below */
	char expected[24];
	char *events_json;		/* owned */
};

int cqrs_store_append_prepare(struct store_append_req *req, const char *stream,
			 int64_t expected, const struct store_event_in *evs, size_t n,
			 const char *command_id, const char *command, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void cqrs_store_append_req_clear(struct store_append_req *req);

/* res is borrowed; pg (may be NULL) is used to tell a lost connection. */
int cqrs_store_append_parse(PGresult *res, PGconn *pg, const char *stream,
		       struct store_append_result *r, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * The batch append (sql/007): several prepared appends, each on its own
 * stream, in one round trip and one transaction; each is all-or-nothing
 * with its own outcome. cqrs_store_batch_json() joins the prepared appends
 * into the batch's one parameter (malloc'ed; NULL: out of memory);
 * cqrs_store_batch_parse() gives out[i] the outcome of reqs[i].
 */
#define STORE_APPEND_BATCH_SQL \
	"SELECT n, status, id, version, position, type, detail FROM cqrs.append_batch($1)"

struct store_batch_outcome {
	int rc;				/* 0, or CQRS_ECONFLICT, CQRS_EIDREUSED,
					 * CQRS_EINVALID with err */
	struct store_append_result result;	/* as cqrs_store_append_parse()'s */
	struct cqrs_err err;
};

char *cqrs_store_batch_json(const struct store_append_req *const *reqs, size_t n, size_t *len);

/* res is borrowed. Returns 0 with every out[i] filled (each to clear with
 * cqrs_store_append_result_clear()), or the batch's error, which is every
 * command's (nothing was written, or the outcome is unknown). */
int cqrs_store_batch_parse(PGresult *res, PGconn *pg, struct store_batch_outcome *out, size_t n,
			   struct cqrs_err *err) __attribute__((warn_unused_result));

/* Maps a failed result (or NULL result) to a cqrs error code with message. */
int cqrs_store_result_error(PGresult *res, PGconn *pg, const char *what,
		       struct cqrs_err *err);

/* ---- reading ----------------------------------------------------------- */

/* A point in the commit-safe order: after the event (xid, position). */
struct store_checkpoint {
	uint64_t xid;
	int64_t position;
};

#define STORE_CHECKPOINT_START ((struct store_checkpoint){ 0, 0 })

/*
 * cqrs.tracker_status(name) counts the events behind the checkpoint up to
 * this many (sql/005); beyond, its lag_events is an estimate, always above
 * the limit. The tracker and cqrsctl tell the two apart by this number, not
 * by the lag_exact column, so that they also read a schema migrated only
 * up to 004 (where every count is exact).
 */
#define STORE_TRACKER_STATUS_LIMIT 10000

/* "XID:POSITION" (also accepts a bare "0" for the start). */
int cqrs_store_checkpoint_parse(const char *s, struct store_checkpoint *out,
			   struct cqrs_err *err) __attribute__((warn_unused_result));
void cqrs_store_checkpoint_format(const struct store_checkpoint *cp, char *buf, size_t size);

struct store_events {
	size_t n;
	struct cqrs_event **ev;		/* owned */
	struct store_checkpoint *at;	/* at[i]: the checkpoint just after ev[i] */
};

void cqrs_store_events_clear(struct store_events *evs);

/* Events of stream with version >= from_version, in version order, at most
 * limit (1..10000). An unknown stream gives n == 0, not an error. */
int cqrs_store_read_stream(struct store *st, const char *stream, int64_t from_version,
		      int limit, struct store_events *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/*
 * Events after `after`, in commit-safe order: ordered by (xid, position), and
 * only from transactions older than every transaction still running, so an
 * event whose transaction commits late is never skipped. At most limit.
 */
int cqrs_store_read_all(struct store *st, const struct store_checkpoint *after, int limit,
		   struct store_events *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

/* The SQL of cqrs_store_read_all, for asynchronous callers. Parameters:
 * $1 xid8 text, $2 position, $3 limit. Columns as cqrs_store_events_parse wants. */
extern const char cqrs_store_read_all_sql[];

/* Parses rows of cqrs_store_read_all_sql or the stream read into out. */
int cqrs_store_events_parse(PGresult *res, struct store_events *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));

#endif
