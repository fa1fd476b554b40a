#!/usr/bin/env bash
# The chat benchmark: the chat path against raw persistent QoS 1 pairs of
# the same build, in the same run, on one broker (release build, default
# config: fsync durability), round by round in alternating order; then
# latency at a fixed rate, groups of 10, 100 and 1,000, and the catch-up
# of a device with 10,000 messages waiting.
#
#   benches/chat.sh                 # 3 rounds of 10 s
#   ROUNDS=5 DURATION=20 benches/chat.sh
#   QUICK=1 benches/chat.sh         # tiny sizes, to check the script
#
# Raw results: benches/.results/chat-*.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
QUICK=${QUICK:-0}
PAIRS=${PAIRS:-50}
CATCHUP=${CATCHUP:-10000}
if [ "$QUICK" = 1 ]; then ROUNDS=1; DURATION=1; WARMUP=0.5; PAIRS=5; CATCHUP=200; fi
BUILD=${BUILD:-release}
if [ "$BUILD" = release ]; then
  cargo build --release -q -p courier-chat -p courier-benches
else
  cargo build -q -p courier-chat -p courier-benches
fi
bin=target/$BUILD

work=$(mktemp -d)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
printf 'data_dir = "%s/data"\n[chat.rate_limits]\nenabled = false\n[chat.tokens]\nsecret_file = "%s/secret"\n' "$work" "$work" >"$work/courier.toml"
"$bin/courier" -c "$work/courier.toml" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/out" && break; sleep 0.1; done
port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$work/out" | head -1)

mkdir -p benches/.results
out=benches/.results/chat-$(date +%Y%m%d-%H%M%S).jsonl
lg=("$bin/loadgen" --port "$port" --pid "$pid")
cl=("$bin/chatload" --port "$port" --secret "$work/secret" --pid "$pid")
flow=(--duration "$DURATION" --warmup "$WARMUP")
{
  for r in $(seq 1 "$ROUNDS"); do
    if [ $((r % 2)) = 1 ]; then
      "${lg[@]}" --label raw-pairs pairs --pairs "$PAIRS" --persistent "${flow[@]}"
      "${cl[@]}" --label chat-direct direct --pairs "$PAIRS" "${flow[@]}"
    else
      "${cl[@]}" --label chat-direct direct --pairs "$PAIRS" "${flow[@]}"
      "${lg[@]}" --label raw-pairs pairs --pairs "$PAIRS" --persistent "${flow[@]}"
    fi
  done
  # Latency at 1,000 and 10,000 deliveries/s (1:1: one delivery per message).
  "${cl[@]}" --label chat-direct-1k direct --pairs "$PAIRS" --rate 1000 "${flow[@]}"

  rate=10000; [ "$QUICK" = 1 ] && rate=100
  "${cl[@]}" --label chat-direct-fixed direct --pairs "$PAIRS" --rate "$rate" "${flow[@]}"
  # Groups: 30% of each group's devices offline.
  g10=10; g100=2; [ "$QUICK" = 1 ] && g10=1 && g100=1
  "${cl[@]}" --label chat-group10 group --size 10 --groups "$g10" "${flow[@]}"
  "${cl[@]}" --label chat-group100 group --size 100 --groups "$g100" "${flow[@]}"
  if [ "$QUICK" != 1 ]; then
    "${cl[@]}" --label chat-group1000 group --size 1000 --groups 1 --rate 20 "${flow[@]}"
  fi
  "${cl[@]}" --label chat-catchup catchup --messages "$CATCHUP"
} | tee "$out"
echo "results: $out"
