#!/usr/bin/env bash
# Installs the outside tools the test suite uses, idempotently, into target/tools:
#   promtool  - from Debian's prometheus package (binary only: no service is installed or started)
# and checks node/npm for the interop suite (Debian's nodejs/npm when missing) and redis-server
# for the shared store's tests (Debian's redis-server when missing; the tests start their own
# servers on free ports, whatever the package's service does), and headless Chromium for the
# status page test (Debian's chromium when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tools="$PWD/target/tools"
mkdir -p "$tools"

apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [ ! -x "$tools/promtool" ] && ! command -v promtool >/dev/null; then
  echo "tools.sh: fetching promtool from Debian's prometheus package"
  if [ -z "$apt_updated" ]; then apt-get update -qq; apt_updated=1; fi
  work=$(mktemp -d)
  (cd "$work" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null && dpkg-deb -x prometheus_*.deb pkg)
  cp "$work/pkg/usr/bin/promtool" "$tools/promtool"
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
if [ ! -x /usr/bin/chromium ]; then
  echo "tools.sh: installing chromium from Debian"
  apt_install chromium
fi
echo "tools.sh: promtool $( ("$tools/promtool" --version 2>/dev/null || promtool --version) | head -1 | cut -d' ' -f3), node $(node --version), $(redis-server --version | cut -d' ' -f1-3), $(/usr/bin/chromium --version 2>/dev/null)"
