//! Client configuration ([`Config`]) and per-call options ([`CallOptions`]).
//!
//! Every bound the client applies is a named field here with a documented
//! default; nothing is hidden in the code.

use std::path::Path;
use std::time::Duration;

/// Largest PEM file [`TlsConfig::from_pem_files`] reads.
pub const PEM_BYTES_MAX: u64 = 1024 * 1024;
/// Longest a TLS handshake with a node may take.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read consistency of a call.
///
/// ```
/// use ringkv_client::{CallOptions, Consistency};
/// assert_eq!(Consistency::default(), Consistency::Linearizable);
/// let stale = CallOptions::new().consistency(Consistency::Stale);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
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
    /// Upper bound of one backoff wait. Default 250 ms: a write that keeps
    /// retrying through a leader election follows the new leader within
    /// about that.
    pub backoff_max: Duration,
    /// Most operations in flight in this client at once; more wait for a
    /// slot. Independently, a write to a shard waits for a session
    /// sequence while [`crate::SEQUENCE_WINDOW`] (256, the results a server
    /// keeps per client and shard) writes to that shard got one since the
    /// shard's oldest write in flight: so a write that keeps retrying (its
    /// shard is electing a leader) is never forgotten by the server, and
    /// later writes to that shard queue behind it instead. Default 256.
    pub max_in_flight: usize,
    /// Most concurrent [`crate::Client::put`] calls to one shard coalesced
    /// into one `BatchPut` request (one Raft entry, one session sequence,
    /// retried as a unit). A put waits only while the shard already has
    /// [`Config::put_batches_in_flight_per_shard`] batches in flight, so a
    /// lone put leaves at once. 1 turns coalescing off. Keep it at or
    /// below the servers' `limits.batch_keys_max` (default 1000).
    /// Default 128.
    pub put_batch_keys_max: usize,
    /// A coalesced batch stops growing once its keys and values reach this
    /// many bytes (a single bigger put still goes, alone). Keep it at or
    /// below the servers' `limits.batch_bytes_max` (default 16 MiB).
    /// Default 1 MiB.
    pub put_batch_bytes_max: usize,
    /// Coalesced put batches of one shard in flight at once: fewer makes
    /// bigger batches, more makes puts wait less under light load.
    /// Default 1 (measured best on a loaded 3-node cluster; see
    /// `docs/performance.md`).
    pub put_batches_in_flight_per_shard: usize,
    /// Most concurrent [`crate::Client::get`] calls of one shard and
    /// consistency coalesced into one `BatchGet` (one read barrier on the
    /// leader). A get waits only while its shard already has
    /// [`Config::get_batches_in_flight_per_shard`] batches in flight. 1
    /// turns coalescing off. The answer carries every value: keep this
    /// times the largest value under [`Config::max_message_bytes`] (a batch
    /// that fails is retried one get at a time). Default 32.
    pub get_batch_keys_max: usize,
    /// Coalesced get batches of one shard and consistency in flight at
    /// once. Default 1.
    pub get_batches_in_flight_per_shard: usize,
    /// Longest a coalesced batch keeps its shard's slot. A batch still
    /// unanswered then (its shard is electing a leader, say) finishes on
    /// its own and the requests queued behind it leave as the next batch,
    /// so a shard's queue never waits out one batch's retry backoff.
    /// Default 100 ms.
    pub batch_slot_hold_max: Duration,
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
    /// Bearer token for the Admin API (`ClusterStatus`, `ExportShard`),
    /// when the cluster requires one.
    pub admin_token: Option<String>,
    /// TLS towards every node (`None` = plaintext). See [`TlsConfig`].
    pub tls: Option<TlsConfig>,
    /// Longest a server stream (`Admin/ExportShard`) may go without a
    /// message before the client gives up on it. Default 30 s.
    pub stream_idle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(4),
            max_attempts: 30,
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(250),
            max_in_flight: 256,
            put_batch_keys_max: 128,
            put_batch_bytes_max: 1024 * 1024,
            put_batches_in_flight_per_shard: 1,
            get_batch_keys_max: 32,
            get_batches_in_flight_per_shard: 1,
            batch_slot_hold_max: Duration::from_millis(100),
            breaker_failure_threshold: 3,
            breaker_cooldown: Duration::from_secs(2),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            max_message_bytes: 64 * 1024 * 1024,
            scan_page_size: 1000,
            admin_token: None,
            tls: None,
            stream_idle_timeout: Duration::from_secs(30),
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
        if self.put_batch_keys_max == 0 || self.put_batch_bytes_max == 0 || self.put_batches_in_flight_per_shard == 0 {
            return bad("put_batch_keys_max, put_batch_bytes_max and put_batches_in_flight_per_shard must be >= 1");
        }
        if self.get_batch_keys_max == 0 || self.get_batches_in_flight_per_shard == 0 {
            return bad("get_batch_keys_max and get_batches_in_flight_per_shard must be >= 1");
        }
        if self.batch_slot_hold_max.is_zero() {
            return bad("batch_slot_hold_max must be > 0");
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
        if let Some(tok) = &self.admin_token {
            if format!("Bearer {tok}")
                .parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
                .is_err()
            {
                return bad("admin_token must be printable ASCII");
            }
        }
        if self.stream_idle_timeout.is_zero() {
            return bad("stream_idle_timeout must be > 0");
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }
}

/// TLS settings of a client: the CA that signs the nodes' certificates and,
/// for clusters that require mutual TLS (`tls.require_client_cert`), the
/// client's own certificate and key. All PEM.
///
/// With TLS set, the client connects to every node with `https` and checks
/// the node's certificate against `ca_pem` and the address it dials (an IP
/// SAN for `ip:port` endpoints), or against `domain_name` when given.
///
/// ```no_run
/// # fn demo() -> Result<(), ringkv_client::Error> {
/// use std::path::Path;
/// let tls = ringkv_client::TlsConfig::from_pem_files(
///     Path::new("ca.pem"),
///     Some((Path::new("client.pem"), Path::new("client.key"))),
/// )?;
/// let cfg = ringkv_client::Config { tls: Some(tls), ..Default::default() };
/// # Ok(()) }
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// CA bundle (PEM) trusted for the nodes' certificates.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and private key (PEM), for mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Name to verify the nodes' certificates against instead of the
    /// dialled host (one name for every node).
    pub domain_name: Option<String>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("ca_pem_bytes", &self.ca_pem.len())
            .field("identity", &self.identity.as_ref().map(|_| "<certificate and key>"))
            .field("domain_name", &self.domain_name)
            .finish()
    }
}

fn has_pem_block(bytes: &[u8]) -> bool {
    bytes.windows(10).any(|w| w == b"-----BEGIN")
}

fn read_pem(what: &str, path: &Path) -> Result<Vec<u8>, crate::Error> {
    let bad = |m: String| crate::Error::Config(format!("{what} {}: {m}", path.display()));
    let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if meta.len() > PEM_BYTES_MAX {
        return Err(bad(format!("larger than {PEM_BYTES_MAX} bytes")));
    }
    let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read: {e}")))?;
    if !has_pem_block(&bytes) {
        return Err(bad("not PEM (no '-----BEGIN' line)".into()));
    }
    Ok(bytes)
}

impl TlsConfig {
    /// Reads the CA bundle and, for mutual TLS, the client certificate and
    /// key from PEM files (each at most [`PEM_BYTES_MAX`] bytes).
    pub fn from_pem_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, crate::Error> {
        let ca_pem = read_pem("TLS CA file", ca)?;
        let identity = match identity {
            Some((cert, key)) => Some((read_pem("TLS certificate file", cert)?, read_pem("TLS key file", key)?)),
            None => None,
        };
        Ok(TlsConfig {
            ca_pem,
            identity,
            domain_name: None,
        })
    }

    /// Checks that every part looks like PEM.
    ///
    /// ```
    /// let tls = ringkv_client::TlsConfig { ca_pem: b"junk".to_vec(), identity: None, domain_name: None };
    /// assert!(tls.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), crate::Error> {
        let bad = |m: &str| Err(crate::Error::Config(m.to_string()));
        if !has_pem_block(&self.ca_pem) {
            return bad("tls.ca_pem is not PEM");
        }
        if let Some((cert, key)) = &self.identity {
            if !has_pem_block(cert) || !has_pem_block(key) {
                return bad("tls.identity certificate and key must both be PEM");
            }
        }
        if self.domain_name.as_deref().is_some_and(str::is_empty) {
            return bad("tls.domain_name must not be empty");
        }
        Ok(())
    }

    /// The tonic client settings.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        if let Some((cert, key)) = &self.identity {
            c = c.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(d) = &self.domain_name {
            c = c.domain_name(d.clone());
        }
        c
    }
}
