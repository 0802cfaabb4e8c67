//! Proposal coalescing on a shard leader: concurrent puts (`Put` and
//! `BatchPut`) to one shard are proposed together as one Raft entry: a
//! `Multi` entry of one part per caller, each part applied on its own (with
//! its own exactly-once session, if it has one), so merging never changes
//! a caller's outcome. With `sessions.merge_puts` off (a rolling upgrade
//! from a release that cannot read `Multi`) only puts without a session
//! are merged, into one atomic `BatchPut`.
//!
//! Why: openraft 0.9 appends, syncs and replicates every `client_write` on
//! its own, and its core waits for each append's WAL sync before it takes
//! the next, so N concurrent writes to a shard cost N leader syncs in a
//! row. Merged, the writes that queued while one entry was in flight share
//! the next entry. One smart client already sends one coalesced batch per
//! shard at a time; this merges the batches of many clients, and the single
//! puts of everyone else.
//!
//! Owns the queues and the decision of what leaves together ([`Queues`], no
//! I/O), and the task that proposes a shard's batches ([`drain`]). Does not
//! map results to errors: each caller does that with its own part's
//! response, as for an entry of its own.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use openraft::raft::ClientWriteResponse;
use tokio::sync::oneshot;

use crate::raft::types::Command;
use crate::raft::types::NodeId;
use crate::raft::types::Part;
use crate::raft::types::Raft;
use crate::raft::types::RaftRequest;
use crate::raft::types::RaftResponse;
use crate::raft::types::SessionId;
use crate::raft::types::TypeConfig;

/// Most puts waiting in all queues of a node together; a put arriving at a
/// full queue is proposed on its own.
pub const QUEUED_PUTS_MAX: usize = 16 * 1024;

/// Batches of one shard in flight at once. One: the shard's next batch
/// holds everything that queued while the previous entry was committed.
pub const BATCHES_IN_FLIGHT_PER_SHARD: usize = 1;

/// What `client_write` returned for an entry.
pub type WriteResult =
    Result<ClientWriteResponse<TypeConfig>, RaftError<NodeId, ClientWriteError<NodeId, openraft::BasicNode>>>;

/// A merged entry's outcome as each of its callers gets it; `None` when its
/// deadline (the latest of its callers') passed first: outcome unknown.
pub type Outcome = Option<WriteResult>;

/// Key-value pairs of puts.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// Bounds of one merged entry: the node's request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub keys_max: usize,
    pub bytes_max: usize,
}

/// One waiting put or batch of puts: one caller's request.
#[derive(Debug)]
pub struct Pending<T> {
    pub pairs: Pairs,
    /// The caller's exactly-once identity, if it sent one.
    pub session: Option<SessionId>,
    pub deadline: Instant,
    pub reply: T,
}

impl<T> Pending<T> {
    /// Its keys' and values' bytes, what the entry's byte bound counts.
    fn bytes(&self) -> usize {
        self.pairs.iter().map(|(k, v)| k.len() + v.len()).sum()
    }
}

#[derive(Debug)]
struct ShardQueue<T> {
    waiting: VecDeque<Pending<T>>,
    in_flight: usize,
}

/// The waiting puts of every shard.
#[derive(Debug)]
pub struct Queues<T> {
    limits: Limits,
    shards: HashMap<u64, ShardQueue<T>>,
    queued: usize,
    /// Entries proposed for more than one request, and those requests.
    merged_entries: u64,
    merged_requests: u64,
    /// Parts of merged entries the state machine refused (a split moved
    /// their keys away before the entry applied).
    merged_parts_refused: u64,
}

impl<T> Queues<T> {
    pub fn new(limits: Limits) -> Self {
        assert!(limits.keys_max >= 1 && limits.bytes_max >= 1);
        Self {
            limits,
            shards: HashMap::new(),
            queued: 0,
            merged_entries: 0,
            merged_requests: 0,
            merged_parts_refused: 0,
        }
    }

    /// Entries that carried more than one request so far, how many
    /// requests those carried, and how many of their parts were refused
    /// (see [`refused_parts`]).
    pub fn merged(&self) -> (u64, u64, u64) {
        (self.merged_entries, self.merged_requests, self.merged_parts_refused)
    }

    /// Queues `p` under `shard`. `Ok(true)`: the shard has a free slot and
    /// the caller must start a [`drain`] task for it. `Err`: every queue
    /// together is full; the put is handed back to be proposed alone.
    pub fn push(&mut self, shard: u64, p: Pending<T>) -> Result<bool, Pending<T>> {
        if self.queued >= QUEUED_PUTS_MAX {
            return Err(p);
        }
        let q = self.shards.entry(shard).or_insert_with(|| ShardQueue {
            waiting: VecDeque::new(),
            in_flight: 0,
        });
        q.waiting.push_back(p);
        self.queued += 1;
        if q.in_flight < BATCHES_IN_FLIGHT_PER_SHARD {
            q.in_flight += 1;
            return Ok(true);
        }
        Ok(false)
    }

    /// The next batch of a drain task of `shard`, which just finished its
    /// previous batch (or starts): everything waiting, up to the limits (a
    /// single put above them still goes, alone). `None` when nothing waits:
    /// the task ends and frees its slot.
    pub fn next_batch(&mut self, shard: u64) -> Option<Vec<Pending<T>>> {
        let q = self.shards.get_mut(&shard)?;
        assert!(q.in_flight >= 1, "a drain task of shard {shard} without a slot");
        if q.waiting.is_empty() {
            q.in_flight -= 1;
            if q.in_flight == 0 {
                self.shards.remove(&shard);
            }
            return None;
        }
        let (mut keys, mut bytes) = (0usize, 0usize);
        let mut batch = Vec::new();
        while let Some(next) = q.waiting.front() {
            let fits = keys + next.pairs.len() <= self.limits.keys_max && bytes + next.bytes() <= self.limits.bytes_max;
            if !batch.is_empty() && !fits {
                break;
            }
            keys += next.pairs.len();
            bytes += next.bytes();
            batch.extend(q.waiting.pop_front());
        }
        self.queued -= batch.len();
        assert!(!batch.is_empty());
        if batch.len() > 1 {
            self.merged_entries += 1;
            self.merged_requests += batch.len() as u64;
        }
        Some(batch)
    }
}

/// The queues of a node, shared by its write path and its drain tasks.
pub type SharedQueues = Arc<Mutex<Queues<oneshot::Sender<Outcome>>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Proposes `shard`'s batches until its queue is empty, each as one entry
/// ([`entry_of`]), and sends every caller its outcome. Runs as its own
/// task, so a caller that gives up does not stop the proposals of the
/// others.
/// `multi`: the cluster reads `Multi` entries (`sessions.merge_puts`), see
/// [`entry_of`].
pub async fn drain(queues: SharedQueues, raft: Raft, shard: u64, now_ms: fn() -> u64, multi: bool) {
    loop {
        // The guard must not live across the awaits below.
        let next = lock(&queues).next_batch(shard);
        let Some(batch) = next else { return };
        let deadline = batch.iter().map(|p| p.deadline).max().unwrap_or_else(Instant::now);
        let (command, session, replies) = entry_of(batch, multi);
        let req = RaftRequest {
            command,
            session,
            timestamp_ms: now_ms(),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        let outcome = tokio::time::timeout(left, raft.client_write(req)).await.ok();
        let refused = refused_parts(&outcome);
        if refused > 0 {
            lock(&queues).merged_parts_refused += refused;
        }
        let n = replies.len();
        for (i, reply) in replies.into_iter().enumerate() {
            // A caller that gave up already answered DEADLINE_EXCEEDED.
            let _ = reply.send(part_of(&outcome, i, n));
        }
    }
}

/// The entry a batch becomes (its command and session), and its callers'
/// replies in the same order: a lone request as itself; else a `Multi` of
/// one part per caller, each with its own session or none. A part whose
/// keys the shard no longer owns (a split raced it) is refused alone, so
/// the other callers in the entry are not failed with it.
///
/// Without `multi` (`sessions.merge_puts` off: some node may not read
/// `Multi`) only puts without a session get here ([`Queues`] is fed by
/// the node's `mergeable`), and they become one `BatchPut`, atomic as a
/// whole: one foreign key refuses every caller in it.
pub fn entry_of<T>(mut batch: Vec<Pending<T>>, multi: bool) -> (Command, Option<SessionId>, Vec<T>) {
    assert!(!batch.is_empty());
    let mut replies = Vec::with_capacity(batch.len());
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            replies.push(p.reply);
            return (command_of(p.pairs), p.session, replies);
        }
    }
    if !multi {
        assert!(
            batch.iter().all(|p| p.session.is_none()),
            "puts with a session are merged only into Multi entries"
        );
        let mut pairs = Vec::new();
        for p in batch {
            pairs.extend(p.pairs);
            replies.push(p.reply);
        }
        return (command_of(pairs), None, replies);
    }
    let mut parts = Vec::with_capacity(batch.len());
    for p in batch {
        parts.push(Part {
            command: command_of(p.pairs),
            session: p.session,
        });
        replies.push(p.reply);
    }
    (Command::Multi { parts }, None, replies)
}

/// How many parts of a merged entry the state machine refused: the callers
/// whose keys a split moved away while the entry was in flight (each gets
/// `WRONG_SHARD` and retries; the other parts applied).
pub fn refused_parts(o: &Outcome) -> u64 {
    match o {
        Some(Ok(w)) => match &w.data {
            RaftResponse::Multi { responses } => responses
                .iter()
                .filter(|r| matches!(r, RaftResponse::Rejected { .. }))
                .count() as u64,
            _ => 0,
        },
        _ => 0,
    }
}

/// One pair as a `Put`, several as a `BatchPut`.
pub fn command_of(pairs: Pairs) -> Command {
    match <[(Vec<u8>, Vec<u8>); 1]>::try_from(pairs) {
        Ok([(key, value)]) => Command::Put { key, value },
        Err(pairs) => Command::BatchPut { pairs },
    }
}

/// Caller `i`'s outcome of an entry proposed for `n` callers: the entry's,
/// with its own part's response as the data when it is a `Multi` (any
/// other entry's response is every caller's).
fn part_of(o: &Outcome, i: usize, n: usize) -> Outcome {
    o.as_ref().map(|r| match r {
        Ok(w) => {
            let data = match &w.data {
                RaftResponse::Multi { responses } => {
                    assert_eq!(responses.len(), n, "one response per part of a merged entry");
                    responses[i].clone()
                }
                // One command for all (a `BatchPut`), or a `Multi` refused
                // whole: every caller has that answer.
                other => other.clone(),
            };
            Ok(ClientWriteResponse {
                log_id: w.log_id,
                data,
                membership: w.membership.clone(),
            })
        }
        Err(e) => Err(e.clone()),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn put(n: u8, bytes: usize) -> Pending<u8> {
        Pending {
            pairs: vec![(vec![n], vec![0; bytes])],
            session: None,
            deadline: Instant::now() + Duration::from_secs(1),
            reply: n,
        }
    }

    #[test]
    fn the_first_put_of_an_idle_shard_starts_a_drain_and_the_rest_wait_for_it() {
        let mut q = Queues::new(Limits {
            keys_max: 3,
            bytes_max: 1000,
        });
        assert!(q.push(7, put(1, 10)).unwrap(), "idle shard: start a drain");
        assert!(!q.push(7, put(2, 10)).unwrap(), "a drain runs");
        assert!(q.push(8, put(9, 10)).unwrap(), "another shard is independent");
        for n in 3..=5 {
            assert!(!q.push(7, put(n, 10)).unwrap());
        }
        // The drain takes what waits, up to the key limit, in order.
        let ids = |b: Vec<Pending<u8>>| b.into_iter().map(|p| p.reply).collect::<Vec<_>>();
        assert_eq!(ids(q.next_batch(7).unwrap()), vec![1, 2, 3]);
        assert_eq!(ids(q.next_batch(7).unwrap()), vec![4, 5]);
        assert!(q.next_batch(7).is_none(), "empty: the drain ends");
        assert_eq!(q.merged(), (2, 5, 0));
        assert!(q.push(7, put(6, 10)).unwrap(), "and the next put starts a new one");
        assert_eq!(q.queued, 2);
    }

    #[test]
    fn a_batch_stops_at_the_byte_limit_but_a_big_put_still_goes_alone() {
        let mut q = Queues::new(Limits {
            keys_max: 100,
            bytes_max: 100,
        });
        assert!(q.push(1, put(1, 200)).unwrap());
        q.push(1, put(2, 40)).unwrap();
        q.push(1, put(3, 40)).unwrap();
        q.push(1, put(4, 40)).unwrap();
        let sizes = |b: Vec<Pending<u8>>| b.into_iter().map(|p| p.reply).collect::<Vec<_>>();
        assert_eq!(sizes(q.next_batch(1).unwrap()), vec![1]);
        assert_eq!(sizes(q.next_batch(1).unwrap()), vec![2, 3]);
        assert_eq!(sizes(q.next_batch(1).unwrap()), vec![4]);
        assert!(q.next_batch(1).is_none());
        assert!(q.shards.is_empty() && q.queued == 0);
    }

    fn session(id: u8) -> Option<SessionId> {
        Some(SessionId {
            client_id: [id; 16],
            sequence: 1,
            first_incomplete: 0,
        })
    }

    #[test]
    fn a_batch_becomes_one_entry_shaped_by_its_sessions() {
        let with = |n: u8, s: Option<SessionId>| Pending {
            session: s,
            ..put(n, 1)
        };
        // Alone: the request itself, with its session.
        for multi in [true, false] {
            let (cmd, s, replies) = entry_of(vec![with(1, session(7))], multi);
            assert!(matches!(cmd, Command::Put { .. }));
            assert_eq!((s, replies), (session(7), vec![1]));
        }
        // Several: one part per caller, each with its own session or none,
        // so that one caller's refused part does not refuse the others.
        let (cmd, s, replies) = entry_of(vec![with(1, session(7)), put(2, 1), with(3, session(8))], true);
        let Command::Multi { parts } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(
            parts.iter().map(|p| p.session).collect::<Vec<_>>(),
            vec![session(7), None, session(8)]
        );
        assert_eq!((s, replies), (None, vec![1, 2, 3]));
        let (cmd, _, replies) = entry_of(vec![put(1, 1), put(2, 1)], true);
        let Command::Multi { parts } = cmd else {
            panic!("{cmd:?}")
        };
        assert!(parts
            .iter()
            .all(|p| p.session.is_none() && matches!(p.command, Command::Put { .. })));
        assert_eq!(replies, vec![1, 2]);
        // Multi entries off: puts without a session become one BatchPut of
        // every pair, in order.
        let (cmd, s, replies) = entry_of(vec![put(1, 1), put(2, 1)], false);
        let Command::BatchPut { pairs } = cmd else {
            panic!("{cmd:?}")
        };
        assert_eq!(pairs.iter().map(|(k, _)| k[0]).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!((s, replies), (None, vec![1, 2]));
    }

    #[test]
    #[should_panic(expected = "only into Multi entries")]
    fn a_session_without_multi_entries_is_a_bug() {
        let sessioned = Pending {
            session: session(7),
            ..put(1, 1)
        };
        entry_of(vec![sessioned, put(2, 1)], false);
    }

    #[test]
    fn refused_parts_counts_only_the_refused_parts_of_a_merged_entry() {
        let written = |data| {
            Some(Ok(ClientWriteResponse {
                log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), 5),
                data,
                membership: None,
            }))
        };
        let refused = || RaftResponse::Rejected { reason: "moved".into() };
        let multi = RaftResponse::Multi {
            responses: vec![refused(), RaftResponse::Done, refused()],
        };
        assert_eq!(refused_parts(&written(multi)), 2);
        // A whole entry refused is not a merged entry's part.
        assert_eq!(refused_parts(&written(refused())), 0);
        assert_eq!(refused_parts(&written(RaftResponse::Done)), 0);
        assert_eq!(refused_parts(&None), 0, "outcome unknown");
    }

    #[test]
    fn a_full_node_hands_the_put_back() {
        let mut q = Queues::new(Limits {
            keys_max: 1,
            bytes_max: 1,
        });
        for i in 0..QUEUED_PUTS_MAX {
            q.push((i % 4) as u64, put(0, 0)).unwrap();
        }
        assert!(q.push(1, put(1, 0)).is_err());
        q.next_batch(1).unwrap();
        assert!(q.push(1, put(1, 0)).is_ok(), "room again");
    }
}
