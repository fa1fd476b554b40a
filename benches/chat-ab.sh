#!/usr/bin/env bash
# Two builds of `courier` side by side on the chat scenarios, alternating
# build by build within each round (this machine is noisy: only figures
# from one run compare). Each build gets a fresh broker per round.
#
#   benches/chat-ab.sh OLD_BINARY NEW_BINARY
#   ROUNDS=3 DURATION=8 SCENARIOS="raw chat chat10k chat1k group100" benches/chat-ab.sh a b
#
# Build the old one from a worktree, for example:
#   git worktree add /tmp/old 42384dd && (cd /tmp/old && cargo build --release -p courier-chat)
# Raw results: benches/.results/chat-ab-*.jsonl (each line labelled with
# the binary and the scenario).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: $0 OLD_BINARY NEW_BINARY" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-8}
WARMUP=${WARMUP:-2}
SCENARIOS=${SCENARIOS:-raw chat chat10k chat1k group100}
cargo build --release -q -p courier-benches
bin=target/release
mkdir -p benches/.results
out=benches/.results/chat-ab-$(date +%Y%m%d-%H%M%S).jsonl
work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
flow=(--duration "$DURATION" --warmup "$WARMUP")
for r in $(seq 1 "$ROUNDS"); do
  for b in "$@"; do
    rm -rf "$work"/*
    printf 'data_dir = "%s/data"\n[chat.rate_limits]\nenabled = false\n[chat.tokens]\nsecret_file = "%s/secret"\n' "$work" "$work" >"$work/courier.toml"
    "$b" -c "$work/courier.toml" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
    pid=$!
    for _ in $(seq 1 100); do grep -q listening "$work/out" && break; sleep 0.1; done
    port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$work/out" | head -1)
    lg=("$bin/loadgen" --port "$port" --pid "$pid")
    cl=("$bin/chatload" --port "$port" --secret "$work/secret" --pid "$pid")
    for s in $SCENARIOS; do
      label="$b $s round $r"
      case $s in
        raw) "${lg[@]}" --label "$label" pairs --pairs 50 --persistent "${flow[@]}" ;;
        chat) "${cl[@]}" --label "$label" direct --pairs 50 "${flow[@]}" ;;
        chat10k) "${cl[@]}" --label "$label" direct --pairs 50 --rate 10000 "${flow[@]}" ;;
        chat1k) "${cl[@]}" --label "$label" direct --pairs 50 --rate 1000 "${flow[@]}" ;;
        group10) "${cl[@]}" --label "$label" group --size 10 --groups 10 "${flow[@]}" ;;
        group100) "${cl[@]}" --label "$label" group --size 100 --groups 2 "${flow[@]}" ;;
        *) echo "unknown scenario $s" >&2; exit 2 ;;
      esac
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done | tee "$out"
echo "results: $out"
