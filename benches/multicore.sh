#!/usr/bin/env bash
# How Wharf and HAProxy scale from one thread to both cores of this machine
# (issue 12 item 5). No pinning (PIN=none: load generator, proxy and backend
# share the two cores, as a generator pinned elsewhere is impossible on a 2-core
# machine), so the figures are a ratio between the proxies measured in the same
# run, interleaved, not an absolute capacity.
#
# Rows: HAProxy nbthread 1 and 2; Wharf worker_threads 1 and 0 (0: one worker per
# core, here 2). Load: wrk (2 threads) keep-alive GETs of a 100-byte file from an
# nginx backend (2 workers), and the same with a new connection per request
# (`Connection: close`). Columns: req/s, p99, and the proxy's CPU per request
# (user + system time from /proc over the run, divided by the requests).
#
#   cargo build --release
#   REPEAT=3 DURATION=10 benches/multicore.sh
#
# BASE_BIN=<another wharf build> adds a row `base-0`: that build with
# worker_threads 0, in the same run (to compare two builds' scaling).
# PERF=1 also counts, with `perf stat` on the proxy over each measured run,
# system calls, futex calls (cross-thread wake-ups), accept4, epoll_wait,
# epoll_ctl, context switches and CPU migrations, each per request.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
REPEAT=${REPEAT:-3}; DURATION=${DURATION:-10}; CONNS=${CONNS:-100}
CELLS=${CELLS:-"ka close"}
for b in wrk haproxy nginx curl; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install wrk haproxy nginx)" >&2; exit 2; }
done
RIG_NAME=multicore
# shellcheck source=benches/tls-rig.sh
. "$here/benches/tls-rig.sh"
sed -i 's/^worker_processes 1;/worker_processes 2;/' "$run/backend.conf"
H2=$(free_port); W2=$(free_port)
sed "s/nbthread 1/nbthread 2/; s/127.0.0.1:$HP\$/127.0.0.1:$H2/" "$run/haproxy-plain.cfg" > "$run/haproxy2.cfg"
wharf_plain_cfg "$WHP" "$BE" "" > "$run/wharf1.toml"
wharf_plain_cfg "$W2" "$BE" "" | sed 's/^worker_threads = 1/worker_threads = 0/' > "$run/wharf2.toml"

nginx -c "$run/backend.conf" & pids+=($!)
haproxy -f "$run/haproxy-plain.cfg" & hp1=$!; pids+=($hp1)
haproxy -f "$run/haproxy2.cfg" & hp2=$!; pids+=($hp2)
WHARF_LOG=warn env -u WHARF_BIN "$bin" run --config "$run/wharf1.toml" & wp1=$!; pids+=($wp1)
WHARF_LOG=warn env -u WHARF_BIN "$bin" run --config "$run/wharf2.toml" & wp2=$!; pids+=($wp2)
ports=("$BE" "$HP" "$H2" "$WHP" "$W2")
rows="haproxy-1:$HP:$hp1 haproxy-2:$H2:$hp2 wharf-1:$WHP:$wp1 wharf-0:$W2:$wp2"
if [ -n "${BASE_BIN:-}" ]; then
  B2=$(free_port)
  sed "s/127.0.0.1:$W2\"/127.0.0.1:$B2\"/" "$run/wharf2.toml" > "$run/base2.toml"
  WHARF_LOG=warn env -u WHARF_BIN "$BASE_BIN" run --config "$run/base2.toml" & bp2=$!; pids+=($bp2)
  ports+=("$B2"); rows="$rows base-0:$B2:$bp2"
fi
for p in "${ports[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$p/hello" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:$p/hello" || { echo "port $p not serving" >&2; exit 1; }
done

perf_events=raw_syscalls:sys_enter,syscalls:sys_enter_futex,syscalls:sys_enter_accept4,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,context-switches,cpu-migrations
if [ -n "${PERF:-}" ]; then
  command -v perf >/dev/null || { echo "PERF=1 needs perf (apt-get install linux-perf)" >&2; exit 2; }
fi
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
printf '%-6s %-3s %-16s %10s %8s %10s\n' cell rep target 'req/s' p99ms 'cpu_us/req'
for rep in $(seq "$REPEAT"); do
  for cell in $CELLS; do
    extra=(); [ "$cell" = close ] && extra=(-H 'Connection: close')
    for t in $rows; do
      IFS=: read -r name port pid <<<"$t"
      wrk -t2 -c"$CONNS" -d2s "${extra[@]}" "http://127.0.0.1:$port/hello" >/dev/null 2>&1
      c0=$(cpu_ticks "$pid")
      if [ -n "${PERF:-}" ]; then
        perf stat -x, -o "$run/perf.$name" -e "$perf_events" -p "$pid" -- sleep "$DURATION" &
        perf_pid=$!
      fi
      out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${extra[@]}" "http://127.0.0.1:$port/hello")
      c1=$(cpu_ticks "$pid")
      echo "$out" | awk -v cell="$cell" -v r="$rep" -v t="$name" -v c=$((c1 - c0)) -v hz="$hz" '
        function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
                         if (v ~ /ms$/) { sub(/ms$/, "", v); return v }
                         if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 } return v }
        /Requests\/sec/ { rps = $2 } / 99%/ { p99 = ms($2) } /requests in/ { n = $1 }
        END { printf "%-6s %-3s %-16s %10.0f %8.2f %10.2f\n", cell, r, t, rps, p99, c / hz * 1e6 / n }'
      if [ -n "${PERF:-}" ]; then
        wait "$perf_pid" || true
        # perf counts over DURATION, wrk's requests over its run: per request.
        n=$(echo "$out" | awk '/requests in/ { print $1 }')
        awk -F, -v n="$n" -v t="$name" -v cell="$cell" '
          $3 ~ /^(raw_syscalls|syscalls|context|cpu-migrations)/ && $1 ~ /^[0-9]/ {
            e = $3; sub(/^(raw_)?syscalls:sys_enter_?/, "", e); if (e == "") e = "all"
            line = line sprintf(" %s=%.3f", e, $1 / n) }
          END { printf "%-6s     %-16s per request:%s\n", cell, t, line }' "$run/perf.$name"
      fi
    done
  done
done
