#!/usr/bin/env bash
# The HTTP/JSON face beside gRPC, on one server, side by side: h2load (the
# Debian package nghttp2-client, a load generator that knows nothing of
# longrun) drives each in turn, and the script prints one JSON object of
# requests per second, medians of RUNS rounds:
#   grpc_create   longrun.v1.Diagnostics/Sleep over gRPC (h2c)
#   h2_create     POST /v1/diagnostics:sleep {} over HTTP/2 (h2c)
#   h1_create     the same over HTTP/1.1 (one request at a time per
#                 connection, as HTTP/1.1 clients send)
#   grpc_get      google.longrunning.Operations/GetOperation of one operation
#   h2_get        GET /v1/operations/{id} over HTTP/2
#   h1_get        the same over HTTP/1.1
# Creates are durable (--sync always, the default); each round of creates
# gets a fresh server and data directory, so the store's size is the same.
#
#   bench/http.sh [BINARY]        # BINARY defaults to target/release/longrun
#   N=20000 CONNECTIONS=4 STREAMS=16 RUNS=3 bench/http.sh
set -euo pipefail
. "$(dirname "$0")/lib.sh"
BIN=${1:-target/release/longrun}
N=${N:-20000}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
RUNS=${RUNS:-3}

work=$(mktemp -d)
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; rm -rf "$work"' EXIT
printf '\0\0\0\0\0' > "$work/empty-grpc"
printf '{}' > "$work/empty-json"

# Requests per second of h2load with the given arguments; every response
# must be a 2xx.
drive() {
  h2load -n "$N" -c "$CONNECTIONS" "$@" > "$work/h2load" 2>&1
  if ! grep -q "status codes: $N 2xx" "$work/h2load"; then
    cat "$work/h2load" >&2
    exit 1
  fi
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load"
}

grpc() {
  drive -m "$STREAMS" -d "$1" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$address/$2"
}

h2() {
  drive -m "$STREAMS" "$@"
}

h1() {
  # HTTP/1.1 has no multiplexing: as many connections as h2's streams.
  h2load -n "$N" -c $((CONNECTIONS * STREAMS)) --h1 "$@" > "$work/h2load" 2>&1
  if ! grep -q "status codes: $N 2xx" "$work/h2load"; then
    cat "$work/h2load" >&2
    exit 1
  fi
  sed -n 's/^finished in [^,]*, \([0-9.]*\) req\/s.*/\1/p' "$work/h2load"
}

json_post=(-d "$work/empty-json" -H 'content-type: application/json')
: > "$work/rounds"
for _ in $(seq "$RUNS"); do
  start_server --metrics-listen off
  grpc_create=$(grpc "$work/empty-grpc" longrun.v1.Diagnostics/Sleep)
  stop_server
  start_server --metrics-listen off
  h2_create=$(h2 "${json_post[@]}" "http://$address/v1/diagnostics:sleep")
  stop_server
  start_server --metrics-listen off
  h1_create=$(h1 "${json_post[@]}" "http://$address/v1/diagnostics:sleep")

  # One operation to read, by name, both ways.
  name=$(curl -s -X POST -H 'content-type: application/json' -d '{}' \
    "http://$address/v1/diagnostics:sleep" | python3 -c 'import json,sys; print(json.load(sys.stdin)["name"])')
  python3 - "$name" > "$work/get-grpc" <<'EOF'
import struct, sys
name = sys.argv[1].encode()
message = b"\x0a" + bytes([len(name)]) + name
sys.stdout.buffer.write(b"\x00" + struct.pack(">I", len(message)) + message)
EOF
  grpc_get=$(grpc "$work/get-grpc" google.longrunning.Operations/GetOperation)
  h2_get=$(h2 "http://$address/v1/$name")
  h1_get=$(h1 "http://$address/v1/$name")
  stop_server
  echo "$grpc_create $h2_create $h1_create $grpc_get $h2_get $h1_get" >> "$work/rounds"
done

python3 - "$work/rounds" "$N" <<'EOF'
import json, statistics, sys
names = ["grpc_create", "h2_create", "h1_create", "grpc_get", "h2_get", "h1_get"]
rounds = [list(map(float, line.split())) for line in open(sys.argv[1])]
medians = {n: round(statistics.median(r[i] for r in rounds)) for i, n in enumerate(names)}
medians["rounds"] = [dict(zip(names, r)) for r in rounds]
medians["n"] = int(sys.argv[2])
print(json.dumps(medians))
EOF
