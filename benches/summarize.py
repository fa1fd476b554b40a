#!/usr/bin/env python3
"""Medians per broker and scenario from loadgen JSON lines, with Courier/peer ratios."""
import json, statistics, sys
from collections import defaultdict

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]

def key(r):
    s = r["scenario"]
    if s == "pairs":
        s += " persistent" if r.get("persistent") else ""
        s += f" @{int(r['rate'])}/s" if r.get("rate") else " closed"
    if s == "fanout":
        s += f" 1->{r['subscribers']} @{int(r['rate'] * r['subscribers'])}/s"
    if s == "fanin":
        s += f" {r['publishers']}->1"
    return s

metrics = {
    "pairs": ["deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "lost"],
    "fanout": ["deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "lost"],
    "fanin": ["deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "lost"],
    "offline": ["drain_s", "drain_msgs_per_s", "lost"],
    "conns": ["connects_per_s", "bytes_per_conn", "connected"],
    "kill9": ["delivered_after_restart"],
}
vals = defaultdict(list)
brokers = []
for r in rows:
    b = r["broker"]
    if b not in brokers:
        brokers.append(b)
    for m in metrics[r["scenario"]]:
        if r.get(m) is not None:
            vals[(key(r), m, b)].append(r[m])

scen = []
for r in rows:
    if key(r) not in scen:
        scen.append(key(r))
print("| scenario | metric | " + " | ".join(brokers) + " | " +
      " | ".join(f"courier/{p}" for p in brokers if p != "courier") + " |")
print("|---|---|" + "---|" * (2 * len(brokers) - 1))
for s in scen:
    for m in metrics[s.split()[0]]:
        med = {b: statistics.median(vals[(s, m, b)]) for b in brokers if vals[(s, m, b)]}
        if not med:
            continue
        cells = [f"{med[b]:,.2f}" if b in med else "-" for b in brokers]
        ratios = []
        for p in brokers:
            if p == "courier":
                continue
            if "courier" in med and p in med and med[p]:
                ratios.append(f"{med['courier'] / med[p]:.2f}")
            else:
                ratios.append("-")
        print(f"| {s} | {m} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
