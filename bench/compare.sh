#!/usr/bin/env bash
# Runs longrun (in each --sync mode) and BullMQ on Redis (default settings,
# and with appendfsync everysec) back to back with the same concurrency,
# RUNS times each, and prints the medians side by side with the ratios
# longrun/BullMQ.
#
#   bench/compare.sh            # defaults: C=32, 10 s per longrun scenario, N=20000 jobs, 3 runs
#   C=64 DURATION=5s N=50000 RUNS=5 bench/compare.sh
#
# Needs: cargo, node and npm, redis-server (Debian package redis-server).
set -euo pipefail
cd "$(dirname "$0")/.."
C=${C:-32}
DURATION=${DURATION:-10s}
N=${N:-20000}
RUNS=${RUNS:-3}
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"

cargo build --release --quiet
(cd bench/peers/bullmq && npm install --silent --no-audit --no-fund)

for sync in always batch never; do
  for run in $(seq "$RUNS"); do
    echo "longrun --sync $sync, run $run" >&2
    target/release/longrun bench run --scenarios ceiling,create,e2e,dispatch --sync "$sync" \
      --concurrency "$C" --duration "$DURATION" --output json 2>/dev/null \
      > "$OUT/longrun-$sync-$run.json"
  done
done
for fsync in "" everysec; do
  for run in $(seq "$RUNS"); do
    echo "bullmq appendfsync=${fsync:-off}, run $run" >&2
    (cd bench/peers/bullmq && node bench.js --count "$N" --concurrency "$C" ${fsync:+--appendfsync $fsync}) 2>/dev/null \
      > "$OUT/bullmq-${fsync:-off}-$run.json"
  done
done

python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
def load(name):
    return [json.load(open(f"{out}/{name}-{r}.json")) for r in range(1, runs + 1)]
def med(values):
    return statistics.median(values)
bull = {m: load(f"bullmq-{m}") for m in ("off", "everysec")}
print(f"{'measure':46} {'longrun':>12} {'BullMQ':>12} {'ratio':>8}")
for sync in ("always", "batch", "never"):
    lr = load(f"longrun-{sync}")
    ceiling = med([r["ceiling"]["per_second"] for r in lr])
    create = med([r["create"]["stats"]["per_second"] for r in lr])
    e2e = med([r["e2e"]["stats"]["per_second"] for r in lr])
    d50 = med([r["dispatch"]["high"]["p50_ms"] for r in lr])
    d99 = med([r["dispatch"]["high"]["p99_ms"] for r in lr])
    for mode in ("off", "everysec"):
        b = bull[mode]
        badd = med([x["add_per_second"] for x in b])
        bboth = med([x["add_and_process_per_second"] for x in b])
        be2e = med([x["e2e_per_second"] for x in b])
        b50 = med([x["start_latency_p50_ms"] for x in b])
        label = f"sync={sync} vs redis aof={mode}"
        print(f"-- {label}  (longrun gRPC ceiling {ceiling:,.0f}/s)")
        print(f"{'creates/adds per s':46} {create:12,.0f} {badd:12,.0f} {create / badd:8.2f}")
        print(f"{'end to end per s (vs BullMQ add+process)':46} {e2e:12,.0f} {bboth:12,.0f} {e2e / bboth:8.2f}")
        print(f"{'end to end per s, waiting for each job':46} {e2e:12,.0f} {be2e:12,.0f} {e2e / be2e:8.2f}")
        print(f"{'add-to-start p50 ms (lower is better)':46} {d50:12.2f} {b50:12.2f} {d50 / max(b50, 1e-9):8.2f}")
print(f"(results in {out})")
PY
