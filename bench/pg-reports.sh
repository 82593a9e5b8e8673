#!/usr/bin/env bash
# The report service on PostgreSQL: one node on a fresh database, driven by
# `longrun bench reports` (import COPY rate, render rate), RUNS times.
#
#   bench/pg-reports.sh                  # COUNT=1000000, RUNS=3
#   PG=postgres://postgres@127.0.0.1:5432 bench/pg-reports.sh
#
# Needs: a release build, psql, and a PostgreSQL server the URL's user may
# create databases on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/longrun}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
COUNT=${COUNT:-1000000}
RUNS=${RUNS:-3}

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT

for run in $(seq "$RUNS"); do
  db=longrun_bench_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  "$BIN" serve --listen 127.0.0.1:0 --store "$PG/$db" --data-dir "$work/data" 2> "$work/log" &
  pid=$!
  wait_listening "$work/log" "$pid"
  echo "run $run"
  "$BIN" bench reports --server "http://$address" --count "$COUNT" --months 10
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)"
done
