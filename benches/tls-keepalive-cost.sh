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
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
MODES=${MODES:-"strace callgrind"}; CONNS=${CONNS:-1}; N=${N:-}
for b in h2load haproxy nginx openssl taskset curl strace valgrind callgrind_control python3; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install nghttp2-client haproxy nginx strace valgrind)" >&2; exit 2; }
done
run=$(mktemp -d "${TMPDIR:-/tmp}/wharf-tlscost.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BE=$(free_port); HA=$(free_port); WH=$(free_port); WHP=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
  -keyout "$run/key.pem" -out "$run/cert.pem" >/dev/null 2>&1
cat "$run/cert.pem" "$run/key.pem" > "$run/combined.pem"
mkdir -p "$run/www"; head -c 100 /dev/zero | tr '\0' x > "$run/www/hello"

cat > "$run/backend.conf" <<EOF
worker_processes 1; daemon off; pid $run/nginx.pid; error_log $run/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 1000000;
  client_body_temp_path $run; proxy_temp_path $run; fastcgi_temp_path $run;
  uwsgi_temp_path $run; scgi_temp_path $run;
  server { listen 127.0.0.1:$BE backlog=4096; root $run/www; location / { } } }
EOF
cat > "$run/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 8000
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend fe
  bind 127.0.0.1:$HA ssl crt $run/combined.pem alpn h2,http/1.1
  default_backend be
backend be
  server s1 127.0.0.1:$BE
EOF
cat > "$run/wharf.toml" <<EOF
[entrypoints.web]
address = "127.0.0.1:$WHP"
[entrypoints.websecure]
address = "127.0.0.1:$WH"
tls = true
[admin]
address = "127.0.0.1:0"
[runtime]
worker_threads = 1
[docker]
mode = "off"
[[tls.certificates]]
cert = "$run/cert.pem"
key = "$run/key.pem"
[[routes]]
host = "*"
upstream = "static:127.0.0.1:$BE"
tls = "none"
EOF

nginx -c "$run/backend.conf" >/dev/null 2>&1 & pids+=($!)
export WHARF_LOG=warn

measure() { # measure TARGET MODE
  local t=$1 mode=$2 port=$HA n=$N pid i
  local cmd=(haproxy -db -f "$run/haproxy.cfg")
  if [ "$t" = wharf ]; then port=$WH; cmd=("$bin" run --config "$run/wharf.toml"); fi
  if [ "$mode" = callgrind ]; then
    n=${n:-5000}
    taskset -c 0 valgrind --tool=callgrind --compress-strings=no --compress-pos=no \
      --callgrind-out-file="$run/cg.$t" "${cmd[@]}" >"$run/$t.log" 2>&1 &
  else
    n=${n:-20000}
    taskset -c 0 "${cmd[@]}" >"$run/$t.log" 2>&1 &
  fi
  pid=$!; pids+=("$pid")
  for i in $(seq 300); do curl -skf -o /dev/null "https://127.0.0.1:$port/hello" && break; sleep 0.1; done
  local url="https://127.0.0.1:$port/hello"
  taskset -c 1 h2load --h1 -n 200 -c "$CONNS" "$url" >/dev/null 2>&1
  local sp=
  case $mode in
    strace) strace -c -f -p "$pid" -o "$run/strace.$t" 2>/dev/null & sp=$!; sleep 1 ;;
    callgrind) callgrind_control -d "$pid" >/dev/null; sleep 1 ;;
  esac
  local ok; ok=$(taskset -c 1 h2load --h1 -n "$n" -c "$CONNS" "$url" | awk '/^requests:/ { print $8 }')
  case $mode in
    strace) kill -INT "$sp"; wait "$sp" || true
      awk -v t="$t" -v n="$n" -v ok="$ok" 'BEGIN { printf "%-8s strace    %d requests (%d ok), per request:", t, n, ok }
        $NF ~ /^(read|write|writev|readv|sendto|recvfrom|sendmsg|recvmsg|epoll_wait|clock_gettime)$/ {
          e = (NF == 6) ? $5 : 0; printf " %s %.2f", $NF, $4 / n; if (e) printf " (%.2f failed)", e / n }
        END { print "" }' "$run/strace.$t" ;;
    callgrind) callgrind_control -d "$pid" >/dev/null; sleep 1
      awk -v t="$t" -v n="$n" -v ok="$ok" '/^summary:/ { printf "%-8s callgrind %d requests (%s ok): %.0f instructions per request\n", t, n, ok, $2 / n }' \
        "$run/cg.$t.2" ;;
  esac
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}

for mode in $MODES; do
  for t in haproxy wharf; do measure "$t" "$mode"; done
done
