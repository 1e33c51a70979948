#!/usr/bin/env bash
# What a configured feature costs a whole request: the same release build run twice
# side by side, once with a plain route (A) and once with the route's features on
# (B: an active health check every 1s and maxconn 1000 by default; override with
# FEATURES), next to HAProxy as the peer, all against one nginx backend serving
# 100 bytes. Runs are interleaved (HAProxy, A, B, HAProxy, A, B, ...) so machine
# noise hits each alike; the generator is pinned to CPU 1, proxies and backend to
# CPU 0, as ../shared/bench/peers.sh does. Prints each run and the medians.
#
#   cargo build --release
#   REPEAT=5 DURATION=8 benches/features-ab.sh
#   FEATURES='maxconn = 1000' benches/features-ab.sh
#   STICKY_SECRET=s FEATURES='sticky = "cookie"
#   ratelimit = { rate = "1000000/s", burst = 1000000 }' benches/features-ab.sh
#
# With STICKY_SECRET set, B gets `[sticky] secret` and wrk sends every target the
# cookie that pins B's one backend (its token computed here), so B measures a
# pinned client's request: the steady state of a sticky route.
#
# Needs nginx, haproxy, wrk, python3, openssl (Debian packages).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
REPEAT=${REPEAT:-5}
DURATION=${DURATION:-8}
CONNS=${CONNS:-50}
FEATURES=${FEATURES:-'healthcheck = { path = "/hello", interval = "1s", timeout = "500ms" }
maxconn = 1000'}
RIG_NAME=features
# shellcheck source=benches/tls-rig.sh
source "$here/benches/tls-rig.sh"
WB=$(free_port)

wharf_plain_cfg "$WHP" "$BE" "" > "$run/a.toml"
wharf_plain_cfg "$WB" "$BE" "$FEATURES" > "$run/b.toml"
wrk_args=()
if [ -n "${STICKY_SECRET:-}" ]; then
  printf '\n[sticky]\nsecret = "%s"\n' "$STICKY_SECRET" >> "$run/b.toml"
  # The token of a file route's backend: HMAC-SHA256 over its address
  # (docs/affinity.md), 96 bits, base64url.
  token=$(python3 -c 'import base64,hashlib,hmac,sys
m = hmac.new(sys.argv[1].encode(), b"wharf-sticky-v1\0" + sys.argv[2].encode(), hashlib.sha256)
print(base64.urlsafe_b64encode(m.digest()[:12]).decode())' "$STICKY_SECRET" "127.0.0.1:$BE")
  wrk_args=(-H "Cookie: WHARFID=$token")
fi

taskset -c 0 nginx -c "$run/backend.conf" & pids+=($!)
taskset -c 0 haproxy -f "$run/haproxy-plain.cfg" & pids+=($!)
# BIN_A: another build for A (e.g. one with metric recording compiled out).
WHARF_LOG=warn taskset -c 0 "${BIN_A:-$bin}" run --config "$run/a.toml" & pids+=($!)
WHARF_LOG=warn taskset -c 0 "$bin" run --config "$run/b.toml" & pids+=($!)
for p in "$BE" "$HP" "$WHP" "$WB"; do
  for _ in $(seq 100); do
    if curl -s -o /dev/null "http://127.0.0.1:$p/hello"; then break; fi
    sleep 0.1
  done
done

declare -A rps
for r in $(seq "$REPEAT"); do
  for t in haproxy:$HP plain:$WHP features:$WB; do
    name=${t%%:*}; port=${t##*:}
    v=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${DURATION}s" "${wrk_args[@]}" "http://127.0.0.1:$port/hello" \
      | awk '/Requests\/sec/ { print $2 }')
    rps[$name]+="$v "
    printf 'run %d %-9s %s req/s\n' "$r" "$name" "$v"
  done
done
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
h=$(echo "${rps[haproxy]}" | median); a=$(echo "${rps[plain]}" | median); b=$(echo "${rps[features]}" | median)
printf '\nmedians: haproxy %s, wharf plain %s, wharf with features %s req/s\n' "$h" "$a" "$b"
awk -v h="$h" -v a="$a" -v b="$b" 'BEGIN { printf "plain/haproxy %.3f  features/haproxy %.3f  features/plain %.3f\n", a / h, b / h, b / a }'
