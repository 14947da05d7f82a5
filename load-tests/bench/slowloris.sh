#!/usr/bin/env bash
# Legitimate latency with and without a slowloris attack on fledge.
#
# fledge (one thread, CPU 0) in front of nginx serving a fixed JSON body
# (CPU 1). Round "quiet": wrk alone. Round "attack": the same wrk while a
# bounded slowloris client (Python, asyncio) holds SLOW connections, each
# sending an unfinished header a line every 5 s, and reopening any the proxy
# cuts. Reports wrk's p50/p99 in both rounds, and how many slow connections
# fledge cut (its header deadline, limits.header_timeout_seconds = 15 s).
#
# Usage: load-tests/bench/slowloris.sh [SLOW] [SECONDS]
# Needs: nginx, wrk, python3, a release build (cargo build --release --bins).
# Traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SLOW=${1:-2000}
SECS=${2:-40}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FLEDGE=$ROOT/target/release/fledge
[ -x "$FLEDGE" ] || { echo "missing $FLEDGE: cargo build --release --bins" >&2; exit 1; }
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
B=$(port); PF=$(port); PA=$(port)
BODY='{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2}}'
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location / { default_type application/json; return 200 '$BODY'; } } }
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/nginx.conf"
cat > "$WORK/fledge.yaml" <<YAML
listen: "127.0.0.1:$PF"
threads: 1
admin: { listen: "127.0.0.1:$PA" }
state_dir: "$WORK/state"
limits: { max_connections_per_ip: 20000, max_connections: 20000 }
pools:
  p: { workers: ["127.0.0.1:$B"] }
tenants:
  acme: { hosts: ["acme.example.com"], stable: p }
YAML
FLEDGE_LOG=warn taskset -c 0 "$FLEDGE" run --config "$WORK/fledge.yaml" > "$WORK/fledge.log" 2>&1 & PIDS+=($!)
wait_port "$PF"

cat > "$WORK/slow.py" <<'PY'
import asyncio, sys, time
host, port, n, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
opened = cut = 0
async def one(deadline):
    global opened, cut
    while time.monotonic() < deadline:
        try:
            r, w = await asyncio.open_connection(host, port)
        except OSError:
            await asyncio.sleep(0.5); continue
        opened += 1
        try:
            w.write(b"GET /web/login HTTP/1.1\r\nHost: acme.example.com\r\n"); await w.drain()
            while time.monotonic() < deadline:
                try:
                    # Five seconds of silence, unless the proxy closes first.
                    if await asyncio.wait_for(r.read(1), timeout=5) == b"":
                        raise ConnectionError
                except asyncio.TimeoutError:
                    pass
                w.write(b"X-Slow: 1\r\n"); await w.drain()
        except (ConnectionError, OSError):
            cut += 1
        finally:
            w.close()
async def main():
    deadline = time.monotonic() + secs
    await asyncio.gather(*(one(deadline) for _ in range(n)))
    print(f"{opened} {cut}")
asyncio.run(main())
PY

wrk_round() {
  taskset -c 1 wrk -t1 -c32 -d"${SECS}s" --latency -H 'Host: acme.example.com' "http://127.0.0.1:$PF/web/login"
}
metric() { curl -s "http://127.0.0.1:$PA/metrics" -H "Authorization: Bearer $(cat "$WORK/state/admin.token")" | awk -v m="$1" '$1==m {print $2}'; }
quiet=$(wrk_round)
taskset -c 1 python3 "$WORK/slow.py" 127.0.0.1 "$PF" "$SLOW" "$((SECS + 5))" > "$WORK/slow.out" & SLOWPID=$!
sleep 5
attack=$(wrk_round)
wait "$SLOWPID" || true
read -r opened cut < "$WORK/slow.out"
slow_metric=$(metric fledge_slow_headers_total)
pct() { echo "$1" | awk -v q="$2" '$1==q {print $2}'; }
rps() { echo "$1" | awk '/Requests\/sec/ {print $2}'; }
{
  echo "# Legitimate latency under a slowloris attack"
  echo
  echo "fledge (1 thread, CPU 0) → nginx (CPU 1); wrk -t1 -c32 -d${SECS}s on CPU 1; attacker: $SLOW slow connections (a header line every 5 s, reopened when cut), Python asyncio on CPU 1. Header deadline 15 s."
  echo
  echo "| round | req/s | p50 | p99 |"
  echo "|---|---|---|---|"
  echo "| quiet | $(rps "$quiet") | $(pct "$quiet" 50%) | $(pct "$quiet" 99%) |"
  echo "| slowloris | $(rps "$attack") | $(pct "$attack" 50%) | $(pct "$attack" 99%) |"
  echo
  echo "Slow connections opened: $opened; cut by fledge (seen by the attacker): $cut; fledge_slow_headers_total: ${slow_metric:-?}."
} | tee "$OUT/slowloris.md"
