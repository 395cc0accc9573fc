#!/bin/sh
# verify-units.sh [BUILDDIR] - `systemd-analyze verify` on every unit of
# deploy/systemd/, as `make install` would write them: the placeholders
# (@BINDIR@, @SYSCONFDIR@, @DOCDIR@) point at a scratch directory that holds
# the programs of BUILDDIR/bin (default build/bin), so verify finds real
# executables. A program that is not built yet is stood in for by
# /bin/true, and said so. The template cqrs-consumer@.service is verified
# as an instance.
#
# Exits 0 when verify says nothing at all about any unit; otherwise prints
# what it said and exits 1 (a warning such as an unknown key counts: verify
# itself would only fail on a few of them).
set -u

here=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$here/build}
case $build in /*) ;; *) build=$here/$build ;; esac
units=$here/deploy/systemd

if ! command -v systemd-analyze >/dev/null 2>&1; then
	echo "verify-units: systemd-analyze is missing (Debian package systemd)" >&2
	exit 1
fi

tmp=$(mktemp -d /tmp/cqrs-verify.XXXXXX) || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
mkdir -p "$tmp/bin" "$tmp/etc/cqrs" "$tmp/doc" "$tmp/units"

for prog in cqrs-cmdd cqrs-tracker cqrs-consumer; do
	if [ -x "$build/bin/$prog" ]; then
		ln -s "$build/bin/$prog" "$tmp/bin/$prog"
	else
		echo "verify-units: note: $build/bin/$prog is not built; /bin/true stands in for it"
		ln -s /bin/true "$tmp/bin/$prog"
	fi
done
: >"$tmp/etc/cqrs/cqrs.conf"

n=0
for f in "$units"/*.service "$units"/*.socket; do
	[ -e "$f" ] || continue
	sed -e "s|@BINDIR@|$tmp/bin|g" -e "s|@SYSCONFDIR@|$tmp/etc|g" \
		-e "s|@DOCDIR@|$tmp/doc|g" "$f" >"$tmp/units/$(basename "$f")"
	n=$((n + 1))
done
if [ "$n" = 0 ]; then
	echo "verify-units: no units in $units" >&2
	exit 1
fi
if grep -n '@[A-Z]*@' "$tmp"/units/*; then
	echo "verify-units: a placeholder is left (see above)" >&2
	exit 1
fi

status=0
for f in "$tmp"/units/*; do
	name=$(basename "$f")
	case $name in
	*@.service) target="$tmp/units/${name%@.service}@verify.service"
		ln -s "$name" "$target" ;;
	*) target=$f ;;
	esac
	# --man=no: Documentation= links are not man pages here
	out=$(cd "$tmp/units" && SYSTEMD_LOG_COLOR=0 systemd-analyze verify --man=no "$target" 2>&1)
	rc=$?
	if [ "$rc" != 0 ] || [ -n "$out" ]; then
		echo "verify-units: $name: systemd-analyze verify (exit $rc):"
		printf '%s\n' "$out" | sed "s|$tmp/units/||g; s|^|  |"
		status=1
	else
		echo "verify-units: $name: ok"
	fi
done
exit $status
