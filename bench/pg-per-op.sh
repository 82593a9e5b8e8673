#!/usr/bin/env bash
# What one operation's whole life costs on PostgreSQL, counted rather than
# timed: a fresh one-node server on a fresh database takes N empty Sleep
# creates from h2load and runs them all; the database's own counters
# around the run are divided by N. Prints one JSON object:
#   xacts            committed transactions
#   statements       statements the server sent (counted from PostgreSQL's
#                    log in a second run with log_statement = all; the
#                    first run is not slowed by logging)
#   wal_records, wal_bytes, wal_fpi   write-ahead log written
#   inserted, updated, hot_updated, deleted   rows of longrun_operations
#   pg_cpu_us, longrun_cpu_us   CPU of PostgreSQL's processes and of the
#                    server (user + system, /proc), per operation
#
#   bench/pg-per-op.sh [BINARY]     # BINARY defaults to target/release/longrun
#   N=20000 PG=postgres://postgres@127.0.0.1:5432 bench/pg-per-op.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}

work=$(mktemp -d)
db=
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"; drop_database' EXIT
sleep_body "$work/empty"
tick=$(getconf CLK_TCK)

drop_database() {
  if [ -n "$db" ]; then
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null
    db=
  fi
}

q() { psql "$PG/$db" -AtXc "$1"; }

# CPU seconds of PostgreSQL's processes (every process of the server's
# owner named postgres) and of the longrun server.
pg_cpu() {
  local total=0
  for p in $(pgrep -x postgres); do
    total=$(awk -v t="$tick" -v s="$total" '{ print s + ($14 + $15) / t }' "/proc/$p/stat" 2>/dev/null || echo "$total")
  done
  echo "$total"
}
our_cpu() { awk -v t="$tick" '{ print ($14 + $15) / t }' "/proc/$pid/stat"; }

undone() {
  "$BIN" ops list --server "http://$address" --filter 'done = false' \
    --page-size 1000 --all --output json | grep -q '"operations"'
}

# Creates N operations and waits until all are done.
run() {
  h2load -n "$N" -c "$CONNECTIONS" -m "$STREAMS" -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load" 2>&1
  grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
  while undone; do sleep 0.05; done
}

fresh() {
  db=longrun_bench_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $db" > /dev/null
  start_server --store "$PG/$db" --metrics-listen off
}

counters() {
  q "SELECT d.xact_commit, w.wal_records, w.wal_bytes, w.wal_fpi,
            coalesce(t.n_tup_ins, 0), coalesce(t.n_tup_upd, 0),
            coalesce(t.n_tup_hot_upd, 0), coalesce(t.n_tup_del, 0)
       FROM pg_stat_database d, pg_stat_wal w
       LEFT JOIN pg_stat_user_tables t ON t.relname = 'longrun_operations'
      WHERE d.datname = current_database()" | tr '|' ' '
}

fresh
sleep 1
read -r x0 r0 b0 f0 i0 u0 h0 d0 <<< "$(counters)"
pc0=$(pg_cpu); oc0=$(our_cpu)
run
pc1=$(pg_cpu); oc1=$(our_cpu)
# The server's sessions report their counts as they end.
stop_server
sleep 1
read -r x1 r1 b1 f1 i1 u1 h1 d1 <<< "$(counters)"
drop_database

# The second run counts statements: PostgreSQL logs every one it parses
# or runs while log_statement is all.
fresh
q "ALTER DATABASE $db SET log_statement = 'all'" > /dev/null
stop_server
start_server --store "$PG/$db" --metrics-listen off
log=$(ls -t /var/log/postgresql/postgresql-*-main.log | head -1)
before=$(wc -l < "$log")
run
stop_server
statements=$(tail -n +"$((before + 1))" "$log" | grep -c "$db.*LOG:  \(statement\|execute\)" || true)
drop_database

python3 - <<PY
n = $N
print({
  "n": n,
  "xacts": round(($x1 - $x0) / n, 2),
  "statements": round($statements / n, 2),
  "wal_records": round(($r1 - $r0) / n, 1),
  "wal_bytes": round(($b1 - $b0) / n),
  "wal_fpi": round(($f1 - $f0) / n, 2),
  "inserted": round(($i1 - $i0) / n, 2),
  "updated": round(($u1 - $u0) / n, 2),
  "hot_updated": round(($h1 - $h0) / n, 2),
  "deleted": round(($d1 - $d0) / n, 2),
  "pg_cpu_us": round(($pc1 - $pc0) * 1e6 / n),
  "longrun_cpu_us": round(($oc1 - $oc0) * 1e6 / n),
})
PY
