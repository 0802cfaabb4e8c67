//! Client configuration ([`Config`]) and per-call options ([`CallOptions`]).
//!
//! Every bound the client applies is a named field here with a documented
//! default; nothing is hidden in the code.

use std::time::Duration;

/// Read consistency of a call.
///
/// ```
/// use ringkv_client::{CallOptions, Consistency};
/// assert_eq!(Consistency::default(), Consistency::Linearizable);
/// let stale = CallOptions::new().consistency(Consistency::Stale);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Confirmed by the shard leader with a quorum round (ReadIndex): the
    /// read sees every write acknowledged before it started. The default.
    #[default]
    Linearizable,
    /// Served by whichever replica receives it, without a quorum round: may
    /// be arbitrarily stale, but works while the shard has no leader.
    Stale,
}

/// Options of one call; the defaults come from [`Config`].
///
/// ```
/// use std::time::Duration;
/// use ringkv_client::{CallOptions, Consistency};
/// let opts = CallOptions::new().timeout(Duration::from_millis(500)).consistency(Consistency::Stale);
/// assert_eq!(opts.timeout, Some(Duration::from_millis(500)));
/// ```
#[derive(Debug, Clone, Default)]
pub struct CallOptions {
    /// Deadline of the whole operation, retries included (`None` =
    /// [`Config::request_timeout`]).
    pub timeout: Option<Duration>,
    /// Read consistency (ignored by writes).
    pub consistency: Consistency,
}

impl CallOptions {
    /// Default options: the configured timeout, linearizable reads.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the deadline of the whole operation, retries included.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the read consistency.
    pub fn consistency(mut self, consistency: Consistency) -> Self {
        self.consistency = consistency;
        self
    }
}

/// Client configuration. Build it with [`Config::default`] and change the
/// fields you care about.
///
/// ```
/// use std::time::Duration;
/// let cfg = ringkv_client::Config {
///     request_timeout: Duration::from_secs(30),
///     max_attempts: 50,
///     ..Default::default()
/// };
/// assert!(cfg.validate().is_ok());
/// ```
#[derive(Debug, Clone)]
pub struct Config {
    /// Longest a TCP + HTTP/2 connection to one node may take to open.
    /// Default 2 s.
    pub connect_timeout: Duration,
    /// Default deadline of one operation, all retries included, when the
    /// call does not set [`CallOptions::timeout`]. Default 10 s.
    pub request_timeout: Duration,
    /// Longest one attempt (one RPC to one node) may take before the client
    /// gives up on that node and retries elsewhere; capped by the remaining
    /// deadline. Default 4 s.
    pub attempt_timeout: Duration,
    /// Retry budget: most attempts per operation (per shard part of a
    /// batch), the first included. Default 30.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubles each retry up to
    /// [`Config::backoff_max`]; each wait is drawn uniformly from
    /// `[d/2, d]` (jitter). Default 20 ms.
    pub backoff_base: Duration,
    /// Upper bound of one backoff wait. Default 1 s.
    pub backoff_max: Duration,
    /// Most operations in flight in this client at once; more wait for a
    /// slot. Keep it at or below the server's per-client session window
    /// (`SESSION_RESPONSES_MAX` = 256 results per client per shard) so every
    /// in-flight write stays answerable on retry. Default 256.
    pub max_in_flight: usize,
    /// Consecutive failures (no connection or no answer) after which a
    /// node's circuit breaker opens. Default 3.
    pub breaker_failure_threshold: u32,
    /// How long an open breaker keeps requests away from a node before one
    /// probe is let through. Default 2 s.
    pub breaker_cooldown: Duration,
    /// HTTP/2 keep-alive ping interval on every node channel. Default 10 s.
    pub keep_alive_interval: Duration,
    /// How long a keep-alive ping may stay unanswered before the connection
    /// is dropped. Default 5 s.
    pub keep_alive_timeout: Duration,
    /// Largest gRPC message sent or received. Default 64 MiB.
    pub max_message_bytes: usize,
    /// Pairs asked for per Scan page. Default 1000.
    pub scan_page_size: u32,
    /// Bearer token for the Admin API (`ClusterStatus`), when the cluster
    /// requires one.
    pub admin_token: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(4),
            max_attempts: 30,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
            max_in_flight: 256,
            breaker_failure_threshold: 3,
            breaker_cooldown: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024 * 1024,
            scan_page_size: 1000,
            admin_token: None,
        }
    }
}

impl Config {
    /// Checks every field; [`crate::Client::connect_with`] calls it.
    ///
    /// ```
    /// let cfg = ringkv_client::Config { max_attempts: 0, ..Default::default() };
    /// assert!(cfg.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: &str| Err(crate::Error::Config(m.to_string()));
        if self.max_attempts == 0 {
            return bad("max_attempts must be >= 1");
        }
        if self.max_in_flight == 0 {
            return bad("max_in_flight must be >= 1");
        }
        if self.breaker_failure_threshold == 0 {
            return bad("breaker_failure_threshold must be >= 1");
        }
        if self.backoff_base.is_zero() || self.backoff_max < self.backoff_base {
            return bad("backoff_base must be > 0 and <= backoff_max");
        }
        if self.request_timeout.is_zero() || self.attempt_timeout.is_zero() || self.connect_timeout.is_zero() {
            return bad("timeouts must be > 0");
        }
        if self.scan_page_size == 0 {
            return bad("scan_page_size must be >= 1");
        }
        Ok(())
    }
}
