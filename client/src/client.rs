//! [`Client`]: the operations, and the retry loop every one of them runs
//! through (route, pick a node, send, classify the failure, back off).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::Stream;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::*;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

use crate::backoff::Backoff;
use crate::coalesce;
use crate::coalesce::Queues;
use crate::error::terminal;
use crate::error::AttemptError;
use crate::pool::normalize;
use crate::pool::Pool;
use crate::routing::token_of;
use crate::routing::Router;
use crate::routing::RoutingTable;
use crate::session::Session;
use crate::session::WriteTicket;
use crate::session::SEQUENCE_WINDOW;
use crate::CallOptions;
use crate::Config;
use crate::Consistency;
use crate::Error;

/// A connection to a ringkv cluster: cheap to clone (clones share routing,
/// channels, session and the in-flight limit), safe to use from many tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), ringkv_client::Error> {
/// let client = ringkv_client::Client::connect(["127.0.0.1:50051", "127.0.0.1:50052"]).await?;
/// client.put("hello", "world").await?;
/// assert_eq!(client.get("hello").await?, Some(b"world".to_vec()));
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: Config,
    /// The endpoints given at connect time (normalized URIs).
    seeds: Vec<String>,
    router: Router,
    pool: Pool,
    session: Arc<Session>,
    slots: Arc<Semaphore>,
    rr: AtomicUsize,
    stats: Counters,
    /// Puts waiting to be coalesced, per shard.
    puts: Mutex<Queues<u64, QueuedPut>>,
    /// Gets waiting to be coalesced, per shard and consistency.
    gets: Mutex<Queues<(u64, Consistency), QueuedGet>>,
}

/// A get waiting in its shard's coalescing queue.
#[derive(Debug)]
struct QueuedGet {
    key: Vec<u8>,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Result<Option<Vec<u8>>, Error>>,
}

/// A put waiting in its shard's coalescing queue.
#[derive(Debug)]
struct QueuedPut {
    key: Vec<u8>,
    value: Vec<u8>,
    deadline: Instant,
    reply: tokio::sync::oneshot::Sender<Result<(), Error>>,
}

#[derive(Debug, Default)]
struct Counters {
    operations: AtomicU64,
    put_batches: AtomicU64,
    coalesced_puts: AtomicU64,
    get_batches: AtomicU64,
    coalesced_gets: AtomicU64,
    slow_batches: AtomicU64,
    window_timeouts: AtomicU64,
    attempts: AtomicU64,
    refreshes: AtomicU64,
    not_leader: AtomicU64,
    forwarded: AtomicU64,
}

/// Counters of one client since it connected (shared by its clones).
///
/// ```
/// let s = ringkv_client::ClientStats::default();
/// assert_eq!(s.attempts - s.operations, 0, "no retries yet");
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Operations started (a batch counts once per shard part, a scan once
    /// per page, a coalesced batch of puts or gets once).
    pub operations: u64,
    /// RPC attempts made for them; `attempts - operations` were retries.
    pub attempts: u64,
    /// Routing table refreshes (`Admin/ClusterStatus` round trips) done.
    pub routing_refreshes: u64,
    /// NOT_LEADER answers received.
    pub not_leader: u64,
    /// Answers a node served by forwarding to another (the route was stale).
    pub forwarded: u64,
    /// `BatchPut` requests sent for two or more coalesced puts (see
    /// [`Config::put_batch_keys_max`]).
    pub put_batches: u64,
    /// Puts that left in those batches.
    pub coalesced_puts: u64,
    /// `BatchGet` requests sent for two or more coalesced gets (see
    /// [`Config::get_batch_keys_max`]).
    pub get_batches: u64,
    /// Gets that left in those batches.
    pub coalesced_gets: u64,
    /// Coalesced batches that gave their slot up, unanswered after
    /// [`Config::batch_slot_hold_max`].
    pub slow_batches: u64,
    /// Writes that failed unsent because this client's oldest write in
    /// flight to their shard held the shard's session window until their
    /// deadline (see [`crate::SEQUENCE_WINDOW`]).
    pub window_timeouts: u64,
}

/// The result of [`Client::compare_and_swap`].
///
/// ```
/// let out = ringkv_client::CasOutcome { succeeded: false, previous: Some(b"7".to_vec()) };
/// if !out.succeeded {
///     println!("someone else wrote {:?}", out.previous);
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CasOutcome {
    /// Whether the condition held and the action was applied.
    pub succeeded: bool,
    /// The value before the operation (`None` = the key was absent).
    pub previous: Option<Vec<u8>>,
}

/// One verified piece of a shard export (see [`Client::export_shard`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportChunk {
    /// The pairs, in key order, continuing the previous chunk.
    pub pairs: Vec<KeyValue>,
    /// crc32 of the pairs (as [`ringkv_proto::export_chunk_crc`] computes
    /// it), checked against the data.
    pub crc32: u32,
    /// The log index the whole export is consistent with.
    pub applied_index: u64,
}

/// A shard export being received, chunk by chunk, every chunk verified.
pub struct ShardExport {
    stream: tonic::Streaming<ExportShardChunk>,
    shard_id: u64,
    applied_index: Option<u64>,
    idle_timeout: Duration,
    finished: bool,
    chunks: u64,
}

impl std::fmt::Debug for ShardExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardExport")
            .field("shard_id", &self.shard_id)
            .field("applied_index", &self.applied_index)
            .field("chunks", &self.chunks)
            .field("finished", &self.finished)
            .finish()
    }
}

impl ShardExport {
    /// The log index the export is consistent with (known after the first
    /// chunk).
    pub fn applied_index(&self) -> Option<u64> {
        self.applied_index
    }

    /// The next chunk, `Ok(None)` after the last one. Fails with
    /// [`crate::ErrorKind::Integrity`] on a crc32 mismatch, a chunk of
    /// another shard or applied index, or a stream that ends without its
    /// last chunk; with a transport or server error when the stream breaks
    /// or stays silent for [`Config::stream_idle_timeout`].
    pub async fn next_chunk(&mut self) -> Result<Option<ExportChunk>, Error> {
        if self.finished {
            return Ok(None);
        }
        let shard = self.shard_id;
        let msg = match tokio::time::timeout(self.idle_timeout, self.stream.message()).await {
            Err(_) => {
                return Err(Error::Transport {
                    message: format!(
                        "export of shard {shard}: no chunk within {:?} (chunk {})",
                        self.idle_timeout, self.chunks
                    ),
                })
            }
            Ok(Err(status)) => {
                let e = AttemptError::from_status(&status);
                if let AttemptError::Server { code, detail } = &e {
                    if let Some(t) = terminal(*code, detail) {
                        return Err(t);
                    }
                }
                return Err(Error::Transport {
                    message: format!(
                        "export of shard {shard} broke after {} chunks: {}",
                        self.chunks,
                        e.message()
                    ),
                });
            }
            Ok(Ok(None)) => {
                return Err(Error::Integrity {
                    message: format!(
                        "export of shard {shard} ended after {} chunks without its last chunk",
                        self.chunks
                    ),
                })
            }
            Ok(Ok(Some(c))) => c,
        };
        let integrity = |m: String| Error::Integrity {
            message: format!("export of shard {shard}, chunk {}: {m}", self.chunks),
        };
        if msg.shard_id != shard {
            return Err(integrity(format!("chunk of shard {}", msg.shard_id)));
        }
        if *self.applied_index.get_or_insert(msg.applied_index) != msg.applied_index {
            return Err(integrity(format!(
                "applied index changed from {:?} to {}",
                self.applied_index, msg.applied_index
            )));
        }
        let crc = ringkv_proto::export_chunk_crc(&msg.pairs);
        if crc != msg.crc32 {
            return Err(integrity(format!("crc32 {crc:#010x} != sent {:#010x}", msg.crc32)));
        }
        self.chunks += 1;
        self.finished = msg.last;
        Ok(Some(ExportChunk {
            pairs: msg.pairs,
            crc32: msg.crc32,
            applied_index: msg.applied_index,
        }))
    }
}

/// What one attempt gets: the node's channel and the routing header to send.
struct Attempt {
    channel: Channel,
    header: RequestHeader,
    timeout: Duration,
    max_message: usize,
}

fn kv_client(channel: Channel, max_message: usize) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message)
}

/// Answer of a successful attempt with its response header.
type Answer<T> = Result<(T, Option<ResponseHeader>), AttemptError>;

fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.set_timeout(timeout);
    r
}

/// The typed error of the first failed key of a batch part, if any; for a
/// `write`, marked as maybe applied when other keys succeeded.
fn batch_error(results: &[KeyResult], expected: usize, write: bool) -> Result<(), AttemptError> {
    if results.len() != expected {
        return Err(AttemptError::Untyped {
            code: tonic::Code::Internal,
            message: format!("batch answered {} of {expected} keys", results.len()),
        });
    }
    if let Some(d) = results.iter().find_map(|r| r.error.clone()) {
        let code = ErrorCode::try_from(d.code).unwrap_or(ErrorCode::Internal);
        let e = AttemptError::Server {
            code,
            detail: Box::new(d),
        };
        // Keys of another shard went through: a write is no longer known
        // to have failed, whatever this key's error says.
        if write && results.iter().any(|r| r.error.is_none()) {
            return Err(AttemptError::PartlyApplied(Box::new(e)));
        }
        return Err(e);
    }
    Ok(())
}

impl Client {
    /// Connects with the default [`Config`]. `endpoints` are `host:port`
    /// (or `http://host:port`) of any cluster nodes: one reachable node is
    /// enough, the others are learned from it.
    ///
    /// Fails with [`crate::ErrorKind::Transport`] when no endpoint answers
    /// `Admin/ClusterStatus` within one attempt each, and with
    /// [`crate::ErrorKind::Config`] for a malformed endpoint.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ringkv_client::Error> {
    /// let client = ringkv_client::Client::connect(["127.0.0.1:50051"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::connect_with(endpoints, Config::default()).await
    }

    /// Connects with an explicit [`Config`].
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), ringkv_client::Error> {
    /// use std::time::Duration;
    /// let cfg = ringkv_client::Config { request_timeout: Duration::from_secs(30), ..Default::default() };
    /// let client = ringkv_client::Client::connect_with(["127.0.0.1:50051"], cfg).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with<I, S>(endpoints: I, cfg: Config) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        cfg.validate()?;
        let mut seeds = Vec::new();
        for e in endpoints {
            let e = e.as_ref();
            Pool::validate(e)?;
            if e.trim().starts_with("https://") && cfg.tls.is_none() {
                return Err(Error::Config(format!(
                    "endpoint {e:?} is https but no TLS settings are given"
                )));
            }
            let n = normalize(e);
            if !seeds.contains(&n) {
                seeds.push(n);
            }
        }
        if seeds.is_empty() {
            return Err(Error::Config("no endpoints given".into()));
        }
        let put_limits = coalesce::Limits {
            keys_max: cfg.put_batch_keys_max,
            bytes_max: cfg.put_batch_bytes_max,
            in_flight_max: cfg.put_batches_in_flight_per_shard,
        };
        let get_limits = coalesce::Limits {
            keys_max: cfg.get_batch_keys_max,
            bytes_max: usize::MAX,
            in_flight_max: cfg.get_batches_in_flight_per_shard,
        };
        let client = Client {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(cfg.max_in_flight)),
                pool: Pool::new(cfg.clone()),
                cfg,
                seeds,
                router: Router::default(),
                session: Arc::new(Session::new()),
                rr: AtomicUsize::new(0),
                stats: Counters::default(),
                puts: Mutex::new(Queues::new(put_limits)),
                gets: Mutex::new(Queues::new(get_limits)),
            }),
        };
        client.refresh_routing().await?;
        Ok(client)
    }

    /// This client's exactly-once id (random, 16 bytes).
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// println!("client id {}", hex::encode(client.client_id()));
    /// # }
    /// ```
    pub fn client_id(&self) -> [u8; 16] {
        self.inner.session.client_id()
    }

    /// The configuration this client runs with.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// assert!(client.config().max_attempts >= 1);
    /// # }
    /// ```
    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// Counters since connect: operations, attempts (retries), refreshes.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// let s = client.stats();
    /// println!("{} retries", s.attempts - s.operations);
    /// # }
    /// ```
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.stats;
        ClientStats {
            operations: c.operations.load(Ordering::Relaxed),
            attempts: c.attempts.load(Ordering::Relaxed),
            routing_refreshes: c.refreshes.load(Ordering::Relaxed),
            not_leader: c.not_leader.load(Ordering::Relaxed),
            forwarded: c.forwarded.load(Ordering::Relaxed),
            put_batches: c.put_batches.load(Ordering::Relaxed),
            coalesced_puts: c.coalesced_puts.load(Ordering::Relaxed),
            get_batches: c.get_batches.load(Ordering::Relaxed),
            coalesced_gets: c.coalesced_gets.load(Ordering::Relaxed),
            slow_batches: c.slow_batches.load(Ordering::Relaxed),
            window_timeouts: c.window_timeouts.load(Ordering::Relaxed),
        }
    }

    /// The ring epoch of the cached routing table.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// assert!(client.epoch() >= 1);
    /// # }
    /// ```
    pub fn epoch(&self) -> u64 {
        self.inner.router.read(|t| t.epoch)
    }

    /// The shard that owns `key` according to the cached ring.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// let shard = client.shard_of("hello");
    /// # }
    /// ```
    pub fn shard_of(&self, key: impl AsRef<[u8]>) -> Option<u64> {
        self.inner.router.read(|t| t.shard_for_key(key.as_ref()))
    }

    /// The cached leader hint of `shard` (may be out of date).
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) {
    /// if let Some(shard) = client.shard_of("hello") {
    ///     println!("leader of {shard}: {:?}", client.leader_hint(shard));
    /// }
    /// # }
    /// ```
    pub fn leader_hint(&self, shard: u64) -> Option<u64> {
        self.inner.router.read(|t| t.shards.get(&shard).and_then(|s| s.leader))
    }

    /// Fetches the routing table again now (from any reachable node).
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// client.refresh_routing().await?;
    /// # Ok(()) }
    /// ```
    pub async fn refresh_routing(&self) -> Result<(), Error> {
        let g = self.inner.router.generation();
        self.inner.refresh(g).await
    }

    /// `Admin/ClusterStatus` from any reachable node: nodes, shards with
    /// replicas and leaders (that node's view), ring epoch.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// let st = client.cluster_status().await?;
    /// println!("epoch {} with {} nodes", st.epoch, st.nodes.len());
    /// # Ok(()) }
    /// ```
    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        let (st, _) = self.inner.fetch_status().await?;
        if let Ok(t) = RoutingTable::from_status(&st) {
            self.inner.router.write(|cur| cur.replace_with(t));
        }
        Ok(st)
    }

    /// Where to send an Admin call, in order: (address, channel, per-call
    /// timeout, admin token). Nodes whose circuit breaker is open come last.
    #[allow(clippy::type_complexity)]
    pub(crate) fn admin_targets(
        &self,
    ) -> Result<Vec<(String, tonic::transport::Channel, Duration, Option<String>)>, Error> {
        let inner = &self.inner;
        let (_, cands) = inner.candidates(&[]);
        let now = Instant::now();
        let mut healthy = Vec::new();
        let mut rest = Vec::new();
        for (_, addr) in cands {
            let ch = inner.pool.channel(&addr)?;
            let item = (
                addr.clone(),
                ch,
                inner.cfg.request_timeout,
                inner.cfg.admin_token.clone(),
            );
            if inner.pool.health_rank(&addr, now) == 2 {
                rest.push(item);
            } else {
                healthy.push(item);
            }
        }
        healthy.extend(rest);
        Ok(healthy)
    }

    /// Reads `key`: `Ok(None)` when it is absent. Linearizable, retried on
    /// any transient failure.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// match client.get("hello").await? {
    ///     Some(v) => println!("{}", String::from_utf8_lossy(&v)),
    ///     None => println!("absent"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, Error> {
        self.get_with(key, &CallOptions::default()).await
    }

    /// [`Client::get`] with per-call options (deadline, consistency).
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use ringkv_client::{CallOptions, Consistency};
    /// let v = client.get_with("hello", &CallOptions::new().consistency(Consistency::Stale)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_with(&self, key: impl AsRef<[u8]>, opts: &CallOptions) -> Result<Option<Vec<u8>>, Error> {
        let key = key.as_ref().to_vec();
        let consistency = opts.consistency;
        let deadline = Instant::now() + opts.timeout.unwrap_or(self.inner.cfg.request_timeout);
        let shard = (self.inner.cfg.get_batch_keys_max > 1)
            .then(|| self.inner.router.read(|t| t.shard_for_token(token_of(&key))))
            .flatten();
        let Some(shard) = shard else {
            return self.inner.get_one(key, consistency, deadline).await;
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let bytes = key.len();
        let queued = QueuedGet { key, deadline, reply };
        let queue = (shard, consistency);
        let pushed = self
            .inner
            .gets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(queue, queued, bytes);
        match pushed {
            Ok(Some(batch)) => {
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.run_get_batches(queue, batch).await });
            }
            Ok(None) => {}
            Err(g) => return self.inner.get_one(g.key, consistency, deadline).await,
        }
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Transport {
                message: "the task sending this get's batch stopped before its answer".into(),
            }),
            Err(_) => Err(Error::DeadlineExceeded {
                message: "deadline passed while this get was queued or in flight in a coalesced batch".into(),
            }),
        }
    }

    /// Writes `value` under `key`, exactly once even across retries.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// client.put("hello", b"world".to_vec()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn put(&self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), Error> {
        self.put_with(key, value, &CallOptions::default()).await
    }

    /// [`Client::put`] with per-call options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use std::time::Duration;
    /// let opts = ringkv_client::CallOptions::new().timeout(Duration::from_secs(2));
    /// if let Err(e) = client.put_with("k", "v", &opts).await {
    ///     if e.is_indeterminate() {
    ///         // applied or not: read it back to know
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn put_with(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
        opts: &CallOptions,
    ) -> Result<(), Error> {
        let (key, value) = (key.as_ref().to_vec(), value.as_ref().to_vec());
        let deadline = Instant::now() + opts.timeout.unwrap_or(self.inner.cfg.request_timeout);
        let shard = (self.inner.cfg.put_batch_keys_max > 1)
            .then(|| self.inner.router.read(|t| t.shard_for_token(token_of(&key))))
            .flatten();
        let Some(shard) = shard else {
            return self.inner.put_one(key, value, deadline).await;
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        let bytes = key.len() + value.len();
        let queued = QueuedPut {
            key,
            value,
            deadline,
            reply,
        };
        let pushed = self
            .inner
            .puts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(shard, queued, bytes);
        match pushed {
            Ok(Some(batch)) => {
                // Sent from a task of its own: the batch carries other
                // callers' puts and must not die with this caller's future.
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.run_put_batches(shard, batch).await });
            }
            Ok(None) => {}
            Err(p) => return self.inner.put_one(p.key, p.value, deadline).await,
        }
        // The batch runs until its latest deadline; this put answers by its
        // own. Once queued it may be applied whenever its batch leaves.
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(Error::Indeterminate {
                message: "the task sending this put's batch stopped before its answer".into(),
            }),
            Err(_) => Err(Error::Indeterminate {
                message: "deadline passed while this put was queued or in flight in a coalesced batch".into(),
            }),
        }
    }

    /// Deletes `key`; returns whether it existed.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// let existed = client.delete("hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<bool, Error> {
        self.delete_with(key, &CallOptions::default()).await
    }

    /// [`Client::delete`] with per-call options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// client.delete_with("hello", &ringkv_client::CallOptions::new()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete_with(&self, key: impl AsRef<[u8]>, opts: &CallOptions) -> Result<bool, Error> {
        let key = key.as_ref().to_vec();
        let token = token_of(&key);
        let ticket = self
            .inner
            .begin_write(self.inner.shard_guess(token), self.inner.deadline_of(opts))
            .await?;
        self.inner
            .execute(vec![token], opts, Some(&ticket), Consistency::Linearizable, move |a| {
                let key = key.clone();
                async move {
                    let r = kv_client(a.channel, a.max_message)
                        .delete(request(
                            DeleteRequest {
                                header: Some(a.header),
                                key,
                            },
                            a.timeout,
                        ))
                        .await
                        .map_err(|s| AttemptError::from_status(&s))?
                        .into_inner();
                    Ok((r.existed, r.header))
                }
            })
            .await
    }

    /// Atomically: if the current value of `key` is `expected` (`None` =
    /// the key is absent), replace it with `new_value` (`None` = delete it).
    /// A condition that does not hold is not an error: the outcome says
    /// `succeeded: false` and gives the current value. Exactly once across
    /// retries: a retry of an applied swap returns its first outcome.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// // Create the counter if absent, then increment it.
    /// client.compare_and_swap("n", None, Some(b"1")).await?;
    /// let out = client.compare_and_swap("n", Some(b"1"), Some(b"2")).await?;
    /// assert!(out.succeeded || out.previous.is_some());
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_swap(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new_value: Option<&[u8]>,
    ) -> Result<CasOutcome, Error> {
        self.compare_and_swap_with(key, expected, new_value, &CallOptions::default())
            .await
    }

    /// [`Client::compare_and_swap`] with per-call options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// let opts = ringkv_client::CallOptions::new();
    /// let out = client.compare_and_swap_with("n", Some(b"2"), None, &opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn compare_and_swap_with(
        &self,
        key: impl AsRef<[u8]>,
        expected: Option<&[u8]>,
        new_value: Option<&[u8]>,
        opts: &CallOptions,
    ) -> Result<CasOutcome, Error> {
        let key = key.as_ref().to_vec();
        let token = token_of(&key);
        let expected = match expected {
            Some(v) => Expected::ExpectedValue(v.to_vec()),
            None => Expected::ExpectAbsent(true),
        };
        let action = match new_value {
            Some(v) => Action::NewValue(v.to_vec()),
            None => Action::Delete(true),
        };
        let ticket = self
            .inner
            .begin_write(self.inner.shard_guess(token), self.inner.deadline_of(opts))
            .await?;
        self.inner
            .execute(vec![token], opts, Some(&ticket), Consistency::Linearizable, move |a| {
                let msg = CompareAndSwapRequest {
                    header: Some(a.header),
                    key: key.clone(),
                    expected: Some(expected.clone()),
                    action: Some(action.clone()),
                };
                async move {
                    let r = kv_client(a.channel, a.max_message)
                        .compare_and_swap(request(msg, a.timeout))
                        .await
                        .map_err(|s| AttemptError::from_status(&s))?
                        .into_inner();
                    let out = CasOutcome {
                        succeeded: r.succeeded,
                        previous: r.current_found.then_some(r.current_value),
                    };
                    Ok((out, r.header))
                }
            })
            .await
    }

    /// Reads many keys: one result per key, in request order. The keys are
    /// split by shard and each shard's part goes to its leader in parallel.
    /// Fails with the first failing part's error.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// let values = client.batch_get(&["a", "b", "c"]).await?;
    /// assert_eq!(values.len(), 3);
    /// # Ok(()) }
    /// ```
    pub async fn batch_get<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>, Error> {
        self.batch_get_with(keys, &CallOptions::default()).await
    }

    /// [`Client::batch_get`] with per-call options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use ringkv_client::{CallOptions, Consistency};
    /// let opts = CallOptions::new().consistency(Consistency::Stale);
    /// let values = client.batch_get_with(&["a", "b"], &opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_get_with<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        opts: &CallOptions,
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        let keys: Vec<Vec<u8>> = keys.iter().map(|k| k.as_ref().to_vec()).collect();
        let groups = self.group_by_shard(keys.iter().map(|k| k.as_slice()));
        let consistency = opts.consistency;
        let parts = futures::future::join_all(groups.values().map(|idx| {
            let part: Vec<Vec<u8>> = idx.iter().map(|i| keys[*i].clone()).collect();
            let tokens = part.iter().map(|k| token_of(k)).collect();
            self.inner.execute(tokens, opts, None, consistency, move |a| {
                let part = part.clone();
                async move {
                    let n = part.len();
                    let mut h = a.header;
                    h.consistency = proto_consistency(consistency) as i32;
                    let r = kv_client(a.channel, a.max_message)
                        .batch_get(request(
                            BatchGetRequest {
                                header: Some(h),
                                keys: part,
                            },
                            a.timeout,
                        ))
                        .await
                        .map_err(|s| AttemptError::from_status(&s))?
                        .into_inner();
                    batch_error(&r.results, n, false)?;
                    let values: Vec<Option<Vec<u8>>> =
                        r.results.into_iter().map(|kr| kr.found.then_some(kr.value)).collect();
                    Ok((values, r.header))
                }
            })
        }))
        .await;
        let mut out = vec![None; keys.len()];
        for (idx, part) in groups.values().zip(parts) {
            for (i, v) in idx.iter().zip(part?) {
                out[*i] = v;
            }
        }
        Ok(out)
    }

    /// Writes many pairs. They are split by shard; each shard's part is one
    /// atomic, exactly-once write sent to its leader, all parts in parallel.
    /// Atomic per shard, not across shards: on an error, other shards' parts
    /// may have been applied (the error is the first failing part's).
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// client.batch_put(&[("a", "1"), ("b", "2")]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_put<K: AsRef<[u8]>, V: AsRef<[u8]>>(&self, pairs: &[(K, V)]) -> Result<(), Error> {
        self.batch_put_with(pairs, &CallOptions::default()).await
    }

    /// [`Client::batch_put`] with per-call options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use std::time::Duration;
    /// let opts = ringkv_client::CallOptions::new().timeout(Duration::from_secs(5));
    /// client.batch_put_with(&[("a", "1")], &opts).await?;
    /// # Ok(()) }
    /// ```
    pub async fn batch_put_with<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        pairs: &[(K, V)],
        opts: &CallOptions,
    ) -> Result<(), Error> {
        let pairs: Vec<KeyValue> = pairs
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.as_ref().to_vec(),
                value: v.as_ref().to_vec(),
            })
            .collect();
        let groups = self.group_by_shard(pairs.iter().map(|p| p.key.as_slice()));
        let parts = futures::future::join_all(groups.iter().map(|(shard, idx)| {
            let part: Vec<KeyValue> = idx.iter().map(|i| pairs[*i].clone()).collect();
            self.inner.put_pairs(*shard, part, opts)
        }))
        .await;
        parts.into_iter().collect()
    }

    /// Streams the pairs with `start <= key < end` in key order (an empty
    /// `start` or `end` means unbounded), page by page through the server's
    /// Scan and its continuation token. Each page is one operation with the
    /// configured timeout and retries.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use futures::TryStreamExt;
    /// let pairs: Vec<(Vec<u8>, Vec<u8>)> = client.scan("a", "m").try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn scan(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
    ) -> impl Stream<Item = Result<(Vec<u8>, Vec<u8>), Error>> + Send + 'static {
        self.scan_with(start, end, 0, &CallOptions::default())
    }

    /// [`Client::scan`] returning at most `limit` pairs (0 = no limit), with
    /// per-page options.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// use futures::StreamExt;
    /// let mut s = Box::pin(client.scan_with("", "", 10, &ringkv_client::CallOptions::new()));
    /// while let Some(pair) = s.next().await {
    ///     let (k, v) = pair?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan_with(
        &self,
        start: impl AsRef<[u8]>,
        end: impl AsRef<[u8]>,
        limit: usize,
        opts: &CallOptions,
    ) -> impl Stream<Item = Result<(Vec<u8>, Vec<u8>), Error>> + Send + 'static {
        struct St {
            client: Client,
            start: Vec<u8>,
            end: Vec<u8>,
            continuation: Vec<u8>,
            left: Option<usize>,
            opts: CallOptions,
            done: bool,
        }
        let st = St {
            client: self.clone(),
            start: start.as_ref().to_vec(),
            end: end.as_ref().to_vec(),
            continuation: vec![],
            left: (limit > 0).then_some(limit),
            opts: opts.clone(),
            done: false,
        };
        let pages = futures::stream::try_unfold(st, |mut st| async move {
            if st.done || st.left == Some(0) {
                return Ok(None);
            }
            let page = st.client.inner.cfg.scan_page_size as usize;
            let want = st.left.map_or(page, |l| l.min(page)) as u32;
            let msg = ScanRequest {
                header: None,
                start_key: st.start.clone(),
                end_key: st.end.clone(),
                limit: want,
                continuation: st.continuation.clone(),
            };
            let consistency = st.opts.consistency;
            let resp = st
                .client
                .inner
                .execute(vec![], &st.opts, None, consistency, move |a| {
                    let mut msg = msg.clone();
                    async move {
                        let mut h = a.header;
                        h.consistency = proto_consistency(consistency) as i32;
                        msg.header = Some(h);
                        let r = kv_client(a.channel, a.max_message)
                            .scan(request(msg, a.timeout))
                            .await
                            .map_err(|s| AttemptError::from_status(&s))?
                            .into_inner();
                        let h = r.header;
                        Ok((r, h))
                    }
                })
                .await?;
            let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = resp.pairs.into_iter().map(|p| (p.key, p.value)).collect();
            if let Some(l) = st.left.as_mut() {
                pairs.truncate(*l);
                *l -= pairs.len();
            }
            st.done = resp.continuation.is_empty();
            st.continuation = resp.continuation;
            Ok(Some((futures::stream::iter(pairs.into_iter().map(Ok)), st)))
        });
        futures::TryStreamExt::try_flatten(pages)
    }

    /// Opens `Admin/ExportShard` of `shard_id` on its leader: one
    /// consistent, key-ordered copy of the shard as of one applied log
    /// index. Finding the leader follows `NOT_LEADER` hints and retries like
    /// any read (bounded by [`Config::max_attempts`] and the call's
    /// deadline, which covers opening only). The returned [`ShardExport`]
    /// checks every chunk's crc32, shard id and applied index, and that the
    /// stream ends with its last chunk; each chunk must arrive within
    /// [`Config::stream_idle_timeout`]. A stream that fails midway is not
    /// resumable: open a new one.
    ///
    /// ```no_run
    /// # async fn demo(client: ringkv_client::Client) -> Result<(), ringkv_client::Error> {
    /// let mut export = client.export_shard(1, &ringkv_client::CallOptions::new()).await?;
    /// while let Some(chunk) = export.next_chunk().await? {
    ///     println!("{} pairs", chunk.pairs.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn export_shard(&self, shard_id: u64, opts: &CallOptions) -> Result<ShardExport, Error> {
        let token = self
            .inner
            .router
            .read(|t| t.first_token_of(shard_id))
            .ok_or_else(|| Error::Unavailable {
                shard_id,
                attempts: 0,
                message: format!("shard {shard_id} owns no token range in the cached ring"),
            })?;
        let admin_token = self.inner.cfg.admin_token.clone();
        let max_message = self.inner.cfg.max_message_bytes;
        let stream = self
            .inner
            .execute(vec![token], opts, None, Consistency::Linearizable, move |a| {
                let admin_token = admin_token.clone();
                async move {
                    let mut req = tonic::Request::new(ExportShardRequest { shard_id });
                    if let Some(tok) = &admin_token {
                        let v = format!("Bearer {tok}").parse().map_err(|_| AttemptError::Untyped {
                            code: tonic::Code::InvalidArgument,
                            message: "admin token is not valid metadata".into(),
                        })?;
                        req.metadata_mut().insert("authorization", v);
                    }
                    let s = AdminClient::new(a.channel)
                        .max_decoding_message_size(max_message)
                        .export_shard(req)
                        .await
                        .map_err(|s| AttemptError::from_status(&s))?
                        .into_inner();
                    Ok((s, None))
                }
            })
            .await?;
        Ok(ShardExport {
            stream,
            shard_id,
            applied_index: None,
            idle_timeout: self.inner.cfg.stream_idle_timeout,
            finished: false,
            chunks: 0,
        })
    }

    /// Groups key indexes by the shard the cached ring gives them (0 =
    /// unknown, left for a node to route).
    fn group_by_shard<'a>(&self, keys: impl Iterator<Item = &'a [u8]>) -> BTreeMap<u64, Vec<usize>> {
        self.inner.router.read(|t| {
            let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
            for (i, k) in keys.enumerate() {
                groups.entry(t.shard_for_key(k).unwrap_or(0)).or_default().push(i);
            }
            groups
        })
    }
}

/// Most times a finished batch yields to the callers it answered before the
/// next batch of its queue leaves.
const REQUEUE_YIELDS_MAX: usize = 8;

/// Lets the callers a batch just answered run before the next batch of the
/// queue leaves: a caller that sends its next request at once (every
/// closed-loop worker) then joins that batch instead of waiting for the one
/// after it. Without this the callers of one shard split into two cohorts
/// that alternate, each batch holding about half of them, and the cluster
/// commits more Raft entries for the same writes. Yields while the queues
/// (`queued`) keep growing, at most [`REQUEUE_YIELDS_MAX`] times; a caller
/// that does not come back costs one yield.
async fn let_answered_callers_queue(queued: impl Fn() -> usize) {
    let mut before = queued();
    for _ in 0..REQUEUE_YIELDS_MAX {
        tokio::task::yield_now().await;
        let now = queued();
        if now == before {
            return;
        }
        before = now;
    }
}

fn proto_consistency(c: Consistency) -> ringkv_proto::v1::Consistency {
    match c {
        Consistency::Linearizable => ringkv_proto::v1::Consistency::Linearizable,
        Consistency::Stale => ringkv_proto::v1::Consistency::Stale,
    }
}

/// A node chosen for an attempt.
struct Pick {
    shard: u64,
    node: Option<u64>,
    addr: String,
}

impl Inner {
    /// When an operation with `opts` gives up.
    fn deadline_of(&self, opts: &CallOptions) -> Instant {
        Instant::now() + opts.timeout.unwrap_or(self.cfg.request_timeout)
    }

    /// The shard the routing table places `token` in (0 while unknown).
    fn shard_guess(&self, token: u64) -> u64 {
        self.router.read(|t| t.shard_for_token(token)).unwrap_or(0)
    }

    /// A session sequence for one write to `shard`. Waits (until
    /// `deadline`) while [`SEQUENCE_WINDOW`] writes to the shard got
    /// sequences since its oldest write in flight, so the shard never
    /// forgets that write while it retries; a write that gets no sequence
    /// was never sent.
    async fn begin_write(&self, shard: u64, deadline: Instant) -> Result<WriteTicket, Error> {
        match self.session.begin(shard, deadline).await {
            Some(t) => Ok(t),
            None => {
                self.stats.window_timeouts.fetch_add(1, Ordering::Relaxed);
                Err(Error::DeadlineExceeded {
                    message: format!(
                        "this client's oldest write in flight to shard {shard} held the shard's session window \
                         ({SEQUENCE_WINDOW} writes) until the deadline"
                    ),
                })
            }
        }
    }

    /// `pairs` (of `shard`, as routed now) as one `BatchPut` with one
    /// session sequence, retried as a unit.
    async fn put_pairs(self: &Arc<Self>, shard: u64, pairs: Vec<KeyValue>, opts: &CallOptions) -> Result<(), Error> {
        let tokens = pairs.iter().map(|p| token_of(&p.key)).collect();
        let ticket = self.begin_write(shard, self.deadline_of(opts)).await?;
        self.execute(tokens, opts, Some(&ticket), Consistency::Linearizable, move |a| {
            let pairs = pairs.clone();
            async move {
                let n = pairs.len();
                let r = kv_client(a.channel, a.max_message)
                    .batch_put(request(
                        BatchPutRequest {
                            header: Some(a.header),
                            pairs,
                        },
                        a.timeout,
                    ))
                    .await
                    .map_err(|s| AttemptError::from_status(&s))?
                    .into_inner();
                batch_error(&r.results, n, true)?;
                Ok(((), r.header))
            }
        })
        .await
    }

    /// One put as its own `Put` request, finished by `deadline`.
    async fn put_one(self: &Arc<Self>, key: Vec<u8>, value: Vec<u8>, deadline: Instant) -> Result<(), Error> {
        let opts = CallOptions::new().timeout(deadline.saturating_duration_since(Instant::now()));
        let token = token_of(&key);
        let ticket = self.begin_write(self.shard_guess(token), deadline).await?;
        self.execute(vec![token], &opts, Some(&ticket), Consistency::Linearizable, move |a| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                let r = kv_client(a.channel, a.max_message)
                    .put(request(
                        PutRequest {
                            header: Some(a.header),
                            key,
                            value,
                        },
                        a.timeout,
                    ))
                    .await
                    .map_err(|s| AttemptError::from_status(&s))?
                    .into_inner();
                Ok(((), r.header))
            }
        })
        .await
    }

    /// Runs a batch in its queue's slot for at most
    /// [`Config::batch_slot_hold_max`]; a batch still unanswered then (its
    /// shard electing a leader, say) finishes in a task of its own and the
    /// slot goes to the requests queued behind it, so that they keep
    /// probing the shard instead of waiting out one batch's backoff.
    async fn hold_slot(&self, mut send: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) {
        if tokio::time::timeout(self.cfg.batch_slot_hold_max, &mut send)
            .await
            .is_err()
        {
            self.stats.slow_batches.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(send);
        }
    }

    /// One get as its own `Get` request, finished by `deadline`.
    async fn get_one(
        self: &Arc<Self>,
        key: Vec<u8>,
        consistency: Consistency,
        deadline: Instant,
    ) -> Result<Option<Vec<u8>>, Error> {
        let opts = CallOptions::new().timeout(deadline.saturating_duration_since(Instant::now()));
        let token = token_of(&key);
        self.execute(vec![token], &opts, None, consistency, move |a| {
            let key = key.clone();
            async move {
                let mut h = a.header;
                h.consistency = proto_consistency(consistency) as i32;
                let r = kv_client(a.channel, a.max_message)
                    .get(request(GetRequest { header: Some(h), key }, a.timeout))
                    .await
                    .map_err(|s| AttemptError::from_status(&s))?
                    .into_inner();
                Ok((r.found.then_some(r.value), r.header))
            }
        })
        .await
    }

    /// Sends `batch`, a coalesced batch of gets, and every batch its queue
    /// hands this slot after it, answering each get.
    async fn run_get_batches(self: Arc<Self>, queue: (u64, Consistency), batch: Vec<QueuedGet>) {
        let mut batch = batch;
        loop {
            let me = self.clone();
            self.hold_slot(Box::pin(async move { me.send_get_batch(queue.1, batch).await }))
                .await;
            let gets = &self.gets;
            let_answered_callers_queue(|| gets.lock().unwrap_or_else(|p| p.into_inner()).queued()).await;
            let next = self.gets.lock().unwrap_or_else(|p| p.into_inner()).finish(queue);
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    /// One batch of gets as one `BatchGet` (a single get as a plain `Get`),
    /// by the latest deadline among them (each caller stops waiting at its
    /// own). Should the batch fail as a
    /// whole, each get is tried again on its own: reads may repeat.
    async fn send_get_batch(self: &Arc<Self>, consistency: Consistency, mut batch: Vec<QueuedGet>) {
        assert!(!batch.is_empty() && batch.len() <= self.cfg.get_batch_keys_max);
        if batch.len() == 1 {
            if let Some(g) = batch.pop() {
                let r = self.get_one(g.key, consistency, g.deadline).await;
                let _ = g.reply.send(r);
            }
            return;
        }
        self.stats.get_batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .coalesced_gets
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let deadline = batch.iter().map(|g| g.deadline).max().unwrap_or_else(Instant::now);
        let keys: Vec<Vec<u8>> = batch.iter().map(|g| g.key.clone()).collect();
        let tokens = keys.iter().map(|k| token_of(k)).collect();
        let opts = CallOptions::new().timeout(deadline.saturating_duration_since(Instant::now()));
        let r = self
            .execute(tokens, &opts, None, consistency, move |a| {
                let keys = keys.clone();
                async move {
                    let n = keys.len();
                    let mut h = a.header;
                    h.consistency = proto_consistency(consistency) as i32;
                    let r = kv_client(a.channel, a.max_message)
                        .batch_get(request(BatchGetRequest { header: Some(h), keys }, a.timeout))
                        .await
                        .map_err(|s| AttemptError::from_status(&s))?
                        .into_inner();
                    batch_error(&r.results, n, false)?;
                    Ok((r.results, r.header))
                }
            })
            .await;
        match r {
            Ok(results) => {
                assert_eq!(results.len(), batch.len(), "checked by batch_error");
                for (g, kr) in batch.into_iter().zip(results) {
                    let _ = g.reply.send(Ok(kr.found.then_some(kr.value)));
                }
            }
            Err(_) => {
                futures::future::join_all(batch.into_iter().map(|g| async move {
                    let r = self.get_one(g.key, consistency, g.deadline).await;
                    let _ = g.reply.send(r);
                }))
                .await;
            }
        }
    }

    /// Sends `batch`, a coalesced batch of `shard`, and every batch the
    /// shard's queue hands this slot after it, answering each put.
    async fn run_put_batches(self: Arc<Self>, shard: u64, batch: Vec<QueuedPut>) {
        let mut batch = batch;
        loop {
            let me = self.clone();
            self.hold_slot(Box::pin(async move { me.send_put_batch(batch).await }))
                .await;
            let puts = &self.puts;
            let_answered_callers_queue(|| puts.lock().unwrap_or_else(|p| p.into_inner()).queued()).await;
            let next = self.puts.lock().unwrap_or_else(|p| p.into_inner()).finish(shard);
            match next {
                Some(b) => batch = b,
                None => return,
            }
        }
    }

    /// One batch as one `BatchPut` (a single put as a plain `Put`) with one
    /// session sequence, by the latest deadline among its puts (each caller
    /// stops waiting at its own).
    async fn send_put_batch(self: &Arc<Self>, mut batch: Vec<QueuedPut>) {
        assert!(!batch.is_empty() && batch.len() <= self.cfg.put_batch_keys_max);
        if batch.len() == 1 {
            if let Some(p) = batch.pop() {
                let r = self.put_one(p.key, p.value, p.deadline).await;
                let _ = p.reply.send(r);
            }
            return;
        }
        self.stats.put_batches.fetch_add(1, Ordering::Relaxed);
        self.stats
            .coalesced_puts
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
        let pairs: Vec<KeyValue> = batch
            .iter()
            .map(|p| KeyValue {
                key: p.key.clone(),
                value: p.value.clone(),
            })
            .collect();
        let opts = CallOptions::new().timeout(deadline.saturating_duration_since(Instant::now()));
        // Queued by shard: every put of the batch has the same guess.
        let shard = self.shard_guess(token_of(&pairs[0].key));
        let r = self.put_pairs(shard, pairs, &opts).await;
        match r {
            // The server refused the request as a whole before proposing
            // it (one put's key or value broke a limit): nothing was
            // applied, so each put goes again alone and gets its own
            // verdict; one caller's bad put must not fail the others.
            Err(Error::InvalidArgument { .. }) => {
                futures::future::join_all(batch.into_iter().map(|p| async move {
                    let r = self.put_one(p.key, p.value, p.deadline).await;
                    let _ = p.reply.send(r);
                }))
                .await;
            }
            r => {
                for p in batch {
                    let _ = p.reply.send(r.clone());
                }
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff {
            base: self.cfg.backoff_base,
            max: self.cfg.backoff_max,
        }
    }

    /// Nodes to try for a request on `tokens` (empty = any node), best
    /// first, and the shard they share (0 = several or unknown).
    fn candidates(&self, tokens: &[u64]) -> (u64, Vec<(Option<u64>, String)>) {
        let (shard, mut cands) = self.router.read(|t| {
            let mut shards = tokens.iter().map(|tok| t.shard_for_token(*tok));
            let shard = match shards.next() {
                Some(Some(first)) if shards.all(|s| s == Some(first)) => first,
                _ => 0,
            };
            let ids: Vec<u64> = if shard != 0 {
                t.candidates(shard)
            } else {
                let mut all: Vec<u64> = t.nodes.keys().copied().collect();
                if !all.is_empty() {
                    let n = self.rr.fetch_add(1, Ordering::Relaxed) % all.len();
                    all.rotate_left(n);
                }
                all
            };
            let cands: Vec<(Option<u64>, String)> = ids
                .into_iter()
                .filter_map(|id| t.nodes.get(&id).map(|a| (Some(id), normalize(a))))
                .collect();
            (shard, cands)
        });
        if shard == 0 {
            for s in &self.seeds {
                if !cands.iter().any(|(_, a)| a == s) {
                    cands.push((None, s.clone()));
                }
            }
        }
        let now = Instant::now();
        // Stable: healthy nodes first, keeping the leader-first order.
        cands.sort_by_key(|(_, a)| self.pool.health_rank(a, now));
        (shard, cands)
    }

    fn pick(&self, tokens: &[u64]) -> Option<Pick> {
        let (shard, cands) = self.candidates(tokens);
        let now = Instant::now();
        cands
            .into_iter()
            .find(|(_, addr)| self.pool.allow(addr, now))
            .map(|(node, addr)| Pick { shard, node, addr })
    }

    /// Learns from a successful answer: a forwarded answer or one from a
    /// leader names the shard's leader; a newer epoch asks for a refresh.
    fn learn(self: &Arc<Self>, hdr: Option<&ResponseHeader>, consistency: Consistency, gen: u64) {
        let Some(h) = hdr else { return };
        if h.forwarded {
            self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        }
        if h.shard_id != 0 && h.served_by != 0 && consistency == Consistency::Linearizable {
            let known = self.router.read(|t| t.shards.get(&h.shard_id).and_then(|s| s.leader));
            if known != Some(h.served_by) {
                self.router.write(|t| t.set_leader(h.shard_id, h.served_by));
            }
        }
        if h.epoch > self.router.read(|t| t.epoch) {
            let me = self.clone();
            tokio::spawn(async move {
                let _ = me.refresh(gen).await;
            });
        }
    }

    /// One `Admin/ClusterStatus` from the first node that answers (healthy
    /// known nodes first, then the endpoints given at connect).
    async fn fetch_status(&self) -> Result<(ClusterStatusResponse, String), Error> {
        let (_, cands) = self.candidates(&[]);
        let now = Instant::now();
        let mut last = String::from("no endpoint to ask");
        for (_, addr) in cands {
            if self.pool.health_rank(&addr, now) == 2 && !self.seeds.contains(&addr) {
                continue;
            }
            let ch = self.pool.channel(&addr)?;
            let mut req = request(ClusterStatusRequest {}, self.cfg.attempt_timeout);
            if let Some(tok) = &self.cfg.admin_token {
                let v = format!("Bearer {tok}")
                    .parse()
                    .map_err(|_| Error::Config("admin token is not valid metadata".into()))?;
                req.metadata_mut().insert("authorization", v);
            }
            let mut admin = AdminClient::new(ch).max_decoding_message_size(self.cfg.max_message_bytes);
            match tokio::time::timeout(self.cfg.attempt_timeout, admin.cluster_status(req)).await {
                Ok(Ok(r)) => {
                    self.pool.on_success(&addr);
                    return Ok((r.into_inner(), addr));
                }
                Ok(Err(s)) => {
                    let e = AttemptError::from_status(&s);
                    if let AttemptError::Server {
                        code: ErrorCode::Unauthenticated,
                        detail,
                    } = &e
                    {
                        return Err(Error::Unauthenticated {
                            message: detail.message.clone(),
                        });
                    }
                    if e.is_node_failure() {
                        self.pool.on_failure(&addr, Instant::now());
                    }
                    last = format!("{addr}: {}", e.message());
                }
                Err(_) => {
                    self.pool.on_failure(&addr, Instant::now());
                    last = format!("{addr}: no answer within {:?}", self.cfg.attempt_timeout);
                }
            }
        }
        Err(Error::Transport { message: last })
    }

    /// Refreshes the routing table unless another refresh completed since
    /// the caller saw generation `seen` (single flight: concurrent callers
    /// wait for the one in progress and reuse its result).
    async fn refresh(&self, seen: u64) -> Result<(), Error> {
        let _guard = self.router.refresh_lock.lock().await;
        if self.router.generation() != seen {
            return Ok(());
        }
        self.stats.refreshes.fetch_add(1, Ordering::Relaxed);
        let res = self.fetch_status().await;
        self.router.bump_generation();
        let (st, _) = res?;
        let t = RoutingTable::from_status(&st).map_err(|e| Error::Server {
            code: "INTERNAL".into(),
            message: format!("malformed cluster status: {e}"),
        })?;
        self.router.write(|cur| cur.replace_with(t));
        Ok(())
    }

    /// Runs one operation: routes it by `tokens` (all in one shard, or
    /// empty for any node), sends it, and retries transient failures with
    /// backoff until it succeeds, fails definitely, runs out of attempts or
    /// passes its deadline. A write (`ticket` set) keeps its sequence on
    /// every retry.
    async fn execute<T, F, Fut>(
        self: &Arc<Self>,
        tokens: Vec<u64>,
        opts: &CallOptions,
        ticket: Option<&WriteTicket>,
        consistency: Consistency,
        mut call: F,
    ) -> Result<T, Error>
    where
        F: FnMut(Attempt) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        let deadline = self.deadline_of(opts);
        let _slot = tokio::time::timeout_at(deadline.into(), self.slots.clone().acquire_owned())
            .await
            .map_err(|_| Error::DeadlineExceeded {
                message: format!("no free slot among max_in_flight = {}", self.cfg.max_in_flight),
            })?
            .map_err(|_| Error::Config("client closed".into()))?;
        self.stats.operations.fetch_add(1, Ordering::Relaxed);
        let write = ticket.is_some();
        let mut attempts = 0u32;
        let mut retries = 0u32;
        let mut hops = 0u32;
        let mut maybe_applied = false;
        let mut answered = false;
        let mut last: Option<AttemptError> = None;
        let mut shard = 0u64;
        loop {
            let now = Instant::now();
            if now >= deadline || attempts >= self.cfg.max_attempts {
                return Err(self.give_up(write, maybe_applied, answered, now >= deadline, attempts, shard, last));
            }
            let gen = self.router.generation();
            let Some(pick) = self.pick(&tokens) else {
                // Every candidate's breaker is open: wait, then try again.
                attempts += 1;
                last = Some(AttemptError::Connect(
                    "every candidate node's circuit breaker is open".into(),
                ));
                self.sleep_backoff(&mut retries, deadline).await;
                continue;
            };
            shard = pick.shard;
            attempts += 1;
            self.stats.attempts.fetch_add(1, Ordering::Relaxed);
            let channel = self.pool.channel(&pick.addr)?;
            let timeout = self.cfg.attempt_timeout.min(deadline.saturating_duration_since(now));
            let header = RequestHeader {
                epoch: self.router.read(|t| t.epoch),
                shard_id: pick.shard,
                client_id: ticket.map(|_| self.session.client_id().to_vec()).unwrap_or_default(),
                sequence: ticket.map_or(0, |t| t.sequence),
                consistency: 0,
                first_incomplete_sequence: ticket.map_or(0, |t| t.first_incomplete()),
            };
            let outcome = match tokio::time::timeout(
                timeout,
                call(Attempt {
                    channel,
                    header,
                    timeout,
                    max_message: self.cfg.max_message_bytes,
                }),
            )
            .await
            {
                Ok(r) => r,
                Err(_) => Err(AttemptError::Lost(format!(
                    "{} did not answer within {timeout:?}",
                    pick.addr
                ))),
            };
            let err = match outcome {
                Ok((v, hdr)) => {
                    self.pool.on_success(&pick.addr);
                    self.learn(hdr.as_ref(), consistency, gen);
                    return Ok(v);
                }
                Err(e) => e,
            };
            if write && err.maybe_applied() {
                maybe_applied = true;
            }
            let mut immediate = false;
            if err.is_node_failure() {
                self.pool.on_failure(&pick.addr, Instant::now());
                if let Some(n) = pick.node {
                    self.router.write(|t| t.forget_leader(n));
                }
                // Another replica may be healthy: try it at once, then
                // learn the new layout (single flight).
                immediate = hops < 2;
                let me = self.clone();
                tokio::spawn(async move {
                    let _ = me.refresh(gen).await;
                });
            } else {
                answered = true;
                self.pool.on_success(&pick.addr);
            }
            if let AttemptError::Server { code, detail } = &err {
                if let Some(e) = terminal(*code, detail) {
                    return Err(e);
                }
                match code {
                    ErrorCode::NotLeader => {
                        self.stats.not_leader.fetch_add(1, Ordering::Relaxed);
                        immediate = self.follow_hint(&pick, detail) && hops < 3;
                    }
                    ErrorCode::WrongShard | ErrorCode::UnknownShard => {
                        let _ = tokio::time::timeout_at(deadline.into(), self.refresh(gen)).await;
                        immediate = hops < 1;
                    }
                    _ => {}
                }
            }
            last = Some(err);
            if attempts >= self.cfg.max_attempts {
                // Out of budget: no point waiting before giving up.
                continue;
            }
            if immediate {
                hops += 1;
            } else {
                hops = 0;
                self.sleep_backoff(&mut retries, deadline).await;
            }
        }
    }

    /// Uses a NOT_LEADER hint: records the named leader (and its address,
    /// should it be a node the table does not know yet). Returns whether
    /// the hint names another node worth trying at once.
    fn follow_hint(&self, pick: &Pick, d: &ErrorDetail) -> bool {
        let shard = if d.shard_id != 0 { d.shard_id } else { pick.shard };
        if d.leader_id == 0 || Some(d.leader_id) == pick.node || shard == 0 {
            if let Some(n) = pick.node {
                self.router.write(|t| {
                    if t.shards.get(&shard).and_then(|s| s.leader) == Some(n) {
                        t.forget_leader(n);
                    }
                });
            }
            return false;
        }
        let addr = self.router.write(|t| {
            if !d.leader_addr.is_empty() {
                t.nodes.entry(d.leader_id).or_insert_with(|| d.leader_addr.clone());
            }
            t.set_leader(shard, d.leader_id);
            t.nodes.get(&d.leader_id).map(|a| normalize(a))
        });
        addr.is_some_and(|a| self.pool.health_rank(&a, Instant::now()) == 0)
    }

    async fn sleep_backoff(&self, retries: &mut u32, deadline: Instant) {
        let d = self.backoff().delay(*retries);
        *retries += 1;
        let until = (Instant::now() + d).min(deadline);
        tokio::time::sleep_until(until.into()).await;
    }

    /// The error an operation ends with when it stops retrying.
    #[allow(clippy::too_many_arguments)]
    fn give_up(
        &self,
        write: bool,
        maybe_applied: bool,
        answered: bool,
        deadline_passed: bool,
        attempts: u32,
        shard: u64,
        last: Option<AttemptError>,
    ) -> Error {
        let message = last.as_ref().map_or_else(
            || "the deadline passed before the first attempt".to_string(),
            |e| e.message(),
        );
        if write && maybe_applied {
            return Error::Indeterminate { message };
        }
        if deadline_passed {
            return Error::DeadlineExceeded { message };
        }
        match last {
            Some(AttemptError::Server {
                code: ErrorCode::Overloaded,
                ..
            }) => Error::Overloaded { attempts, message },
            Some(AttemptError::Server {
                code: code @ (ErrorCode::Storage | ErrorCode::Internal),
                ..
            }) => Error::Server {
                code: code.as_str_name().to_string(),
                message,
            },
            Some(AttemptError::Connect(_) | AttemptError::Lost(_)) if !answered => Error::Transport { message },
            _ => Error::Unavailable {
                shard_id: shard,
                attempts,
                message,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn answered_callers_queue_before_the_next_batch_leaves() {
        // Callers woken by a batch's answers queue their next request.
        let queued = Arc::new(AtomicU64::new(0));
        let mut answers = Vec::new();
        for _ in 0..10 {
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let q = queued.clone();
            tokio::spawn(async move {
                if rx.await.is_ok() {
                    q.fetch_add(1, Ordering::SeqCst);
                }
            });
            answers.push(tx);
        }
        tokio::task::yield_now().await;
        for tx in answers {
            let _ = tx.send(());
        }
        let_answered_callers_queue(|| queued.load(Ordering::SeqCst) as usize).await;
        assert_eq!(queued.load(Ordering::SeqCst), 10);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_queue_that_keeps_growing_does_not_hold_the_batch() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let_answered_callers_queue(|| calls.fetch_add(1, Ordering::SeqCst)).await;
        assert_eq!(calls.load(Ordering::SeqCst), REQUEUE_YIELDS_MAX + 1);
        // Nobody comes back: one yield.
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let_answered_callers_queue(|| {
            calls.fetch_add(1, Ordering::SeqCst);
            7
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    fn failed_key(code: ErrorCode) -> KeyResult {
        KeyResult {
            error: Some(ErrorDetail {
                code: code as i32,
                ..ErrorDetail::default()
            }),
            ..KeyResult::default()
        }
    }

    #[test]
    fn a_write_batch_failing_in_part_may_have_been_applied() {
        let all_failed = [failed_key(ErrorCode::NotLeader), failed_key(ErrorCode::NotLeader)];
        let e = batch_error(&all_failed, 2, true).unwrap_err();
        assert!(!e.maybe_applied(), "NOT_LEADER on every key: nothing applied");
        let part = [KeyResult::default(), failed_key(ErrorCode::NotLeader)];
        let e = batch_error(&part, 2, true).unwrap_err();
        assert!(
            matches!(e, AttemptError::PartlyApplied(_)) && e.maybe_applied(),
            "{e:?}"
        );
        // A read keeps the key's own error, hint included.
        let e = batch_error(&part, 2, false).unwrap_err();
        assert!(
            matches!(
                e,
                AttemptError::Server {
                    code: ErrorCode::NotLeader,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(batch_error(&[KeyResult::default()], 1, true).is_ok());
        assert!(batch_error(&[KeyResult::default()], 2, true).is_err(), "short answer");
    }
}
