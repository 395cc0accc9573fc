#!/bin/sh
# run.sh TARGET... - runs each libFuzzer target for FUZZ_SECONDS, one after
# the other (`make fuzz` builds them first and calls this).
#
# Each target works in build/fuzz/TARGET/: corpus/ starts as a copy of the
# tracked seeds (tests/fuzz/corpus/TARGET/) and keeps what libFuzzer adds,
# run after run, so the tracked seeds stay small; crashes, leaks and
# timeouts go to artifacts/, and the whole output to fuzz.log. The
# reproducers of tests/fuzz/regress/TARGET/ are read as well. At the end
# one line per target: libFuzzer's final "#N DONE cov: ... exec/s" and
# what it found. Exits 1 when any target found something.
#
# An artifact becomes a regression test by moving it to
# tests/fuzz/regress/TARGET/ once the bug is fixed: `make check` replays it.
set -u
: "${FUZZ_BIN:?FUZZ_BIN: where the fuzz_TARGET binaries are}"
: "${FUZZ_SECONDS:=60}"
: "${FUZZ_WORK:=build/fuzz}"

# libFuzzer's -max_len per target: above each parser's interesting limits
# (evhttp's 8 KiB of headers here, a config line's 64 KiB) without slowing
# every run with huge inputs.
max_len() {
	case "$1" in
	config) echo 81920 ;;
	http) echo 16384 ;;
	*) echo 16384 ;;
	esac
}

status=0
summary=""
for t in "$@"; do
	bin="$FUZZ_BIN/fuzz_$t"
	work="$FUZZ_WORK/$t"
	if [ ! -x "$bin" ]; then
		echo "run.sh: no $bin" >&2
		exit 2
	fi
	mkdir -p "$work/corpus" "$work/artifacts"
	cp tests/fuzz/corpus/"$t"/* "$work/corpus/"
	set -- "$bin" -max_total_time="$FUZZ_SECONDS" -max_len="$(max_len "$t")" -timeout=30 \
		-rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$work/artifacts/"
	[ -f "tests/fuzz/$t.dict" ] && set -- "$@" -dict="tests/fuzz/$t.dict"
	set -- "$@" "$work/corpus"
	[ -d "tests/fuzz/regress/$t" ] && set -- "$@" "tests/fuzz/regress/$t"
	echo "fuzz $t: $*"
	before=$(ls "$work/artifacts" | wc -l)
	"$@" >"$work/fuzz.log" 2>&1
	rc=$?
	after=$(ls "$work/artifacts" | wc -l)
	done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$work/fuzz.log" | tail -n 1)
	if [ "$rc" != 0 ] || [ "$after" != "$before" ]; then
		status=1
		found="FOUND (exit $rc): $(grep -E '^(==[0-9]+==ERROR|SUMMARY|.*property failed)' "$work/fuzz.log" | head -n 2 | tr '\n' ' ')"
		grep -E 'Test unit written to' "$work/fuzz.log"
	else
		found="nothing found"
	fi
	summary="$summary$(printf '%-9s %s; %s' "$t" "${done_line:-no DONE line (see $work/fuzz.log)}" "$found")
"
done
echo "----"
printf '%s' "$summary"
exit $status
