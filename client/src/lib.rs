//! `ringkv-client`: the smart Rust client of ringkv.
//!
//! A [`Client`] learns the cluster's ring, shards, replicas and leaders from
//! any node (`Admin/ClusterStatus`) and sends every request straight to the
//! leader of the key's shard, with the shard id and ring epoch in its header.
//! It rides through leader changes, ring changes and node loss:
//!
//! - **Routing cache** (versioned by the ring epoch): refreshed on
//!   `NOT_LEADER` (whose leader hint is used at once), `WRONG_SHARD`, and
//!   unreachable nodes; concurrent misses share one refresh. Nodes learned
//!   from the ring are used even when they were not among the endpoints.
//! - **Retries**: reads retry on any transient failure; writes retry with the
//!   same client id and sequence, so the shard's session table answers a
//!   duplicate instead of applying it twice. Exponential backoff with jitter,
//!   bounded by [`Config::max_attempts`] and the call's deadline. A per-node
//!   circuit breaker keeps requests away from a node that keeps failing and
//!   probes it again after [`Config::breaker_cooldown`].
//! - **Exactly-once session**: a random 128-bit client id and a sequence
//!   taken once per logical write, with `first_incomplete_sequence` (the
//!   oldest write still awaiting its reply) so several writes may be in
//!   flight. It lives as long as the client, across reconnects.
//! - **Coalescing**: concurrent puts to one shard leave as one `BatchPut`
//!   (one Raft entry, one session sequence, retried as a unit), concurrent
//!   gets of one shard as one `BatchGet`, whenever the shard already has a
//!   batch in flight ([`Config::put_batch_keys_max`],
//!   [`Config::get_batch_keys_max`]; 1 turns it off). A lone request waits
//!   for nothing; [`ClientStats`] counts the batches.
//! - **Connections**: one HTTP/2 channel per node, connected lazily, kept
//!   alive with pings and reused by every request.
//! - **Typed errors**: [`Error`] with a stable [`ErrorKind`]; an
//!   indeterminate write ([`Error::is_indeterminate`]) is told apart from a
//!   definite failure. An absent key is `Ok(None)`, not an error.
//!
//! ```no_run
//! use futures::TryStreamExt;
//!
//! # async fn demo() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:50051"]).await?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.as_deref(), Some(&b"hello"[..]));
//! let swapped = client.compare_and_swap("greeting", Some(b"hello"), Some(b"bye")).await?;
//! assert!(swapped.succeeded);
//! client.batch_put(&[("a", "1"), ("b", "2")]).await?;
//! let values = client.batch_get(&["a", "b", "missing"]).await?;
//! assert_eq!(values[2], None);
//! let all: Vec<(Vec<u8>, Vec<u8>)> = client.scan("", "").try_collect().await?;
//! # Ok(()) }
//! ```
//!
//! The `ringkv` command-line tool (`src/bin/ringkv.rs`) is built on this
//! crate.
#![warn(missing_docs)]

pub mod backup;

mod backoff;
mod breaker;
mod client;
mod coalesce;
mod config;
mod error;
mod placement;
mod pool;
mod routing;
mod session;

pub use client::CasOutcome;
pub use client::Client;
pub use client::ClientStats;
pub use client::ExportChunk;
pub use client::ShardExport;
pub use config::CallOptions;
pub use config::Config;
pub use config::Consistency;
pub use config::TlsConfig;
pub use config::PEM_BYTES_MAX;
pub use error::Error;
pub use error::ErrorKind;
pub use routing::token_of;
pub use session::CLIENT_ID_BYTES;
pub use session::SEQUENCE_WINDOW;

/// The generated protocol types (`ringkv.v1`), for callers that use
/// [`Client::cluster_status`] answers.
pub use ringkv_proto::v1 as proto;
