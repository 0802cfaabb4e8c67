//! A fixed-bucket latency histogram with lock-free recording, rendered as a
//! Prometheus histogram (cumulative `_bucket`, `_sum`, `_count`).

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Upper bounds of the buckets, seconds: 0.25 ms to 10 s.
pub const BUCKETS_SECONDS: [f64; 16] = [
    0.000_25,
    0.000_5,
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1.0,
    2.0,
    5.0,
    10.0,
    f64::INFINITY,
];

/// Latency histogram.
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; BUCKETS_SECONDS.len()],
    /// Sum of observations, microseconds.
    sum_us: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_us: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let i = BUCKETS_SECONDS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(BUCKETS_SECONDS.len() - 1);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Number of observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Appends the `_bucket`, `_sum` and `_count` samples of `name`.
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0u64;
        for (bound, count) in BUCKETS_SECONDS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let le = if bound.is_infinite() {
                "+Inf".to_string()
            } else {
                bound.to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_count_everything() {
        let h = Histogram::default();
        for s in [0.0001, 0.003, 0.003, 0.7, 42.0, f64::NAN] {
            h.observe(s);
        }
        assert_eq!(h.count(), 6);
        let mut out = String::new();
        h.render(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.00025\"} 2"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 4"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"1\"} 5"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 6"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 6"), "{out}");
    }
}
