#!/usr/bin/env bash
# Server CPU per request, the breakdown issue 30 starts from: on one fresh
# release server per measure (sled, --sync always), h2load sends N
# requests of each kind, and the server's own CPU time (user + system,
# from /proc/PID/stat) over the run is divided by N. Prints one JSON line
# per round:
#   health       grpc.health.v1.Health/Check (the gRPC ceiling's cost)
#   grpc_create  Diagnostics/Sleep with no duration: a durable create, its
#                claim, its (empty) run and its end
#   h2_create    the same over HTTP/2 JSON
#   grpc_get     GetOperation of one operation
#   h2_get       GET /v1/operations/{id}
#
#   bench/cpu.sh [BINARY]     # BINARY defaults to target/release/longrun
#   N=20000 ROUNDS=3 bench/cpu.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
ROUNDS=${ROUNDS:-3}

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
printf '\0\0\0\0\0' > "$work/empty-grpc"
printf '{}' > "$work/empty-json"

# Microseconds of server CPU per request for h2load with these arguments
# (every answer a 2xx), counted until the server is idle again.
per_request() {
  local before after
  before=$(cpu_seconds)
  h2load -n "$N" -c 4 -m 16 "$@" > "$work/h2load" 2>&1
  grep -q "status codes: $N 2xx" "$work/h2load" || { cat "$work/h2load" >&2; exit 1; }
  # Creates run on after their answer: wait until the queue is empty.
  sleep 1
  after=$(cpu_seconds)
  echo "($after - $before) * 1000000 / $N" | bc -l
}

grpc=(-H 'content-type: application/grpc' -H 'te: trailers')
for _ in $(seq "$ROUNDS"); do
  start_server --metrics-listen off
  health=$(per_request -d "$work/empty-grpc" "${grpc[@]}" "http://$address/grpc.health.v1.Health/Check")
  stop_server
  start_server --metrics-listen off
  grpc_create=$(per_request -d "$work/empty-grpc" "${grpc[@]}" "http://$address/longrun.v1.Diagnostics/Sleep")
  stop_server
  start_server --metrics-listen off
  h2_create=$(per_request -d "$work/empty-json" -H 'content-type: application/json' "http://$address/v1/diagnostics:sleep")
  name=$(curl -s -X POST -H 'content-type: application/json' -d '{}' \
    "http://$address/v1/diagnostics:sleep" | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
  python3 - "$name" > "$work/get-grpc" <<'PY'
import struct, sys
name = sys.argv[1].encode()
message = b"\x0a" + bytes([len(name)]) + name
sys.stdout.buffer.write(b"\0" + struct.pack(">I", len(message)) + message)
PY
  grpc_get=$(per_request -d "$work/get-grpc" "${grpc[@]}" "http://$address/google.longrunning.Operations/GetOperation")
  h2_get=$(per_request "http://$address/v1/$name")
  stop_server
  printf '{"health_us": %.1f, "grpc_create_us": %.1f, "h2_create_us": %.1f, "grpc_get_us": %.1f, "h2_get_us": %.1f}\n' \
    "$health" "$grpc_create" "$h2_create" "$grpc_get" "$h2_get"
done
