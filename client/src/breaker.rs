//! A per-node circuit breaker: after `threshold` consecutive failures the
//! node is skipped for a cool-down, then one probe request is let through;
//! its success closes the breaker, its failure opens it again.
//!
//! Time is passed in, so the state machine is tested without sleeping.

use std::time::Duration;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum State {
    /// Requests flow; `failures` consecutive failures so far.
    Closed { failures: u32 },
    /// No requests until `until`.
    Open { until: Instant },
    /// One probe was let through; others wait for its outcome, or until
    /// `probe_expires` should the probe never report.
    HalfOpen { probe_expires: Instant },
}

/// The breaker of one node.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    state: State,
    threshold: u32,
    cooldown: Duration,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            state: State::Closed { failures: 0 },
            threshold: threshold.max(1),
            cooldown,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// Whether a request may go to the node now; when the cool-down has
    /// passed this grants the single probe.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { probe_expires: until } => {
                if now < until {
                    return false;
                }
                // Cool-down over (or the last probe never reported): one probe.
                self.state = State::HalfOpen {
                    probe_expires: now + self.cooldown,
                };
                true
            }
        }
    }

    /// Whether [`Breaker::allow`] would let a request through, without
    /// taking the probe.
    pub fn would_allow(&self, now: Instant) -> bool {
        match self.state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { probe_expires: until } => now >= until,
        }
    }

    pub fn on_success(&mut self) {
        self.state = State::Closed { failures: 0 };
    }

    pub fn on_failure(&mut self, now: Instant) {
        self.state = match self.state {
            State::Closed { failures } if failures + 1 < self.threshold => State::Closed { failures: failures + 1 },
            _ => State::Open {
                until: now + self.cooldown,
            },
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_probes_once() {
        let cd = Duration::from_secs(2);
        let mut b = Breaker::new(3, cd);
        let t0 = Instant::now();
        assert!(b.allow(t0));
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), State::Closed { failures: 2 });
        assert!(b.allow(t0));
        // A success resets the count.
        b.on_success();
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_failure(t0);
        assert_eq!(b.state(), State::Open { until: t0 + cd });
        assert!(!b.allow(t0 + Duration::from_secs(1)));
        assert!(!b.would_allow(t0 + Duration::from_secs(1)));
        // Cool-down over: exactly one probe.
        let t1 = t0 + cd;
        assert!(b.would_allow(t1));
        assert!(b.allow(t1));
        assert!(!b.allow(t1));
        assert!(!b.allow(t1 + Duration::from_millis(10)));
        // The probe fails: open again for a full cool-down.
        b.on_failure(t1);
        assert_eq!(b.state(), State::Open { until: t1 + cd });
        assert!(!b.allow(t1 + Duration::from_secs(1)));
        // Next probe succeeds: closed.
        let t2 = t1 + cd;
        assert!(b.allow(t2));
        b.on_success();
        assert!(b.allow(t2));
        assert_eq!(b.state(), State::Closed { failures: 0 });
    }

    #[test]
    fn a_probe_that_never_reports_is_replaced_after_a_cooldown() {
        let cd = Duration::from_millis(500);
        let mut b = Breaker::new(1, cd);
        let t0 = Instant::now();
        b.on_failure(t0);
        assert!(b.allow(t0 + cd));
        assert!(!b.allow(t0 + cd + Duration::from_millis(100)));
        assert!(b.allow(t0 + cd * 2));
    }
}
