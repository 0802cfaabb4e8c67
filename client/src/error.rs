//! The one error type of the client and its stable [`ErrorKind`].
//!
//! Every failure an application sees is an [`Error`]. Its [`Error::kind`] is
//! stable and meant for `match`; the message is for humans. The most important
//! distinction is between a **definite** failure (the operation did not take
//! effect) and an **indeterminate** one ([`ErrorKind::Indeterminate`]: a write
//! that may or may not have been applied, because its reply never arrived).
//! A key that is absent is not an error: [`crate::Client::get`] returns
//! `Ok(None)`.

use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::ErrorDetail;

/// The stable category of an [`Error`]; match on this rather than on
/// messages.
///
/// ```
/// use ringkv_client::{Error, ErrorKind};
/// fn should_alert(e: &Error) -> bool {
///     matches!(e.kind(), ErrorKind::Server | ErrorKind::Unauthenticated)
/// }
/// assert!(!should_alert(&Error::DeadlineExceeded { message: "slow".into() }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request is malformed or exceeds a server limit. Never retried.
    InvalidArgument,
    /// The key's shard had no reachable leader within the retry budget; the
    /// operation did not take effect.
    Unavailable,
    /// The caller's deadline passed; the operation did not take effect (a
    /// read, or a write that was never sent).
    DeadlineExceeded,
    /// A write whose outcome is unknown: it was sent but no answer came
    /// back (timeout, connection lost, deadline passed during a retry). It
    /// may or may not have been applied, at most once.
    Indeterminate,
    /// The server had already forgotten this write's sequence (its session
    /// window moved past it), so its outcome cannot be learned. Treat like
    /// [`ErrorKind::Indeterminate`].
    StaleSequence,
    /// Nodes kept answering OVERLOADED within the retry budget.
    Overloaded,
    /// No node could be reached at all (every endpoint refused or timed out).
    Transport,
    /// The server reported a storage failure or an internal error.
    Server,
    /// The Admin API refused the credentials.
    Unauthenticated,
    /// The client itself was misconfigured (for example a malformed endpoint).
    Config,
    /// Data received failed its integrity check (a chunk whose crc32 does
    /// not match, a stream that ended early or out of order).
    Integrity,
}

/// A failed client operation. See [`ErrorKind`] for what each variant means
/// and whether the operation may have taken effect.
///
/// ```
/// use ringkv_client::{Error, ErrorKind};
/// let e = Error::Indeterminate { message: "reply lost".into() };
/// assert_eq!(e.kind(), ErrorKind::Indeterminate);
/// assert!(e.is_indeterminate());
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The request is malformed or over a limit; `limit_name` names the
    /// server limit (`value_bytes_max`, `key_bytes_max`, ...) when one was
    /// exceeded.
    #[error("invalid argument: {message}")]
    InvalidArgument {
        /// The server limit that was exceeded, if any.
        limit_name: Option<String>,
        /// The limit's value (0 when no limit is named).
        limit_value: u64,
        /// The value the request had (0 when no limit is named).
        actual_value: u64,
        /// What was wrong.
        message: String,
    },
    /// The key's shard was unavailable for every attempt.
    #[error("shard {shard_id} unavailable after {attempts} attempts: {message}")]
    Unavailable {
        /// The shard (0 when the request spans shards or none was known).
        shard_id: u64,
        /// Attempts made.
        attempts: u32,
        /// The last failure seen.
        message: String,
    },
    /// The deadline passed before the operation could take effect.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded {
        /// The last failure seen.
        message: String,
    },
    /// A write whose outcome is unknown (see [`ErrorKind::Indeterminate`]).
    #[error("outcome unknown (the write may or may not have been applied): {message}")]
    Indeterminate {
        /// The last failure seen.
        message: String,
    },
    /// The server forgot this write's sequence; its outcome is unknown.
    #[error("stale sequence: the shard already moved past this write (last sequence {last_sequence})")]
    StaleSequence {
        /// The last sequence the shard applied for this client.
        last_sequence: u64,
    },
    /// Every attempt was refused as OVERLOADED.
    #[error("overloaded after {attempts} attempts: {message}")]
    Overloaded {
        /// Attempts made.
        attempts: u32,
        /// The last refusal.
        message: String,
    },
    /// No node could be reached.
    #[error("no node reachable: {message}")]
    Transport {
        /// The last failure seen.
        message: String,
    },
    /// The server reported a storage or internal error.
    #[error("server error ({code}): {message}")]
    Server {
        /// The `ringkv.v1.ErrorCode` name (`STORAGE`, `INTERNAL`, ...).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The Admin API needs a bearer token it did not get.
    #[error("unauthenticated: {message}")]
    Unauthenticated {
        /// The server's message.
        message: String,
    },
    /// The client configuration is invalid.
    #[error("invalid client configuration: {0}")]
    Config(String),
    /// Received data failed its integrity check (see [`ErrorKind::Integrity`]).
    #[error("integrity check failed: {message}")]
    Integrity {
        /// What did not match.
        message: String,
    },
}

impl Error {
    /// The stable category of this error.
    ///
    /// ```
    /// use ringkv_client::{Error, ErrorKind};
    /// assert_eq!(Error::Config("no endpoints".into()).kind(), ErrorKind::Config);
    /// ```
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidArgument { .. } => ErrorKind::InvalidArgument,
            Error::Unavailable { .. } => ErrorKind::Unavailable,
            Error::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            Error::Indeterminate { .. } => ErrorKind::Indeterminate,
            Error::StaleSequence { .. } => ErrorKind::StaleSequence,
            Error::Overloaded { .. } => ErrorKind::Overloaded,
            Error::Transport { .. } => ErrorKind::Transport,
            Error::Server { .. } => ErrorKind::Server,
            Error::Unauthenticated { .. } => ErrorKind::Unauthenticated,
            Error::Config(_) => ErrorKind::Config,
            Error::Integrity { .. } => ErrorKind::Integrity,
        }
    }

    /// True when the operation may have taken effect without the client
    /// learning it: [`ErrorKind::Indeterminate`] and
    /// [`ErrorKind::StaleSequence`]. Every other error is definite: the
    /// operation was not applied.
    ///
    /// ```
    /// use ringkv_client::Error;
    /// assert!(!Error::DeadlineExceeded { message: "read".into() }.is_indeterminate());
    /// ```
    pub fn is_indeterminate(&self) -> bool {
        matches!(self, Error::Indeterminate { .. } | Error::StaleSequence { .. })
    }
}

/// How one attempt failed, as the retry loop sees it.
#[derive(Debug, Clone)]
pub(crate) enum AttemptError {
    /// A typed answer from a node.
    Server { code: ErrorCode, detail: Box<ErrorDetail> },
    /// The connection could not be made: the request was never sent.
    Connect(String),
    /// The request may have been sent but no answer came (connection lost,
    /// attempt timeout, untyped status).
    Lost(String),
    /// The gRPC call failed with a status that carries no ringkv detail
    /// and is not a transport failure.
    Untyped { code: tonic::Code, message: String },
    /// Part of a batch that spans shards was applied and this error stopped
    /// the rest: the write as a whole may have been applied.
    PartlyApplied(Box<AttemptError>),
}

impl AttemptError {
    /// Classifies a failed call's status.
    pub(crate) fn from_status(status: &tonic::Status) -> Self {
        if let Some(detail) = ringkv_proto::decode_error_detail(status.details()) {
            let code = ErrorCode::try_from(detail.code).unwrap_or(ErrorCode::Internal);
            return AttemptError::Server {
                code,
                detail: Box::new(detail),
            };
        }
        if never_sent(status) {
            return AttemptError::Connect(status.message().to_string());
        }
        match status.code() {
            tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded => AttemptError::Lost(format!("{:?}: {}", status.code(), status.message())),
            code => AttemptError::Untyped {
                code,
                message: status.message().to_string(),
            },
        }
    }

    /// Whether the node itself looks unhealthy (counts against its circuit
    /// breaker).
    pub(crate) fn is_node_failure(&self) -> bool {
        matches!(self, AttemptError::Connect(_) | AttemptError::Lost(_))
    }

    /// Whether a write attempt that failed this way may have been applied.
    pub(crate) fn maybe_applied(&self) -> bool {
        match self {
            AttemptError::Connect(_) => false,
            AttemptError::Lost(_) => true,
            AttemptError::Untyped { .. } => true,
            AttemptError::PartlyApplied(_) => true,
            AttemptError::Server { code, .. } => !matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::WrongShard
                    | ErrorCode::InvalidArgument
                    | ErrorCode::Overloaded
                    | ErrorCode::Unauthenticated
                    | ErrorCode::UnknownShard
            ),
        }
    }

    pub(crate) fn message(&self) -> String {
        match self {
            AttemptError::Server { code, detail } => format!("{}: {}", code.as_str_name(), detail.message),
            AttemptError::Connect(m) => format!("connect failed: {m}"),
            AttemptError::Lost(m) => format!("no answer: {m}"),
            AttemptError::Untyped { code, message } => format!("{code:?}: {message}"),
            AttemptError::PartlyApplied(e) => format!("part of the batch applied, then {}", e.message()),
        }
    }
}

/// True when the status says the connection could not be established, so
/// the request never left the client.
fn never_sent(status: &tonic::Status) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = src {
        if e.downcast_ref::<tonic::ConnectError>().is_some() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        src = e.source();
    }
    false
}

/// The error for a typed server answer that ends the operation at once.
pub(crate) fn terminal(code: ErrorCode, detail: &ErrorDetail) -> Option<Error> {
    match code {
        ErrorCode::InvalidArgument => Some(Error::InvalidArgument {
            limit_name: (!detail.limit_name.is_empty()).then(|| detail.limit_name.clone()),
            limit_value: detail.limit_value,
            actual_value: detail.actual_value,
            message: detail.message.clone(),
        }),
        ErrorCode::StaleSequence => Some(Error::StaleSequence {
            last_sequence: detail.last_sequence,
        }),
        ErrorCode::Unauthenticated => Some(Error::Unauthenticated {
            message: detail.message.clone(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_statuses_are_decoded() {
        let detail = ErrorDetail {
            code: ErrorCode::InvalidArgument as i32,
            message: "value too large".into(),
            limit_name: "value_bytes_max".into(),
            limit_value: 10,
            actual_value: 11,
            ..Default::default()
        };
        let bytes = ringkv_proto::encode_status_details(tonic::Code::InvalidArgument as i32, &detail);
        let st = tonic::Status::with_details(tonic::Code::InvalidArgument, "x", bytes.into());
        let a = AttemptError::from_status(&st);
        let AttemptError::Server { code, detail } = &a else {
            panic!("not typed: {a:?}")
        };
        assert!(!a.maybe_applied());
        let e = terminal(*code, detail).expect("terminal");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(matches!(e, Error::InvalidArgument { limit_name: Some(ref n), .. } if n == "value_bytes_max"));
    }

    #[test]
    fn untyped_unavailable_is_maybe_applied() {
        let st = tonic::Status::unavailable("connection reset");
        let a = AttemptError::from_status(&st);
        assert!(a.maybe_applied());
        assert!(a.is_node_failure());
        let st = tonic::Status::from_error(Box::new(tonic::ConnectError("refused".into())));
        let a = AttemptError::from_status(&st);
        assert!(matches!(a, AttemptError::Connect(_)), "{a:?}");
        assert!(!a.maybe_applied());
    }
}
