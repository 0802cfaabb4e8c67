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
use std::sync::Arc;

use super::keys;
use super::snapshot::RecordTag;
use super::snapshot::SnapshotWriter;
use super::Cf;
use super::Db;
use super::StorageError;
use crate::raft::types::encode;
use crate::ring::ClusterLayout;
use crate::ring::TokenRange;

/// How often a snapshot being received is checked for new bytes to write
/// back (see [`start_writeback`]).
const WRITEBACK_TICK: std::time::Duration = std::time::Duration::from_millis(50);
/// Bytes a received snapshot may grow by before they are synced.
const WRITEBACK_BYTES: u64 = 4 * super::SYNC_EVERY_BYTES;

/// Prefix of the SST files an install builds for ingestion.
const INGEST_PREFIX: &str = "ingest-";
/// Largest SST file an install builds before it starts the next one.
const INGEST_FILE_BYTES_MAX: u64 = 256 * 1024 * 1024;

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

    /// Deletes SST files an install built and did not ingest (a crash or
    /// an error half way).
    pub fn remove_ingest_files(&self) {
        self.remove_where(|name| name.starts_with(INGEST_PREFIX));
    }

    /// Deletes every file but `keep` (old snapshots, abandoned transfers).
    /// Open handles stay readable: followers being sent an old snapshot
    /// finish their transfer.
    pub fn remove_all_except(&self, keep: &[&str]) {
        self.remove_where(|name| !keep.contains(&name));
    }

    /// Deletes the files of the folder whose name satisfies `pred`.
    fn remove_where(&self, pred: impl Fn(&str) -> bool) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if pred(&e.file_name().to_string_lossy()) {
                if let Err(err) = std::fs::remove_file(e.path()) {
                    tracing::warn!(file = %e.path().display(), error = %err, "cannot remove old snapshot file");
                }
            }
        }
    }
}

/// SST files of sorted key/value pairs for [`super::Db::ingest`], built in
/// the shard's snapshot folder. An install writes a shard's data this way
/// instead of through the memtables: a gigabyte of puts would fill the
/// small memtables over and over and stall every write of the node (the
/// Raft logs of all its shards share the database) until flushes and L0
/// compactions catch up.
pub struct IngestFiles<'a> {
    files: &'a SnapshotFiles,
    opts: &'a rocksdb::Options,
    /// The file being written and its path.
    current: Option<(rocksdb::SstFileWriter<'a>, PathBuf)>,
    last_key: Vec<u8>,
    done: Vec<PathBuf>,
}

impl<'a> IngestFiles<'a> {
    /// Removes files a crashed install left behind, then starts empty.
    pub fn new(files: &'a SnapshotFiles, opts: &'a rocksdb::Options) -> Self {
        files.remove_ingest_files();
        Self {
            files,
            opts,
            current: None,
            last_key: Vec::new(),
            done: Vec::new(),
        }
    }

    /// Adds one pair. Keys must increase within a run; a key that does not
    /// (the next token range of the snapshot) starts a new file, as does a
    /// full one. Files never overlap as long as the runs do not, which holds
    /// for disjoint token ranges.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let rotate = match &self.current {
            None => true,
            Some((w, _)) => key <= self.last_key.as_slice() || w.file_size() >= INGEST_FILE_BYTES_MAX,
        };
        if rotate {
            self.finish_current()?;
            let name = format!("{INGEST_PREFIX}{}-{}.sst", self.done.len(), unique_suffix());
            let path = self.files.path(&name);
            let w = rocksdb::SstFileWriter::create(self.opts);
            w.open(&path)
                .map_err(|e| io("create", &path, std::io::Error::other(e.into_string())))?;
            self.current = Some((w, path));
        }
        let (w, _) = self
            .current
            .as_mut()
            .ok_or_else(|| StorageError::Rocks("no SST writer".into()))?;
        w.put(key, value)?;
        self.last_key.clear();
        self.last_key.extend_from_slice(key);
        Ok(())
    }

    fn finish_current(&mut self) -> Result<(), StorageError> {
        if let Some((mut w, path)) = self.current.take() {
            w.finish()?;
            self.done.push(path);
        }
        Ok(())
    }

    /// The finished files, in key order.
    pub fn finish(mut self) -> Result<Vec<PathBuf>, StorageError> {
        self.finish_current()?;
        Ok(std::mem::take(&mut self.done))
    }
}

/// A file written on a blocking thread and synced every
/// `WRITEBACK_BYTES`: building a snapshot of a large shard must not leave a
/// gigabyte of dirty pages for one final fsync that would hold every other
/// fsync on the filesystem (see [`start_writeback`]).
struct SyncingFile {
    file: File,
    unsynced: u64,
}

impl std::io::Write for SyncingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.unsynced += n as u64;
        if self.unsynced >= WRITEBACK_BYTES {
            self.file.sync_data()?;
            self.unsynced = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// Keeps a [`start_writeback`] task running; dropping it stops the task.
#[derive(Debug)]
pub struct WritebackGuard {
    _alive: Arc<()>,
}

/// Writes a file that is being received back to disk every few MiB while
/// it grows, from a background task, until the guard is dropped. Without
/// it the whole snapshot (a gigabyte for a large shard) sits in the page
/// cache until the install's one `fsync`, which then holds every other
/// fsync on the filesystem (Raft log appends of all shards) for as long as
/// it takes. Errors are left to that final fsync, which reports them.
pub fn start_writeback(file: File) -> WritebackGuard {
    let alive = Arc::new(());
    let weak = Arc::downgrade(&alive);
    let file = Arc::new(file);
    tokio::spawn(async move {
        let mut synced = 0u64;
        loop {
            tokio::time::sleep(WRITEBACK_TICK).await;
            if weak.upgrade().is_none() {
                return;
            }
            let len = file.metadata().map_or(0, |m| m.len());
            if len < synced + WRITEBACK_BYTES {
                continue;
            }
            let f = file.clone();
            match tokio::task::spawn_blocking(move || f.sync_data()).await {
                Ok(Ok(())) => synced = len,
                // The final fsync of the install reports real errors.
                _ => return,
            }
        }
    });
    WritebackGuard { _alive: alive }
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
    let mut w = SnapshotWriter::new(SyncingFile { file: f, unsynced: 0 })?;
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
    let (SyncingFile { file: f, .. }, bytes) = w.finish()?;
    f.sync_all().map_err(|e| io("sync", &path, e))?;
    drop(f);
    files.publish(&tmp, name)?;
    Ok(bytes)
}
