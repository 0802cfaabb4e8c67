#!/bin/sh
# Entrypoint of a ringkv pod in the StatefulSet (deploy/k8s/statefulset.yaml),
# shipped to the pod as a ConfigMap by kustomize. POSIX sh: the image has
# Debian's dash and getent (libc-bin), and nothing more is needed.
#
# 1. The node id is the pod's ordinal + 1 (ringkv-0 is node 1): ids must be
#    non-zero, ordinals start at 0.
# 2. --initial-cluster must be ip:port (ringkv-server does not accept DNS
#    names there yet), and each node records the others' addresses at
#    bootstrap and keeps dialling them after every restart. Pod IPs change
#    whenever a pod is re-created, so they cannot be used. Every pod instead
#    has its own ClusterIP Service, ringkv-peer-<ordinal> (services.yaml),
#    whose IP stays the same for the life of the Service. This script
#    resolves those Service names to their ClusterIPs, retrying until all of
#    them resolve, and passes the IPs as --initial-cluster.
# 3. Then it execs ringkv-server (PID 1, so it receives SIGTERM itself) with
#    any extra arguments given to the container.
#
# Environment (set in the StatefulSet):
#   POD_NAME             this pod's name, e.g. ringkv-2 (downward API)
#   RINGKV_REPLICAS      cluster size fixed at bootstrap (= spec.replicas)
#   RINGKV_PEER_PREFIX   peer Service name prefix (default ringkv-peer-)
#   RINGKV_SHARDS        data shards at bootstrap (default 0: one per node)
#   RINGKV_GRPC_PORT     gRPC port (default 50051)
#   RINGKV_STATUS_PORT   status port (default 9091)
#   RINGKV_DATA_DIR      data directory (default /var/lib/ringkv)
#   RINGKV_LISTEN_HOST   bind address (default 0.0.0.0; [::] on IPv6 clusters)
#   RINGKV_BIN           server binary (default ringkv-server on PATH)
set -eu

log() { printf 'start.sh: %s\n' "$*" >&2; }

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${RINGKV_REPLICAS:?RINGKV_REPLICAS must be set to the StatefulSet replicas}"
peer_prefix=${RINGKV_PEER_PREFIX:-ringkv-peer-}
shards=${RINGKV_SHARDS:-0}
grpc_port=${RINGKV_GRPC_PORT:-50051}
status_port=${RINGKV_STATUS_PORT:-9091}
data_dir=${RINGKV_DATA_DIR:-/var/lib/ringkv}
listen_host=${RINGKV_LISTEN_HOST:-0.0.0.0}
bin=${RINGKV_BIN:-ringkv-server}

is_uint() {
    case $1 in
        '' | *[!0-9]*) return 1 ;;
        *) return 0 ;;
    esac
}

ordinal=${POD_NAME##*-}
is_uint "$ordinal" || { log "cannot take an ordinal from POD_NAME=$POD_NAME"; exit 1; }
is_uint "$RINGKV_REPLICAS" && [ "$RINGKV_REPLICAS" -ge 1 ] \
    || { log "RINGKV_REPLICAS=$RINGKV_REPLICAS is not a positive integer"; exit 1; }
[ "$ordinal" -lt "$RINGKV_REPLICAS" ] || {
    log "pod ordinal $ordinal is outside the bootstrap cluster of $RINGKV_REPLICAS nodes;"
    log "this version cannot add nodes: scale the StatefulSet back to $RINGKV_REPLICAS"
    exit 1
}
node_id=$((ordinal + 1))

# Prints the first address NAME resolves to, bracketed if IPv6, or nothing.
resolve() {
    # getent prints "ADDRESS NAME [ALIASES]"; `set --` splits it into words.
    # shellcheck disable=SC2046
    set -- $(getent hosts "$1" || true)
    [ $# -ge 1 ] || return 0
    case $1 in
        *:*) printf '[%s]' "$1" ;;
        *) printf '%s' "$1" ;;
    esac
}

# Services are created with the StatefulSet, so this normally resolves at
# once; it loops (and says why) while DNS is not ready yet. The startup probe
# gives it minutes before Kubernetes restarts the container.
cluster=""
i=0
while [ "$i" -lt "$RINGKV_REPLICAS" ]; do
    name=$peer_prefix$i
    addr=$(resolve "$name")
    while [ -z "$addr" ]; do
        log "waiting for DNS name $name (Service ${name}) to resolve"
        sleep 2
        addr=$(resolve "$name")
    done
    cluster="${cluster:+$cluster,}$((i + 1))=$addr:$grpc_port"
    i=$((i + 1))
done

log "node $node_id, initial cluster $cluster"
# Bind every interface: peers reach this pod through its Service IP, which
# kube-proxy maps to the pod IP; probes and Prometheus use the pod IP.
exec "$bin" \
    --node-id "$node_id" \
    --listen "$listen_host:$grpc_port" \
    --status-listen "$listen_host:$status_port" \
    --data-dir "$data_dir" \
    --initial-cluster "$cluster" \
    --shards "$shards" \
    "$@"
