#!/bin/sh
# Prints the peer Service of each pod ordinal given, as YAML for
# `kubectl apply -f -`. Every pod needs one before it starts: its ClusterIP
# is the node's address (start.sh explains why). services.yaml holds those of
# the three bootstrap pods; create the next ones before scaling up:
#
#   sh deploy/k8s/peer-service.sh 3 4 | kubectl apply -n NAMESPACE -f -
#   kubectl scale statefulset/ringkv --replicas=5
#
# Environment: RINGKV_STATEFULSET (default ringkv) and RINGKV_PEER_PREFIX
# (default ringkv-peer-), as in the StatefulSet.
set -eu

sts=${RINGKV_STATEFULSET:-ringkv}
prefix=${RINGKV_PEER_PREFIX:-ringkv-peer-}

[ $# -ge 1 ] || { echo "usage: sh deploy/k8s/peer-service.sh ORDINAL..." >&2; exit 2; }
for ordinal in "$@"; do
    case $ordinal in
        '' | *[!0-9]*) echo "peer-service.sh: $ordinal is not a pod ordinal" >&2; exit 2 ;;
    esac
done

for ordinal in "$@"; do
    cat <<YAML
---
apiVersion: v1
kind: Service
metadata:
  name: $prefix$ordinal
  labels:
    app.kubernetes.io/name: ringkv
    app.kubernetes.io/component: peer
spec:
  type: ClusterIP
  publishNotReadyAddresses: true
  selector:
    app.kubernetes.io/name: ringkv
    app.kubernetes.io/component: server
    statefulset.kubernetes.io/pod-name: $sts-$ordinal
  ports:
    - name: grpc
      port: 50051
      targetPort: grpc
YAML
done
