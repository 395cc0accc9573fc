#!/bin/sh
# run.sh UNIT... [-- INTEGRATION... [-- E2E...]] - run Check suites, print
# each suite's summary line and a final total; exit non-zero on any failure.
#
# Suites run in fork mode (CK_FORK=yes), so a crash fails one test, not the
# run. Integration and end-to-end suites start their own servers through the
# fixtures in tests/lib. One private PostgreSQL cluster is shared by all
# suites of one run to save start-up time; each test makes its own database.
set -u
: "${B:=build}"
export CK_FORK=yes
export CK_VERBOSITY="${CK_VERBOSITY:-normal}"
# Sanitizer reports make the process fail; leaks are reported at exit.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:exitcode=23}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"

total=0 failed=0 errors=0 suites=0 bad_suites=""
phase=unit
started_fixtures=0

cleanup() {
	if [ "$started_fixtures" = 1 ]; then
		sh deploy/dev/pg.sh stop "$CQRS_TEST_PGDIR" >/dev/null 2>&1 || true
		if [ -n "${CQRS_TEST_RABBITDIR:-}" ]; then
			sh deploy/dev/rabbitmq.sh stop "$CQRS_TEST_RABBITDIR" >/dev/null 2>&1 || true
		fi
		rm -rf "$CQRS_TEST_ROOT"
	fi
}
trap cleanup EXIT INT TERM

start_fixtures() {
	[ "$started_fixtures" = 1 ] && return 0
	[ -n "${CQRS_TEST_PGDIR:-}" ] && return 0
	# Short path: Unix socket names are limited to 107 bytes.
	CQRS_TEST_ROOT=$(mktemp -d /tmp/cqrs-test.XXXXXX)
	chmod 755 "$CQRS_TEST_ROOT"
	export CQRS_TEST_ROOT
	export CQRS_TEST_PGDIR="$CQRS_TEST_ROOT/pg"
	started_fixtures=1
	echo "starting private PostgreSQL in $CQRS_TEST_PGDIR"
	if ! sh deploy/dev/pg.sh start "$CQRS_TEST_PGDIR" --fast >"$CQRS_TEST_ROOT/pg-start.log" 2>&1; then
		cat "$CQRS_TEST_ROOT/pg-start.log"
		echo "FAIL: could not start PostgreSQL for the integration tests"
		exit 1
	fi
	if [ -f deploy/dev/rabbitmq.sh ]; then
		export CQRS_TEST_RABBITDIR="$CQRS_TEST_ROOT/rabbit"
		echo "starting private RabbitMQ in $CQRS_TEST_RABBITDIR"
		if ! sh deploy/dev/rabbitmq.sh start "$CQRS_TEST_RABBITDIR" >"$CQRS_TEST_ROOT/rabbit-start.log" 2>&1; then
			cat "$CQRS_TEST_ROOT/rabbit-start.log"
			echo "FAIL: could not start RabbitMQ for the integration tests"
			exit 1
		fi
	fi
}

for t in "$@"; do
	if [ "$t" = "--" ]; then
		phase=integration
		continue
	fi
	[ "$phase" = integration ] && start_fixtures
	suites=$((suites + 1))
	out=$(mktemp)
	"$t" >"$out" 2>&1
	rc=$?
	# Check prints "NN%: Checks: N, Failures: F, Errors: E"
	line=$(grep -E '^[0-9]+%: Checks: [0-9]+' "$out" | tail -n 1)
	if [ -n "$line" ]; then
		n=$(echo "$line" | sed -E 's/.*Checks: ([0-9]+).*/\1/')
		f=$(echo "$line" | sed -E 's/.*Failures: ([0-9]+).*/\1/')
		e=$(echo "$line" | sed -E 's/.*Errors: ([0-9]+).*/\1/')
		total=$((total + n)); failed=$((failed + f)); errors=$((errors + e))
	fi
	printf '%-44s %s\n' "$(basename "$t")" "${line:-no summary (exit $rc)}"
	if [ "$rc" != 0 ] || [ -z "$line" ]; then
		bad_suites="$bad_suites $(basename "$t")"
		# show what failed: Check's failure lines and sanitizer reports
		grep -E ':[EF]:|ERROR: |runtime error|LeakSanitizer|SUMMARY' "$out" | head -n 60
		[ -z "$line" ] && tail -n 40 "$out"
	fi
	rm -f "$out"
done

echo "----"
echo "total: $suites suites, $total checks, $failed failures, $errors errors"
if [ -n "$bad_suites" ]; then
	echo "FAILED:$bad_suites"
	exit 1
fi
echo "all tests passed"
