#!/usr/bin/env bash
# Runs the same load scenarios against Courier, Mosquitto and rumqttd, in
# turn, in one run, on loopback, and prints medians and Courier/peer ratios.
#
#   benches/compare.sh                # 3 rounds, 10 s per flow scenario,
#                                     # the brokers' order reversed every other round
#   ROUNDS=5 DURATION=20 benches/compare.sh
#   QUICK=1 benches/compare.sh        # tiny sizes, to check the script
#   COURIER_BASE=/path/to/older/courier BROKERS="courier courier-base" benches/compare.sh
#                                     # this build against an older one
#
# Installs Mosquitto (Debian package) and rumqttd (cargo install, into
# benches/.tools) if missing. Raw results: benches/.results/*.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-10000}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then ROUNDS=1; DURATION=1; WARMUP=0.5; CONNS=200; fi
BROKERS=${BROKERS:-"courier courier-periodic mosquitto rumqttd"}

if ! command -v mosquitto >/dev/null; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq mosquitto mosquitto-clients >/dev/null
fi
RUMQTTD=benches/.tools/bin/rumqttd
if [[ " $BROKERS " == *" rumqttd "* ]] && [ ! -x "$RUMQTTD" ]; then
  # 0.20.0's lock file pins a dependency that no longer builds; resolve anew.
  cargo install rumqttd --version 0.20.0 --root benches/.tools
fi
cargo build --release -q -p courier-broker -p courier-chat -p courier-benches
COURIER=target/release/courier
LOADGEN=target/release/loadgen

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port_of() { case $1 in courier) echo 21883;; courier-base) echo 21887;; courier-periodic) echo 21886;; mosquitto) echo 21884;; rumqttd) echo 21885;; esac; }

start() {
  local name=$1 port; port=$(port_of "$1")
  case $name in
    courier)
      "$COURIER" --listen "127.0.0.1:$port" --data-dir "$work/courier" >"$work/$name.log" 2>&1 &;;
    courier-base)
      "$COURIER_BASE" --listen "127.0.0.1:$port" --data-dir "$work/base" >"$work/$name.log" 2>&1 &;;
    courier-periodic)
      printf 'durability = "periodic"\nflush_interval_ms = 100\n' >"$work/periodic.toml"
      "$COURIER" --config "$work/periodic.toml" --listen "127.0.0.1:$port" --data-dir "$work/periodic" >"$work/$name.log" 2>&1 &;;
    mosquitto)
      mkdir -p "$work/mosq"
      # Queue limit raised from its default of 1000 so the offline scenario is fair.
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/mosq/\nmax_connections -1\nmax_queued_messages 100000\n' "$port" "$work" >"$work/mosquitto.conf"
      mosquitto -c "$work/mosquitto.conf" >"$work/$name.log" 2>&1 &;;
    rumqttd)
      cat >"$work/rumqttd.toml" <<TOML
id = 0
[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$port"
next_connection_delay_ms = 0
  [v4.1.connections]
  connection_timeout_ms = 60000
  max_payload_size = 20480
  max_inflight_count = 100
  dynamic_filters = true
TOML
      "$RUMQTTD" -c "$work/rumqttd.toml" >"$work/$name.log" 2>&1 &;;
  esac
  pids+=($!)
  echo $! >"$work/$name.pid"
  for _ in $(seq 1 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$name did not start; log:" >&2; cat "$work/$name.log" >&2; exit 1
}

mkdir -p benches/.results
out="benches/.results/compare-$(date +%Y%m%d-%H%M%S).jsonl"
for b in $BROKERS; do start "$b"; done
flow=(--duration "$DURATION" --warmup "$WARMUP")
for round in $(seq 1 "$ROUNDS"); do
  # The order alternates: on this machine whichever runs first in a round
  # tends to measure lower, which biases small differences.
  order=$BROKERS
  if [ $((round % 2)) = 0 ]; then order=$(echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
  for b in $order; do
    port=$(port_of "$b"); pid=$(cat "$work/$b.pid")
    lg=(timeout 300 "$LOADGEN" --port "$port" --label "$b" --pid "$pid")
    echo "round $round: $b" >&2
    {
      "${lg[@]}" pairs --pairs 50 --payload 64 "${flow[@]}"
      "${lg[@]}" pairs --pairs 50 --payload 64 --rate 10000 "${flow[@]}"
      "${lg[@]}" fanout --subs 100 --payload 64 --rate 500 "${flow[@]}"
      "${lg[@]}" fanin --pubs 50 --payload 64 "${flow[@]}"
      "${lg[@]}" pairs --pairs 50 --payload 64 --persistent "${flow[@]}"
      "${lg[@]}" offline --count 10000
      "${lg[@]}" conns --count "$CONNS" --hold 5
    } | sed "s/^{/{\"round\":$round,/" >>"$out" || echo "some scenario failed for $b" >&2
  done
done
echo "raw results: $out" >&2
python3 benches/summarize.py "$out"
echo "== kill -9 with $((500)) acknowledged QoS 1 messages queued" >&2
BROKERS="$(echo "$BROKERS" | sed 's/courier-periodic//; s/courier-base//')" benches/crash.sh | tee -a "$out"
