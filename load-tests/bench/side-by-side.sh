#!/usr/bin/env bash
# fledge side by side with the proxies people would pick instead: the same
# backend (nginx answering a fixed ~200-byte JSON-RPC result, two "pools"
# on two ports), the same load tool (wrk), each proxy with one worker
# pinned to CPU 0, the backend and wrk on CPU 1:
#   direct   wrk → backend, no proxy (the floor)
#   nginx    split_clients on the session cookie, 20 % to the canary port,
#            upstream keep-alive
#   haproxy  the same split by hashing the session cookie over weighted
#            servers (80/20), upstream keep-alive (http-reuse always)
#   fledge   1000 tenants, the canary at 20 %, sticky by session cookie
#   fledge-pingora  the same fledge with FLEDGE_PINGORA_PATH=1: every
#            request through Pingora's proxy, none on fledge's own path
#            (src/proxy/fast_path.rs) -- what that path saves
# With STICKS=1, two measuring sticks as well (`cargo build --release
# --examples`; both to the stable port, no split): passthrough+forwarded,
# Pingora's proxy with only X-Forwarded-* set, and core-loop, the same
# work done by a request loop of our own over pingora-core
# (examples/core-loop.rs) -- what leaving Pingora's proxy layer would save.
# The request is a returning browser's: Odoo session cookie (and, for
# fledge, the signed version cookie it handed out). Rounds alternate the
# order; the summary reports medians and ratios against nginx and HAProxy.
# CPU per request = the proxy worker's utime+stime (/proc/PID/stat) over
# the requests served; RSS from /proc/PID/status.
#
# Usage: [RATE=req/s] load-tests/bench/side-by-side.sh [ROUNDS] [SECONDS] [CONNECTIONS] [THREADS]
#   THREADS (default 1): proxy worker threads/processes, pinned to CPUs
#   0..THREADS-1 (wrk and the backend then share the last CPU).
#   RATE: equal load instead of each proxy's saturation: h2load --h1 sends
#   RATE requests a second in all (spread over the connections) to every
#   proxy, and latency comes from its per-request log. Set it below the
#   slowest proxy's saturation rate. Writes side-by-side-t<THREADS>-r<RATE>.
#   POST=1: the request is a JSON-RPC call as Odoo's web client makes it, a
#   POST with a small JSON body, rather than a GET (not with STICKS: the
#   core-loop stick takes no bodies). Writes side-by-side-t<THREADS>[-r<RATE>]-post.
# Needs: nginx, haproxy, wrk (h2load for RATE); cargo build --release -p fledge.
# Traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-10}
CONNS=${3:-32}
THREADS=${4:-1}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FLEDGE=${FLEDGE:-$ROOT/target/release/fledge}
[ -x "$FLEDGE" ] || { echo "missing $FLEDGE: cargo build --release -p fledge" >&2; exit 1; }
for t in nginx haproxy wrk taskset; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done
[ -z "${RATE:-}" ] || command -v h2load >/dev/null || { echo "needs h2load for RATE" >&2; exit 1; }
NCPU=$(nproc)
PROXY_CPUS=$(seq -s, 0 $((THREADS - 1)))
LOAD_CPU=$((NCPU - 1))
[ "$THREADS" -lt "$NCPU" ] || LOAD_CPU=$((NCPU - 1))

POST=${POST:-}
[ -z "$POST" ] || [ -z "${STICKS:-}" ] || { echo "POST=1 does not go with STICKS=1 (core-loop takes no bodies)" >&2; exit 1; }
WORK=$(mktemp -d)
# The JSON-RPC call POST=1 sends (wrk script; h2load's data file).
CALL='{"jsonrpc":"2.0","method":"call","params":{"model":"res.partner","method":"read","args":[[3]],"kwargs":{"fields":["name"]}}}'
printf '%s' "$CALL" > "$WORK/call.json"
printf 'wrk.method = "POST"\nwrk.body = [[%s]]\nwrk.headers["Content-Type"] = "application/json"\n' "$CALL" > "$WORK/call.lua"
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for c in backend proxy; do nginx -p "$WORK/$c" -c "$WORK/$c/nginx.conf" -s stop 2>/dev/null || true; done
  [ -n "${KEEP:-}" ] && echo "kept $WORK" || rm -rf "$WORK"
}
trap cleanup EXIT
B1=$(port); B2=$(port); PN=$(port); PH=$(port); PF=$(port); PW=$(port); PP=$(port); PC=$(port)

# The backend: two "pools" of one nginx worker on the load CPU.
BODY='{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2,"name":"Mitchell Admin","company_id":1,"partner_id":3,"db":"acme","lang":"en_US","tz":"Europe/Brussels"}}'
mkdir -p "$WORK/backend" "$WORK/proxy"
cat > "$WORK/backend/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/backend/error.log;
pid $WORK/backend/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; add_header X-Odoo-Version 17.0; return 200 '$BODY'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; add_header X-Odoo-Version 18.0; return 200 '$BODY'; } }
}
NGINX
taskset -c $LOAD_CPU nginx -p "$WORK/backend" -c "$WORK/backend/nginx.conf"

# nginx as the proxy.
nginx_proxy_conf "$WORK/proxy" "$PN" "$B1" "$B2" "$THREADS" \
  "$(python3 -c "print(''.join('1' if i < $THREADS else '0' for i in range($NCPU))[::-1])")"
nginx -p "$WORK/proxy" -c "$WORK/proxy/nginx.conf"

# HAProxy as the proxy.
haproxy_cfg "$WORK/haproxy.cfg" "$PH" "$B1" "$B2" "$THREADS" \
  "$(echo $PROXY_CPUS | tr , ' ' | awk '{print $1"-"$NF}')"
haproxy -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 & PIDS+=($!); HPID=$!

# fledge.
cat > "$WORK/fledge.yaml" <<YAML
listen: "127.0.0.1:$PF"
threads: $THREADS
admin: { listen: "127.0.0.1:$(port)" }
state_dir: "$WORK/state"
pools:
  stable: { workers: ["127.0.0.1:$B1"] }
  canary: { workers: ["127.0.0.1:$B2"] }
tenants:
  acme:
    hosts: ["acme.example.com", "*.acme.example.com"]
    stable: stable
    canary: canary
    canary_weight: 20
YAML
for i in $(seq 1 999); do
  printf '  t%s:\n    hosts: ["t%s.example.com"]\n    stable: stable\n' "$i" "$i" >> "$WORK/fledge.yaml"
done
RUST_LOG=warn taskset -c "$PROXY_CPUS" "$FLEDGE" run --config "$WORK/fledge.yaml" > "$WORK/fledge.log" 2>&1 & PIDS+=($!); FPID=$!
sed -e "s/127.0.0.1:$PF/127.0.0.1:$PW/" -e "s#$WORK/state#$WORK/state-pp#" -e "s/^admin: .*/admin: { listen: \"127.0.0.1:$(port)\" }/" "$WORK/fledge.yaml" > "$WORK/fledge-pp.yaml"
FLEDGE_PINGORA_PATH=1 RUST_LOG=warn taskset -c "$PROXY_CPUS" "$FLEDGE" run --config "$WORK/fledge-pp.yaml" > "$WORK/fledge-pp.log" 2>&1 & PIDS+=($!); WPID=$!
STICKS=${STICKS:-}
if [ -n "$STICKS" ]; then
  EX=$ROOT/target/release/examples
  [ -x "$EX/core-loop" ] && [ -x "$EX/passthrough" ] || { echo "STICKS=1 needs cargo build --release --examples" >&2; exit 1; }
  taskset -c "$PROXY_CPUS" "$EX/passthrough" "127.0.0.1:$PP" "127.0.0.1:$B1" "$THREADS" forwarded > "$WORK/passthrough.log" 2>&1 & PIDS+=($!); PPID_=$!
  taskset -c "$PROXY_CPUS" "$EX/core-loop" "127.0.0.1:$PC" "127.0.0.1:$B1" "$THREADS" > "$WORK/core-loop.log" 2>&1 & PIDS+=($!); CPID=$!
  wait_port $PP; wait_port $PC
fi
for p in $B1 $B2 $PN $PH $PF $PW; do wait_port $p; done
NPID=$(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | head -1)
[ "$THREADS" -gt 1 ] && NPIDS=$(pgrep -P "$(cat "$WORK/proxy/nginx.pid")" | tr '\n' ' ') || NPIDS=$NPID
taskset -cp "$PROXY_CPUS" "$HPID" > /dev/null

SESSION='session_id=8d3c1f0e5a9b4c2d7e6f'
PIN=$(curl -s -o /dev/null -D - -H 'Host: acme.example.com' -b "$SESSION" "http://127.0.0.1:$PF/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(fledge_version=[^;]*\).*/\1/p')
COOKIE="$SESSION; $PIN"

HZ=$(getconf CLK_TCK)
RATE=${RATE:-}
# h2load does not reconnect, and fledge (like nginx's default) closes a
# connection after 1 000 requests: enough connections that none reaches it.
HCONNS=$CONNS
[ -z "$RATE" ] || HCONNS=$(( (RATE * SECS + 899) / 900 > CONNS ? (RATE * SECS + 899) / 900 : CONNS ))
TAG=t$THREADS${RATE:+-r$RATE}${POST:+-post}
CSV=$OUT/side-by-side-$TAG.csv
echo "round,proxy,requests,rps,p50_ms,p99_ms,cpu_us_per_req,rss_kib,user_us_per_req,sys_us_per_req" > "$CSV"
run() { # name port pids...
  local name=$1 p=$2; shift 2
  local u0 s0 u1 s1 out reqs rps p50 p99 cpu usr sys mem
  read -r u0 s0 < <(ticks_us "$@")
  if [ -n "$RATE" ]; then
    rm -f "$WORK/h2load.log"
    taskset -c $LOAD_CPU h2load --h1 -t1 -c"$HCONNS" --rps="$(python3 -c "print($RATE/$HCONNS)")" -D "$SECS" \
      --log-file="$WORK/h2load.log" -H ':authority: acme.example.com' -H "Cookie: $COOKIE" \
      ${POST:+-d "$WORK/call.json" -H 'content-type: application/json'} \
      "http://127.0.0.1:$p/web/session/get_session_info" > /dev/null
    read -r u1 s1 < <(ticks_us "$@")
    # (h2load sets Host from :authority; a Host header of ours would be a
    # second one, answered 400.) Log lines: start (µs since epoch),
    # status, duration (µs).
    read -r reqs rps p50 p99 < <(python3 - "$WORK/h2load.log" "$SECS" <<'PY'
import sys
d = sorted(int(l.split()[2]) for l in open(sys.argv[1]) if l.split()[1] == "200")
q = lambda f: d[min(len(d) - 1, int(f * len(d)))] / 1000
print(len(d), round(len(d) / float(sys.argv[2]), 1), f"{q(0.5):.3f}ms", f"{q(0.99):.3f}ms")
PY
)
  else
    out=$(taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d"${SECS}s" --latency ${POST:+-s "$WORK/call.lua"} -H 'Host: acme.example.com' -H "Cookie: $COOKIE" "http://127.0.0.1:$p/web/session/get_session_info")
    read -r u1 s1 < <(ticks_us "$@")
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$out" | awk '$1=="50%" {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  fi
  mem=$(rss "$@")
  read -r cpu usr sys < <(python3 -c "
per = lambda t: round(t / $HZ * 1e6 / $reqs, 2) if $# else 0
print(per($u1 + $s1 - $u0 - $s0), per($u1 - $u0), per($s1 - $s0))")
  echo "$r,$name,$reqs,$rps,$p50,$p99,$cpu,$mem,$usr,$sys" >> "$CSV"
  echo "round $r $name: $rps req/s, p50 $p50, p99 $p99, $cpu us CPU/req ($usr user, $sys system), RSS $mem KiB"
}
# Warm-up.
for p in $B1 $PN $PH $PF $PW ${STICKS:+$PP $PC}; do taskset -c $LOAD_CPU wrk -t1 -c"$CONNS" -d2s -H 'Host: acme.example.com' -H "Cookie: $COOKIE" "http://127.0.0.1:$p/" > /dev/null; done
NAMES=(direct nginx haproxy fledge fledge-pingora ${STICKS:+passthrough+forwarded core-loop})
for r in $(seq 1 "$ROUNDS"); do
  order=("${NAMES[@]}"); [ $((r % 2)) -eq 0 ] && order=($(printf '%s\n' "${NAMES[@]}" | tac))
  for n in "${order[@]}"; do
    case $n in
      direct) run direct $B1 ;;
      nginx) run nginx $PN $NPIDS ;;
      haproxy) run haproxy $PH $HPID ;;
      fledge) run fledge $PF $FPID ;;
      fledge-pingora) run fledge-pingora $PW $WPID ;;
      passthrough+forwarded) run passthrough+forwarded $PP $PPID_ ;;
      core-loop) run core-loop $PC $CPID ;;
    esac
  done
done

python3 - "$CSV" "$OUT/side-by-side-$TAG.md" "$ROUNDS" "$SECS" "$CONNS" "$THREADS" "$("$FLEDGE" --version 2>/dev/null || echo fledge)" "$RATE" "$HCONNS" "$POST" <<'PY'
import csv, statistics, sys, subprocess, platform
rows = list(csv.DictReader(open(sys.argv[1])))
def num(v):
    for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * k
    return float(v)
med = lambda name, key: statistics.median(num(r[key]) for r in rows if r["proxy"] == name)
sh = lambda c: subprocess.run(["sh", "-c", c], capture_output=True, text=True).stdout.strip()
rounds, secs, conns, threads = sys.argv[3:7]
cpu_name = sh('lscpu | grep "Model name" | sed "s/.*: *//"')
ncpu, nginx_v, haproxy_v = sh('nproc'), sh('nginx -v 2>&1'), sh('haproxy -v | head -1')
with open(sys.argv[2], "w") as out:
    rate = sys.argv[8]
    load = f"h2load --h1 -t1 -c{sys.argv[9]} at {rate} req/s in all for {secs} s" if rate else f"wrk -t1 -c{conns} -d{secs}s"
    out.write(f"# fledge side by side with nginx and HAProxy ({threads} proxy thread{'s' if threads != '1' else ''}"
              f"{f', equal load: {rate} req/s' if rate else ''})\n\n")
    out.write(f"`{'RATE=' + rate + ' ' if rate else ''}load-tests/bench/side-by-side.sh {rounds} {secs} {conns} {threads}`. "
              f"CPU: {cpu_name}, {ncpu} vCPUs; kernel {platform.release()}. "
              f"{nginx_v}; {haproxy_v}; {sys.argv[7]}. "
              f"Proxies on CPU 0..{int(threads)-1}, backend (nginx, fixed 200-byte JSON) and {load} on the last CPU; "
              f"{rounds} alternating rounds, medians. Same request through all: a returning browser's JSON-RPC call "
              f"({'a POST with a small JSON body' if sys.argv[10] else 'a GET'}), 20 % canary split by session cookie.\n\n")
    out.write("| | req/s | p50 | p99 | proxy CPU µs/req | of it user / system | RSS MiB |\n|---|---|---|---|---|---|---|\n")
    names = ["direct", "nginx", "haproxy", "fledge", "fledge-pingora"]
    sticks = any(r["proxy"] == "core-loop" for r in rows)
    names += ["passthrough+forwarded", "core-loop"] if sticks else []
    for n in names:
        proxy = n != "direct"
        cpu = f"{med(n,'cpu_us_per_req'):.2f}" if proxy else "—"
        split = f"{med(n,'user_us_per_req'):.2f} / {med(n,'sys_us_per_req'):.2f}" if proxy else "—"
        mem = f"{med(n,'rss_kib')/1024:.1f}" if proxy else "—"
        out.write(f"| {n} | {med(n,'rps'):.0f} | {med(n,'p50_ms'):.3f} ms | {med(n,'p99_ms'):.3f} ms | {cpu} | {split} | {mem} |\n")
    f = lambda k: med("fledge", k)
    out.write("\n| fledge / … | CPU per request | req/s | p99 |\n|---|---|---|---|\n")
    for ref in ("nginx", "haproxy"):
        out.write(f"| {ref} | **{f('cpu_us_per_req')/med(ref,'cpu_us_per_req'):.2f}×** | {f('rps')/med(ref,'rps'):.2f}× | {f('p99_ms')/med(ref,'p99_ms'):.2f}× |\n")
    w = lambda k: med("fledge-pingora", k)
    out.write(f"\nfledge's own path for the common request (fledge) / every request through Pingora's proxy (fledge-pingora): "
              f"CPU per request {f('cpu_us_per_req')/w('cpu_us_per_req'):.2f}×, req/s {f('rps')/w('rps'):.2f}×, p99 {f('p99_ms')/w('p99_ms'):.2f}×.\n")
    if sticks:
        c = lambda k: med("core-loop", k)
        out.write(f"\nMeasuring sticks (no split, stable port only): core-loop / passthrough+forwarded: CPU per request "
                  f"{c('cpu_us_per_req')/med('passthrough+forwarded','cpu_us_per_req'):.2f}×; core-loop / nginx "
                  f"{c('cpu_us_per_req')/med('nginx','cpu_us_per_req'):.2f}×, / HAProxy {c('cpu_us_per_req')/med('haproxy','cpu_us_per_req'):.2f}×.\n")
print(open(sys.argv[2]).read())
PY
