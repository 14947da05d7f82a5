#!/usr/bin/env bash
# fledge's memory with many tenants and many idle kept-alive clients: RSS
# after start with TENANTS tenants, then with CONNS client connections that
# each made one request and stay open, idle (as browsers keep theirs), then
# after they close. The clients come from 20 loopback addresses, under the
# per-address cap. Usage: load-tests/bench/idle-memory.sh [TENANTS] [CONNS] [THREADS]
# Needs: cargo build --release -p fledge; python3. Traffic stays on 127.0.0.0/8.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
TENANTS=${1:-10000}
CONNS=${2:-10000}
THREADS=${3:-1}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FLEDGE=${FLEDGE:-$ROOT/target/release/fledge}
[ -x "$FLEDGE" ] || { echo "missing $FLEDGE: cargo build --release -p fledge" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
B=$(port); P=$(port)
# A backend: a tiny asyncio HTTP server answering 200 with a short body.
python3 - "$B" > "$WORK/backend.log" 2>&1 <<'PY' &
import asyncio, sys
async def serve(r, w):
    try:
        while True:
            head = await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Odoo-Version: 17.0\r\n\r\nok")
            await w.drain()
    except Exception:
        w.close()
async def main():
    s = await asyncio.start_server(serve, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    await s.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
{
  echo "listen: \"127.0.0.1:$P\""
  echo "threads: $THREADS"
  echo "admin: { listen: \"127.0.0.1:$(port)\" }"
  echo "state_dir: \"$WORK/state\""
  echo "pools:"
  echo "  stable: { workers: [\"127.0.0.1:$B\"] }"
  echo "  canary: { workers: [\"127.0.0.1:$B\"] }"
  echo "tenants:"
  for i in $(seq 1 "$TENANTS"); do
    printf '  t%s: { hosts: ["t%s.example.com"], stable: stable, canary: canary, canary_weight: 10 }\n' "$i" "$i"
  done
} > "$WORK/fledge.yaml"
RUST_LOG=warn "$FLEDGE" run --config "$WORK/fledge.yaml" > "$WORK/fledge.log" 2>&1 & PIDS+=($!); FPID=$!
wait_port "$P"
sleep 2
START=$(rss "$FPID")
python3 - "$P" "$CONNS" "$TENANTS" "$FPID" > "$WORK/clients.log" <<'PY'
import asyncio, sys, resource
port, n, tenants, pid = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def rss():
    return int(next(l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS")))
async def client(i, ready):
    src = f"127.0.0.{2 + i % 20}"
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0))
    host = f"t{1 + i % tenants}.example.com"
    w.write(f"GET /web/login HTTP/1.1\r\nHost: {host}\r\nCookie: session_id=s{i}\r\n\r\n".encode())
    await w.drain()
    head = await r.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:40]
    await r.readexactly(2)
    ready.append(1)
    return r, w
async def main():
    ready, conns = [], []
    for start in range(0, n, 500):
        conns += await asyncio.gather(*(client(i, ready) for i in range(start, min(n, start + 500))))
    await asyncio.sleep(3)
    print(len(ready), rss())
    for r, w in conns:
        w.close()
asyncio.run(main())
PY
read -r OPEN HELD < "$WORK/clients.log"
sleep 3
AFTER=$(rss "$FPID")
{
  echo "# fledge memory: $TENANTS tenants, $CONNS idle kept-alive clients"
  echo
  echo "\`load-tests/bench/idle-memory.sh $TENANTS $CONNS $THREADS\` ($THREADS thread(s); release build; each client made one request from one of 20 loopback addresses and stayed open; allocator options: $(env | grep '^MIMALLOC_' | tr '\n' ' ' || true)none other)."
  echo
  echo "| moment | RSS MiB |"
  echo "|---|---|"
  echo "| after start, $TENANTS tenants (each with a canary) | $(python3 -c "print(round($START/1024,1))") |"
  echo "| $OPEN connections open and idle | $(python3 -c "print(round($HELD/1024,1))") |"
  echo "| after they closed | $(python3 -c "print(round($AFTER/1024,1))") |"
  echo
  echo "Per idle connection: $(python3 -c "print(round(($HELD-$START)/max(1,$OPEN),2))") KiB."
} | tee "$OUT/idle-memory.md"
