#!/usr/bin/env bash
# Offline checks of what deploy/ ships (run by .ci/run): the Kubernetes
# manifests against the API's schemas (kubernetes-validate from PyPI, in a
# virtual environment under target/), the config they carry with `fledge
# check`, and the Prometheus alert rules with promtool (check and unit test).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=target/deploy-venv
if [ ! -x "$VENV/bin/kubernetes-validate" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet kubernetes-validate
fi
for f in deploy/kubernetes/*.yaml; do
  case "$f" in
    */kustomization.yaml|*/fledge.yaml) continue ;;
  esac
  "$VENV/bin/kubernetes-validate" --quiet -k 1.33.0 "$f"
done
cargo run --quiet -p fledge -- check --config deploy/kubernetes/fledge.yaml
# The alert rules, and their unit test (promtool: Debian's prometheus).
if ! command -v promtool > /dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus > /dev/null
fi
promtool check rules deploy/prometheus/alerts.yaml
(cd deploy/prometheus && promtool test rules alerts.test.yaml)
echo "deploy/: manifests, config and alert rules valid"
