#!/usr/bin/env bash
# longrun against BullMQ on Redis, side by side in one run, RUNS times each
# (alternating), with the medians printed at the end.
#
#   longrun: h2load (bench/h2load.sh) drives the gRPC ceiling, durable
#            creates and create-until-done, 4 connections x 16 streams, on
#            the default --sync always, on sled and then on one PostgreSQL
#            node (synchronous_commit on, a fresh database per measure);
#            `longrun bench run` measures dispatch and Get latency.
#   BullMQ:  bench/peers/bullmq with 64 producers and a worker of
#            concurrency 64, on Redis with appendfsync always (the same
#            durability as --sync always), everysec, and no persistence.
#
#   bench/compare.sh                      # N=20000 jobs, RUNS=3
#   BASELINE=/path/to/older/longrun bench/compare.sh   # and an older build
#   PG= bench/compare.sh                  # without the PostgreSQL node
#
# Sustained mode: Sleep(0) creates at a steady rate for a long time (sled,
# --sync always, retention 1m), reporting create-to-start p50/p99 and the
# server's RSS and data-directory size every 10 s, plotted as a PNG
# (matplotlib, installed into target/bench-venv when missing):
#
#   bench/compare.sh --duration 30m                # at 70% of the peak
#   bench/compare.sh --duration 30m --rate 8000    # at a given rate
#   PNG=docs/sustained.png bench/compare.sh --duration 30m
#
# Needs: cargo, h2load (Debian nghttp2-client), node and npm, redis-server,
# and PostgreSQL at $PG (default postgres://postgres@127.0.0.1:5432).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-20000}
RUNS=${RUNS:-3}
BASELINE=${BASELINE:-}
PG=${PG-postgres://postgres@127.0.0.1:5432}
OUT=${OUT:-$(mktemp -d)}
PNG=${PNG:-docs/sustained.png}
mkdir -p "$OUT"

duration=
rate=
while [ $# -gt 0 ]; do
  case $1 in
    --duration) duration=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    *) echo "unknown argument $1; see the header of $0" >&2; exit 2 ;;
  esac
done

cargo build --release --quiet

if [ -n "$duration" ]; then
  if [ -z "$rate" ]; then
    for run in $(seq "$RUNS"); do
      echo "peak, run $run" >&2
      N=$N bench/h2load.sh target/release/longrun > "$OUT/peak-$run.json"
    done
    rate=$(python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
e2e = statistics.median(json.load(open(f"{out}/peak-{r}.json"))["e2e"] for r in range(1, runs + 1))
print(round(0.7 * e2e))
PY
)
    echo "70% of the median peak end to end: $rate/s" >&2
  fi
  # Enough creates in flight that the client keeps the rate when a
  # commit takes a few milliseconds (32, the default, held a run asked
  # for 9,650/s at 7,250/s).
  target/release/longrun bench sustained --rate "$rate" --duration "$duration" \
    --concurrency 256 --output json 2>/dev/null > "$OUT/sustained.json"
  venv=target/bench-venv
  if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet matplotlib
  fi
  mkdir -p "$(dirname "$PNG")"
  "$venv/bin/python" bench/plot_sustained.py "$OUT/sustained.json" "$PNG"
  exit 0
fi

(cd bench/peers/bullmq && npm install --silent --no-audit --no-fund)

for run in $(seq "$RUNS"); do
  echo "run $run: longrun" >&2
  N=$N bench/h2load.sh target/release/longrun > "$OUT/longrun-$run.json"
  if [ -n "$PG" ]; then
    echo "run $run: longrun on PostgreSQL" >&2
    N=$N PG=$PG bench/h2load.sh target/release/longrun > "$OUT/postgres-$run.json"
  fi
  target/release/longrun bench run --scenarios dispatch,get --duration 10s --output json \
    2>/dev/null > "$OUT/longrun-latency-$run.json"
  if [ -n "$BASELINE" ]; then
    echo "run $run: baseline" >&2
    N=$N bench/h2load.sh "$BASELINE" > "$OUT/baseline-$run.json"
  fi
  for fsync in always everysec off; do
    echo "run $run: bullmq appendfsync=$fsync" >&2
    flag=()
    [ "$fsync" != off ] && flag=(--appendfsync "$fsync")
    (cd bench/peers/bullmq && node bench.js --count "$N" --concurrency 64 "${flag[@]}") \
      2>/dev/null > "$OUT/bullmq-$fsync-$run.json"
  done
done

python3 - "$OUT" "$RUNS" "${BASELINE:+yes}" "${PG:+yes}" <<'PY'
import json, statistics, sys
out, runs, baseline, pg = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "yes", sys.argv[4] == "yes"
def load(name):
    return [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, runs + 1)]
def med(values):
    return statistics.median(values)
lr = load("longrun")
lat = load("longrun-latency")
bull = {m: load(f"bullmq-{m}") for m in ("always", "everysec", "off")}
ceiling = med([r["ceiling"] for r in lr])
create = med([r["create"] for r in lr])
e2e = med([r["e2e"] for r in lr])
print(f"medians of {runs} runs, N = {runs and lr[0]['n']}")
print(f"{'longrun (h2load)':44} {'this build':>12}" + (f" {'baseline':>12}" if baseline else ""))
rows = [("gRPC ceiling (health Check), per s", "ceiling"),
        ("durable creates per s", "create"),
        ("create N until all N done, per s", "e2e")]
base = load("baseline") if baseline else None
for label, key in rows:
    line = f"{label:44} {med([r[key] for r in lr]):12,.0f}"
    if base:
        line += f" {med([r[key] for r in base]):12,.0f}"
    print(line)
print(f"{'creates as a share of the ceiling':44} {create / ceiling:12.1%}")
for load_name in ("low", "paced", "high"):
    p50 = med([r["dispatch"][load_name]["p50_ms"] for r in lat])
    p99 = med([r["dispatch"][load_name]["p99_ms"] for r in lat])
    print(f"{'dispatch, ' + load_name + ' load, p50 / p99 ms':44} {p50:6.3f} / {p99:.3f}")
for gets in ("paced", "flat"):
    g = [r["get"][gets]["get"] for r in lat]
    print(f"{'Get, ' + gets + ', p50 / p99 ms':44} {med([x['p50_ms'] for x in g]):6.3f} / {med([x['p99_ms'] for x in g]):.3f}"
          f"  ({med([r['get'][gets]['background_e2e_per_second'] for r in lat]):,.0f} e2e/s beside)")
print()
print(f"{'BullMQ, per s':44} {'always':>10} {'everysec':>10} {'off':>10}")
for label, key in (("adds", "add_per_second"),
                   ("processing a backlog", "process_per_second"),
                   ("add and process at once (N until done)", "add_and_process_at_once_per_second"),
                   ("each client waiting for its job", "e2e_per_second")):
    print(f"{label:44} " + " ".join(f"{med([x[key] for x in bull[m]]):10,.0f}" for m in ("always", "everysec", "off")))
print()
always = med([x["add_and_process_at_once_per_second"] for x in bull["always"]])
off = med([x["add_and_process_at_once_per_second"] for x in bull["off"]])
adds = med([x["add_per_second"] for x in bull["always"]])
print(f"longrun creates / BullMQ adds (always)            {create / adds:6.2f}")
print(f"longrun until-done / BullMQ at once (always)      {e2e / always:6.2f}")
print(f"longrun until-done / BullMQ at once (no AOF)      {e2e / off:6.2f}")
if pg:
    pgr = load("postgres")
    pg_create = med([r["create"] for r in pgr])
    pg_e2e = med([r["e2e"] for r in pgr])
    print()
    print(f"{'longrun on PostgreSQL, one node, per s':44} {'creates':>10} {'until done':>10}")
    print(f"{'':44} {pg_create:10,.0f} {pg_e2e:10,.0f}")
    print(f"PostgreSQL creates / sled creates                 {pg_create / create:6.2f}")
    print(f"PostgreSQL until-done / BullMQ at once (always)   {pg_e2e / always:6.2f}")
print(f"(results in {out})")
PY
