# Shared by the bench scripts (sourced, not run): a scratch directory cleaned up on
# exit, free ports (BE backend, HA HAProxy TLS, HP HAProxy plain, WH Wharf TLS, WHP
# Wharf plain), an ECDSA P-256 certificate for localhost/127.0.0.1, a 100-byte file
# served by an nginx backend, and configs for HAProxy (haproxy.cfg on TLS,
# haproxy-plain.cfg the same on plain HTTP) and Wharf (one thread each, no HSTS,
# Docker off). RIG_MAXCONN and RIG_IDLE override HAProxy's maxconn (8000) and
# its client and keep-alive timeouts (30s); RIG_EP_EXTRA and RIG_RUNTIME_EXTRA add
# lines to each of Wharf's entrypoints and to its [runtime]. The caller sets RIG_NAME and starts
# the processes, adding their PIDs to `pids`.
run=$(mktemp -d "${TMPDIR:-/tmp}/wharf-${RIG_NAME:-tls}.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; if [ -n "${KEEP_RUN:-}" ]; then echo "kept $run" >&2; else rm -rf "$run"; fi; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
BE=$(free_port); HA=$(free_port); HP=$(free_port); WH=$(free_port); WHP=$(free_port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
  -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
  -keyout "$run/key.pem" -out "$run/cert.pem" >/dev/null 2>&1
cat "$run/cert.pem" "$run/key.pem" > "$run/combined.pem"
mkdir -p "$run/www"; head -c 100 /dev/zero | tr '\0' x > "$run/www/hello"; head -c 4096 /dev/zero | tr '\0' x > "$run/www/4k"

cat > "$run/backend.conf" <<EOF
worker_processes 1; daemon off; pid $run/nginx.pid; error_log $run/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; default_type text/plain; keepalive_requests 1000000;
  client_body_temp_path $run; proxy_temp_path $run; fastcgi_temp_path $run;
  uwsgi_temp_path $run; scgi_temp_path $run;
  server { listen 127.0.0.1:$BE backlog=4096; root $run/www; location / { } } }
EOF
wharf_plain_cfg() { # port backend-port route-extra: one thread, every host to one backend
  cat <<EOF
[entrypoints.web]
address = "127.0.0.1:$1"
[admin]
address = "127.0.0.1:0"
[runtime]
worker_threads = 1
[docker]
mode = "off"
[[routes]]
host = "*"
upstream = "static:127.0.0.1:$2"
tls = "none"
$3
EOF
}
haproxy_cfg() { # the frontend's bind arguments
  cat <<EOF
global
  nbthread 1
  maxconn ${RIG_MAXCONN:-8000}
  ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client ${RIG_IDLE:-30s}
  timeout server 30s
  timeout http-keep-alive ${RIG_IDLE:-30s}
frontend fe
  bind $1
  default_backend be
backend be
  server s1 127.0.0.1:$BE
EOF
}
haproxy_cfg "127.0.0.1:$HA ssl crt $run/combined.pem alpn h2,http/1.1" > "$run/haproxy.cfg"
haproxy_cfg "127.0.0.1:$HP" > "$run/haproxy-plain.cfg"
cat > "$run/wharf.toml" <<EOF
[entrypoints.web]
address = "127.0.0.1:$WHP"
${RIG_EP_EXTRA:-}
[entrypoints.websecure]
address = "127.0.0.1:$WH"
tls = true
${RIG_EP_EXTRA:-}
[admin]
address = "127.0.0.1:0"
[runtime]
worker_threads = 1
${RIG_RUNTIME_EXTRA:-}
[docker]
mode = "off"
[[tls.certificates]]
cert = "$run/cert.pem"
key = "$run/key.pem"
[[routes]]
host = "*"
upstream = "static:127.0.0.1:$BE"
tls = "none"
hsts = 0
EOF
