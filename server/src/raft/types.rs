//! The openraft type configuration shared by every shard group, and the
//! commands replicated through the log.
//!
//! Owns the shape of a log entry's payload. Does not execute commands: the
//! state machine (`storage::state_machine`) does.

use serde::Deserialize;
use serde::Serialize;

use crate::ring::ClusterLayout;

openraft::declare_raft_types!(
    /// Type configuration of every ringkv Raft group.
    pub TypeConfig:
        D = RaftRequest,
        R = RaftResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;

/// Exactly-once identity of a write: a client's 128-bit id and sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionId {
    pub client_id: [u8; 16],
    pub sequence: u64,
    /// Lowest sequence of this client still awaiting its reply (0 = this
    /// one): the shard may forget results of older sequences.
    pub first_incomplete: u64,
}

/// One log entry's application payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftRequest {
    pub command: Command,
    pub session: Option<SessionId>,
    /// Wall-clock milliseconds assigned by the proposing leader; identical on
    /// every replica because it travels in the log. Drives session expiry.
    pub timestamp_ms: u64,
}

/// A state change of a shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    CompareAndSwap {
        key: Vec<u8>,
        /// `None` = expect the key to be absent.
        expected: Option<Vec<u8>>,
        /// `None` = delete on success.
        new_value: Option<Vec<u8>>,
    },
    BatchPut {
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// Metadata group only: install the bootstrap layout if none exists.
    InitCluster(ClusterLayout),
    /// Data shards: split off the tokens `>= at` of the shard's single range
    /// into the new shard `new_shard`, which starts with that part of the
    /// data, the key index and a copy of the session table, and the
    /// shard's membership. Applied at the same log index on every replica.
    Split {
        at: u64,
        new_shard: u64,
    },
    /// Metadata group only: replace the layout if its epoch is still
    /// `expected_epoch` (compare-and-swap); `layout.epoch` must be the next.
    UpdateLayout {
        expected_epoch: u64,
        layout: ClusterLayout,
    },
    /// Data shards: puts of several callers that a shard leader proposed as
    /// one entry (`node::proposals`), each applied in order as if it were an
    /// entry of its own, with its own session. Only `Put` and `BatchPut`
    /// parts are valid; the response is [`RaftResponse::Multi`], one per
    /// part. Added after the first release: appended last, so that older
    /// entries keep their encoding.
    Multi {
        parts: Vec<Part>,
    },
}

/// One caller's request inside a [`Command::Multi`] entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub command: Command,
    pub session: Option<SessionId>,
}

/// The result of applying a [`RaftRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RaftResponse {
    /// Blank and membership entries, and commands without a result.
    #[default]
    Done,
    Deleted {
        existed: bool,
    },
    Swapped {
        succeeded: bool,
        previous: Option<Vec<u8>>,
    },
    /// The session's sequence is older than the last one applied.
    StaleSequence {
        last_sequence: u64,
    },
    /// The command was invalid for this group (for example a data command
    /// sent to the metadata group). Deterministic on every replica.
    Rejected {
        reason: String,
    },
    /// Metadata group: whether an `UpdateLayout` was applied, and the epoch
    /// of the layout in force after it.
    Layout {
        applied: bool,
        epoch: u64,
    },
    /// A [`Command::Multi`]'s responses, one per part, in order.
    Multi {
        responses: Vec<RaftResponse>,
    },
}

/// Encodes a value with the project's fixed binary encoding (bincode 1,
/// little endian, fixed-width integers).
pub fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    // Serialization of our own in-memory types into a Vec cannot fail:
    // bincode only errors on writer failures and unsupported types.
    bincode::serialize(v).expect("bincode serialization of in-memory value")
}

/// Decodes bytes produced by [`encode`]; errors on malformed input.
pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, bincode::Error> {
    bincode::deserialize(bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use openraft::raft::AppendEntriesRequest;
    use openraft::raft::AppendEntriesResponse;
    use openraft::raft::InstallSnapshotRequest;
    use openraft::raft::VoteRequest;
    use openraft::raft::VoteResponse;
    use openraft::BasicNode;
    use openraft::EntryPayload;
    use openraft::Membership;

    use super::*;

    fn round_trip<T: Serialize + for<'de> Deserialize<'de> + std::fmt::Debug + PartialEq>(v: T) {
        let back: T = decode(&encode(&v)).unwrap();
        assert_eq!(back, v);
    }

    // bincode is not self-describing: prove every openraft type we put on the
    // wire or on disk survives it.
    #[test]
    fn openraft_types_survive_bincode() {
        let log_id = LogId::new(openraft::CommittedLeaderId::new(3, 2), 17);
        let nodes: BTreeMap<u64, BasicNode> = (1..=3).map(|i| (i, BasicNode::new(format!("127.0.0.1:{i}")))).collect();
        let membership = Membership::new(vec![BTreeSet::from([1, 2, 3])], nodes);
        let entries = vec![
            Entry {
                log_id,
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id,
                payload: EntryPayload::Membership(membership.clone()),
            },
            Entry {
                log_id,
                payload: EntryPayload::Normal(RaftRequest {
                    command: Command::Put {
                        key: b"k".to_vec(),
                        value: vec![0, 1, 2, 255],
                    },
                    session: Some(SessionId {
                        client_id: [7; 16],
                        sequence: 9,
                        first_incomplete: 4,
                    }),
                    timestamp_ms: 123,
                }),
            },
        ];
        for e in &entries {
            let back: Entry = decode(&encode(e)).unwrap();
            assert_eq!(format!("{back:?}"), format!("{e:?}"));
        }
        let vote = Vote::new_committed(3, 2);
        round_trip(vote);
        round_trip(Some(log_id));
        round_trip(StoredMembership::new(Some(log_id), membership.clone()));
        let ae = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: Some(log_id),
            entries: entries.clone(),
            leader_commit: None,
        };
        let back: AppendEntriesRequest<TypeConfig> = decode(&encode(&ae)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{ae:?}"));
        for r in [
            AppendEntriesResponse::<u64>::Success,
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(vote),
            AppendEntriesResponse::PartialSuccess(Some(log_id)),
        ] {
            round_trip(r);
        }
        round_trip(VoteRequest::new(vote, Some(log_id)));
        round_trip(VoteResponse::new(vote, Some(log_id), true));
        let meta = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: StoredMembership::new(Some(log_id), membership),
            snapshot_id: "s-1".into(),
        };
        round_trip(meta.clone());
        let is = InstallSnapshotRequest::<TypeConfig> {
            vote,
            meta,
            offset: 5,
            data: vec![],
            done: true,
        };
        let back: InstallSnapshotRequest<TypeConfig> = decode(&encode(&is)).unwrap();
        assert_eq!(format!("{back:?}"), format!("{is:?}"));
    }

    #[test]
    fn garbage_does_not_decode_or_panic() {
        for junk in [&b""[..], &b"\xff\xff\xff\xff\xff\xff\xff\xff\xff"[..], &[1u8; 3][..]] {
            assert!(decode::<Entry>(junk).is_err());
        }
    }
}
