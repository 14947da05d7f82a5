#!/usr/bin/env bash
# Run every fuzz target for SECONDS (default 600) each, JOBS at a time
# (default 2), and summarise executions and crashes per target.
#
# Usage: fuzz/run.sh [SECONDS] [JOBS]
# Needs: a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# New inputs go to fuzz/corpus-local/<target>/ (not committed); the seeds in
# fuzz/seeds/<target>/ are read, and replayed by `cargo test`. A crash lands
# in fuzz/artifacts/<target>/: fix it, then copy the input into the seeds.
set -euo pipefail
SECS=${1:-600}
JOBS=${2:-2}
cd "$(dirname "$0")"
TARGETS=$(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v fledge-fuzz)
mkdir -p logs
run() {
  local t=$1
  mkdir -p "corpus-local/$t"
  cargo +nightly fuzz run -O "$t" "corpus-local/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -print_final_stats=1 > "logs/$t.log" 2>&1 || true
}
export -f run; export SECS
printf '%s\n' $TARGETS | xargs -P "$JOBS" -I{} bash -c 'run {}'
printf '| target | executions | exec/s | crashes | corpus |\n|---|---|---|---|---|\n'
for t in $TARGETS; do
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "logs/$t.log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "logs/$t.log" | tail -1)
  crashes=$(ls "artifacts/$t" 2>/dev/null | wc -l)
  corpus=$(ls "corpus-local/$t" | wc -l)
  printf '| %s | %s | %s | %s | %s |\n' "$t" "${execs:-?}" "${rate:-?}" "$crashes" "$corpus"
done
