#!/usr/bin/env bash
# Sets up .venv (scripts/setup.sh), starts a throwaway PostgreSQL server on 127.0.0.1 when its binaries are installed
# (the search test that shares one study between processes through it; .ci/run installs them), runs the test suite
# and stops the server. Pytest flags pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -z "${TRAINLAB_TEST_POSTGRES:-}" ] && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  pgdir=$(mktemp -d)
  trap 'bash scripts/postgres.sh stop "$pgdir"; rm -rf "$pgdir"' EXIT
  port=$(.venv/bin/python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  if url=$(bash scripts/postgres.sh start "$pgdir" "$port"); then
    export TRAINLAB_TEST_POSTGRES=$url
  else
    echo "test: the PostgreSQL server did not start (see $pgdir/server.log); its test will be skipped" >&2
  fi
fi
.venv/bin/python -m pytest "$@"
