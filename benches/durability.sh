#!/usr/bin/env bash
# Durability cost, side by side in one run: 50 publisher/subscriber pairs,
# QoS 1, 64 B, persistent subscribers (every delivery is written to disk),
# against several Courier builds and modes, interleaved round by round (this
# machine is noisy). Each round starts each broker on a fresh data directory.
#
#   benches/durability.sh                 # this build: fsync vs periodic
#   ROUNDS=7 DURATION=10 benches/durability.sh
#   VARIANTS="old=/tmp/courier-old:fsync new=target/release/courier:fsync" benches/durability.sh
#
# A variant is label=binary:mode, mode being fsync or periodic (100 ms).
# Raw results: benches/.results/durability-*.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
PAIRS=${PAIRS:-50}
cargo build --release -q -p courier-broker -p courier-chat -p courier-benches
VARIANTS=${VARIANTS:-"courier=target/release/courier:fsync courier-periodic=target/release/courier:periodic"}
LOADGEN=target/release/loadgen

work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
printf 'durability = "periodic"\nflush_interval_ms = 100\n' >"$work/periodic.toml"
printf 'durability = "fsync"\n' >"$work/fsync.toml"

mkdir -p benches/.results
out="benches/.results/durability-$(date +%Y%m%d-%H%M%S).jsonl"
port=21890
for round in $(seq 1 "$ROUNDS"); do
  for v in $VARIANTS; do
    label=${v%%=*}; rest=${v#*=}; bin=${rest%:*}; mode=${rest##*:}
    port=$((port + 1))
    rm -rf "$work/data"
    "$bin" --config "$work/$mode.toml" --listen "127.0.0.1:$port" --data-dir "$work/data" >"$work/$label.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
    echo "round $round: $label" >&2
    timeout 300 "$LOADGEN" --port "$port" --label "$label" --pid "$pid" \
      pairs --pairs "$PAIRS" --payload 64 --persistent --duration "$DURATION" --warmup "$WARMUP" \
      | sed "s/^{/{\"round\":$round,/" >>"$out" || echo "run failed for $label" >&2
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
echo "raw results: $out" >&2
python3 benches/summarize.py "$out"
