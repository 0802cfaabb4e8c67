#!/usr/bin/env bash
# make bench-failover: a fresh 3-node ringkv on loopback with default
# settings (no Raft timing flags), then `ringkv-bench failover`: an
# open-loop write load through the smart client, kill -9 of the node
# leading the most shards after 10 s, 10 s more of load, and a report in
# bench/results/failover-<timestamp>/ (failover.json, failover.md; node
# logs in logs/, not committed). About a minute.
#
#   scripts/bench-failover.sh [extra ringkv-bench failover flags]
#
# Every process started here is stopped on exit, Ctrl-C included.
#
# Environment: BENCH_RATE (writes/s, 1000), BENCH_SHARDS (data shards;
# default: the server's default, 16), BENCH_SERVER_ARGS (extra
# ringkv-server flags, split on spaces), BENCH_RUST_LOG (the nodes'
# RUST_LOG; default: the server's own default filter), BENCH_BIN_DIR (where
# ringkv-server and ringkv-bench are taken from; default
# $CARGO_TARGET_DIR/release).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench-failover: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

RATE=${BENCH_RATE:-1000}
TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/ringkv/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET/release}
# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_work bench-failover
bench_private_bins failover

# Ports away from the playground (5005x), bench-compare (5106x) and
# bench-move (5107x).
RK=(127.0.0.1:52091 127.0.0.1:52092 127.0.0.1:52093)
read -ra SERVER_ARGS <<<"${BENCH_SERVER_ARGS:-}"
[[ -n ${BENCH_SHARDS:-} ]] && SERVER_ARGS+=(--shards "$BENCH_SHARDS")
[[ -n ${BENCH_RUST_LOG:-} ]] && export RUST_LOG=$BENCH_RUST_LOG
INITIAL="1=${RK[0]},2=${RK[1]},3=${RK[2]}"
for i in 0 1 2; do
    n=$((i + 1))
    "$SERVER" --node-id $n --listen "${RK[$i]}" --data-dir "$WORK/node$n" \
        --initial-cluster "$INITIAL" "${SERVER_ARGS[@]}" >"$WORK/node$n.log" 2>&1 &
    PIDS+=($!)
    echo $! >"$WORK/n$n.pid"
done
RK_EP=$(IFS=,; echo "${RK[*]}")

# Ready: a write must succeed (bounded wait).
deadline=$((SECONDS + 120))
until "$BENCH" run --backend ringkv --endpoints "$RK_EP" --workload write --records 2 \
    --concurrency 1 --seconds 1 --warmup-seconds 0 >/dev/null 2>&1; do
    [[ $SECONDS -lt $deadline ]] || die "cluster not ready within 120 s (logs in $WORK)"
    sleep 0.5
done
log "3 nodes up; $(uptime)"

OUT=bench/results/failover-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
status=0
NOTE="3 nodes on loopback; ringkv-server flags: ${SERVER_ARGS[*]:-none (default settings)}"
NOTE+="; RUST_LOG: ${RUST_LOG:-server default}"
"$BENCH" failover --endpoints "$RK_EP" --rate "$RATE" --cluster-note "$NOTE" \
    --kill-cmd "kill -9 \$(cat $WORK/n{node}.pid)" --out-dir "$OUT" "$@" || status=$?
log "$(uptime)"
mkdir -p "$OUT/logs"
for i in 1 2 3; do cp "$WORK/node$i.log" "$OUT/logs/" 2>/dev/null || true; done
[[ $status -eq 0 ]] || die "failover failed (status $status); node logs in $OUT/logs"
log "report written to $OUT (failover.md, failover.json)"
