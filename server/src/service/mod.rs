//! The node's one gRPC port: `ringkv.v1.Kv`, `ringkv.v1.Admin`,
//! `ringkv.v1.RaftTransport`, server reflection (v1 and v1alpha) and
//! `grpc.health.v1.Health`.
//!
//! Owns the tonic server and the health status. Each service lives in its
//! own module and only translates between gRPC and the node.

pub mod admin;
pub mod kv;
pub mod rate_limit;
pub mod status;
pub mod transport;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ringkv_proto::v1::admin_server::AdminServer;
use ringkv_proto::v1::kv_server::KvServer;
use ringkv_proto::v1::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::node::Node;
use crate::raft::network::TRANSPORT_GRPC_BYTES_MAX;

/// How often the health status is recomputed.
const HEALTH_REFRESH_MS: u64 = 500;

/// Token ranges as the API spells them.
pub(crate) fn proto_ranges(rs: &[crate::ring::TokenRange]) -> Vec<ringkv_proto::v1::TokenRange> {
    rs.iter()
        .map(|r| ringkv_proto::v1::TokenRange {
            start: r.start,
            end: r.end.unwrap_or(0),
            end_is_max: r.end.is_none(),
        })
        .collect()
}

/// Token ranges from the API (the inverse of [`proto_ranges`]).
pub(crate) fn ring_ranges(rs: &[ringkv_proto::v1::TokenRange]) -> Vec<crate::ring::TokenRange> {
    rs.iter()
        .map(|r| crate::ring::TokenRange {
            start: r.start,
            end: (!r.end_is_max).then_some(r.end),
        })
        .collect()
}

/// gRPC service name reported by the health service for the Kv API.
pub const KV_SERVICE_NAME: &str = "ringkv.v1.Kv";

/// Serves every gRPC service of `node` on `listener` until `shutdown`.
pub async fn serve(
    node: Arc<Node>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let grpc_max = node.cfg.grpc_message_bytes_max();
    let kv = KvServer::new(kv::KvService::new(node.clone()))
        .max_decoding_message_size(grpc_max)
        .max_encoding_message_size(grpc_max);
    let token = node.admin_token.clone();
    let epoch = node.epoch();
    let admin = AdminServer::with_interceptor(admin::AdminService { node: node.clone() }, move |req| {
        admin::authorize(token.as_deref(), epoch, req)
    });
    let transport = RaftTransportServer::new(transport::TransportService { node: node.clone() })
        .max_decoding_message_size(TRANSPORT_GRPC_BYTES_MAX)
        .max_encoding_message_size(TRANSPORT_GRPC_BYTES_MAX);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringkv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| {
            tracing::error!(error = %e, "reflection v1");
            e
        });
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(ringkv_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha();
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(node.clone(), reporter));
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)));
    match &node.tls {
        Some(tls) => {
            builder = builder.tls_config(tls.server.clone())?;
            let mtls = node.cfg.tls.require_client_cert;
            tracing::info!(mutual_tls = mtls, "serving gRPC over TLS");
        }
        None => tracing::warn!("serving plaintext gRPC (no TLS): fine on loopback, not across a network"),
    }
    if node.admin_token.is_none() && !node.cfg.tls.require_client_cert {
        tracing::warn!("ringkv.v1.Admin is open to anyone who reaches this port (no admin token, no mutual TLS)");
    }
    let mut router = builder
        .add_service(kv)
        .add_service(admin)
        .add_service(transport)
        .add_service(health);
    if let Ok(r) = reflection_v1 {
        router = router.add_service(r);
    }
    if let Ok(r) = reflection_v1alpha {
        router = router.add_service(r);
    }
    // The builder's `tcp_nodelay` only reaches listeners tonic binds itself:
    // an accepted stream of our own listener needs it set here, or Nagle
    // holds small responses and Raft messages back behind unacknowledged
    // data (up to a delayed-ACK timeout of 40 ms on Linux).
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    router.serve_with_incoming_shutdown(incoming, shutdown).await
}

/// Keeps `ringkv.v1.Kv` SERVING while every hosted shard has a leader.
async fn report_health(node: Arc<Node>, reporter: tonic_health::server::HealthReporter) {
    loop {
        let all_led = node
            .shard_list()
            .iter()
            .all(|s| s.raft.metrics().borrow().current_leader.is_some());
        let status = if all_led {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status(KV_SERVICE_NAME, status).await;
        reporter.set_service_status("", status).await;
        tokio::time::sleep(Duration::from_millis(HEALTH_REFRESH_MS)).await;
    }
}
