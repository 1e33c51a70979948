#!/usr/bin/env bash
# Scale (issue 13 item 6): N labelled swarm services (most with 0 replicas, a few with
# one busybox httpd task) on an attachable overlay, Wharf in a container on that overlay
# (docker socket mounted, docker.mode = "swarm", ports published on 127.0.0.1), then:
#   1. start: the running Wharf follows the N creations; then a fresh wharf process
#      (the old one killed by its PID, the container's shell loop starts the next):
#      time to /ping 200 and to /api/routes listing all N routes, Wharf's own log
#      figures (listing, compile) and its CPU;
#   2. routing: a service with a task answers 200 through Wharf, one without answers 503;
#   3. CHANGES label changes that change routing (`docker service update --label-add
#      wharf.host=<new name>` on a service with a task): time from the command to the
#      first 200 on the new name through Wharf, when Wharf logged the swap, and CPU
#      (Wharf's container cgroup; dockerd's /proc stat) up to the 200 and over a
#      WINDOW-second window from each change; the same window's idle figures, and the
#      count of table swaps in each window (other users' workloads on a shared Engine
#      show up there: Wharf routes every labelled service it sees).
# Prints a summary table. Everything it creates is removed on exit, also on failure.
#
#   WHARF_BIN=target/release/wharf N=1000 benches/scale-services.sh
#
# Environment (all optional):
#   WHARF_BIN  the wharf binary to test (else `cargo build --bin wharf`, a debug build)
#   N          services (1000)           RUNNING  of them with one task (3)
#   CHANGES    label changes (10)        WINDOW   CPU window after each change, s (7)
#   IDLE       idle CPU baseline, s (60) PAR      parallel `docker service create` (8)
#   WHARF_LOG  Wharf's log filter (info; the swap lines, which it reads, are info)
#   KEEP_LOG   file to copy Wharf's log to before cleanup
# Needs: docker (an engine in swarm mode, a manager), busybox (busybox-static), curl, jq,
# pgrep, GNU date; root (it reads the container's cgroup and dockerd's /proc entry).
# No registry: images are made with `docker import`; services use --no-resolve-image.
set -euo pipefail

N=${N:-1000}
RUNNING=${RUNNING:-3}
CHANGES=${CHANGES:-10}
WINDOW=${WINDOW:-7}
IDLE=${IDLE:-60}
PAR=${PAR:-8}
LOGF=${WHARF_LOG:-info}
P="wharf-scale-$$"
DIR=$(mktemp -d)
NET="$P-net"
BIMG="$P-backend:latest"
WIMG="$P-wharf:latest"
WCT="$P-wharf"

say() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
now_ns() { date +%s%N; }
ms() { echo $(( ($2 - $1) / 1000000 )); }

cleanup() {
  set +e
  say "cleanup"
  if [ -n "${KEEP_LOG:-}" ] && docker inspect "$WCT" >/dev/null 2>&1; then
    docker logs "$WCT" > "$KEEP_LOG" 2>&1
  fi
  docker rm -f -v "$WCT" >/dev/null 2>&1
  local svcs
  svcs=$(docker service ls -q --filter "label=scale.bench=$P")
  if [ -n "$svcs" ]; then
    echo "$svcs" | xargs -n 200 docker service rm >/dev/null 2>&1
  fi
  # Task containers go away asynchronously; the network and images only after them.
  for _ in $(seq 1 60); do
    left=$(docker ps -aq --filter "label=com.docker.swarm.service.name" \
      --filter "name=$P-s" 2>/dev/null)
    [ -z "$left" ] && break
    sleep 1
  done
  left=$(docker ps -aq --filter "name=$P-s" 2>/dev/null)
  [ -n "$left" ] && echo "$left" | xargs docker rm -f -v >/dev/null 2>&1
  for _ in $(seq 1 20); do
    docker network inspect "$NET" >/dev/null 2>&1 || break
    docker network rm "$NET" >/dev/null 2>&1 && break
    sleep 1
  done
  docker image rm -f "$BIMG" "$WIMG" >/dev/null 2>&1
  rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in docker curl jq busybox; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 2; }
done
[ "$(docker info --format '{{.Swarm.ControlAvailable}}')" = true ] \
  || { echo "the Docker engine must be a swarm manager" >&2; exit 2; }

# --- the binary -------------------------------------------------------------------
if [ -n "${WHARF_BIN:-}" ]; then
  BIN=$WHARF_BIN
else
  root=$(cd "$(dirname "$0")/.." && pwd)
  cargo build --manifest-path "$root/Cargo.toml" --bin wharf >&2
  BIN=${CARGO_TARGET_DIR:-$root/target}/debug/wharf
fi
[ -x "$BIN" ] || { echo "no wharf binary at $BIN" >&2; exit 2; }
say "wharf binary: $BIN ($("$BIN" version 2>/dev/null || true))"

# --- images (docker import, as tests/common/docker.rs makes them) ------------------
mkdir -p "$DIR/backend/bin" "$DIR/backend/www" "$DIR/wharf/etc/wharf" "$DIR/wharf/bin" "$DIR/etc"
cp "$(command -v busybox)" "$DIR/backend/bin/busybox"
ln -s busybox "$DIR/backend/bin/sh"
echo "hello from busybox" > "$DIR/backend/www/index.html"
tar -C "$DIR/backend" -c . | docker import -c 'EXPOSE 80' \
  -c 'CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]' - "$BIMG" >/dev/null
cp "$BIN" "$DIR/wharf/wharf"
cp "$(command -v busybox)" "$DIR/wharf/bin/busybox"
ldd "$BIN" | sed -n 's/.*=> \(\/[^ ]*\).*/\1/p; s/^[[:space:]]*\(\/[^ ]*\) .*/\1/p' | sort -u |
  while read -r lib; do
    mkdir -p "$DIR/wharf$(dirname "$lib")"
    cp -L "$lib" "$DIR/wharf$lib"
  done
tar -C "$DIR/wharf" -c . | docker import -c 'ENTRYPOINT ["/wharf"]' - "$WIMG" >/dev/null
BID=$(docker image inspect --format '{{.Id}}' "$BIMG")
WID=$(docker image inspect --format '{{.Id}}' "$WIMG")

docker network create --driver overlay --attachable "$NET" >/dev/null

# --- Wharf ---------------------------------------------------------------------------
# Wharf's container joins the overlay before the N services exist: a container that
# joins an overlay already holding 1,000 virtual-IP services fails to start on this
# Engine (20.10: "attaching to network failed ... context deadline exceeded", 5 of 5
# tries 25 s apart). Its entrypoint is a shell loop around the wharf process, so the
# start figure is a fresh process (killed by its PID) listing all N services.
cat > "$DIR/etc/wharf.toml" <<EOF
[entrypoints.web]
address = "0.0.0.0:8080"

[entrypoints.websecure]
address = "0.0.0.0:8443"
tls = true

[admin]
address = "0.0.0.0:8082"

[runtime]
shutdown_timeout = "1s"

[docker]
mode = "swarm"
network = "$NET"

[acme]
max_names = $((N + CHANGES + 100))
EOF
say "starting Wharf's container"
docker run -d --name "$WCT" --dns 127.0.0.1 --network "$NET" \
  -v /var/run/docker.sock:/var/run/docker.sock -v "$DIR/etc:/etc/wharf:ro" \
  -p 127.0.0.1::8080 -p 127.0.0.1::8082 -e "WHARF_LOG=$LOGF" --entrypoint /bin/busybox \
  "$WID" sh -c 'while :; do /wharf --log-format json run --config /etc/wharf/wharf.toml; sleep 0.01; done' >/dev/null
WEB=$(docker port "$WCT" 8080/tcp | grep -m1 '^127.0.0.1:')
ADMIN=$(docker port "$WCT" 8082/tcp | grep -m1 '^127.0.0.1:')
CID=$(docker inspect -f '{{.Id}}' "$WCT")
SHPID=$(docker inspect -f '{{.State.Pid}}' "$WCT")
DPID=$(pidof dockerd | awk '{print $1}')
CG=/sys/fs/cgroup/cpuacct/docker/$CID/cpuacct.usage
[ -r "$CG" ] || CG=$(find /sys/fs/cgroup -path "*$CID*" -name cpuacct.usage 2>/dev/null | head -1 || true)
[ -n "$CG" ] && [ -r "$CG" ] || CG=""
TCK=$(getconf CLK_TCK)
wpid() { pgrep -P "$SHPID" -x wharf || true; }
# CPU in microseconds: the container's cgroup (every thread, exited ones too, and the
# idle shell) when readable, else utime+stime of the process (1/CLK_TCK resolution).
wharf_cpu() {
  if [ -n "$CG" ]; then echo $(( $(cat "$CG") / 1000 ))
  else awk -v t="$TCK" '{print int(($14+$15)*1000000/t)}' "/proc/$(wpid)/stat"; fi
}
dockerd_cpu() { awk -v t="$TCK" '{print int(($14+$15)*1000000/t)}' "/proc/$DPID/stat"; }
routes_api() { curl -s --max-time 5 "http://$ADMIN/api/routes"; }
count_routes() {
  routes_api | jq '[.[] | select(.hosts | tostring | test("scale\\.test"))] | length' 2>/dev/null || echo 0
}
code() { curl -s -o /dev/null --max-time 2 -w '%{http_code}' -H "Host: $1" "http://$WEB/" || true; }
ping_ok() { [ "$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' "http://$ADMIN/ping" || true)" = 200 ]; }
logs() { docker logs "$WCT" 2>&1; }
deadline=$(( $(now_ns) + 60000000000 ))
until ping_ok; do
  [ "$(now_ns)" -lt "$deadline" ] || { logs | tail -30 >&2; exit 1; }
  sleep 0.05
done

# --- N services ------------------------------------------------------------------
create() { # index replicas
  docker service create -d --quiet --no-resolve-image --name "$P-s$1" --dns 127.0.0.1 \
    --stop-grace-period 1s --network "$NET" --replicas "$2" \
    --label "scale.bench=$P" --label wharf.enable=true \
    --label "wharf.host=s$1.scale.test" --label wharf.port=80 "$BID" >/dev/null
}
export -f create
export P NET BID
say "creating $N services ($RUNNING with a task), $PAR at a time"
t=$(now_ns)
seq 1 "$RUNNING" | xargs -P "$PAR" -I{} bash -c 'create {} 1'
seq $((RUNNING + 1)) "$N" | xargs -P "$PAR" -I{} bash -c 'create {} 0'
t_create=$(ms "$t" "$(now_ns)")
have=$(docker service ls -q --filter "label=scale.bench=$P" | wc -l)
say "created $have services in ${t_create} ms"
[ "$have" -eq "$N" ] || { echo "only $have of $N services exist" >&2; exit 1; }
deadline=$(( $(now_ns) + 180000000000 ))
while :; do
  n=$(count_routes)
  [ "${n:-0}" -ge "$N" ] && break
  [ "$(now_ns)" -lt "$deadline" ] || { echo "only $n routes" >&2; exit 1; }
  sleep 0.1
done
t_follow=$(ms "$t" "$(now_ns)")
say "the running Wharf listed all $N after ${t_follow} ms from the first create"
sleep 5

# --- a fresh wharf process lists, compiles and routes the N --------------------------
old=$(wpid)
lines=$(logs | wc -l)
t_kill=$(now_ns)
kill -TERM "$old"
while :; do
  cur=$(wpid)
  [ -n "$cur" ] && [ "$cur" != "$old" ] && break
  [ $(( $(now_ns) - t_kill )) -lt 60000000000 ] || { echo "wharf did not restart" >&2; exit 1; }
  sleep 0.005
done
t_run=$(now_ns)
c_run=$(wharf_cpu)
until ping_ok; do
  [ $(( $(now_ns) - t_run )) -lt 120000000000 ] || { logs | tail -30 >&2; exit 1; }
  sleep 0.02
done
t_ping=$(ms "$t_run" "$(now_ns)")
while :; do
  n=$(count_routes)
  [ "${n:-0}" -ge "$N" ] && break
  [ $(( $(now_ns) - t_run )) -lt 180000000000 ] || { echo "only $n routes" >&2; exit 1; }
  sleep 0.02
done
t_routes=$(ms "$t_run" "$(now_ns)")
c_routed=$(wharf_cpu)
sleep 2
newlogs() { logs | tail -n +"$((lines + 1))"; }
listed_ms=$(newlogs | jq -Rr 'fromjson? | select((.message // .fields.message) == "docker: connected and listed") | (.elapsed_ms // .fields.elapsed_ms)' 2>/dev/null | head -1 || true)
first_swap_us=$(newlogs | jq -Rr 'fromjson? | select((.message // .fields.message // "") | startswith("routing table swapped")) | (.elapsed_us // .fields.elapsed_us)' 2>/dev/null | head -1 || true)
say "fresh wharf process: /ping 200 after ${t_ping} ms, $N routes in /api/routes after ${t_routes} ms"

# --- routing ------------------------------------------------------------------------
for i in $(seq 1 "$RUNNING"); do
  deadline=$(( $(now_ns) + 60000000000 ))
  until [ "$(code "s$i.scale.test")" = 200 ]; do
    [ "$(now_ns)" -lt "$deadline" ] || { echo "s$i.scale.test never answered 200" >&2; exit 1; }
    sleep 0.2
  done
done
c503=$(code "s$N.scale.test")
c404=$(code "nothing.scale.test")
say "through Wharf: s1..s$RUNNING 200, s$N (no task) $c503, unknown host $c404"
[ "$c503" = 503 ] && [ "$c404" = 404 ] || { echo "unexpected status" >&2; exit 1; }

# --- idle baseline ----------------------------------------------------------------
swapcount() { logs | grep -c '"routing table swapped' || true; }
say "idle CPU baseline over ${IDLE} s"
s0=$(swapcount); w0=$(wharf_cpu); d0=$(dockerd_cpu); t0=$(now_ns)
sleep "$IDLE"
w1=$(wharf_cpu); d1=$(dockerd_cpu); t1=$(now_ns); s1=$(swapcount)
idle_ns=$((t1 - t0))
idle_w=$((w1 - w0)); idle_d=$((d1 - d0))   # microseconds over idle_ns
idle_swaps=$((s1 - s0))

# What the listing Wharf repeats after every event costs the Engine: the services call
# alone, through the same socket (5 times, the median).
svc_ms=$(for _ in 1 2 3 4 5; do
  curl -s -o /dev/null -w '%{time_total}\n' --unix-socket /var/run/docker.sock http://docker/services
done | sort -n | sed -n 3p | awk '{printf "%d", $1 * 1000}')
svc_bytes=$(curl -s --unix-socket /var/run/docker.sock http://docker/services | wc -c)

# --- label changes ------------------------------------------------------------------
# Each change: a new host name on a service with a task; timed from just before the
# command to the first 200 through Wharf (curl every 10 ms). CPU is read over the
# change's whole WINDOW (the 100 ms task polls after an event last 5 s).
: > "$DIR/raw"
for k in $(seq 1 "$CHANGES"); do
  i=$(( (k - 1) % RUNNING + 1 ))
  host="c$k-s$i.scale.test"
  svc="$P-s$i"
  s0=$(swapcount); w0=$(wharf_cpu); d0=$(dockerd_cpu); t0=$(now_ns)
  docker service update -d --quiet --label-add "wharf.host=$host" "$svc" >/dev/null
  t_cli=$(now_ns)
  deadline=$(( t0 + 30000000000 ))
  seen=""; last=""
  while :; do
    c=$(code "$host")
    [ "$c" = "$last" ] || seen="$seen>$c@$(ms "$t0" "$(now_ns)")"
    last=$c
    [ "$c" = 200 ] && break
    [ "$(now_ns)" -lt "$deadline" ] || { echo "$host never answered 200" >&2; logs | tail -20 >&2; exit 1; }
    sleep 0.01
  done
  t_ok=$(now_ns)
  w_ok=$(wharf_cpu)
  rest=$(( t0 + WINDOW * 1000000000 - $(now_ns) ))
  [ "$rest" -gt 0 ] && sleep "$(printf '%d.%09d' $((rest / 1000000000)) $((rest % 1000000000)))"
  w1=$(wharf_cpu); d1=$(dockerd_cpu); t1=$(now_ns); s1=$(swapcount)
  echo "$k $host $svc $t0 $t_cli $t_ok $t1 $w0 $w_ok $w1 $d0 $d1 $((s1 - s0)) ${seen#>}" >> "$DIR/raw"
  say "change $k: $host routed after $(ms "$t0" "$t_ok") ms (CLI $(ms "$t0" "$t_cli") ms)"
done

# The swap that routed each change, from Wharf's log: its time and compile cost.
logs | jq -Rr 'fromjson? | select((.message // "") | startswith("routing table swapped"))
  | "\(.timestamp) \(.elapsed_us) \(.message)"' > "$DIR/swaps" || true
: > "$DIR/changes"
while read -r k host svc t0 t_cli t_ok t1 w0 w_ok w1 d0 d1 sw seen; do
  swap_ms="?"; swap_us="?"
  while read -r ts us msg; do
    case "$msg" in *" $svc@docker"*) ;; *) continue ;; esac
    at=$(date -d "$ts" +%s%N)
    if [ "$at" -gt "$t0" ]; then swap_ms=$(ms "$t0" "$at"); swap_us=$us; break; fi
  done < "$DIR/swaps"
  echo "$k $host $(ms "$t0" "$t_ok") $(ms "$t0" "$t_cli") $swap_ms $swap_us $(( (w_ok - w0) / 1000 )) $(( (w1 - w0) / 1000 )) $(( (d1 - d0) / 1000 )) $sw $(ms "$t0" "$t1") $seen" >> "$DIR/changes"
done < "$DIR/raw"

stats() { # column of $DIR/changes -> min / median / max
  awk -v c="$1" '$c != "?" {print $c}' "$DIR/changes" | sort -n |
    awk '{a[NR]=$1} END {m = (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2;
      printf "%s / %s / %s", a[1], m, a[NR]}'
}
per_window() { echo $(( $1 * WINDOW * 1000000000 / idle_ns / 1000 )); }

# --- summary -----------------------------------------------------------------------
echo
echo "## Scale: $N services ($RUNNING with a task), $(nproc) CPUs, Docker $(docker version --format '{{.Server.Version}}'), $(date -u +%FT%TZ)"
echo "binary: $BIN   cpu: ${CG:-/proc/<wharf pid>/stat}; dockerd: /proc/$DPID/stat"
echo
echo "| figure | value |"
echo "| --- | --- |"
echo "| $N \`docker service create\` ($PAR in parallel) | ${t_create} ms |"
echo "| running Wharf: first create -> all $N in /api/routes | ${t_follow} ms |"
echo "| fresh wharf process -> /ping 200 | ${t_ping} ms |"
echo "| fresh wharf process -> $N routes in /api/routes | ${t_routes} ms |"
echo "| its first listing (log \`elapsed_ms\`) | ${listed_ms:-?} ms |"
echo "| its first compile + swap (log \`elapsed_us\`) | ${first_swap_us:-?} us |"
echo "| Wharf CPU, process start -> all routed | $(( (c_routed - c_run) / 1000 )) ms |"
echo "| idle, per ${WINDOW} s: Wharf CPU / dockerd CPU / table swaps (other users' workloads) | $(per_window "$idle_w") ms / $(per_window "$idle_d") ms / $idle_swaps in ${IDLE} s |"
echo "| GET /services on the Engine's socket ($N services; median of 5) | ${svc_ms} ms, ${svc_bytes} bytes |"
echo "| label change -> new host answers 200, min / median / max ($CHANGES changes) | $(stats 3) ms |"
echo "| \`docker service update -d\` returned after | $(stats 4) ms |"
echo "| the change's table swap logged after | $(stats 5) ms |"
echo "| its compile + swap (log \`elapsed_us\`) | $(stats 6) us |"
echo "| Wharf CPU, change -> first 200 | $(stats 7) ms |"
echo "| Wharf CPU over the ${WINDOW} s window | $(stats 8) ms |"
echo "| dockerd CPU over the ${WINDOW} s window | $(stats 9) ms |"
echo
echo "k host routed_ms cli_ms swap_ms swap_us wharf_cpu_to_200_ms wharf_cpu_window_ms dockerd_cpu_window_ms swaps_in_window window_ms statuses(code@ms)"
cat "$DIR/changes"
