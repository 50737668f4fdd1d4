#!/usr/bin/env bash
# Offline checks of the deployment files; nothing is deployed and no image is built.
#   1. every kustomization under deploy/k8s (base, overlays/*): rendered (tests/k8s/validate.py,
#      compared with `kubectl kustomize` where kubectl exists), each object validated against the
#      Kubernetes schemas of the pinned kubernetes-validate (strict), the ServiceMonitor and the
#      references between objects checked for shape;
#   2. negative checks: broken copies (a bad field type, a misspelt field, a ServiceMonitor naming a
#      port the Service lacks, a compose service with an unknown option) must FAIL;
#   3. docker/compose.yaml with `docker-compose config` (Debian's docker-compose, tests/tools.sh);
#   4. the sessiongate config of each ConfigMap and docker/sessiongate.yaml with
#      `sessiongate check` ($SESSIONGATE_BIN, default target/release/sessiongate).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

K8S_VERSION=1.30.0
PINS="kubernetes-validate==1.34.1 PyYAML==6.0.2 jsonpatch==1.33"
venv="$PWD/target/k8s-venv"
bin="${SESSIONGATE_BIN:-$PWD/target/release/sessiongate}"
out="$PWD/target/k8s"
mkdir -p "$out"

if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.pins" 2>/dev/null)" != "$PINS" ]; then
  echo "k8s: creating $venv ($PINS)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install -q --disable-pip-version-check $PINS
  echo "$PINS" >"$venv/.pins"
fi
py="$venv/bin/python"
fail=0

echo "== k8s: manifests (Kubernetes $K8S_VERSION schemas, offline)"
kustomizations=(deploy/k8s/base deploy/k8s/overlays/*)
for k in "${kustomizations[@]}"; do
  "$py" tests/k8s/validate.py "$k" --kubernetes-version "$K8S_VERSION" --kubectl \
    --config-out "$out/$(basename "$k").sessiongate.yaml" || fail=1
done

echo "== k8s: negative checks (broken copies must fail)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
expect_failure() { # name, command...
  local name=$1
  shift
  if "$@" >"$tmp/neg.out" 2>&1; then
    echo "FAIL negative check '$name': the broken copy passed"
    fail=1
  else
    echo "ok   negative check '$name' failed as it must: $(grep -v '^FAIL' "$tmp/neg.out" | head -2 | sed 's/^ *//' | tr '\n' ' ' | cut -c1-200)"
  fi
}
cp -r deploy/k8s "$tmp/schema"
sed -i 's/^  replicas: 2$/  replicas: two/' "$tmp/schema/base/sessiongate.yaml"
grep -q 'replicas: two' "$tmp/schema/base/sessiongate.yaml"
expect_failure "Deployment replicas: two" "$py" tests/k8s/validate.py "$tmp/schema/base" --kubernetes-version "$K8S_VERSION"
cp -r deploy/k8s "$tmp/typo"
sed -i 's/^          image: redis:7.2-alpine$/&\n          imagePullPolicyy: Always/' "$tmp/typo/base/redis.yaml"
grep -q 'imagePullPolicyy' "$tmp/typo/base/redis.yaml"
expect_failure "unknown field (strict schemas)" "$py" tests/k8s/validate.py "$tmp/typo/base" --kubernetes-version "$K8S_VERSION"
cp -r deploy/k8s "$tmp/monitor"
sed -i 's/^    - port: admin$/    - port: metrics/' "$tmp/monitor/base/servicemonitor.yaml"
grep -q 'port: metrics' "$tmp/monitor/base/servicemonitor.yaml"
expect_failure "ServiceMonitor port not on the Service" "$py" tests/k8s/validate.py "$tmp/monitor/overlays/shared-storage" --kubernetes-version "$K8S_VERSION"
cp docker/compose.yaml docker/prometheus.yml docker/sessiongate.yaml "$tmp/"
sed -i 's/^  redis:$/  redis:\n    bogus_key: 1/' "$tmp/compose.yaml"
grep -q 'bogus_key' "$tmp/compose.yaml"

echo "== compose: docker/compose.yaml"
# Placeholder values: compose refuses to render without the three variables.
export COPILOT_CONNECTION_TOKEN=placeholder COPILOT_GITHUB_TOKEN=placeholder SESSIONGATE_ADMIN_TOKEN=placeholder
if docker-compose -f docker/compose.yaml config -q; then
  echo "ok   docker/compose.yaml ($(docker-compose -f docker/compose.yaml config --services | paste -sd' '))"
else
  echo "FAIL docker/compose.yaml"
  fail=1
fi
expect_failure "compose service with an unknown option" docker-compose -f "$tmp/compose.yaml" config -q

echo "== sessiongate check: the configs of the ConfigMaps and of compose"
# The variables the configs' token_env fields name, with placeholder values.
export SESSIONGATE_ADMIN_TOKEN=placeholder COPILOT_TOKEN=placeholder
if [ ! -x "$bin" ]; then
  echo "FAIL no sessiongate binary at $bin (cargo build --release, or set SESSIONGATE_BIN)"
  exit 1
fi
for cfg in "$out"/*.sessiongate.yaml docker/sessiongate.yaml; do
  if "$bin" check --config "$cfg" >"$tmp/check.out" 2>&1; then
    echo "ok   sessiongate check $cfg: $(head -1 "$tmp/check.out")"
  else
    echo "FAIL sessiongate check $cfg:"
    sed 's/^/       /' "$tmp/check.out"
    fail=1
  fi
done

if [ "$fail" -ne 0 ]; then
  echo "k8s/compose validation: FAILED"
  exit 1
fi
echo "k8s/compose validation: passed"
