#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test fledge:
# Pingora's zlib-ng needs cmake and a C compiler, the fleet's tests a
# redis-server. Idempotent; quiet when all is there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v curl >/dev/null 2>&1 || need+=(curl)
# The fleet's tests (tests/fleet.rs) and `rehearse --replicas` start a
# throw-away redis-server.
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${need[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >/dev/null
fi
