#!/usr/bin/env bash
# Start-up of a broker whose store holds many offline persistent sessions
# with queued messages: time from exec to listening, and memory after it.
# The store is filled over MQTT by the load generator, so any build (or an
# older one, COURIER_BASE) is measured on a store it wrote itself.
#
#   benches/startup.sh                          # 100,000 sessions x 10 messages
#   SESSIONS=20000 MESSAGES=10 benches/startup.sh
#   COURIER_BASE=/path/to/older/courier benches/startup.sh   # both, same run
set -euo pipefail
cd "$(dirname "$0")/.."
SESSIONS=${SESSIONS:-100000}
MESSAGES=${MESSAGES:-10}
ROUNDS=${ROUNDS:-3}
cargo build --release -q -p courier-broker -p courier-chat -p courier-benches
LOADGEN=target/release/loadgen
builds=("courier=target/release/courier")
[ -n "${COURIER_BASE:-}" ] && builds+=("courier-base=$COURIER_BASE")
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

# Starts $1 on $2 (data dir); sets pid, and secs to the seconds until it
# listens.
start() {
  local bin=$1 dir=$2 port=$3
  local t0 fifo="$work/out.$$"; rm -f "$fifo"; mkfifo "$fifo"
  t0=$(date +%s.%N)
  RUST_LOG=warn "$bin" --listen "127.0.0.1:$port" --data-dir "$dir" >"$fifo" 2>>"$work/log" &
  pid=$!
  exec 3<"$fifo"
  while read -r line <&3; do
    case $line in *listening*) break;; esac
  done
  # Keep draining stdout so the broker never blocks on it.
  cat <&3 >/dev/null & exec 3<&-
  secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.3f", b - a }')
}

stop() { kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

mem() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }

port=22883
for b in "${builds[@]}"; do
  name=${b%%=*} bin=${b#*=}
  dir="$work/$name"
  start "$bin" "$dir" "$port"
  "$LOADGEN" --port "$port" --label "$name" fill --sessions "$SESSIONS" --messages "$MESSAGES" >&2
  stop
  for round in $(seq 1 "$ROUNDS"); do
    start "$bin" "$dir" "$port"
    sleep 1
    rss=$(mem "$pid" VmRSS) hwm=$(mem "$pid" VmHWM)
    stop
    printf '{"scenario":"startup","broker":"%s","round":%d,"sessions":%d,"messages_each":%d,"listening_s":%.3f,"rss_kb":%d,"peak_rss_kb":%d}\n' \
      "$name" "$round" "$SESSIONS" "$MESSAGES" "$secs" "$rss" "$hwm"
  done
  rm -rf "$dir"
done
