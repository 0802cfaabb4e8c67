//! Snapshot files of one shard under `<data_dir>/snapshots/shard-<id>/`:
//! writing a snapshot from a RocksDB snapshot straight to a file, and the
//! file names and renames around it. Streaming throughout: a snapshot never
//! has to fit in memory.
//!
//! Owns the files only; the state machine decides when to build, install
//! and forget them.

use std::fs::File;
use std::path::Path;
use std::path::PathBuf;

use super::keys;
use super::snapshot::RecordTag;
use super::snapshot::SnapshotWriter;
use super::Cf;
use super::Db;
use super::StorageError;
use crate::raft::types::encode;
use crate::ring::ClusterLayout;
use crate::ring::TokenRange;

/// Prefix of a snapshot being received.
const INCOMING_PREFIX: &str = "incoming-";
/// Suffix of a snapshot being written.
const TMP_SUFFIX: &str = ".tmp";

fn io(what: &str, path: &Path, e: std::io::Error) -> StorageError {
    StorageError::Rocks(format!("{what} {}: {e}", path.display()))
}

/// The snapshot folder of one shard.
#[derive(Debug, Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
}

impl SnapshotFiles {
    /// The folder of `shard` under the data dir `root`.
    pub fn dir(root: &Path, shard: u64) -> PathBuf {
        root.join("snapshots").join(format!("shard-{shard}"))
    }

    pub fn open(root: &Path, shard: u64) -> Result<Self, StorageError> {
        let dir = Self::dir(root, shard);
        std::fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new, empty file to receive a snapshot into.
    pub fn new_incoming(&self) -> Result<(String, File), StorageError> {
        let name = format!("{INCOMING_PREFIX}{}.rkvs", unique_suffix());
        let path = self.path(&name);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        Ok((name, f))
    }

    /// Renames `from` to `to` durably (file and directory synced).
    pub fn publish(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (self.path(from), self.path(to));
        File::open(&src)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("sync", &src, e))?;
        std::fs::rename(&src, &dst).map_err(|e| io("rename", &src, e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| io("sync", &self.dir, e))
    }

    /// Deletes every file but `keep` (old snapshots, abandoned transfers).
    /// Open handles stay readable: followers being sent an old snapshot
    /// finish their transfer.
    pub fn remove_all_except(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove old snapshot file");
                }
            }
        }
    }
}

fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos}-{}", rand::random::<u32>())
}

/// The name a built snapshot is published under.
pub fn snapshot_name(term: u64, index: u64) -> String {
    format!("snap-{term}-{index}-{}.rkvs", unique_suffix())
}

/// What a snapshot holds besides the data read from RocksDB.
pub struct SnapshotContent<'a> {
    pub shard: u64,
    pub ranges: &'a [TokenRange],
    pub clock_ms: u64,
    pub layout: Option<&'a ClusterLayout>,
}

/// Writes the shard's state as seen by `snap` to `<files>/<name>` through a
/// temporary file, synced and renamed; returns the size in bytes.
pub fn write_snapshot(
    db: &Db,
    snap: &rocksdb::SnapshotWithThreadMode<'_, rocksdb::DB>,
    content: &SnapshotContent<'_>,
    files: &SnapshotFiles,
    name: &str,
) -> Result<u64, StorageError> {
    let tmp = format!("{name}{TMP_SUFFIX}");
    let path = files.path(&tmp);
    let f = File::create(&path).map_err(|e| io("create", &path, e))?;
    let mut w = SnapshotWriter::new(f)?;
    if !content.ranges.is_empty() {
        // First, so an install knows which data it replaces.
        w.record(RecordTag::Ranges, b"", &encode(&content.ranges.to_vec()))?;
    }
    w.record(RecordTag::Clock, b"", &content.clock_ms.to_be_bytes())?;
    for r in content.ranges {
        let mut opts = rocksdb::ReadOptions::default();
        opts.set_snapshot(snap);
        if let Some(end) = r.end {
            opts.set_iterate_upper_bound(end.to_be_bytes().to_vec());
        }
        let from = r.start.to_be_bytes();
        let it = db.raw().iterator_cf_opt(
            db.cf(Cf::Data),
            opts,
            rocksdb::IteratorMode::From(&from, rocksdb::Direction::Forward),
        );
        for item in it {
            let (k, v) = item?;
            let (_, key) = keys::split_data_key(&k).ok_or_else(|| StorageError::Corrupt {
                what: "data key",
                detail: format!("{} bytes, shorter than a token", k.len()),
            })?;
            w.record(RecordTag::Data, key, &v)?;
        }
    }
    let prefix = keys::tagged(content.shard, keys::META_SESSION);
    let mut opts = rocksdb::ReadOptions::default();
    opts.set_snapshot(snap);
    let it = db.raw().iterator_cf_opt(
        db.cf(Cf::Meta),
        opts,
        rocksdb::IteratorMode::From(&prefix, rocksdb::Direction::Forward),
    );
    for item in it {
        let (k, v) = item?;
        if !k.starts_with(&prefix) {
            break;
        }
        w.record(RecordTag::Session, &k[prefix.len()..], &v)?;
    }
    if let Some(l) = content.layout {
        w.record(RecordTag::Layout, b"", &encode(l))?;
    }
    let (f, bytes) = w.finish()?;
    f.sync_all().map_err(|e| io("sync", &path, e))?;
    drop(f);
    files.publish(&tmp, name)?;
    Ok(bytes)
}
