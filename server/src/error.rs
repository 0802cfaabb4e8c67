//! The error type of the request path and its mapping to gRPC statuses.
//!
//! Every error that reaches a client becomes a `tonic::Status` whose details
//! carry an encoded `ringkv.v1.ErrorDetail` with a stable [`ErrorCode`], and a
//! `ringkv-error-code` trailer naming it. This module owns that mapping; it
//! does not decide when an error happens.

use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::ErrorDetail;
use ringkv_proto::ERROR_CODE_METADATA_KEY;

use crate::storage::StorageError;

/// "node N", or a neutral name for an error relayed from another node,
/// whose id the wire format does not carry (0 is never a node id).
fn node_name(node_id: u64) -> String {
    if node_id == 0 {
        "the node that answered".to_string()
    } else {
        format!("node {node_id}")
    }
}

/// An error returned to a caller of the Kv, Admin or transport API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ServerError {
    #[error("{} is not the leader of shard {shard_id} (leader hint: {leader_id:?})", node_name(*.node_id))]
    NotLeader {
        node_id: u64,
        shard_id: u64,
        leader_id: Option<u64>,
        leader_addr: Option<String>,
    },
    #[error("shard {shard_id} does not own the key at epoch {epoch}")]
    WrongShard { shard_id: u64, epoch: u64 },
    #[error("shard {shard_id} is unavailable: {reason}")]
    ShardUnavailable { shard_id: u64, reason: String },
    #[error("shard {shard_id} is not hosted on {}", node_name(*.node_id))]
    UnknownShard { shard_id: u64, node_id: u64 },
    #[error("{limit_name} is {limit_value}, request has {actual_value}: {message}")]
    LimitExceeded {
        limit_name: &'static str,
        limit_value: u64,
        actual_value: u64,
        message: String,
    },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("sequence {sequence} is older than the last applied sequence {last_sequence} of this client")]
    StaleSequence { sequence: u64, last_sequence: u64 },
    #[error("node is overloaded: {0}")]
    Overloaded(String),
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("storage error: {0}")]
    Storage(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("precondition failed: {0}")]
    Precondition(String),
}

impl ServerError {
    /// The stable code sent to clients.
    pub fn code(&self) -> ErrorCode {
        match self {
            ServerError::NotLeader { .. } => ErrorCode::NotLeader,
            ServerError::WrongShard { .. } => ErrorCode::WrongShard,
            ServerError::ShardUnavailable { .. } => ErrorCode::ShardUnavailable,
            ServerError::UnknownShard { .. } => ErrorCode::UnknownShard,
            ServerError::LimitExceeded { .. } | ServerError::InvalidArgument(_) => ErrorCode::InvalidArgument,
            ServerError::StaleSequence { .. } => ErrorCode::StaleSequence,
            ServerError::Overloaded(_) => ErrorCode::Overloaded,
            ServerError::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            ServerError::Storage(_) => ErrorCode::Storage,
            ServerError::Internal(_) => ErrorCode::Internal,
            ServerError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            ServerError::Precondition(_) => ErrorCode::PreconditionFailed,
        }
    }

    /// Shorthand for a limit violation.
    pub fn limit(limit_name: &'static str, limit_value: u64, actual_value: u64, message: impl Into<String>) -> Self {
        ServerError::LimitExceeded {
            limit_name,
            limit_value,
            actual_value,
            message: message.into(),
        }
    }

    /// Whether a client may retry the same request elsewhere or later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ServerError::NotLeader { .. }
                | ServerError::ShardUnavailable { .. }
                | ServerError::Overloaded(_)
                | ServerError::WrongShard { .. }
        )
    }

    /// The machine-readable detail for this error.
    pub fn detail(&self, epoch: u64) -> ErrorDetail {
        let mut d = ErrorDetail {
            code: self.code() as i32,
            message: self.to_string(),
            epoch,
            ..ErrorDetail::default()
        };
        match self {
            ServerError::NotLeader {
                shard_id,
                leader_id,
                leader_addr,
                ..
            } => {
                d.shard_id = *shard_id;
                d.leader_id = leader_id.unwrap_or(0);
                d.leader_addr = leader_addr.clone().unwrap_or_default();
            }
            ServerError::WrongShard { shard_id, epoch } => {
                d.shard_id = *shard_id;
                d.epoch = *epoch;
            }
            ServerError::ShardUnavailable { shard_id, .. } | ServerError::UnknownShard { shard_id, .. } => {
                d.shard_id = *shard_id;
            }
            ServerError::LimitExceeded {
                limit_name,
                limit_value,
                actual_value,
                ..
            } => {
                d.limit_name = (*limit_name).to_string();
                d.limit_value = *limit_value;
                d.actual_value = *actual_value;
            }
            ServerError::StaleSequence { last_sequence, .. } => d.last_sequence = *last_sequence,
            _ => {}
        }
        d
    }

    /// The gRPC status for this error, carrying [`Self::detail`].
    pub fn to_status(&self, epoch: u64) -> tonic::Status {
        let code = match self {
            ServerError::NotLeader { .. } | ServerError::ShardUnavailable { .. } => tonic::Code::Unavailable,
            ServerError::WrongShard { .. } | ServerError::UnknownShard { .. } => tonic::Code::FailedPrecondition,
            ServerError::LimitExceeded { .. } | ServerError::InvalidArgument(_) => tonic::Code::InvalidArgument,
            ServerError::StaleSequence { .. } => tonic::Code::FailedPrecondition,
            ServerError::Overloaded(_) => tonic::Code::ResourceExhausted,
            ServerError::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            ServerError::Storage(_) | ServerError::Internal(_) => tonic::Code::Internal,
            ServerError::Unauthenticated(_) => tonic::Code::Unauthenticated,
            ServerError::Precondition(_) => tonic::Code::FailedPrecondition,
        };
        let detail = self.detail(epoch);
        let details = ringkv_proto::encode_status_details(code as i32, &detail);
        let mut status = tonic::Status::with_details(code, detail.message.clone(), details.into());
        if let Ok(v) = self.code().as_str_name().parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA_KEY, v);
        }
        status
    }

    /// Recovers a `ServerError` from a status produced by [`Self::to_status`]
    /// on another node (used when forwarding).
    pub fn from_status(status: &tonic::Status) -> Option<(Self, ErrorDetail)> {
        let detail = ringkv_proto::decode_error_detail(status.details())?;
        let code = ErrorCode::try_from(detail.code).ok()?;
        let msg = detail.message.clone();
        let e = match code {
            ErrorCode::NotLeader => ServerError::NotLeader {
                node_id: 0,
                shard_id: detail.shard_id,
                leader_id: (detail.leader_id != 0).then_some(detail.leader_id),
                leader_addr: (!detail.leader_addr.is_empty()).then(|| detail.leader_addr.clone()),
            },
            ErrorCode::WrongShard => ServerError::WrongShard {
                shard_id: detail.shard_id,
                epoch: detail.epoch,
            },
            ErrorCode::ShardUnavailable => ServerError::ShardUnavailable {
                shard_id: detail.shard_id,
                reason: msg,
            },
            ErrorCode::UnknownShard => ServerError::UnknownShard {
                shard_id: detail.shard_id,
                node_id: 0,
            },
            ErrorCode::InvalidArgument => ServerError::InvalidArgument(msg),
            ErrorCode::StaleSequence => ServerError::StaleSequence {
                sequence: 0,
                last_sequence: detail.last_sequence,
            },
            ErrorCode::Overloaded => ServerError::Overloaded(msg),
            ErrorCode::DeadlineExceeded => ServerError::DeadlineExceeded(msg),
            ErrorCode::Storage => ServerError::Storage(msg),
            ErrorCode::Internal | ErrorCode::Unspecified => ServerError::Internal(msg),
            ErrorCode::Unauthenticated => ServerError::Unauthenticated(msg),
            ErrorCode::PreconditionFailed => ServerError::Precondition(msg),
        };
        Some((e, detail))
    }
}

impl From<crate::placement::PlacementError> for ServerError {
    fn from(e: crate::placement::PlacementError) -> Self {
        ServerError::Precondition(e.to_string())
    }
}

impl From<StorageError> for ServerError {
    fn from(e: StorageError) -> Self {
        ServerError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_code_and_detail() {
        let e = ServerError::NotLeader {
            node_id: 1,
            shard_id: 7,
            leader_id: Some(3),
            leader_addr: Some("127.0.0.1:3".into()),
        };
        let st = e.to_status(5);
        assert_eq!(st.code(), tonic::Code::Unavailable);
        assert_eq!(
            st.metadata().get(ERROR_CODE_METADATA_KEY).unwrap().to_str().unwrap(),
            "NOT_LEADER"
        );
        let (back, detail) = ServerError::from_status(&st).unwrap();
        assert_eq!(detail.leader_id, 3);
        assert_eq!(detail.epoch, 5);
        assert!(matches!(back, ServerError::NotLeader { leader_id: Some(3), .. }));
        // The relayed error does not claim to come from a "node 0".
        assert!(e.to_string().starts_with("node 1 is not the leader"), "{e}");
        assert!(back.to_string().starts_with("the node that answered is not"), "{back}");
    }

    #[test]
    fn limit_names_reach_the_detail() {
        let st = ServerError::limit("key_bytes_max", 4096, 4097, "key too long").to_status(1);
        let d = ringkv_proto::decode_error_detail(st.details()).unwrap();
        assert_eq!(d.limit_name, "key_bytes_max");
        assert_eq!(d.code, ErrorCode::InvalidArgument as i32);
        assert_eq!(d.actual_value, 4097);
    }
}
