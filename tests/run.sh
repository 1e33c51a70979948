#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs the Debian packages the tests
# use when they are missing, then runs every test of the workspace. README's test
# command; .ci/run runs it after fmt and clippy.
#
# - chromium: tests/admin.rs renders the admin dashboard in headless Chromium;
# - procps: the lifecycle tests signal Wharf with the `kill` program;
# - busybox-static: the web server in the Docker tests' images (tests/common/docker.rs);
# - pebble, bind9, bind9-dnsutils (dig): the ACME tests (crates/wharf-acme/tests, and tests/acme.rs
#   for the binary) run a real Pebble CA, its DNS test server and BIND;
# - prometheus (prometheus, promtool): tests/prometheus.rs lints /metrics and scrapes Wharf;
# - nginx: the HTTPS backends of tests/backend_tls.rs;
# - haproxy: the L4 balancer in front of two Wharf replicas in tests/own_update.rs;
# - ca-certificates: the CA bundle deploy/build-image.sh puts in the image (tests/deploy.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
[ -x /usr/bin/kill ] || [ -x /bin/kill ] || need+=(procps)
[ -x /bin/busybox ] || [ -x /usr/bin/busybox ] || need+=(busybox-static)
command -v chromium >/dev/null || need+=(chromium)
{ command -v pebble && command -v pebble-challtestsrv; } >/dev/null || need+=(pebble)
command -v named >/dev/null || need+=(bind9)
command -v dig >/dev/null || need+=(bind9-dnsutils)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
{ command -v prometheus && command -v promtool; } >/dev/null || need+=(prometheus)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -q
  $sudo apt-get install -y -q -o DPkg::Lock::Timeout=300 "${need[@]}"
fi
exec cargo test --workspace "$@"
