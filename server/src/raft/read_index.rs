//! ReadIndex batching: concurrent linearizable reads of one shard share one
//! openraft `ensure_linearizable` round (one heartbeat quorum round).
//!
//! A reader joins the round that has not started yet, or opens one. At most
//! one round runs at a time; a round that starts after a reader arrived
//! confirms leadership at a point after the read was issued, which is all
//! linearizability needs. Owns no data and does no reads itself.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

use super::types::Raft;

/// A round that takes longer is abandoned so later rounds can start.
pub const READ_ROUND_TIMEOUT_MS: u64 = 10_000;

/// Outcome of a round: `Ok` or the reason it failed.
type RoundResult = Option<Result<(), String>>;

/// Read-index coordinator of one shard.
pub struct ReadIndex {
    raft: Raft,
    /// The round readers can still join, not started yet.
    pending: Mutex<Option<watch::Receiver<RoundResult>>>,
    /// Held by the running round.
    running: tokio::sync::Mutex<()>,
    pub rounds: AtomicU64,
    pub reads: AtomicU64,
}

impl ReadIndex {
    pub fn new(raft: Raft) -> Arc<Self> {
        Arc::new(Self {
            raft,
            pending: Mutex::new(None),
            running: tokio::sync::Mutex::new(()),
            rounds: AtomicU64::new(0),
            reads: AtomicU64::new(0),
        })
    }

    /// Returns once the local state machine reflects every write committed
    /// before this call, or an error if leadership could not be confirmed
    /// within `timeout`.
    pub async fn linearize(self: &Arc<Self>, timeout: Duration) -> Result<(), String> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let mut rx = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            match pending.as_ref() {
                Some(rx) => rx.clone(),
                None => {
                    let (tx, rx) = watch::channel(None);
                    *pending = Some(rx.clone());
                    let me = self.clone();
                    tokio::spawn(async move { me.run_round(tx).await });
                    rx
                }
            }
        };
        let outcome = tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some()))
            .await
            .map(|r| r.map(|v| v.clone()));
        match outcome {
            Err(_) => Err(format!("read index round did not finish within {timeout:?}")),
            Ok(Err(_)) => Err("read index round abandoned".to_string()),
            Ok(Ok(r)) => r.unwrap_or_else(|| Err("read index round without result".into())),
        }
    }

    async fn run_round(self: Arc<Self>, tx: watch::Sender<RoundResult>) {
        let _running = self.running.lock().await;
        // From here on, new readers open the next round.
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.rounds.fetch_add(1, Ordering::Relaxed);
        let round = self.raft.ensure_linearizable();
        let res = match tokio::time::timeout(Duration::from_millis(READ_ROUND_TIMEOUT_MS), round).await {
            Err(_) => Err(format!("read index round exceeded {READ_ROUND_TIMEOUT_MS} ms")),
            Ok(r) => r.map(|_| ()).map_err(|e| e.to_string()),
        };
        tx.send_replace(Some(res));
    }
}
