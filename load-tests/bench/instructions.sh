#!/usr/bin/env bash
# User-space instructions per request (valgrind callgrind: deterministic,
# unlike CPU time on a shared machine) for nginx and HAProxy (configured as
# in side-by-side.sh: upstream keep-alive, X-Forwarded-*, HAProxy hashing
# the session cookie over two weighted servers), the bare Pingora
# passthrough, the passthrough setting X-Forwarded-*, the same work done
# by a request loop of our own over pingora-core (examples/core-loop.rs:
# Pingora's proxy layer left out), fledge (1000 tenants, canary at 20 %,
# a returning browser's session and version cookies), and the same fledge
# with every request through Pingora's proxy (fledge-pingora,
# FLEDGE_PINGORA_PATH=1), and two variants of fledge: with the access log
# on (fledge+access-log, `log.access: true`, its lines to a file), and
# behind a trusted proxy (fledge+trusted, `trusted_proxies` naming the
# load tool's address, every request carrying `X-Forwarded-For`: the chain
# parsed, the client found, the peer appended). Each proxy is measured idle and under wrk for the same time
# (below, `measure`); the difference over the requests served is the cost
# of a request. Kernel time is not counted.
#
# Usage: load-tests/bench/instructions.sh [SECONDS]
# KEEP=1 keeps each proxy's idle and busy profiles in the output folder.
# NAMES picks the proxies (default: all seven, in the order above); SETTLE
# is how long a proxy gets after its port opens before it is measured
# (default 5 s: valgrind slows start-up).
# Needs: valgrind, nginx, haproxy, wrk, a release build (the passthrough:
# `cargo build --release --examples`). Traffic stays on 127.0.0.1.
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
# nginx and HAProxy as proxies (as side-by-side.sh has them, both
# "pools" on the one backend), nginx in the foreground for valgrind.
FOREGROUND=1 nginx_proxy_conf "$WORK/proxy" "$P" "$B" "$B" 1
haproxy_cfg "$WORK/haproxy.cfg" "$P" "$B" "$B" 1
{ printf 'listen: "127.0.0.1:%s"\nthreads: 1\npools:\n  stable: { workers: ["127.0.0.1:%s"] }\n  canary: { workers: ["127.0.0.1:%s"] }\ntenants:\n' "$P" "$B" "$B"
  printf '  acme:\n    hosts: ["acme.example.com"]\n    stable: stable\n    canary: canary\n    canary_weight: 20\n'
  for i in $(seq 1 999); do printf '  t%s:\n    hosts: ["t%s.example.com"]\n    stable: stable\n' "$i" "$i"; done; } > "$WORK/fledge.yaml"
{ printf 'log:\n  access: true\n'; cat "$WORK/fledge.yaml"; } > "$WORK/fledge-access-log.yaml"
{ printf 'trusted_proxies: ["127.0.0.1/32"]\n'; cat "$WORK/fledge.yaml"; } > "$WORK/fledge-trusted.yaml"

total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }
# One process per proxy: once it has started (HAProxy binds its port long
# before valgrind lets it finish starting) and served one request, the
# counters are zeroed, SECS idle seconds dumped, zeroed again, SECS seconds
# of wrk dumped; the busy dump less the idle one, over the requests, is the
# cost of a request (background work such as health checks cancels out).
measure() { # name cmd...
  local name=$1; shift
  FLEDGE_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$WORK/$name.cg" "$@" > "$WORK/$name.log" 2>&1 &
  local vp=$! reqs pin
  wait_port "$P"; sleep "${SETTLE:-5}"
  pin=$(curl -s -o /dev/null -D - -H 'Host: acme.example.com' -b 'session_id=8d3c1f0e5a9b4c2d7e6f' "http://127.0.0.1:$P/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(fledge_version=[^;]*\).*/\1/p')
  callgrind_control --zero $vp > /dev/null 2>&1
  sleep "$SECS"
  callgrind_control --dump=idle $vp > /dev/null 2>&1
  callgrind_control --zero $vp > /dev/null 2>&1
  reqs=$(wrk -t1 -c8 -d"${SECS}s" -H 'Host: acme.example.com' -H "Cookie: session_id=8d3c1f0e5a9b4c2d7e6f; $pin" ${XFF:+-H "X-Forwarded-For: $XFF"} "http://127.0.0.1:$P/" | awk '/requests in/ {print $1}')
  callgrind_control --dump=busy $vp > /dev/null 2>&1
  kill -TERM $vp; sleep 2; kill -KILL $vp 2>/dev/null || true; wait $vp 2>/dev/null || true
  # KEEP=1: the profiles stay in $OUT for callgrind_annotate.
  [ -n "${KEEP:-}" ] && cp "$WORK/$name.cg.1" "$OUT/$name.idle.cg" && cp "$WORK/$name.cg.2" "$OUT/$name.busy.cg"
  echo "$reqs $(total "$WORK/$name.cg.1") $(total "$WORK/$name.cg.2")"
}
declare -A per
NAMES=${NAMES:-nginx haproxy passthrough passthrough+forwarded core-loop fledge fledge+access-log fledge+trusted fledge-pingora}
for name in $NAMES; do
  case $name in
    nginx) cmd=(nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf") ;;
    haproxy) cmd=(haproxy -db -f "$WORK/haproxy.cfg") ;;
    passthrough) cmd=("$ROOT/target/release/examples/passthrough" "127.0.0.1:$P" "127.0.0.1:$B" 1) ;;
    passthrough+forwarded) cmd=("$ROOT/target/release/examples/passthrough" "127.0.0.1:$P" "127.0.0.1:$B" 1 forwarded) ;;
    core-loop) cmd=("$ROOT/target/release/examples/core-loop" "127.0.0.1:$P" "127.0.0.1:$B" 1) ;;
    fledge|fledge-pingora) cmd=("${FLEDGE:-$ROOT/target/release/fledge}" run --config "$WORK/fledge.yaml") ;;
    fledge+access-log) cmd=("${FLEDGE:-$ROOT/target/release/fledge}" run --config "$WORK/fledge-access-log.yaml") ;;
    fledge+trusted) cmd=("${FLEDGE:-$ROOT/target/release/fledge}" run --config "$WORK/fledge-trusted.yaml") ;;
  esac
  # fledge-pingora: every request through Pingora's proxy, none on
  # fledge's own path (src/server.rs, PINGORA_PATH).
  pingora_path=; [ "$name" = fledge-pingora ] && pingora_path=1
  xff=; [ "$name" = fledge+trusted ] && xff=203.0.113.7
  read -r reqs idle busy < <(FLEDGE_PINGORA_PATH=$pingora_path XFF=$xff measure "$name" "${cmd[@]}")
  per[$name]=$(( (busy - idle) / reqs ))
  echo "$name: $reqs requests, $((busy - idle)) instructions beyond idle, ${per[$name]} per request"
done
ratio() { [ -n "${per[$2]:-}" ] && python3 -c "print(f'{$1/${per[$2]}:.2f}')" || echo "—"; }
{ echo "| proxy | instructions per request | vs nginx | vs HAProxy | vs bare passthrough |"
  echo "|---|---|---|---|---|"
  for name in $NAMES; do
    echo "| $name | ${per[$name]} | $(ratio "${per[$name]}" nginx) | $(ratio "${per[$name]}" haproxy) | $(ratio "${per[$name]}" passthrough) |"
  done; } > "$OUT/instructions.md.tmp"
{ echo "# User-space instructions per request (callgrind)"; echo; echo "valgrind $(valgrind --version), wrk -t1 -c8 -d${SECS}s, fledge with 1000 tenants, canary 20 %, returning-browser cookies."; echo; cat "$OUT/instructions.md.tmp"; } > "$OUT/instructions.md"
rm "$OUT/instructions.md.tmp"
cat "$OUT/instructions.md"
