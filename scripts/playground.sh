#!/usr/bin/env bash
# Runs a local 3-node ringkv cluster in the foreground (`make playground`).
#
#   nodes      1, 2, 3 on 127.0.0.1:50051, :50052, :50053
#   data       ./data/playground/node{1,2,3}
#   logs       ./data/playground/node{1,2,3}.log
#
# The first run bootstraps a new cluster; a later run restarts the same
# cluster from its data (same command: a node resumes from its data dir).
# Waits until every shard has a leader, prints the endpoints and a grpcurl
# session, then runs until Ctrl-C or SIGTERM, which stop all three nodes.
# `make playground-clean` wipes the data.
#
# Expects the release binary to be built already (the Makefile does that).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ringkv/target}"
BIN="$TARGET_DIR/release/ringkv-server"
DATA=./data/playground
HOST=127.0.0.1
PORTS=(50051 50052 50053)
NODES=(1 2 3)
SHARDS=3
INITIAL_CLUSTER="1=$HOST:50051,2=$HOST:50052,3=$HOST:50053"
READY_TIMEOUT_S=120
POLL_INTERVAL_S=0.5
STOP_TIMEOUT_S=10
LOG_TAIL_LINES=40

log() { printf 'playground: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_of() { echo "${PORTS[$(($1 - 1))]}"; }
log_of() { echo "$DATA/node$1.log"; }

# ---------------------------------------------------------------------------
# Preconditions
# ---------------------------------------------------------------------------
[[ -x "$BIN" ]] || die "ringkv-server binary not found at $BIN
  build it with 'make playground' (or 'cargo build --release --bin ringkv-server'),
  or point CARGO_TARGET_DIR at the target directory that holds it"
command -v grpcurl >/dev/null 2>&1 || die "grpcurl not found on PATH; run scripts/install-deps.sh"
command -v python3 >/dev/null 2>&1 || die "python3 not found on PATH; run scripts/install-deps.sh"

# True when something accepts TCP connections on 127.0.0.1:$1.
port_listening() {
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

busy=()
for p in "${PORTS[@]}"; do
    if port_listening "$p"; then
        busy+=("$p")
    fi
done
if [[ ${#busy[@]} -gt 0 ]]; then
    log "error: port(s) ${busy[*]} on $HOST already accept connections."
    log "  Is a playground already running? Stop it with Ctrl-C in its terminal."
    log "  Otherwise find the process with: ss -ltnp 'sport = :${busy[0]}'"
    exit 1
fi

# ---------------------------------------------------------------------------
# Process management
# ---------------------------------------------------------------------------
declare -A PID=()

# True while process $1 exists and is not a zombie.
alive() {
    local pid=$1 st
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -r /proc/$pid/stat ]]; then
        st=$(</proc/"$pid"/stat) || return 1
        st=${st##*) }
        [[ ${st%% *} != Z ]] || return 1
    fi
    return 0
}

# SIGTERM to every node, up to STOP_TIMEOUT_S for them to exit, then SIGKILL.
# Safe to call more than once.
stop_nodes() {
    local n pid
    local -a running=()
    for n in "${!PID[@]}"; do
        pid=${PID[$n]}
        if alive "$pid"; then
            running+=("$pid")
        fi
    done
    if [[ ${#running[@]} -eq 0 ]]; then
        return 0
    fi
    log "stopping nodes (SIGTERM)"
    kill -TERM "${running[@]}" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        local -a left=()
        for pid in "${running[@]}"; do
            if alive "$pid"; then
                left+=("$pid")
            fi
        done
        if [[ ${#left[@]} -eq 0 ]]; then
            running=()
            break
        fi
        running=("${left[@]}")
        sleep 0.2
    done
    if [[ ${#running[@]} -gt 0 ]]; then
        log "nodes still running after ${STOP_TIMEOUT_S}s, sending SIGKILL to pid(s) ${running[*]}"
        kill -KILL "${running[@]}" 2>/dev/null || true
    fi
    for n in "${!PID[@]}"; do
        wait "${PID[$n]}" 2>/dev/null || true
    done
    log "all nodes stopped"
}

on_signal() {
    # A second Ctrl-C must not interrupt the (bounded) shutdown.
    trap '' INT TERM
    echo >&2
    stop_nodes
    trap - EXIT
    exit 0
}

on_exit() {
    local rc=$?
    trap '' INT TERM
    stop_nodes
    exit "$rc"
}

trap on_signal INT TERM
trap on_exit EXIT

# Reports a node that exited and returns its exit status.
report_death() {
    local n=$1 pid=${PID[$1]} rc=0
    wait "$pid" 2>/dev/null || rc=$?
    log "error: node $n (pid $pid) exited with status $rc; last $LOG_TAIL_LINES lines of $(log_of "$n"):"
    tail -n "$LOG_TAIL_LINES" "$(log_of "$n")" >&2 || true
    return 0
}

# Exits with an error if any node has died.
check_nodes_alive() {
    local n dead=0
    for n in "${NODES[@]}"; do
        if ! alive "${PID[$n]}"; then
            report_death "$n"
            dead=1
        fi
    done
    if [[ $dead -ne 0 ]]; then
        exit 1
    fi
}

# ---------------------------------------------------------------------------
# Start
# ---------------------------------------------------------------------------
mkdir -p "$DATA"
if [[ -n "$(ls -A "$DATA/node1" 2>/dev/null)" ]]; then
    log "restarting the cluster from its data in $DATA"
else
    log "bootstrapping a new cluster in $DATA ($SHARDS shards)"
fi

for n in "${NODES[@]}"; do
    dir="$DATA/node$n"
    mkdir -p "$dir"
    printf '\n===== %s: starting node %s =====\n' "$(date '+%Y-%m-%d %H:%M:%S')" "$n" >>"$(log_of "$n")"
    "$BIN" \
        --node-id "$n" \
        --listen "$HOST:$(port_of "$n")" \
        --data-dir "$dir" \
        --initial-cluster "$INITIAL_CLUSTER" \
        --shards "$SHARDS" \
        >>"$(log_of "$n")" 2>&1 &
    PID[$n]=$!
    log "node $n: pid ${PID[$n]}, $HOST:$(port_of "$n"), log $(log_of "$n")"
done

# ---------------------------------------------------------------------------
# Wait until every shard and the metadata group have a leader
# ---------------------------------------------------------------------------
# Reads Admin/ClusterStatus JSON on stdin; prints a progress summary; exits 0
# when ready. grpcurl leaves zero fields out, so a missing leaderId means
# "no leader known".
READY_CHECK='
import json, sys
try:
    d = json.load(sys.stdin)
except Exception:
    print("no valid answer yet")
    sys.exit(1)
def led(s):
    try:
        return int((s or {}).get("leaderId", 0) or 0) != 0
    except (TypeError, ValueError):
        return False
shards = d.get("shards") or []
with_leader = sum(1 for s in shards if led(s))
meta = led(d.get("metadata"))
print("%d/%d shards have a leader, metadata group %s"
      % (with_leader, len(shards), "has a leader" if meta else "has no leader yet"))
sys.exit(0 if shards and with_leader == len(shards) and meta else 1)
'

log "waiting for every shard to elect a leader (up to ${READY_TIMEOUT_S}s)"
start=$SECONDS
deadline=$((SECONDS + READY_TIMEOUT_S))
next_report=$((SECONDS + 5))
progress="node 1 not answering yet"
while :; do
    check_nodes_alive
    if out=$(grpcurl -plaintext -max-time 2 "$HOST:50051" ringkv.v1.Admin/ClusterStatus 2>/dev/null); then
        if progress=$(python3 -c "$READY_CHECK" <<<"$out"); then
            break
        fi
    else
        progress="node 1 not answering yet"
    fi
    if ((SECONDS >= deadline)); then
        log "error: cluster not ready after ${READY_TIMEOUT_S}s ($progress)"
        for n in "${NODES[@]}"; do
            log "last lines of $(log_of "$n"):"
            tail -n 10 "$(log_of "$n")" >&2 || true
        done
        exit 1
    fi
    if ((SECONDS >= next_report)); then
        log "still waiting: $progress"
        next_report=$((SECONDS + 5))
    fi
    sleep "$POLL_INTERVAL_S"
done
log "ready after $((SECONDS - start))s: $progress"

# ---------------------------------------------------------------------------
# Tell the user how to use it
# ---------------------------------------------------------------------------
cat <<EOF

ringkv playground is running ($SHARDS shards, 3 replicas each).

Endpoints (gRPC, plaintext):
  node 1  $HOST:50051    log $(log_of 1)
  node 2  $HOST:50052    log $(log_of 2)
  node 3  $HOST:50053    log $(log_of 3)

Try it from another shell. Keys and values are bytes, which grpcurl's JSON
writes in base64: "aGVsbG8=" is "hello", "d29ybGQ=" is "world"
(encode your own with: printf %s hello | base64).

  grpcurl -plaintext -d '{"key":"aGVsbG8=","value":"d29ybGQ="}' $HOST:50051 ringkv.v1.Kv/Put
  grpcurl -plaintext -d '{"key":"aGVsbG8="}' $HOST:50053 ringkv.v1.Kv/Get
  grpcurl -plaintext $HOST:50052 list
  grpcurl -plaintext $HOST:50051 ringkv.v1.Admin/ClusterStatus

Any node serves any key: a node that does not lead the key's shard forwards
the request to the leader.

Ctrl-C stops the cluster; \`make playground\` again restarts it from its data;
\`make playground-clean\` wipes it.
EOF

# ---------------------------------------------------------------------------
# Run until a signal (trap). A node that dies (say, killed to watch a
# failover) is reported and the others keep serving; the script ends when
# no node is left.
# ---------------------------------------------------------------------------
declare -A REPORTED=()
while :; do
    # Returns when a node exits, or at once when a trapped signal arrives
    # (the trap then stops the nodes and exits).
    wait -n || true
    left=0
    for n in "${NODES[@]}"; do
        if alive "${PID[$n]}"; then
            left=$((left + 1))
        elif [[ -z "${REPORTED[$n]:-}" ]]; then
            REPORTED[$n]=1
            report_death "$n"
            log "node $n is down; the other nodes keep serving (a majority keeps every shard writable)"
        fi
    done
    if [[ $left -eq 0 ]]; then
        log "every node has stopped"
        exit 1
    fi
done
