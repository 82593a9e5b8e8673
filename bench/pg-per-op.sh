#!/usr/bin/env bash
# What one operation's whole life costs on PostgreSQL, counted rather than
# timed: a fresh one-node server on a fresh database takes N empty Sleep
# creates from h2load and runs them all; the database's own counters
# around the run are divided by N. Prints one JSON object:
#   xacts            committed transactions
#   statements       statements the server ran (counted from PostgreSQL's
#                    log in a second run that logs every statement with its
#                    time, which also prints where that time went, by
#                    statement, to stderr; the first run is not slowed by
#                    logging)
#   wal_records, wal_bytes, wal_fpi   write-ahead log written
#   inserted, updated, hot_updated, deleted   rows of longrun_operations
#   pg_cpu_us, longrun_cpu_us   CPU of PostgreSQL's processes and of the
#                    server (user + system, /proc), per operation
#
#   bench/pg-per-op.sh [BINARY]     # BINARY defaults to target/release/longrun
#   N=20000 PG=postgres://postgres@127.0.0.1:5432 bench/pg-per-op.sh
#
# SETUP_SQL, if set, runs on each fresh database once the server has laid
# out its schema: to weigh a layout (say, dropping an index) before it
# becomes a migration.
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

q() { psql "$PG/$db" -AtXc "$1"; }

# Creates N operations and waits until all are done.
run() {
  h2load -n "$N" -c "$CONNECTIONS" -m "$STREAMS" -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/longrun.v1.Diagnostics/Sleep" > "$work/h2load" 2>&1
  grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
  while undone; do sleep 0.05; done
}

fresh() {
  create_database
  start_server --store "$PG/$db" --metrics-listen off
  if [ -n "${SETUP_SQL:-}" ]; then q "$SETUP_SQL" > /dev/null; fi
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
pc0=$(postgres_cpu_seconds); oc0=$(cpu_seconds)
run
pc1=$(postgres_cpu_seconds); oc1=$(cpu_seconds)
# The server's sessions report their counts as they end.
stop_server
sleep 1
read -r x1 r1 b1 f1 i1 u1 h1 d1 <<< "$(counters)"
drop_database

# The second run counts statements: with log_min_duration_statement = 0
# PostgreSQL logs each statement's parse, bind and execute with the time
# it took. PG_LOG is the server's log file (Debian's by default).
fresh
q "ALTER DATABASE $db SET log_min_duration_statement = 0" > /dev/null
stop_server
start_server --store "$PG/$db" --metrics-listen off
log=${PG_LOG:-$(ls -t /var/log/postgresql/postgresql-*-main.log | head -1)}
before=$(wc -l < "$log")
run
stop_server
tail -n +"$((before + 1))" "$log" | grep "$db" > "$work/statements" || true
statements=$(grep -c "LOG:  duration: [0-9.]* ms  \(statement\|execute\)" "$work/statements" || true)
drop_database

# Where PostgreSQL's time went, by statement and phase (wall time as
# logged, so it includes waiting for the CPU and the disk): printed to
# stderr, the largest first.
python3 - "$work/statements" "$N" >&2 <<'PY'
import collections, re, sys
n = int(sys.argv[2])
pattern = re.compile(r"duration: ([0-9.]+) ms  (parse|bind|execute|statement)[^:]*: (.*)")
spent = collections.defaultdict(lambda: [0, 0.0])
for line in open(sys.argv[1], errors="replace"):
    m = pattern.search(line)
    if m:
        text = " ".join(m.group(3).split())[:60] or "(the claim statement)"
        entry = spent[(m.group(2), text)]
        entry[0] += 1
        entry[1] += float(m.group(1))
print(f"{'us/op':>7} {'calls':>7} {'us/call':>9}  phase    statement")
for (phase, text), (calls, ms) in sorted(spent.items(), key=lambda kv: -kv[1][1])[:14]:
    print(f"{ms * 1000 / n:7.1f} {calls:7d} {ms * 1000 / calls:9.1f}  {phase:8} {text}")
PY

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
