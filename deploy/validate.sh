#!/usr/bin/env bash
# Offline checks of what deploy/ ships (run by .ci/run): the Kubernetes
# manifests against the API's schemas (kubernetes-validate from PyPI, in a
# virtual environment under target/), the config they carry with `fledge
# check`, the Prometheus alert rules with promtool (check and unit test),
# and the Grafana dashboard's queries (promtool parses them).
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
# The dashboard's PromQL: every panel's query as a recording rule, which
# promtool parses (Grafana's $variables stay inside label matchers).
python3 - deploy/grafana/fledge.json > target/dashboard-rules.yaml <<'PY'
import json, sys
dash = json.load(open(sys.argv[1]))
exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
assert exprs, "the dashboard has no queries"
print("groups:\n  - name: dashboard\n    rules:")
for i, e in enumerate(exprs):
    print(f"      - record: fledge_dashboard_query_{i}\n        expr: {json.dumps(e)}")
PY
promtool check rules target/dashboard-rules.yaml
echo "deploy/: manifests, config, alert rules and dashboard queries valid"
