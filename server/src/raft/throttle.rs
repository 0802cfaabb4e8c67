//! A byte-rate limiter shared by every shard of a node: it paces the
//! snapshot chunks the node sends, so a shard move (or a follower catching
//! up by snapshot) cannot take the whole disk and CPU from client requests.
//!
//! Owns only the pacing arithmetic and the wait. It does not know what the
//! bytes are; the caller asks before it sends.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Longest a single reservation may wait: a caller asking for more bytes
/// than `rate * WAIT_MAX` at once is still let through after this long, so
/// a misconfigured tiny rate slows transfers down but never wedges them.
pub const WAIT_MAX: Duration = Duration::from_secs(10);

/// Paces bytes to `bytes_per_sec` across all callers (first come, first
/// served). `bytes_per_sec == 0` means unlimited.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: u64,
    /// When the bytes reserved so far have all been "paid for".
    next_free: Mutex<Option<Instant>>,
}

impl Throttle {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            next_free: Mutex::new(None),
        }
    }

    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_sec
    }

    /// Reserves `bytes` and returns when the caller may send them: now if
    /// the limiter is idle, else after the bytes reserved before have had
    /// their time. Bursts are not saved up: an idle limiter starts from now.
    pub fn reserve(&self, bytes: u64, now: Instant) -> Instant {
        if self.bytes_per_sec == 0 || bytes == 0 {
            return now;
        }
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        // A poisoned lock only means another caller panicked mid-update of
        // an Instant: the value is still usable.
        let mut next = self.next_free.lock().unwrap_or_else(|e| e.into_inner());
        let start = match *next {
            Some(t) if t > now => t.min(now + WAIT_MAX),
            _ => now,
        };
        *next = Some(start + cost);
        debug_assert!(start >= now && start <= now + WAIT_MAX);
        start
    }

    /// Waits until `bytes` may be sent.
    pub async fn acquire(&self, bytes: u64) {
        let at = self.reserve(bytes, Instant::now());
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_never_waits() {
        let t = Throttle::new(0);
        let now = Instant::now();
        for _ in 0..100 {
            assert_eq!(t.reserve(1 << 30, now), now);
        }
    }

    #[test]
    fn paces_reservations_at_the_rate() {
        let t = Throttle::new(1_000_000);
        let now = Instant::now();
        assert_eq!(t.reserve(500_000, now), now);
        // The next half megabyte may go once the first one had its 0.5 s.
        assert_eq!(t.reserve(500_000, now), now + Duration::from_millis(500));
        assert_eq!(t.reserve(1_000_000, now), now + Duration::from_millis(1000));
        // Later, after an idle spell: no saved-up burst, starts at once.
        let later = now + Duration::from_secs(60);
        assert_eq!(t.reserve(1_000_000, later), later);
        assert_eq!(t.reserve(1, later), later + Duration::from_secs(1));
    }

    #[test]
    fn a_tiny_rate_waits_at_most_wait_max() {
        let t = Throttle::new(1);
        let now = Instant::now();
        assert_eq!(t.reserve(1 << 20, now), now);
        assert_eq!(t.reserve(1 << 20, now), now + WAIT_MAX);
    }

    #[tokio::test]
    async fn acquire_sleeps_until_the_slot() {
        let t = Throttle::new(10_000_000);
        let start = std::time::Instant::now();
        t.acquire(1_000_000).await;
        t.acquire(1).await;
        // A lower bound only: a loaded machine may sleep longer.
        assert!(start.elapsed() >= Duration::from_millis(100), "{:?}", start.elapsed());
    }
}
