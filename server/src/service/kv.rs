//! `ringkv.v1.Kv`: validates every request at the edge, routes each key to
//! its shard, serves it on the local leader or forwards it once to the
//! shard's leader, and fans batches and scans out across shards.
//!
//! Owns request validation, the limits' error names and forwarding. The
//! consensus and storage work is the node's.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::kv_server::Kv;
use ringkv_proto::v1::*;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::Request;
use tonic::Response;
use tonic::Status;

use crate::error::ServerError;
use crate::metrics::Method;
use crate::metrics::Outcome;
use crate::node::Node;
use crate::node::ReadConsistency;
use crate::raft::types::Command;
use crate::raft::types::RaftResponse;
use crate::raft::types::SessionId;
use crate::ring::TokenRange as RingRange;
use crate::service::rate_limit::ClientKey;
use crate::service::rate_limit::RateLimiter;
use crate::service::rate_limit::CLIENTS_TRACKED_MAX;

/// Metadata key marking a request already forwarded once.
pub const FORWARDED_METADATA_KEY: &str = "ringkv-forwarded";
/// Length of an exactly-once client id.
pub const CLIENT_ID_BYTES: usize = 16;
/// Version byte of scan continuation tokens.
const CONTINUATION_V1: u8 = 1;

/// Leader hints one forwarded request follows at most.
const FORWARD_HOPS_MAX: usize = 3;

pub struct KvService {
    node: Arc<Node>,
    inflight: Arc<Semaphore>,
    /// `None` when no per-client rate is configured.
    rate: Option<RateLimiter>,
}

/// Per-request context: deadline, whether it was forwarded, its slot in
/// the in-flight limit, and what the slow-request log reports when it ends.
struct Ctx {
    deadline: Instant,
    forwarded: bool,
    _permit: OwnedSemaphorePermit,
    method: &'static str,
    started: Instant,
    /// 0 = slow-request log off.
    slow_request_ms: u64,
    /// The shard routed to, once known (0 = several or none).
    shard: AtomicU64,
}

impl Ctx {
    fn set_shard(&self, shard: u64) {
        self.shard.store(shard, Ordering::Relaxed);
        tracing::Span::current().record("shard", shard);
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        let took = self.started.elapsed();
        if self.slow_request_ms > 0 && took >= Duration::from_millis(self.slow_request_ms) {
            tracing::warn!(
                method = self.method,
                shard = self.shard.load(Ordering::Relaxed),
                forwarded = self.forwarded,
                took_ms = took.as_millis() as u64,
                "slow request"
            );
        }
    }
}

/// Kv requests that carry a [`RequestHeader`].
trait HasHeader {
    fn header(&self) -> &Option<RequestHeader>;
}

macro_rules! has_header {
    ($($t:ty),*) => {
        $(impl HasHeader for $t {
            fn header(&self) -> &Option<RequestHeader> {
                &self.header
            }
        })*
    };
}

has_header!(
    GetRequest,
    PutRequest,
    DeleteRequest,
    CompareAndSwapRequest,
    BatchGetRequest,
    BatchPutRequest,
    ScanRequest
);

/// Parses a `grpc-timeout` header value (`<digits><unit>`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (num, unit) = v.split_at(v.len() - 1);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn header_of(h: &Option<RequestHeader>) -> RequestHeader {
    h.clone().unwrap_or_default()
}

fn with_shard(h: &Option<RequestHeader>, shard: u64) -> Option<RequestHeader> {
    let mut h = header_of(h);
    h.shard_id = shard;
    Some(h)
}

fn mark_forwarded(h: &mut Option<ResponseHeader>) {
    h.get_or_insert_with(ResponseHeader::default).forwarded = true;
}

fn session_of(h: &Option<RequestHeader>) -> Result<Option<SessionId>, ServerError> {
    let Some(h) = h else { return Ok(None) };
    if h.client_id.is_empty() {
        if h.sequence != 0 {
            return Err(ServerError::InvalidArgument(
                "header.sequence is set but header.client_id is empty".into(),
            ));
        }
        return Ok(None);
    }
    let client_id: [u8; CLIENT_ID_BYTES] = h.client_id.as_slice().try_into().map_err(|_| {
        ServerError::limit(
            "client_id_bytes",
            CLIENT_ID_BYTES as u64,
            h.client_id.len() as u64,
            format!("header.client_id must be exactly {CLIENT_ID_BYTES} bytes"),
        )
    })?;
    if h.sequence == 0 {
        return Err(ServerError::InvalidArgument(
            "header.sequence must be >= 1 when header.client_id is set".into(),
        ));
    }
    if h.first_incomplete_sequence > h.sequence {
        return Err(ServerError::InvalidArgument(
            "header.first_incomplete_sequence must be <= header.sequence".into(),
        ));
    }
    Ok(Some(SessionId {
        client_id,
        sequence: h.sequence,
        first_incomplete: h.first_incomplete_sequence,
    }))
}

fn consistency_of(h: &Option<RequestHeader>) -> ReadConsistency {
    match h.as_ref().map(|h| h.consistency()) {
        Some(Consistency::Stale) => ReadConsistency::Stale,
        _ => ReadConsistency::Linearizable,
    }
}

/// The detail carried by a status, or one made up from its code.
fn detail_of(status: &Status) -> ErrorDetail {
    ServerError::from_status(status)
        .map(|(_, d)| d)
        .unwrap_or_else(|| ErrorDetail {
            code: ErrorCode::ShardUnavailable as i32,
            message: status.message().to_string(),
            ..ErrorDetail::default()
        })
}

impl KvService {
    pub fn new(node: Arc<Node>) -> Self {
        let l = &node.cfg.limits;
        let inflight = Arc::new(Semaphore::new(l.inflight_requests_max));
        let rate = (l.client_requests_per_second > 0)
            .then(|| RateLimiter::new(l.client_requests_per_second, l.client_burst, CLIENTS_TRACKED_MAX));
        Self { node, inflight, rate }
    }

    fn status(&self, e: ServerError) -> Status {
        e.to_status(self.node.epoch())
    }

    /// Charges one request to its client's token bucket. Forwarded requests
    /// were charged by the node that received them.
    fn check_rate(&self, client: ClientKey, forwarded: bool) -> Result<(), Status> {
        let Some(rate) = &self.rate else { return Ok(()) };
        if forwarded || rate.try_acquire(client, Instant::now()) {
            return Ok(());
        }
        let l = &self.node.cfg.limits;
        Err(self.status(ServerError::Overloaded(format!(
            "client over its rate: client_requests_per_second = {}, client_burst = {}",
            l.client_requests_per_second, l.client_burst
        ))))
    }

    fn ctx<T: HasHeader>(&self, request: &Request<T>, method: &'static str) -> Result<Ctx, Status> {
        let md = request.metadata();
        let client = match request.get_ref().header().as_ref().map(|h| h.client_id.as_slice()) {
            Some(id) if id.len() == CLIENT_ID_BYTES => {
                let mut k = [0u8; CLIENT_ID_BYTES];
                k.copy_from_slice(id);
                ClientKey::Id(k)
            }
            _ => request
                .remote_addr()
                .map_or(ClientKey::Unknown, |a| ClientKey::Ip(a.ip())),
        };
        self.check_rate(client, md.contains_key(FORWARDED_METADATA_KEY))?;
        let permit = self.inflight.clone().try_acquire_owned().map_err(|_| {
            self.status(ServerError::Overloaded(format!(
                "more than inflight_requests_max = {} requests in flight",
                self.node.cfg.limits.inflight_requests_max
            )))
        })?;
        let timeout = md
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(Duration::from_millis(self.node.cfg.limits.forward_timeout_ms));
        let started = Instant::now();
        Ok(Ctx {
            deadline: started + timeout,
            forwarded: md.contains_key(FORWARDED_METADATA_KEY),
            _permit: permit,
            method,
            started,
            slow_request_ms: self.node.cfg.log.slow_request_ms,
            shard: AtomicU64::new(0),
        })
    }

    fn response_header(&self, shard_id: u64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            served_by: self.node.id,
            shard_id,
            epoch: self.node.epoch(),
            forwarded: false,
        })
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ServerError> {
        let max = self.node.cfg.limits.key_bytes_max;
        if key.is_empty() {
            return Err(ServerError::limit("key_bytes_min", 1, 0, "key must not be empty"));
        }
        if key.len() > max {
            return Err(ServerError::limit(
                "key_bytes_max",
                max as u64,
                key.len() as u64,
                "key too long",
            ));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), ServerError> {
        let max = self.node.cfg.limits.value_bytes_max;
        if value.len() > max {
            return Err(ServerError::limit(
                "value_bytes_max",
                max as u64,
                value.len() as u64,
                "value too large",
            ));
        }
        Ok(())
    }

    fn check_batch_len(&self, n: usize) -> Result<(), ServerError> {
        let max = self.node.cfg.limits.batch_keys_max;
        if n == 0 {
            return Err(ServerError::InvalidArgument("batch has no keys".into()));
        }
        if n > max {
            return Err(ServerError::limit(
                "batch_keys_max",
                max as u64,
                n as u64,
                "batch has too many keys",
            ));
        }
        Ok(())
    }

    /// The shard of `key`, checked against the one the caller named.
    fn route(&self, h: &Option<RequestHeader>, key: &[u8]) -> Result<u64, ServerError> {
        let shard = self.node.shard_for_key(key)?;
        let asked = h.as_ref().map_or(0, |h| h.shard_id);
        if asked != 0 && asked != shard {
            return Err(ServerError::WrongShard {
                shard_id: shard,
                epoch: self.node.epoch(),
            });
        }
        Ok(shard)
    }

    /// Forwards `req` to the leader named in `err`, or returns `err`. A
    /// leader that turns out not to lead any more answers NOT_LEADER with
    /// its own hint, which is followed too, at most [`FORWARD_HOPS_MAX`]
    /// times (this node may only know a stale replica of a shard it does
    /// not host). The receiving node never forwards again.
    async fn forward<Req, Resp, F, Fut>(&self, ctx: &Ctx, err: ServerError, req: Req, call: F) -> Result<Resp, Status>
    where
        Req: Clone,
        F: Fn(KvClient<Channel>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut err = err;
        let mut tried = Vec::new();
        for _ in 0..FORWARD_HOPS_MAX {
            let (leader, addr, shard_id) = match &err {
                ServerError::NotLeader {
                    leader_id: Some(l),
                    leader_addr,
                    shard_id,
                    ..
                } if !ctx.forwarded && *l != self.node.id && !tried.contains(l) => {
                    match leader_addr.clone().or_else(|| self.node.addr_of(*l)) {
                        Some(a) => (*l, a, *shard_id),
                        None => return Err(self.status(err)),
                    }
                }
                _ => return Err(self.status(err)),
            };
            tried.push(leader);
            let left = ctx.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.status(ServerError::DeadlineExceeded("no time left to forward".into())));
            }
            let peer = self
                .node
                .pool
                .peer(leader, &addr)
                .map_err(|e| self.status(ServerError::Internal(e)))?;
            let grpc_max = self.node.cfg.grpc_message_bytes_max();
            let client = KvClient::new(peer.channel.clone())
                .max_decoding_message_size(grpc_max)
                .max_encoding_message_size(grpc_max);
            let mut r = Request::new(req.clone());
            r.set_timeout(left);
            r.metadata_mut()
                .insert(FORWARDED_METADATA_KEY, tonic::metadata::MetadataValue::from_static("1"));
            self.node.stats.inc(&self.node.stats.forwarded_requests);
            match tokio::time::timeout(left, call(client, r)).await {
                Err(_) => {
                    return Err(self.status(ServerError::DeadlineExceeded(format!(
                        "forwarded request to node {leader} did not answer in time"
                    ))))
                }
                Ok(Ok(resp)) => return Ok(resp.into_inner()),
                // The leader's own typed error: a newer leader hint is
                // followed, anything else passes through untouched.
                Ok(Err(status)) => match ServerError::from_status(&status) {
                    Some((e @ ServerError::NotLeader { leader_id: Some(_), .. }, _)) => err = e,
                    Some(_) => return Err(status),
                    None => {
                        return Err(self.status(ServerError::ShardUnavailable {
                            shard_id,
                            reason: format!("forwarding to leader {leader} at {addr} failed: {}", status.message()),
                        }))
                    }
                },
            }
        }
        Err(self.status(err))
    }

    async fn get_local(
        &self,
        ctx: &Ctx,
        shard: u64,
        h: &Option<RequestHeader>,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, ServerError> {
        let replica = self.node.read_barrier(shard, consistency_of(h), ctx.deadline).await?;
        self.node.read_local(&replica, key)
    }

    async fn batch_get_shard(
        &self,
        ctx: &Ctx,
        shard: u64,
        h: &Option<RequestHeader>,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<KeyResult>, Status> {
        let local = async {
            let replica = self.node.read_barrier(shard, consistency_of(h), ctx.deadline).await?;
            keys.iter()
                .map(|k| {
                    let v = self.node.read_local(&replica, k)?;
                    Ok(KeyResult {
                        key: k.clone(),
                        found: v.is_some(),
                        value: v.unwrap_or_default(),
                        error: None,
                    })
                })
                .collect::<Result<Vec<_>, ServerError>>()
        };
        match local.await {
            Ok(r) => Ok(r),
            Err(e) => {
                let req = BatchGetRequest {
                    header: with_shard(h, shard),
                    keys,
                };
                let resp = self
                    .forward(ctx, e, req, |mut c, r| async move { c.batch_get(r).await })
                    .await?;
                Ok(resp.results)
            }
        }
    }

    async fn batch_put_shard(
        &self,
        ctx: &Ctx,
        shard: u64,
        h: &Option<RequestHeader>,
        pairs: Vec<KeyValue>,
    ) -> Result<Vec<KeyResult>, Status> {
        let session = session_of(h).map_err(|e| self.status(e))?;
        let cmd = Command::BatchPut {
            pairs: pairs.iter().map(|p| (p.key.clone(), p.value.clone())).collect(),
        };
        match self.node.write(shard, cmd, session, ctx.deadline).await {
            Ok(_) => Ok(pairs
                .into_iter()
                .map(|p| KeyResult {
                    key: p.key,
                    ..KeyResult::default()
                })
                .collect()),
            Err(e) => {
                let req = BatchPutRequest {
                    header: with_shard(h, shard),
                    pairs,
                };
                let resp = self
                    .forward(ctx, e, req, |mut c, r| async move { c.batch_put(r).await })
                    .await?;
                Ok(resp.results)
            }
        }
    }

    /// Up to `limit` pairs of one shard in `[start, end)`, and the token
    /// ranges the answering replica owned; see [`ScanPart`].
    async fn scan_shard(
        &self,
        ctx: &Ctx,
        shard: u64,
        h: &Option<RequestHeader>,
        start: &[u8],
        end: &[u8],
        limit: u32,
    ) -> Result<(ScanPart, Vec<RingRange>), Status> {
        let local = async {
            let replica = self.node.read_barrier(shard, consistency_of(h), ctx.deadline).await?;
            self.node.scan_local(&replica, start, end, limit as usize)
        };
        match local.await {
            Ok((pairs, owned)) => {
                // Read up to `limit` pairs: the shard may hold more after
                // the last one.
                let resume_at = pairs
                    .last()
                    .filter(|_| pairs.len() >= limit as usize)
                    .map(|(k, _)| key_after(k));
                let pairs = pairs.into_iter().map(|(key, value)| KeyValue { key, value }).collect();
                Ok((ScanPart { pairs, resume_at }, owned))
            }
            Err(e) => {
                let req = ScanRequest {
                    header: with_shard(h, shard),
                    start_key: start.to_vec(),
                    end_key: end.to_vec(),
                    limit,
                    continuation: vec![],
                };
                let resp = self
                    .forward(ctx, e, req, |mut c, r| async move { c.scan(r).await })
                    .await?;
                // The leader's page of this one shard says where it stopped.
                let Some(resume_at) = resume_key(&resp.continuation) else {
                    return Err(self.status(ServerError::Internal(format!(
                        "shard {shard}'s leader answered a scan with a continuation of an unknown version"
                    ))));
                };
                let resume_at = resume_at.map(<[u8]>::to_vec);
                let part = ScanPart {
                    pairs: resp.pairs,
                    resume_at,
                };
                Ok((part, super::ring_ranges(&resp.shard_ranges)))
            }
        }
    }

    /// Groups indexes of `keys` by shard, keeping their order.
    fn group_by_shard<'a>(
        &self,
        h: &Option<RequestHeader>,
        keys: impl Iterator<Item = &'a [u8]>,
    ) -> Result<BTreeMap<u64, Vec<usize>>, ServerError> {
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys.enumerate() {
            self.check_key(k)?;
            groups.entry(self.route(h, k)?).or_default().push(i);
        }
        Ok(groups)
    }
}

fn failed(key: Vec<u8>, status: &Status) -> KeyResult {
    KeyResult {
        key,
        found: false,
        value: vec![],
        error: Some(detail_of(status)),
    }
}

/// Puts each shard's per-key answers back in request order; a failed or
/// short shard answer becomes an error on each of that shard's keys.
fn merge_by_shard<'a>(
    keys: impl Iterator<Item = &'a [u8]>,
    groups: &BTreeMap<u64, Vec<usize>>,
    parts: Vec<Result<Vec<KeyResult>, Status>>,
) -> Vec<KeyResult> {
    let mut results: Vec<KeyResult> = keys
        .map(|k| KeyResult {
            key: k.to_vec(),
            ..KeyResult::default()
        })
        .collect();
    for ((_, idx), part) in groups.iter().zip(parts) {
        let part = match part {
            Ok(res) if res.len() == idx.len() => Ok(res),
            Ok(res) => Err(Status::internal(format!(
                "shard answered {} of {} keys",
                res.len(),
                idx.len()
            ))),
            Err(st) => Err(st),
        };
        match part {
            Ok(res) => idx.iter().zip(res).for_each(|(i, kr)| results[*i] = kr),
            Err(st) => idx
                .iter()
                .for_each(|i| results[*i] = failed(results[*i].key.clone(), &st)),
        }
    }
    results
}

/// The request handlers; [`Kv`] wraps each to record its metrics.
impl KvService {
    async fn do_get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let ctx = self.ctx(&request, "Get")?;
        let r = request.into_inner();
        self.check_key(&r.key).map_err(|e| self.status(e))?;
        let shard = self.route(&r.header, &r.key).map_err(|e| self.status(e))?;
        ctx.set_shard(shard);
        match self.get_local(&ctx, shard, &r.header, &r.key).await {
            Ok(v) => Ok(Response::new(GetResponse {
                header: self.response_header(shard),
                found: v.is_some(),
                value: v.unwrap_or_default(),
            })),
            Err(e) => {
                let req = GetRequest {
                    header: with_shard(&r.header, shard),
                    key: r.key,
                };
                let mut resp = self
                    .forward(&ctx, e, req, |mut c, r| async move { c.get(r).await })
                    .await?;
                mark_forwarded(&mut resp.header);
                Ok(Response::new(resp))
            }
        }
    }

    async fn do_put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let ctx = self.ctx(&request, "Put")?;
        let r = request.into_inner();
        self.check_key(&r.key).map_err(|e| self.status(e))?;
        self.check_value(&r.value).map_err(|e| self.status(e))?;
        let session = session_of(&r.header).map_err(|e| self.status(e))?;
        let shard = self.route(&r.header, &r.key).map_err(|e| self.status(e))?;
        ctx.set_shard(shard);
        let cmd = Command::Put {
            key: r.key.clone(),
            value: r.value.clone(),
        };
        match self.node.write(shard, cmd, session, ctx.deadline).await {
            Ok(_) => Ok(Response::new(PutResponse {
                header: self.response_header(shard),
            })),
            Err(e) => {
                let req = PutRequest {
                    header: with_shard(&r.header, shard),
                    ..r
                };
                let mut resp = self
                    .forward(&ctx, e, req, |mut c, r| async move { c.put(r).await })
                    .await?;
                mark_forwarded(&mut resp.header);
                Ok(Response::new(resp))
            }
        }
    }

    async fn do_delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let ctx = self.ctx(&request, "Delete")?;
        let r = request.into_inner();
        self.check_key(&r.key).map_err(|e| self.status(e))?;
        let session = session_of(&r.header).map_err(|e| self.status(e))?;
        let shard = self.route(&r.header, &r.key).map_err(|e| self.status(e))?;
        ctx.set_shard(shard);
        let cmd = Command::Delete { key: r.key.clone() };
        match self.node.write(shard, cmd, session, ctx.deadline).await {
            Ok(resp) => Ok(Response::new(DeleteResponse {
                header: self.response_header(shard),
                existed: matches!(resp, RaftResponse::Deleted { existed: true }),
            })),
            Err(e) => {
                let req = DeleteRequest {
                    header: with_shard(&r.header, shard),
                    key: r.key,
                };
                let mut resp = self
                    .forward(&ctx, e, req, |mut c, r| async move { c.delete(r).await })
                    .await?;
                mark_forwarded(&mut resp.header);
                Ok(Response::new(resp))
            }
        }
    }

    async fn do_compare_and_swap(
        &self,
        request: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let ctx = self.ctx(&request, "CompareAndSwap")?;
        let r = request.into_inner();
        let invalid = |m: &str| self.status(ServerError::InvalidArgument(m.to_string()));
        self.check_key(&r.key).map_err(|e| self.status(e))?;
        let expected = match &r.expected {
            Some(Expected::ExpectedValue(v)) => {
                self.check_value(v).map_err(|e| self.status(e))?;
                Some(v.clone())
            }
            Some(Expected::ExpectAbsent(true)) => None,
            Some(Expected::ExpectAbsent(false)) => return Err(invalid("expect_absent must be true when set")),
            None => return Err(invalid("set expected_value or expect_absent")),
        };
        let new_value = match &r.action {
            Some(Action::NewValue(v)) => {
                self.check_value(v).map_err(|e| self.status(e))?;
                Some(v.clone())
            }
            Some(Action::Delete(true)) => None,
            Some(Action::Delete(false)) => return Err(invalid("delete must be true when set")),
            None => return Err(invalid("set new_value or delete")),
        };
        let session = session_of(&r.header).map_err(|e| self.status(e))?;
        let shard = self.route(&r.header, &r.key).map_err(|e| self.status(e))?;
        ctx.set_shard(shard);
        let cmd = Command::CompareAndSwap {
            key: r.key.clone(),
            expected,
            new_value,
        };
        match self.node.write(shard, cmd, session, ctx.deadline).await {
            Ok(RaftResponse::Swapped { succeeded, previous }) => Ok(Response::new(CompareAndSwapResponse {
                header: self.response_header(shard),
                succeeded,
                current_found: previous.is_some(),
                current_value: previous.unwrap_or_default(),
            })),
            Ok(other) => Err(self.status(ServerError::Internal(format!(
                "compare-and-swap applied with unexpected result {other:?}"
            )))),
            Err(e) => {
                let req = CompareAndSwapRequest {
                    header: with_shard(&r.header, shard),
                    ..r
                };
                let mut resp = self
                    .forward(&ctx, e, req, |mut c, r| async move { c.compare_and_swap(r).await })
                    .await?;
                mark_forwarded(&mut resp.header);
                Ok(Response::new(resp))
            }
        }
    }

    async fn do_batch_get(&self, request: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let ctx = self.ctx(&request, "BatchGet")?;
        let r = request.into_inner();
        self.check_batch_len(r.keys.len()).map_err(|e| self.status(e))?;
        let groups = self
            .group_by_shard(&r.header, r.keys.iter().map(|k| k.as_slice()))
            .map_err(|e| self.status(e))?;
        let parts = futures::future::join_all(groups.iter().map(|(shard, idx)| {
            let keys = idx.iter().map(|i| r.keys[*i].clone()).collect();
            self.batch_get_shard(&ctx, *shard, &r.header, keys)
        }))
        .await;
        let results = merge_by_shard(r.keys.iter().map(|k| k.as_slice()), &groups, parts);
        Ok(Response::new(BatchGetResponse {
            header: self.response_header(0),
            results,
        }))
    }

    async fn do_batch_put(&self, request: Request<BatchPutRequest>) -> Result<Response<BatchPutResponse>, Status> {
        let ctx = self.ctx(&request, "BatchPut")?;
        let r = request.into_inner();
        self.check_batch_len(r.pairs.len()).map_err(|e| self.status(e))?;
        session_of(&r.header).map_err(|e| self.status(e))?;
        let mut bytes = 0usize;
        for p in &r.pairs {
            self.check_value(&p.value).map_err(|e| self.status(e))?;
            bytes += p.key.len() + p.value.len();
        }
        let max = self.node.cfg.limits.batch_bytes_max;
        if bytes > max {
            return Err(self.status(ServerError::limit(
                "batch_bytes_max",
                max as u64,
                bytes as u64,
                "batch keys and values too large",
            )));
        }
        let groups = self
            .group_by_shard(&r.header, r.pairs.iter().map(|p| p.key.as_slice()))
            .map_err(|e| self.status(e))?;
        let parts = futures::future::join_all(groups.iter().map(|(shard, idx)| {
            let pairs = idx.iter().map(|i| r.pairs[*i].clone()).collect();
            self.batch_put_shard(&ctx, *shard, &r.header, pairs)
        }))
        .await;
        let results = merge_by_shard(r.pairs.iter().map(|p| p.key.as_slice()), &groups, parts);
        Ok(Response::new(BatchPutResponse {
            header: self.response_header(0),
            results,
        }))
    }

    async fn do_scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let ctx = self.ctx(&request, "Scan")?;
        let r = request.into_inner();
        let max = self.node.cfg.limits.scan_limit_max;
        if r.limit > max {
            return Err(self.status(ServerError::limit(
                "scan_limit_max",
                u64::from(max),
                u64::from(r.limit),
                "scan limit too large",
            )));
        }
        let limit = if r.limit == 0 { max } else { r.limit };
        let key_max = self.node.cfg.limits.key_bytes_max;
        for (name, k) in [("start_key", &r.start_key), ("end_key", &r.end_key)] {
            if k.len() > key_max {
                return Err(self.status(ServerError::limit(
                    "key_bytes_max",
                    key_max as u64,
                    k.len() as u64,
                    format!("{name} too long"),
                )));
            }
        }
        let mut start = r.start_key.clone();
        match resume_key(&r.continuation) {
            Some(None) => {}
            Some(Some(next)) if next.len() <= key_max + 1 => {
                if next > start.as_slice() {
                    start = next.to_vec();
                }
            }
            _ => return Err(self.status(ServerError::InvalidArgument("malformed scan continuation".into()))),
        }
        if !r.end_key.is_empty() && start >= r.end_key {
            return Ok(Response::new(ScanResponse {
                header: self.response_header(0),
                pairs: vec![],
                continuation: vec![],
                shard_ranges: vec![],
            }));
        }
        let asked = r.header.as_ref().map_or(0, |h| h.shard_id);
        // One view of the layout: its shards' ranges partition the ring, so
        // the scan is complete when each shard answers for all of its ranges.
        let layout = self.node.layout();
        let shards: Vec<u64> = if asked != 0 {
            if !layout.shards.contains_key(&asked) {
                return Err(self.status(ServerError::WrongShard {
                    shard_id: asked,
                    epoch: self.node.epoch(),
                }));
            }
            vec![asked]
        } else {
            layout.shards.keys().copied().collect()
        };
        let parts = futures::future::join_all(
            shards
                .iter()
                .map(|s| self.scan_shard(&ctx, *s, &r.header, &start, &r.end_key, limit)),
        )
        .await;
        let mut merged: Vec<ScanPart> = Vec::with_capacity(shards.len());
        let mut shard_ranges = Vec::new();
        for (shard, part) in shards.iter().zip(parts) {
            let (mut part, owned) = part?;
            let expected = layout.shards.get(shard).map_or(&[][..], |i| i.ranges.as_slice());
            if !expected.iter().all(|r| crate::ring::covers(&owned, r)) {
                // The shard split (or this node's layout is ahead of the
                // replica that answered): part of what the layout gives it
                // is another shard's now. The client refreshes and retries.
                return Err(self.status(ServerError::WrongShard {
                    shard_id: *shard,
                    epoch: self.node.epoch(),
                }));
            }
            // A replica that has not applied a split yet still holds the
            // split-off keys, which the new shard returns too.
            part.pairs
                .retain(|p| expected.iter().any(|r| r.contains(crate::ring::token_of(&p.key))));
            if asked != 0 {
                shard_ranges = super::proto_ranges(&owned);
            }
            merged.push(part);
        }
        let (pairs, resume_at) = merge_scan_parts(merged, limit as usize);
        let continuation = resume_at.map_or_else(Vec::new, |next| continuation_to(&next));
        Ok(Response::new(ScanResponse {
            header: self.response_header(if asked != 0 { asked } else { 0 }),
            pairs,
            continuation,
            shard_ranges,
        }))
    }
}

/// One shard's pairs for a scan page, in its own ranges, and where it
/// stopped reading: `resume_at` is `None` when the shard returned every
/// pair of the range, else the key from which it did not read (every pair
/// it holds below that key is in `pairs`, minus those it filtered out as
/// another shard's).
#[derive(Debug, Default)]
struct ScanPart {
    pairs: Vec<KeyValue>,
    resume_at: Option<Vec<u8>>,
}

/// The continuation token of a page after which the scan resumes at `next`.
fn continuation_to(next: &[u8]) -> Vec<u8> {
    let mut c = Vec::with_capacity(next.len() + 1);
    c.push(CONTINUATION_V1);
    c.extend_from_slice(next);
    c
}

/// Where the scan of `continuation` resumes: `Some(None)` for the empty
/// token (the first page, or a complete scan), `None` when it is not a
/// token of a known version.
fn resume_key(continuation: &[u8]) -> Option<Option<&[u8]>> {
    match continuation.split_first() {
        None => Some(None),
        Some((&CONTINUATION_V1, next)) => Some(Some(next)),
        Some(_) => None,
    }
}

/// The smallest key greater than `key`: where a scan that returned `key`
/// resumes.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = Vec::with_capacity(key.len() + 1);
    next.extend_from_slice(key);
    next.push(0);
    next
}

/// Merges the shards' parts of a scan page into at most `limit` pairs in
/// key order, and the key the next page starts from (`None`: the scan is
/// complete). The page stops at the earliest `resume_at`: past it, a shard
/// that stopped there may hold pairs nobody read yet. Counting a shard's
/// pairs alone is not enough: a replica behind a split reads `limit` pairs
/// and keeps fewer, and another shard's pairs beyond its last one would
/// then end the page after keys it never read.
fn merge_scan_parts(parts: Vec<ScanPart>, limit: usize) -> (Vec<KeyValue>, Option<Vec<u8>>) {
    assert!(limit > 0, "the handler turns limit 0 into the configured maximum");
    let cut = parts.iter().filter_map(|p| p.resume_at.clone()).min();
    let mut pairs: Vec<KeyValue> = parts
        .into_iter()
        .flat_map(|p| p.pairs)
        .filter(|p| cut.as_ref().is_none_or(|c| p.key < *c))
        .collect();
    pairs.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    if pairs.len() > limit {
        pairs.truncate(limit);
        let next = pairs.last().map(|p| key_after(&p.key));
        debug_assert!(next.is_some());
        return (pairs, next);
    }
    (pairs, cut)
}

/// Records a finished request in the node's metrics.
fn observe<T>(node: &Node, method: Method, started: Instant, r: &Result<T, Status>) {
    let outcome = match r {
        Ok(_) => Outcome::Ok,
        Err(st) => match ringkv_proto::decode_error_detail(st.details()).map(|d| ErrorCode::try_from(d.code)) {
            Some(Ok(code)) => Outcome::Error(code),
            _ => Outcome::Other,
        },
    };
    node.metrics.request(method, outcome, started.elapsed().as_secs_f64());
}

macro_rules! observed {
    ($($name:ident, $inner:ident, $method:ident, $req:ty, $resp:ty;)*) => {
        #[tonic::async_trait]
        impl Kv for KvService {
            $(
                async fn $name(&self, request: Request<$req>) -> Result<Response<$resp>, Status> {
                    let started = Instant::now();
                    // One span per request; the shard is recorded once routed.
                    let span = tracing::debug_span!(
                        "kv",
                        method = Method::$method.name(),
                        shard = tracing::field::Empty,
                        forwarded = request.metadata().contains_key(FORWARDED_METADATA_KEY)
                    );
                    let r = tracing::Instrument::instrument(self.$inner(request), span).await;
                    observe(&self.node, Method::$method, started, &r);
                    r
                }
            )*
        }
    };
}

observed! {
    get, do_get, Get, GetRequest, GetResponse;
    put, do_put, Put, PutRequest, PutResponse;
    delete, do_delete, Delete, DeleteRequest, DeleteResponse;
    compare_and_swap, do_compare_and_swap, CompareAndSwap, CompareAndSwapRequest, CompareAndSwapResponse;
    batch_get, do_batch_get, BatchGet, BatchGetRequest, BatchGetResponse;
    batch_put, do_batch_put, BatchPut, BatchPutRequest, BatchPutResponse;
    scan, do_scan, Scan, ScanRequest, ScanResponse;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_parses() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("12x"), None);
        assert_eq!(parse_grpc_timeout("999999999999S"), None);
    }

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: vec![],
        }
    }

    fn keys(pairs: &[KeyValue]) -> Vec<String> {
        pairs
            .iter()
            .map(|p| String::from_utf8_lossy(&p.key).into_owned())
            .collect()
    }

    #[test]
    fn continuation_tokens_round_trip_and_carry_their_version() {
        assert_eq!(resume_key(&continuation_to(b"k\0")), Some(Some(&b"k\0"[..])));
        assert_eq!(resume_key(&[]), Some(None));
        assert_eq!(resume_key(&[CONTINUATION_V1 + 1, b'k']), None);
    }

    #[test]
    fn a_scan_page_stops_where_a_shard_stopped_reading() {
        let part = |ks: &[&str], resume_at: Option<&str>| ScanPart {
            pairs: ks.iter().map(|k| kv(k)).collect(),
            resume_at: resume_at.map(|r| r.as_bytes().to_vec()),
        };
        // Both shards read everything: one sorted page, complete.
        let (p, next) = merge_scan_parts(vec![part(&["b", "d"], None), part(&["a", "c"], None)], 4);
        assert_eq!(keys(&p), ["a", "b", "c", "d"]);
        assert_eq!(next, None);
        // More than the limit: the page ends after its last pair.
        let (p, next) = merge_scan_parts(vec![part(&["b", "d"], None), part(&["a", "c"], None)], 3);
        assert_eq!(keys(&p), ["a", "b", "c"]);
        assert_eq!(next, Some(b"c\0".to_vec()));
        // The first shard read up to "c" and kept only "a" (the others were
        // split off): "d" and "e" of the second shard wait for the next
        // page, which starts where the first shard stopped.
        let (p, next) = merge_scan_parts(vec![part(&["a"], Some("c\0")), part(&["b", "d", "e"], None)], 3);
        assert_eq!(keys(&p), ["a", "b"]);
        assert_eq!(next, Some(b"c\0".to_vec()));
        // A shard that kept nothing of what it read still moves the scan on.
        let (p, next) = merge_scan_parts(vec![part(&[], Some("m\0")), part(&["x"], None)], 3);
        assert!(p.is_empty());
        assert_eq!(next, Some(b"m\0".to_vec()));
    }

    /// Pages through shards the way `do_scan` does, one of them a replica
    /// that has not applied a split (a stale read) and still reads the
    /// split-off keys, and checks every key comes back exactly once, in
    /// order.
    #[test]
    fn paged_scans_return_every_key_once_while_a_replica_lags_a_split() {
        use rand::Rng;
        use rand::SeedableRng;
        let seed: u64 = std::env::var("RINGKV_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4242);
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..200 {
            let shards = rng.gen_range(1..5usize);
            let limit = rng.gen_range(1..8usize);
            // Each key belongs to one shard. The lagging replica of shard 0
            // also reads (and drops) keys of the split-off range: some that
            // the new shard holds, and some it deleted since the split,
            // which only the lagging replica still has.
            let mut owned: Vec<std::collections::BTreeSet<Vec<u8>>> = vec![Default::default(); shards];
            let mut extra = std::collections::BTreeSet::new();
            for _ in 0..rng.gen_range(0..60) {
                let key = format!("k{:03}", rng.gen_range(0..400)).into_bytes();
                let s = rng.gen_range(0..shards);
                if owned.iter().any(|o| o.contains(&key)) || extra.contains(&key) {
                    continue;
                }
                match rng.gen_range(0..4) {
                    0 if s != 0 => {
                        extra.insert(key);
                    }
                    1 if s != 0 => {
                        extra.insert(key.clone());
                        owned[s].insert(key);
                    }
                    _ => {
                        owned[s].insert(key);
                    }
                }
            }
            let mut got: Vec<Vec<u8>> = Vec::new();
            let mut start: Vec<u8> = Vec::new();
            for _page in 0..1000 {
                let parts = (0..shards)
                    .map(|s| {
                        let held: Vec<&Vec<u8>> = if s == 0 {
                            owned[0].union(&extra).collect()
                        } else {
                            owned[s].iter().collect()
                        };
                        let read: Vec<&Vec<u8>> = held.into_iter().filter(|k| **k >= start).take(limit).collect();
                        let resume_at = read.last().filter(|_| read.len() >= limit).map(|k| key_after(k));
                        ScanPart {
                            pairs: read
                                .into_iter()
                                .filter(|k| owned[s].contains(*k))
                                .map(|k| KeyValue {
                                    key: k.clone(),
                                    value: vec![],
                                })
                                .collect(),
                            resume_at,
                        }
                    })
                    .collect();
                let (pairs, next) = merge_scan_parts(parts, limit);
                assert!(pairs.len() <= limit, "seed {seed} round {round}: page over the limit");
                got.extend(pairs.into_iter().map(|p| p.key));
                match next {
                    Some(n) => {
                        assert!(n > start, "seed {seed} round {round}: no progress");
                        start = n;
                    }
                    None => break,
                }
            }
            let text = |ks: &[Vec<u8>]| {
                ks.iter()
                    .map(|k| String::from_utf8_lossy(k).into_owned())
                    .collect::<Vec<_>>()
            };
            let want: Vec<Vec<u8>> = owned
                .iter()
                .flatten()
                .cloned()
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            assert_eq!(
                text(&got),
                text(&want),
                "seed {seed} round {round}: shards {shards}, limit {limit}"
            );
        }
    }

    #[test]
    fn sessions_are_validated() {
        let h = |id: Vec<u8>, seq| {
            Some(RequestHeader {
                client_id: id,
                sequence: seq,
                ..Default::default()
            })
        };
        assert!(session_of(&None).unwrap().is_none());
        assert!(session_of(&h(vec![], 0)).unwrap().is_none());
        assert!(session_of(&h(vec![], 3)).is_err());
        assert!(session_of(&h(vec![1; 15], 1)).is_err());
        assert!(session_of(&h(vec![1; 16], 0)).is_err());
        let mut ahead = h(vec![1; 16], 5);
        ahead.as_mut().unwrap().first_incomplete_sequence = 6;
        assert!(session_of(&ahead).is_err());
        assert_eq!(session_of(&h(vec![1; 16], 7)).unwrap().unwrap().sequence, 7);
    }
}
