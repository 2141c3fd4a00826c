#!/usr/bin/env bash
# Builds the libFuzzer targets of Fuzz/ (with -sanitize=fuzzer,address) and
# runs each for FUZZ_SECONDS from its committed seed corpus (docs/testing.md).
#
# Usage:
#   scripts/fuzz.sh                  # every target
#   scripts/fuzz.sh ProxyHeader ...  # only these (Fuzz/Corpus/<Name>)
#
#   FUZZ_SECONDS  how long each target runs (default 60)
#   FUZZ_JOBS     fuzzing processes per target (default 1; more: libFuzzer's -fork)
#   WORK_DIR      where the growing corpora and logs go (default .build-fuzz-work)
#
# What a run finds beyond the seeds is kept in WORK_DIR/<Name>/corpus (not
# committed). A crash, a leak or a failed check of FuzzChecks stops that
# target: its input is copied to Fuzz/Crashes/<Name>/, where
# FuzzRegressionTests runs it in every `make check` from then on; commit it
# with the fix. Exit status: 0 when no target crashed.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
FUZZ_JOBS=${FUZZ_JOBS:-1}
WORK_DIR=${WORK_DIR:-$ROOT/.build-fuzz-work}
mkdir -p "$WORK_DIR"

targets=("$@")
if ((${#targets[@]} == 0)); then
    for directory in Fuzz/Corpus/*/; do targets+=("$(basename "$directory")"); done
fi

echo "== building the fuzz targets (Fuzz/.build)"
start=$(date +%s)
if ! swift build --package-path Fuzz -Xswiftc -sanitize=fuzzer,address >"$WORK_DIR/build.log" 2>&1; then
    tail -n 20 "$WORK_DIR/build.log"
    echo "== build FAILED after $(($(date +%s) - start))s (see $WORK_DIR/build.log)"
    exit 1
fi
echo "   built in $(($(date +%s) - start))s"
bin=$(swift build --package-path Fuzz --show-bin-path)

failed=0
for name in "${targets[@]}"; do
    corpus=$WORK_DIR/$name/corpus
    artifacts=$WORK_DIR/$name/artifacts
    mkdir -p "$corpus" "$artifacts"
    start=$(date +%s)
    # The first directory gets what is new; the seeds are only read.
    # (With -jobs, libFuzzer writes each job's log to fuzz-N.log in the current directory.)
    parallel=()
    ((FUZZ_JOBS > 1)) && parallel=(-fork="$FUZZ_JOBS")
    FUZZ_TARGET=$name "$bin/Fuzz" "$corpus" "Fuzz/Corpus/$name" -max_total_time="$FUZZ_SECONDS" "${parallel[@]}" \
        -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$WORK_DIR/$name/log" 2>&1
    status=$?
    runs=$(grep -oE '^stat::number_of_executed_units: *[0-9]+' "$WORK_DIR/$name/log" | grep -oE '[0-9]+$' | tail -n 1)
    coverage=$(grep -oE 'cov: [0-9]+' "$WORK_DIR/$name/log" | tail -n 1)
    if ((status != 0)); then
        failed=1
        mkdir -p "Fuzz/Crashes/$name"
        for artifact in "$artifacts"/*; do
            [[ -e $artifact ]] || continue
            cp "$artifact" "Fuzz/Crashes/$name/"
            echo "   $name: $(basename "$artifact") -> Fuzz/Crashes/$name/ (commit it with the fix)"
        done
        grep -m 5 -E "ERROR|Fatal error|Precondition failed|SUMMARY" "$WORK_DIR/$name/log" | sed 's/^/   /'
        echo "== $name: FAILED (exit $status) after $(($(date +%s) - start))s; log: $WORK_DIR/$name/log"
    else
        echo "== $name: ok, ${runs:-?} inputs in $(($(date +%s) - start))s, ${coverage:-cov ?}"
    fi
done
exit "$failed"
