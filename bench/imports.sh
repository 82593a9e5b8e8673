#!/usr/bin/env bash
# Imports side by side: each binary given, alternated round by round, on a
# fresh sled data directory and a fresh PostgreSQL database, driven by
# `longrun bench reports` (COUNT generated orders over 10 months). Beside a
# second sled import (BESIDE_COUNT orders), the dispatch scenario
# (`longrun bench run --scenarios dispatch`: one client, a paced 1,000/s,
# then flat out) shows what an import does to everyone else's operations. Prints one JSON
# object per binary, medians of RUNS rounds:
#   sled_rows_per_second, pg_rows_per_second   imports alone
#   beside_paced_p99_ms, beside_paced_max_ms   create to start, paced
#   beside_high_ops_per_second, beside_high_p99_ms  flat out
#
#   bench/imports.sh OLD_BINARY NEW_BINARY      # COUNT=1000000, RUNS=3
#   PG=postgres://postgres@127.0.0.1:5432 bench/imports.sh target/release/longrun
#
# Needs: psql, and a PostgreSQL server the URL's user may create databases on.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
PG=${PG:-postgres://postgres@127.0.0.1:5432}
COUNT=${COUNT:-1000000}
# Large enough that the import outlasts the dispatch scenario beside it.
BESIDE_COUNT=${BESIDE_COUNT:-3000000}
RUNS=${RUNS:-3}
[ $# -gt 0 ] || set -- target/release/longrun

work=$(mktemp -d)
pid=
db=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; drop_database' EXIT

# The import's rows per second, from `bench reports`' JSON on stdin.
rate() {
  python3 -c 'import json,sys; print(json.load(sys.stdin)["import_rows_per_second"])'
}

for run in $(seq "$RUNS"); do
  for BIN in "$@"; do
    out="$work/$(echo "$BIN" | tr / _)"
    start_server
    "$BIN" bench reports --server "http://$address" --count "$COUNT" --months 10 \
      --output json | rate >> "$out.sled"
    stop_server

    create_database
    start_server --store "$PG/$db"
    "$BIN" bench reports --server "http://$address" --count "$COUNT" --months 10 \
      --output json | rate >> "$out.pg"
    stop_server
    drop_database

    # Dispatch beside an import of BESIDE_COUNT orders: started a second
    # after the import operation exists (its upload done), over before it
    # ends.
    start_server
    "$BIN" bench reports --server "http://$address" --count "$BESIDE_COUNT" --months 10 \
      --output json > "$work/import.json" &
    import=$!
    until undone; do sleep 0.2; done
    sleep 1
    "$BIN" bench run --server "http://$address" --scenarios dispatch --duration 4s \
      --output json | tail -1 >> "$out.beside"
    wait "$import"
    stop_server
  done
done

for BIN in "$@"; do
  out="$work/$(echo "$BIN" | tr / _)"
  python3 - "$BIN" "$out" <<'PY'
import json, statistics, sys
binary, out = sys.argv[1], sys.argv[2]
def lines(suffix):
    return [l for l in open(out + suffix).read().split("\n") if l.strip()]
beside = [json.loads(l)["dispatch"] for l in lines(".beside")]
med = lambda xs: round(statistics.median(xs), 3)
print(json.dumps({
    "binary": binary,
    "sled_rows_per_second": med([float(x) for x in lines(".sled")]),
    "pg_rows_per_second": med([float(x) for x in lines(".pg")]),
    "beside_paced_p99_ms": med([b["paced"]["p99_ms"] for b in beside]),
    "beside_paced_max_ms": med([b["paced"]["max_ms"] for b in beside]),
    "beside_high_ops_per_second": med([b["high"]["ops_per_second"] for b in beside]),
    "beside_high_p99_ms": med([b["high"]["p99_ms"] for b in beside]),
    "sled_runs": [round(float(x)) for x in lines(".sled")],
    "pg_runs": [round(float(x)) for x in lines(".pg")],
    "beside_paced_p99_runs": [b["paced"]["p99_ms"] for b in beside],
}))
PY
done
