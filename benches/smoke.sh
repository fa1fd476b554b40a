#!/usr/bin/env bash
# CI smoke test of the benchmark tooling: builds the benches, runs every
# loadgen scenario once at tiny sizes against a debug Courier, and checks the
# JSON says nothing was lost. Not a measurement.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p courier-broker -p courier-chat -p courier-benches --bins
cargo bench -q -p courier-benches --no-run 2>/dev/null || cargo bench -p courier-benches --no-run
work=$(mktemp -d)
target/debug/courier --listen 127.0.0.1:0 --data-dir "$work/data" >"$work/out" 2>"$work/err" &
pid=$!
trap 'kill $pid 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do grep -q listening "$work/out" && break; sleep 0.1; done
port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$work/out" | head -1)
lg=(timeout 120 target/debug/loadgen --port "$port" --label smoke --pid "$pid")
{
  "${lg[@]}" pairs --pairs 2 --duration 1 --warmup 0.2
  "${lg[@]}" pairs --pairs 2 --duration 1 --warmup 0.2 --rate 200 --persistent
  "${lg[@]}" fanout --subs 3 --duration 1 --warmup 0.2 --rate 50
  "${lg[@]}" fanin --pubs 3 --duration 1 --warmup 0.2
  "${lg[@]}" offline --count 100
  "${lg[@]}" conns --count 50 --hold 0.2
  "${lg[@]}" conns --count 50 --hold 0.2 --message-bytes 200
} | tee "$work/results.jsonl"
python3 - "$work/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
assert len(rows) == 7, rows
bad = [r for r in rows if r.get("lost", 0) or r.get("failed", 0)]
assert not bad, bad
print(f"smoke: {len(rows)} passed, 0 failed")
PY
# The chat load generator too, tiny, on a debug build of its own broker.
BUILD=debug QUICK=1 timeout 300 benches/chat.sh | tee "$work/chat.jsonl"
python3 - "$work/chat.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
chat = [r for r in rows if str(r.get("label", "")).startswith("chat-")]
assert len(chat) == 6, rows
bad = [r for r in chat if r.get("refused", 0) or (r["scenario"] != "catchup" and not r["deliveries_per_s"])]
assert not bad, bad
print(f"chat smoke: {len(chat)} passed, 0 failed")
PY
