#!/usr/bin/env bash
# Starts a throwaway Ray cluster on this machine for the tests (studies on a cluster), or stops it.
#   bash scripts/ray.sh start DIR [PORT]   -> prints the head's address, 127.0.0.1:PORT
#   bash scripts/ray.sh stop DIR
# Two nodes, each its own `ray start --block` process: a head (one CPU, no dashboard) and a worker node (one CPU)
# joined to it, so a study's tasks run in processes of another node than the driver's. Small object stores, usage
# stats off, the session files under DIR/tmp (delete DIR after); the nodes' logs are DIR/head.log and DIR/worker.log.
# `stop` ends the two processes by the ids recorded in DIR (each takes its node's Ray processes down with it).
set -euo pipefail
cmd=$1 dir=$2
ray=$(dirname "$0")/../.venv/bin/ray
[ -x "$ray" ] || ray=ray
store=$((80 * 1024 * 1024))
node() {  # node NAME ARGS...: start one node in the background, record its process id
  local name=$1
  shift
  "$ray" start --block --num-cpus=1 --object-store-memory=$store --disable-usage-stats "$@" \
    >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
}
wait_for() {  # wait_for PATTERN NAME: until the node's log says it started (or its process ended)
  for _ in $(seq 240); do
    grep -q "$1" "$dir/$2.log" && return 0
    kill -0 "$(cat "$dir/$2.pid")" 2>/dev/null || break
    sleep 0.5
  done
  echo "ray.sh: the $2 node did not start (see $dir/$2.log)" >&2
  return 1
}
case "$cmd" in
  start)
    port=${3:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
    mkdir -p "$dir/tmp"
    node head --head --node-ip-address=127.0.0.1 --port="$port" --include-dashboard=false --temp-dir="$dir/tmp"
    wait_for "Ray runtime started" head
    node worker --address="127.0.0.1:$port" --node-ip-address=127.0.0.1
    wait_for "Ray runtime started" worker
    echo "127.0.0.1:$port"
    ;;
  stop)
    for name in worker head; do
      if [ -f "$dir/$name.pid" ]; then
        pid=$(cat "$dir/$name.pid")
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        rm -f "$dir/$name.pid"
      fi
    done
    ;;
  *) echo "usage: $0 start DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
