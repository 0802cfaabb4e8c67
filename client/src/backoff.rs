//! Exponential backoff with jitter, bounded by a maximum wait.
//!
//! Pure arithmetic plus a random draw; the retry loop also caps each wait by
//! the caller's remaining deadline.

use std::time::Duration;

use rand::Rng;

/// Backoff schedule: the `n`-th retry (from 0) waits a uniformly drawn time
/// in `[d/2, d]` with `d = min(max, base * 2^n)`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The ceiling `d` of retry `n` (before jitter).
    pub fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry.min(30)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The jittered wait before retry `n`, with `unit` in `[0, 1]` as the
    /// random draw (so the bounds are testable).
    pub fn delay_with(&self, retry: u32, unit: f64) -> Duration {
        let d = self.ceiling(retry);
        d / 2 + (d / 2).mul_f64(unit.clamp(0.0, 1.0))
    }

    /// The jittered wait before retry `n`.
    pub fn delay(&self, retry: u32) -> Duration {
        self.delay_with(retry, rand::thread_rng().gen::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_doubling_and_stays_bounded() {
        let b = Backoff {
            base: Duration::from_millis(20),
            max: Duration::from_secs(1),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(20));
        assert_eq!(b.ceiling(1), Duration::from_millis(40));
        assert_eq!(b.ceiling(5), Duration::from_millis(640));
        assert_eq!(b.ceiling(6), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        for n in 0..40 {
            let c = b.ceiling(n);
            assert_eq!(b.delay_with(n, 0.0), c / 2);
            assert_eq!(b.delay_with(n, 1.0), c);
            for _ in 0..20 {
                let d = b.delay(n);
                assert!(d >= c / 2 && d <= c, "retry {n}: {d:?} outside [{:?}, {c:?}]", c / 2);
            }
        }
    }
}
