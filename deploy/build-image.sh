#!/usr/bin/env bash
# Builds a statically linked `wharf` (release profile, crt-static) and the FROM-scratch
# image of deploy/Dockerfile from it. No registry is contacted: the image has no base
# layer.
#
#   deploy/build-image.sh [TAG]          # TAG defaults to wharf:latest
#
# Environment:
#   WHARF_BIN=path   put this binary in the image instead of building one. If it is
#                    dynamically linked (e.g. a plain `cargo build`), the shared
#                    libraries ldd lists are copied into the image with it.
#   CA_BUNDLE=path   CA roots to bundle (default: /etc/ssl/certs/ca-certificates.crt,
#                    from Debian's ca-certificates package)
#   CARGO_TARGET_DIR is honoured as cargo honours it.
#
# Every swarm node that may run Wharf needs the image: build it there,
# `docker save TAG | ssh NODE docker load`, or push it to your registry.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-wharf:latest}
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
[ -s "$ca" ] || { echo "no CA bundle at $ca (apt-get install ca-certificates)" >&2; exit 1; }
if [ -n "${WHARF_BIN:-}" ]; then
  bin=$WHARF_BIN
else
  target=$(rustc -vV | sed -n 's/^host: //p')
  # With --target, build scripts and proc-macros stay dynamic; only wharf is static.
  RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
    cargo build --release --locked --target "$target" --bin wharf
  bin=${CARGO_TARGET_DIR:-target}/$target/release/wharf
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$bin" "$ctx/rootfs/wharf"
install -D -m 0644 deploy/wharf.toml "$ctx/rootfs/etc/wharf/wharf.toml"
install -D -m 0644 "$ca" "$ctx/rootfs/etc/ssl/certs/ca-certificates.crt"
install -d -m 0700 "$ctx/state"
# ldd's output is read whole first: `ldd | grep -q` under pipefail fails whenever
# grep exits before ldd has written everything (SIGPIPE), which would leave the
# libraries out of the image now and then.
libs=$(ldd "$bin" 2>/dev/null || true)
if grep -q '=>' <<<"$libs"; then
  if [ -z "${WHARF_BIN:-}" ]; then
    echo "$bin is not static; was -C target-feature=+crt-static overridden?" >&2
    exit 1
  fi
  # "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)", "/lib64/ld-linux-x86-64.so.2 (0x...)"
  awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i }' <<<"$libs" |
    while read -r lib; do install -D -m 0755 "$lib" "$ctx/rootfs$lib"; done
fi
docker build -q -f deploy/Dockerfile -t "$tag" "$ctx"
