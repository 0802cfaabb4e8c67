//! Test harness: real multi-process `ringkv-server` clusters on loopback.
//!
//! Every node is a child process with its own data dir under one temp dir
//! and a log file there; the tails of the logs are printed when a test
//! fails. Raft timeouts are generous so tests hold on a starved 2-core
//! machine; every wait has a deadline and polls a condition.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::*;
use tonic::transport::Channel;

/// The `ringkv-server` binary: cargo names it for the server's own tests;
/// other crates of the workspace (which include this file by path) find it
/// next to their test executable's `deps/` folder.
pub fn server_bin() -> std::path::PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ringkv-server") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target profile dir");
    let bin = dir.join("ringkv-server");
    assert!(
        bin.exists(),
        "{} not found: build it first (cargo build --release -p ringkv-server)",
        bin.display()
    );
    bin
}
/// How long a cluster may take to elect every leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Per-RPC timeout used by the harness.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// The signal `std::process::abort` raises: how a node that stops on a
/// failed write ends.
pub const SIGABRT: i32 = 6;

/// Deterministic seed for a test: `RINGKV_TEST_SEED` or a fixed default.
pub fn seed(default: u64) -> u64 {
    let s = std::env::var("RINGKV_TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    eprintln!("test seed: {s} (set RINGKV_TEST_SEED={s} to reproduce)");
    s
}

/// Options of a test cluster.
#[derive(Clone)]
pub struct Opts {
    pub nodes: u64,
    pub shards: u32,
    pub extra_args: Vec<String>,
    /// Environment per node id.
    pub env: BTreeMap<u64, Vec<(String, String)>>,
    /// Give every node a status HTTP port (`NodeProc::status_addr`).
    pub status_ports: bool,
    /// TLS the harness's own connections use (the nodes get their TLS
    /// flags through `extra_args`).
    pub tls: Option<ClientTls>,
    /// Raft election timeout bounds (min, max), in ms.
    pub election_timeout_ms: (u64, u64),
}

/// What the harness presents when the cluster runs TLS.
#[derive(Clone)]
pub struct ClientTls {
    pub ca_pem: String,
    /// Client certificate and key (for mutual TLS).
    pub identity: Option<(String, String)>,
    /// Bearer token for Admin calls.
    pub admin_token: Option<String>,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            nodes: 3,
            shards: 4,
            extra_args: vec![],
            env: BTreeMap::new(),
            status_ports: false,
            tls: None,
            // Tolerant of a starved CPU: two cores run three nodes and the test.
            election_timeout_ms: (1500, 3000),
        }
    }
}

pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    /// The status HTTP port, when `Opts::status_ports`.
    pub status_addr: Option<String>,
    /// Address of the member it joined through (nodes added after bootstrap).
    pub join: Option<String>,
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub opts: Opts,
    pub nodes: BTreeMap<u64, NodeProc>,
    pub initial_cluster: String,
    channels: std::sync::Mutex<BTreeMap<u64, Channel>>,
}

/// Attempts at finding a port this process has not handed out yet.
const FREE_PORT_ATTEMPTS_MAX: usize = 100;

/// A port the OS reports free and this test process has not handed out
/// before: the listener is closed before the node binds it, so the OS may
/// offer the same port twice (seen in CI: two nodes of one cluster got the
/// same port, and one failed to start).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..FREE_PORT_ATTEMPTS_MAX {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = l.local_addr().expect("local addr").port();
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
    panic!("no fresh port in {FREE_PORT_ATTEMPTS_MAX} attempts");
}

impl Cluster {
    /// Starts the nodes and waits until every shard has a leader.
    pub async fn start(opts: Opts) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes = BTreeMap::new();
        for id in 1..=opts.nodes {
            let addr = format!("127.0.0.1:{}", free_port());
            nodes.insert(
                id,
                NodeProc {
                    id,
                    addr,
                    data_dir: dir.path().join(format!("node{id}")),
                    log: dir.path().join(format!("node{id}.log")),
                    child: None,
                    status_addr: opts.status_ports.then(|| format!("127.0.0.1:{}", free_port())),
                    join: None,
                },
            );
        }
        let initial_cluster = nodes
            .values()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            dir,
            opts,
            nodes,
            initial_cluster,
            channels: std::sync::Mutex::new(BTreeMap::new()),
        };
        let ids: Vec<u64> = c.nodes.keys().copied().collect();
        for id in ids {
            c.spawn(id);
        }
        c.wait_ready().await;
        c
    }

    fn spawn(&mut self, id: u64) {
        let initial = self.initial_cluster.clone();
        let opts = self.opts.clone();
        let n = self.nodes.get_mut(&id).expect("known node");
        assert!(n.child.is_none(), "node {id} already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&n.log)
            .expect("open node log");
        let mut cmd = Command::new(server_bin());
        cmd.args([
            "--node-id",
            &id.to_string(),
            "--listen",
            &n.addr,
            "--data-dir",
            n.data_dir.to_str().expect("utf8 path"),
            "--initial-cluster",
            &initial,
            "--shards",
            &opts.shards.to_string(),
            "--heartbeat-interval-ms",
            "200",
            "--election-timeout-ms-min",
            &opts.election_timeout_ms.0.to_string(),
            "--election-timeout-ms-max",
            &opts.election_timeout_ms.1.to_string(),
        ])
        .args(&opts.extra_args)
        // Tests fix their shard layout: no splits by node count unless the
        // test asks for them in `extra_args`.
        .args(
            Some(["--shards-per-node-min", "0"])
                .filter(|_| !opts.extra_args.iter().any(|a| a == "--shards-per-node-min"))
                .into_iter()
                .flatten(),
        )
        .args(n.join.iter().flat_map(|j| ["--join".to_string(), j.clone()]))
        .args(
            n.status_addr
                .iter()
                .flat_map(|a| ["--status-listen".to_string(), a.clone()]),
        )
        .env("RUST_LOG", "info,openraft=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("dup log"))
        .stderr(log);
        for (k, v) in opts.env.get(&id).into_iter().flatten() {
            cmd.env(k, v);
        }
        n.child = Some(cmd.spawn().expect("spawn ringkv-server"));
    }

    /// kill -9 and reap.
    pub fn kill(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).expect("known node");
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (up to `timeout`) for the exit status; kill -9 and
    /// panic when the node does not stop in time.
    pub fn terminate(&mut self, id: u64, timeout: Duration) -> std::process::ExitStatus {
        let n = self.nodes.get_mut(&id).expect("known node");
        let mut child = n.child.take().expect("node running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(ok.success(), "kill -TERM failed");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("node {id} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How node `id`'s process ended, once it has (from then on the node
    /// counts as stopped); `None` while it runs, or when it is not started.
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let n = self.nodes.get_mut(&id).expect("known node");
        let status = n.child.as_mut()?.try_wait().expect("wait for a node")?;
        n.child = None;
        Some(status)
    }

    pub fn restart(&mut self, id: u64) {
        self.spawn(id);
    }

    /// Starts a new node (the next id) that joins the cluster through node
    /// `via`, with `env`; returns its id. It is not waited for.
    pub fn add_joining_node(&mut self, via: u64, env: Vec<(String, String)>) -> u64 {
        let join = self.addr(via).to_string();
        self.add_node_joining_through(join, env)
    }

    /// Starts a new node (the next id) with `--join join` (one or more
    /// addresses), with `env`; returns its id. It is not waited for.
    pub fn add_node_joining_through(&mut self, join: String, env: Vec<(String, String)>) -> u64 {
        let id = self.nodes.keys().max().copied().unwrap_or(0) + 1;
        let addr = format!("127.0.0.1:{}", free_port());
        self.nodes.insert(
            id,
            NodeProc {
                id,
                addr,
                data_dir: self.dir.path().join(format!("node{id}")),
                log: self.dir.path().join(format!("node{id}.log")),
                child: None,
                status_addr: self.opts.status_ports.then(|| format!("127.0.0.1:{}", free_port())),
                join: Some(join),
            },
        );
        self.opts.env.insert(id, env);
        self.spawn(id);
        id
    }

    pub fn is_running(&self, id: u64) -> bool {
        self.nodes[&id].child.is_some()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn addr(&self, id: u64) -> &str {
        &self.nodes[&id].addr
    }

    /// A channel to node `id`, cached: tonic reconnects it by itself after
    /// the node restarts.
    pub async fn channel(&self, id: u64) -> Option<Channel> {
        if let Some(ch) = self.channels.lock().unwrap().get(&id) {
            return Some(ch.clone());
        }
        let ch = self.connect(id).await?;
        self.channels.lock().unwrap().insert(id, ch.clone());
        Some(ch)
    }

    async fn connect(&self, id: u64) -> Option<Channel> {
        let scheme = if self.opts.tls.is_some() { "https" } else { "http" };
        let mut ep = tonic::transport::Endpoint::from_shared(format!("{scheme}://{}", self.addr(id))).ok()?;
        if let Some(t) = &self.opts.tls {
            let mut cfg = tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(&t.ca_pem));
            if let Some((cert, key)) = &t.identity {
                cfg = cfg.identity(tonic::transport::Identity::from_pem(cert, key));
            }
            ep = ep.tls_config(cfg).ok()?;
        }
        let ep = ep.connect_timeout(Duration::from_secs(2)).timeout(RPC_TIMEOUT);
        ep.connect().await.ok()
    }

    pub async fn kv(&self, id: u64) -> Option<KvClient<Channel>> {
        self.channel(id).await.map(KvClient::new)
    }

    pub async fn admin(&self, id: u64) -> Option<AdminClient<Channel>> {
        self.channel(id).await.map(AdminClient::new)
    }

    /// Turns automatic rebalancing off through node `via`, whose Admin
    /// client it returns: for tests that place replicas themselves.
    pub async fn rebalance_off(&self, via: u64) -> AdminClient<Channel> {
        let mut admin = self.admin(via).await.expect("admin client");
        admin
            .set_rebalance(self.admin_request(ringkv_proto::v1::SetRebalanceRequest { enabled: false }))
            .await
            .expect("rebalance off");
        admin
    }

    /// An Admin request carrying the admin token, when there is one.
    pub fn admin_request<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        if let Some(token) = self.opts.tls.as_ref().and_then(|t| t.admin_token.as_ref()) {
            let v = format!("Bearer {token}").parse().expect("token is valid metadata");
            r.metadata_mut().insert("authorization", v);
        }
        r
    }

    pub async fn status(&self, id: u64) -> Option<ClusterStatusResponse> {
        let mut a = self.admin(id).await?;
        a.cluster_status(self.admin_request(ClusterStatusRequest {}))
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Waits until every running node sees a leader, among the running
    /// nodes, for every shard it hosts.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let running = self.running();
        loop {
            let mut ok = true;
            for id in &running {
                match self.status(*id).await {
                    Some(st) => {
                        let all = st.shards.iter().chain(st.metadata.iter());
                        for s in all.filter(|s| s.hosted_here) {
                            if !running.contains(&s.leader_id) {
                                ok = false;
                            }
                        }
                    }
                    None => ok = false,
                }
            }
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "cluster not ready within {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Leader of `shard` as seen by any running node.
    pub async fn leader_of(&self, shard: u64) -> Option<u64> {
        for id in self.running() {
            if let Some(st) = self.status(id).await {
                if let Some(s) = st.shards.iter().find(|s| s.id == shard) {
                    if s.leader_id != 0 {
                        return Some(s.leader_id);
                    }
                }
            }
        }
        None
    }

    /// Runs `op` against running nodes in turn until it succeeds or the
    /// deadline passes; returns the last error then.
    pub async fn on_any_node<T, F, Fut>(&self, deadline: Instant, mut op: F) -> Result<T, String>
    where
        F: FnMut(KvClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<T, tonic::Status>>,
    {
        let mut last = String::from("deadline passed before the first attempt");
        let mut i = 0usize;
        while Instant::now() < deadline {
            let nodes = self.running();
            let id = nodes[i % nodes.len()];
            i += 1;
            match self.kv(id).await {
                Some(kv) => match op(kv).await {
                    Ok(v) => return Ok(v),
                    Err(s) => last = format!("node {id}: {:?} {}", s.code(), s.message()),
                },
                None => last = format!("node {id}: cannot connect"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last)
    }

    /// Puts through any running node, retrying until `deadline`.
    pub async fn put_retry(&self, key: &[u8], value: &[u8], deadline: Instant) -> Result<(), String> {
        self.on_any_node(deadline, |mut kv| {
            let req = PutRequest {
                header: None,
                key: key.to_vec(),
                value: value.to_vec(),
            };
            async move { kv.put(req).await.map(|_| ()) }
        })
        .await
    }

    /// Linearizable get through any running node, retrying until `deadline`.
    pub async fn get_retry(&self, key: &[u8], deadline: Instant) -> Result<Option<Vec<u8>>, String> {
        self.on_any_node(deadline, |mut kv| {
            let req = GetRequest {
                header: None,
                key: key.to_vec(),
            };
            async move {
                let r = kv.get(req).await?.into_inner();
                Ok(r.found.then_some(r.value))
            }
        })
        .await
    }

    pub async fn node_stats(&self, id: u64) -> Option<NodeStatsResponse> {
        let mut a = self.admin(id).await?;
        a.node_stats(self.admin_request(NodeStatsRequest {}))
            .await
            .ok()
            .map(|r| r.into_inner())
    }

    /// Last applied index of `shard` on node `id`, as that node reports it.
    pub async fn applied_on(&self, id: u64, shard: u64) -> Option<u64> {
        let st = self.status(id).await?;
        st.shards.iter().find(|s| s.id == shard).map(|s| s.last_applied_index)
    }

    /// Admin/TriggerSnapshot of `shard` on node `id`, one attempt (a
    /// snapshot of a large shard may take a minute).
    pub async fn trigger_snapshot(&self, id: u64, shard: u64) -> Result<TriggerSnapshotResponse, String> {
        let mut a = self.admin(id).await.ok_or_else(|| format!("connect node {id}"))?;
        let mut req = self.admin_request(TriggerSnapshotRequest { shard_id: shard });
        req.set_timeout(Duration::from_secs(70));
        a.trigger_snapshot(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| format!("node {id}: {:?} {}", s.code(), s.message()))
    }

    fn dump_logs(&self) {
        for n in self.nodes.values() {
            let text = std::fs::read_to_string(&n.log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let from = lines.len().saturating_sub(40);
            eprintln!("----- node {} log (last {} lines) -----", n.id, lines.len() - from);
            for l in &lines[from..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.kill(id);
        }
        let keep = std::env::var("RINGKV_TEST_KEEP_DIR").ok();
        // `always` keeps passing runs too (to read what a test exercised).
        if keep.as_deref() == Some("always") || (std::thread::panicking() && keep.is_some()) {
            // Whole logs and data for a post-mortem; the tempdir is not removed.
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
            let path = kept.keep();
            eprintln!("kept the cluster directory: {}", path.display());
            // One line per kept cluster, for whoever looks after a CI run.
            let exe = std::env::current_exe().unwrap_or_default();
            let line = format!("{} {} {}\n", now_unix_s(), exe.display(), path.display());
            let index = std::env::temp_dir().join("ringkv-kept-clusters.log");
            let appended = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&index)
                .and_then(|mut f| std::io::Write::write_all(&mut f, line.as_bytes()));
            if let Err(e) = appended {
                eprintln!("could not record it in {}: {e}", index.display());
            }
        }
    }
}

/// Seconds since the Unix epoch (for log lines of the harness).
pub fn now_unix_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The value of the first sample in `GET /metrics` of the status port
/// `addr` whose line starts with `series` (a metric name, or a name and
/// its labels); `None` if unreachable or absent.
pub fn metric(addr: &str, series: &str) -> Option<f64> {
    find_metric(&metrics_text(addr)?, series)
}

/// The whole `/metrics` answer of a status port.
pub fn metrics_text(addr: &str) -> Option<String> {
    use std::io::Read;
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// The value of the first sample of `series` (a name, or a name with its
/// labels) in a metrics text.
pub fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// A key that the cluster's ring places in `shard` (of `shards` equal
/// ranges), found by probing `prefix-N` names.
pub fn key_in_shard(prefix: &str, shard: u64, shards: u32) -> Vec<u8> {
    let step = u64::MAX / u64::from(shards) + 1;
    for i in 0..1_000_000u64 {
        let k = format!("{prefix}-{i}").into_bytes();
        let t = ringkv_server::ring::token_of(&k);
        if t / step + 1 == shard {
            return k;
        }
    }
    panic!("no key found for shard {shard}");
}

/// The `ringkv.v1.ErrorDetail` of a failed call. NOTE: `status.details()`
/// is a `google.rpc.Status` wrapping the detail (so grpcurl reads the code
/// correctly); never decode it as `ErrorDetail` directly.
pub fn error_detail(status: &tonic::Status) -> ErrorDetail {
    ringkv_proto::decode_error_detail(status.details())
        .unwrap_or_else(|| panic!("status without ringkv ErrorDetail: {status:?}"))
}
