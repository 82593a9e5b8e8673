# Shared by the bench scripts; source it: . "$(dirname "$0")/lib.sh"

# Waits until the server with pid $2, logging to $1, says the address it
# listens on, and sets $address to it. Shows the log and exits when the
# server dies or has not started within a minute.
wait_listening() {
  local log=$1 pid=$2
  address=
  for _ in $(seq 600); do
    address=$(sed -n 's/.*listening on //p' "$log" | head -1)
    [ -n "$address" ] && return
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$log" >&2
  echo "the server did not start" >&2
  exit 1
}

# Starts "$BIN" serve on a fresh data directory, $work/data, with the extra
# flags "$@", logging to $work/log; sets $pid and $address.
start_server() {
  rm -rf "$work/data" && mkdir -p "$work/data"
  "$BIN" serve --listen 127.0.0.1:0 --data-dir "$work/data" "$@" 2> "$work/log" &
  pid=$!
  wait_listening "$work/log" "$pid"
}

# True while some operation on the server at $address is not done.
# Follows every page, since a page of a selective filter may come back
# empty with a token to go on.
undone() {
  "$BIN" ops list --server "http://$address" --filter 'done = false' \
    --page-size 1000 --all --output json | grep -q '"operations"'
}

# The CPU seconds (user + system) the processes named, by default the
# server ($pid), have used so far, summed; one gone meanwhile counts
# nothing.
cpu_seconds() {
  local stats=()
  for p in "${@:-$pid}"; do stats+=("/proc/$p/stat"); done
  # cat reads past a file that is gone; awk alone would stop there.
  cat "${stats[@]}" 2>/dev/null |
    awk -v t="$(getconf CLK_TCK)" '{ s += ($14 + $15) / t } END { print s + 0 }' || true
}

# The CPU seconds every process named postgres has used so far, summed;
# none found stops the script (set -e), rather than count nothing.
postgres_cpu_seconds() {
  local pids
  pids=$(pgrep -x postgres)
  # shellcheck disable=SC2086 # one argument per pid
  cpu_seconds $pids
}

# Creates a fresh database on the server at $PG, named in $db.
create_database() {
  db=longrun_bench_$RANDOM$RANDOM
  psql "$PG/postgres" -qc "CREATE DATABASE $db" > /dev/null
}

# Drops the database $db on the server at $PG, if one is named, and
# forgets it.
drop_database() {
  if [ -n "${db:-}" ]; then
    psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" > /dev/null
    db=
  fi
}

# Stops the server start_server started.
stop_server() {
  kill "$pid"
  wait "$pid" || true
  pid=
}

# Writes to $1 the Diagnostics.Sleep request the benches send, in gRPC
# framing (no compression, a 4-byte length): empty, or, when $2 names a
# concurrency key, a SleepRequest whose run (field 8) carries it
# (RunOptions field 2).
sleep_body() {
  python3 - "$1" "${2:-}" <<'PY'
import struct, sys
key = sys.argv[2].encode()
message = b""
if key:
    assert len(key) < 120
    run = b"\x12" + bytes([len(key)]) + key
    message = b"\x42" + bytes([len(run)]) + run
open(sys.argv[1], "wb").write(b"\0" + struct.pack(">I", len(message)) + message)
PY
}
