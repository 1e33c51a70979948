#!/usr/bin/env bash
# Memory per idle client connection, HAProxy and Wharf in the same run (issue 12):
# N connections (10,000 by default) each send one GET, read the 100-byte answer
# from an nginx backend, and then stay open and silent; the proxy's RSS growth
# divided by N is its cost per idle keep-alive connection. Modes: `plain`
# HTTP/1.1, `tls` (TLS 1.3, ECDSA P-256, HTTP/1.1 by ALPN), `h2` (the same TLS,
# HTTP/2 by ALPN: one GET on stream 1, then the connection idles), and `ws`
# (plain: a WebSocket upgrade to a small echo backend, one 6-byte message each
# way, then the tunnel idles; both proxy connections count). Each proxy runs one
# thread (HAProxy nbthread 1, Wharf worker_threads 1) with idle timeouts well
# past the run.
#
# The requests go out at most CONCURRENCY (50) at a time, so each proxy opens at
# most that many backend connections, which stay in its pool and count in its
# growth as they would in production. The open-file limit is raised to the hard
# limit; HAProxy reserves two descriptors per connection, so N is at most what
# that limit fits (at most 10,000).
#
#   cargo build --release
#   benches/idle-memory.sh                    # N=10000 (or what fits), plain and tls
#   N=4000 MODES=tls benches/idle-memory.sh
#   MODES="h2 ws" benches/idle-memory.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=${WHARF_BIN:-$here/target/release/wharf}
ulimit -n "$(ulimit -Hn)"
# HAProxy refuses a maxconn whose descriptors (two per connection) the hard limit
# cannot hold, so N is capped to what fits: 9,750 under a 20,000 hard limit.
fit=$(( ($(ulimit -Hn) - 300) / 2 - 100 ))
N=${N:-$(( fit < 10000 ? fit : 10000 ))}; MODES=${MODES:-"plain tls"}; CONCURRENCY=${CONCURRENCY:-50}
TARGETS=${TARGETS:-"haproxy wharf"}
for b in haproxy nginx openssl python3 curl; do
  command -v "$b" >/dev/null || { echo "missing $b (apt-get install haproxy nginx)" >&2; exit 2; }
done
if [ "$N" -gt "$fit" ]; then
  echo "open-file hard limit $(ulimit -Hn) is too low for N=$N (HAProxy needs 2 per connection)" >&2; exit 2
fi
RIG_NAME=idle RIG_MAXCONN=$((N + 100)) RIG_IDLE=600s
RIG_EP_EXTRA=$'header_read_timeout = "600s"\nidle_timeout = "600s"'
RIG_RUNTIME_EXTRA="max_connections = $((N + 100))"
# shellcheck source=benches/tls-rig.sh
. "$here/benches/tls-rig.sh"

cat > "$run/idle.py" <<'PY'
import asyncio, resource, ssl, sys, time
host, port, mode, n, conc, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
tls = mode in ("tls", "h2")
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
def rss_kib():
    total = 0
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            total = int(line.split()[1])
    return total
ctx = None
if tls:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"] if mode == "h2" else ["http/1.1"])
REQ = b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
WS = (b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
def frame(kind, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload
# HTTP/2: the preface, empty SETTINGS, and GET /hello on stream 1 (HPACK:
# :method GET, :scheme https indexed; :path and :authority literal).
H2 = (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0)
      + frame(1, 0x5, 1, b"\x82\x87\x04\x06/hello\x01\x09localhost"))
async def h2_answer(r, w):
    while True:
        head = await r.readexactly(9)
        length, kind, flags = int.from_bytes(head[:3], "big"), head[3], head[4]
        stream = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        await r.readexactly(length)
        if kind == 4 and not flags & 1:
            w.write(frame(4, 1, 0))   # SETTINGS ACK
        if kind in (0, 1) and stream == 1 and flags & 1:
            return
async def one(sem, held):
    async with sem:
        r, w = await asyncio.open_connection(host, port, ssl=ctx, server_hostname="localhost" if tls else None)
        if mode == "h2":
            w.write(H2)
            await h2_answer(r, w)
            held.append((r, w))
            return
        w.write(WS if mode == "ws" else REQ)
        head = await r.readuntil(b"\r\n\r\n")
        if mode == "ws":
            assert head.startswith(b"HTTP/1.1 101"), head[:40]
            w.write(b"hello!")
            assert await r.readexactly(6) == b"hello!"
            held.append((r, w))
            return
        assert head.startswith(b"HTTP/1.1 200"), head[:40]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await r.readexactly(length)
        held.append((r, w))
async def main():
    held = []
    await one(asyncio.Semaphore(1), held)   # warm: one backend connection, TLS state
    for r, w in held: w.close()
    held.clear()
    await asyncio.sleep(1)
    before = rss_kib()
    sem = asyncio.Semaphore(conc)
    t = time.monotonic()
    await asyncio.gather(*(one(sem, held) for _ in range(n)))
    opened = time.monotonic() - t
    await asyncio.sleep(2)   # let the proxy settle (no timer fires in this window)
    after = rss_kib()
    # Still open: a proxy that closed them would have shrunk, not measured.
    alive = sum(1 for r, w in held if not r.at_eof())
    print(f"{before} {after} {alive} {opened:.1f}")
    for r, w in held: w.close()
asyncio.run(main())
PY

# The WebSocket backend: answers any upgrade with 101 and echoes what follows.
cat > "$run/ws.py" <<'PY'
import asyncio, base64, hashlib, resource, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
async def handle(r, w):
    try:
        head = await r.readuntil(b"\r\n\r\n")
        key = b""
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"sec-websocket-key:"):
                key = line.split(b":", 1)[1].strip()
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        while data := await r.read(65536):
            w.write(data)
            await w.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    w.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
WSB=$(free_port)
sed "s/127.0.0.1:$BE/127.0.0.1:$WSB/; s/^  timeout client .*/&\n  timeout tunnel 600s/" "$run/haproxy-plain.cfg" > "$run/haproxy-ws.cfg"
sed "s/127.0.0.1:$BE/127.0.0.1:$WSB/" "$run/wharf.toml" > "$run/wharf-ws.toml"

taskset -c 1 nginx -c "$run/backend.conf" >/dev/null 2>&1 & pids+=($!)
case " $MODES " in *" ws "*) taskset -c 1 python3 "$run/ws.py" "$WSB" & pids+=($!) ;; esac
printf '%-8s %-6s %7s %10s %10s %12s %8s\n' target mode conns rss0_MiB rss_MiB KiB_per_conn alive
for mode in $MODES; do
  for t in $TARGETS; do
    tlsmode=false; case "$mode" in tls|h2) tlsmode=true ;; esac
    case "$t" in
      haproxy) cfg=$run/haproxy-plain.cfg; $tlsmode && cfg=$run/haproxy.cfg
               [ "$mode" = ws ] && cfg=$run/haproxy-ws.cfg
               taskset -c 0 haproxy -db -f "$cfg" >"$run/haproxy.log" 2>&1 & p=$!
               port=$HP; $tlsmode && port=$HA ;;
      wharf)   cfg=$run/wharf.toml; [ "$mode" = ws ] && cfg=$run/wharf-ws.toml
               WHARF_LOG=warn taskset -c 0 "$bin" run --config "$cfg" >"$run/wharf.log" 2>&1 & p=$!
               port=$WHP; $tlsmode && port=$WH ;;
    esac
    pids+=("$p")
    scheme=http; $tlsmode && scheme=https
    # Ready when it accepts (the ws backend answers no plain GET).
    for _ in $(seq 100); do curl -sk -o /dev/null "$scheme://localhost:$port/hello" && break; sleep 0.1; done
    read -r before after alive secs < <(taskset -c 1 python3 "$run/idle.py" 127.0.0.1 "$port" "$mode" "$N" "$CONCURRENCY" "$p")
    awk -v t="$t" -v m="$mode" -v n="$N" -v b="$before" -v a="$after" -v al="$alive" \
      'BEGIN { printf "%-8s %-6s %7d %10.1f %10.1f %12.2f %8d\n", t, m, n, b/1024, a/1024, (a-b)/n, al }'
    kill "$p"; wait "$p" 2>/dev/null || true
  done
done
