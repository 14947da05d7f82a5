# Shared by the benchmark scripts here: `. "$(dirname "$0")/lib.sh"`.
# Everything stays on 127.0.0.1.

# A free loopback port, chosen by the OS.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Wait until something accepts on PORT (up to 30 s; valgrind starts slowly),
# or stop the script.
wait_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return
    sleep 0.1
  done
  echo "nothing listening on 127.0.0.1:$1" >&2
  exit 1
}

# CPU time (user + system, clock ticks) of the processes PIDs, summed.
ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }

# User and system CPU time (clock ticks) of the processes PIDs, summed: "U S".
ticks_us() { local u=0 s=0; for p in "$@"; do read -r a b < <(awk '{print $14, $15}' "/proc/$p/stat"); u=$((u + a)); s=$((s + b)); done; echo "$u $s"; }

# Resident memory (KiB) of the processes PIDs, summed.
rss() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/ {print $2}' "/proc/$p/status"))); done; echo $t; }

# The proxies fledge is compared with, configured alike wherever they are
# measured: the canary split on the session cookie (20 % to CANARY), worker
# keep-alive, Host and X-Forwarded-* passed on.
#
# nginx_proxy_conf DIR PORT STABLE CANARY WORKERS [AFFINITY] writes
# DIR/nginx.conf for `nginx -p DIR -c DIR/nginx.conf`; AFFINITY is
# worker_cpu_affinity's mask, and FOREGROUND=1 keeps nginx in one process
# in the foreground (for valgrind).
nginx_proxy_conf() {
  local dir=$1 port=$2 stable=$3 canary=$4 workers=$5 affinity=${6:-}
  mkdir -p "$dir"
  cat > "$dir/nginx.conf" <<NGINX
worker_processes $workers;
${affinity:+worker_cpu_affinity auto $affinity;}
${FOREGROUND:+daemon off; master_process off;}
error_log $dir/error.log;
pid $dir/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream stable { server 127.0.0.1:$stable; keepalive 64; }
  upstream canary { server 127.0.0.1:$canary; keepalive 64; }
  split_clients "\${cookie_session_id}" \$pool { 20% canary; * stable; }
  server {
    listen 127.0.0.1:$port;
$(nginx_proxy_location '$pool')
  }
}
NGINX
}

# nginx_proxy_location UPSTREAM: the location block every nginx proxy here
# uses (worker keep-alive, Host and X-Forwarded-* passed on), proxying to
# UPSTREAM (an upstream's name, or a variable naming one).
nginx_proxy_location() {
  cat <<NGINX
    location / {
      proxy_pass http://$1;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
NGINX
}

# haproxy_cfg FILE PORT STABLE CANARY THREADS [CPUS] writes HAProxy's config
# (the same split as a hash of the session cookie over servers weighted
# 80/20); CPUS (first-last) pins its threads.
haproxy_cfg() {
  local file=$1 port=$2 stable=$3 canary=$4 threads=$5 cpus=${6:-}
  cat > "$file" <<HAPROXY
global
  nbthread $threads
  ${cpus:+cpu-map auto:1/1-$threads $cpus}
  maxconn 8000
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
frontend f
  bind 127.0.0.1:$port
  default_backend odoo
backend odoo
  balance hash req.cook(session_id)
  hash-type consistent
  server stable 127.0.0.1:$stable weight 80
  server canary 127.0.0.1:$canary weight 20
HAPROXY
}
