//! Exactly-once session state: a random 128-bit client id, a monotonically
//! increasing write sequence, and the set of sequences still in flight.
//!
//! A logical write takes one sequence ([`Session::begin`]) and sends it on
//! every retry; the shard's session table answers a retry of an applied
//! write from its stored result. Each request also carries
//! `first_incomplete_sequence`, the lowest sequence this client still awaits
//! a reply for, so the server keeps exactly those results. The state lives in
//! the client, not in a connection: it survives reconnects and node changes.

use std::collections::BTreeSet;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;

/// Length of an exactly-once client id on the wire.
///
/// ```
/// # async fn demo(client: ringkv_client::Client) {
/// assert_eq!(client.client_id().len(), ringkv_client::CLIENT_ID_BYTES);
/// # }
/// ```
pub const CLIENT_ID_BYTES: usize = 16;

#[derive(Debug)]
pub(crate) struct Session {
    client_id: [u8; CLIENT_ID_BYTES],
    next: AtomicU64,
    in_flight: Mutex<BTreeSet<u64>>,
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
        }
    }

    pub fn client_id(&self) -> [u8; CLIENT_ID_BYTES] {
        self.client_id
    }

    /// Takes the next sequence and marks it in flight.
    pub fn begin(self: &Arc<Self>) -> WriteTicket {
        let mut set = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        // Taken under the lock so the set's minimum never skips a sequence
        // that is about to be inserted.
        let sequence = self.next.fetch_add(1, Ordering::Relaxed);
        set.insert(sequence);
        WriteTicket {
            session: self.clone(),
            sequence,
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
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&sequence);
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
        let a = s.begin();
        let b = s.begin();
        let c = s.begin();
        assert_eq!((a.sequence, b.sequence, c.sequence), (1, 2, 3));
        assert_eq!(c.first_incomplete(), 1);
        assert_eq!(a.first_incomplete(), 1);
        drop(a);
        assert_eq!(c.first_incomplete(), 2);
        assert_eq!(b.first_incomplete(), 2);
        drop(c);
        // b (2) still in flight; a new write sees 2.
        let d = s.begin();
        assert_eq!(d.sequence, 4);
        assert_eq!(d.first_incomplete(), 2);
        drop(b);
        assert_eq!(d.first_incomplete(), 4);
        drop(d);
        assert_eq!(s.in_flight_len(), 0);
        assert_eq!(s.begin().sequence, 5, "sequences are never reused");
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
                        let t = s.begin();
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
        assert_eq!(s.begin().sequence, 4001);
    }
}
