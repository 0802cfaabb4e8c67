# shellcheck shell=bash
# Shared by scripts/bench-*.sh (sourced, not run): a work directory that is
# removed on exit together with every process started into PIDS, and
# private copies of the benchmark binaries.
#
#   bench_work NAME          WORK=/tmp/ringkv-NAME.XXXXXX, PIDS=(), traps
#   bench_private_bins SUB   SERVER, BENCH: copies in WORK of the binaries in
#                            BIN_DIR, checked to know `ringkv-bench SUB`
#
# The caller defines die().

bench_work() {
    WORK=$(mktemp -d "/tmp/ringkv-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}

bench_private_bins() {
    local sub=$1
    [[ -x $BIN_DIR/ringkv-server && -x $BIN_DIR/ringkv-bench ]] ||
        die "build first: cargo build --release -p ringkv-server -p ringkv-bench"
    # The target directory may be shared with other checkouts: run private
    # copies, so a build elsewhere cannot swap the binaries under a running
    # benchmark.
    cp "$BIN_DIR/ringkv-server" "$BIN_DIR/ringkv-bench" "$WORK/"
    # shellcheck disable=SC2034 # used by the sourcing script
    SERVER=$WORK/ringkv-server
    BENCH=$WORK/ringkv-bench
    "$BENCH" "$sub" --help >/dev/null 2>&1 ||
        die "$BIN_DIR/ringkv-bench has no $sub (built from another checkout?): rebuild it here"
}
