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
//! unknown, although it was never applied), a write to a shard gets a
//! sequence only while fewer than [`SEQUENCE_WINDOW`] writes to that shard
//! were handed sequences since the shard's oldest write in flight: the
//! results the shard keeps then always span that oldest write. Other
//! shards' writes are not held back by it. (The shard is the client's
//! routing guess; after a split the window is approximate, and the worst
//! case is the indeterminate `StaleSequence` again.)

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
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

/// Most writes to one shard that get sequences from the shard's oldest
/// write in flight on, that one included: the server's per-client,
/// per-shard result window (`SESSION_RESPONSES_MAX` in the server's state
/// machine).
pub const SEQUENCE_WINDOW: u64 = 256;

#[derive(Debug)]
pub(crate) struct Session {
    client_id: [u8; CLIENT_ID_BYTES],
    next: AtomicU64,
    in_flight: Mutex<InFlight>,
    /// Woken when a shard's oldest write leaves flight (its window moved).
    finished: Notify,
}

#[derive(Debug, Default)]
struct InFlight {
    /// Every sequence in flight.
    all: BTreeSet<u64>,
    /// Per shard with writes in flight: sequence -> the shard's ordinal of
    /// that write, and how many writes to the shard got sequences so far.
    shards: HashMap<u64, ShardWindow>,
}

#[derive(Debug, Default)]
struct ShardWindow {
    issued: u64,
    in_flight: BTreeMap<u64, u64>,
}

/// One write's sequence; ends its in-flight life when dropped, whatever the
/// outcome (success, definite failure, or given up as indeterminate).
#[derive(Debug)]
pub(crate) struct WriteTicket {
    session: Arc<Session>,
    shard: u64,
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
            in_flight: Mutex::new(InFlight::default()),
            finished: Notify::new(),
        }
    }

    pub fn client_id(&self) -> [u8; CLIENT_ID_BYTES] {
        self.client_id
    }

    /// Takes the next sequence for a write to `shard` and marks it in
    /// flight, or `None` while [`SEQUENCE_WINDOW`] writes to the shard got
    /// sequences since its oldest write in flight.
    pub fn try_begin(self: &Arc<Self>, shard: u64) -> Option<WriteTicket> {
        let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let w = f.shards.entry(shard).or_default();
        let ordinal = w.issued + 1;
        if w.in_flight
            .first_key_value()
            .is_some_and(|(_, oldest)| ordinal - oldest >= SEQUENCE_WINDOW)
        {
            return None;
        }
        // Taken under the lock so the minimum in flight never skips a
        // sequence that is about to be inserted.
        let sequence = self.next.load(Ordering::Relaxed);
        self.next.store(sequence + 1, Ordering::Relaxed);
        w.issued = ordinal;
        w.in_flight.insert(sequence, ordinal);
        debug_assert!(w.in_flight.values().all(|o| ordinal - o < SEQUENCE_WINDOW));
        f.all.insert(sequence);
        Some(WriteTicket {
            session: self.clone(),
            shard,
            sequence,
        })
    }

    /// [`Session::try_begin`], waiting until `deadline` for the shard's
    /// oldest write in flight to finish; `None` if it did not.
    pub async fn begin(self: &Arc<Self>, shard: u64, deadline: Instant) -> Option<WriteTicket> {
        loop {
            let finished = self.finished.notified();
            tokio::pin!(finished);
            // Registered before the check: a finish in between wakes it.
            finished.as_mut().enable();
            if let Some(t) = self.try_begin(shard) {
                return Some(t);
            }
            if tokio::time::timeout_at(deadline.into(), finished).await.is_err() {
                return self.try_begin(shard);
            }
        }
    }

    /// The lowest sequence still in flight (0 when none).
    pub fn first_incomplete(&self) -> u64 {
        let f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        f.all.first().copied().unwrap_or(0)
    }

    #[cfg(test)]
    pub fn in_flight_len(&self) -> usize {
        let f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        assert_eq!(f.all.len(), f.shards.values().map(|w| w.in_flight.len()).sum::<usize>());
        f.all.len()
    }

    fn finish(&self, shard: u64, sequence: u64) {
        let was_oldest = {
            let mut f = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
            f.all.remove(&sequence);
            let mut oldest = false;
            if let Some(w) = f.shards.get_mut(&shard) {
                oldest = w.in_flight.first_key_value().is_some_and(|(s, _)| *s == sequence);
                w.in_flight.remove(&sequence);
                if w.in_flight.is_empty() {
                    // Nothing to measure against: the shard's count restarts.
                    f.shards.remove(&shard);
                }
            }
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
        self.session.finish(self.shard, self.sequence);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_increase_and_first_incomplete_tracks_the_oldest() {
        let s = Arc::new(Session::new());
        assert_eq!(s.first_incomplete(), 0);
        let a = s.try_begin(1).unwrap();
        let b = s.try_begin(1).unwrap();
        let c = s.try_begin(1).unwrap();
        assert_eq!((a.sequence, b.sequence, c.sequence), (1, 2, 3));
        assert_eq!(c.first_incomplete(), 1);
        assert_eq!(a.first_incomplete(), 1);
        drop(a);
        assert_eq!(c.first_incomplete(), 2);
        assert_eq!(b.first_incomplete(), 2);
        drop(c);
        // b (2) still in flight; a new write sees 2.
        let d = s.try_begin(1).unwrap();
        assert_eq!(d.sequence, 4);
        assert_eq!(d.first_incomplete(), 2);
        drop(b);
        assert_eq!(d.first_incomplete(), 4);
        drop(d);
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.try_begin(1).unwrap().sequence, 5, "sequences are never reused");
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
                        // A thread descheduled while holding its ticket can
                        // fill the window for the others: they wait.
                        let mut spins = 0u64;
                        let t = loop {
                            if let Some(t) = s.try_begin(1) {
                                break t;
                            }
                            spins += 1;
                            assert!(spins < 100_000_000, "the window never moved");
                            std::thread::yield_now();
                        };
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
        assert_eq!(s.try_begin(1).unwrap().sequence, 4001);
    }

    #[test]
    fn no_sequence_is_handed_out_a_window_above_the_oldest_in_flight() {
        let s = Arc::new(Session::new());
        let oldest = s.try_begin(1).unwrap();
        let mut later: Vec<WriteTicket> = (1..SEQUENCE_WINDOW).map(|_| s.try_begin(1).unwrap()).collect();
        assert_eq!(later.last().unwrap().sequence, SEQUENCE_WINDOW);
        assert!(
            s.try_begin(1).is_none(),
            "sequence {} would span more than the window",
            SEQUENCE_WINDOW + 1
        );
        // Later writes finishing do not move the window: the oldest holds it.
        later.truncate(10);
        assert!(s.try_begin(1).is_none());
        drop(oldest);
        let t = s.try_begin(1).unwrap();
        assert_eq!(t.sequence, SEQUENCE_WINDOW + 1);
        assert_eq!(t.first_incomplete(), 2);
    }

    #[tokio::test]
    async fn begin_waits_for_the_oldest_write_until_its_deadline() {
        let s = Arc::new(Session::new());
        let oldest = s.try_begin(1).unwrap();
        let _rest: Vec<WriteTicket> = (1..SEQUENCE_WINDOW).map(|_| s.try_begin(1).unwrap()).collect();
        let soon = Instant::now() + std::time::Duration::from_millis(50);
        assert!(
            s.begin(1, soon).await.is_none(),
            "the window is full until the oldest finishes"
        );
        let waiter = tokio::spawn({
            let s = s.clone();
            async move {
                let far = Instant::now() + std::time::Duration::from_secs(30);
                s.begin(1, far).await.map(|t| t.sequence)
            }
        });
        tokio::task::yield_now().await;
        drop(oldest);
        assert_eq!(waiter.await.unwrap(), Some(SEQUENCE_WINDOW + 1));
    }

    #[test]
    fn a_full_window_holds_back_only_its_own_shard() {
        let s = Arc::new(Session::new());
        let stuck = s.try_begin(1).unwrap();
        let _rest: Vec<WriteTicket> = (1..SEQUENCE_WINDOW).map(|_| s.try_begin(1).unwrap()).collect();
        assert!(s.try_begin(1).is_none());
        // Writes to other shards go on, and their sequences do not count
        // against shard 1.
        for _ in 0..3 * SEQUENCE_WINDOW {
            let t = s.try_begin(2).unwrap();
            assert_eq!(t.first_incomplete(), stuck.sequence);
        }
        assert!(s.try_begin(1).is_none());
        drop(stuck);
        assert!(s.try_begin(1).is_some());
        assert_eq!(s.in_flight_len(), SEQUENCE_WINDOW as usize - 1);
    }
}
