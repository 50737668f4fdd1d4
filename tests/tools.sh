#!/usr/bin/env bash
# Installs the outside tools the test suite uses, idempotently, into target/tools:
#   promtool, prometheus - from Debian's prometheus package (binaries only: no service is
#                          installed or started; the tests run prometheus themselves)
# and checks node/npm for the interop suite (Debian's nodejs/npm when missing) and redis-server
# for the shared store's tests (Debian's redis-server when missing; the tests start their own
# servers on free ports, whatever the package's service does), for tests/k8s/validate.sh
# Python's venv (Debian's python3-venv when missing; the venv itself and its pinned packages are
# made by that script) and docker-compose (Debian's package: `docker-compose config` checks a
# compose file offline, no Docker engine needed), and headless Chromium for the status page test
# (Debian's chromium when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$PWD/target/tools"
mkdir -p "$tools"

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Both from one package: promtool checks the exposition (metrics_exposition.rs), prometheus
# scrapes a running proxy and evaluates the Grafana dashboard's queries (dashboard.rs).
need=()
for bin in promtool prometheus; do
  if [ ! -x "$tools/$bin" ] && ! command -v "$bin" >/dev/null; then need+=("$bin"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "tools.sh: fetching ${need[*]} from Debian's prometheus package"
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null && dpkg-deb -x prometheus_*.deb pkg)
  for bin in "${need[@]}"; do cp "$work/pkg/usr/bin/$bin" "$tools/$bin"; done
  rm -rf "$work"
fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "tools.sh: installing nodejs and npm from Debian"
  apt_install nodejs npm
fi
if ! command -v redis-server >/dev/null; then
  echo "tools.sh: installing redis-server from Debian"
  apt_install redis-server
fi
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  echo "tools.sh: installing python3-venv from Debian"
  apt_install python3-venv
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "tools.sh: installing chromium from Debian"
  apt_install chromium
fi
if ! command -v docker-compose >/dev/null; then
  echo "tools.sh: installing docker-compose from Debian"
  apt_install docker-compose
fi
echo "tools.sh: promtool $( ("$tools/promtool" --version 2>/dev/null || promtool --version) | head -1 | cut -d' ' -f3), prometheus $( ("$tools/prometheus" --version 2>/dev/null || prometheus --version) | head -1 | cut -d' ' -f3), node $(node --version), $(redis-server --version | cut -d' ' -f1-3), $(docker-compose version --short), $(/usr/bin/chromium --version 2>/dev/null)"
