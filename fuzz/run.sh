#!/usr/bin/env bash
# Runs each cargo fuzz target for a bounded time from the seed corpus in
# fuzz/corpus (new inputs go to a temporary directory, not the repo).
#
#   fuzz/run.sh        # 60 s per target
#   fuzz/run.sh 600    # longer
#
# A crash leaves its input in fuzz/artifacts/<target>/ and fails the run;
# fix it and turn the input into a regression test.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo fuzz needs nightly flags: the nightly toolchain if there is one,
# otherwise stable with RUSTC_BOOTSTRAP.
if cargo +nightly --version >/dev/null 2>&1; then
  tc=(+nightly)
else
  tc=()
  export RUSTC_BOOTSTRAP=1
fi
for t in codec connection protocol; do
  work=$(mktemp -d)
  cp corpus/"$t"/* "$work"/
  echo "== fuzz $t for ${secs}s"
  # No leak checks: each target keeps one broker for the whole process,
  # whose state outlives every input by design (and the scans cost 2/3
  # of the protocol target's time).
  cargo "${tc[@]}" fuzz run "$t" "$work" -- \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=4096 -detect_leaks=0 -print_final_stats=1
  rm -rf "$work"
done
