#!/usr/bin/env bash
# New TLS connection per request: wrk -H 'Connection: close' over https against
# HAProxy and Wharf in the same run, ECDSA P-256 certificate, 100-byte body from an
# nginx backend. The cell peers.sh lacks (its `tls` cell keeps connections alive):
# it measures full handshakes (TLS 1.3, X25519 or the client's preferred group,
# ECDSA P-256 signature; wrk's OpenSSL does not resume sessions across connections).
#
# Placement as peers.sh PIN=split: wrk on CPU1, proxy and backend on CPU0. Each
# proxy runs one thread (HAProxy nbthread 1, Wharf worker_threads 1).
#
#   cargo build --release
#   REPEAT=3 DURATION=10 CONNS=50 benches/tls-newconn.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
REPEAT=${REPEAT:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-50}
GEN_CPUS=${GEN_CPUS:-1}; PROXY_CPUS=${PROXY_CPUS:-0}; BACKEND_CPUS=${BACKEND_CPUS:-0}
for b in wrk haproxy nginx openssl taskset curl; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install wrk haproxy nginx)" >&2; exit 2; }
done
RIG_NAME=tlsnew
# shellcheck source=benches/tls-rig.sh
. "$here/benches/tls-rig.sh"

taskset -c "$BACKEND_CPUS" nginx -c "$run/backend.conf" >/dev/null 2>&1 & pids+=($!)
taskset -c "$PROXY_CPUS" haproxy -db -f "$run/haproxy.cfg" >"$run/haproxy.log" 2>&1 & pids+=($!)
WHARF_LOG=warn taskset -c "$PROXY_CPUS" "$bin" run --config "$run/wharf.toml" >"$run/wharf.log" 2>&1 & pids+=($!)
for port in $HA $WH; do
  for _ in $(seq 50); do curl -skf -o /dev/null "https://localhost:$port/hello" && break; sleep 0.1; done
  curl -skf -o /dev/null "https://localhost:$port/hello" || { echo "port $port not serving" >&2; exit 1; }
done

printf '%-8s %-4s %10s %8s %8s %6s\n' target rep 'req/s' p50ms p99ms err
for rep in $(seq "$REPEAT"); do
  for t in haproxy wharf; do
    port=$HA; [ "$t" = wharf ] && port=$WH
    taskset -c "$GEN_CPUS" wrk -t1 -c"$CONNS" -d2s -H 'Connection: close' "https://localhost:$port/hello" >/dev/null 2>&1
    out=$(taskset -c "$GEN_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Connection: close' "https://localhost:$port/hello")
    echo "$out" | awk -v t="$t" -v r="$rep" '
      function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
                       if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
                       if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 } return v + 0 }
      /^ +50%/ { p50 = ms($2) } /^ +99%/ { p99 = ms($2) } /Requests\/sec:/ { rps = $2 }
      /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
      /Non-2xx or 3xx responses:/ { err += $NF }
      END { printf "%-8s %-4s %10.0f %8.2f %8.2f %6d\n", t, r, rps, p50, p99, err }'
  done
done
