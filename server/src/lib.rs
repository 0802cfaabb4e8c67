//! ringkv-server: a node of a sharded key-value store whose shards are
//! openraft groups on one RocksDB per node.
//!
//! Layers, from the edge inwards: `service` (gRPC) -> `node` (routing,
//! forwarding, leadership) -> `raft` (openraft types, network, read index)
//! -> `storage` (RocksDB log store, state machine, group commit). `ring`
//! and `config` are pure data used by all of them. See ARCHITECTURE.md.

// openraft's `StorageError` and `RPCError` are large, and the storage and
// network traits require returning them: boxing our helpers' errors would
// only add a conversion at every trait boundary.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod error;
pub mod failpoint;
pub mod metrics;
pub mod node;
pub mod placement;
pub mod raft;
pub mod ring;
pub mod service;
pub mod storage;
pub mod tls;
