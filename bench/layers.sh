#!/usr/bin/env bash
# Where a create's server CPU goes, by layer: a fresh release server (sled,
# --sync always; or one node on PostgreSQL with PG set) takes N empty Sleep
# creates from h2load, each run to its end, while `perf record` samples
# the server with DWARF call stacks. Each sample goes to the innermost
# frame of a known layer, walking from the leaf up, so that kernel, libc
# and allocator time counts for whoever called it:
#   sled                    sled's B-tree, log writes and flushes (its
#                           syscalls and thread wakeups included)
#   sqlx                    the PostgreSQL driver and its socket I/O
#   longrun                 this crate: handlers, engine, rulebook, store
#   logging and spans       tracing (the audit line, attempt spans)
#   h2, hyper, tonic, tower HTTP/2 and gRPC framing, routing
#   prost                   protobuf encoding
#   tokio: parking and waking threads   futex, scheduler, epoll waits
#                           reached from tokio or from no known frame
#   tokio                   the rest of the runtime
#   kernel: sockets         TCP reads and writes of the gRPC connections
# Also prints the server's CPU per health Check and per operation, and
# h2load's, from runs of N calls without perf.
#
# With PG set, PostgreSQL's processes are sampled too (frame pointers)
# and their CPU per operation printed. Each of their samples goes to the
# first part of PostgreSQL's work found walking from the leaf outward:
# writing index entries, planning, committing (with the WAL flush),
# writing heap tuples, the batch's arrays (received, unnested, hashed for
# the join), the client's socket, index lookups, executor start and end,
# parsing. What is in none of them is the rest of the executor and of the
# backend's loop.
#
#   bench/layers.sh [BINARY]        # BINARY defaults to target/release/longrun
#   N=100000 bench/layers.sh
#   PG=postgres://postgres@127.0.0.1:5432 bench/layers.sh
#
# Needs perf (Debian: linux-perf) and h2load (nghttp2-client).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-60000}
PG=${PG:-}

work=$(mktemp -d)
pid=
db=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; drop_database' EXIT
sleep_body "$work/empty"

store=()
if [ -n "$PG" ]; then
  create_database
  store=(--store "$PG/$db")
fi
start_server "${store[@]}" --metrics-listen off

# N calls of a method; h2load's CPU seconds go to $work/h2load-cpu.
call() {
  /usr/bin/time -f '%U %S' -o "$work/h2load-cpu" h2load -n "$N" -c 4 -m 16 -d "$work/empty" \
    -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/$1" > "$work/h2load" 2>&1
  grep -q " $N succeeded, 0 failed, 0 errored" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
}

# N creates, each run to its end.
drive() {
  call longrun.v1.Diagnostics/Sleep
  while undone; do sleep 0.05; done
}

# The gRPC ceiling's cost, a health Check, for scale.
before=$(cpu_seconds)
call grpc.health.v1.Health/Check
after=$(cpu_seconds)
awk -v a="$after" -v b="$before" -v n="$N" \
  'BEGIN { printf "server CPU per health Check: %.1f us\n", (a - b) * 1e6 / n }'

# CPU seconds of PostgreSQL's processes (none without PG).
pg_cpu() {
  if [ -n "$PG" ]; then
    postgres_cpu_seconds
  else
    echo 0
  fi
}

# First unobserved, for the CPU per operation (perf's sampling costs the
# server CPU of its own), then again under perf for the shares.
before=$(cpu_seconds)
pg_before=$(pg_cpu)
drive
after=$(cpu_seconds)
pg_after=$(pg_cpu)
sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/creates per second: \1/p' "$work/h2load"
awk -v a="$after" -v b="$before" -v n="$N" \
  'BEGIN { printf "server CPU per operation: %.1f us\n", (a - b) * 1e6 / n }'
awk -v n="$N" '{ printf "h2load CPU per operation: %.1f us\n", ($1 + $2) * 1e6 / n }' "$work/h2load-cpu"
if [ -n "$PG" ]; then
  awk -v a="$pg_after" -v b="$pg_before" -v n="$N" \
    'BEGIN { printf "PostgreSQL CPU per operation: %.1f us\n", (a - b) * 1e6 / n }'
  perf record -q -F 499 -g -p "$(pgrep -d, -x postgres)" -o "$work/pg.data" > /dev/null 2>&1 &
  pg_perf=$!
fi
perf record -q -F 499 --call-graph dwarf,16384 -p "$pid" -o "$work/perf.data" > /dev/null 2>&1 &
perf=$!
drive
kill -INT "$perf" ${pg_perf:-}
wait "$perf" || true
[ -n "$PG" ] && { wait "$pg_perf" || true; }

echo "the server's samples:"

perf script -i "$work/perf.data" 2> /dev/null | awk '
function layer(s) {
  if (s ~ /sled::/) return "sled"
  if (s ~ /sqlx/) return "sqlx"
  if (s ~ /longrun::grpc::auth::audit|tracing_subscriber|tracing_core|tracing::|sharded_slab/) return "logging and spans"
  if (s ~ /longrun::/) return "longrun"
  if (s ~ /prost::/) return "prost"
  if (s ~ /h2::|hyper::|hyper_util|tonic::|tower::|axum::|http::|http_body/) return "h2, hyper, tonic, tower"
  if (s ~ /tokio::|mio::|tokio_util/) return "tokio"
  return ""
}
function sample(   i, j, l) {
  total++
  for (j = 1; j <= n; j++) {
    if (frame[j] ~ /tcp_sendmsg|tcp_recvmsg|sock_read_iter|sock_write_iter|__sys_sendto|__sys_recvfrom/) {
      for (i = 1; i <= n; i++) if (frame[i] ~ /sled::|sqlx/) break
      if (i > n) { count["kernel: sockets (gRPC connections)"]++; return }
      break
    }
  }
  for (j = 1; j <= n; j++) {
    if (frame[j] ~ /futex|schedule|epoll_wait|finish_task_switch|try_to_wake_up/) {
      for (i = 1; i <= n; i++) { l = layer(frame[i]); if (l != "") break }
      if (l == "tokio" || l == "") { count["tokio: parking and waking threads"]++; return }
      break
    }
  }
  for (i = 1; i <= n; i++) { l = layer(frame[i]); if (l != "") { count[l]++; return } }
  count["other"]++
}
/^[^ \t]/ { if (n) sample(); n = 0; next }
NF { frame[++n] = $0 }
END {
  if (n) sample()
  for (l in count) printf "%6.1f%%  %s\n", 100 * count[l] / total, l | "sort -rn"
}'

[ -n "$PG" ] || exit 0
echo "PostgreSQL's samples:"
perf script -i "$work/pg.data" 2> /dev/null | awk '
# The part of PostgreSQL'"'"'s work a frame names, if any.
function part(s) {
  if (s ~ / (btinsert|ExecInsertIndexTuples)\+/) return "index entries written"
  if (s ~ / (pg_plan_queries|GetCachedPlan|BuildCachedPlan)\+/) return "planning"
  if (s ~ / (CommitTransactionCommand|XLogFlush)\+/) return "commit and WAL flush"
  if (s ~ / (heap_insert|heap_update|heap_multi_insert|heap_lock_tuple)\+/) return "heap tuples written"
  if (s ~ / (MultiExecHash|ExecMakeTableFunctionResult|array_recv)\+/) return "the batch arrays: received, unnested, hashed"
  if (s ~ / (pq_getbyte|secure_read|secure_write|socket_flush|pq_flush)\+/) return "the client socket"
  if (s ~ / (_bt_first|_bt_next|index_getnext_slot|index_fetch_heap)\+/) return "index lookups"
  if (s ~ / (standard_ExecutorStart|standard_ExecutorEnd|PortalDrop)\+/) return "executor start and end"
  if (s ~ / (pg_parse_query|pg_analyze_and_rewrite_varparams|pg_analyze_and_rewrite_fixedparams)\+/) return "parsing"
  return ""
}
function sample(   i, p) {
  total++
  for (i = 1; i <= n; i++) { p = part(frame[i]); if (p != "") { count[p]++; return } }
  count["the rest of the executor and backend"]++
}
/^[^ \t]/ { if (n) sample(); n = 0; next }
NF { frame[++n] = $0 }
END {
  if (n) sample()
  for (p in count) printf "%6.1f%%  %s\n", 100 * count[p] / total, p | "sort -rn"
}'
