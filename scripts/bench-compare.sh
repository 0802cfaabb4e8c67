#!/usr/bin/env bash
# make bench-compare: a fresh 3-node ringkv and a fresh 3-member etcd on
# loopback (fsync on for both), the same records and workloads run against
# each in turn, plus the local RocksDB ceiling, then a report in
# bench/results/<timestamp>/ (results.json, results.md, throughput.svg).
#
#   scripts/bench-compare.sh [--quick]
#
# Disk speed on a shared machine moves between runs by a factor of several
# and write throughput follows it, so one run per system settles nothing:
# the target workloads (write, a, c) run in ROUNDS rounds, each round one
# run of ringkv and one of etcd, back to back (which goes first alternates),
# and the report gives medians, the ratio of every round and where each
# target stands. Every ringkv and etcd run also records its mean WAL fsync
# latency, scraped from the nodes' metrics.
#
# --quick: 3 workloads, 3 rounds of 3 s runs (under 3 minutes); default:
# 6 workloads, 5 rounds of 10 s runs of the targets and one run of the
# others (under 15 minutes). Both add open-loop runs of ringkv and etcd at
# one offered load per target workload (1 round quick, 2 default), for
# latency at the same load. BENCH_ROUNDS overrides the number of rounds,
# BENCH_BIN_DIR the folder of the binaries, BENCH_RINGKV_FLAGS adds flags
# to every ringkv server (for example "--shards 1 --shards-per-node-min 0"
# for one Raft group, as etcd has); the report's setup.md records them.
# Everything started here is stopped on exit.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'bench-compare: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

QUICK=0
[[ "${1:-}" == "--quick" ]] && QUICK=1
if [[ $QUICK -eq 1 ]]; then
    WORKLOADS=(write a c); SECONDS_RUN=3; WARMUP=1; RECORDS=5000; ROUNDS=3; OPEN_ROUNDS=1
else
    WORKLOADS=(write a b c d f); SECONDS_RUN=10; WARMUP=2; RECORDS=20000; ROUNDS=5; OPEN_ROUNDS=2
fi
ROUNDS=${BENCH_ROUNDS:-$ROUNDS}
[[ $ROUNDS =~ ^[1-9][0-9]?$ ]] || die "BENCH_ROUNDS must be 1..99"
# The workloads the targets are set on: run in rounds, and open loop.
TARGET_WORKLOADS=(write a c)
# Offered load of the open-loop runs, percent of the lower median
# closed-loop throughput of ringkv and etcd on the same workload.
OPEN_SHARE=${BENCH_OPEN_SHARE:-50}
CLIENTS=${BENCH_CLIENTS:-64}
VALUE_BYTES=${BENCH_VALUE_BYTES:-100}

TARGET=${CARGO_TARGET_DIR:-$HOME/.cache/ringkv/target}
BIN_DIR=${BENCH_BIN_DIR:-$TARGET/release}

# etcd 3.4 from Debian is the peer.
if ! command -v etcd >/dev/null 2>&1; then
    if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing etcd-server"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
    else
        die "etcd is missing; run: sudo apt-get install -y etcd-server"
    fi
fi

# shellcheck source=scripts/lib/bench-common.sh
source scripts/lib/bench-common.sh
bench_work bench
# The bench binary must know `run --metrics` (this checkout's build).
bench_private_bins run
"$BENCH" run --help | grep -q -- --metrics || die "$BIN_DIR/ringkv-bench predates run --metrics: rebuild it here"

# Ports away from the playground's 5005x and etcd's default 2379/2380.
RK=(127.0.0.1:51061 127.0.0.1:51062 127.0.0.1:51063)
RK_STATUS=(127.0.0.1:51071 127.0.0.1:51072 127.0.0.1:51073)
EC=(127.0.0.1:23791 127.0.0.1:23792 127.0.0.1:23793)
EP=(127.0.0.1:23801 127.0.0.1:23802 127.0.0.1:23803)
INITIAL="1=${RK[0]},2=${RK[1]},3=${RK[2]}"
read -r -a RINGKV_FLAGS <<<"${BENCH_RINGKV_FLAGS:-}"
for i in 0 1 2; do
    "$SERVER" --node-id $((i + 1)) --listen "${RK[$i]}" --status-listen "${RK_STATUS[$i]}" \
        --data-dir "$WORK/ringkv$((i + 1))" \
        --initial-cluster "$INITIAL" "${RINGKV_FLAGS[@]}" >"$WORK/ringkv$((i + 1)).log" 2>&1 &
    PIDS+=($!)
done
ETCD_CLUSTER="e1=http://${EP[0]},e2=http://${EP[1]},e3=http://${EP[2]}"
for i in 0 1 2; do
    etcd --name "e$((i + 1))" --data-dir "$WORK/etcd$((i + 1))" \
        --listen-client-urls "http://${EC[$i]}" --advertise-client-urls "http://${EC[$i]}" \
        --listen-peer-urls "http://${EP[$i]}" --initial-advertise-peer-urls "http://${EP[$i]}" \
        --initial-cluster "$ETCD_CLUSTER" --initial-cluster-state new --initial-cluster-token ringkv-bench \
        --logger zap --log-level warn >"$WORK/etcd$((i + 1)).log" 2>&1 &
    PIDS+=($!)
done

# Ready: a write must succeed on each system (bounded wait).
ready() {
    local backend=$1 endpoints=$2 deadline=$((SECONDS + 120))
    until "$BENCH" run --backend "$backend" --endpoints "$endpoints" --workload write --records 2 \
        --concurrency 1 --seconds 1 --warmup-seconds 0 >/dev/null 2>&1; do
        [[ $SECONDS -lt $deadline ]] || die "$backend not ready within 120 s (logs in $WORK)"
        sleep 0.5
    done
}
RK_EP=$(IFS=,; echo "${RK[*]}")
EC_EP=$(IFS=,; echo "${EC[*]}")
RK_METRICS=$(IFS=,; echo "${RK_STATUS[*]}")
ready ringkv-forward "$RK_EP"
ready etcd "$EC_EP"
log "ringkv and etcd are up"

STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
OUT=bench/results/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RESULTS=$OUT/runs.jsonl
declare -A LOADED=()
# run BACKEND WORKLOAD [extra ringkv-bench flags...]
run() {
    local backend=$1 workload=$2 endpoints="" metrics=() load=()
    shift 2
    case $backend in
        ringkv | ringkv-forward) endpoints=$RK_EP; metrics=(--metrics "$RK_METRICS") ;;
        etcd) endpoints=$EC_EP; metrics=(--metrics "$EC_EP") ;;
    esac
    # Load each system once (ringkv and ringkv-forward share a cluster).
    local system="${endpoints:-local}"
    if [[ -z "${LOADED[$system]:-}" ]]; then load=(--load); LOADED[$system]=1; fi
    "$BENCH" run --backend "$backend" --endpoints "$endpoints" --data-dir "$WORK/local" \
        --workload "$workload" --records "$RECORDS" --value-bytes "$VALUE_BYTES" --concurrency "$CLIENTS" \
        --seconds "$SECONDS_RUN" --warmup-seconds "$WARMUP" "${load[@]}" "${metrics[@]}" --out "$RESULTS" "$@"
}
is_target() { [[ " ${TARGET_WORKLOADS[*]} " == *" $1 "* ]]; }
# One round: ringkv and etcd back to back on each target workload, the
# first of the two alternating from round to round.
pair() {
    local round=$1 workload=$2
    shift 2
    if ((round % 2 == 1)); then
        run ringkv "$workload" "$@"; run etcd "$workload" "$@"
    else
        run etcd "$workload" "$@"; run ringkv "$workload" "$@"
    fi
}
for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r of $ROUNDS"
    for w in "${WORKLOADS[@]}"; do
        if is_target "$w"; then pair "$r" "$w"; fi
    done
done
# Once each: the other workloads, the one-node path and the local ceiling.
for w in "${WORKLOADS[@]}"; do
    if ! is_target "$w"; then pair 1 "$w"; fi
    run ringkv-forward "$w"
    run rocksdb-local "$w"
done
# Latency at the same offered load: open-loop runs of ringkv and etcd at
# OPEN_SHARE percent of the lower of their median closed-loop throughputs
# above (latency counted from each request's intended start).
closed_ops() {
    python3 - "$RESULTS" "$1" "$2" <<'PY'
import json, statistics, sys
path, backend, workload = sys.argv[1:]
ops = [r["ops_per_second"] for r in map(json.loads, open(path))
       if r["backend"] == backend and r["config"]["workload"] == workload and r["config"].get("rate") is None]
print(int(statistics.median(ops)) if ops else 0)
PY
}
for w in "${TARGET_WORKLOADS[@]}"; do
    ringkv_ops=$(closed_ops ringkv "$w"); etcd_ops=$(closed_ops etcd "$w")
    lower=$(( ringkv_ops < etcd_ops ? ringkv_ops : etcd_ops ))
    rate=$(( lower * OPEN_SHARE / 100 ))
    [[ $rate -gt 0 ]] || die "no closed-loop throughput for $w to derive the open-loop rate from"
    log "$w: open loop at $rate ops/s ($OPEN_SHARE% of $lower)"
    for ((r = 1; r <= OPEN_ROUNDS; r++)); do
        pair "$r" "$w" --rate "$rate"
    done
done
{
    echo "# bench-compare setup"
    echo
    echo "- started: $STARTED; finished: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (with local changes)')"
    echo "- mode: $([[ $QUICK -eq 1 ]] && echo quick || echo full); rounds: $ROUNDS closed, $OPEN_ROUNDS open loop; ${SECONDS_RUN} s runs after ${WARMUP} s warm-up"
    echo "- clients: $CLIENTS; value bytes: $VALUE_BYTES; records: $RECORDS; open-loop share: $OPEN_SHARE%"
    echo "- ringkv server flags beyond the defaults: ${BENCH_RINGKV_FLAGS:-none}"
    echo "- etcd: $(etcd --version 2>/dev/null | head -1)"
    echo "- machine: $(nproc) cores; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$OUT/setup.md"
"$BENCH" report --results "$RESULTS" --out-dir "$OUT" --notes "$OUT/setup.md"
log "report written to $OUT (setup.md, results.md, results.json, throughput.svg, latency-*.svg)"
