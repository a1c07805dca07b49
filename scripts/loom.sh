#!/usr/bin/env bash
# Runs the loom models: the lock-free offset cache (engine/src/cache/loom_tests.rs) and the
# completion slots' release protocol (engine/src/completion.rs).
#
#   scripts/loom.sh            # all models
#   scripts/loom.sh update     # only models whose name contains "update"
#
# Builds in its own target dir (a --cfg change rebuilds every crate), in release because
# loom explores thousands of interleavings. LOOM_MAX_PREEMPTIONS bounds the exploration;
# 2 is the bound the models are sized for (whole run well under 10 minutes on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
filter="loom_tests${1:+::}${1:-}"
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-$PWD/target/loom}"
export RUSTFLAGS="--cfg loom -C debug-assertions"
export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-2}"
exec cargo test -p coffer --release --lib "$filter" -- --test-threads=1
