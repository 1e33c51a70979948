#!/usr/bin/env bash
# Builds a statically linked wharf and a FROM-scratch image `wharf:dev` from it.
# No registry is contacted: the image has no base layer.
set -euo pipefail
cd "$(dirname "$0")/.."
target=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target "$target"
docker build -q -f deploy/Dockerfile -t "${1:-wharf:dev}" "target/$target/release"
