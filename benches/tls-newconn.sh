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
run=$(mktemp -d "${TMPDIR:-/tmp}/wharf-tlsnew.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$run"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BE=$(free_port); HA=$(free_port); WH=$(free_port); WHP=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost' \
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
[[tls.certificates]]
cert = "$run/cert.pem"
key = "$run/key.pem"
[[routes]]
host = "*"
upstream = "static:127.0.0.1:$BE"
tls = "none"
hsts = 0
EOF

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
