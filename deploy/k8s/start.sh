#!/bin/sh
# Entrypoint of a ringkv pod in the StatefulSet (deploy/k8s/statefulset.yaml),
# shipped to the pod as a ConfigMap by kustomize. POSIX sh: the image has
# Debian's dash and getent (libc-bin), and nothing more is needed.
#
# 1. The node id is the pod's ordinal + 1 (ringkv-0 is node 1): ids must be
#    non-zero, ordinals start at 0.
# 2. Node addresses must be ip:port (ringkv-server does not accept DNS names
#    yet), and every node records the others' addresses and keeps dialling
#    them after every restart. Pod IPs change whenever a pod is re-created,
#    so they cannot be used. Every pod instead has its own ClusterIP Service,
#    ringkv-peer-<ordinal> (services.yaml, peer-service.sh), whose IP stays
#    the same for the life of the Service. This script resolves those names
#    to their ClusterIPs, retrying until they resolve.
# 3. Pods of the bootstrap (ordinal < RINGKV_BOOTSTRAP_NODES) get
#    --initial-cluster with the bootstrap pods' addresses. Pods added later
#    (the StatefulSet scaled up) join the running cluster instead:
#    --join with every bootstrap pod's address (tried in turn) and
#    --advertise with their own Service's. A restarted node resumes from its
#    volume and ignores both.
# 4. Then it execs ringkv-server (PID 1, so it receives SIGTERM itself) with
#    any extra arguments given to the container.
#
# Environment (set in the StatefulSet):
#   POD_NAME                this pod's name, e.g. ringkv-2 (downward API)
#   RINGKV_BOOTSTRAP_NODES  nodes of the bootstrap, fixed for the life of the
#                           cluster (RINGKV_REPLICAS, its old name, is read
#                           when it is unset)
#   RINGKV_PEER_PREFIX      peer Service name prefix (default ringkv-peer-)
#   RINGKV_SHARDS           data shards at bootstrap (default 0: one per node)
#   RINGKV_GRPC_PORT        gRPC port (default 50051)
#   RINGKV_STATUS_PORT      status port (default 9091)
#   RINGKV_DATA_DIR         data directory (default /var/lib/ringkv)
#   RINGKV_LISTEN_HOST      bind address (default 0.0.0.0; [::] on IPv6 clusters)
#   RINGKV_BIN              server binary (default ringkv-server on PATH)
set -eu

log() { printf 'start.sh: %s\n' "$*" >&2; }

: "${POD_NAME:?POD_NAME must be set (downward API metadata.name)}"
: "${RINGKV_BOOTSTRAP_NODES:=${RINGKV_REPLICAS:-}}"
[ -n "$RINGKV_BOOTSTRAP_NODES" ] || { log "RINGKV_BOOTSTRAP_NODES must be set to the number of nodes of the bootstrap"; exit 1; }
bootstrap=$RINGKV_BOOTSTRAP_NODES
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
is_uint "$bootstrap" && [ "$bootstrap" -ge 1 ] \
    || { log "RINGKV_BOOTSTRAP_NODES=$bootstrap is not a positive integer"; exit 1; }
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

# Prints the address of the peer Service of ordinal $1 as ip:port, waiting
# (and saying why) until it resolves. The bootstrap pods' Services come with
# the manifests, so this normally resolves at once; a pod added later waits
# here until its Service is created. The startup probe gives it minutes
# before Kubernetes restarts the container.
peer_addr() {
    name=$peer_prefix$1
    addr=$(resolve "$name")
    while [ -z "$addr" ]; do
        if [ "$1" -ge "$bootstrap" ]; then
            log "waiting for DNS name $name: create the Service with" \
                "\`sh deploy/k8s/peer-service.sh $1 | kubectl apply -f -\`"
        else
            log "waiting for DNS name $name (Service ${name}) to resolve"
        fi
        sleep 2
        addr=$(resolve "$name")
    done
    printf '%s:%s' "$addr" "$grpc_port"
}

cluster=""
seeds=""
i=0
while [ "$i" -lt "$bootstrap" ]; do
    addr=$(peer_addr "$i")
    cluster="${cluster:+$cluster,}$((i + 1))=$addr"
    seeds="${seeds:+$seeds,}$addr"
    i=$((i + 1))
done

# Execs the server with the flags every node gets, then "$@".
run_server() {
    exec "$bin" \
        --node-id "$node_id" \
        --listen "$listen_host:$grpc_port" \
        --status-listen "$listen_host:$status_port" \
        --data-dir "$data_dir" \
        "$@"
}

# Bind every interface: peers reach this pod through its Service IP, which
# kube-proxy maps to the pod IP; probes and Prometheus use the pod IP.
if [ "$ordinal" -ge "$bootstrap" ]; then
    advertise=$(peer_addr "$ordinal")
    log "node $node_id, joining through $seeds as $advertise"
    run_server --advertise "$advertise" --join "$seeds" "$@"
fi
log "node $node_id, initial cluster $cluster"
run_server --initial-cluster "$cluster" --shards "$shards" "$@"
