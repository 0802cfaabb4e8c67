//! ringkv-bench: YCSB-style workloads against ringkv, etcd and a local
//! RocksDB ceiling, with HDR latency histograms, and the comparison report.
//!
//! `workload` chooses operations and keys, `backend` talks to each system,
//! `runner` measures, `report` turns results into tables and charts.
//! `move_shard` measures a replica move of a loaded shard under foreground
//! load, through the Admin API (`admin`). `failover` measures the write
//! stall a client sees when a leader is killed. `fsync` reads how fast the
//! system's disk was during a run from its metrics.

pub mod admin;
pub mod backend;
pub mod failover;
pub mod fsync;
pub mod move_shard;
pub mod report;
pub mod runner;
pub mod workload;
