#!/bin/sh
# deps.sh - install the Debian packages needed to build and test cqrs.
#
# Usage: sh deploy/dev/deps.sh [--fuzz]
#
# --fuzz adds clang and its libFuzzer runtime for `make fuzz` (large, so
# `make check` does without them: it replays the fuzz seeds with gcc).
#
# Prints nothing and exits 0 when every package is already installed (it runs
# at every `make check`, so this path is one dpkg-query call). As root it
# installs what is missing with apt-get (running `apt-get update` only when the
# first attempt fails); the install does not start a system-wide PostgreSQL or
# RabbitMQ (a temporary /usr/sbin/policy-rc.d that forbids starting services
# is put in place when none exists). As a normal user it prints the command to
# run and exits 1.
set -eu

PKGS="libpq-dev libevent-dev libjson-c-dev librabbitmq-dev check pkg-config
postgresql rabbitmq-server libinih-dev libsystemd-dev systemd gcc make"
case "${1:-}" in
"") ;;
--fuzz) PKGS="$PKGS clang libclang-rt-dev" ;;
*) echo "usage: sh deploy/dev/deps.sh [--fuzz]" >&2; exit 2 ;;
esac

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "deps.sh: no dpkg-query (not Debian?); make sure the equivalents of these are installed:" >&2
	echo "  $(echo "$PKGS" | tr '\n' ' ')" >&2
	exit 0
fi

# One dpkg-query call for all packages; unknown ones are simply not listed.
# shellcheck disable=SC2086
installed=$(dpkg-query -W -f='${Package} ${Status}\n' $PKGS 2>/dev/null || true)
missing=""
for p in $PKGS; do
	case "
$installed
" in
	*"
$p install ok installed
"*) ;;
	*) missing="$missing $p" ;;
	esac
done
missing=${missing# }

[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "deps.sh: missing packages: $missing" >&2
	echo "deps.sh: install them with:" >&2
	echo "sudo apt-get install -y --no-install-recommends $missing"
	exit 1
fi

echo "deps.sh: installing:$missing" >&2

# Keep package scripts from starting system-wide servers.
POLICY=/usr/sbin/policy-rc.d
made_policy=0
cleanup() {
	if [ "$made_policy" = 1 ]; then
		rm -f "$POLICY"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ ! -e "$POLICY" ]; then
	printf '#!/bin/sh\n# temporary, from cqrs deploy/dev/deps.sh\nexit 101\n' >"$POLICY"
	chmod 755 "$POLICY"
	made_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
do_install() {
	# shellcheck disable=SC2086
	apt-get install -y --no-install-recommends $missing
}
if ! do_install; then
	echo "deps.sh: install failed; running apt-get update and retrying" >&2
	apt-get update
	do_install
fi
echo "deps.sh: done" >&2
