#!/usr/bin/env bash
# TLS termination, fledge vs nginx, same certificate (ECDSA P-256), same
# backend (nginx, fixed ~200-byte JSON, on CPU 1), same load tool (h2load,
# on CPU 1). Each proxy: one worker, pinned to CPU 0.
#
#  - handshakes: N new connections, each a full TLS 1.3 handshake and one
#    HTTP/1.1 request (h2load -c N -n N --h1): handshakes/s and the proxy's
#    CPU per handshake (utime+stime from /proc/PID/stat / N).
#  - h2: kept-alive HTTP/2 connections (h2load -c 16 -m 10): requests/s,
#    and the proxy's CPU per request.
#
# Rounds alternate between the proxies; the summary reports medians.
# The load tool shares CPU 1 with the backend and can itself be the limit
# of the handshake rate (a client handshake costs about what a server's
# does): compare CPU per handshake first.
#
# Usage: load-tests/bench/tls.sh [ROUNDS] [HANDSHAKES] [H2_SECONDS]
# Needs: nginx, h2load, openssl (apt-get install nginx nghttp2-client
# openssl), a release build (cargo build --release --bins). Traffic stays
# on 127.0.0.1.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
ROUNDS=${1:-5}
HANDSHAKES=${2:-2000}
SECS=${3:-10}
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
FLEDGE=$ROOT/target/release/fledge
[ -x "$FLEDGE" ] || { echo "missing $FLEDGE: cargo build --release --bins" >&2; exit 1; }
for t in nginx h2load openssl; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 1; }; done

WORK=$(mktemp -d)
OUT=${OUT:-$ROOT/load-tests/runs/$(date +%F)-$(hostname -s)}
mkdir -p "$OUT" "$WORK/certs"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  nginx -p "$WORK" -c "$WORK/backend.conf" -s stop 2>/dev/null || true
  nginx -p "$WORK/tls" -c "$WORK/tls/nginx.conf" -s stop 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

B=$(port); PF=$(port); PFT=$(port); PN=$(port)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -subj /CN=acme.example.com -keyout "$WORK/certs/acme.key" -out "$WORK/certs/acme.crt" \
  -addext 'subjectAltName=DNS:acme.example.com' 2>/dev/null
chmod 600 "$WORK/certs/acme.key"   # fledge refuses keys others can read

BODY='{"jsonrpc":"2.0","id":1,"result":{"server_version":"17.0","uid":2,"name":"Mitchell Admin","company_id":1,"partner_id":3,"db":"acme","lang":"en_US","tz":"Europe/Brussels"}}'
cat > "$WORK/backend.conf" <<NGINX
worker_processes 1;
error_log $WORK/backend-error.log;
pid $WORK/backend.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$B; location / { default_type application/json; return 200 '$BODY'; } }
}
NGINX
taskset -c 1 nginx -p "$WORK" -c "$WORK/backend.conf"

mkdir -p "$WORK/tls/logs"
cat > "$WORK/tls/nginx.conf" <<NGINX
worker_processes 1;
error_log $WORK/tls/error.log;
pid $WORK/tls/nginx.pid;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream odoo { server 127.0.0.1:$B; keepalive 64; }
  server {
    listen 127.0.0.1:$PN ssl http2;
    server_name acme.example.com;
    ssl_certificate $WORK/certs/acme.crt;
    ssl_certificate_key $WORK/certs/acme.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_session_cache off;
    ssl_session_tickets off;
$(nginx_proxy_location odoo)
  }
}
NGINX
taskset -c 0 nginx -p "$WORK/tls" -c "$WORK/tls/nginx.conf"
NPID=$(cat "$WORK/tls/nginx.pid")
# The worker does the work: measure it, not the master.
NWORKER=$(pgrep -P "$NPID" | head -1)

cat > "$WORK/fledge.yaml" <<YAML
listen: "127.0.0.1:$PF"
threads: 1
admin: { listen: "127.0.0.1:$(port)" }
state_dir: "$WORK/state"
tls: { listen: "127.0.0.1:$PFT", certs_dir: "$WORK/certs" }
pools:
  stable: { workers: ["127.0.0.1:$B"] }
tenants:
  acme: { hosts: ["acme.example.com"], stable: stable }
YAML
FLEDGE_LOG=warn taskset -c 0 "$FLEDGE" run --config "$WORK/fledge.yaml" > "$WORK/fledge.log" 2>&1 & PIDS+=($!); FPID=$!
for p in $PFT $PN; do wait_port "$p"; done

HZ=$(getconf CLK_TCK)
URL=https://acme.example.com/web/session/get_session_info
CSV=$OUT/tls.csv
echo "round,proxy,test,done,per_s,cpu_us_per_op,rss_kib" > "$CSV"
measure() { # name pid port test
  local name=$1 pid=$2 p=$3 test=$4 t0 t1 out ok rate
  t0=$(ticks "$pid")
  if [ "$test" = handshake ]; then
    out=$(taskset -c 1 h2load --h1 -c "$HANDSHAKES" -n "$HANDSHAKES" --connect-to="127.0.0.1:$p" "$URL" 2>&1)
  else
    out=$(taskset -c 1 h2load -c 16 -m 10 -D "$SECS" --warm-up-time=1 --connect-to="127.0.0.1:$p" "$URL" 2>&1)
  fi
  t1=$(ticks "$pid")
  ok=$(echo "$out" | awk '/^requests:/ {print $8}')
  # "finished in 1.2s, 1623.4 req/s, ...": one request per connection in
  # the handshake test, so req/s is handshakes/s there.
  rate=$(echo "$out" | awk '/^finished in/ {print $4}')
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  local cpu; cpu=$(python3 -c "print(round(($t1-$t0)/$HZ*1e6/max($ok,1), 2))")
  echo "$r,$name,$test,$ok,$rate,$cpu,$rss" >> "$CSV"
  echo "round $r $name $test: $ok done, $rate/s, $cpu us CPU each, RSS $rss KiB"
}
# Warm-up.
r=0
measure fledge $FPID $PFT handshake > /dev/null
measure nginx $NWORKER $PN handshake > /dev/null
echo "round,proxy,test,done,per_s,cpu_us_per_op,rss_kib" > "$CSV"
for r in $(seq 1 "$ROUNDS"); do
  if [ $((r % 2)) -eq 1 ]; then order="fledge nginx"; else order="nginx fledge"; fi
  for name in $order; do
    if [ $name = fledge ]; then pid=$FPID; p=$PFT; else pid=$NWORKER; p=$PN; fi
    measure $name $pid $p handshake
    measure $name $pid $p h2
  done
done

python3 - "$CSV" "$OUT/tls.md" "$ROUNDS" "$HANDSHAKES" "$SECS" "$(nginx -v 2>&1)" "$(h2load --version | head -1)" <<'PY'
import csv, statistics, sys, subprocess, platform
rows = list(csv.DictReader(open(sys.argv[1])))
med = lambda proxy, test, key: statistics.median(float(r[key]) for r in rows if r["proxy"] == proxy and r["test"] == test)
cpu = subprocess.run(["sh","-c","lscpu | grep 'Model name' | sed 's/.*: *//'"], capture_output=True, text=True).stdout.strip()
with open(sys.argv[2], "w") as out:
    out.write("# TLS termination — fledge vs nginx, same certificate\n\n")
    out.write(f"CPU: {cpu}; kernel {platform.release()}; {sys.argv[6]}; {sys.argv[7]}. "
              "Proxies: one worker pinned to CPU 0; backend nginx and h2load on CPU 1. "
              "ECDSA P-256 certificate; TLS 1.3 (both negotiate it); nginx without session cache or tickets "
              "(h2load does not resume sessions anyway: every handshake is full). "
              f"Handshakes: h2load --h1 -c {sys.argv[4]} -n {sys.argv[4]} (one request per connection). "
              f"h2: h2load -c 16 -m 10 -D {sys.argv[5]}. {sys.argv[3]} alternating rounds, medians.\n\n")
    out.write("| proxy | handshakes/s | CPU µs/handshake | h2 req/s | CPU µs/h2 req | RSS KiB |\n|---|---|---|---|---|---|\n")
    for p in ("nginx", "fledge"):
        out.write(f"| {p} | {med(p,'handshake','per_s'):.0f} | {med(p,'handshake','cpu_us_per_op'):.1f} | "
                  f"{med(p,'h2','per_s'):.0f} | {med(p,'h2','cpu_us_per_op'):.2f} | {med(p,'h2','rss_kib'):.0f} |\n")
    hs = med('fledge','handshake','cpu_us_per_op') / med('nginx','handshake','cpu_us_per_op')
    h2 = med('fledge','h2','cpu_us_per_op') / med('nginx','h2','cpu_us_per_op')
    hr = med('fledge','handshake','per_s') / med('nginx','handshake','per_s')
    rr = med('fledge','h2','per_s') / med('nginx','h2','per_s')
    out.write(f"\nfledge / nginx: handshakes/s **{hr:.2f}**, CPU per handshake **{hs:.2f}**; "
              f"h2 req/s **{rr:.2f}**, CPU per h2 request **{h2:.2f}**\n")
print(open(sys.argv[2]).read())
PY
