//! Backups of a whole cluster and restores into another one.
//!
//! **Backup** ([`backup`]): asks `Admin/ClusterStatus` for the data shards,
//! exports each from its leader (`Admin/ExportShard`, a consistent copy of
//! the shard as of one applied log index, every chunk crc32-checked) and
//! writes one data file per shard (see [`format`]) to a temporary name,
//! fsyncs it and renames it into place; the [`manifest`] comes last. A
//! shard whose export breaks midway is exported again from the start, at
//! most [`EXPORT_ATTEMPTS_MAX`] times. If the ring's token ranges changed
//! while the backup ran, it fails rather than write an inconsistent set.
//!
//! **Consistency is per shard**: each shard file is one point in time of
//! that shard, but there is no snapshot timestamp across shards. Writes that
//! land while a backup runs may be in one shard's file and not in another's.
//! Stop writers first for a cluster-wide point in time.
//!
//! **Restore** is two steps. [`verify`] reads the manifest and every data
//! file completely (structure, every block's crc32, totals, each key inside
//! its shard's token ranges and in key order, size and SHA-256) before
//! anything is written, and returns a [`VerifiedBackup`]. [`restore`] then
//! checks that the target cluster is empty (unless forced) and writes the
//! pairs through the normal write path: `BatchPut`s of bounded size with
//! the client's exactly-once session, a bounded number in flight. Keys are
//! routed by the target's ring, so its shard count may differ from the
//! source's. A restore that fails midway leaves some pairs written; running
//! it again with `force` completes it (puts of the same values are
//! idempotent).

pub mod format;
pub mod manifest;

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;
use std::time::SystemTime;

use futures::StreamExt;
use futures::TryStreamExt;
use ringkv_proto::v1::ClusterStatusResponse;
use ringkv_proto::v1::KeyValue;

use self::format::FileTotals;
use self::format::FormatError;
use self::format::Header;
use self::format::ShardFileReader;
use self::format::ShardFileWriter;
use self::manifest::Manifest;
use self::manifest::RangeEntry;
use self::manifest::ShardEntry;
use self::manifest::MANIFEST_BYTES_MAX;
use self::manifest::MANIFEST_FILE;
use crate::token_of;
use crate::CallOptions;
use crate::Client;
use crate::Error;
use crate::ErrorKind;

/// Attempts to export one shard; a stream that breaks midway starts over.
pub const EXPORT_ATTEMPTS_MAX: u32 = 5;
/// Wait before the n-th export attempt of a shard: n times this.
pub const EXPORT_RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// Most shards exported at once.
pub const BACKUP_CONCURRENCY_MAX: usize = 64;
/// Most `BatchPut`s a restore keeps in flight. Each may touch every target
/// shard once, and a client may have up to 256 writes in flight per shard
/// (the server's session window), so this stays well below it.
pub const RESTORE_CONCURRENCY_MAX: usize = 64;
/// Largest `batch_keys` a restore accepts (the servers' upper bound for
/// `limits.batch_keys_max`; the default server limit is 1000).
pub const RESTORE_BATCH_KEYS_MAX: usize = 100_000;
/// Largest `batch_bytes` a restore accepts (the servers' upper bound for
/// `limits.batch_bytes_max`; the default server limit is 16 MiB).
pub const RESTORE_BATCH_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Read buffer of the shard files.
const FILE_BUFFER_BYTES: usize = 1024 * 1024;
/// Suffix of a shard file while it is being written.
const TMP_SUFFIX: &str = ".tmp";

/// Why a backup or restore failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup directory already holds something.
    #[error("backup directory {0} is not empty: back up into a new or empty directory")]
    DirNotEmpty(PathBuf),
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// The backup does not verify; nothing was written to any cluster.
    #[error("backup is corrupt, refusing to restore it: {path}: {message}")]
    Corrupt {
        /// The manifest or data file at fault.
        path: PathBuf,
        /// What did not match.
        message: String,
    },
    /// The target cluster holds data and the restore was not forced.
    #[error(
        "the target cluster is not empty (it holds key {example}); restore into a freshly started cluster, \
         or force it (ringkv restore --force) to write over the existing data"
    )]
    TargetNotEmpty {
        /// One key found, escaped.
        example: String,
    },
    /// The ring's token ranges changed while the backup ran.
    #[error("the ring changed during the backup (epoch {before} -> {after}); run it again")]
    RingChanged {
        /// Epoch at the start.
        before: u64,
        /// Epoch at the end.
        after: u64,
    },
    /// One shard could not be exported within [`EXPORT_ATTEMPTS_MAX`].
    #[error("export of shard {shard_id} failed after {attempts} attempts: {source}")]
    Export {
        /// The shard.
        shard_id: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        #[source]
        source: Error,
    },
    /// A restore stopped partway: `pairs` were written (at least).
    #[error("restore stopped after {pairs} pairs were written ({source}); run it again with --force to complete it")]
    Partial {
        /// Pairs known to be written.
        pairs: u64,
        /// The failure.
        #[source]
        source: Error,
    },
    /// A cluster call failed.
    #[error(transparent)]
    Client(#[from] Error),
    /// An option is out of range.
    #[error("invalid option: {0}")]
    Options(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Options of [`backup`].
#[derive(Debug, Clone)]
pub struct BackupOptions {
    /// Shards exported at once (1..=[`BACKUP_CONCURRENCY_MAX`]). Default 2.
    pub concurrency: usize,
    /// Deadline for opening each export (finding the leader, retries
    /// included); chunks are bounded by [`crate::Config::stream_idle_timeout`].
    pub call: CallOptions,
}

impl Default for BackupOptions {
    fn default() -> Self {
        Self {
            concurrency: 2,
            call: CallOptions::default(),
        }
    }
}

/// What [`backup`] wrote.
#[derive(Debug, Clone)]
pub struct BackupSummary {
    /// The manifest written.
    pub manifest: Manifest,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// Options of [`restore`].
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// `BatchPut`s in flight (1..=[`RESTORE_CONCURRENCY_MAX`]). Default 4.
    pub concurrency: usize,
    /// Most pairs per `BatchPut` (1..=[`RESTORE_BATCH_KEYS_MAX`]); keep it
    /// at or below the target's `limits.batch_keys_max`. Default 500.
    pub batch_keys: usize,
    /// Most key + value bytes per `BatchPut`
    /// (1..=[`RESTORE_BATCH_BYTES_MAX`]); keep it at or below the target's
    /// `limits.batch_bytes_max`. A single larger pair goes alone. Default
    /// 4 MiB.
    pub batch_bytes: usize,
    /// Write even when the target cluster already holds data.
    pub force: bool,
    /// Deadline and retries of each `BatchPut`.
    pub call: CallOptions,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            batch_keys: 500,
            batch_bytes: 4 * 1024 * 1024,
            force: false,
            call: CallOptions::default(),
        }
    }
}

impl RestoreOptions {
    fn check(&self) -> Result<(), BackupError> {
        let bad = |m: String| Err(BackupError::Options(m));
        if !(1..=RESTORE_CONCURRENCY_MAX).contains(&self.concurrency) {
            return bad(format!("concurrency must be 1..={RESTORE_CONCURRENCY_MAX}"));
        }
        if !(1..=RESTORE_BATCH_KEYS_MAX).contains(&self.batch_keys) {
            return bad(format!("batch keys must be 1..={RESTORE_BATCH_KEYS_MAX}"));
        }
        if !(1..=RESTORE_BATCH_BYTES_MAX).contains(&self.batch_bytes) {
            return bad(format!("batch bytes must be 1..={RESTORE_BATCH_BYTES_MAX}"));
        }
        Ok(())
    }
}

/// What [`restore`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestoreSummary {
    /// Pairs written.
    pub pairs: u64,
    /// Key plus value bytes written.
    pub bytes: u64,
    /// `BatchPut` calls made.
    pub batches: u64,
    /// Wall time taken.
    pub elapsed: Duration,
}

/// A backup whose every file was read and checked by [`verify`].
#[derive(Debug, Clone)]
pub struct VerifiedBackup {
    dir: PathBuf,
    manifest: Manifest,
}

impl VerifiedBackup {
    /// The backup's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The backup directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn ranges_of(st: &ClusterStatusResponse) -> Vec<(u64, Vec<RangeEntry>)> {
    st.shards
        .iter()
        .map(|s| {
            let ranges = s
                .ranges
                .iter()
                .map(|r| RangeEntry {
                    start: r.start,
                    end: (!r.end_is_max).then_some(r.end),
                })
                .collect();
            (s.id, ranges)
        })
        .collect()
}

fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Writes a backup of every data shard of the cluster into `dir`, which
/// must be empty or absent (it is created). On failure the files written so
/// far are removed again. See the module docs for what is consistent.
pub async fn backup(client: &Client, dir: &Path, opts: &BackupOptions) -> Result<BackupSummary, BackupError> {
    if !(1..=BACKUP_CONCURRENCY_MAX).contains(&opts.concurrency) {
        return Err(BackupError::Options(format!(
            "concurrency must be 1..={BACKUP_CONCURRENCY_MAX}"
        )));
    }
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::DirNotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        Err(e) => return Err(io(dir)(e)),
    }
    let res = backup_into(client, dir, opts).await;
    if res.is_err() {
        // Leave the directory empty, so the backup can simply be run again.
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    res
}

async fn backup_into(client: &Client, dir: &Path, opts: &BackupOptions) -> Result<BackupSummary, BackupError> {
    let started = Instant::now();
    let created_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let before = client.cluster_status().await?;
    let layout = ranges_of(&before);
    let mut shards: Vec<ShardEntry> = futures::stream::iter(layout.clone())
        .map(|(id, ranges)| export_shard(client, dir, id, ranges, &opts.call))
        .buffer_unordered(opts.concurrency)
        .try_collect()
        .await?;
    shards.sort_by_key(|s| s.id);
    let after = client.cluster_status().await?;
    if ranges_of(&after) != layout {
        return Err(BackupError::RingChanged {
            before: before.epoch,
            after: after.epoch,
        });
    }
    let manifest = Manifest {
        format: manifest::FORMAT_NAME.into(),
        format_version: manifest::FORMAT_VERSION,
        created_at: manifest::rfc3339_utc(created_unix_ms),
        created_unix_ms,
        cluster_epoch: before.epoch,
        consistency: manifest::CONSISTENCY_PER_SHARD.into(),
        total_pairs: shards.iter().map(|s| s.pairs).sum(),
        total_bytes: shards.iter().map(|s| s.bytes).sum(),
        shards,
    };
    manifest.check().map_err(|m| BackupError::Corrupt {
        path: dir.join(MANIFEST_FILE),
        message: format!("the manifest about to be written is invalid: {m}"),
    })?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| BackupError::Corrupt {
        path: dir.join(MANIFEST_FILE),
        message: e.to_string(),
    })?;
    let tmp = dir.join(format!("{MANIFEST_FILE}{TMP_SUFFIX}"));
    write_synced(&tmp, &json)?;
    let path = dir.join(MANIFEST_FILE);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)?;
    Ok(BackupSummary {
        manifest,
        elapsed: started.elapsed(),
    })
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    use std::io::Write;
    let mut f = std::fs::File::create(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

/// Whether an export failure is worth another attempt.
fn retryable(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Unavailable
            | ErrorKind::Transport
            | ErrorKind::DeadlineExceeded
            | ErrorKind::Overloaded
            | ErrorKind::Integrity
            | ErrorKind::Server
    )
}

enum AttemptFailure {
    Cluster(Error),
    Local(BackupError),
}

async fn export_shard(
    client: &Client,
    dir: &Path,
    id: u64,
    ranges: Vec<RangeEntry>,
    call: &CallOptions,
) -> Result<ShardEntry, BackupError> {
    let file = format!("shard-{id}.rkvb");
    let mut attempts = 0;
    loop {
        attempts += 1;
        match export_attempt(client, dir, id, &ranges, &file, call).await {
            Ok(entry) => return Ok(entry),
            Err(AttemptFailure::Local(e)) => return Err(e),
            Err(AttemptFailure::Cluster(e)) => {
                if attempts >= EXPORT_ATTEMPTS_MAX || !retryable(&e) {
                    return Err(BackupError::Export {
                        shard_id: id,
                        attempts,
                        source: e,
                    });
                }
                tokio::time::sleep(EXPORT_RETRY_BACKOFF * attempts).await;
                // The leader may have moved: relearn it before the next try.
                let _ = client.refresh_routing().await;
            }
        }
    }
}

async fn export_attempt(
    client: &Client,
    dir: &Path,
    id: u64,
    ranges: &[RangeEntry],
    file: &str,
    call: &CallOptions,
) -> Result<ShardEntry, AttemptFailure> {
    let tmp = dir.join(format!("{file}{TMP_SUFFIX}"));
    let local = |e: std::io::Error| AttemptFailure::Local(io(&tmp)(e));
    let mut export = client.export_shard(id, call).await.map_err(AttemptFailure::Cluster)?;
    let mut writer: Option<ShardFileWriter<std::io::BufWriter<std::fs::File>>> = None;
    let mut prev_key: Option<Vec<u8>> = None;
    while let Some(chunk) = export.next_chunk().await.map_err(AttemptFailure::Cluster)? {
        for p in &chunk.pairs {
            let t = token_of(&p.key);
            if !ranges.iter().any(|r| r.contains(t)) || prev_key.as_ref().is_some_and(|k| *k >= p.key) {
                return Err(AttemptFailure::Cluster(Error::Integrity {
                    message: format!("shard {id} exported a key out of order or outside its ranges"),
                }));
            }
            prev_key = Some(p.key.clone());
        }
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let f = std::fs::File::create(&tmp).map_err(local)?;
                let header = Header {
                    shard_id: id,
                    applied_index: chunk.applied_index,
                };
                let out = std::io::BufWriter::with_capacity(FILE_BUFFER_BYTES, f);
                writer.insert(ShardFileWriter::new(out, header).map_err(local)?)
            }
        };
        w.write_block(&chunk.pairs, chunk.crc32).map_err(local)?;
    }
    let Some(w) = writer else {
        return Err(AttemptFailure::Cluster(Error::Integrity {
            message: format!("export of shard {id} sent no chunk"),
        }));
    };
    let applied_index = export.applied_index().unwrap_or(0);
    let (out, totals) = w.finish().map_err(local)?;
    let f = out.into_inner().map_err(|e| local(e.into_error()))?;
    f.sync_all().map_err(local)?;
    drop(f);
    let path = dir.join(file);
    std::fs::rename(&tmp, &path).map_err(|e| AttemptFailure::Local(io(&path)(e)))?;
    sync_dir(dir).map_err(AttemptFailure::Local)?;
    Ok(ShardEntry {
        id,
        ranges: ranges.to_vec(),
        applied_index,
        pairs: totals.pairs,
        bytes: totals.bytes,
        file: file.to_string(),
        file_bytes: totals.file_bytes,
        sha256: totals.sha256,
    })
}

/// Reads and checks a whole backup (see the module docs) without touching
/// any cluster. Blocking: it reads every byte of every file.
pub fn verify(dir: &Path) -> Result<VerifiedBackup, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let corrupt = |path: &Path, message: String| BackupError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => corrupt(&path, "no manifest: not a (complete) ringkv backup".into()),
        _ => io(&path)(e),
    })?;
    if meta.len() > MANIFEST_BYTES_MAX {
        return Err(corrupt(&path, format!("larger than {MANIFEST_BYTES_MAX} bytes")));
    }
    let text = std::fs::read(&path).map_err(io(&path))?;
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(&path, e.to_string()))?;
    manifest.check().map_err(|m| corrupt(&path, m))?;
    for s in &manifest.shards {
        let file = dir.join(&s.file);
        let totals = scan_file(&file, s, |_| Ok(()))?;
        let want = FileTotals {
            pairs: s.pairs,
            bytes: s.bytes,
            file_bytes: s.file_bytes,
            sha256: s.sha256.to_ascii_lowercase(),
        };
        if totals != want {
            let what = if totals.sha256 != want.sha256 {
                format!("sha256 {} != manifest {}", totals.sha256, want.sha256)
            } else {
                format!(
                    "{} pairs / {} bytes / {} file bytes, manifest says {} / {} / {}",
                    totals.pairs, totals.bytes, totals.file_bytes, want.pairs, want.bytes, want.file_bytes
                )
            };
            return Err(corrupt(&file, what));
        }
    }
    Ok(VerifiedBackup {
        dir: dir.to_path_buf(),
        manifest,
    })
}

/// Reads one shard file, checking it against its manifest entry, and hands
/// every block to `each`.
fn scan_file(
    path: &Path,
    entry: &ShardEntry,
    mut each: impl FnMut(Vec<KeyValue>) -> Result<(), BackupError>,
) -> Result<FileTotals, BackupError> {
    let corrupt = |message: String| BackupError::Corrupt {
        path: path.to_path_buf(),
        message,
    };
    let format_err = |e: FormatError| match e {
        FormatError::Io(e) => io(path)(e),
        FormatError::Corrupt(m) => corrupt(m),
    };
    let f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    if len != entry.file_bytes {
        return Err(corrupt(format!("{len} bytes, manifest says {}", entry.file_bytes)));
    }
    let mut r = ShardFileReader::new(std::io::BufReader::with_capacity(FILE_BUFFER_BYTES, f)).map_err(format_err)?;
    let h = r.header();
    if h.shard_id != entry.id || h.applied_index != entry.applied_index {
        return Err(corrupt(format!(
            "file is shard {} at index {}, manifest says shard {} at index {}",
            h.shard_id, h.applied_index, entry.id, entry.applied_index
        )));
    }
    let mut prev: Option<Vec<u8>> = None;
    while let Some(block) = r.next_block().map_err(format_err)? {
        for p in &block {
            let t = token_of(&p.key);
            if !entry.ranges.iter().any(|r| r.contains(t)) {
                return Err(corrupt(format!("a key outside shard {}'s token ranges", entry.id)));
            }
            if prev.as_ref().is_some_and(|k| *k >= p.key) {
                return Err(corrupt("keys out of order".into()));
            }
            prev = Some(p.key.clone());
        }
        each(block)?;
    }
    r.finish().map_err(format_err)
}

/// Writes a verified backup into the cluster `client` is connected to (see
/// the module docs). Refuses a cluster that already holds a key unless
/// `opts.force`.
pub async fn restore(
    client: &Client,
    backup: &VerifiedBackup,
    opts: &RestoreOptions,
) -> Result<RestoreSummary, BackupError> {
    opts.check()?;
    let started = Instant::now();
    if !opts.force {
        let mut any = Box::pin(client.scan_with("", "", 1, &opts.call));
        if let Some(first) = any.next().await {
            let (k, _) = first?;
            return Err(BackupError::TargetNotEmpty {
                example: k.escape_ascii().to_string(),
            });
        }
    }
    // A reader thread cuts the files into batches; a bounded channel keeps
    // at most `concurrency` batches waiting besides those in flight.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<(Vec<u8>, Vec<u8>)>>(opts.concurrency);
    let (dir, manifest) = (backup.dir.clone(), backup.manifest.clone());
    let (batch_keys, batch_bytes) = (opts.batch_keys, opts.batch_bytes);
    let reader = tokio::task::spawn_blocking(move || {
        let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        let stopped = || BackupError::Options("restore stopped".into());
        for s in &manifest.shards {
            scan_file(&dir.join(&s.file), s, |block| {
                for p in block {
                    let n = p.key.len() + p.value.len();
                    if !batch.is_empty() && (batch.len() >= batch_keys || bytes + n > batch_bytes) {
                        tx.blocking_send(std::mem::take(&mut batch)).map_err(|_| stopped())?;
                        bytes = 0;
                    }
                    bytes += n;
                    batch.push((p.key, p.value));
                }
                Ok(())
            })?;
        }
        if !batch.is_empty() {
            tx.blocking_send(batch).map_err(|_| stopped())?;
        }
        Ok::<(), BackupError>(())
    });
    let batches = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let done_pairs = &std::sync::atomic::AtomicU64::new(0);
    let written = batches
        .map(|batch| async move {
            let bytes: u64 = batch.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
            match client.batch_put_with(&batch, &opts.call).await {
                Ok(()) => {
                    done_pairs.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
                    Ok((batch.len() as u64, bytes))
                }
                Err(source) => Err(BackupError::Partial {
                    pairs: done_pairs.load(std::sync::atomic::Ordering::Relaxed),
                    source,
                }),
            }
        })
        .buffer_unordered(opts.concurrency)
        .try_fold(
            RestoreSummary {
                pairs: 0,
                bytes: 0,
                batches: 0,
                elapsed: Duration::ZERO,
            },
            |mut acc, (pairs, bytes)| async move {
                acc.pairs += pairs;
                acc.bytes += bytes;
                acc.batches += 1;
                Ok(acc)
            },
        )
        .await;
    // On a write error the stream (and its receiver) is dropped first, so
    // the reader stops at its next send.
    let read = reader
        .await
        .map_err(|e| BackupError::Options(format!("reader thread failed: {e}")))?;
    let mut summary = written?;
    read?;
    summary.elapsed = started.elapsed();
    Ok(summary)
}
