#!/bin/sh
# bench-cmd.sh - cqrs-cmdd throughput against pgbench calling the same append.
#
# Starts a private PostgreSQL with durable settings (fsync and
# synchronous_commit on), then for each run:
#   baseline: pgbench, CONNS connections, each transaction one call of
#             cqrs.append() with the event cqrs-cmdd would write for a deposit
#             (distinct streams per client, expected version "any");
#   cmdd:     cmdload, CONNS connections, deposits into distinct accounts,
#             through a cqrs-cmdd with pool_size = CONNS.
# Runs RUNS rounds (default 3) and prints each and the medians and ratio.
# Then the cold-start latency of one command on a 100,000-event aggregate,
# without and with a snapshot.
#
# Environment: CONNS (16), SECONDS (10), RUNS (3), DEPTH (1), EVENTS (100000).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
B="$top/build"
CONNS=${CONNS:-16}
SECS=${SECONDS_PER_RUN:-${SECS:-10}}
RUNS=${RUNS:-3}
DEPTH=${DEPTH:-1}
EVENTS=${EVENTS:-100000}
work=$(mktemp -d /tmp/cqrs-bench.XXXXXX)
chmod 755 "$work"
cmdd_pid=""

cleanup() {
	[ -n "$cmdd_pid" ] && kill "$cmdd_pid" 2>/dev/null && wait "$cmdd_pid" 2>/dev/null
	sh "$top/deploy/dev/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT INT TERM

echo "== starting PostgreSQL (durable: fsync on, synchronous_commit on) in $work/pg"
sh "$top/deploy/dev/pg.sh" start "$work/pg" >/dev/null
. "$work/pg/env"
export PGHOST PGPORT PGUSER
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
"$PGBIN/psql" -qAt -d postgres -c "CREATE DATABASE bench" >/dev/null
export CQRS_STORE_CONNINFO="host=$PGHOST port=$PGPORT user=$PGUSER dbname=bench"
"$B/bin/cqrsctl" migrate >/dev/null
echo "   fsync=$("$PGBIN/psql" -qAt -d bench -c 'show fsync')" \
     "synchronous_commit=$("$PGBIN/psql" -qAt -d bench -c 'show synchronous_commit')"

cat > "$work/cmd.conf" <<CONF
[cmd]
socket = $work/cmd.sock
plugins = $B/plugins/bank.so
pool_size = $CONNS
snapshot_every = 0
[log]
level = warn
CONF

start_cmdd() {
	"$B/bin/cqrs-cmdd" -c "$1" 2>>"$work/cmdd.log" &
	cmdd_pid=$!
	i=0
	while [ ! -S "$work/cmd.sock" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
	sleep 0.2
}
stop_cmdd() {
	kill "$cmdd_pid"
	wait "$cmdd_pid" || true
	cmdd_pid=""
}

# The same event cqrs-cmdd writes for a deposit: id, type, data, metadata.
cat > "$work/append.sql" <<'SQL'
\set n random(1, 16)
SELECT * FROM cqrs.append('account-pgb-' || :client_id || '-' || :n, -1, gen_random_uuid(),
  jsonb_build_array(jsonb_build_object('id', gen_random_uuid(), 'type', 'MoneyDeposited',
    'data', '{"amount":1,"balance":1}'::jsonb,
    'metadata', jsonb_build_object('correlation_id', gen_random_uuid(),
      'causation_id', gen_random_uuid(), 'command', 'account.deposit'))));
SQL

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

start_cmdd "$work/cmd.conf"
: > "$work/base.txt"
: > "$work/cmdd.txt"
r=1
while [ $r -le "$RUNS" ]; do
	tps=$("$PGBIN/pgbench" -n -M prepared -c "$CONNS" -j 2 -T "$SECS" -f "$work/append.sql" bench 2>&1 |
		sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -n 1)
	echo "$tps" >> "$work/base.txt"
	out=$("$B/bench/cmdload" -s "$work/cmd.sock" -c "$CONNS" -d "$DEPTH" -T "$SECS" -a 16 --prefix "r$r")
	echo "$out" | sed -n 's/.*s: \([0-9]*\) commands\/s.*/\1/p' >> "$work/cmdd.txt"
	echo "run $r: pgbench append baseline $tps tx/s | $out"
	r=$((r + 1))
done
bm=$(median < "$work/base.txt")
cm=$(median < "$work/cmdd.txt")
echo "== median over $RUNS runs, $CONNS connections: baseline $bm appends/s, cmdd $cm commands/s," \
     "ratio $(awk -v a="$cm" -v b="$bm" 'BEGIN {printf "%.2f", a / b}') (target >= 0.8)"
stop_cmdd

echo "== cold start: one command on a $EVENTS-event aggregate"
# history written straight through cqrs.append, in one transaction of chunks
"$PGBIN/psql" -qAt -d bench >/dev/null <<SQL
SELECT count(*) FROM cqrs.append('account-cold', 0, NULL,
  '[{"id":"$(cat /proc/sys/kernel/random/uuid)","type":"AccountOpened","data":{"owner":"cold","overdraft_limit":0}}]');
DO \$\$
DECLARE i int := 1;
BEGIN
  WHILE i < $EVENTS LOOP
    PERFORM cqrs.append('account-cold', -1, NULL,
      (SELECT jsonb_agg(jsonb_build_object('id', gen_random_uuid(), 'type', 'MoneyDeposited',
         'data', jsonb_build_object('amount', 1, 'balance', i + g)))
       FROM generate_series(0, least(999, $EVENTS - 1 - i)) g));
    i := i + 1000;
  END LOOP;
END \$\$;
SQL
echo "   stream account-cold: $("$PGBIN/psql" -qAt -d bench -c "SELECT max(version) FROM cqrs.events WHERE stream='account-cold'") events"
start_cmdd "$work/cmd.conf"
echo "   without snapshot: $("$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold)"
stop_cmdd
sed 's/^snapshot_every = 0/snapshot_every = 1/' "$work/cmd.conf" > "$work/snap.conf"
start_cmdd "$work/snap.conf"
"$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold >/dev/null	# writes a snapshot
sleep 0.5
stop_cmdd
start_cmdd "$work/snap.conf"
echo "   with snapshot:    $("$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold)"
stop_cmdd
