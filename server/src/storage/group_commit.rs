//! Group commit: merges the durable writes of every shard on the node (log
//! appends, votes, truncations, purges) into one RocksDB write batch and one
//! WAL sync.
//!
//! One writer thread drains the queue: whatever arrived while the previous
//! sync ran goes into the next batch, so the batch grows with the load. A
//! request's reply is sent only after the sync that covers it returned; no
//! caller ever hears "flushed" before its bytes are on disk. A write that
//! fails for want of a working disk stops the node ([`super::written`]).

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::Cf;
use super::Db;
use super::StorageError;
use crate::metrics::histogram::Histogram;

/// Most write requests waiting for the writer thread; senders wait when full.
pub const GROUP_COMMIT_QUEUE_MAX: usize = 8192;

/// One mutation.
#[derive(Debug)]
pub enum WriteOp {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    /// Deletes `[from, to)`.
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

struct Job {
    ops: Vec<WriteOp>,
    fault: Fault,
    done: oneshot::Sender<Result<(), StorageError>>,
}

/// Test-only faults (failpoints) of the batch that carries a job; the
/// default is none.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fault {
    /// Delay before the batch is written: its bytes are not even in the OS
    /// page cache yet.
    pub hold: std::time::Duration,
    /// The batch is not written and every job in it gets an error, as when
    /// the WAL write fails.
    pub fail: bool,
}

/// The outcome of a submitted write, once its sync returned.
pub type Synced = oneshot::Receiver<Result<(), StorageError>>;

/// Counters of the group committer.
#[derive(Default)]
pub struct GroupCommitStats {
    pub requests: AtomicU64,
    pub syncs: AtomicU64,
    /// Leader log appends reported flushed to Raft once queued, before
    /// their sync (`raft.overlap_leader_sync`).
    pub appends_before_sync: AtomicU64,
    /// Duration of each batch write including its WAL sync.
    pub sync_seconds: Histogram,
}

/// Handle to the node's writer thread. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    inner: Arc<Writer>,
    pub stats: Arc<GroupCommitStats>,
}

/// The writer thread and its queue. Dropping the last handle closes the
/// queue and joins the thread, so the database it holds is closed before
/// the owner goes on (RocksDB aborts if a thread still uses it while the
/// process exits).
struct Writer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("group commit thread panicked");
            }
        }
    }
}

impl GroupCommit {
    /// Starts the writer thread. It stops when every handle is dropped.
    pub fn start(db: Arc<Db>, requests_max: usize) -> Result<Self, StorageError> {
        assert!(requests_max > 0);
        let (tx, rx) = mpsc::channel(GROUP_COMMIT_QUEUE_MAX);
        let stats = Arc::new(GroupCommitStats::default());
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("ringkv-group-commit".into())
            .spawn(move || writer_loop(db, rx, requests_max, st))
            .map_err(|e| StorageError::Rocks(format!("spawn group commit thread: {e}")))?;
        let inner = Arc::new(Writer {
            tx: Some(tx),
            thread: Some(thread),
        });
        Ok(Self { inner, stats })
    }

    /// Writes `ops` atomically and durably; returns after the WAL sync that
    /// covers them.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<(), StorageError> {
        let synced = self.submit(ops, Fault::default()).await?;
        synced.await.map_err(|_| StorageError::Closed)?
    }

    /// Queues `ops` and returns once they are queued, with the receiver of
    /// their sync's outcome. Writes are applied in the order they were
    /// queued, each batch atomically, so anything queued after this call
    /// returned lands after `ops`, durable or not. `fault` is for
    /// failpoints only (none otherwise).
    pub async fn submit(&self, ops: Vec<WriteOp>, fault: Fault) -> Result<Synced, StorageError> {
        let (done, rx) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(StorageError::Closed)?;
        tx.send(Job { ops, fault, done })
            .await
            .map_err(|_| StorageError::Closed)?;
        Ok(rx)
    }
}

fn writer_loop(db: Arc<Db>, mut rx: mpsc::Receiver<Job>, requests_max: usize, stats: Arc<GroupCommitStats>) {
    let mut sync = rocksdb::WriteOptions::default();
    sync.set_sync(true);
    let mut jobs: Vec<Job> = Vec::with_capacity(requests_max);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < requests_max {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let hold = jobs.iter().map(|j| j.fault.hold).max().unwrap_or_default();
        if !hold.is_zero() {
            std::thread::sleep(hold);
        }
        let result = if jobs.iter().any(|j| j.fault.fail) {
            Err(StorageError::Rocks(
                "failpoint: this group-commit batch was not written".to_string(),
            ))
        } else {
            let mut batch = rocksdb::WriteBatch::default();
            for job in &jobs {
                for op in &job.ops {
                    match op {
                        WriteOp::Put(cf, k, v) => batch.put_cf(db.cf(*cf), k, v),
                        WriteOp::Delete(cf, k) => batch.delete_cf(db.cf(*cf), k),
                        WriteOp::DeleteRange(cf, from, to) => batch.delete_range_cf(db.cf(*cf), from, to),
                    }
                }
            }
            let started = std::time::Instant::now();
            let written = super::written("group commit", db.raw().write_opt(batch, &sync));
            stats.sync_seconds.observe(started.elapsed().as_secs_f64());
            written
        };
        if let Err(e) = &result {
            tracing::error!(error = %e, jobs = jobs.len(), "group commit write failed");
        }
        stats.syncs.fetch_add(1, Ordering::Relaxed);
        stats.requests.fetch_add(jobs.len() as u64, Ordering::Relaxed);
        for job in jobs.drain(..) {
            // A caller that gave up is fine: its write is durable regardless.
            let _ = job.done.send(result.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageConfig;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_syncs_and_are_readable() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), &StorageConfig::default()).unwrap();
        let gc = GroupCommit::start(db.clone(), 1024).unwrap();
        let mut tasks = Vec::new();
        for i in 0..200u32 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                gc.write(vec![WriteOp::Put(Cf::RaftLog, i.to_be_bytes().to_vec(), vec![1])])
                    .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        for i in 0..200u32 {
            assert_eq!(db.get(Cf::RaftLog, &i.to_be_bytes()).unwrap(), Some(vec![1]));
        }
        let syncs = gc.stats.syncs.load(Ordering::Relaxed);
        assert_eq!(gc.stats.requests.load(Ordering::Relaxed), 200);
        assert!((1..=200).contains(&syncs), "syncs {syncs}");
    }
}
