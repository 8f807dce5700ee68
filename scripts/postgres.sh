#!/usr/bin/env bash
# Starts a throwaway PostgreSQL server for the tests (search storage shared by many processes), or stops it.
#   bash scripts/postgres.sh start DIR PORT   -> prints the URL, postgresql://postgres@127.0.0.1:PORT/trainlab
#   bash scripts/postgres.sh stop DIR
# The server listens on 127.0.0.1 only, trusts local connections, and keeps its data in DIR (delete it after).
set -euo pipefail
cmd=$1 dir=$2
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() { if [ "$(id -u)" = 0 ]; then su postgres -s /bin/bash -c "$*"; else bash -c "$*"; fi; }
case "$cmd" in
  start)
    port=$3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_postgres "'$bin/initdb' -D '$dir/data' -U postgres --auth=trust -E UTF8 >'$dir/initdb.log' 2>&1"
    as_postgres "'$bin/pg_ctl' -D '$dir/data' -l '$dir/server.log' -w -o \"-h 127.0.0.1 -p $port -k '$dir'\" start >/dev/null"
    as_postgres "'$bin/createdb' -h 127.0.0.1 -p $port -U postgres trainlab"
    echo "postgresql://postgres@127.0.0.1:$port/trainlab"
    ;;
  stop)
    as_postgres "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop >/dev/null" || true
    ;;
  *) echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
