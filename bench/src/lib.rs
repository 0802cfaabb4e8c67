//! ringkv-bench: YCSB-style workloads against ringkv, etcd and a local
//! RocksDB ceiling, with HDR latency histograms, and the comparison report.
//!
//! `workload` chooses operations and keys, `backend` talks to each system,
//! `runner` measures, `report` turns results into tables and charts.

pub mod backend;
pub mod report;
pub mod runner;
pub mod workload;
