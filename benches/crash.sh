#!/usr/bin/env bash
# Kill -9 test against each broker: a persistent subscriber is away while N
# QoS 1 messages are published and acknowledged; the broker is killed with
# SIGKILL and restarted on the same data; how many reach the subscriber?
# Prints one JSON line per broker. Used by compare.sh; runs alone too.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-500}
BROKERS=${BROKERS:-"courier mosquitto rumqttd"}
COURIER=target/release/courier
RUMQTTD=benches/.tools/bin/rumqttd
work=$(mktemp -d)
trap 'kill $(cat "$work"/*.pid 2>/dev/null) 2>/dev/null || true; rm -rf "$work"' EXIT
port=21890

launch() {
  case $1 in
    courier) "$COURIER" --listen "127.0.0.1:$port" --data-dir "$work/courier" >>"$work/log" 2>&1 & ;;
    mosquitto)
      mkdir -p "$work/mosq"
      printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/mosq/\n' "$port" "$work" >"$work/m.conf"
      mosquitto -c "$work/m.conf" >>"$work/log" 2>&1 & ;;
    rumqttd)
      printf 'id = 0\n[router]\nid = 0\nmax_connections = 100\nmax_outgoing_packet_count = 200\nmax_segment_size = 104857600\nmax_segment_count = 10\n[v4.1]\nname = "v4-1"\nlisten = "127.0.0.1:%s"\nnext_connection_delay_ms = 0\n  [v4.1.connections]\n  connection_timeout_ms = 60000\n  max_payload_size = 20480\n  max_inflight_count = 100\n  dynamic_filters = true\n' "$port" >"$work/r.toml"
      "$RUMQTTD" -c "$work/r.toml" >>"$work/log" 2>&1 & ;;
  esac
  echo $! >"$work/$1.pid"
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && return; sleep 0.1; done
  echo "$1 did not start" >&2; cat "$work/log" >&2; exit 1
}

for b in $BROKERS; do
  port=$((port + 1))
  launch "$b"
  mosquitto_sub -p "$port" -i crash-sub -c -q 1 -t crash/t -E
  seq 1 "$N" | mosquitto_pub -p "$port" -q 1 -t crash/t -l
  kill -9 "$(cat "$work/$b.pid")"; wait "$(cat "$work/$b.pid")" 2>/dev/null || true
  launch "$b"
  got=$(timeout 20 mosquitto_sub -p "$port" -i crash-sub -c -q 1 -t crash/t -W 3 2>/dev/null | sort -u | wc -l || true)
  kill "$(cat "$work/$b.pid")" 2>/dev/null || true
  printf '{"scenario":"kill9","broker":"%s","acknowledged":%s,"delivered_after_restart":%s}\n' "$b" "$N" "$got"
done
