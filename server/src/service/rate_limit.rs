//! Per-client token buckets: each client (its exactly-once client id, or
//! its IP address when it sends none) may start `rate_per_s` requests per
//! second with bursts up to `burst`. Excess requests are refused at once
//! (OVERLOADED / RESOURCE_EXHAUSTED); nothing queues.
//!
//! Memory is bounded: at most [`CLIENTS_TRACKED_MAX`] buckets; when full,
//! the least recently seen half is dropped at once (those clients restart
//! with a full bucket), so a flood of new ids costs amortized O(log n).
//! Owns only the arithmetic; the Kv service decides which requests count.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

/// Most clients tracked at once.
pub const CLIENTS_TRACKED_MAX: usize = 65_536;

/// Who a request is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ClientKey {
    Id([u8; 16]),
    Ip(IpAddr),
    /// No client id and no peer address (in-process transports).
    Unknown,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// The limiter of one node.
pub struct RateLimiter {
    rate_per_s: f64,
    burst: f64,
    clients_max: usize,
    buckets: Mutex<HashMap<ClientKey, Bucket>>,
}

impl RateLimiter {
    /// `rate_per_s` > 0 and `burst` >= 1.
    pub fn new(rate_per_s: u32, burst: u32, clients_max: usize) -> Self {
        assert!(rate_per_s > 0 && burst >= 1 && clients_max > 0);
        Self {
            rate_per_s: f64::from(rate_per_s),
            burst: f64::from(burst),
            clients_max,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key` at `now`; false when the client is over
    /// its rate.
    pub fn try_acquire(&self, key: ClientKey, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if !buckets.contains_key(&key) && buckets.len() >= self.clients_max {
            let mut by_age: Vec<(Instant, ClientKey)> = buckets.iter().map(|(k, b)| (b.last, *k)).collect();
            by_age.sort_unstable_by_key(|(last, _)| *last);
            let evict = by_age.len().div_ceil(2);
            for (_, k) in &by_age[..evict] {
                buckets.remove(k);
            }
        }
        let b = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate_per_s).min(self.burst);
        b.last = now;
        debug_assert!(buckets.len() <= self.clients_max);
        let b = buckets.get_mut(&key).expect("inserted above");
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn burst_then_rate() {
        let l = RateLimiter::new(10, 5, 100);
        let k = ClientKey::Id([1; 16]);
        let t0 = Instant::now();
        assert_eq!((0..8).filter(|_| l.try_acquire(k, t0)).count(), 5, "burst");
        // 10/s: after 300 ms three more tokens.
        let t1 = t0 + Duration::from_millis(300);
        assert_eq!((0..8).filter(|_| l.try_acquire(k, t1)).count(), 3);
        // Another client is independent.
        assert!(l.try_acquire(ClientKey::Id([2; 16]), t1));
        // Refill is capped at the burst.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!((0..8).filter(|_| l.try_acquire(k, t2)).count(), 5);
    }

    #[test]
    fn tracked_clients_are_bounded_and_the_oldest_evicted() {
        let l = RateLimiter::new(1, 1, 4);
        let t = Instant::now();
        for i in 0..10u8 {
            assert!(l.try_acquire(ClientKey::Id([i; 16]), t + Duration::from_millis(u64::from(i))));
            assert!(l.tracked() <= 4);
        }
        // The newest client is still tracked (and empty); client 0 was
        // evicted and starts again with a full bucket.
        assert!(!l.try_acquire(ClientKey::Id([9; 16]), t + Duration::from_millis(9)));
        assert!(l.try_acquire(ClientKey::Id([0; 16]), t + Duration::from_millis(10)));
    }
}
