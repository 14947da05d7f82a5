#!/usr/bin/env bash
# p99 latency through fledge with and without config reloads, same run:
# wrk for SECONDS against fledge (nginx backend), once quiet, once while
# the config (1000 tenants) is replaced by atomic rename 100 times, the
# canary weight changing each time. Requires a release build, nginx, wrk.
# Usage: load-tests/bench/reload-latency.sh [SECONDS] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SECS=${1:-20}
ROUNDS=${2:-3}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
FPID=""
trap 'kill $FPID 2>/dev/null || true; nginx -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$WORK"' EXIT
B1=$(port); B2=$(port); P=$(port); A=$(port)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; return 200 '{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0"}}'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; return 200 '{"jsonrpc":"2.0","id":1,"result":{"server_version":"18.0"}}'; } } }
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/nginx.conf"
mkdir -p "$WORK/conf"
write_config() { # weight
  { printf 'listen: "127.0.0.1:%s"\nthreads: 1\nstate_dir: "%s/state"\nadmin: { listen: "127.0.0.1:%s" }\n' "$P" "$WORK" "$A"
    printf 'pools:\n  stable: { workers: ["127.0.0.1:%s"] }\n  canary: { workers: ["127.0.0.1:%s"] }\ntenants:\n' "$B1" "$B2"
    printf '  acme:\n    hosts: ["acme.example.com"]\n    stable: stable\n    canary: canary\n    canary_weight: %s\n' "$1"
    for i in $(seq 1 999); do printf '  t%s:\n    hosts: ["t%s.example.com"]\n    stable: stable\n' "$i" "$i"; done
  } > "$WORK/conf/.fledge.yaml.tmp"
  mv "$WORK/conf/.fledge.yaml.tmp" "$WORK/conf/fledge.yaml"
}
write_config 20
FLEDGE_LOG=warn taskset -c 0 "$ROOT/target/release/fledge" run --config "$WORK/conf/fledge.yaml" > "$WORK/fledge.log" 2>&1 & FPID=$!
wait_port "$P"
p99() { awk '$1=="99%" {print $2}'; }
ms() { python3 -c "v='$1'; print(float(v[:-2])/1000 if v.endswith('us') else float(v[:-2]) if v.endswith('ms') else float(v[:-1])*1000)"; }
echo "round,mode,p99_ms,requests,errors" > "$OUT/reload-latency.csv"
for r in $(seq "$ROUNDS"); do
  for mode in quiet reloading; do
    if [ "$mode" = reloading ]; then
      ( for i in $(seq 100); do write_config $(( (i * 7) % 100 )); sleep "$(python3 -c "print($SECS/110)")"; done ) & RL=$!
    fi
    out=$(taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -H 'Host: acme.example.com' -H 'Cookie: session_id=abc' "http://127.0.0.1:$P/")
    [ "$mode" = reloading ] && wait $RL
    errs=$(echo "$out" | awk '/Non-2xx|Socket errors/ {print}' | tr '\n' ' ')
    echo "$r,$mode,$(ms "$(echo "$out" | p99)"),$(echo "$out" | awk '/requests in/ {print $1}'),\"$errs\"" >> "$OUT/reload-latency.csv"
    echo "round $r $mode: p99 $(echo "$out" | p99) $errs"
  done
done
applied=$(curl -s -H "Authorization: Bearer $(cat "$WORK/state/admin.token")" "http://127.0.0.1:$A/metrics" | awk '/fledge_config_reloads_total\{result="applied"\}/ {print $2}')
python3 - "$OUT/reload-latency.csv" "$applied" <<'PY' | tee "$OUT/reload-latency.md"
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
med = lambda m: statistics.median(float(r["p99_ms"]) for r in rows if r["mode"] == m)
q, l = med("quiet"), med("reloading")
print(f"# p99 latency with and without reloads\n\nwrk -t1 -c32, 1000 tenants, {len(rows)//2} rounds (medians); reloads applied: {sys.argv[2]}\n")
print(f"| mode | p99 (ms) |\n|---|---|\n| quiet | {q:.3f} |\n| 100 reloads | {l:.3f} |\n\nratio: **{l/q:.2f}x**")
PY
