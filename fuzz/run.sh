#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 20) and
# fails on the first crash; libFuzzer leaves the crashing input in
# fuzz/artifacts/<target>/ and the run's log in fuzz/target/<target>.log.
# Usage: fuzz/run.sh [SECONDS] [TARGET...]
# FUZZ_FLAGS: extra cargo-fuzz flags for the build and the runs, e.g.
# "--dev -s none" (unoptimised, no AddressSanitizer: about half the build time,
# for a short smoke run in CI; the code under test has no unsafe, so ASan finds
# little that a panic does not).
#
# Needs the nightly toolchain (rustup toolchain install nightly) and cargo-fuzz,
# which it installs when missing. One libFuzzer process at a time (the default:
# no -jobs/-fork), so it shares a small machine. New corpus entries go to
# fuzz/target/corpus/<target>/, so the committed seeds in fuzz/corpus/ stay a
# handful of files.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-20}"
shift || true
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
read -r -a flags <<<"${FUZZ_FLAGS:-}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    mkdir -p "target/corpus/$t"
    log="target/$t.log"
    rc=0
    cargo +nightly fuzz run "${flags[@]}" "$t" "target/corpus/$t" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -rss_limit_mb=2048 >"$log" 2>&1 || rc=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    if [ "$rc" -ne 0 ]; then
        tail -40 "$log" >&2
        echo "fuzz: $t FAILED (exit $rc); the input is in fuzz/artifacts/$t/" >&2
        exit 1
    fi
    echo "fuzz: $t ${secs}s, ${execs:-?} executions, peak RSS ${rss:-?} MB, no crash"
done
