#!/usr/bin/env bash
# The chat layer's ephemeral traffic, one scenario per run, each on a fresh
# broker (release build):
#
#   benches/presence.sh presence [--contacts 200 --flapping 20 --period 10 --down 6 --duration 60]
#       one user watching 200 contacts, 20 of them dropping every 10 s and
#       back after 6 s: presence messages and bytes per minute the watcher
#       gets, updates from stable contacts, seconds between a flapper's
#       updates
#   benches/presence.sh flood [--victim 20 --flood 200 --duration 15]
#       (rate limits on, the default config) a pair at 20 msgs/s measured
#       alone, then while another user's device floods at 200/s, ten times
#       its limit: the victim's p99 both times
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p courier-chat -p courier-benches
scenario=${1:?usage: $0 presence|flood [options]}
shift
limits='[chat.rate_limits]\nenabled = false\n'
[ "$scenario" = flood ] && limits=''
work=$(mktemp -d)
printf "data_dir = \"%s/data\"\n${limits}[chat.tokens]\nsecret_file = \"%s/secret\"\n" "$work" "$work" >"$work/courier.toml"
target/release/courier -c "$work/courier.toml" --listen 127.0.0.1:0 >"$work/out" 2>"$work/err" &
pid=$!
for _ in $(seq 1 100); do grep -q listening "$work/out" && break; sleep 0.1; done
port=$(sed -n 's/.*:\([0-9]*\)$/\1/p' "$work/out" | head -1)
target/release/chatload --port "$port" --secret "$work/secret" --pid "$pid" --label "$scenario" "$scenario" "$@"
kill "$pid"; wait "$pid" 2>/dev/null || true; rm -rf "$work"
