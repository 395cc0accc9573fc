#!/bin/sh
# pg.sh - a private PostgreSQL cluster in a directory, for development and tests.
#
# Usage:
#   sh deploy/dev/pg.sh start DIR [--tcp] [--fast] [--socket] [--durable]
#   sh deploy/dev/pg.sh stop DIR
#   sh deploy/dev/pg.sh status DIR        exit 0 if running, 1 if not
#   sh deploy/dev/pg.sh env DIR           print the environment lines again
#
# start creates DIR and a cluster in DIR/data when there is none (auth trust,
# locale C, UTF8), starts it (log: DIR/postgres.log) and prints, and writes to
# DIR/env, shell-sourceable lines:
#   PGHOST=DIR
#   PGPORT=PORT
#   PGUSER=USER
#   PGDATABASE=postgres
#   CQRS_STORE_CONNINFO='host=DIR port=PORT user=USER dbname=postgres'
# (use `set -a; . DIR/env; set +a` to export them). If the cluster is already
# running it only prints them again.
#
# The server listens only on the Unix socket DIR/.s.PGSQL.PORT (PORT 5432)
# unless --tcp: then also on 127.0.0.1:PORT, PORT a free port chosen once and
# kept for the life of DIR (the socket uses the same number). --fast turns off
# fsync, synchronous_commit and full_page_writes (tests only); the default is
# durable. Options are remembered in DIR/pg.opts: a start without options
# reuses the previous ones (so a restart comes back the same way, on the same
# port); --socket and --durable switch --tcp and --fast off again.
#
# As root, the cluster is owned by and runs as the system user `cqrsdev`
# (created when missing), or by whoever already owns DIR/data. Nothing here
# touches a system-wide PostgreSQL.
set -eu

PROG=pg.sh
RUNUSER_NAME=cqrsdev

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

# ---- helpers --------------------------------------------------------------

find_bindir() {
	if [ -n "${PG_BINDIR:-}" ]; then
		[ -x "$PG_BINDIR/pg_ctl" ] || die "PG_BINDIR=$PG_BINDIR has no pg_ctl"
		echo "$PG_BINDIR"
		return
	fi
	best="" bestv=0
	for d in /usr/lib/postgresql/*/bin; do
		if [ ! -x "$d/pg_ctl" ] || [ ! -x "$d/initdb" ]; then continue; fi
		v=${d#/usr/lib/postgresql/}
		v=${v%/bin}
		major=${v%%.*}
		case "$major" in '' | *[!0-9]*) continue ;; esac
		if [ "$major" -gt "$bestv" ]; then
			bestv=$major best=$d
		fi
	done
	if [ -z "$best" ]; then
		p=$(command -v pg_ctl 2>/dev/null) || die "no PostgreSQL server found (install postgresql: sh deploy/dev/deps.sh)"
		best=$(dirname "$p")
	fi
	echo "$best"
}

# port_listening PORT: is some socket listening on TCP PORT (any address)?
port_listening() {
	hex=$(printf ':%04X' "$1")
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk -v h="$hex" '$4 == "0A" && substr($2, length($2) - 4) == h { f = 1 } END { exit !f }'
}

# port_used PORT: does TCP PORT appear as a local port in any state?
port_used() {
	hex=$(printf ':%04X' "$1")
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk -v h="$hex" 'substr($2, length($2) - 4) == h { f = 1 } END { exit !f }'
}

# free_port: a TCP port nobody uses, below the ephemeral range (so that no
# outgoing connection takes it later and a restart finds it free again).
free_port() {
	r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
	p=$((20000 + r % 12000))
	n=0
	while [ $n -lt 500 ]; do
		if [ "$p" != 5432 ] && ! port_used "$p"; then
			echo "$p"
			return 0
		fi
		p=$((p + 1))
		[ $p -ge 32000 ] && p=20000
		n=$((n + 1))
	done
	die "no free TCP port found"
}

# as_owner CMD...: run CMD as the cluster owner (root cannot run the server).
as_owner() {
	if [ "$(id -u)" = 0 ]; then
		(cd "$DIR" && runuser -u "$OWNER" -- "$@")
	else
		(cd "$DIR" && "$@")
	fi
}

ensure_user() {
	id -u "$RUNUSER_NAME" >/dev/null 2>&1 && return 0
	useradd --system --no-create-home --home-dir /nonexistent \
		--shell /usr/sbin/nologin --user-group "$RUNUSER_NAME" 2>/dev/null ||
		id -u "$RUNUSER_NAME" >/dev/null 2>&1 ||
		die "could not create system user $RUNUSER_NAME"
}

# set_dir DIR [create]: absolute DIR, checked.
set_dir() {
	[ -n "$1" ] || usage
	if [ "${2:-}" = create ]; then
		mkdir -p "$1" || die "cannot create $1"
	fi
	[ -d "$1" ] || die "no such directory: $1"
	DIR=$(cd "$1" && pwd -P)
	case "$DIR" in
	*[!A-Za-z0-9_./+-]*)
		die "directory name must use only [A-Za-z0-9_./+-]: $DIR" ;;
	esac
	DATA=$DIR/data
	if [ -d "$DATA" ] && { ! [ -r "$DATA" ] || ! [ -x "$DATA" ]; }; then
		die "cannot read $DATA (owned by $(stat -c %U "$DATA")): run as that user or root"
	fi
}

# set_owner: OWNER = OS user the server runs as.
set_owner() {
	if [ "$(id -u)" != 0 ]; then
		OWNER=$(id -un)
	elif [ -f "$DATA/PG_VERSION" ]; then
		OWNER=$(stat -c %U "$DATA")
		[ "$OWNER" != root ] || die "$DATA is owned by root"
	else
		ensure_user
		OWNER=$RUNUSER_NAME
	fi
}

read_opts() {
	TCP=0 FAST=0 PORT=5432 HAVE_OPTS=0
	if [ -f "$DIR/pg.opts" ]; then
		# shellcheck disable=SC1091
		. "$DIR/pg.opts"
		HAVE_OPTS=1
	fi
}

write_opts() {
	printf 'TCP=%s\nFAST=%s\nPORT=%s\n' "$TCP" "$FAST" "$PORT" >"$DIR/pg.opts.tmp"
	mv "$DIR/pg.opts.tmp" "$DIR/pg.opts"
}

# running: exit 0 if the postmaster of DATA is alive.
running() {
	[ -f "$DATA/postmaster.pid" ] || return 1
	pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null) || return 1
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	kill -0 "$pid" 2>/dev/null || [ -d "/proc/$pid" ] || return 1
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	[ "$comm" = postgres ] || [ "$comm" = postmaster ] || return 1
	# a killed postmaster may linger as a zombie until it is reaped
	state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
	[ -n "$state" ] && [ "$state" != Z ] || return 1
	PID=$pid
}

# clear_stale_pid: after a crash (kill -9), let a dead postmaster be reaped
# (a zombie still counts as alive for the new postmaster's lock-file check),
# and drop a postmaster.pid whose pid now belongs to some other program.
clear_stale_pid() {
	[ -f "$DATA/postmaster.pid" ] || return 0
	pid=$(head -n 1 "$DATA/postmaster.pid" 2>/dev/null) || return 0
	case "$pid" in '' | *[!0-9]*) return 0 ;; esac
	n=0
	while [ -d "/proc/$pid" ] && [ $n -lt 100 ]; do
		state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
		[ "$state" = Z ] || break
		sleep 0.1
		n=$((n + 1))
	done
	[ -d "/proc/$pid" ] || return 0
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 0
	case "$comm" in
	postgres | postmaster) ;;
	*) rm -f "$DATA/postmaster.pid" ;;
	esac
}

# the port the running server uses (line 4 of postmaster.pid)
running_port() {
	sed -n 4p "$DATA/postmaster.pid"
}

print_env() {
	port=$1
	owner=$(stat -c %U "$DATA")
	{
		echo "PGHOST=$DIR"
		echo "PGPORT=$port"
		echo "PGUSER=$owner"
		echo "PGDATABASE=postgres"
		echo "CQRS_STORE_CONNINFO='host=$DIR port=$port user=$owner dbname=postgres'"
	} >"$DIR/env.tmp"
	mv "$DIR/env.tmp" "$DIR/env"
	chmod 644 "$DIR/env"
	cat "$DIR/env"
}

# ---- commands -------------------------------------------------------------

cmd_start() {
	[ $# -ge 1 ] || usage
	dir=$1
	shift
	o_tcp="" o_fast=""
	for a in "$@"; do
		case "$a" in
		--tcp) o_tcp=1 ;;
		--socket) o_tcp=0 ;;
		--fast) o_fast=1 ;;
		--durable) o_fast=0 ;;
		*) usage ;;
		esac
	done
	set_dir "$dir" create
	set_owner

	if running; then
		print_env "$(running_port)"
		return 0
	fi

	clear_stale_pid

	read_opts
	if [ -n "$o_tcp$o_fast" ] || [ "$HAVE_OPTS" = 0 ]; then
		TCP=${o_tcp:-0} FAST=${o_fast:-0}
	fi
	if [ "$TCP" = 1 ]; then
		if [ "$PORT" = 5432 ]; then
			PORT=$(free_port)
		elif port_listening "$PORT"; then
			die "TCP port $PORT (the port of this cluster) is in use by another program"
		fi
	fi

	sock="$DIR/.s.PGSQL.$PORT"
	[ ${#sock} -le 107 ] ||
		die "Unix socket path too long (${#sock} > 107 bytes): $sock; use a shorter DIR"

	BINDIR=$(find_bindir)

	if [ "$(id -u)" = 0 ]; then
		runuser -u "$OWNER" -- test -d "$DIR" ||
			die "user $OWNER cannot reach $DIR (check the permissions of its parents)"
		chown "$OWNER" "$DIR"
		chmod 755 "$DIR"
	fi

	if [ ! -f "$DATA/PG_VERSION" ]; then
		[ -d "$DATA" ] && [ -n "$(ls -A "$DATA")" ] &&
			die "$DATA exists, is not empty and holds no cluster"
		nosync=""
		[ "$FAST" = 1 ] && nosync=--no-sync
		# shellcheck disable=SC2086
		if ! as_owner "$BINDIR/initdb" -D "$DATA" --auth=trust --locale=C \
			--encoding=UTF8 $nosync >"$DIR/initdb.log" 2>&1; then
			cat "$DIR/initdb.log" >&2
			die "initdb failed"
		fi
		echo "include_if_exists = 'cqrs.conf'" >>"$DATA/postgresql.conf"
	fi

	if [ "$TCP" = 1 ]; then listen=127.0.0.1; else listen=""; fi
	if [ "$FAST" = 1 ]; then dur=off; else dur=on; fi
	conf="$DATA/cqrs.conf"
	cat >"$conf.tmp" <<EOF
# written by deploy/dev/pg.sh at every start; edit DIR/pg.opts or the options
listen_addresses = '$listen'
port = $PORT
unix_socket_directories = '$DIR'
unix_socket_permissions = 0777
max_connections = 200
shared_buffers = 128MB
fsync = $dur
synchronous_commit = $dur
full_page_writes = $dur
log_line_prefix = '%m [%p] %q%u@%d '
EOF
	mv "$conf.tmp" "$conf"
	write_opts
	if [ "$(id -u)" = 0 ]; then
		chown "$OWNER" "$conf" "$DIR/pg.opts"
		touch "$DIR/postgres.log"
		chown "$OWNER" "$DIR/postgres.log"
	fi

	# After a crash the old backends may hold the shared memory for a moment
	# ("pre-existing shared memory block is still in use"): retry a while.
	tries=0
	while ! as_owner "$BINDIR/pg_ctl" -D "$DATA" -l "$DIR/postgres.log" -w -t 60 \
		start >"$DIR/pg_ctl.log" 2>&1; do
		tries=$((tries + 1))
		if [ $tries -lt 20 ] && tail -n 3 "$DIR/postgres.log" |
			grep -q -e 'is still in use' -e 'already exists'; then
			sleep 0.5
			clear_stale_pid
			continue
		fi
		cat "$DIR/pg_ctl.log" >&2
		tail -n 20 "$DIR/postgres.log" >&2
		die "PostgreSQL did not start (log: $DIR/postgres.log)"
	done
	print_env "$PORT"
}

cmd_stop() {
	[ $# -eq 1 ] || usage
	[ -d "$1" ] || return 0
	set_dir "$1"
	running || return 0
	[ -f "$DATA/PG_VERSION" ] && OWNER=$(stat -c %U "$DATA") || OWNER=$(id -un)
	if BINDIR=$(find_bindir 2>/dev/null) &&
		as_owner "$BINDIR/pg_ctl" -D "$DATA" -m fast -w -t 30 stop >/dev/null 2>&1; then
		return 0
	fi
	# pg_ctl failed: signal the postmaster by its pid (fast, then immediate).
	running || return 0
	for sig in INT QUIT KILL; do
		if ! kill -s "$sig" "$PID" 2>/dev/null; then
			running || return 0
			die "cannot signal the postmaster (pid $PID): not its owner?"
		fi
		n=0
		while [ $n -lt 50 ]; do
			running || return 0
			sleep 0.2
			n=$((n + 1))
		done
	done
	die "could not stop the postmaster (pid $PID)"
}

cmd_status() {
	[ $# -eq 1 ] || usage
	[ -d "$1" ] || return 1
	set_dir "$1"
	running
}

cmd_env() {
	[ $# -eq 1 ] || usage
	set_dir "$1"
	running || die "not running in $DIR"
	print_env "$(running_port)"
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
status) cmd_status "$@" ;;
env) cmd_env "$@" ;;
-h | --help | help) usage ;;
*) usage ;;
esac
