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
