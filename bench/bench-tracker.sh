#!/bin/sh
# bench-tracker.sh - cqrs-tracker throughput against a raw librabbitmq
# publisher sending the same messages, and commit-to-queue latency.
#
# Starts a private PostgreSQL (durable: fsync and synchronous_commit on) and a
# private RabbitMQ, makes a database, then runs build/bench/tracker_bench:
#   throughput: EVENTS events written first; per run, the baseline (raw
#               librabbitmq, same bodies, routing keys, properties, batches of
#               BATCH with at most INFLIGHT batches unconfirmed) then a
#               cqrs-tracker with the same batch_size and inflight, both into
#               a durable queue bound to "#"; RUNS runs, medians and ratio;
#   latency:    one event per transaction at RATE/s for SECS s, NOTIFY
#               cqrs_events after each commit (as cqrs-cmdd does), commit to
#               arrival in a consumer's queue, p50/p99 per run and medians.
#
# Environment: EVENTS (100000), BATCH (500), INFLIGHT (4), RUNS (3),
# RATE (200), SECS (10).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
B="$top/build"
EVENTS=${EVENTS:-100000}
BATCH=${BATCH:-500}
INFLIGHT=${INFLIGHT:-4}
RUNS=${RUNS:-3}
RATE=${RATE:-200}
SECS=${SECS:-10}
work=$(mktemp -d /tmp/cqrs-bench.XXXXXX)
chmod 755 "$work"

cleanup() {
	sh "$top/deploy/dev/rabbitmq.sh" stop "$work/rabbit" >/dev/null 2>&1 || true
	sh "$top/deploy/dev/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== starting PostgreSQL (durable) and RabbitMQ in $work"
sh "$top/deploy/dev/pg.sh" start "$work/pg" >/dev/null
sh "$top/deploy/dev/rabbitmq.sh" start "$work/rabbit" >/dev/null
. "$work/pg/env"
. "$work/rabbit/env"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$PGBIN/psql" -qAt -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d postgres -c "CREATE DATABASE bench" >/dev/null
export CQRS_STORE_CONNINFO="host=$PGHOST port=$PGPORT user=$PGUSER dbname=bench"
export CQRS_BROKER_URL
"$B/bin/cqrsctl" migrate >/dev/null
echo "   PostgreSQL fsync=$("$PGBIN/psql" -qAt -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" -d bench -c 'show fsync')," \
     "RabbitMQ $(sh "$top/deploy/dev/rabbitmq.sh" ctl "$work/rabbit" version 2>/dev/null | tail -n 1)," \
     "$(nproc) CPUs"

"$B/bench/tracker_bench" -n "$EVENTS" -b "$BATCH" -w "$INFLIGHT" -r "$RUNS" \
	--rate "$RATE" --seconds "$SECS" --tracker "$B/bin/cqrs-tracker"
