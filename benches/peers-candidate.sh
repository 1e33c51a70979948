#!/usr/bin/env bash
# Runs Wharf as the candidate of ../shared/bench/peers.sh: writes a config from the
# BENCH_* variables the harness exports (plain listener on BENCH_PORT, every path to
# BENCH_BACKEND with an active health check (issue 12 measures with one; set
# CANDIDATE_ROUTE_EXTRA= for none, or to other route keys), one worker thread
# and metrics on (always); with CANDIDATE_TLS_PORT set, also a TLS
# listener on BENCH_TLS_PORT serving the harness's certificate BENCH_CERT/BENCH_KEY,
# an ECDSA P-256 self-signed one) and execs the release binary, so the harness's
# PID is Wharf's.
#
#   cargo build --release
#   CANDIDATE_NAME=wharf CANDIDATE_CMD="$PWD/benches/peers-candidate.sh" \
#     REPEAT=3 SCENARIOS="ka ka4k close" ../shared/bench/peers.sh
#   CANDIDATE_NAME=wharf CANDIDATE_CMD="$PWD/benches/peers-candidate.sh" CANDIDATE_TLS_PORT=9444 \
#     REPEAT=3 SCENARIOS="tls h2" TARGETS="haproxy nginx" ../shared/bench/peers.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
: "${BENCH_PORT:?run me from peers.sh}" "${BENCH_BACKEND:?run me from peers.sh}"
rundir=${BENCH_RUNDIR:-$(mktemp -d)}
route_extra=${CANDIDATE_ROUTE_EXTRA-'healthcheck = { path = "/hello", interval = "1s" }'}
cat > "$rundir/wharf.toml" <<TOML
[entrypoints.web]
address = "127.0.0.1:${BENCH_PORT}"

[admin]
address = "127.0.0.1:0"

[runtime]
worker_threads = 1

[[routes]]
host = "*"
upstream = "static:${BENCH_BACKEND}"
tls = "none"
${route_extra}
TOML
if [ -n "${BENCH_TLS_PORT:-}" ]; then
  cat >> "$rundir/wharf.toml" <<TOML

[entrypoints.websecure]
address = "127.0.0.1:${BENCH_TLS_PORT}"
tls = true

[[tls.certificates]]
cert = "${BENCH_CERT}"
key = "${BENCH_KEY}"
TOML
fi
export WHARF_LOG=${WHARF_LOG:-warn}
exec "$bin" run --config "$rundir/wharf.toml"
