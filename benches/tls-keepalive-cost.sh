#!/usr/bin/env bash
# Per-request cost of HTTP/1.1 keep-alive over TLS, HAProxy against Wharf, counted
# rather than timed, so a busy machine does not change the answer:
#   strace    system calls per request (strace -c -f attached to the proxy)
#   callgrind user-space instructions per request (valgrind --tool=callgrind; the
#             counters are dumped after the warm-up and again after the run)
# Each target gets exactly N requests from `h2load --h1 -n N -c CONNS` over https
# (ECDSA P-256 certificate, 100-byte body from an nginx backend, one proxy thread).
# The proxy runs on CPU0, h2load on CPU1.
#
#   cargo build --release
#   benches/tls-keepalive-cost.sh                       # both modes, CONNS=1
#   MODES=strace CONNS=50 N=40000 benches/tls-keepalive-cost.sh
#
# Plain HTTP and A/B of builds or route settings (what a change to the request path
# costs, counted):
#   SCHEME=http      plain keep-alive instead of TLS (the rig's plain HAProxy and Wharf)
#   MODES=cpu        user and system CPU time per request, from /proc (timed, so
#                    noisy: use a large N and compare targets of the same run)
#   URL_PATH=/4k     the 4 KiB body (the harness's ka4k cell) instead of 100 bytes
#   PROTO=h2         HTTP/2 over TLS (ALPN h2, one stream at a time per connection,
#                    h2load -m 1) instead of HTTP/1.1
#   CLOSE=1          a new connection per request (the harness's close cell): wrk
#                    -H 'Connection: close' for CLOSE_SECS [10] seconds instead of
#                    h2load, each figure divided by the requests wrk completed
#   TARGETS="..."    any of: haproxy wharf base [haproxy wharf]; `base` runs BASE_BIN
#                    (e.g. a release build of an older commit) with Wharf's config
#   ROUTE_EXTRA=...  route keys appended to Wharf's route (e.g. a health check)
#   UPSTREAM=...     Wharf's upstream, `{port}` standing for the nginx backend's port
#                    [static:127.0.0.1:{port}]; two entries for one nginx, e.g.
#                    static:127.0.0.1:{port},[::ffff:127.0.0.1]:{port}, make a route
#                    with two backends
#   STICKY_SECRET=s  adds `[sticky] secret` and has h2load send every target the
#                    cookie that pins Wharf's (first) backend: with ROUTE_EXTRA
#                    'sticky = "cookie"' that measures a pinned client's request
#   BASE_ENV="K=V"   environment of the `base` target only; BASE_BIN defaults
#                    to WHARF_BIN then. The hyper path against Wharf's HTTP/1.1
#                    engine, one binary:
#                    MODES=callgrind SCHEME=http TARGETS="haproxy base wharf" \
#                      BASE_ENV=WHARF_HTTP1_ENGINE=hyper benches/tls-keepalive-cost.sh
#   MODES=callgrind SCHEME=http TARGETS="base wharf" BASE_BIN=/tmp/old/wharf \
#     benches/tls-keepalive-cost.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
MODES=${MODES:-"strace callgrind"}; CONNS=${CONNS:-1}; N=${N:-}
SCHEME=${SCHEME:-https}; TARGETS=${TARGETS:-"haproxy wharf"}
proto_arg=--h1; [ "${PROTO:-h1}" = h2 ] && proto_arg=-m1
for b in h2load haproxy nginx openssl taskset curl strace valgrind callgrind_control python3 ${CLOSE:+wrk}; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install nghttp2-client haproxy nginx strace valgrind wrk)" >&2; exit 2; }
done
RIG_NAME=tlscost
# shellcheck source=benches/tls-rig.sh
. "$here/benches/tls-rig.sh"

if [ -n "${UPSTREAM:-}" ]; then
  sed -i "s|^upstream = .*|upstream = \"${UPSTREAM//\{port\}/$BE}\"|" "$run/wharf.toml"
fi
if [ -n "${ROUTE_EXTRA:-}" ]; then printf '%s\n' "$ROUTE_EXTRA" >> "$run/wharf.toml"; fi
load_args=()
if [ -n "${STICKY_SECRET:-}" ]; then
  printf '\n[sticky]\nsecret = "%s"\n' "$STICKY_SECRET" >> "$run/wharf.toml"
  # A file route's backend token: HMAC-SHA256 over its address (docs/affinity.md).
  token=$(python3 -c 'import base64,hashlib,hmac,sys
m = hmac.new(sys.argv[1].encode(), b"wharf-sticky-v1\0" + sys.argv[2].encode(), hashlib.sha256)
print(base64.urlsafe_b64encode(m.digest()[:12]).decode())' "$STICKY_SECRET" "127.0.0.1:$BE")
  load_args=(-H "cookie: WHARFID=$token")
fi

nginx -c "$run/backend.conf" >/dev/null 2>&1 & pids+=($!)
export WHARF_LOG=warn

# TCP segments sent by the whole machine (loopback: both directions of each hop).
out_segs() { awk '/^Tcp:/ { if (h) print $12; h = 1 }' /proc/net/snmp; }

measure() { # measure TARGET MODE
  local t=$1 mode=$2 port=$HA n=$N pid i envs=()
  local cmd=(haproxy -db -f "$run/haproxy.cfg")
  [ "$SCHEME" = http ] && { port=$HP; cmd=(haproxy -db -f "$run/haproxy-plain.cfg"); }
  case $t in
    wharf|base)
      port=$WH; [ "$SCHEME" = http ] && port=$WHP
      cmd=("$bin" run --config "$run/wharf.toml")
      if [ "$t" = base ]; then
        [ -n "${BASE_ENV:-}" ] || : "${BASE_BIN:?set BASE_BIN or BASE_ENV for the base target}"
        cmd=("${BASE_BIN:-$bin}" run --config "$run/wharf.toml")
        read -r -a envs <<<"${BASE_ENV:-}"
      fi ;;
  esac
  if [ "$mode" = callgrind ]; then
    n=${n:-5000}
    env "${envs[@]}" taskset -c 0 valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
      --callgrind-out-file="$run/cg.$t" "${cmd[@]}" >"$run/$t.log" 2>&1 &
  else
    n=${n:-20000}
    env "${envs[@]}" taskset -c 0 "${cmd[@]}" >"$run/$t.log" 2>&1 &
  fi
  pid=$!; pids+=("$pid")
  for i in $(seq 300); do curl -skf -o /dev/null "$SCHEME://127.0.0.1:$port/hello" && break; sleep 0.1; done
  local url="$SCHEME://127.0.0.1:$port${URL_PATH:-/hello}"
  taskset -c 1 h2load "$proto_arg" -n 200 -c "$CONNS" "$url" >/dev/null 2>&1
  local sp=
  case $mode in
    strace) strace -c -f -p "$pid" -o "$run/strace.$t" 2>/dev/null & sp=$!; sleep 1 ;;
    callgrind) callgrind_control -d "$pid" >/dev/null; sleep 1 ;;
    cpu) local t0 s0; t0=$(awk '{ print $14, $15 }' "/proc/$pid/stat"); s0=$(out_segs) ;;
  esac
  local ok
  if [ -n "${CLOSE:-}" ]; then
    # wrk counts what it completed; that count is the divisor.
    ok=$(taskset -c 1 wrk -t1 -c "$CONNS" -d "${CLOSE_SECS:-10}s" -H 'Connection: close' "${load_args[@]}" "$url" |
      awk '/requests in/ { print $1 }')
    n=$ok
  else
    ok=$(taskset -c 1 h2load "$proto_arg" -n "$n" -c "$CONNS" "${load_args[@]}" "$url" | awk '/^requests:/ { print $8 }')
  fi
  case $mode in
    strace) kill -INT "$sp"; wait "$sp" || true
      awk -v t="$t" -v n="$n" -v ok="$ok" 'BEGIN { printf "%-8s strace    %d requests (%d ok), per request:", t, n, ok }
        $NF ~ /^[a-z_0-9]+$/ && $NF != "total" && $NF != "syscall" && $4 / n >= 0.01 {
          e = (NF == 6) ? $5 : 0; printf " %s %.2f", $NF, $4 / n; if (e) printf " (%.2f failed)", e / n }
        END { print "" }' "$run/strace.$t" ;;
    cpu) awk -v t="$t" -v n="$n" -v ok="$ok" -v t0="$t0" -v hz="$(getconf CLK_TCK)" '{ split(t0, a, " ")
        printf "%-8s cpu       %d requests (%d ok), per request: user %.2f us, system %.2f us, TCP segments %.2f\n", t, n, ok,
          ($14 - a[1]) * 1e6 / hz / n, ($15 - a[2]) * 1e6 / hz / n, (segs - s0) / n }' segs="$(out_segs)" s0="$s0" "/proc/$pid/stat" ;;
    callgrind) callgrind_control -d "$pid" >/dev/null; sleep 1
      awk -v t="$t" -v n="$n" -v ok="$ok" '/^summary:/ { printf "%-8s callgrind %d requests (%s ok): %.0f instructions per request\n", t, n, ok, $2 / n }' \
        "$run/cg.$t.2" ;;
  esac
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

for mode in $MODES; do
  for t in $TARGETS; do measure "$t" "$mode"; done
done
