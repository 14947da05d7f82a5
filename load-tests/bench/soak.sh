#!/usr/bin/env bash
# A day under load, measured: fledge at saturation for MINUTES (hours on
# request), with churn all along, reporting resident memory, open
# descriptors, p99 and errors over time, and a chart.
#
# Load: wrk, every request from a random session (a fresh session_id, so
# the split, the sticky cookies and the failing-client groups see new
# clients all the time), JSON-RPC-sized answers. Churn, all at once:
#   - the canary weight changed through the admin API every second;
#   - the config file rewritten (atomic rename, a tenant added or dropped)
#     every 5 s: a reload;
#   - the TLS certificate renewed every 10 s (a fresh pair written over the
#     old one), with a TLS request after each renewal;
#   - a stable worker restarted every 20 s (stopped for 2 s: its connects
#     are refused, fledge retries on the other and ejects it, then it comes
#     back).
# Backends: three one-process nginx (two stable workers, one canary),
# answering at once. The proxy on CPU 0, everything else on CPU 1 (one
# core each, as the side-by-side runs).
#
# Every INTERVAL seconds (default 10): one wrk run's req/s, p99 and errors
# (non-2xx answers and socket errors), fledge's RSS and descriptors, and
# its counters of reloads, certificate loads and retries, in soak.csv;
# soak.md summarises (RSS and descriptors after warm-up: first, last, max)
# and soak.svg charts RSS, descriptors, p99 and req/s over time.
#
# Usage: load-tests/bench/soak.sh [MINUTES] [CONNECTIONS]
#        SHORT=1 load-tests/bench/soak.sh      # 3 minutes
# FLEDGE_BIN=path runs another fledge binary (an older build, to compare).
# Requires a release build, nginx, wrk, openssl, curl, python3. Traffic
# stays on 127.0.0.1. Output: OUT (default load-tests/runs/<date>-<host>/).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
MINUTES=${1:-30}
[ "${SHORT:-0}" = 1 ] && MINUTES=3
CONNS=${2:-64}
INTERVAL=${INTERVAL:-10}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
WORK=$(mktemp -d)
chmod 700 "$WORK"
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT"
FPID=""; CHURN=()
stop_all() {
  for p in "${CHURN[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$FPID" 2>/dev/null || true
  for b in b1 b2 b3; do nginx -p "$WORK/$b" -c "$WORK/$b/nginx.conf" -s stop 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap stop_all EXIT

B1=$(port); B2=$(port); B3=$(port); P=$(port); T=$(port); A=$(port)
BODY='{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2,"name":"Mitchell Admin","company_id":1,"partner_id":3,"db":"acme","lang":"en_US","tz":"Europe/Brussels"}}'
backend() { # name port
  mkdir -p "$WORK/$1"
  cat > "$WORK/$1/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/$1/error.log;
pid $WORK/$1/nginx.pid;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000;
  server { listen 127.0.0.1:$2; location / { default_type application/json; return 200 '$BODY'; } } }
NGINX
  taskset -c 1 nginx -p "$WORK/$1" -c "$WORK/$1/nginx.conf"
}
backend b1 "$B1"; backend b2 "$B2"; backend b3 "$B3"

mkdir -p "$WORK/certs" "$WORK/conf"
renew_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=acme.example.com -keyout "$WORK/certs/.acme.key.tmp" -out "$WORK/certs/.acme.crt.tmp" \
    -addext 'subjectAltName=DNS:acme.example.com' 2>/dev/null
  chmod 600 "$WORK/certs/.acme.key.tmp"
  mv "$WORK/certs/.acme.key.tmp" "$WORK/certs/acme.key"
  mv "$WORK/certs/.acme.crt.tmp" "$WORK/certs/acme.crt"
}
renew_cert
write_config() { # extra tenants (0 or 1)
  { printf 'listen: "127.0.0.1:%s"\nthreads: 1\nstate_dir: "%s/state"\nadmin: { listen: "127.0.0.1:%s" }\n' "$P" "$WORK" "$A"
    printf 'tls: { listen: "127.0.0.1:%s", certs_dir: "%s/certs" }\n' "$T" "$WORK"
    printf 'pools:\n  stable: { workers: ["127.0.0.1:%s", "127.0.0.1:%s"], health_check: { interval_ms: 500 } }\n' "$B1" "$B2"
    printf '  canary: { workers: ["127.0.0.1:%s"] }\ntenants:\n' "$B3"
    printf '  acme:\n    hosts: ["acme.example.com"]\n    stable: stable\n    canary: canary\n    canary_weight: 20\n'
    for i in $(seq 1 "$1"); do printf '  extra%s:\n    hosts: ["extra%s.example.com"]\n    stable: stable\n' "$i" "$i"; done
  } > "$WORK/conf/.fledge.yaml.tmp"
  mv "$WORK/conf/.fledge.yaml.tmp" "$WORK/conf/fledge.yaml"
}
write_config 0
FLEDGE_LOG=warn taskset -c 0 "${FLEDGE_BIN:-$ROOT/target/release/fledge}" run --config "$WORK/conf/fledge.yaml" > "$WORK/fledge.log" 2>&1 & FPID=$!
wait_port "$P"
TOKEN=$(cat "$WORK/state/admin.token")
metric() { curl -s -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$A/metrics" | awk -v m="$1" 'index($0, m) == 1 {s += $2} END {print s + 0}'; }

# A fresh session for every request.
cat > "$WORK/random-session.lua" <<'LUA'
math.randomseed(os.time())
request = function()
  local sid = string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("POST", "/web/dataset/call_kw/res.partner/read",
    { ["Host"] = "acme.example.com", ["Content-Type"] = "application/json", ["Cookie"] = "session_id=" .. sid },
    '{"jsonrpc":"2.0","method":"call","params":{"model":"res.partner","method":"read","args":[[1]]},"id":1}')
end
LUA

# The churn.
( w=0; while true; do w=$(( (w + 7) % 50 + 1 ))
    curl -s -o /dev/null -X PUT -H "Authorization: Bearer $TOKEN" -d "{\"weight\": $w}" "http://127.0.0.1:$A/api/v1/tenants/acme/weight"
    sleep 1; done ) & CHURN+=($!)
( n=0; while true; do sleep 5; n=$(( 1 - n )); write_config "$n"; done ) & CHURN+=($!)
( while true; do sleep 10; renew_cert; sleep 1
    curl -sk -o /dev/null --resolve "acme.example.com:$T:127.0.0.1" "https://acme.example.com:$T/web/login" || echo "TLS request failed" >> "$WORK/churn-errors.log"
  done ) & CHURN+=($!)
( while true; do sleep 18; nginx -p "$WORK/b2" -c "$WORK/b2/nginx.conf" -s stop 2>/dev/null || true
    sleep 2; taskset -c 1 nginx -p "$WORK/b2" -c "$WORK/b2/nginx.conf"; done ) & CHURN+=($!)

ms() { python3 -c "v='$1'; print(float(v[:-2])/1000 if v.endswith('us') else float(v[:-2]) if v.endswith('ms') else float(v[:-1])*1000)"; }
CSV="$OUT/soak.csv"
echo "seconds,rps,p99_ms,errors,rss_kib,fds,reloads,cert_loads,retries" > "$CSV"
START=$(date +%s)
END=$(( START + MINUTES * 60 ))
echo "soak: $MINUTES min, wrk -t1 -c$CONNS, samples every ${INTERVAL}s -> $CSV"
while [ "$(date +%s)" -lt "$END" ]; do
  out=$(taskset -c 1 wrk -t1 -c"$CONNS" -d"${INTERVAL}s" --latency -s "$WORK/random-session.lua" "http://127.0.0.1:$P/" 2>&1)
  rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  p99=$(ms "$(echo "$out" | awk '$1=="99%" {print $2}')")
  errs=$(echo "$out" | awk '/Non-2xx/ {n += $4} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}')
  rss_now=$(rss "$FPID")
  fds=$(ls "/proc/$FPID/fd" | wc -l)
  echo "$(( $(date +%s) - START )),$rps,$p99,$errs,$rss_now,$fds,$(metric 'fledge_config_reloads_total{result="applied"}'),$(metric 'fledge_tls_cert_reloads_total{result="applied"}'),$(metric 'fledge_retries_total')" | tee -a "$CSV"
done
cp "$WORK/fledge.log" "$OUT/soak-fledge.log"
[ -f "$WORK/churn-errors.log" ] && cp "$WORK/churn-errors.log" "$OUT/soak-churn-errors.log"

python3 - "$CSV" "$MINUTES" "$CONNS" "$OUT/soak.svg" <<'PY' | tee "$OUT/soak.md"
import csv, sys
rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(open(sys.argv[1]))]
minutes, conns, svg = sys.argv[2], sys.argv[3], sys.argv[4]
warm = [r for r in rows if r["seconds"] >= 300] or rows[len(rows) // 2:]
mib = lambda k: k / 1024
total = sum(r["rps"] * 10 for r in rows)
print(f"# Soak: {minutes} min at saturation with churn\n")
print(f"wrk -t1 -c{conns}, a fresh session per request; weight every 1 s, reload every 5 s, certificate every 10 s, a stable worker restarted every 20 s.\n")
print(f"| figure | first | after warm-up ({warm[0]['seconds']:.0f} s): first | last | max |\n|---|---|---|---|---|")
print(f"| RSS (MiB) | {mib(rows[0]['rss_kib']):.1f} | {mib(warm[0]['rss_kib']):.1f} | {mib(warm[-1]['rss_kib']):.1f} | {mib(max(r['rss_kib'] for r in warm)):.1f} |")
print(f"| descriptors | {rows[0]['fds']:.0f} | {warm[0]['fds']:.0f} | {warm[-1]['fds']:.0f} | {max(r['fds'] for r in warm):.0f} |")
print(f"| p99 (ms) | {rows[0]['p99_ms']:.2f} | {warm[0]['p99_ms']:.2f} | {warm[-1]['p99_ms']:.2f} | {max(r['p99_ms'] for r in warm):.2f} |")
print(f"\nrequests: about {total/1e6:.1f} M at {sum(r['rps'] for r in rows)/len(rows):,.0f} req/s on average; failed (non-2xx + socket errors): {sum(r['errors'] for r in rows):.0f}")
print(f"reloads applied: {rows[-1]['reloads']:.0f}; certificates loaded: {rows[-1]['cert_loads']:.0f}; retries: {rows[-1]['retries']:.0f}")
# The chart: four panels over time, plain SVG.
W, H, pad = 900, 160, 50
series = [("RSS (MiB)", [mib(r["rss_kib"]) for r in rows]), ("descriptors", [r["fds"] for r in rows]),
          ("p99 (ms)", [r["p99_ms"] for r in rows]), ("req/s", [r["rps"] for r in rows])]
t = [r["seconds"] for r in rows]
out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H*len(series)+20}" font-family="sans-serif" font-size="12">']
for i, (name, ys) in enumerate(series):
    top = 10 + i * H
    lo, hi = 0, max(ys) * 1.1 or 1
    x = lambda s: pad + (W - 2 * pad) * (s - t[0]) / ((t[-1] - t[0]) or 1)
    y = lambda v: top + H - 30 - (H - 40) * (v - lo) / (hi - lo)
    pts = " ".join(f"{x(s):.1f},{y(v):.1f}" for s, v in zip(t, ys))
    out.append(f'<rect x="{pad}" y="{top}" width="{W-2*pad}" height="{H-30}" fill="none" stroke="#ccc"/>')
    out.append(f'<text x="{pad+5}" y="{top+15}">{name} (max {max(ys):,.1f})</text>')
    out.append(f'<text x="5" y="{top+H-30}">0</text><text x="{W-pad+5}" y="{top+H-30}">{t[-1]/60:.0f} min</text>')
    out.append(f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>')
out.append("</svg>")
open(svg, "w").write("\n".join(out))
print(f"\nchart: {svg.rsplit('/', 1)[-1]}")
PY
