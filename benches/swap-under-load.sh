#!/usr/bin/env bash
# Table swaps under load: wrk (2 threads, 16 keep-alive connections, 12 s) against a
# route while Wharf is sent N SIGHUPs (10/s), each swapping the table: the route's
# backend set alternates between one and two nginx listeners and another route is
# added and removed. Prints wrk's summary: any non-2xx or socket error is a failure.
#   benches/swap-under-load.sh target/release/wharf 100
set -euo pipefail
bin=$1; n=${2:-100}; dir=$(mktemp -d)
nginx_port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
b2=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
chmod 755 "$dir"; echo ok > "$dir/index.html"; chmod 644 "$dir/index.html"
cat > "$dir/nginx.conf" <<NGX
worker_processes 1; pid $dir/nginx.pid; error_log $dir/nginx.err; daemon off;
events { worker_connections 1024; }
http { access_log off; server { listen 127.0.0.1:$nginx_port; listen 127.0.0.1:$b2; root $dir; } }
NGX
nginx -c "$dir/nginx.conf" -p "$dir" </dev/null >/dev/null 2>&1 & p1=$!; p2=$p1
web=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
conf() { printf '[entrypoints.web]\naddress="127.0.0.1:%s"\n[admin]\naddress="127.0.0.1:0"\n[docker]\nmode="off"\n[[routes]]\nhost="*"\nupstream="static:%s"\ntls="none"\n[[routes]]\nhost="other-%s.test"\nupstream="static:127.0.0.1:%s"\ntls="none"\n' "$web" "$1" "$2" "$b2" > "$dir/w.toml"; }
conf "127.0.0.1:$nginx_port" 0
WHARF_LOG=info "$bin" run --config "$dir/w.toml" 2>"$dir/log" & pw=$!
sleep 1
wrk -t2 -c16 -d12s "http://127.0.0.1:$web/" > "$dir/wrk" & pk=$!
sleep 1
for i in $(seq 1 "$n"); do
  if (( i % 2 )); then conf "127.0.0.1:$nginx_port,127.0.0.1:$b2" "$i"; else conf "127.0.0.1:$nginx_port" "$i"; fi
  kill -HUP $pw; sleep 0.1
done
wait $pk
cat "$dir/wrk"
echo "swaps logged: $(grep -c "routing table swapped" "$dir/log" || true)"
kill $pw; kill $p1 2>/dev/null || true; wait 2>/dev/null || true
