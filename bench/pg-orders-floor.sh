#!/usr/bin/env bash
# What PostgreSQL itself takes to store orders, with no longrun in the
# way: COUNT rows (random months and times, sequential order_ids, 48-byte
# records, as `longrun bench reports` makes) are COPYed into a temporary
# table, then inserted with one INSERT ... SELECT into copies of
# longrun_orders: with no index, with only its primary key, with only its
# month index, with both (the real table), and merged the way the import
# merges (ON CONFLICT, in order_id order) into the real table, fresh and
# again over the same rows. Prints psql's timing of each statement, in
# rows per second, on a fresh database it drops afterwards.
#
#   bench/pg-orders-floor.sh                  # COUNT=500000
#   PG=postgres://postgres@127.0.0.1:5432 COUNT=1000000 bench/pg-orders-floor.sh
set -euo pipefail
PG=${PG:-postgres://postgres@127.0.0.1:5432}
COUNT=${COUNT:-500000}
db=longrun_bench_$RANDOM$RANDOM
work=$(mktemp -d)
trap 'psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)"; rm -rf "$work"' EXIT
psql "$PG/postgres" -qc "CREATE DATABASE $db"

python3 - "$COUNT" "$work/rows.txt" <<'PY'
import random, sys
random.seed(1)
count, path = int(sys.argv[1]), sys.argv[2]
with open(path, "w") as f:
    for i in range(count):
        month = 202401 + random.randrange(10)
        at = random.randrange(1704067200000000, 1730419200000000)
        f.write(f"ord-1-{i:010d}\t{month}\t{at}\t\\\\x{'ab' * 48}\n")
PY

# Each table as longrun_orders is (migrations/0001_tables.sql), minus
# what its name says it lacks.
table() {
  echo "CREATE TABLE $1 (tenant text NOT NULL, order_id text COLLATE \"C\" NOT NULL,
        month integer NOT NULL, created_at bigint NOT NULL, record bytea NOT NULL $2);"
}
psql "$PG/$db" -q <<SQL | awk -v n="$COUNT" '/^Time:/ { ms = $2 } /^-- / { label = substr($0, 4) } /^Time:/ && label != "" { printf "%-40s %10.0f rows/s (%s ms)\n", label, n / (ms / 1000), ms; label = "" }'
SET synchronous_commit = off;
CREATE TEMP TABLE stage (order_id text, month integer, created_at bigint, record bytea);
$(table bare "")
$(table pk ", PRIMARY KEY (tenant, order_id)")
$(table by_month "")
CREATE INDEX ON by_month (tenant, month, created_at, order_id);
$(table orders ", PRIMARY KEY (tenant, order_id)")
CREATE INDEX ON orders (tenant, month, created_at, order_id);
$(table merged ", PRIMARY KEY (tenant, order_id)")
CREATE INDEX ON merged (tenant, month, created_at, order_id);
\timing on
\echo '-- COPY into a temporary table'
\copy stage from '$work/rows.txt'
\echo '-- INSERT, no index'
INSERT INTO bare SELECT 't', order_id, month, created_at, record FROM stage;
\echo '-- INSERT, primary key only'
INSERT INTO pk SELECT 't', order_id, month, created_at, record FROM stage;
\echo '-- INSERT, month index only'
INSERT INTO by_month SELECT 't', order_id, month, created_at, record FROM stage;
\echo '-- INSERT, both (longrun_orders)'
INSERT INTO orders SELECT 't', order_id, month, created_at, record FROM stage;
\echo '-- merge as imports do, new rows'
INSERT INTO merged SELECT 't', order_id, month, created_at, record FROM stage
  ORDER BY order_id COLLATE "C"
  ON CONFLICT (tenant, order_id) DO UPDATE SET month = EXCLUDED.month,
     created_at = EXCLUDED.created_at, record = EXCLUDED.record;
\echo '-- merge as imports do, all replaced'
INSERT INTO merged SELECT 't', order_id, month, created_at, record FROM stage
  ORDER BY order_id COLLATE "C"
  ON CONFLICT (tenant, order_id) DO UPDATE SET month = EXCLUDED.month,
     created_at = EXCLUDED.created_at, record = EXCLUDED.record;
SQL
