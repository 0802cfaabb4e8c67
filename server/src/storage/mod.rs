//! Durable state of a node: one RocksDB holding every shard's Raft log, Raft
//! state, data and metadata.
//!
//! Column families:
//! - `raft_log`   `shard(8) index(8)` -> encoded entry
//! - `raft_state` `shard(8) tag(1)` -> vote, committed, last purged log id
//! - `data`       `token(8) key` -> value: a shard's data is one contiguous
//!   range per token range it owns
//! - `key_index`  `shard(8) key` -> empty: key-ordered view for Scan
//! - `meta`       `shard(8) tag(1) ...` -> applied state, sessions, current
//!   snapshot, cluster layout
//!
//! This module owns the on-disk format. It does not decide what to write:
//! openraft drives the log store and state machine.

pub mod group_commit;
pub mod keys;
pub mod log_store;
pub mod snapshot;
pub mod snapshot_files;
pub mod state_machine;

use std::path::Path;
use std::sync::Arc;

use rocksdb::BlockBasedOptions;
use rocksdb::Cache;
use rocksdb::ColumnFamily;
use rocksdb::ColumnFamilyDescriptor;
use rocksdb::Options;
use rocksdb::DB;

use crate::config::StorageConfig;

pub const CF_RAFT_LOG: &str = "raft_log";
pub const CF_RAFT_STATE: &str = "raft_state";
pub const CF_DATA: &str = "data";
pub const CF_KEY_INDEX: &str = "key_index";
pub const CF_META: &str = "meta";
const ALL_CFS: [&str; 5] = [CF_RAFT_LOG, CF_RAFT_STATE, CF_DATA, CF_KEY_INDEX, CF_META];

/// Column family selector that can travel between threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cf {
    RaftLog,
    RaftState,
    Data,
    KeyIndex,
    Meta,
}

impl Cf {
    /// Every column family.
    pub const ALL: [Cf; 5] = [Cf::RaftLog, Cf::RaftState, Cf::Data, Cf::KeyIndex, Cf::Meta];

    pub fn name(self) -> &'static str {
        match self {
            Cf::RaftLog => CF_RAFT_LOG,
            Cf::RaftState => CF_RAFT_STATE,
            Cf::Data => CF_DATA,
            Cf::KeyIndex => CF_KEY_INDEX,
            Cf::Meta => CF_META,
        }
    }
}

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("rocksdb: {0}")]
    Rocks(String),
    #[error("corrupt {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("storage is shut down")]
    Closed,
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Rocks(e.into_string())
    }
}

/// The node's database.
pub struct Db {
    db: DB,
    /// The data directory (RocksDB lives in `rocksdb/` below it, snapshot
    /// files in `snapshots/`).
    root: std::path::PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.db.path()).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the node's database under `dir`.
    pub fn open(dir: &Path, cfg: &StorageConfig) -> Result<Arc<Self>, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Rocks(format!("create {}: {e}", dir.display())))?;
        let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        let cfs = ALL_CFS.iter().map(|name| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            o.set_write_buffer_size(cfg.write_buffer_bytes);
            o.set_max_write_buffer_number(2);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            ColumnFamilyDescriptor::new(*name, o)
        });
        let db = DB::open_cf_descriptors(&db_opts, dir.join("rocksdb"), cfs)?;
        Ok(Arc::new(Self {
            db,
            root: dir.to_path_buf(),
        }))
    }

    pub fn cf(&self, cf: Cf) -> &ColumnFamily {
        // Every column family is created at open; a missing one is a bug.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    /// Sum over every column family of an integer RocksDB property.
    pub fn property_sum(&self, name: &rocksdb::properties::PropName) -> u64 {
        Cf::ALL
            .iter()
            .filter_map(|cf| self.db.property_int_value_cf(self.cf(*cf), name).ok().flatten())
            .sum()
    }

    /// A database-wide integer RocksDB property (read through the data
    /// column family; 0 when unavailable).
    pub fn property_db(&self, name: &rocksdb::properties::PropName) -> u64 {
        self.db
            .property_int_value_cf(self.cf(Cf::Data), name)
            .ok()
            .flatten()
            .unwrap_or(0)
    }

    /// The node's data directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Writes a batch and waits for its WAL sync, bypassing group commit
    /// (for rare records that must be durable before the caller goes on).
    pub fn write_synced(&self, batch: rocksdb::WriteBatch) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(true);
        Ok(self.db.write_opt(batch, &opts)?)
    }

    pub fn raw(&self) -> &DB {
        &self.db
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Writes a batch without waiting for the WAL to reach disk. Used by the
    /// state machine, whose input is already durable in the Raft log.
    pub fn write_unsynced(&self, batch: rocksdb::WriteBatch) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(false);
        Ok(self.db.write_opt(batch, &opts)?)
    }
}

/// Converts a storage-layer error into openraft's error type.
pub(crate) fn to_raft_err(
    subject: openraft::ErrorSubject<u64>,
    verb: openraft::ErrorVerb,
    e: impl std::fmt::Display,
) -> openraft::StorageError<u64> {
    openraft::StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}
