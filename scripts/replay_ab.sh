#!/usr/bin/env bash
# Compares recovery's replay rate of several compaction_bench builds on the same compacted log:
# the builds take turns (ROUNDS times), each reopening the log 5 times; prints per build the
# median replay rate (wall clock, and per CPU second of the process) over all reopenings.
#
#   scripts/replay_ab.sh LOG_DIR ROUNDS BINARY...
#
# LOG_DIR is made by the first build on its first run (one storm of 20000 groups × 64
# partitions with the compactor on, compacted to the end) and reused as is afterwards, so every
# build replays the very same bytes. Copy each build's target/release/compaction_bench to its
# own path first (the binaries must agree on --groups and the offsets partitions).
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 LOG_DIR ROUNDS BINARY..." >&2
    exit 2
fi
log_dir=$1
rounds=$2
shift 2
samples=$(mktemp)
trap 'rm -f "$samples"' EXIT
for _ in $(seq "$rounds"); do
    for binary in "$@"; do
        "$binary" --groups 20000 --duration 6 --warmup 1 --replay-dir "$log_dir" \
            --replay-attempts 5 --dir "$log_dir.tmp" |
            sed -nE "s|.*replay ([0-9.]+) M records/s .*: ([0-9.]+) M records/s per CPU second|$binary \1 \2|p" \
                >>"$samples"
    done
done
for binary in "$@"; do
    python3 - "$binary" "$samples" <<'PY'
import statistics, sys
binary, path = sys.argv[1], sys.argv[2]
wall, cpu = [], []
for line in open(path):
    name, w, c = line.rsplit(maxsplit=2)
    if name == binary:
        wall.append(float(w))
        cpu.append(float(c))
print(f"{binary}: {len(wall)} reopenings; replay M records/s, median (min–max): "
      f"wall {statistics.median(wall):.2f} ({min(wall):.2f}–{max(wall):.2f}), "
      f"per CPU second {statistics.median(cpu):.2f} ({min(cpu):.2f}–{max(cpu):.2f})")
PY
done
