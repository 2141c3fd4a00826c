#!/usr/bin/env bash
# Builds the package and its tests under AddressSanitizer and ThreadSanitizer
# and runs the test suite with each, including the tests that start the built
# `duplicator` binary as a child process (that binary is sanitized too, and
# its reports are collected as well as the test runner's).
#
# Usage:
#   scripts/sanitizers.sh                 # both: address, then thread
#   scripts/sanitizers.sh address         # or: thread
#   FILTER=all scripts/sanitizers.sh      # the whole suite instead of the default filter
#
#   FILTER        `swift test --filter` regex (default: the integration, process,
#                 resilience, operability, session, ring and load-tool suites);
#                 `all` runs every test
#   LOG_DIR       where build and test output and the sanitizer reports go
#                 (default: .build-sanitizers-logs/<date>)
#   PARALLEL=1    run tests in parallel (default: --no-parallel: in parallel on a
#                 2-core machine the sanitized integration tests exceed their
#                 .timeLimit(.minutes(2)) because they all run at once)
#   TEST_TIMEOUT  seconds one `swift test` run may take (default 3600)
#
# Each sanitizer has its own scratch path (.build-asan, .build-tsan), so this
# does not block a concurrent `swift build` in .build. Every process started
# with ASAN_OPTIONS/TSAN_OPTIONS set writes its reports to
# LOG_DIR/reports-<sanitizer>/<asan|tsan>.<pid> (log_path), so a report from a
# child `duplicator` whose stderr the tests do not read is still found (its
# non-zero exit, ASan's 1, LSan's 23, TSan's 66, also fails the test that
# expects 0). LeakSanitizer uses scripts/lsan.supp and TSan scripts/tsan.supp;
# each entry there says why it is not a bug of ours.
#
# Needs: Swift 6.x with its sanitizer runtimes, liburing-dev; the integration
# tests need io_uring (not blocked by seccomp) and run the proxy as root or with
# enough RLIMIT_MEMLOCK.
#
# Exit status: 0 when every build and test run passed and no process wrote a
# sanitizer report; 1 otherwise. Prints how long each build and run took.
set -uo pipefail
cd "$(dirname "$0")/.."

DEFAULT_FILTER='IntegrationTests|ResilienceTests|ProcessTests|OperabilityTests|SessionTests|RingTests|LoadTools'
FILTER=${FILTER:-$DEFAULT_FILTER}
PARALLEL=${PARALLEL:-0}
TEST_TIMEOUT=${TEST_TIMEOUT:-3600}
LOG_DIR=${LOG_DIR:-.build-sanitizers-logs/$(date +%Y%m%d-%H%M%S)}
# ResilienceTests/churn asserts that RSS grows < 4 MiB over 20000 sessions. ASan
# keeps freed blocks in a 256 MiB quarantine, and the -Onone test build
# allocates in unspecialised generic loops (the release build does not), so
# under ASan that test runs on its own with the quarantine off.
QUARANTINE_FREE_TESTS='ResilienceTests/churn'
case "${1:-both}" in
    both) SANITIZERS=(address thread) ;;
    address|thread) SANITIZERS=("$1") ;;
    *) echo "usage: $0 [address|thread|both]" >&2; exit 2 ;;
esac
mkdir -p "$LOG_DIR"
LOG_DIR=$(cd "$LOG_DIR" && pwd)
# The tests run the binary as `nobody` too: let every process write its report.
chmod 1777 "$LOG_DIR"

failed=0
summary=()
seconds_since() { echo $(($(date +%s) - $1)); }

# run_tests LOG [swift test arguments...]: one bounded `swift test` run.
run_tests() {
    local log=$1
    shift
    timeout -k 30 "$TEST_TIMEOUT" \
        swift test --skip-build --sanitize="$sanitizer" --scratch-path "$scratch" "$@" >"$log" 2>&1
    local status=$?
    grep -E "Test run with|^Executed|^error:" "$log" | tail -n 3
    return "$status"
}

for sanitizer in "${SANITIZERS[@]}"; do
    case $sanitizer in
        address) scratch=.build-asan; symbol=__asan_init ;;
        thread) scratch=.build-tsan; symbol=__tsan_init ;;
    esac
    reports=$LOG_DIR/reports-$sanitizer
    mkdir -p "$reports"
    chmod 1777 "$reports"

    echo "== $sanitizer: building ($scratch)"
    start=$(date +%s)
    swift build --build-tests --sanitize="$sanitizer" --scratch-path "$scratch" >"$LOG_DIR/build-$sanitizer.log" 2>&1
    build_status=$?
    build_seconds=$(seconds_since "$start")
    tail -n 2 "$LOG_DIR/build-$sanitizer.log"
    if ((build_status != 0)); then
        echo "== $sanitizer: build FAILED after ${build_seconds}s (see $LOG_DIR/build-$sanitizer.log)"
        summary+=("$sanitizer: build failed (${build_seconds}s)")
        failed=1
        continue
    fi

    # The tests run the `duplicator` next to the test bundle: make sure it is the sanitized one.
    binary=$(swift build --sanitize="$sanitizer" --scratch-path "$scratch" --show-bin-path)/duplicator
    # (grep reads all of nm's output: with pipefail, grep -q would fail nm with SIGPIPE.)
    if ! grep -q "$symbol" < <(nm "$binary" 2>/dev/null); then
        echo "== $sanitizer: $binary is not built with the $sanitizer sanitizer ($symbol missing)"
        summary+=("$sanitizer: $binary is not sanitized")
        failed=1
        continue
    fi

    export ASAN_OPTIONS="log_path=$reports/asan:halt_on_error=1:detect_leaks=1:abort_on_error=0"
    export LSAN_OPTIONS="suppressions=$PWD/scripts/lsan.supp:print_suppressions=0"
    export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0:second_deadlock_stack=1:history_size=4:suppressions=$PWD/scripts/tsan.supp"
    args=()
    [[ $FILTER != all ]] && args=(--filter "$FILTER")
    [[ $PARALLEL == 1 ]] || args+=(--no-parallel)
    separate=0
    if [[ $sanitizer == address ]] && [[ $FILTER == all || $FILTER == *ResilienceTests* ]]; then
        separate=1
        args+=(--skip "$QUARANTINE_FREE_TESTS")
    fi

    echo "== $sanitizer: testing (filter: $FILTER)"
    start=$(date +%s)
    run_tests "$LOG_DIR/test-$sanitizer.log" "${args[@]}"
    test_status=$?
    if ((separate)); then
        echo "== $sanitizer: testing $QUARANTINE_FREE_TESTS with quarantine_size_mb=0"
        ASAN_OPTIONS="$ASAN_OPTIONS:quarantine_size_mb=0" \
            run_tests "$LOG_DIR/test-$sanitizer-quarantine-free.log" --no-parallel --filter "$QUARANTINE_FREE_TESTS"
        status=$?
        ((test_status == 0)) && test_status=$status
    fi
    test_seconds=$(seconds_since "$start")
    unset ASAN_OPTIONS LSAN_OPTIONS TSAN_OPTIONS

    # One file per process that reported (a suppressed report leaves an empty file).
    report_files=$(find "$reports" -type f -size +0 | sort)
    report_count=0
    if [[ -n $report_files ]]; then
        report_count=$(grep -l -E "(Address|Thread|Leak|UndefinedBehavior)Sanitizer" $report_files | wc -l)
        echo "== $sanitizer: sanitizer reports:"
        for file in $report_files; do
            echo "   $file: $(grep -m1 -oE "(ERROR|WARNING): [A-Za-z]+Sanitizer: .*" "$file" || echo "(no header)")"
            grep -m3 "^SUMMARY:" "$file" | sed 's/^/      /'
        done
    fi
    # Reports that went to a stream instead (e.g. a process that reset its environment).
    inline=$(cat "$LOG_DIR/test-$sanitizer"*.log | grep -c -E "^(==[0-9]+==)?(ERROR|WARNING): (Address|Thread|Leak)Sanitizer")
    verdict=ok
    if ((test_status != 0)); then verdict="tests failed (exit $test_status)"; failed=1; fi
    if ((report_count + inline > 0)); then
        verdict="$verdict, $report_count processes wrote sanitizer reports, $inline reports in the test output"
        failed=1
    fi
    summary+=("$sanitizer: build ${build_seconds}s, test ${test_seconds}s: $verdict")
done

echo "== summary (logs and reports in $LOG_DIR)"
printf '   %s\n' "${summary[@]}"
exit "$failed"
