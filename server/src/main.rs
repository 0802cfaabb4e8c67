//! `ringkv-server`: runs one ringkv node.
//!
//! Reads an optional TOML config (`--config`), applies command-line
//! overrides, validates, starts the node and serves gRPC until SIGINT or
//! SIGTERM.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ringkv_server::config::Config;
use ringkv_server::config::LogFormat;
use ringkv_server::node::Node;

/// Longest SIGTERM waits for in-flight requests.
const SHUTDOWN_DRAIN_MS: u64 = 5_000;
/// Longest SIGTERM waits for the Raft groups to stop.
const SHUTDOWN_RAFT_MS: u64 = 5_000;

#[derive(Debug, Parser)]
#[command(
    name = "ringkv-server",
    version,
    about = "A ringkv node: sharded, Raft-replicated key-value store"
)]
struct Args {
    /// TOML config file (see ringkv.example.toml); flags override it.
    #[arg(long, env = "RINGKV_CONFIG")]
    config: Option<PathBuf>,
    /// This node's id (non-zero, listed in --initial-cluster).
    #[arg(long)]
    node_id: Option<u64>,
    /// gRPC listen address, ip:port.
    #[arg(long)]
    listen: Option<String>,
    /// Source IP of outgoing connections to peers.
    #[arg(long)]
    peer_source_address: Option<String>,
    /// HTTP address serving /metrics (Prometheus) and /healthz.
    #[arg(long)]
    status_listen: Option<String>,
    /// Data directory (created if missing; resumed if it holds a node).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Bootstrap members: 1=host:port,2=host:port,3=host:port.
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Data shards created at bootstrap (0, the default: one per node of
    /// --initial-cluster).
    #[arg(long)]
    shards: Option<u32>,
    /// Join the running cluster that has members at these host:port
    /// addresses (IPs or DNS names; comma-separated, tried in turn; first
    /// start only) instead of bootstrapping one.
    #[arg(long)]
    join: Option<String>,
    /// Address peers and clients reach this node at (default: its
    /// --initial-cluster entry, else --listen).
    #[arg(long)]
    advertise: Option<String>,
    /// Failure-domain label (rack or zone) of this node.
    #[arg(long, env = "RINGKV_ZONE")]
    zone: Option<String>,
    /// How often the metadata leader checks nodes and drives moves.
    #[arg(long)]
    placement_tick_ms: Option<u64>,
    /// Replica moves in flight at once.
    #[arg(long)]
    moves_in_flight_max: Option<usize>,
    /// A node silent this long has its replicas re-created elsewhere.
    #[arg(long)]
    node_down_replace_ms: Option<u64>,
    /// A move whose target is silent this long is rolled back.
    #[arg(long)]
    move_target_down_ms: Option<u64>,
    /// A node is up if it answered the metadata leader within this time.
    #[arg(long)]
    node_alive_ms: Option<u64>,
    /// Split shards larger than this many bytes (0 = never).
    #[arg(long)]
    split_shard_bytes: Option<u64>,
    /// Split shards while there are fewer than this many per node (0 = never).
    #[arg(long)]
    shards_per_node_min: Option<u32>,
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    #[arg(long)]
    election_timeout_ms_min: Option<u64>,
    #[arg(long)]
    election_timeout_ms_max: Option<u64>,
    /// Build a snapshot after this many applied entries.
    #[arg(long)]
    snapshot_logs_since_last: Option<u64>,
    /// Log entries kept behind a snapshot.
    #[arg(long)]
    snapshot_logs_to_keep: Option<u64>,
    /// Snapshot bytes this node sends per second (0 = unlimited).
    #[arg(long)]
    snapshot_send_bytes_per_sec: Option<u64>,
    /// Lease reads: share of election_timeout_ms_max, in percent, a leader
    /// serves linearizable reads from its lease (0 = off: a quorum round
    /// per read batch).
    #[arg(long)]
    read_lease_percent: Option<u64>,
    /// true or false: a leader replicates new entries while its own WAL
    /// sync of them runs (raft.overlap_leader_sync).
    #[arg(long)]
    overlap_leader_sync: Option<bool>,
    /// Per-client request rate limit (requests/s, 0 = off).
    #[arg(long)]
    client_requests_per_second: Option<u32>,
    /// Per-client burst above the rate.
    #[arg(long)]
    client_burst: Option<u32>,
    /// PEM certificate chain of this node (enables TLS).
    #[arg(long)]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long)]
    tls_key_file: Option<PathBuf>,
    /// PEM CA bundle verifying peers (and clients with mutual TLS).
    #[arg(long)]
    tls_ca_file: Option<PathBuf>,
    /// Mutual TLS: refuse connections without a certificate from the CA.
    #[arg(long)]
    tls_require_client_cert: bool,
    /// File with the bearer token the Admin API requires.
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// TESTING ONLY: serve linearizable reads without ReadIndex (stale
    /// reads possible), so fault tests can prove they catch it.
    #[arg(long, hide = true)]
    unsafe_reads_without_read_index: bool,
    /// Log format: text or json.
    #[arg(long, value_parser = ["text", "json"])]
    log_format: Option<String>,
    /// Log Kv requests slower than this (0 = off).
    #[arg(long)]
    slow_request_ms: Option<u64>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag {
                    $field = v;
                }
            };
        }
        set!(self.node_id, c.node_id);
        set!(self.listen, c.listen);
        set!(self.status_listen, c.status_listen);
        set!(self.peer_source_address, c.peer_source_address);
        set!(self.data_dir, c.data_dir);
        set!(self.initial_cluster, c.initial_cluster);
        set!(self.shards, c.shards);
        set!(self.join, c.join);
        set!(self.advertise, c.advertise);
        set!(self.zone, c.zone);
        set!(self.placement_tick_ms, c.placement.tick_ms);
        set!(self.moves_in_flight_max, c.placement.moves_in_flight_max);
        set!(self.node_down_replace_ms, c.placement.node_down_replace_ms);
        set!(self.move_target_down_ms, c.placement.move_target_down_ms);
        set!(self.node_alive_ms, c.placement.node_alive_ms);
        set!(self.split_shard_bytes, c.placement.split_shard_bytes);
        set!(self.shards_per_node_min, c.placement.shards_per_node_min);
        set!(self.heartbeat_interval_ms, c.raft.heartbeat_interval_ms);
        set!(self.election_timeout_ms_min, c.raft.election_timeout_ms_min);
        set!(self.election_timeout_ms_max, c.raft.election_timeout_ms_max);
        set!(self.snapshot_logs_since_last, c.raft.snapshot_logs_since_last);
        set!(self.snapshot_logs_to_keep, c.raft.snapshot_logs_to_keep);
        set!(self.snapshot_send_bytes_per_sec, c.raft.snapshot_send_bytes_per_sec);
        set!(self.read_lease_percent, c.raft.read_lease_percent);
        set!(self.overlap_leader_sync, c.raft.overlap_leader_sync);
        set!(self.slow_request_ms, c.log.slow_request_ms);
        set!(self.client_requests_per_second, c.limits.client_requests_per_second);
        set!(self.client_burst, c.limits.client_burst);
        set!(self.tls_cert_file, c.tls.cert_file);
        set!(self.tls_key_file, c.tls.key_file);
        set!(self.tls_ca_file, c.tls.ca_file);
        set!(self.admin_token_file, c.admin.token_file);
        if self.unsafe_reads_without_read_index {
            c.testing.unsafe_reads_without_read_index = true;
        }
        if self.tls_require_client_cert {
            c.tls.require_client_cert = true;
        }
        if let Some(f) = self.log_format {
            c.log.format = if f == "json" { LogFormat::Json } else { LogFormat::Text };
        }
        c.validate()?;
        Ok(c)
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = Args::parse().into_config()?;
    init_logging(cfg.log.format);
    if cfg.testing.unsafe_reads_without_read_index {
        tracing::error!("TESTING MODE: linearizable reads skip ReadIndex and may be stale; never use in production");
    }
    let listen = cfg.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("bind {listen}"))?;
    let status_listener = match cfg.status_listen.as_str() {
        "" => None,
        addr => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("bind status port {addr}"))?,
        ),
    };
    let node: Arc<Node> = Node::start(cfg).await.context("start node")?;
    if let Some(l) = status_listener {
        tracing::info!(addr = %node.cfg.status_listen, "status port serving /metrics and /healthz");
        tokio::spawn(ringkv_server::service::status::serve(node.clone(), l));
    }
    tracing::info!(node = node.id, %listen, shards = node.shard_list().len(), "ringkv-server serving");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(ringkv_server::service::serve(node.clone(), listener, async {
        let _ = stop_rx.await;
    }));
    tokio::select! {
        _ = shutdown_signal() => {}
        r = &mut server => {
            node.shutdown().await;
            match r {
                Ok(Ok(())) => anyhow::bail!("grpc server stopped unexpectedly"),
                Ok(Err(e)) => return Err(e).context("grpc server"),
                Err(e) => anyhow::bail!("grpc server task: {e}"),
            }
        }
    }
    // Hand the leaderships away first (their shards stop taking requests
    // here meanwhile), so the cluster does not wait for election timeouts;
    // then stop accepting, let in-flight requests finish (they need Raft)
    // and stop the Raft groups. Each step is bounded so SIGTERM always ends.
    tracing::info!("shutting down: handing off leaderships");
    let (handed, led) = node.hand_off_leaderships().await;
    tracing::info!(handed, of = led, "leaderships handed off");
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_millis(SHUTDOWN_DRAIN_MS), &mut server).await {
        Ok(Ok(r)) => r.context("grpc server")?,
        Ok(Err(e)) => anyhow::bail!("grpc server task: {e}"),
        Err(_) => tracing::warn!("requests still in flight after {SHUTDOWN_DRAIN_MS} ms; stopping anyway"),
    }
    if tokio::time::timeout(Duration::from_millis(SHUTDOWN_RAFT_MS), node.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("raft groups did not stop within {SHUTDOWN_RAFT_MS} ms");
    }
    tracing::info!("stopped");
    Ok(())
}
