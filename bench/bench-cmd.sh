#!/bin/sh
# bench-cmd.sh - cqrs-cmdd against what PostgreSQL does with the same events.
#
# One private PostgreSQL with durable settings (fsync, synchronous_commit and
# full_page_writes on), and in it, RUNS rounds (default 3) of three workloads,
# CONNS connections each (16), over STREAMS streams each (10000):
#   raw:    pgbench, one INSERT of one event per transaction into bench_raw, a
#           table made LIKE cqrs.events INCLUDING ALL (its columns, defaults,
#           checks and indexes as the migrations left them), with the id, data
#           and metadata cqrs-cmdd writes for a deposit;
#   append: pgbench, one cqrs.append() of that event per transaction, with a
#           fresh command id each time, as cqrs-cmdd calls it;
#   cmdd:   cmdload through cqrs-cmdd (its default settings, or pool_size
#           POOL): deposits round robin over STREAMS / CONNS accounts per
#           connection, DEPTH (1) in flight per connection;
#   cmdd-pipe: the same with PIPE (4) requests in flight per connection
#           (the protocol's pipelining: more commands for one batch).
# Before each workload the tables are emptied, STREAMS streams get their first
# event (pgbench) or are opened through the daemon (cmdload, untimed: the
# daemon is restarted, so its cache starts empty) and a CHECKPOINT is taken,
# so no workload starts on a bigger table, a warmer cache or a nearer
# checkpoint than another. pgbench picks one of the STREAMS
# streams at random per transaction.
#
# Measured per workload, around the timed part only: the rate, PostgreSQL's
# CPU per event (utime + stime of the postmaster and all its children, from
# /proc, exited backends included through the postmaster's cutime/cstime),
# WAL bytes per event (pg_current_wal_lsn() before and after), and for cmdd
# its latency and the daemon's own CPU per command. Events are rows counted in
# the table before and after. Medians over the rounds, and the ratios.
#
# Then: the cmdd workload once more with a client-chosen id on every command
# (cmdd+ids); one connection, depth 1, for ONE_SECS (5) seconds (its p50);
# three cqrs-cmdd on the store, 8 cmdload connections each, all depositing
# without expected_version into 2 shared accounts for SECS (the combined rate,
# the answers by error code, and whether the balances in the store add up to
# the ok answers); and the cold-start latency of one command on an
# EVENTS-event (100000) aggregate, without and with a snapshot.
#
# Environment: CONNS (16), SECS (10, or SECONDS_PER_RUN), RUNS (3), DEPTH (1),
# STREAMS (10000), POOL, BATCH_MAX (unset: the daemon's defaults of
# cmd.pool_size and cmd.batch_max), PIPE (4), ONE_SECS (5), EVENTS (100000).
set -eu
top=$(cd "$(dirname "$0")/.." && pwd)
B="$top/build"
CONNS=${CONNS:-16}
SECS=${SECONDS_PER_RUN:-${SECS:-10}}
RUNS=${RUNS:-3}
DEPTH=${DEPTH:-1}
STREAMS=${STREAMS:-10000}
POOL=${POOL:-}
PIPE=${PIPE:-4}
BATCH_MAX=${BATCH_MAX:-}
ONE_SECS=${ONE_SECS:-5}
EVENTS=${EVENTS:-100000}
MULTI_DAEMONS=3
MULTI_CONNS=8
MULTI_ACCOUNTS=2
CLK_TCK=$(getconf CLK_TCK)

# as many streams for pgbench as cmdload opens: CONNS x accounts each
PER_CONN=$(((STREAMS + CONNS - 1) / CONNS))
STREAMS=$((PER_CONN * CONNS))
JOBS=2
[ "$CONNS" -lt 2 ] && JOBS=1

work=$(mktemp -d /tmp/cqrs-bench.XXXXXX)
chmod 755 "$work"
cmdd_pids=""
status=0

cleanup() {
	for p in $cmdd_pids; do
		kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
	done
	sh "$top/deploy/dev/pg.sh" stop "$work/pg" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

die() {
	echo "bench-cmd: $*" >&2
	if [ -s "$work/cmdd.log" ]; then
		echo "--- cqrs-cmdd log (last lines):" >&2
		tail -n 20 "$work/cmdd.log" >&2
	fi
	exit 1
}

echo "== starting PostgreSQL (durable) in $work/pg"
sh "$top/deploy/dev/pg.sh" start "$work/pg" >/dev/null
. "$work/pg/env"
export PGHOST PGPORT PGUSER
PGDATA_DIR="$work/pg/data"
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
sql() { "$PGBIN/psql" -X -qAt -v ON_ERROR_STOP=1 -d bench "$@"; }
"$PGBIN/psql" -X -qAt -d postgres -c "CREATE DATABASE bench" >/dev/null
export CQRS_STORE_CONNINFO="host=$PGHOST port=$PGPORT user=$PGUSER dbname=bench"
"$B/bin/cqrsctl" migrate >/dev/null
echo "   $(sql -c "SELECT 'fsync=' || current_setting('fsync') || ' synchronous_commit=' ||
	current_setting('synchronous_commit') || ' full_page_writes=' ||
	current_setting('full_page_writes') || ', PostgreSQL ' || current_setting('server_version')")"

# bench_raw: cqrs.events' shape and indexes as they are now. bench_uuid7():
# time-ordered ids like the daemon's (UUIDv7: 48 bits of milliseconds, then
# random), so the id index sees inserts in the same order as with cqrs-cmdd;
# PL/pgSQL, whose plan is kept, as a SQL function's is not.
sql >/dev/null <<'SQL'
CREATE TABLE bench_raw (LIKE cqrs.events INCLUDING ALL);
CREATE FUNCTION bench_uuid7() RETURNS uuid LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	RETURN (lpad(to_hex(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
		|| substr(replace(gen_random_uuid()::text, '-', ''), 13))::uuid;
END $$;
SQL
echo "   cqrs.events indexes (bench_raw has the same): $(sql -c "SELECT string_agg(indexname, ', ' ORDER BY indexname)
	FROM pg_indexes WHERE schemaname = 'cqrs' AND tablename = 'events'")"

# ---- the daemon -------------------------------------------------------------

# write_conf FILE SOCKET SNAPSHOT_EVERY
write_conf() {
	{
		echo "[cmd]"
		echo "socket = $2"
		echo "plugins = $B/plugins/bank.so"
		[ -n "$POOL" ] && echo "pool_size = $POOL"
		echo "snapshot_every = $3"
		[ -n "$BATCH_MAX" ] && echo "batch_max = $BATCH_MAX"
		echo "[log]"
		echo "level = warn"
	} > "$1"
}

# start_cmdd CONF SOCKET: sets cmdd_pid
start_cmdd() {
	rm -f "$2"
	"$B/bin/cqrs-cmdd" -c "$1" 2>>"$work/cmdd.log" &
	cmdd_pid=$!
	cmdd_pids="$cmdd_pids $cmdd_pid"
	# not i: the callers count their daemons with it (sh has no locals)
	tries=0
	while [ ! -S "$2" ] && [ $tries -lt 200 ]; do
		kill -0 "$cmdd_pid" 2>/dev/null || die "cqrs-cmdd exited at start"
		sleep 0.05
		tries=$((tries + 1))
	done
	[ -S "$2" ] || die "cqrs-cmdd did not create $2"
	sleep 0.2
}
# stop_cmdd PID
stop_cmdd() {
	kill "$1"
	wait "$1" || true
	rest=""
	for p in $cmdd_pids; do [ "$p" = "$1" ] || rest="$rest $p"; done
	cmdd_pids=$rest
}

write_conf "$work/cmd.conf" "$work/cmd.sock" 0

# ---- measuring ----------------------------------------------------------------

# ticks PID...: utime + stime + cutime + cstime, in clock ticks
ticks() {
	for p in "$@"; do cat "/proc/$p/stat" 2>/dev/null || true; done |
		sed 's/^.*) //' | awk '{ t += $12 + $13 + $14 + $15 } END { printf "%d\n", t }'
}
# pg_ticks: the whole cluster: the postmaster (whose cutime/cstime hold the
# backends that exited) and every child alive (backends, checkpointer, WAL
# writer, background writer, autovacuum, ...)
pg_ticks() {
	pm=$(head -n 1 "$PGDATA_DIR/postmaster.pid")
	kids=$(pgrep -P "$pm" || true)
	# shellcheck disable=SC2086
	ticks "$pm" $kids
}
wal_lsn() { sql -c "SELECT pg_current_wal_lsn()"; }
rows() { sql -c "SELECT count(*) FROM $1"; }

# empty: no rows in the store nor in bench_raw (the events triggers refuse
# TRUNCATE: the superuser lifts them for this statement only)
empty() {
	sql >/dev/null <<'SQL'
BEGIN;
ALTER TABLE cqrs.events DISABLE TRIGGER USER;
TRUNCATE cqrs.events, cqrs.commands, cqrs.snapshots, bench_raw;
ALTER TABLE cqrs.events ENABLE TRIGGER USER;
COMMIT;
SQL
}

# settle: a checkpoint just taken. No ANALYZE: statistics that say "empty"
# (cqrs.commands before the append workload) make the sessions' cached plans
# scan that table sequentially as it grows, which doubled the append's cost;
# after TRUNCATE the planner goes by the tables' actual size instead.
settle() {
	sql -c "CHECKPOINT" >/dev/null
}

# first_events TABLE: STREAMS streams account-pgb-N, each with an
# AccountOpened event as the daemon writes it
first_events() {
	sql >/dev/null <<SQL
INSERT INTO $1 (stream, version, id, type, data, metadata)
SELECT 'account-pgb-' || g, 1, bench_uuid7(), 'AccountOpened',
	'{"owner":"bench","overdraft_limit":0}',
	jsonb_build_object('correlation_id', c, 'causation_id', c, 'command', 'account.open',
		'peer', jsonb_build_object('uid', $(id -u), 'gid', $(id -g), 'pid', $$, 'user', '$(id -un)'))
FROM generate_series(1, $STREAMS) g, bench_uuid7() c;
SQL
}

# before TABLE / after TABLE [DAEMON_PID]: the figures around a timed part
before() {
	m_rows0=$(rows "$1")
	m_lsn0=$(wal_lsn)
	m_pg0=$(pg_ticks)
	m_d0=0
	[ -n "${2:-}" ] && m_d0=$(ticks "$2")
	return 0
}
after() {
	sleep 0.5	# let the clients' backends exit and be reaped
	m_pg1=$(pg_ticks)
	m_d1=0
	[ -n "${2:-}" ] && m_d1=$(ticks "$2")
	m_lsn1=$(wal_lsn)
	m_rows1=$(rows "$1")
	m_events=$((m_rows1 - m_rows0))
	[ "$m_events" -gt 0 ] || die "no events written to $1"
	m_wal=$(sql -c "SELECT round(pg_wal_lsn_diff('$m_lsn1', '$m_lsn0') / $m_events)")
	m_pgcpu=$(awk -v a="$m_pg0" -v b="$m_pg1" -v n="$m_events" -v hz="$CLK_TCK" \
		'BEGIN { printf "%.0f", (b - a) * 1e6 / hz / n }')
}
# daemon_cpu OK_COMMANDS: the daemon's CPU per command, in µs
daemon_cpu() {
	awk -v a="$m_d0" -v b="$m_d1" -v n="$1" -v hz="$CLK_TCK" \
		'BEGIN { printf "%.0f", (n > 0 ? (b - a) * 1e6 / hz / n : 0) }'
}

# ---- workloads ----------------------------------------------------------------

uid=$(id -u) gid=$(id -g) user=$(id -un)
# The deposit cqrs-cmdd writes: a time-ordered event id, data {amount,
# balance}, metadata with correlation and causation (the command id), the
# command's name and the sender (peer). Versions: each client its own range,
# so no two clients ever write one (stream, version).
cat > "$work/raw.sql" <<SQL
\\set s random(1, :streams)
\\set v :v + 1
INSERT INTO bench_raw (stream, version, id, type, data, metadata)
SELECT 'account-pgb-' || :s, (:client_id + 1) * 10000000 + :v, bench_uuid7(), 'MoneyDeposited',
  jsonb_build_object('amount', 1, 'balance', :v::int),
  jsonb_build_object('correlation_id', c, 'causation_id', c, 'command', 'account.deposit',
    'peer', jsonb_build_object('uid', $uid, 'gid', $gid, 'pid', 100000 + :client_id, 'user', '$user'))
FROM bench_uuid7() c;
SQL
# The append cqrs-cmdd makes for that deposit: a fresh command id, the
# command's name, the version left to the function ("any").
cat > "$work/append.sql" <<SQL
\\set s random(1, :streams)
\\set v :v + 1
SELECT a.* FROM bench_uuid7() c, cqrs.append('account-pgb-' || :s, -1, c,
  jsonb_build_array(jsonb_build_object('id', bench_uuid7(), 'type', 'MoneyDeposited',
    'data', jsonb_build_object('amount', 1, 'balance', :v::int),
    'metadata', jsonb_build_object('correlation_id', c, 'causation_id', c,
      'command', 'account.deposit',
      'peer', jsonb_build_object('uid', $uid, 'gid', $gid, 'pid', 100000 + :client_id,
        'user', '$user')))),
  'account.deposit') a;
SQL

# pgbench_run NAME TABLE SCRIPT: sets w_rate, m_*
pgbench_run() {
	empty
	first_events "$2"
	settle
	before "$2"
	"$PGBIN/pgbench" -n -M prepared -c "$CONNS" -j "$JOBS" -T "$SECS" \
		-D streams="$STREAMS" -D v=0 -f "$3" bench > "$work/pgbench.out" 2>&1 ||
		{ cat "$work/pgbench.out" >&2; die "pgbench ($1) failed"; }
	after "$2"
	w_rate=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' "$work/pgbench.out" | head -n 1)
	w_rate=$(printf '%.0f' "$w_rate")
	n=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' "$work/pgbench.out")
	[ "$n" = "$m_events" ] ||
		echo "   (note: pgbench counted $n transactions, $m_events rows appeared)"
}

# cmdload_rate|ok|p50|p99 OUTPUT: a figure from cmdload's summary line
cmdload_rate() { sed -n 's/.*s: \([0-9]*\) commands\/s.*/\1/p' "$1"; }
cmdload_ok() { sed -n 's/^cmdd: \([0-9]*\) commands.*/\1/p' "$1"; }
cmdload_p50() { sed -n 's/.* p50 \([0-9.]*\) ms.*/\1/p' "$1"; }
cmdload_p99() { sed -n 's/.* p99 \([0-9.]*\) ms.*/\1/p' "$1"; }

# cmdd_run PREFIX CONNS ACCOUNTS_PER_CONN SECONDS [cmdload options]: through
# a freshly started daemon on emptied tables; sets w_rate, w_p50, w_p99,
# w_dcpu, m_*; the cmdload output is in $work/cmdload.out
cmdd_run() {
	p=$1 c=$2 a=$3 t=$4
	shift 4
	empty
	start_cmdd "$work/cmd.conf" "$work/cmd.sock"
	"$B/bench/cmdload" -s "$work/cmd.sock" -c "$c" -a "$a" --prefix "$p" --open-only "$@" \
		> "$work/open.out" 2>&1 || { cat "$work/open.out" >&2; die "opening accounts failed"; }
	settle
	before cqrs.events "$cmdd_pid"
	"$B/bench/cmdload" -s "$work/cmd.sock" -c "$c" -a "$a" -d "$DEPTH" -T "$t" --prefix "$p" \
		--no-open "$@" > "$work/cmdload.out" 2>&1 ||
		{ cat "$work/cmdload.out" >&2; die "cmdload failed (an error answer)"; }
	after cqrs.events "$cmdd_pid"
	stop_cmdd "$cmdd_pid"
	w_rate=$(cmdload_rate "$work/cmdload.out")
	w_p50=$(cmdload_p50 "$work/cmdload.out")
	w_p99=$(cmdload_p99 "$work/cmdload.out")
	ok=$(cmdload_ok "$work/cmdload.out")
	w_dcpu=$(daemon_cpu "$ok")
	[ "$ok" = "$m_events" ] ||
		echo "   (note: cmdload counted $ok ok answers, $m_events events appeared)"
}

median() { sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
keep() { echo "$2" >> "$work/m.$1"; }	# keep NAME VALUE
med() { median < "$work/m.$1"; }

echo "== $RUNS rounds: $CONNS connections, $STREAMS streams, ${SECS} s each workload," \
     "cqrs-cmdd ${POOL:+pool_size $POOL, }depth $DEPTH (cmdd-pipe: $PIPE)${BATCH_MAX:+, batch_max $BATCH_MAX}"
r=1
while [ "$r" -le "$RUNS" ]; do
	pgbench_run raw bench_raw "$work/raw.sql"
	keep raw.rate "$w_rate"; keep raw.cpu "$m_pgcpu"; keep raw.wal "$m_wal"
	line="round $r: raw $w_rate/s ($m_pgcpu µs, $m_wal B)"

	pgbench_run append cqrs.events "$work/append.sql"
	keep append.rate "$w_rate"; keep append.cpu "$m_pgcpu"; keep append.wal "$m_wal"
	line="$line | append $w_rate/s ($m_pgcpu µs, $m_wal B)"

	cmdd_run "r$r" "$CONNS" "$PER_CONN" "$SECS"
	keep cmdd.rate "$w_rate"; keep cmdd.cpu "$m_pgcpu"; keep cmdd.wal "$m_wal"
	keep cmdd.dcpu "$w_dcpu"; keep cmdd.p50 "$w_p50"; keep cmdd.p99 "$w_p99"
	line="$line | cmdd $w_rate/s ($m_pgcpu µs, $m_wal B; daemon $w_dcpu µs; p50 $w_p50 ms, p99 $w_p99 ms)"

	DEPTH_SAVED=$DEPTH
	DEPTH=$PIPE
	cmdd_run "r${r}p" "$CONNS" "$PER_CONN" "$SECS"
	DEPTH=$DEPTH_SAVED
	keep pipe.rate "$w_rate"; keep pipe.cpu "$m_pgcpu"; keep pipe.wal "$m_wal"
	keep pipe.dcpu "$w_dcpu"; keep pipe.p50 "$w_p50"; keep pipe.p99 "$w_p99"
	echo "$line | cmdd-pipe $w_rate/s ($m_pgcpu µs, $m_wal B; daemon $w_dcpu µs;" \
	     "p50 $w_p50 ms, p99 $w_p99 ms)"
	r=$((r + 1))
done
echo "   (per event: PostgreSQL CPU, WAL bytes; per command: the daemon's CPU)"

echo "== cmdd+ids: the cmdd workload once more, every command with its own id"
cmdd_run ids "$CONNS" "$PER_CONN" "$SECS" --ids
ids_line="$w_rate/s, PostgreSQL $m_pgcpu µs and $m_wal B of WAL per event, daemon $w_dcpu µs per command, p50 $w_p50 ms, p99 $w_p99 ms"
echo "   cmdd+ids: $ids_line"

raw=$(med raw.rate) app=$(med append.rate) cmd=$(med cmdd.rate)
p50=$(med cmdd.p50) p99=$(med cmdd.p99)
echo "== medians over $RUNS rounds ($CONNS connections, $STREAMS streams, durable)"
echo "               events/s  PG CPU µs/event  WAL B/event  daemon µs/command"
printf '   %-10s %9s %16s %12s %18s\n' raw "$raw" "$(med raw.cpu)" "$(med raw.wal)" -
printf '   %-10s %9s %16s %12s %18s\n' append "$app" "$(med append.cpu)" "$(med append.wal)" -
printf '   %-10s %9s %16s %12s %18s\n' cmdd "$cmd" "$(med cmdd.cpu)" "$(med cmdd.wal)" "$(med cmdd.dcpu)"
printf '   %-10s %9s %16s %12s %18s\n' cmdd-pipe "$(med pipe.rate)" "$(med pipe.cpu)" "$(med pipe.wal)" "$(med pipe.dcpu)"
awk -v c="$cmd" -v r="$raw" -v a="$app" -v p50="$p50" -v p99="$p99" 'BEGIN {
	printf "   cmdd/raw %.2f (target >= 1.5), cmdd/append %.2f; cmdd p50 %s ms, p99 %s ms (target p99 < 20 ms)\n",
		c / r, c / a, p50, p99
}'
awk -v c="$(med pipe.rate)" -v r="$raw" -v a="$app" -v p50="$(med pipe.p50)" -v p99="$(med pipe.p99)" -v d="$PIPE" 'BEGIN {
	printf "   cmdd-pipe/raw %.2f (target >= 1.5), cmdd-pipe/append %.2f; depth %d: p50 %s ms, p99 %s ms (target p99 < 20 ms)\n",
		c / r, c / a, d, p50, p99
}'

echo "== one connection, depth 1, ${ONE_SECS} s"
DEPTH_SAVED=$DEPTH
DEPTH=1
cmdd_run one 1 100 "$ONE_SECS"
DEPTH=$DEPTH_SAVED
echo "   1 connection: p50 $w_p50 ms, p99 $w_p99 ms, $w_rate commands/s (target: p50 no worse than before batching)"

echo "== $MULTI_DAEMONS cqrs-cmdd on one store, $MULTI_CONNS connections each," \
     "$MULTI_ACCOUNTS shared accounts, no expected_version, ${SECS} s"
empty
i=1
multi_pids=""
while [ $i -le $MULTI_DAEMONS ]; do
	write_conf "$work/multi$i.conf" "$work/multi$i.sock" 0
	start_cmdd "$work/multi$i.conf" "$work/multi$i.sock"
	multi_pids="$multi_pids $cmdd_pid"
	i=$((i + 1))
done
"$B/bench/cmdload" -s "$work/multi1.sock" -c 1 -a "$MULTI_ACCOUNTS" --shared --prefix multi \
	--open-only > "$work/open.out" 2>&1 || { cat "$work/open.out" >&2; die "opening the shared accounts failed"; }
i=1
load_pids=""
while [ $i -le $MULTI_DAEMONS ]; do
	"$B/bench/cmdload" -s "$work/multi$i.sock" -c "$MULTI_CONNS" -a "$MULTI_ACCOUNTS" --shared \
		--prefix multi --no-open --allow-conflict -T "$SECS" > "$work/multi$i.out" 2>&1 &
	load_pids="$load_pids $!"
	i=$((i + 1))
done
i=1
for p in $load_pids; do
	st=0
	wait "$p" || st=$?
	[ "$st" = 0 ] || echo "   cmdload on daemon $i exited with status $st:" \
		"$(sed -n 's/^cmdload: //p' "$work/multi$i.out" | head -n 2)"
	[ "$st" = 0 ] || bad=1
	i=$((i + 1))
done
[ -z "${bad:-}" ] || { echo "   the daemons' log (last lines):"; grep -v "msg=\"command " "$work/cmdd.log" | tail -n 15 | sed 's/^/     /'; }
for p in $multi_pids; do stop_cmdd "$p"; done
ok=0 rate=0 i=1
while [ $i -le $MULTI_DAEMONS ]; do
	o=$(cmdload_ok "$work/multi$i.out")
	echo "   daemon $i: $(cmdload_rate "$work/multi$i.out") commands/s, $o ok," \
	     "p50 $(cmdload_p50 "$work/multi$i.out") ms, p99 $(cmdload_p99 "$work/multi$i.out") ms;" \
	     "$(grep '^errors:' "$work/multi$i.out")"
	ok=$((ok + o))
	rate=$((rate + $(cmdload_rate "$work/multi$i.out")))
	i=$((i + 1))
done
errs=$(cat "$work"/multi*.out | sed -n 's/^errors: //p' | tr ' ' '\n' |
	awk -F= 'NF == 2 { n[$1] += $2; if (!($1 in o)) { o[$1] = ++k; name[k] = $1 } }
		END { for (i = 1; i <= k; i++) printf "%s%s=%d", (i > 1 ? " " : ""), name[i], n[name[i]] }')
# the store's account of it: deposits recorded, and the balances they left
deposits=$(sql -c "SELECT count(*) FROM cqrs.events
	WHERE stream LIKE 'account-multi-shared-%' AND type = 'MoneyDeposited'")
balances=$(sql -c "SELECT coalesce(sum(b), 0) FROM (SELECT DISTINCT ON (stream)
	(data->>'balance')::bigint AS b FROM cqrs.events
	WHERE stream LIKE 'account-multi-shared-%' AND type = 'MoneyDeposited'
	ORDER BY stream, version DESC) t")
if [ "$deposits" = "$ok" ] && [ "$balances" = "$ok" ]; then sums=OK; else sums=MISMATCH; fi
echo "   combined: $rate commands/s, $ok ok; answers by error code: $errs (target: conflict=0)"
echo "   exact sums: $ok ok answers, $deposits MoneyDeposited events, balances add up to $balances: $sums"
[ "$sums" = OK ] || status=1

echo "== cold start: one command on a $EVENTS-event aggregate"
empty
# history written straight through cqrs.append, in one transaction of chunks
sql >/dev/null <<SQL
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
echo "   stream account-cold: $(sql -c "SELECT max(version) FROM cqrs.events WHERE stream='account-cold'") events"
start_cmdd "$work/cmd.conf" "$work/cmd.sock"
echo "   without snapshot: $("$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold)"
stop_cmdd "$cmdd_pid"
write_conf "$work/snap.conf" "$work/cmd.sock" 1
start_cmdd "$work/snap.conf" "$work/cmd.sock"
"$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold >/dev/null	# writes a snapshot
sleep 0.5
stop_cmdd "$cmdd_pid"
start_cmdd "$work/snap.conf" "$work/cmd.sock"
echo "   with snapshot:    $("$B/bench/cmdload" -s "$work/cmd.sock" --one --prefix cold)"
stop_cmdd "$cmdd_pid"
exit "$status"
