#!/usr/bin/env bash
# Keep-alive requests to an HTTPS backend (issue 14): HAProxy with `ssl verify
# required` and Wharf with `scheme = "https"` to the same nginx backend serving 100
# bytes over TLS, beside the same nginx on plain HTTP as a baseline; and the TLS
# handshakes each proxy makes to the backend per 1,000 requests, counted in nginx's
# access log ($connection, $ssl_session_reused).
#
# The backend's certificate is an ECDSA P-256 leaf for `backend.test` (CA:FALSE,
# SAN DNS:backend.test) signed by a test CA made here; both proxies verify it against
# that CA and send SNI backend.test. nginx listens three times: plain (`plain`), TLS
# without http2 (`h1`: every proxy speaks HTTP/1.1 over TLS) and TLS with http2
# (`h2`: Wharf offers ALPN h2 then http/1.1 and gets h2). Targets:
#
#   haproxy-plain  wharf-plain   plain backend
#   haproxy-h1     wharf-h1      TLS backend without http2 (both HTTP/1.1)
#   haproxy-h2b    wharf-h2      TLS backend with http2; HAProxy `alpn http/1.1`
#                                (its usual HTTP/1.1 to servers), Wharf h2 by ALPN
#   haproxy-h2                   same backend, HAProxy `alpn h2` (HTTP/2 to it)
#
# wrk -t1 -c$CONNS keep-alive on CPU 1; proxies (one thread each: nbthread 1,
# worker_threads 1) and nginx (one worker) on CPU 0, as the other bench scripts.
# Runs are interleaved (every target once per round, REPEAT rounds); prints each run,
# the medians, the ratios Wharf / HAProxy and the handshakes per 1,000 requests.
#
#   cargo build --release
#   REPEAT=3 DURATION=8 benches/tls-backend.sh
#   HAPROXY_REUSE=safe TARGETS="haproxy-h1 haproxy-h2" benches/tls-backend.sh
#
# HAPROXY_REUSE is HAProxy's `http-reuse` (default `always`, as tls-rig.sh; HAProxy's
# own default is `safe`). Needs nginx, haproxy, wrk, python3, openssl, curl.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
REPEAT=${REPEAT:-3}; DURATION=${DURATION:-8}; CONNS=${CONNS:-50}
GEN_CPUS=${GEN_CPUS:-1}; PROXY_CPUS=${PROXY_CPUS:-0}; BACKEND_CPUS=${BACKEND_CPUS:-0}
HAPROXY_REUSE=${HAPROXY_REUSE:-always}
TARGETS=${TARGETS:-"haproxy-plain wharf-plain haproxy-h1 wharf-h1 haproxy-h2b wharf-h2 haproxy-h2"}
for b in wrk haproxy nginx openssl taskset curl python3; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install wrk haproxy nginx)" >&2; exit 2; }
done
RIG_NAME=tlsbackend
# shellcheck source=benches/tls-rig.sh
. "$here/benches/tls-rig.sh"
# BE (from the rig) is the plain backend port; two TLS ones, and one port per target.
B1=$(free_port); B2=$(free_port)
declare -A port
for t in $TARGETS; do port[$t]=$(free_port); done

# A test CA and a leaf for backend.test signed by it (webpki refuses a CA certificate
# used as a server's own).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj '/CN=Wharf bench test CA' -addext 'basicConstraints=critical,CA:TRUE' \
  -addext 'keyUsage=critical,keyCertSign,cRLSign' \
  -keyout "$run/ca.key" -out "$run/ca.pem" >/dev/null 2>&1
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj /CN=backend.test -keyout "$run/backend.key" -out "$run/backend.csr" >/dev/null 2>&1
printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
  'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:backend.test' > "$run/leaf.ext"
openssl x509 -req -in "$run/backend.csr" -CA "$run/ca.pem" -CAkey "$run/ca.key" \
  -CAcreateserial -days 30 -extfile "$run/leaf.ext" -out "$run/backend.pem" >/dev/null 2>&1

# One nginx worker, three listeners, one access log each (buffered: the log's write
# costs nginx the same whoever sends the request).
cat > "$run/tls-backend.conf" <<EOF
worker_processes 1; daemon off; pid $run/nginx.pid; error_log $run/nginx.err warn;
events { worker_connections 4096; }
http { default_type text/plain; keepalive_requests 1000000; keepalive_timeout 600s;
  client_body_temp_path $run; proxy_temp_path $run; fastcgi_temp_path $run;
  uwsgi_temp_path $run; scgi_temp_path $run;
  log_format conns '\$connection \$ssl_session_reused \$server_protocol \$ssl_protocol \$ssl_server_name';
  ssl_certificate $run/backend.pem; ssl_certificate_key $run/backend.key;
  ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_timeout 1h;
  server { listen 127.0.0.1:$BE backlog=4096; root $run/www; location / { }
    access_log $run/plain.log conns buffer=64k flush=1s; }
  server { listen 127.0.0.1:$B1 ssl backlog=4096; root $run/www; location / { }
    access_log $run/h1.log conns buffer=64k flush=1s; }
  server { listen 127.0.0.1:$B2 ssl http2 backlog=4096; root $run/www; location / { }
    access_log $run/h2.log conns buffer=64k flush=1s; } }
EOF

tls_server="ssl verify required ca-file $run/ca.pem sni str(backend.test) verifyhost backend.test"
haproxy_target() { # port server-line
  cat <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  option http-keep-alive
  http-reuse $HAPROXY_REUSE
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  timeout http-keep-alive 30s
frontend fe
  bind 127.0.0.1:$1
  default_backend be
backend be
  server s1 $2
EOF
}
wharf_tls="scheme = \"https\"
backend_tls = { ca = \"$run/ca.pem\", server_name = \"backend.test\" }"
declare -A log
for t in $TARGETS; do
  p=${port[$t]}
  case $t in
    haproxy-plain) haproxy_target "$p" "127.0.0.1:$BE" > "$run/$t.cfg"; log[$t]=plain ;;
    haproxy-h1) haproxy_target "$p" "127.0.0.1:$B1 $tls_server alpn http/1.1" > "$run/$t.cfg"; log[$t]=h1 ;;
    haproxy-h2b) haproxy_target "$p" "127.0.0.1:$B2 $tls_server alpn http/1.1" > "$run/$t.cfg"; log[$t]=h2 ;;
    haproxy-h2) haproxy_target "$p" "127.0.0.1:$B2 $tls_server alpn h2" > "$run/$t.cfg"; log[$t]=h2 ;;
    wharf-plain) wharf_plain_cfg "$p" "$BE" "" > "$run/$t.toml"; log[$t]=plain ;;
    wharf-h1) wharf_plain_cfg "$p" "$B1" "$wharf_tls" > "$run/$t.toml"; log[$t]=h1 ;;
    wharf-h2) wharf_plain_cfg "$p" "$B2" "$wharf_tls" > "$run/$t.toml"; log[$t]=h2 ;;
    *) echo "unknown target $t" >&2; exit 2 ;;
  esac
done

taskset -c "$BACKEND_CPUS" nginx -c "$run/tls-backend.conf" >/dev/null 2>&1 & pids+=($!)
for t in $TARGETS; do
  case $t in
    haproxy-*) taskset -c "$PROXY_CPUS" haproxy -db -f "$run/$t.cfg" >"$run/$t.out" 2>&1 & pids+=($!) ;;
    wharf-*) WHARF_LOG=warn taskset -c "$PROXY_CPUS" "$bin" run --config "$run/$t.toml" >"$run/$t.out" 2>&1 & pids+=($!) ;;
  esac
done
for t in $TARGETS; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${port[$t]}/hello" && break; sleep 0.1; done
  curl -sf -o /dev/null "http://127.0.0.1:${port[$t]}/hello" \
    || { echo "$t (port ${port[$t]}) not serving; its output:" >&2; cat "$run/$t.out" >&2; exit 1; }
done
sleep 1.5
lines() { wc -l < "$run/$1.log"; }
# CPU 0 time (user+nice+system, jiffies) and the part of it our processes used
# (proxies, nginx master and worker): the difference, over the run, is what other
# processes took from CPU 0 (column oth0, % of one CPU).
cpu0() { awk '/^cpu0 / { print $2 + $3 + $4 }' /proc/stat; }
ours() {
  local all=("${pids[@]}") p
  for p in "${pids[@]}"; do all+=($(cat "/proc/$p/task/$p/children" 2>/dev/null)); done
  for p in "${all[@]}"; do sed 's/.*) //' "/proc/$p/stat" 2>/dev/null; done | awk '{ s += $12 + $13 } END { print s + 0 }'
}
hz=$(getconf CLK_TCK)

# Each run's slice of its backend's log: "target log first-line last-line".
: > "$run/slices"
printf '%-14s %-4s %10s %8s %6s %5s\n' target run 'req/s' p99ms err oth0
declare -A rps
for r in $(seq "$REPEAT"); do
  for t in $TARGETS; do
    a=$(lines "${log[$t]}"); c0=$(cpu0); o0=$(ours); t0=$(date +%s.%N)
    out=$(taskset -c "$GEN_CPUS" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:${port[$t]}/hello")
    oth=$(awk -v c="$(( $(cpu0) - c0 - $(ours) + o0 ))" -v hz="$hz" -v t0="$t0" -v t1="$(date +%s.%N)" \
      'BEGIN { v = 100 * c / hz / (t1 - t0); printf "%.0f", v < 0 ? 0 : v }')
    sleep 1.5 # nginx flushes its log buffer after 1 s
    echo "$t ${log[$t]} $((a + 1)) $(lines "${log[$t]}")" >> "$run/slices"
    v=$(echo "$out" | awk '/Requests\/sec:/ { print $2 }')
    rps[$t]+="$v "
    echo "$out" | awk -v t="$t" -v r="$r" -v oth="$oth" '
      function ms(v) { if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
                       if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
                       if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 } return v + 0 }
      /^ +99%/ { p99 = ms($2) } /Requests\/sec:/ { rps = $2 }
      /Socket errors:/ { gsub(",", ""); err += $4 + $6 + $8 + $10 }
      /Non-2xx or 3xx responses:/ { err += $NF }
      END { printf "%-14s %-4s %10.0f %8.2f %6d %5s\n", t, r, rps, p99, err, oth }'
  done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
echo
echo "medians (req/s):"
declare -A med
for t in $TARGETS; do med[$t]=$(echo "${rps[$t]}" | median); printf '  %-14s %s\n' "$t" "${med[$t]}"; done
ratio() { # wharf haproxy
  if [ -n "${med[$1]:-}" ] && [ -n "${med[$2]:-}" ]; then
    awk -v w="${med[$1]}" -v h="${med[$2]}" -v a="$1" -v b="$2" 'BEGIN { printf "  %s / %s = %.3f\n", a, b, w / h }'
  fi
}
echo "ratios:"
ratio wharf-plain haproxy-plain; ratio wharf-h1 haproxy-h1
ratio wharf-h2 haproxy-h2b; ratio wharf-h2 haproxy-h2
ratio haproxy-h1 haproxy-plain; ratio wharf-h1 wharf-plain; ratio wharf-h2 wharf-plain

# Handshakes: a connection is new in a slice when its $connection (nginx's serial
# number) was not in any earlier line of that log; it was a resumption when its
# first line has $ssl_session_reused = r. "later" counts the new ones after the
# slice's first 1,000 requests (wrk opens its connections at the start of a run, so
# these are the handshakes of the steady state).
echo
echo "backend connections opened during the runs (on h1/h2 each is a TLS handshake):"
python3 - "$run" <<'PY'
import collections, sys
run = sys.argv[1]
logs, first = {}, {}
tot = collections.defaultdict(lambda: {"req": 0, "new": 0, "res": 0, "later": 0,
                                       "proto": collections.Counter(), "runs": []})
for s in open(f"{run}/slices"):
    t, name, a, b = s.split(); a, b = int(a), int(b)
    if name not in logs:
        with open(f"{run}/{name}.log") as f:
            logs[name] = [l.split() for l in f]
        first[name] = {}
        for i, f in enumerate(logs[name], 1):
            first[name].setdefault(f[0], i)
    T = tot[t]; T["log"] = name; new = 0
    for i in range(a, b + 1):
        f = logs[name][i - 1]
        T["req"] += 1; T["proto"][f"{f[2]} {f[3]}"] += 1
        if first[name][f[0]] == i:
            new += 1; T["res"] += f[1] == "r"; T["later"] += i >= a + 1000
    T["new"] += new; T["runs"].append(new)
print(f"  {'target':14} {'backend':7} {'requests':>9} {'new conns':>9} {'resumed':>7} "
      f"{'later':>5} {'per 1k req':>10} {'full per 1k':>11}  per run / protocol")
for t, T in tot.items():
    k = T["req"] / 1000
    full = "-" if T["log"] == "plain" else f"{(T['new'] - T['res']) / k:.3f}"
    proto = ", ".join(f"{n}: {c}" for n, c in T["proto"].most_common())
    print(f"  {t:14} {T['log']:7} {T['req']:9} {T['new']:9} {T['res']:7} {T['later']:5} "
          f"{T['new'] / k:10.3f} {full:>11}  {T['runs']} / {proto}")
PY
