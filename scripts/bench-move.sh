#!/usr/bin/env bash
# make bench-move: a fresh 4-node ringkv on loopback (8 shards, 3 replicas
# each, so every shard has a node without a copy), then `ringkv-bench
# move-shard`: rebalancing off, 1 GiB loaded into one shard, a foreground
# open-loop load, one replica of that shard moved to the fourth node, and a
# report in bench/results/move-<timestamp>/ (move.json, move.md).
#
#   scripts/bench-move.sh [--quick] [extra ringkv-bench move-shard flags]
#
# --quick: 128 MiB and a 10 s baseline (a few minutes); default: 1 GiB and a
# 20 s baseline. Every process started here is stopped on exit, Ctrl-C
# included. Node logs are copied next to the report.
#
# Environment: BENCH_SHARDS (8), BENCH_RATE (foreground requests/s, 500),
# BENCH_SERVER_ARGS (extra ringkv-server flags, split on spaces),
# BENCH_BIN_DIR (where ringkv-server and ringkv-bench are taken from;
# default $CARGO_TARGET_DIR/release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench-move: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

BYTES=$((1024 * 1024 * 1024)); BASELINE=20
if [[ "${1:-}" == "--quick" ]]; then
    shift
    BYTES=$((128 * 1024 * 1024)); BASELINE=10
fi
SHARDS=${BENCH_SHARDS:-8}
RATE=${BENCH_RATE:-500}

TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/ringkv/target}
# BENCH_BIN_DIR: where ringkv-server and ringkv-bench are taken from.
BIN_DIR=${BENCH_BIN_DIR:-$TARGET/release}
# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_work bench-move
bench_private_bins move-shard

# Ports away from the playground (5005x) and bench-compare (5106x).
RK=(127.0.0.1:51071 127.0.0.1:51072 127.0.0.1:51073 127.0.0.1:51074)
read -ra SERVER_ARGS <<<"${BENCH_SERVER_ARGS:-}"
INITIAL="1=${RK[0]},2=${RK[1]},3=${RK[2]},4=${RK[3]}"
for i in 0 1 2 3; do
    "$SERVER" --node-id $((i + 1)) --listen "${RK[$i]}" --data-dir "$WORK/node$((i + 1))" \
        --initial-cluster "$INITIAL" --shards "$SHARDS" "${SERVER_ARGS[@]}" >"$WORK/node$((i + 1)).log" 2>&1 &
    PIDS+=($!)
done
RK_EP=$(IFS=,; echo "${RK[*]}")

# Ready: a write must succeed (bounded wait).
deadline=$((SECONDS + 120))
until "$BENCH" run --backend ringkv --endpoints "$RK_EP" --workload write --records 2 \
    --concurrency 1 --seconds 1 --warmup-seconds 0 >/dev/null 2>&1; do
    [[ $SECONDS -lt $deadline ]] || die "cluster not ready within 120 s (logs in $WORK)"
    sleep 0.5
done
log "4 nodes up, $SHARDS shards; $(uptime)"

OUT=bench/results/move-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
status=0
"$BENCH" move-shard --endpoints "$RK_EP" --bytes "$BYTES" --baseline-seconds "$BASELINE" \
    --rate "$RATE" --out-dir "$OUT" "$@" || status=$?
log "$(uptime)"
mkdir -p "$OUT/logs"
for i in 1 2 3 4; do cp "$WORK/node$i.log" "$OUT/logs/" 2>/dev/null || true; done
[[ $status -eq 0 ]] || die "move-shard failed (status $status); node logs in $OUT/logs"
log "report written to $OUT (move.md, move.json)"
