#!/usr/bin/env bash
# New order_ids that fall among a large tenant's stored ones, the usual
# case when ids are random: STORED orders (`longrun orders generate`, ids
# ord-1-0000000000 upward) are imported first, then FRESH new ones whose
# ids are stored ones with an `r` appended, picked at random, so that each
# sorts right beside a stored id. Each binary given, alternated round by
# round, on a fresh sled data directory and a fresh PostgreSQL database.
# Prints one JSON object per binary, medians of RUNS rounds:
#   sled_rows_per_second, pg_rows_per_second   the second import: FRESH
#                    over the wall time of `longrun orders import --wait`
#                    (upload, import and the wait's polling)
#   sled_cpu_s, pg_server_cpu_s, pg_db_cpu_s   CPU seconds of the server
#                    (and of PostgreSQL's processes) over that import
#
#   bench/imports-among.sh OLD_BINARY NEW_BINARY  # STORED=2000000 FRESH=200000 RUNS=3
#
# The stored import is left SETTLE seconds (8) before the second starts,
# so that PostgreSQL's merges of its runs, which go on after the import
# operation is done, are over. Needs: psql, python3, and a PostgreSQL
# server the URL's user may create databases on, at $PG.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PG=${PG:-postgres://postgres@127.0.0.1:5432}
STORED=${STORED:-2000000}
FRESH=${FRESH:-200000}
RUNS=${RUNS:-3}
SETTLE=${SETTLE:-8}
[ $# -gt 0 ] || set -- target/release/longrun
work=$(mktemp -d)
pid=
db=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; drop_database' EXIT

"$1" orders generate --count "$STORED" --months 2024-01..2024-10 --seed 1 --out "$work/stored.csv"
"$1" orders generate --count "$FRESH" --months 2024-01..2024-10 --seed 3 --out "$work/source.csv"
python3 - "$work/source.csv" "$work/fresh.csv" "$STORED" <<'PY'
import random, sys
source, fresh, stored = sys.argv[1], sys.argv[2], int(sys.argv[3])
random.seed(7)
with open(source) as f, open(fresh, "w") as out:
    out.write(f.readline())
    for line in f:
        out.write("ord-1-%010dr,%s" % (random.randrange(stored), line.split(",", 1)[1]))
PY

for run in $(seq "$RUNS"); do
  for BIN in "$@"; do
    out="$work/$(echo "$BIN" | tr / _)"
    for store in sled pg; do
      args=()
      if [ "$store" = pg ]; then
        create_database
        args=(--store "$PG/$db")
      fi
      start_server "${args[@]}"
      "$BIN" orders import --server "http://$address" --wait "$work/stored.csv" > /dev/null
      sleep "$SETTLE"
      server0=$(cpu_seconds)
      db0=$(postgres_cpu_seconds)
      began=$(date +%s.%N)
      "$BIN" orders import --server "http://$address" --wait "$work/fresh.csv" > /dev/null
      ended=$(date +%s.%N)
      echo "$FRESH $began $ended $server0 $(cpu_seconds) $db0 $(postgres_cpu_seconds)" >> "$out.$store"
      stop_server
      drop_database
    done
  done
done

for BIN in "$@"; do
  out="$work/$(echo "$BIN" | tr / _)"
  python3 - "$BIN" "$out" <<'PY'
import json, statistics, sys
binary, out = sys.argv[1], sys.argv[2]
def rounds(store):
    return [[float(x) for x in l.split()] for l in open(f"{out}.{store}") if l.strip()]
def med(xs):
    return round(statistics.median(xs), 2)
sled, pg = rounds("sled"), rounds("pg")
rate = lambda r: r[0] / (r[2] - r[1])
print(json.dumps({
    "binary": binary,
    "sled_rows_per_second": round(statistics.median(rate(r) for r in sled)),
    "pg_rows_per_second": round(statistics.median(rate(r) for r in pg)),
    "sled_cpu_s": med([r[4] - r[3] for r in sled]),
    "pg_server_cpu_s": med([r[4] - r[3] for r in pg]),
    "pg_db_cpu_s": med([r[6] - r[5] for r in pg]),
    "sled_runs": [round(rate(r)) for r in sled],
    "pg_runs": [round(rate(r)) for r in pg],
}))
PY
done
