#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), starts a throwaway PostgreSQL server on 127.0.0.1 when its binaries are installed
# (the search test that shares one study between processes through it; .ci/run installs them) and a throwaway Ray
# cluster of two nodes on this machine (scripts/ray.sh; Ray comes with the dev extra), runs the test suite and stops
# both. Pytest flags pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
stops=()  # what to stop at exit, whatever the tests did
trap 'for stop in ${stops[@]+"${stops[@]}"}; do eval "$stop"; done' EXIT
if [ -z "${TRAINLAB_TEST_POSTGRES:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  pgdir=$(mktemp -d)
  stops+=("bash scripts/postgres.sh stop '$pgdir'; rm -rf '$pgdir'")
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if url=$(bash scripts/postgres.sh start "$pgdir" "$port"); then
    export TRAINLAB_TEST_POSTGRES=$url
  else
    echo "test: the PostgreSQL server did not start (see $pgdir/server.log); its test will be skipped" >&2
  fi
fi
if [ -z "${TRAINLAB_TEST_RAY:-}" ] && [ -x .venv/bin/ray ]; then
  raydir=$(mktemp -d)
  stops+=("bash scripts/ray.sh stop '$raydir'; rm -rf '$raydir'")
  if address=$(bash scripts/ray.sh start "$raydir"); then
    export TRAINLAB_TEST_RAY=$address
  else
    echo "test: the Ray cluster did not start (see $raydir/head.log and worker.log); its tests will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
