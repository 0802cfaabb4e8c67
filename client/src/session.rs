//! Exactly-once session state: a random 128-bit client id, a monotonically
//! increasing write sequence, and the set of sequences still in flight.
//!
//! A logical write takes one sequence ([`Session::begin`]) and sends it on
//! every retry; the shard's session table answers a retry of an applied
//! write from its stored result. Each request also carries
//! `first_incomplete_sequence`, the lowest sequence this client still awaits
//! a reply for, so the server keeps exactly those results. The state lives in
//! the client, not in a connection: it survives reconnects and node changes.
//!
//! The server keeps at most [`SEQUENCE_WINDOW`] results per client and
//! shard and forgets the oldest beyond that. So that a write still retrying
//! is never forgotten (its retry would fail as `StaleSequence`, outcome
//! unknown, although it was never applied), a new sequence is handed out
//! only while it is less than [`SEQUENCE_WINDOW`] above the oldest one in
//! flight: the results a shard keeps then always span that oldest write.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::Notify;

/// Length of an exactly-once client id on the wire.
///
/// ```
/// # async fn demo(client: ringkv_client::Client) {
/// assert_eq!(client.client_id().len(), ringkv_client::CLIENT_ID_BYTES);
/// # }
/// ```
pub const CLIENT_ID_BYTES: usize = 16;

/// Most sequences one client spans at once, oldest in flight to newest:
/// the server's per-client, per-shard result window
/// (`SESSION_RESPONSES_MAX` in the server's state machine).
pub const SEQUENCE_WINDOW: u64 = 256;

#[derive(Debug)]
pub(crate) struct Session {
    client_id: [u8; CLIENT_ID_BYTES],
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
    /// Woken when a sequence leaves flight (the window may have moved).
    finished: Notify,
}

/// One write's sequence; ends its in-flight life when dropped, whatever the
/// outcome (success, definite failure, or given up as indeterminate).
#[derive(Debug)]
pub(crate) struct WriteTicket {
    session: Arc<Session>,
    pub sequence: u64,
}

impl Session {
    pub fn new() -> Self {
        Self::with_id(rand::random::<u128>().to_be_bytes())
    }

    pub fn with_id(client_id: [u8; CLIENT_ID_BYTES]) -> Self {
        Self {
            client_id,
            next: AtomicU64::new(1),
            in_flight: Mutex::new(BTreeSet::new()),
            finished: Notify::new(),
        }
    }

    pub fn client_id(&self) -> [u8; CLIENT_ID_BYTES] {
        self.client_id
    }

    /// Takes the next sequence and marks it in flight, or `None` while it
    /// would be [`SEQUENCE_WINDOW`] or more above the oldest in flight.
    pub fn try_begin(self: &Arc<Self>) -> Option<WriteTicket> {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Taken under the lock so the set's minimum never skips a sequence
        // that is about to be inserted.
        let sequence = self.next.load(Ordering::Relaxed);
        if set.first().is_some_and(|oldest| sequence - oldest >= SEQUENCE_WINDOW) {
            return None;
        }
        self.next.store(sequence + 1, Ordering::Relaxed);
        set.insert(sequence);
        debug_assert!(set.first().is_some_and(|o| sequence - o < SEQUENCE_WINDOW));
        Some(WriteTicket {
            session: self.clone(),
            sequence,
        })
    }

    /// [`Session::try_begin`], waiting until `deadline` for the oldest
    /// write in flight to finish; `None` if it did not.
    pub async fn begin(self: &Arc<Self>, deadline: Instant) -> Option<WriteTicket> {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the check: a finish in between wakes it.
            finished.as_mut().enable();
            if let Some(t) = self.try_begin() {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline.into(), finished).await.is_err() {
                return self.try_begin();
            }
        }
    }

    /// The lowest sequence still in flight (0 when none).
    pub fn first_incomplete(&self) -> u64 {
        let set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        set.first().copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn finish(&self, sequence: u64) {
        let was_oldest = {
            let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            let oldest = set.first() == Some(&sequence);
            set.remove(&sequence);
            oldest
        };
        if was_oldest {
            self.finished.notify_waiters();
        }
    }
}

impl WriteTicket {
    /// `first_incomplete_sequence` to send now: the lowest in-flight
    /// sequence, never above this write's own.
    pub fn first_incomplete(&self) -> u64 {
        let f = self.session.first_incomplete();
        if f == 0 || f > self.sequence {
            self.sequence
        } else {
            f
        }
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.session.finish(self.sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_increase_and_first_incomplete_tracks_the_oldest() {
        let s = Arc::new(Session::new());
        assert_eq!(s.first_incomplete(), 0);
        let a = s.try_begin().unwrap();
        let b = s.try_begin().unwrap();
        let c = s.try_begin().unwrap();
        assert_eq!((a.sequence, b.sequence, c.sequence), (1, 2, 3));
        assert_eq!(c.first_incomplete(), 1);
        assert_eq!(a.first_incomplete(), 1);
        drop(a);
        assert_eq!(c.first_incomplete(), 2);
        assert_eq!(b.first_incomplete(), 2);
        drop(c);
        // b (2) still in flight; a new write sees 2.
        let d = s.try_begin().unwrap();
        assert_eq!(d.sequence, 4);
        assert_eq!(d.first_incomplete(), 2);
        drop(b);
        assert_eq!(d.first_incomplete(), 4);
        drop(d);
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.try_begin().unwrap().sequence, 5, "sequences are never reused");
    }

    #[test]
    fn client_ids_are_random_and_sixteen_bytes() {
        let a = Session::new();
        let b = Session::new();
        assert_ne!(a.client_id(), b.client_id());
        assert_eq!(a.client_id().len(), CLIENT_ID_BYTES);
    }

    #[test]
    fn concurrent_writers_keep_the_window_consistent() {
        let s = Arc::new(Session::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        let t = s.try_begin().unwrap();
                        let f = t.first_incomplete();
                        assert!(f >= 1 && f <= t.sequence);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.try_begin().unwrap().sequence, 4001);
    }

    #[test]
    fn no_sequence_is_handed_out_a_window_above_the_oldest_in_flight() {
        let s = Arc::new(Session::new());
        let oldest = s.try_begin().unwrap();
        let mut later: Vec<WriteTicket> = (1..SEQUENCE_WINDOW).map(|_| s.try_begin().unwrap()).collect();
        assert_eq!(later.last().unwrap().sequence, SEQUENCE_WINDOW);
        assert!(
            s.try_begin().is_none(),
            "sequence {} would span more than the window",
            SEQUENCE_WINDOW + 1
        );
        // Later writes finishing do not move the window: the oldest holds it.
        later.truncate(10);
        assert!(s.try_begin().is_none());
        drop(oldest);
        let t = s.try_begin().unwrap();
        assert_eq!(t.sequence, SEQUENCE_WINDOW + 1);
        assert_eq!(t.first_incomplete(), 2);
    }

    #[tokio::test]
    async fn begin_waits_for_the_oldest_write_until_its_deadline() {
        let s = Arc::new(Session::new());
        let oldest = s.try_begin().unwrap();
        let _rest: Vec<WriteTicket> = (1..SEQUENCE_WINDOW).map(|_| s.try_begin().unwrap()).collect();
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert!(
            s.begin(soon).await.is_none(),
            "the window is full until the oldest finishes"
        );
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                let far = Instant::now() + std::time::Duration::from_secs(30);
                s.begin(far).await.map(|t| t.sequence)
            }
        });
        tokio::task::yield_now().await;
        drop(oldest);
        assert_eq!(waiter.await.unwrap(), Some(SEQUENCE_WINDOW + 1));
    }
}
