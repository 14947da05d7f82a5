#!/usr/bin/env bash
# What a fleet costs and how fast it agrees, three replicas on one machine:
#  1. an operator's change on replica A → applied on B and C (ROUNDS weight
#     changes; p50/p99 of the time until both serve it);
#  2. Redis's load with TENANTS tenants of which CANARIES have an active
#     canary, all canaries busy (wrk at RATE requests/s in all, spread over
#     the replicas and the canary tenants): commands/s and bytes/s from
#     Redis's own INFO, over SECONDS;
#  3. the CPU the fleet costs each replica: the same load against the same
#     three replicas without `fleet:`, same run.
# Requires a release build, nginx (backend), wrk, redis-server.
# Usage: load-tests/bench/fleet.sh [SECONDS] [ROUNDS]
set -euo pipefail
. "$(dirname "$0")/lib.sh"
SECS=${1:-30}
ROUNDS=${2:-200}
TENANTS=${TENANTS:-10000}
CANARIES=${CANARIES:-100}
RATE=${RATE:-3000}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
PIDS=()
RPID=""
cleanup() {
  kill "${PIDS[@]}" $RPID 2>/dev/null || true
  nginx -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
B1=$(port); B2=$(port); R=$(port)
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; return 200 '{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0"}}'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; return 200 '{"jsonrpc":"2.0","id":1,"result":{"server_version":"18.0"}}'; } } }
NGINX
nginx -p "$WORK" -c "$WORK/nginx.conf"
redis-server --port "$R" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" > "$WORK/redis.log" 2>&1 & RPID=$!
wait_port "$R"
export FLEDGE_BENCH_COOKIE_SECRET=fleet-bench-secret-0123456789abcdef
export FLEDGE_BENCH_TOKEN=fleet-bench-token-0123456789abcdef

# config I FLEET(0|1): replica I's file.
config() {
  local i=$1 fleet=$2
  { printf 'listen: "127.0.0.1:%s"\nthreads: 1\nstate_dir: "%s/state-%s-%s"\n' "${P[$i]}" "$WORK" "$i" "$fleet"
    printf 'admin: { listen: "127.0.0.1:%s", token_env: FLEDGE_BENCH_TOKEN }\n' "${A[$i]}"
    printf 'cookies: { secret_env: FLEDGE_BENCH_COOKIE_SECRET }\n'
    if [ "$fleet" = 1 ]; then
      printf 'fleet: { redis_url: "redis://127.0.0.1:%s/0", name: bench, replica_id: "r%s" }\n' "$R" "$i"
    fi
    printf 'pools:\n  stable: { workers: ["127.0.0.1:%s"] }\n  canary: { workers: ["127.0.0.1:%s"] }\n' "$B1" "$B2"
    # Judged but never rolled back: the figures flow all run long.
    printf 'policies:\n  default:\n    analysis: { min_requests: 1000000 }\ntenants:\n'
    for t in $(seq 0 $((TENANTS - 1))); do
      if [ "$t" -lt "$CANARIES" ]; then
        printf '  t%s: { hosts: ["t%s.example.com"], stable: stable, canary: canary, canary_weight: 50 }\n' "$t" "$t"
      else
        printf '  t%s: { hosts: ["t%s.example.com"], stable: stable }\n' "$t" "$t"
      fi
    done
  } > "$WORK/fledge-$i.yaml"
}

P=(); A=()
for i in 0 1 2; do P+=("$(port)"); A+=("$(port)"); done
start() { # FLEET(0|1)
  PIDS=()
  for i in 0 1 2; do
    config "$i" "$1"
    FLEDGE_LOG=warn "$ROOT/target/release/fledge" run --config "$WORK/fledge-$i.yaml" > "$WORK/fledge-$i-$1.log" 2>&1 &
    PIDS+=($!)
  done
  for i in 0 1 2; do wait_port "${P[$i]}"; wait_port "${A[$i]}"; done
}
stop() { kill "${PIDS[@]}" 2>/dev/null || true; wait "${PIDS[@]}" 2>/dev/null || true; PIDS=(); }

# wrk: each request to one of the canary tenants, with a fresh session now
# and then, paced by wrk's delay() to RATE in all.
cat > "$WORK/spread.lua" <<LUA
local n, canaries = 0, $CANARIES
local pause = 1000 * 30 / ($RATE / 3)
request = function()
  n = n + 1
  local t = n % canaries
  return wrk.format("GET", "/web/login", { ["Host"] = "t" .. t .. ".example.com", ["Cookie"] = "session_id=s" .. math.random(1, 100000) })
end
delay = function() return pause end
LUA

redis_stat() { redis-cli -p "$R" INFO stats | tr -d '\r' | awk -F: -v k="$1" '$1==k {print $2}'; }

load() { # FLEET(0|1): prints "cpu_ticks_per_replica_per_s cmds_per_s in_bytes_per_s out_bytes_per_s requests"
  local c0 i0 o0 t0 c1 i1 o1 t1 reqs=0
  c0=$(redis_stat total_commands_processed); i0=$(redis_stat total_net_input_bytes); o0=$(redis_stat total_net_output_bytes)
  t0=$(ticks "${PIDS[@]}")
  local w=()
  for i in 0 1 2; do
    wrk -t1 -c30 -d"${SECS}s" -s "$WORK/spread.lua" "http://127.0.0.1:${P[$i]}/" > "$WORK/wrk-$i-$1.txt" 2>&1 & w+=($!)
  done
  wait "${w[@]}"
  t1=$(ticks "${PIDS[@]}")
  c1=$(redis_stat total_commands_processed); i1=$(redis_stat total_net_input_bytes); o1=$(redis_stat total_net_output_bytes)
  for i in 0 1 2; do reqs=$((reqs + $(awk '/requests in/ {print $1}' "$WORK/wrk-$i-$1.txt"))); done
  echo "$(( (t1 - t0) )) $(( (c1 - c0) / SECS )) $(( (i1 - i0) / SECS )) $(( (o1 - o0) / SECS )) $reqs"
}

echo "fleet: $TENANTS tenants, $CANARIES canaries, 3 replicas, ${SECS}s of load at ~$RATE req/s" >&2
start 1
# Wait until the three see each other and one leads.
python3 - "${A[0]}" <<'PY'
import json, sys, time, urllib.request, os
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v1/fleet",
                             headers={"Authorization": "Bearer " + os.environ["FLEDGE_BENCH_TOKEN"]})
for _ in range(200):
    f = json.load(urllib.request.urlopen(req))
    if f["totals"]["live_replicas"] == 3 and f["leader"]:
        break
    time.sleep(0.1)
PY

# 1. Propagation of an operator's change.
python3 - "$ROUNDS" "${A[@]}" > "$WORK/propagation.txt" <<'PY'
import http.client, json, os, statistics, sys, time
rounds, admins = int(sys.argv[1]), sys.argv[2:]
auth = {"Authorization": "Bearer " + os.environ["FLEDGE_BENCH_TOKEN"], "Content-Type": "application/json"}
conns = [http.client.HTTPConnection("127.0.0.1", int(a)) for a in admins]
def call(c, method, path, body=None):
    c.request(method, path, body=body, headers=auth)
    r = c.getresponse()
    return r.status, json.loads(r.read() or b"null")
took = []
for i in range(rounds):
    w = (i * 37) % 100 + 0.5
    t0 = time.perf_counter()
    status, _ = call(conns[0], "PUT", "/api/v1/tenants/t0/weight", json.dumps({"weight": w}))
    assert status == 200, status
    pending = set(range(1, len(conns)))
    while pending:
        for j in list(pending):
            if call(conns[j], "GET", "/api/v1/tenants/t0")[1]["weight"] == w:
                pending.discard(j)
    took.append((time.perf_counter() - t0) * 1000)
took.sort()
q = lambda p: took[min(len(took) - 1, int(len(took) * p))]
print(f"{len(took)} {q(0.5):.1f} {q(0.99):.1f} {took[-1]:.1f}")
PY
read -r PROP_N PROP_P50 PROP_P99 PROP_MAX < "$WORK/propagation.txt"
echo "propagation: $PROP_N changes, p50 $PROP_P50 ms, p99 $PROP_P99 ms, max $PROP_MAX ms" >&2

# 2. and 3. Redis load and CPU, with the fleet, then without.
read -r FT FC FI FO FR < <(load 1)
stop
redis-cli -p "$R" FLUSHALL > /dev/null
start 0
read -r NT _ _ _ NR < <(load 0)
stop
HZ=$(getconf CLK_TCK)
python3 - "$SECS" "$HZ" "$FT" "$FC" "$FI" "$FO" "$FR" "$NT" "$NR" "$PROP_N" "$PROP_P50" "$PROP_P99" "$PROP_MAX" "$TENANTS" "$CANARIES" <<'PY' | tee "$OUT/fleet.md"
import sys
secs, hz, ft, fc, fi, fo, fr, nt, nr, pn, p50, p99, pmax, tenants, canaries = sys.argv[1:]
secs, hz = float(secs), float(hz)
cpu = lambda ticks, reqs: (float(ticks) / hz / 3 / secs, float(ticks) / hz / float(reqs) * 1e6)
(f_cpu, f_us), (n_cpu, n_us) = cpu(ft, fr), cpu(nt, nr)
print(f"# Fleet: 3 replicas, {tenants} tenants, {canaries} active canaries, {secs:.0f} s of load\n")
print("| figure | value |\n|---|---|")
print(f"| operator's change on A → served by B and C, p50 / p99 / max ({pn} changes) | {p50} / {p99} / {pmax} ms |")
print(f"| Redis commands/s, whole fleet | {int(fc)} |")
print(f"| Redis bytes/s in / out, whole fleet | {int(fi) / 1024:.1f} / {int(fo) / 1024:.1f} KiB |")
print(f"| requests served with the fleet / without (same load) | {fr} / {nr} |")
print(f"| CPU per replica with the fleet / without | {f_cpu * 100:.1f} % / {n_cpu * 100:.1f} % of a core |")
print(f"| CPU per request with the fleet / without | {f_us:.1f} / {n_us:.1f} µs |")
print(f"| the fleet's own work per replica | {(f_cpu - n_cpu) * 1000:.1f} ms of CPU per second (with/without ratio {f_us / n_us:.3f} per request) |")
PY
