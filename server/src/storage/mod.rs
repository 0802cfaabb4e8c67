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
pub mod hosted;
pub mod keys;
pub mod log_cache;
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
/// Growing files (SSTs, WAL, received snapshots) are written back to disk
/// every this many bytes rather than in one sync at the end.
pub const SYNC_EVERY_BYTES: u64 = 1024 * 1024;

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

/// Passes on the outcome of a write to the database (`what` names it for
/// the log), except a failure that leaves the database unable to write:
/// an I/O error (a full or failing disk) or corruption. RocksDB refuses
/// every later write after one, and Raft may already count the failed
/// write (a leader's append reported before its sync) or cannot go on
/// without it, so the node stops, as etcd and TiKV do on a failed log
/// write: a restart reopens the database and recovers from what is on
/// disk, and a supervisor sees the crash instead of a live process whose
/// shards have all stopped. Other failures (a bad argument: a bug) go to
/// the caller.
pub fn written(what: &str, r: Result<(), rocksdb::Error>) -> Result<(), StorageError> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.kind(), rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Corruption) => {
            tracing::error!(error = %e, what, "a write to the node's database failed; aborting");
            std::process::abort();
        }
        Err(e) => Err(e.into()),
    }
}

/// The node's database.
pub struct Db {
    db: DB,
    /// The data directory (RocksDB lives in `rocksdb/` below it, snapshot
    /// files in `snapshots/`).
    root: std::path::PathBuf,
    /// Column-family options, for SST files written outside the database
    /// and ingested (snapshot installs).
    cf_opts: Options,
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
        // Write SST and WAL files back to disk as they grow instead of in
        // one fsync at the end: a flush or compaction of hundreds of MiB
        // (a snapshot install) would otherwise hold every other fsync on
        // the filesystem, the Raft log's group commits included, for the
        // length of that one big sync.
        db_opts.set_bytes_per_sync(SYNC_EVERY_BYTES);
        db_opts.set_wal_bytes_per_sync(SYNC_EVERY_BYTES);
        // One writer inserts a write group's memtable entries, reusing its
        // skiplist splice; concurrent inserts search each from the top
        // (`RecomputeSpliceLevels` was 8% of the machine's CPU under 64
        // writers). Measured +3-4% writes/s, see docs/performance.md.
        db_opts.set_allow_concurrent_memtable_write(false);
        let mut cf_opts = Options::default();
        cf_opts.set_block_based_table_factory(&table);
        cf_opts.set_write_buffer_size(cfg.write_buffer_bytes);
        cf_opts.set_max_write_buffer_number(2);
        cf_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_opts.clone()));
        let db = DB::open_cf_descriptors(&db_opts, dir.join("rocksdb"), cfs)?;
        Ok(Arc::new(Self {
            db,
            root: dir.to_path_buf(),
            cf_opts,
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
        written("synced write", self.db.write_opt(batch, &opts))
    }

    pub fn raw(&self) -> &DB {
        &self.db
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    /// Writes a batch to the memtables only, not the WAL: for bulk loads
    /// (snapshot installs) that are redone after a crash anyway and made
    /// durable with [`Db::flush`] before anything depends on them.
    pub fn write_without_wal(&self, batch: rocksdb::WriteBatch) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.disable_wal(true);
        written("write without WAL", self.db.write_opt(batch, &opts))
    }

    /// Flushes the memtables of `cfs` to SST files and waits for it: makes
    /// writes done without the WAL durable.
    pub fn flush(&self, cfs: &[Cf]) -> Result<(), StorageError> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        let handles: Vec<&ColumnFamily> = cfs.iter().map(|c| self.cf(*c)).collect();
        written("flush", self.db.flush_cfs_opt(&handles, &opts))
    }

    /// Options for SST files built outside the database to be ingested.
    pub fn sst_options(&self) -> &Options {
        &self.cf_opts
    }

    /// Moves SST files built with [`Db::sst_options`] into `cf`. The files
    /// must not overlap each other; their data becomes newer than anything
    /// already in `cf`, and durable, when this returns.
    pub fn ingest(&self, cf: Cf, paths: &[std::path::PathBuf]) -> Result<(), StorageError> {
        if paths.is_empty() {
            return Ok(());
        }
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        written(
            "ingest",
            self.db.ingest_external_file_cf_opts(self.cf(cf), &opts, paths.to_vec()),
        )
    }

    /// Writes a batch without waiting for the WAL to reach disk. Used by the
    /// state machine, whose input is already durable in the Raft log.
    pub fn write_unsynced(&self, batch: rocksdb::WriteBatch) -> Result<(), StorageError> {
        let mut opts = rocksdb::WriteOptions::default();
        opts.set_sync(false);
        written("unsynced write", self.db.write_opt(batch, &opts))
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
