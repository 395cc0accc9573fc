#!/bin/sh
# bench-consumer.sh - cqrs-consumer throughput against pgbench running the same
# projection statements, and end-to-end latency (command ack -> projection
# committed).
#
# Starts a private PostgreSQL with durable settings (fsync and
# synchronous_commit on) and a private RabbitMQ, then for each of RUNS rounds:
#   consumer: EVENTS bank events (ACCOUNTS accounts: AccountOpened, then
#             deposits) are written to the store and published by cqrs-tracker
#             into the queue of a `projections` consumer (declared by a first
#             start on an empty store, then stopped); the consumer is started
#             and timed until its bookkeeping shows every event committed.
#   baseline: pgbench, 1 connection like the consumer, each transaction the
#             projection's statement for one deposit (UPDATE bank_balances SET
#             balance = balance + $2, version = $3 WHERE account_id = $1), on
#             the read model the consumer just built.
# Prints each round, the medians and the ratio (target >= 1.0). Then LRUNS
# rounds of latency: cqrs-cmdd, cqrs-tracker and the consumer running,
# deposits at RATE/s for LSECS seconds, one at a time; p50/p99 from the
# command's ack to the projection's commit (target p99 < 25 ms).
#
# Environment: EVENTS (50000), ACCOUNTS (1000), RUNS (3; 0 skips the
# throughput rounds), SECS (10, pgbench), BATCH (100), PREFETCH (400), RATE
# (50), LSECS (10), LRUNS (3; 0 skips the latency), QUEUE_TYPE (quorum),
# FAST (0; 1: PostgreSQL without fsync, as the tests run it: no commit costs
# a flush, which shows the consumer's own cost per event).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
B="$top/build"
EVENTS=${EVENTS:-50000}
ACCOUNTS=${ACCOUNTS:-1000}
RUNS=${RUNS:-3}
SECS=${SECS:-10}
BATCH=${BATCH:-100}
PREFETCH=${PREFETCH:-400}
RATE=${RATE:-50}
LSECS=${LSECS:-10}
LRUNS=${LRUNS:-3}
QUEUE_TYPE=${QUEUE_TYPE:-quorum}
FAST=${FAST:-0}
work=$(mktemp -d /tmp/cqrs-bench.XXXXXX)
chmod 755 "$work"
pids=""

cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
	sh "$top/deploy/dev/rabbitmq.sh" stop "$work/rmq" >/dev/null 2>&1 || true
	sh "$top/deploy/dev/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

per_account=$((EVENTS / ACCOUNTS))
EVENTS=$((per_account * ACCOUNTS))

if [ "$FAST" = 1 ]; then
	echo "== starting PostgreSQL (fast: fsync off, synchronous_commit off) in $work/pg"
	sh "$top/deploy/dev/pg.sh" start "$work/pg" --fast >/dev/null
else
	echo "== starting PostgreSQL (durable: fsync on, synchronous_commit on) in $work/pg"
	sh "$top/deploy/dev/pg.sh" start "$work/pg" >/dev/null
fi
. "$work/pg/env"
export PGHOST PGPORT PGUSER
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
echo "== starting RabbitMQ in $work/rmq"
sh "$top/deploy/dev/rabbitmq.sh" start "$work/rmq" >/dev/null
URL=$(sed -n 's/^CQRS_BROKER_URL=//p' "$work/rmq/env")

# config DB QUEUE: one file for every daemon of a round
config() {
	cat > "$work/$1.conf" <<CONF
[store]
conninfo = host=$PGHOST port=$PGPORT user=$PGUSER dbname=$1
[broker]
url = $URL
[cmd]
socket = $work/cmd.sock
plugins = $B/plugins/bank.so
[tracker]
poll_ms = 100
[consumer.projections]
plugins = $B/plugins/bank.so
queue = $2
queue_type = $QUEUE_TYPE
batch_size = $BATCH
prefetch = $PREFETCH
[log]
level = warn
CONF
}

fresh_db() {
	"$PGBIN/psql" -qAt -d postgres -c "DROP DATABASE IF EXISTS $1" -c "CREATE DATABASE $1" >/dev/null
	CQRS_STORE_CONNINFO="host=$PGHOST port=$PGPORT user=$PGUSER dbname=$1" "$B/bin/cqrsctl" migrate >/dev/null
}

# declare_queue CONF DB: a consumer start (empty store) that only declares its queue
declare_queue() {
	"$B/bin/cqrs-consumer" -n projections -c "$1" 2>"$work/declare.log" &
	p=$!
	i=0
	while ! "$PGBIN/psql" -qAt -d "$2" -c "SELECT live FROM cqrs.consumers" 2>/dev/null | grep -q t; do
		sleep 0.1; i=$((i + 1)); [ $i -lt 200 ] || { cat "$work/declare.log"; exit 1; }
	done
	sleep 0.3
	kill "$p"; wait "$p" || true
}

load_events() {
	"$PGBIN/psql" -qAt -d "$1" >/dev/null <<SQL
DO \$\$
DECLARE a int;
BEGIN
  FOR a IN 0..$ACCOUNTS - 1 LOOP
    PERFORM cqrs.append('account-a' || a, 0, NULL,
      jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'AccountOpened',
        'data', jsonb_build_object('owner', 'owner ' || a, 'overdraft_limit', 0))) ||
      (SELECT coalesce(jsonb_agg(jsonb_build_object('id', gen_random_uuid(), 'type', 'MoneyDeposited',
         'data', jsonb_build_object('amount', 100, 'balance', 100 * g))), '[]'::jsonb)
       FROM generate_series(1, $per_account - 1) g));
  END LOOP;
END \$\$;
SQL
}

cat > "$work/projection.sql" <<SQL
\set a random(0, $ACCOUNTS - 1)
\set v random(1, 1000000)
BEGIN;
UPDATE bank_balances SET balance = balance + 100, version = :v WHERE account_id = 'a' || :a;
END;
SQL

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

: > "$work/base.txt"
: > "$work/cons.txt"
r=1
while [ $r -le "$RUNS" ]; do
	db=bench$r
	q=bench.projections.$r
	fresh_db $db
	config $db $q
	declare_queue "$work/$db.conf" $db
	load_events $db
	"$B/bin/cqrs-tracker" -c "$work/$db.conf" 2>>"$work/tracker.log" &
	tp=$!
	pids="$tp"
	"$B/bench/consumer_bench" wait-queue "$URL" "$q" "$EVENTS"
	kill "$tp"; wait "$tp" || true
	pids=""
	out=$("$B/bench/consumer_bench" throughput "$B/bin/cqrs-consumer" "$work/$db.conf" projections \
		"host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" "$EVENTS")
	echo "$out" | sed -n 's/.*s: \([0-9]*\) events\/s.*/\1/p' >> "$work/cons.txt"
	tps=$("$PGBIN/pgbench" -n -M prepared -c 1 -j 1 -T "$SECS" -f "$work/projection.sql" $db 2>&1 |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n 1)
	echo "$tps" >> "$work/base.txt"
	echo "run $r: pgbench projection baseline $tps tx/s | $out"
	# its binding would fill it with the next rounds' events
	sh "$top/deploy/dev/rabbitmq.sh" ctl "$work/rmq" delete_queue "$q" >/dev/null 2>&1 || true
	r=$((r + 1))
done
if [ "$RUNS" -gt 0 ]; then
	bm=$(median < "$work/base.txt")
	cm=$(median < "$work/cons.txt")
	echo "== median over $RUNS runs ($EVENTS events, batch $BATCH, prefetch $PREFETCH," \
	     "$QUEUE_TYPE queue): baseline $bm events/s (one transaction each), consumer $cm" \
	     "events/s, ratio $(awk -v a="$cm" -v b="$bm" 'BEGIN {printf "%.2f", a / b}') (target >= 1.0)"
fi
[ "$LRUNS" -gt 0 ] || exit 0

echo "== latency: deposits at $RATE/s for $LSECS s, ack -> projection committed"
db=benchlat
q=bench.projections.lat
fresh_db $db
config $db $q
"$B/bin/cqrs-cmdd" -c "$work/$db.conf" 2>>"$work/cmdd.log" &
pids="$pids $!"
"$B/bin/cqrs-tracker" -c "$work/$db.conf" 2>>"$work/tracker.log" &
pids="$pids $!"
# debug: the consumer logs when each event arrives and how long each batch
# takes, for the breakdown below
CQRS_LOG_LEVEL=debug "$B/bin/cqrs-consumer" -n projections -c "$work/$db.conf" 2>>"$work/consumer.log" &
pids="$pids $!"
i=0
while [ ! -S "$work/cmd.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
sleep 1
a=0
while [ $a -lt 10 ]; do
	"$B/bin/cqrsctl" -c "$work/$db.conf" send account.open a$a '{"owner":"o"}' >/dev/null
	a=$((a + 1))
done
sleep 1
# the projection's commits, told to the measuring tool (see consumer_bench.c)
"$PGBIN/psql" -qAt -d $db >/dev/null <<'SQL'
CREATE FUNCTION bench_projected() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('bench_projected', NEW.account_id || ':' || NEW.version);
  RETURN NEW;
END $$;
CREATE TRIGGER bench_projected AFTER UPDATE ON bank_balances
  FOR EACH ROW EXECUTE FUNCTION bench_projected();
SQL
: > "$work/p50.txt"
: > "$work/p99.txt"
r=1
while [ $r -le "$LRUNS" ]; do
	out=$("$B/bench/consumer_bench" latency "$work/cmd.sock" \
		"host=$PGHOST port=$PGPORT user=$PGUSER dbname=$db" 10 "$RATE" "$LSECS")
	echo "$out" | sed -n 's/.* p50 \([0-9.]*\) ms.*/\1/p' >> "$work/p50.txt"
	echo "$out" | sed -n 's/.* p99 \([0-9.]*\) ms.*/\1/p' >> "$work/p99.txt"
	echo "run $r: $out"
	r=$((r + 1))
done
echo "== median over $LRUNS runs: p50 $(median < "$work/p50.txt") ms, p99 $(median < "$work/p99.txt") ms (target p99 < 25 ms)"
# where the time goes: append -> arrival at the consumer (cqrs-tracker and
# RabbitMQ), and the consumer's transaction (BEGIN .. COMMIT, one event)
pcts() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "p50 %.2f ms, p99 %.2f ms (%d)", a[int((NR+1)/2)], a[int(NR*0.99+0.5)], NR}'; }
echo "   append -> arrival at the consumer: $(grep -a 'after its append' "$work/consumer.log" |
	sed -n 's/.* \([0-9.]*\) ms after its append.*/\1/p' | pcts)"
echo "   consumer transaction:              $(grep -a 'batch of 1 events: 0 in' "$work/consumer.log" |
	sed -n 's/.* in \([0-9]*\) us.*/\1/p' | awk '{print $1 / 1000}' | pcts)"
