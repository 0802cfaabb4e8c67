# ringkv: build, test and run a local 3-node playground.
#
#   make playground   build (release) and run a local 3-node cluster on :50051-:50053
#   make test         fmt check, clippy, and the whole test suite
#
# Everything builds with --release into one shared target directory outside
# the clone, so RocksDB is compiled once for tests, clippy and the playground.

CARGO ?= cargo
CARGO_TARGET_DIR ?= $(HOME)/.cache/ringkv/target
export CARGO_TARGET_DIR

SHELL := /bin/bash

# Targets run in the order given (deps before clippy, ...) even under `make -j`;
# cargo parallelises the builds itself.
.NOTPARALLEL:

.PHONY: all deps build playground playground-clean fmt-check clippy lint-deploy test bench-compare bench-compare-quick bench-move bench-move-quick bench-failover jepsen

all: build

deps:
	scripts/install-deps.sh

build: deps
	$(CARGO) build --release --workspace --bins

playground: build
	exec scripts/playground.sh

playground-clean:
	rm -rf ./data/playground

fmt-check:
	$(CARGO) fmt --all -- --check

clippy: deps
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Integration tests start real 3-node clusters of the ringkv-server binary
# (built first, so every crate's tests find it): one test at a time.
# Static checks of deploy/ (Docker cannot run here): hadolint, yamllint,
# shellcheck, compose/k8s consistency, dashboard metric names.
lint-deploy:
	scripts/lint-deploy.sh

test: deps fmt-check clippy lint-deploy
	$(CARGO) build --release --workspace --bins
	$(CARGO) test --release --workspace -- --test-threads=1

# ringkv vs a 3-member etcd vs local RocksDB on this machine; report in
# bench/results/<timestamp>/. bench-compare-quick takes under 3 minutes.
bench-compare: build
	scripts/bench-compare.sh

bench-compare-quick: build
	scripts/bench-compare.sh --quick

# A replica of a 1 GiB shard moved on a fresh 4-node cluster under
# foreground load: move rate and p99 before/during, in
# bench/results/move-<timestamp>/. bench-move-quick moves 128 MiB.
bench-move: build
	scripts/bench-move.sh

bench-move-quick: build
	scripts/bench-move.sh --quick

# kill -9 of the node leading the most shards on a fresh 3-node cluster
# (default settings) under a 1000 writes/s open-loop load: the longest
# write stall (target < 1 s) and its breakdown, in
# bench/results/failover-<timestamp>/. About a minute.
bench-failover: build
	scripts/bench-failover.sh

# One 5-minute fault-injection run on a local 3-node cluster: the register,
# set and counter workloads together (disjoint keys, 9 clients) under every
# nemesis at once (kill -9 of a node, a leader or all nodes; pause;
# partitions in a private network namespace, so it needs root; clock skew
# through libfaketime; shard moves, splits, leader transfers, node joins and
# decommissions through the Admin API), on a schedule generated from the seed. Exits nonzero
# unless every checker says valid. History, results, plots and summary in
# ./data/jepsen/combined/. JEPSEN_SEED=N replays a run; JEPSEN_NODES=5 adds
# the bridge and majorities-ring partitions.
JEPSEN_SEED ?= $(shell od -An -N4 -tu4 /dev/urandom | tr -d ' ')
JEPSEN_NODES ?= 3
jepsen: build
	rm -rf ./data/jepsen/combined
	$(CARGO_TARGET_DIR)/release/ringkv-jepsen run --workload all --nemesis all \
		--nodes $(JEPSEN_NODES) --clients 9 --time-limit 300 --seed $(JEPSEN_SEED) \
		--out ./data/jepsen/combined
