#!/usr/bin/env bash
# Soak test (docs/reliability.md; not part of CI): mixed gRPC load for SOAK_SECONDS (10
# minutes) against a release `jobledger serve` on a private PostgreSQL cluster, with a
# fault injected every SOAK_FAULT_EVERY seconds, rotating through
#   pg-fast       pg_ctl stop -m fast, down for SOAK_PG_DOWN seconds (10), start
#   pg-immediate  pg_ctl stop -m immediate (a crash: WAL recovery on start), start
#   pg-terminate  pg_terminate_backend() of every connection of the server
#   server-kill   SIGKILL of the server, then a restart
# The load (scripts/soak-load) retries like a careful client and counts every outcome by
# gRPC code and ErrorInfo reason. At the end: `jobledger check` over the database, a
# graceful SIGTERM of the server, and a summary (requests served, errors by code, RSS at
# start and end, recovery time of each fault, invariants). Exit code 0 only when the
# load saw no anomaly, every invariant holds and the server exited 0 on SIGTERM.
#
#   scripts/soak.sh                                  # 10 minutes
#   SOAK_SECONDS=120 SOAK_FAULT_EVERY=20 scripts/soak.sh   # a short run
#   nice -n 10 scripts/soak.sh                       # on a shared machine
#
# Settings (environment): SOAK_SECONDS (600), SOAK_FAULT_EVERY (60; the first fault comes
# half an interval in, so the last one has time to recover before the end),
# SOAK_PG_DOWN (10), SOAK_CONCURRENCY (8), SOAK_POOL_SIZE (10), SOAK_FSYNC (on),
# SOAK_KEEP=1 keeps the work directory (logs, samples) instead of removing it,
# SOAK_SKIP_BUILD=1 uses the binaries already built. Needs: cargo, PostgreSQL's initdb and
# pg_ctl (run as the `postgres` user when this runs as root), psql, python3 (for a free port).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_TOTAL="${SOAK_SECONDS:-600}"
FAULT_EVERY="${SOAK_FAULT_EVERY:-60}"
PG_DOWN="${SOAK_PG_DOWN:-10}"
CONCURRENCY="${SOAK_CONCURRENCY:-8}"
POOL_SIZE="${SOAK_POOL_SIZE:-10}"
FSYNC="${SOAK_FSYNC:-on}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$TARGET_DIR/release/jobledger"
LOAD_BIN="$TARGET_DIR/release/jobledger-soak-load"

log() { printf '[soak %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 2; }

# --- tools ------------------------------------------------------------------------
pg_tool() {
  local name="$1"
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return; fi
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1 || true)"
  [[ -n "$found" ]] || die "$name not found on PATH or under /usr/lib/postgresql"
  echo "$found"
}
INITDB="$(pg_tool initdb)"
PG_CTL="$(pg_tool pg_ctl)"
command -v psql >/dev/null || die "psql not found"
command -v python3 >/dev/null || die "python3 not found (used to pick free ports)"
as_pg() {
  if [[ "$(id -u)" == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# --- work directory and cleanup ---------------------------------------------------
WORK="$(mktemp -d /tmp/jobledger-soak.XXXXXX)"
DATA="$WORK/data"
SERVER_PID=""
LOAD_PID=""
cleanup() {
  local rc=$?
  [[ -n "$LOAD_PID" ]] && kill "$LOAD_PID" 2>/dev/null || true
  [[ -n "$SERVER_PID" ]] && kill -KILL "$SERVER_PID" 2>/dev/null || true
  if [[ -d "$DATA" ]]; then as_pg "$PG_CTL" -D "$DATA" stop -m immediate >/dev/null 2>&1 || true; fi
  if [[ "${SOAK_KEEP:-0}" == 1 ]]; then
    log "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build ------------------------------------------------------------------------
if [[ "${SOAK_SKIP_BUILD:-0}" != 1 ]]; then
  log "building the release server and the load generator"
  (cd "$ROOT" && cargo build --release --quiet --bin jobledger)
  CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --quiet \
    --manifest-path "$ROOT/scripts/soak-load/Cargo.toml"
fi
[[ -x "$BIN" && -x "$LOAD_BIN" ]] || die "missing $BIN or $LOAD_BIN (build them, or drop SOAK_SKIP_BUILD)"
# Copies: a build in the shared target directory during the run must not change the
# binary a restart runs.
cp "$BIN" "$WORK/jobledger"
cp "$LOAD_BIN" "$WORK/soak-load"
BIN="$WORK/jobledger"
LOAD_BIN="$WORK/soak-load"

# --- PostgreSQL -------------------------------------------------------------------
PG_PORT="$(free_port)"
if [[ "$(id -u)" == 0 ]]; then chown postgres:postgres "$WORK"; fi
as_pg "$INITDB" -D "$DATA" -A trust -U postgres -E UTF8 >"$WORK/initdb.log" 2>&1 \
  || { cat "$WORK/initdb.log" >&2; die "initdb failed"; }
pg_start() {
  as_pg "$PG_CTL" -D "$DATA" -l "$WORK/postgres.log" -w -t 60 \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k $WORK -c max_connections=50 -c fsync=$FSYNC" \
    start >/dev/null
}
pg_start
DATABASE_URL="postgres://postgres@127.0.0.1:$PG_PORT/jobledger"
psql_q() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "${2:-jobledger}" -Atqc "$1"; }
log "PostgreSQL $("$PG_CTL" --version | awk '{print $3}') on 127.0.0.1:$PG_PORT (fsync=$FSYNC), data in $DATA"

# --- the server -------------------------------------------------------------------
SERVER_PORT="$(free_port)"
METRICS_PORT="$(free_port)"
ADDR="http://127.0.0.1:$SERVER_PORT"
SERVER_STARTS=0
start_server() {
  RUST_LOG=warn JOBLEDGER_LOG_FORMAT=json "$BIN" serve \
    --database-url "$DATABASE_URL" --listen-addr "127.0.0.1:$SERVER_PORT" \
    --pool-size "$POOL_SIZE" --drain-timeout-ms 5000 --metrics-addr "127.0.0.1:$METRICS_PORT" \
    >>"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  SERVER_STARTS=$((SERVER_STARTS + 1))
}
# Seconds (with ms) until `jobledger health` says SERVING, at most $1 seconds.
wait_serving() {
  local limit="$1" t0 now
  t0=$(date +%s%N)
  while true; do
    if "$BIN" health --addr "$ADDR" >/dev/null 2>&1; then
      now=$(date +%s%N)
      printf '%d.%03d' $(((now - t0) / 1000000000)) $((((now - t0) / 1000000) % 1000))
      return 0
    fi
    now=$(date +%s%N)
    if (((now - t0) / 1000000000 >= limit)); then echo "never"; return 1; fi
    sleep 0.1
  done
}
# Seconds until a CreateJob (type soak-probe, left QUEUED) succeeds, at most $1 seconds.
wait_write() {
  local limit="$1" t0 now
  t0=$(date +%s%N)
  while true; do
    if "$BIN" job create --addr "$ADDR" --type soak-probe --timeout-ms 2000 >/dev/null 2>&1; then
      now=$(date +%s%N)
      printf '%d.%03d' $(((now - t0) / 1000000000)) $((((now - t0) / 1000000) % 1000))
      return 0
    fi
    now=$(date +%s%N)
    if (((now - t0) / 1000000000 >= limit)); then echo "never"; return 1; fi
    sleep 0.1
  done
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

start_server
wait_serving 60 >/dev/null || die "the server did not become SERVING (see $WORK/server.log)"
RSS_IDLE=$(rss_kib "$SERVER_PID")
log "server pid $SERVER_PID on $ADDR, idle RSS $(mib "$RSS_IDLE") MiB; load: $CONCURRENCY workers for ${SECONDS_TOTAL}s, a fault every ${FAULT_EVERY}s"

# --- load, samples, faults --------------------------------------------------------
"$LOAD_BIN" --addr "$ADDR" --seconds "$SECONDS_TOTAL" --concurrency "$CONCURRENCY" \
  --report-every 10 >"$WORK/load.json" 2>"$WORK/load.log" &
LOAD_PID=$!
START=$(date +%s)
elapsed() { echo $(($(date +%s) - START)); }

echo "t_seconds,server_pid,rss_kib" >"$WORK/rss.csv"
FAULTS=(pg-fast pg-immediate pg-terminate server-kill)
FAULT_LOG="$WORK/faults.txt"
: >"$FAULT_LOG"
NEXT_FAULT=$((FAULT_EVERY / 2))
NEXT_SAMPLE=0
FAULT_N=0
RSS_START=""

inject() {
  local kind="$1" t serving writing detail=""
  t=$(elapsed)
  case "$kind" in
    pg-fast)
      as_pg "$PG_CTL" -D "$DATA" stop -m fast -w >/dev/null
      sleep "$PG_DOWN"
      pg_start
      detail="down ${PG_DOWN}s"
      ;;
    pg-immediate)
      as_pg "$PG_CTL" -D "$DATA" stop -m immediate -w >/dev/null
      pg_start
      detail="crash recovery"
      ;;
    pg-terminate)
      local n
      n=$(psql_q "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                  WHERE datname = 'jobledger' AND pid <> pg_backend_pid()" postgres)
      detail="$n connections terminated"
      ;;
    server-kill)
      local rss
      rss=$(rss_kib "$SERVER_PID")
      kill -KILL "$SERVER_PID"
      wait "$SERVER_PID" 2>/dev/null || true
      echo "$t,$SERVER_PID,$rss" >>"$WORK/rss.csv"
      start_server
      detail="RSS before kill $(mib "$rss") MiB; new pid $SERVER_PID"
      ;;
  esac
  # Recovery, from the end of the fault (PostgreSQL started again, backends terminated,
  # the server restarted): until health says SERVING (the probe may not even have seen
  # a short outage), and until a CreateJob succeeds.
  serving=$(wait_serving 120) || true
  writing=$(wait_write 120) || true
  printf '%4ss  %-13s %-44s SERVING after %6ss, a write after %6ss\n' \
    "$t" "$kind" "$detail" "$serving" "$writing" | tee -a "$FAULT_LOG" >&2
}

while kill -0 "$LOAD_PID" 2>/dev/null; do
  now=$(elapsed)
  if ((now >= NEXT_SAMPLE)); then
    rss=$(rss_kib "$SERVER_PID")
    echo "$now,$SERVER_PID,$rss" >>"$WORK/rss.csv"
    # "Start" is after 30 s of load: the pools and buffers have grown to their working size.
    if [[ -z "$RSS_START" && "$now" -ge 30 ]]; then RSS_START=$rss; RSS_START_PID=$SERVER_PID; fi
    NEXT_SAMPLE=$((now + 10))
  fi
  if ((now >= NEXT_FAULT && now < SECONDS_TOTAL - 5)); then
    inject "${FAULTS[$((FAULT_N % ${#FAULTS[@]}))]}"
    FAULT_N=$((FAULT_N + 1))
    NEXT_FAULT=$((NEXT_FAULT + FAULT_EVERY))
  fi
  sleep 1
done
LOAD_RC=0
wait "$LOAD_PID" || LOAD_RC=$?
LOAD_PID=""
RSS_END=$(rss_kib "$SERVER_PID")
HWM_END=$(hwm_kib "$SERVER_PID")
END_PID=$SERVER_PID
echo "$(elapsed),$SERVER_PID,$RSS_END" >>"$WORK/rss.csv"

# --- after the load ---------------------------------------------------------------
CHECK_RC=0
"$BIN" check --database-url "$DATABASE_URL" >"$WORK/check.txt" 2>&1 || CHECK_RC=$?
JOBS=$(psql_q "SELECT count(*) FROM job")
EVENTS=$(psql_q "SELECT count(*) FROM job_event")
PROBES=$(psql_q "SELECT count(*) FROM job WHERE type = 'soak-probe'")
BY_STATUS=$(psql_q "SELECT string_agg(status || '=' || n, ' ' ORDER BY status) FROM (SELECT status, count(*) n FROM job GROUP BY status) s")
kill -TERM "$SERVER_PID"
SERVER_RC=0
wait "$SERVER_PID" || SERVER_RC=$?
SERVER_PID=""
PANICS=$(grep -c -i 'panicked' "$WORK/server.log" || true)
LOG_ERRORS=$(grep -c '"level":"ERROR"' "$WORK/server.log" || true)
LOG_WARNINGS=$(grep -c '"level":"WARN"' "$WORK/server.log" || true)

RSS_START_TEXT="n/a (the load ran under 30 s)"
if [[ -n "$RSS_START" ]]; then RSS_START_TEXT="$(mib "$RSS_START") MiB"; fi

summary() {
  python3 - "$WORK/load.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"  calls               {s['calls']} in {s['seconds']:.0f} s ({s['concurrency']} workers)")
print(f"  requests served     {s['ok']} OK ({s['ok_per_second']:.0f}/s), {s['errors']} errors, {s['retries']} retries")
print("  outcomes by code:")
for k, v in sorted(s['by_outcome'].items(), key=lambda kv: -kv[1]):
    print(f"    {v:>9}  {k}")
j = s['jobs']
print(f"  job lives           {j['started']} started, {j['succeeded']} succeeded, "
      f"{j['abandoned_after_retries']} abandoned after retries")
print(f"  anomalies           {s['anomalies']}")
for a in s['anomaly_examples']:
    print(f"    {a}")
EOF
}

{
  echo
  echo "== soak summary ($(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)) =="
  echo "  duration            ${SECONDS_TOTAL} s, a fault every ${FAULT_EVERY} s ($FAULT_N faults), server started $SERVER_STARTS times"
  if [[ -s "$WORK/load.json" ]]; then summary; else echo "  the load generator wrote no summary (exit $LOAD_RC); see $WORK/load.log"; fi
  echo "  server RSS          idle $(mib "$RSS_IDLE") MiB; start (30 s into the load, pid ${RSS_START_PID:-none}) $RSS_START_TEXT; end (pid $END_PID) $(mib "$RSS_END") MiB, its peak $(mib "$HWM_END") MiB"
  echo "  faults:"
  sed 's/^/    /' "$FAULT_LOG"
  echo "  database            $JOBS jobs ($PROBES of them recovery probes, left QUEUED), $EVENTS events; by status: $BY_STATUS"
  echo "  jobledger check     exit $CHECK_RC"
  sed 's/^/    /' "$WORK/check.txt"
  echo "  SIGTERM             server exit code $SERVER_RC"
  echo "  server log          $PANICS panics, $LOG_ERRORS ERROR lines, $LOG_WARNINGS WARN lines"
} | tee "$WORK/summary.txt"

if [[ "${SOAK_KEEP:-0}" == 1 ]]; then
  log "RSS samples: $WORK/rss.csv; load progress: $WORK/load.log"
fi
if ((LOAD_RC == 0 && CHECK_RC == 0 && SERVER_RC == 0 && PANICS == 0)); then
  log "soak passed"
  exit 0
fi
log "soak FAILED (load exit $LOAD_RC, check exit $CHECK_RC, server exit $SERVER_RC, panics $PANICS)"
exit 1
