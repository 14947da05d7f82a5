#!/usr/bin/env bash
# Per-request CPU of fledge against a bare Pingora passthrough built the
# same way (examples/passthrough.rs), same backend (nginx, fixed ~200-byte
# JSON), same load tool (wrk). Each proxy runs with one thread, pinned to
# CPU 0; nginx and wrk share CPU 1. CPU per request = the proxy's
# utime+stime over the run (from /proc/PID/stat) / requests served.
# Rounds alternate between proxies; the summary reports medians.
#
# Usage: load-tests/bench/routing-overhead.sh [ROUNDS] [SECONDS] [CONNECTIONS]
# Needs: nginx, wrk (apt-get install nginx wrk), a release build
# (cargo build --release --bins --examples). Traffic stays on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
SECS=${2:-10}
CONNS=${3:-32}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FLEDGE=$ROOT/target/release/fledge
PASS=$ROOT/target/release/examples/passthrough
for b in "$FLEDGE" "$PASS"; do [ -x "$b" ] || { echo "missing $b: cargo build --release --bins --examples" >&2; exit 1; }; done
command -v nginx >/dev/null && command -v wrk >/dev/null || { echo "needs nginx and wrk" >&2; exit 1; }

WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; nginx -p "$WORK" -c "$WORK/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

B1=$(port); B2=$(port); PF=$(port); PP=$(port); PX=$(port)

BODY='{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2,"name":"Mitchell Admin","company_id":1,"partner_id":3,"db":"acme","lang":"en_US","tz":"Europe/Brussels"}}'
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/nginx-error.log;
pid $WORK/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000;
  server { listen 127.0.0.1:$B1; location / { default_type application/json; return 200 '$BODY'; } }
  server { listen 127.0.0.1:$B2; location / { default_type application/json; return 200 '$BODY'; } }
}
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/nginx.conf"

cat > "$WORK/fledge.yaml" <<YAML
listen: "127.0.0.1:$PF"
threads: 1
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
FLEDGE_LOG=warn taskset -c 0 "$FLEDGE" run --config "$WORK/fledge.yaml" > "$WORK/fledge.log" 2>&1 & PIDS+=($!); FPID=$!
taskset -c 0 "$PASS" "127.0.0.1:$PP" "127.0.0.1:$B1" 1 > "$WORK/pass.log" 2>&1 & PIDS+=($!); PPID_=$!
taskset -c 0 "$PASS" "127.0.0.1:$PX" "127.0.0.1:$B1" 1 forwarded > "$WORK/passx.log" 2>&1 & PIDS+=($!); PXID=$!
for p in $PF $PP $PX; do wait_port "$p"; done

# A returning browser: Odoo session plus the version cookie fledge gave it.
PIN=$(curl -s -o /dev/null -D - -H 'Host: acme.example.com' -b 'session_id=8d3c1f0e5a9b4c2d7e6f' "http://127.0.0.1:$PF/" | tr -d '\r' | sed -n 's/^[Ss]et-[Cc]ookie: \(fledge_version=[^;]*\).*/\1/p')
COOKIE="session_id=8d3c1f0e5a9b4c2d7e6f; $PIN"

HZ=$(getconf CLK_TCK)
CSV=$OUT/routing-overhead.csv
echo "round,proxy,requests,rps,p50_ms,p99_ms,cpu_us_per_req,rss_kib" > "$CSV"
run() { # name pid port
  local name=$1 pid=$2 p=$3 t0 t1 out reqs
  t0=$(ticks "$pid")
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${SECS}s" --latency -H 'Host: acme.example.com' -H "Cookie: $COOKIE" "http://127.0.0.1:$p/web/session/get_session_info")
  t1=$(ticks "$pid")
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p50=$(echo "$out" | awk '$1=="50%" {print $2}')
  p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  cpu=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/$reqs, 2))")
  echo "$r,$name,$reqs,$rps,$p50,$p99,$cpu,$rss" >> "$CSV"
  echo "round $r $name: $rps req/s, p99 $p99, $cpu us CPU/req, RSS $rss KiB"
}
# Warm-up.
taskset -c 1 wrk -t1 -c"$CONNS" -d2s -H 'Host: acme.example.com' "http://127.0.0.1:$PF/" > /dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PP/" > /dev/null
taskset -c 1 wrk -t1 -c"$CONNS" -d2s "http://127.0.0.1:$PX/" > /dev/null
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then
    run passthrough $PPID_ $PP; run passthrough+forwarded $PXID $PX; run fledge $FPID $PF
  else
    run fledge $FPID $PF; run passthrough+forwarded $PXID $PX; run passthrough $PPID_ $PP
  fi
done

python3 - "$CSV" "$OUT/routing-overhead.md" "$ROUNDS" "$SECS" "$CONNS" <<'PY'
import csv, statistics, sys, subprocess, platform
rows = list(csv.DictReader(open(sys.argv[1])))
def num(v):
    for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * k
    return float(v)
med = lambda name, key: statistics.median(num(r[key]) for r in rows if r["proxy"] == name)
cpu = lambda: subprocess.run(["sh","-c","lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True).stdout.strip()
f, p, x = (med(n, "cpu_us_per_req") for n in ("fledge", "passthrough", "passthrough+forwarded"))
with open(sys.argv[2], "w") as out:
    out.write(f"# fledge vs bare Pingora passthrough — per-request CPU\n\n")
    out.write(f"CPU: {cpu()}; kernel {platform.release()}; proxies pinned to CPU 0 with 1 thread, nginx backend and wrk on CPU 1; "
              f"wrk -t1 -c{sys.argv[5]} -d{sys.argv[4]}s, {sys.argv[3]} alternating rounds, medians. "
              f"fledge: 1000 tenants, canary at 20 %, request with session_id + version cookie (a returning browser).\n\n")
    out.write("| proxy | req/s | p50 | p99 | CPU µs/req | RSS KiB |\n|---|---|---|---|---|---|\n")
    for n in ("passthrough", "passthrough+forwarded", "fledge"):
        out.write(f"| {n} | {med(n,'rps'):.0f} | {med(n,'p50_ms'):.3f} ms | {med(n,'p99_ms'):.3f} ms | {med(n,'cpu_us_per_req'):.2f} | {med(n,'rss_kib'):.0f} |\n")
    out.write(f"\nfledge / bare passthrough, CPU per request: **{f/p:.3f}** ({(f/p-1)*100:+.1f} %)\n")
    out.write(f"fledge / passthrough setting the same X-Forwarded-* headers (routing alone): **{f/x:.3f}** ({(f/x-1)*100:+.1f} %)\n")
print(open(sys.argv[2]).read())
PY
