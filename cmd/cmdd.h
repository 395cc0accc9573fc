/*
 * cmdd.h - cqrs-cmdd, the command daemon: its configuration and the units
 * that share its state (server.c: socket and clients; exec.c: running
 * commands against cached aggregates; cmdd.c: wiring and life).
 *
 * Everything runs on one libevent loop; PostgreSQL is reached only through
 * the asynchronous pool, so the loop never blocks.
 */
#ifndef CQRS_CMDD_H
#define CQRS_CMDD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/queue.h>
#include <sys/types.h>

#include "cqrs/log.h"
#include "cqrs_daemon.h"
#include "httpd.h"
#include "plugin_host.h"
#include "pool.h"
#include "proto.h"
#include "store.h"

struct config;
struct event_base;
struct event;
struct evconnlistener;
struct bufferevent;
struct hmap;
struct pool;

struct cmdd_config {
	char *conninfo;
	char *socket_path;
	int socket_mode;
	char *socket_group;		/* NULL: leave the group alone */
	char *plugins;
	int pool_size;
	int max_connections;
	int64_t max_request_bytes;
	int64_t idle_timeout_ms;
	int64_t shutdown_timeout_ms;	/* SIGTERM: the drain's deadline */
	int64_t store_timeout_ms;	/* a query's deadline, queued or running */
	int cache_size;			/* aggregates kept in memory */
	int snapshot_every;		/* 0: no snapshots */
	int max_retries;		/* conflicts resolved by catch-up and re-run */
	int batch_max;			/* commands appended in one transaction */
	int append_connections;		/* of pool_size, running appends at once */
	int max_pipeline;		/* requests in flight per connection */
	int64_t client_budget;		/* bytes one client may hold */
	int64_t memory_budget;		/* bytes all clients may hold past their floor */
	int64_t write_timeout_ms;	/* a client that takes no answer bytes this long */
	struct httpd_addr http;		/* /health and /metrics; http.len 0: none */
	struct access_policy *access;	/* owned; NULL: no [access], all allowed */
};

/* Reads [cmd], [store] and [log] from cfg; CQRS_ECONFIG naming the key. */
int cmdd_config_load(const struct config *cfg, struct cmdd_config *out, struct cqrs_err *err)
	__attribute__((warn_unused_result));
void cmdd_config_clear(struct cmdd_config *c);

/*
 * The most bytes clients can make cqrs-cmdd hold with the settings c,
 * whatever they send or fail to read (docs/deploy.md, "How much memory
 * cqrs-cmdd can hold"). Not in it: what the data makes the daemon hold (the
 * aggregates in memory, an aggregate's load), nor what the allocator keeps
 * of freed memory.
 */
size_t cmdd_memory_bound(const struct cmdd_config *c);

/* The terms of cmdd_memory_bound(), in bytes. */
struct cmdd_memory {
	size_t budget;			/* cmd.memory_budget */
	size_t per_client;		/* CMDD_CLIENT_FLOOR + CMDD_CLIENT_OVERHEAD */
	size_t clients;			/* max_connections x per_client */
	size_t parse;			/* the line being parsed, or read */
	size_t per_store;		/* libpq's copy of the largest append */
	size_t store;			/* pool_size x per_store */
};

/* Fills m; returns their sum, cmdd_memory_bound(c). */
size_t cmdd_memory_parts(const struct cmdd_config *c, struct cmdd_memory *m);

/* The most a client's socket is read at once. */
#define CMDD_READ_CHUNK 65536
/*
 * Bytes a client may hold whatever the others hold (cmd.memory_budget counts
 * only what clients hold past it): room for a few small commands, so that
 * clients that fill the daemon's budget do not stall everybody else.
 */
#define CMDD_CLIENT_FLOOR (32 * 1024)
/*
 * What one connection may hold besides the bytes it is counted at: struct
 * client, its answer buffer and three events, libevent's entry for its
 * descriptor (some 1.4 KiB, measured with 1,000 idle connections), and the
 * slack of the answer buffer, whose chains are counted at what they hold:
 * a partly sent first chain and a partly filled last one, 4 KiB at most
 * each for answers up to 4 KiB (libevent's EVBUFFER_CHAIN_MAX_AUTO_SIZE).
 */
#define CMDD_CLIENT_OVERHEAD (10 * 1024)

/*
 * The most bytes of appends joined into one transaction (the first goes
 * whatever its size): the joined text is a copy, held while its query runs.
 */
#define CMDD_BATCH_BYTES (1024 * 1024)

/*
 * While an append runs, another goes at once (up to cmd.append_connections)
 * only when this many commands wait for it: a commit costs PostgreSQL about
 * as much CPU as appending this many events in it (measured with bench-cmd,
 * durable: 16 clients one command at a time were served 20 % faster by one
 * append at a time than by two, with 64 at a time two were 14 % faster).
 */
#define CMDD_BATCH_MIN_JOIN 16
/*
 * An append that has run this long (ms) holds the next ones back no more:
 * it waits on a lock, or on a server that does not answer, and the others
 * go on the free connections. A batch takes a few ms when all is well.
 */
#define CMDD_BATCH_STALL_MS 20

#define CMDD_PEER_GROUPS 64

/* Who sent a request: the socket's peer credentials, read on accept. */
struct cmdd_peer {
	bool known;			/* SO_PEERCRED answered */
	uid_t uid;
	gid_t gid;
	pid_t pid;
	char uid_text[16];		/* for log lines */
	char user[64];			/* "" when the uid has no name */
	int n_groups;			/* supplementary groups (SO_PEERGROUPS) */
	gid_t groups[CMDD_PEER_GROUPS];	/* a peer in more is matched on these */
};

struct job;
struct client;
struct agg;

TAILQ_HEAD(job_queue, job);
TAILQ_HEAD(agg_list, agg);
TAILQ_HEAD(client_list, client);

/* One request, from its line to its answer. */
struct job {
	struct cmdd *d;
	struct client *client;		/* NULL once the client is gone */
	TAILQ_ENTRY(job) client_link;	/* in the client's request order */
	TAILQ_ENTRY(job) agg_link;	/* waiting for its aggregate */
	struct request req;
	const struct reg_command *rc;
	char stream[CQRS_STREAM_MAX + 1];
	struct agg *agg;
	struct cqrs_log_ctx log;
	struct cmdd_peer peer;		/* its client's, copied: the client may go */
	char correlation_id[CQRS_TYPE_MAX + 1];
	struct json_object *event_meta;	/* owned: metadata of the events it raises */
	struct cqrs_cmd_ctx ctx;
	struct store_append_req append;
	struct store_append_result result;
	struct pool_hold *hold;		/* the locked path's connection */
	int loaded;			/* events the last catch-up found */
	const char *params[3];
	char pbuf[2][24];
	int retries;
	bool fresh;			/* the aggregate was read from the store in this job */
	bool done;
	bool in_map;			/* registered in d->inflight under req.id */
	char *answer;			/* owned, '\n'-terminated */
	const char *outcome;		/* "ok" or a PROTO_* code, for logs */
	char errmsg[CQRS_ERR_MSG_MAX];	/* the message of an error answer */
	struct job_queue waiters;	/* repeats of this command id */
	TAILQ_ENTRY(job) waiter_link;
	TAILQ_ENTRY(job) live_link;	/* in d->live until job_free() */
	size_t held;			/* bytes counted for it (server_job_hold()) */
	size_t append_held;		/* of held: the append's events, while prepared */
	struct job *first;		/* when this is a repeat: the job it waits for */
	uint64_t started_us;
};

/*
 * What a job is counted at before its request (server.c): the struct, and
 * the entries it may add to the daemon's maps, at their largest: a new
 * aggregate (struct agg, its stream's copy and map entry, some 650 bytes as
 * malloc hands them out) and its command id in d->inflight (some 100).
 */
#define CMDD_JOB_BYTES (sizeof(struct job) + 1024)

enum agg_status { AGG_EMPTY, AGG_LOADED, AGG_STALE };

/* An aggregate in memory: its state and the commands queued on it. */
struct agg {
	char *stream;			/* owned; key in d->aggs */
	const struct reg_aggregate *type;
	void *state;			/* owned through type->state_free */
	int64_t version;
	enum agg_status status;
	bool busy;			/* a job runs on it */
	int contended;			/* > 0: take the stream's lock first (exec.c) */
	bool in_lru;
	struct job_queue waiting;
	TAILQ_ENTRY(agg) lru;
};

/* ok, duplicate and the ten PROTO_* codes */
#define CMDD_OUTCOMES 12

struct cmdd_stats {
	uint64_t requests;
	uint64_t ok;
	uint64_t duplicates;
	uint64_t failed;
	uint64_t conflicts_retried;
	uint64_t batches;		/* appends sent joined, and their commands */
	uint64_t batched;
	uint64_t loads;
	uint64_t snapshots;
	uint64_t outcomes[CMDD_OUTCOMES];	/* answers by outcome (metrics.c) */
	struct httpd_hist latency;	/* submit to answer */
};

struct cmdd {
	struct event_base *base;
	struct cmdd_config cfg;
	struct registry *reg;		/* borrowed */
	struct pool *pool;
	struct pool_batcher batcher;	/* joins the appends queued on pool */
	LIST_HEAD(, batch) batches;	/* joined appends running (exec.c) */
	struct pool *notify;		/* one connection for the tracker's wake-up */
	bool notify_inflight, notify_again;
	struct event *notify_timer;
	struct evconnlistener *listener;
	bool own_socket;		/* we bound it: unlink at exit */
	struct client_list clients;
	int n_clients;
	/* byte budgets (server.c): what clients hold past CMDD_CLIENT_FLOOR,
	 * what jobs of closed clients still hold; clients waiting for room */
	size_t clients_over;
	size_t detached;
	size_t clients_held;		/* all that clients hold, for /metrics */
	int clients_paused;		/* reading stopped by a budget or the pipeline */
	int budget_waiting;		/* clients in budget_wait */
	struct client_list budget_wait;
	struct event *wake_ev;		/* runs budget_wait from the loop */
	unsigned wake_gen;
	bool waking;
	struct hmap *aggs;		/* stream -> struct agg */
	struct agg_list lru;		/* idle aggregates, oldest first */
	int n_aggs;
	struct hmap *inflight;		/* command id -> first job */
	struct job_queue ready_jobs;	/* next jobs of released aggregates */
	struct job_queue live;		/* every job not yet freed */
	bool running_ready;		/* agg_release() is running ready_jobs */
	int jobs_active;
	int snapshot_writes;
	bool stopping;
	int64_t stop_deadline;		/* cqrs_now_ms(): the drain ends here */
	bool ready;
	struct event *tick;
	struct cmdd_stats stats;
	struct cqrs_log_ctx log;
	struct httpd *http;		/* NULL without cmd.http */
	struct cqrs_daemon_watchdog watchdog;	/* pinged once ready */
};

/* cmdd.c */
/* Signals are the caller's (cqrs_daemon_signals_event(), stop:
 * cmdd_begin_shutdown()). */
int cmdd_init(struct cmdd *d, struct event_base *base, const struct cmdd_config *cfg,
	      struct registry *reg, struct cqrs_err *err) __attribute__((warn_unused_result));
int cmdd_run(struct cmdd *d);
void cmdd_fini(struct cmdd *d);
void cmdd_begin_shutdown(struct cmdd *d);
/* SIGHUP: what may change without a restart ([access]); nothing changes
 * when cfg is refused. */
int cmdd_reload(void *d, const struct config *cfg, struct cqrs_err *err);

/* server.c */
int server_listen(struct cmdd *d, struct cqrs_err *err) __attribute__((warn_unused_result));
void server_close(struct cmdd *d);
/* Counts delta more (or less) bytes held for job against its client's and
 * the daemon's budgets. */
void server_job_hold(struct job *job, long delta);
/* A job's answer is ready: write what is next in order. */
void server_job_done(struct job *job);
/* Frees every client, answered or not (the end of cmdd_fini()). */
void server_free_clients(struct cmdd *d);
/* Frees the jobs a stop left unfinished and every aggregate (cmdd_fini()). */
void exec_free_all(struct cmdd *d);
/* Closes idle clients (shutdown). */
void server_close_idle(struct cmdd *d);
bool server_drained(struct cmdd *d);

/* exec.c */
/* Takes a parsed request (job->req ok) and runs it to an answer. */
void exec_submit(struct job *job);
/* Finishes job with an answer line (owned); used by server.c for early errors. */
void exec_answer(struct job *job, char *answer, const char *outcome);
void exec_notify_init(struct cmdd *d);
void exec_batch_init(struct cmdd *d);
void job_free(struct job *job);

/* metrics.c */
/* Starts /health and /metrics when cfg.http is set. */
int metrics_start(struct cmdd *d, struct cqrs_err *err) __attribute__((warn_unused_result));
void metrics_stop(struct cmdd *d);
/* Counts an answer by outcome ("ok", "duplicate" or a PROTO_* code) and,
 * when started_us is not 0 (CLOCK_MONOTONIC, us), its latency. */
void metrics_command_done(struct cmdd *d, const char *outcome, uint64_t started_us);

#endif
