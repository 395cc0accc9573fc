#!/bin/sh
# demo.sh [demo|up|down|status] - the whole suite on this machine, privately.
#
#   demo  (make demo) start everything under ./.run/, run a short story with
#         cqrsctl, show the results, stop everything, exit 0
#   up    (make up)   start everything and leave it running
#   down  (make down) stop what `up` started
#
# Private PostgreSQL (durable settings) and RabbitMQ under ./.run/, logs of
# every daemon in ./.run/logs/. Nothing system-wide is used or changed.
set -eu
top=$(cd "$(dirname "$0")/../.." && pwd)
mode=${1:-demo}
# the build to run: make passes its own (build/san-... under SANITIZE=)
case "${CQRS_BUILD_DIR:-build}" in
/*) B=$CQRS_BUILD_DIR ;;
*) B="$top/${CQRS_BUILD_DIR:-build}" ;;
esac
# CQRS_RUN_DIR moves the whole run folder (the end-to-end test uses one).
RUN="${CQRS_RUN_DIR:-$top/.run}"
LOGS="$RUN/logs"
CONF="$RUN/cqrs.conf"
CTL="$B/bin/cqrsctl -c $CONF"
CONSUMERS="projections notifications transfers"

say() { printf '\n== %s\n' "$*"; }
step() { printf '   %s\n' "$*"; }

# The servers' folders must be reachable by the unprivileged user they run
# as (pg.sh runs PostgreSQL as cqrsdev when we are root); a tree under a
# private home is not, so their data then lives in /tmp, linked from .run/.
server_dir() {
	name=$1
	if [ -e "$RUN/$name" ]; then
		echo "$RUN/$name"
		return
	fi
	if [ "$(id -u)" = 0 ] && id cqrsdev >/dev/null 2>&1 &&
	   ! setpriv --reuid=cqrsdev --regid=cqrsdev --clear-groups test -x "$RUN" 2>/dev/null; then
		d=$(mktemp -d /tmp/cqrs-run.XXXXXX)
		chmod 755 "$d"
		ln -s "$d" "$RUN/$name"
	fi
	echo "$RUN/$name"
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemon() {	# name, then the command
	name=$1
	shift
	if pid_alive "$RUN/$name.pid"; then
		step "$name already running (pid $(cat "$RUN/$name.pid"))"
		return
	fi
	"$@" >>"$LOGS/$name.log" 2>&1 &
	echo $! > "$RUN/$name.pid"
	step "$name started (pid $!, log .run/logs/$name.log)"
}

stop_daemon() {
	name=$1
	if pid_alive "$RUN/$name.pid"; then
		pid=$(cat "$RUN/$name.pid")
		kill -TERM "$pid" 2>/dev/null || true
		i=0
		while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
		kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
		step "$name stopped"
	fi
	rm -f "$RUN/$name.pid"
}

wait_for() {	# seconds, description, then a command that succeeds when ready
	secs=$1
	what=$2
	shift 2
	i=0
	while ! "$@" >/dev/null 2>&1; do
		i=$((i + 1))
		if [ $i -gt $((secs * 10)) ]; then
			echo "demo: timed out waiting for $what" >&2
			return 1
		fi
		sleep 0.1
	done
}

up() {
	mkdir -p "$RUN" "$LOGS"
	chmod 755 "$RUN"
	[ -x "$B/bin/cqrs-cmdd" ] || { echo "demo: build first (make)" >&2; exit 1; }

	say "starting PostgreSQL and RabbitMQ under .run/"
	pgdir=$(server_dir pg)
	rabbitdir=$(server_dir rabbit)
	sh "$top/deploy/dev/pg.sh" start "$pgdir" >/dev/null
	step "PostgreSQL ready ($(sed -n 's/^PGHOST=//p' "$pgdir/env"))"
	sh "$top/deploy/dev/rabbitmq.sh" start "$rabbitdir" >/dev/null
	step "RabbitMQ ready ($(sed -n 's/^CQRS_BROKER_URL=.*@//p' "$rabbitdir/env"))"
	conninfo=$(sed -n "s/^CQRS_STORE_CONNINFO='\(.*\)'$/\1/p" "$pgdir/env")
	broker=$(sed -n 's/^CQRS_BROKER_URL=//p' "$rabbitdir/env")
	# each daemon on its own broker user, with only its rights (docs/deploy.md)
	tracker_url=$(sed -n 's/^CQRS_DEV_TRACKER_URL=//p' "$rabbitdir/env")
	consumer_url=$(sed -n 's/^CQRS_DEV_CONSUMER_URL=//p' "$rabbitdir/env")
	cat > "$CONF" <<CONF
# written by deploy/dev/demo.sh
[store]
conninfo = $conninfo
[broker]
url = $broker
[cmd]
socket = $RUN/cmd.sock
plugins = $B/plugins/bank.so
[tracker]
poll_ms = 500
[consumer.projections]
plugins = $B/plugins/bank.so
[consumer.notifications]
plugins = $B/plugins/bank.so
[consumer.transfers]
plugins = $B/plugins/bank.so
[log]
level = info
CONF
	chmod 600 "$CONF"	# it holds the dev servers' passwords

	say "migrating the event store"
	step "$($CTL migrate)"

	say "starting the daemons"
	start_daemon cmdd "$B/bin/cqrs-cmdd" -c "$CONF"
	wait_for 10 "the command socket" test -S "$RUN/cmd.sock"
	start_daemon tracker env CQRS_BROKER_URL="$tracker_url" "$B/bin/cqrs-tracker" -c "$CONF"
	for c in $CONSUMERS; do
		start_daemon "consumer-$c" env CQRS_BROKER_URL="$consumer_url" \
			"$B/bin/cqrs-consumer" -n "$c" -c "$CONF"
	done
	sleep 1
	for n in cmdd tracker consumer-projections consumer-notifications consumer-transfers; do
		if ! pid_alive "$RUN/$n.pid"; then
			echo "demo: $n exited at start; its log:" >&2
			tail -n 20 "$LOGS/$n.log" >&2
			exit 1
		fi
	done
}

down() {
	say "stopping"
	for n in consumer-transfers consumer-notifications consumer-projections tracker cmdd; do
		stop_daemon "$n"
	done
	[ -e "$RUN/rabbit" ] && sh "$top/deploy/dev/rabbitmq.sh" stop "$RUN/rabbit" >/dev/null 2>&1 &&
		step "RabbitMQ stopped"
	[ -e "$RUN/pg" ] && sh "$top/deploy/dev/pg.sh" stop "$RUN/pg" >/dev/null 2>&1 &&
		step "PostgreSQL stopped"
	return 0
}

send() {	# prints the answer; a refusal is part of the story, not a failure
	ans=$($CTL send "$@" 2>&1) || true
	step "cqrsctl send $* -> $ans"
}

psql_run() {
	pgdir="$RUN/pg"
	PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
	# shellcheck disable=SC1091
	(set -a; . "$pgdir/env"; set +a; "$PGBIN/psql" -X -q "$@")
}

transfer_done() {
	$CTL read "transfer-$1" 2>/dev/null | grep -q -E '"type":"Transfer(Completed|Failed)"'
}

projection_caught_up() {
	n=$(psql_run -At -c "SELECT count(*) FROM bank_balances WHERE account_id IN ('alice','bob') AND
		version = (SELECT max(version) FROM cqrs.events WHERE stream = 'account-' || account_id)")
	[ "$n" = 2 ]
}

story() {
	say "a short story, through cqrsctl send"
	send account.open alice '{"owner":"Alice","overdraft_limit":5000}'
	send account.open bob '{"owner":"Bob"}'
	send account.deposit alice '{"amount":100000}'
	send account.deposit bob '{"amount":2500}'
	send account.withdraw alice '{"amount":12000}'
	step "(bob has 2500 and no overdraft: the next one is refused)"
	send account.withdraw bob '{"amount":9000}'
	send transfer.start t1 '{"from":"alice","to":"bob","amount":30000}'
	wait_for 20 "the transfer to complete" transfer_done t1
	wait_for 20 "the projection to catch up" projection_caught_up

	say "events of stream account-alice (cqrsctl read account-alice)"
	$CTL read account-alice | sed 's/^/   /'

	say "events of stream transfer-t1"
	$CTL read transfer-t1 | sed 's/^/   /'

	say "tracker status (cqrsctl status)"
	$CTL status | sed 's/^/   /'

	say "read model bank_balances (projection by cqrs-consumer -n projections)"
	psql_run -c "SELECT account_id, owner, balance, status, version FROM bank_balances ORDER BY account_id" |
		sed 's/^/   /'
}

# A demo starts from nothing: the folder of an earlier demo goes (with the
# server folders it links to in /tmp), unless `make up` is still running.
fresh() {
	for n in cmdd tracker consumer-projections consumer-notifications consumer-transfers; do
		if pid_alive "$RUN/$n.pid"; then
			echo "demo: the suite started by 'make up' is running; 'make down' first" >&2
			exit 1
		fi
	done
	for s in pg rabbit; do
		if [ -e "$RUN/$s/env" ]; then
			sh "$top/deploy/dev/$([ $s = pg ] && echo pg || echo rabbitmq).sh" stop "$RUN/$s" \
				>/dev/null 2>&1 || true
		fi
		[ -L "$RUN/$s" ] && rm -rf "$(readlink "$RUN/$s")"
	done
	rm -rf "$RUN"
}

case "$mode" in
demo)
	started=$(date +%s)
	fresh
	trap 'down' EXIT
	up
	story
	trap - EXIT
	down
	say "demo done in $(( $(date +%s) - started )) s"
	;;
up)
	up
	say "the suite is running; try:"
	cat <<TRY
   $CTL send account.open carol '{"owner":"Carol"}'
   $CTL send account.deposit carol '{"amount":1500}'
   $CTL read account-carol
   $CTL status
   $CTL send transfer.start t2 '{"from":"carol","to":"alice","amount":500}'
   $CTL dead projections
   logs: $LOGS/     stop: make down
TRY
	;;
down)
	down
	;;
*)
	echo "usage: demo.sh [demo|up|down]" >&2
	exit 2
	;;
esac
