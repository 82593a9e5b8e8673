#!/usr/bin/env bash
# Failover on PostgreSQL: node 1 runs OPS long sleeps, node 2 joins, node 1
# is killed with SIGKILL; prints how long until every one of them runs
# again (attempt 2) on node 2, against the lease. RUNS times, each on a
# fresh database.
#
#   bench/failover.sh                    # OPS=50, LEASE=10s, RUNS=3
#
# Needs: a release build, psql, and a PostgreSQL server the URL's user may
# create databases on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/longrun}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
OPS=${OPS:-50}
LEASE=${LEASE:-10s}
RUNS=${RUNS:-3}

work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# Starts node $1 on database $2; its address goes to $address.
start_node() {
  "$BIN" serve --listen 127.0.0.1:0 --store "$PG/$2" --data-dir "$work/data-$1" \
    --node-name "node-$1" --lease "$LEASE" 2> "$work/log-$1" &
  pids+=($!)
  wait_listening "$work/log-$1" "$!"
}

count() {
  psql "$PG/$db" -Atc "SELECT count(*) FROM longrun_operations WHERE $1"
}

for run in $(seq "$RUNS"); do
  db=longrun_bench_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $db"
  start_node 1 "$db"
  one=$address
  victim=${pids[-1]}
  for _ in $(seq "$OPS"); do
    "$BIN" sleep 10m --server "http://$one" > /dev/null
  done
  until [ "$(count 'state = 2 AND attempt = 1')" = "$OPS" ]; do sleep 0.05; done
  start_node 2 "$db"
  kill -9 "$victim"
  killed=$(date +%s.%N)
  until [ "$(count "state = 2 AND attempt = 2 AND lease_holder = 'node-2'")" = "$OPS" ]; do
    sleep 0.01
  done
  back=$(date +%s.%N)
  python3 -c "print('{\"run\": $run, \"lease\": \"$LEASE\", \"ops\": $OPS, \"running_again_after_s\": %.2f}' % ($back - $killed))"
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  pids=()
  psql "$PG/postgres" -qc "DROP DATABASE $db WITH (FORCE)"
done
