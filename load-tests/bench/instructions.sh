#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind: deterministic,
# unlike CPU time on a shared machine) for the bare Pingora passthrough,
# the passthrough setting X-Forwarded-*, and fledge (1000 tenants, canary
# at 20 %, a returning browser's session and version cookies). Each proxy
# is measured twice: idle for the same duration (start-up and background
# work) and under wrk; the difference over the requests served is the cost
# of a request. Kernel time is not counted.
#
# Usage: load-tests/bench/instructions.sh [SECONDS]
# Needs: valgrind, nginx, wrk, a release build. Traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SECS=${1:-10}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
trap 'nginx -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$WORK"' EXIT
B=$(port); P=$(port)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 1024; }
http { access_log off; keepalive_requests 100000;
  server { listen 127.0.0.1:$B; location / { default_type application/json; return 200 '{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2,"name":"Mitchell Admin","company_id":1}}'; } } }
NGINX
nginx -p "$WORK" -c "$WORK/nginx.conf"
{ printf 'listen: "127.0.0.1:%s"\nthreads: 1\npools:\n  stable: { workers: ["127.0.0.1:%s"] }\n  canary: { workers: ["127.0.0.1:%s"] }\ntenants:\n' "$P" "$B" "$B"
  printf '  acme:\n    hosts: ["acme.example.com"]\n    stable: stable\n    canary: canary\n    canary_weight: 20\n'
  for i in $(seq 1 999); do printf '  t%s:\n    hosts: ["t%s.example.com"]\n    stable: stable\n' "$i" "$i"; done; } > "$WORK/fledge.yaml"

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }
measure() { # name load(0|1) cmd...
  local name=$1 load=$2; shift 2
  FLEDGE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.$load.cg" "$@" > "$WORK/$name.log" 2>&1 &
  local vp=$! reqs=0
  wait_port "$P"; sleep 1
  if [ "$load" = 1 ]; then
    local pin
    pin=$(curl -s -o /dev/null -D - -H 'Host: acme.example.com' -b 'session_id=8d3c1f0e5a9b4c2d7e6f' "http://127.0.0.1:$P/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(fledge_version=[^;]*\).*/\1/p')
    reqs=$(wrk -t1 -c8 -d"${SECS}s" -H 'Host: acme.example.com' -H "Cookie: session_id=8d3c1f0e5a9b4c2d7e6f; $pin" "http://127.0.0.1:$P/" | awk '/requests in/ {print $1}')
    reqs=$((reqs + 1))
  else
    sleep "$SECS"
  fi
  kill -INT $vp; sleep 1; kill $vp 2>/dev/null || true; wait $vp 2>/dev/null || true
  echo "$reqs $(total "$WORK/$name.$load.cg")"
}
echo "| proxy | instructions per request | vs bare passthrough |" > "$OUT/instructions.md.tmp"
echo "|---|---|---|" >> "$OUT/instructions.md.tmp"
declare -A per
for name in passthrough passthrough+forwarded fledge; do
  case $name in
    passthrough) cmd=("$ROOT/target/release/examples/passthrough" "127.0.0.1:$P" "127.0.0.1:$B" 1) ;;
    passthrough+forwarded) cmd=("$ROOT/target/release/examples/passthrough" "127.0.0.1:$P" "127.0.0.1:$B" 1 forwarded) ;;
    fledge) cmd=("${FLEDGE:-$ROOT/target/release/fledge}" run --config "$WORK/fledge.yaml") ;;
  esac
  read -r _ idle < <(measure "$name" 0 "${cmd[@]}")
  read -r reqs busy < <(measure "$name" 1 "${cmd[@]}")
  per[$name]=$(( (busy - idle) / reqs ))
  echo "$name: $reqs requests, $((busy - idle)) instructions beyond idle, ${per[$name]} per request"
done
for name in passthrough passthrough+forwarded fledge; do
  echo "| $name | ${per[$name]} | $(python3 -c "print(f'{${per[$name]}/${per[passthrough]}:.3f}')") |" >> "$OUT/instructions.md.tmp"
done
{ echo "# User-space instructions per request (callgrind)"; echo; echo "valgrind $(valgrind --version), wrk -t1 -c8 -d${SECS}s, fledge with 1000 tenants, canary 20 %, returning-browser cookies."; echo; cat "$OUT/instructions.md.tmp"; } > "$OUT/instructions.md"
rm "$OUT/instructions.md.tmp"
cat "$OUT/instructions.md"
