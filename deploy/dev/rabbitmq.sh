#!/bin/sh
# rabbitmq.sh - a private RabbitMQ node in a directory, for development and tests.
#
# Usage:
#   sh deploy/dev/rabbitmq.sh start DIR
#   sh deploy/dev/rabbitmq.sh stop DIR
#   sh deploy/dev/rabbitmq.sh status DIR      exit 0 if the node is running
#   sh deploy/dev/rabbitmq.sh ctl DIR ARGS... rabbitmqctl ARGS against the node
#   sh deploy/dev/rabbitmq.sh env DIR         print the environment lines again
#
# start creates DIR, starts a node of its own there and waits (up to 60 s)
# until it has booted. It prints, and writes to DIR/env, shell-sourceable lines:
#   RABBITMQ_NODENAME=cqrs-HASH@localhost
#   CQRS_BROKER_URL=amqp://cqrs:cqrs@127.0.0.1:PORT/%2f
#   CQRS_TEST_AMQP_PORT=PORT
#   CQRS_RABBITMQ_DIR=DIR
# (use `set -a; . DIR/env; set +a` to export them). If the node is already
# running it only prints them again.
#
# The node has its own name, data (DIR/mnesia), logs (DIR/log), config
# (DIR/rabbitmq.conf, no plugins), Erlang cookie (DIR/.erlang.cookie) and its
# own epmd on a private port: nothing is shared with a system-wide RabbitMQ.
# AMQP listens on 127.0.0.1 only, on a free port chosen at the first start and
# kept for the life of DIR (a restart comes back on the same port, with the
# same data). Users: cqrs/cqrs (administrator, all permissions on vhost /),
# guest/guest (loopback only), and the least-privilege users of
# docs/deploy.md: cqrs-tracker/cqrs-tracker (writes cqrs.events only) and
# cqrs-consumer/cqrs-consumer (its queues and dead letters; never writes
# cqrs.events).
#
# Pids: DIR/rabbitmq.pid (Erlang VM), DIR/server.pid (the rabbitmq-server
# shell wrapper), DIR/epmd.pid (the private epmd).
set -eu

PROG=rabbitmq.sh
RMQ_BIN=${RABBITMQ_BIN:-/usr/lib/rabbitmq/bin}
START_TIMEOUT=60

die() {
	echo "$PROG: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set -eu/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
	exit 2
}

# ---- helpers --------------------------------------------------------------

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

# free_port [EXCLUDED...]: a TCP port nobody uses, below the ephemeral range
# (so that no outgoing connection takes it later and a restart finds it free).
free_port() {
	r=$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')
	p=$((20000 + r % 12000))
	n=0
	while [ $n -lt 500 ]; do
		case " 4369 5672 15672 25672 $* " in
		*" $p "*) ;;
		*) if ! port_used "$p"; then
			echo "$p"
			return 0
		fi ;;
		esac
		p=$((p + 1))
		[ $p -ge 32000 ] && p=20000
		n=$((n + 1))
	done
	die "no free TCP port found"
}

# alive PID [COMM...]: PID is a live (not zombie) process, with one of the
# given command names if any are given.
alive() {
	pid=$1
	shift
	case "$pid" in '' | *[!0-9]*) return 1 ;; esac
	[ -d "/proc/$pid" ] || return 1
	state=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
	[ -n "$state" ] && [ "$state" != Z ] || return 1
	[ $# -eq 0 ] && return 0
	comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	for c in "$@"; do
		[ "$comm" = "$c" ] && return 0
	done
	return 1
}

readpid() {
	[ -f "$1" ] && head -n 1 "$1" 2>/dev/null | tr -cd '0-9'
	return 0
}

# set_dir DIR [create]: absolute DIR, checked; node name from its path.
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
	h=$(printf '%s' "$DIR" | cksum | cut -d' ' -f1)
	NODE=cqrs-$(printf '%08x' "$h")@localhost
}

# set_runas: as root, run the node as the owner of DIR when that is not root
# (a DIR made by a normal user stays usable by that user).
set_runas() {
	RUNAS=""
	[ "$(id -u)" = 0 ] || return 0
	uid=$(stat -c %u "$DIR")
	[ "$uid" != 0 ] || return 0
	RUNAS="setpriv --reuid=$uid --regid=$(stat -c %g "$DIR") --clear-groups"
	chown -R "$uid:$(stat -c %g "$DIR")" "$DIR"
}

read_ports() {
	AMQP_PORT="" DIST_PORT="" EPMD_PORT=""
	if [ -f "$DIR/ports" ]; then
		# shellcheck disable=SC1091
		. "$DIR/ports"
	fi
}

write_ports() {
	printf 'AMQP_PORT=%s\nDIST_PORT=%s\nEPMD_PORT=%s\n' \
		"$AMQP_PORT" "$DIST_PORT" "$EPMD_PORT" >"$DIR/ports.tmp"
	mv "$DIR/ports.tmp" "$DIR/ports"
}

# rmq_env: the environment of the node and of rabbitmqctl for it. Nothing from
# /etc/rabbitmq is read, HOME (the Erlang cookie) is DIR.
rmq_env() {
	export HOME="$DIR"
	export RABBITMQ_CONF_ENV_FILE="$DIR/rabbitmq-env.conf"
	export RABBITMQ_NODENAME="$NODE"
	export RABBITMQ_USE_LONGNAME=false
	export RABBITMQ_MNESIA_BASE="$DIR/mnesia"
	export RABBITMQ_LOG_BASE="$DIR/log"
	export RABBITMQ_CONFIG_FILE="$DIR/rabbitmq.conf"
	export RABBITMQ_CONFIG_FILES="$DIR/conf.d" # not /etc/rabbitmq/conf.d
	export RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config"
	export RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins"
	export RABBITMQ_PID_FILE="$DIR/rabbitmq.pid"
	export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
	export RABBITMQ_NODE_PORT="$AMQP_PORT"
	export RABBITMQ_DIST_PORT="$DIST_PORT"
	export ERL_EPMD_PORT="$EPMD_PORT"
	export ERL_EPMD_ADDRESS=127.0.0.1
	# Erlang distribution (node and CLI) on the loopback interface only
	export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
	export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
	unset RABBITMQ_ERLANG_COOKIE || true
}

ctl() {
	(cd "$DIR" && "$RMQ_BIN/rabbitmqctl" -n "$NODE" "$@")
}

node_running() {
	alive "$(readpid "$DIR/rabbitmq.pid")" beam.smp beam
}

print_env() {
	{
		echo "RABBITMQ_NODENAME=$NODE"
		echo "CQRS_BROKER_URL=amqp://cqrs:cqrs@127.0.0.1:$AMQP_PORT/%2f"
		echo "CQRS_DEV_TRACKER_URL=amqp://cqrs-tracker:cqrs-tracker@127.0.0.1:$AMQP_PORT/%2f"
		echo "CQRS_DEV_CONSUMER_URL=amqp://cqrs-consumer:cqrs-consumer@127.0.0.1:$AMQP_PORT/%2f"
		echo "CQRS_TEST_AMQP_PORT=$AMQP_PORT"
		echo "CQRS_RABBITMQ_DIR=$DIR"
	} >"$DIR/env.tmp"
	mv "$DIR/env.tmp" "$DIR/env"
	chmod 644 "$DIR/env"
	cat "$DIR/env"
}

write_config() {
	: >"$DIR/rabbitmq-env.conf"
	echo '[].' >"$DIR/enabled_plugins"
	echo '[].' >"$DIR/advanced.config"
	cat >"$DIR/rabbitmq.conf" <<EOF
# written by deploy/dev/rabbitmq.sh at every start
listeners.tcp.1 = 127.0.0.1:$AMQP_PORT
loopback_users.guest = true
load_definitions = $DIR/definitions.json
log.console = false
log.file.level = info
disk_free_limit.absolute = 50MB
EOF
	cat >"$DIR/definitions.json" <<'EOF'
{
  "vhosts": [{"name": "/"}],
  "users": [
    {"name": "cqrs", "password": "cqrs", "tags": "administrator"},
    {"name": "cqrs-tracker", "password": "cqrs-tracker", "tags": ""},
    {"name": "cqrs-consumer", "password": "cqrs-consumer", "tags": ""},
    {"name": "guest", "password": "guest", "tags": "administrator"}
  ],
  "permissions": [
    {"user": "cqrs", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
    {"user": "cqrs-tracker", "vhost": "/", "configure": "^cqrs\\.events$",
     "write": "^cqrs\\.events$", "read": "^$"},
    {"user": "cqrs-consumer", "vhost": "/", "configure": "^cqrs\\.",
     "write": "^(cqrs\\.dead|cqrs\\.(?!events$|dead$).+)$", "read": "^cqrs\\."},
    {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}
  ]
}
EOF
}

start_epmd() {
	if alive "$(readpid "$DIR/epmd.pid")" epmd && port_listening "$EPMD_PORT"; then
		return 0
	fi
	if port_listening "$EPMD_PORT"; then
		EPMD_PORT=$(free_port "$AMQP_PORT" "$DIST_PORT")
		write_ports
		export ERL_EPMD_PORT="$EPMD_PORT"
	fi
	command -v epmd >/dev/null 2>&1 || die "epmd not found (install erlang-base)"
	# not -daemon: we keep its pid and stop it with the node
	# shellcheck disable=SC2086
	$RUNAS epmd -port "$EPMD_PORT" -address 127.0.0.1 \
		</dev/null >>"$DIR/log/epmd.log" 2>&1 &
	echo $! >"$DIR/epmd.pid"
	n=0
	while ! port_listening "$EPMD_PORT"; do
		alive "$(readpid "$DIR/epmd.pid")" || die "epmd did not start (log: $DIR/log/epmd.log)"
		[ $n -lt 100 ] || die "epmd did not listen on port $EPMD_PORT"
		sleep 0.05
		n=$((n + 1))
	done
}

stop_epmd() {
	pid=$(readpid "$DIR/epmd.pid")
	if alive "$pid" epmd; then
		kill "$pid" 2>/dev/null || true
	fi
	rm -f "$DIR/epmd.pid"
	# An Erlang VM that finds no epmd starts one itself (`epmd -daemon`, pid
	# unknown to us): stop any epmd still listening on this node's private
	# port, by pid.
	[ -n "$EPMD_PORT" ] && command -v ss >/dev/null 2>&1 || return 0
	for pid in $(ss -Hltnp "sport = :$EPMD_PORT" 2>/dev/null |
		sed -n 's/.*pid=\([0-9]*\).*/\1/p' | sort -u); do
		if alive "$pid" epmd; then
			kill "$pid" 2>/dev/null || true
		fi
	done
}

boot_failed() {
	tail -n 30 "$DIR/log/startup.log" >&2
	cmd_stop "$DIR" || true
	die "$* (logs: $DIR/log)"
}

# ---- commands -------------------------------------------------------------

cmd_start() {
	[ $# -eq 1 ] || usage
	set_dir "$1" create
	read_ports

	[ -x "$RMQ_BIN/rabbitmq-server" ] ||
		die "no $RMQ_BIN/rabbitmq-server (install rabbitmq-server: sh deploy/dev/deps.sh)"

	if node_running; then
		print_env
		return 0
	fi

	# ports: AMQP is kept forever; the others are internal, re-picked if taken
	if [ -z "$AMQP_PORT" ]; then
		AMQP_PORT=$(free_port)
	elif port_listening "$AMQP_PORT"; then
		die "AMQP port $AMQP_PORT (the port of this node) is in use by another program"
	fi
	if [ -z "$DIST_PORT" ] || port_listening "$DIST_PORT"; then
		DIST_PORT=$(free_port "$AMQP_PORT")
	fi
	if [ -z "$EPMD_PORT" ]; then
		EPMD_PORT=$(free_port "$AMQP_PORT" "$DIST_PORT")
	fi
	mkdir -p "$DIR/log" "$DIR/mnesia" "$DIR/conf.d"
	write_ports
	write_config
	set_runas
	rmq_env
	start_epmd

	server_pid=$(readpid "$DIR/server.pid")
	if alive "$server_pid"; then
		# a wrapper whose VM died: let it go
		kill "$server_pid" 2>/dev/null || true
	fi
	rm -f "$DIR/rabbitmq.pid"

	# The rabbitmq-server wrapper runs the VM as a child and stops it on
	# SIGTERM. setsid: keep it out of the caller's process group and session.
	setsid=""
	command -v setsid >/dev/null 2>&1 && setsid=setsid
	# shellcheck disable=SC2086
	(cd "$DIR" && exec $setsid $RUNAS "$RMQ_BIN/rabbitmq-server" \
		</dev/null >>"$DIR/log/startup.log" 2>&1) &
	server_pid=$!
	echo "$server_pid" >"$DIR/server.pid"

	# The VM writes its pid file once its Erlang distribution is up; from
	# then on `rabbitmqctl await_startup` can wait for the end of the boot
	# (the CLI's own VM starts while RabbitMQ is still booting).
	n=0
	limit=$((START_TIMEOUT * 20))
	while ! node_running; do
		if ! alive "$server_pid"; then
			boot_failed "RabbitMQ did not start"
		fi
		[ $n -lt $limit ] || boot_failed "RabbitMQ did not start in ${START_TIMEOUT}s"
		sleep 0.05
		n=$((n + 1))
	done
	if ! ctl await_startup --timeout "$START_TIMEOUT" >>"$DIR/log/ctl.log" 2>&1; then
		tail -n 10 "$DIR/log/ctl.log" >&2
		boot_failed "RabbitMQ did not finish booting"
	fi
	n=0
	while ! port_listening "$AMQP_PORT"; do
		[ $n -lt 100 ] || boot_failed "RabbitMQ booted but does not listen on 127.0.0.1:$AMQP_PORT"
		sleep 0.05
		n=$((n + 1))
	done
	print_env
}

cmd_stop() {
	[ $# -eq 1 ] || usage
	[ -d "$1" ] || return 0
	set_dir "$1"
	read_ports
	vm=$(readpid "$DIR/rabbitmq.pid")
	wrapper=$(readpid "$DIR/server.pid")
	if alive "$vm" beam.smp beam; then
		# SIGTERM makes RabbitMQ (>= 3.8) shut down gracefully, like
		# `rabbitmqctl stop` but without starting a second Erlang VM.
		kill "$vm" 2>/dev/null || true
		n=0
		while alive "$vm" && [ $n -lt 300 ]; do
			sleep 0.1
			n=$((n + 1))
		done
		if alive "$vm"; then
			kill -9 "$vm" 2>/dev/null || true
		fi
	fi
	if alive "$wrapper" sh dash bash rabbitmq-server; then
		kill "$wrapper" 2>/dev/null || true
	fi
	stop_epmd
	rm -f "$DIR/rabbitmq.pid" "$DIR/server.pid"
}

cmd_status() {
	[ $# -eq 1 ] || usage
	[ -d "$1" ] || return 1
	set_dir "$1"
	node_running
}

cmd_ctl() {
	[ $# -ge 1 ] || usage
	set_dir "$1"
	shift
	read_ports
	[ -n "$EPMD_PORT" ] || die "no node was ever started in $DIR"
	# (rabbitmqctl against a stopped node would leave an epmd behind)
	if ! node_running; then
		echo "$PROG: node $NODE is not running (DIR $DIR)" >&2
		exit 69
	fi
	rmq_env
	ctl "$@"
}

cmd_env() {
	[ $# -eq 1 ] || usage
	set_dir "$1"
	read_ports
	node_running || die "not running in $DIR"
	print_env
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
start) cmd_start "$@" ;;
stop) cmd_stop "$@" ;;
status) cmd_status "$@" ;;
ctl) cmd_ctl "$@" ;;
env) cmd_env "$@" ;;
*) usage ;;
esac
