//! A ringkv cluster of real `ringkv-server` processes on loopback for a
//! test run: start, kill -9, restart, pause (SIGSTOP) and resume (SIGCONT),
//! and a wait for every shard to have a leader.
//!
//! Owns the processes and their data directories under the run's folder;
//! every process is killed when the cluster is dropped.
//!
//! The node set changes during a run with the topology nemesis: a joined
//! node ([`Cluster::add_joining_node`]) gets the next id and, in a private
//! network namespace, its own address like the bootstrap nodes; a node
//! that left the layout is retired ([`Cluster::retire`]): its process is
//! stopped for good and it leaves [`Cluster::members`], so no nemesis
//! restarts, pauses or partitions it again. Network partitions
//! (iptables) live in `nemesis`.
//!
//! Clock skew: with [`FakeTime`] every node runs with libfaketime preloaded
//! and reads its wall-clock offset from its own file (`nodeN.faketime`),
//! which [`Cluster::set_clock_offset`] rewrites while the node runs;
//! libfaketime re-reads it at most once a second (`FAKETIME_CACHE_DURATION`).
//! Only the wall clock (`CLOCK_REALTIME`) is faked
//! (`FAKETIME_DONT_FAKE_MONOTONIC=1`): ringkv reads the wall clock only for
//! the leader's log timestamps that drive session expiry, while Raft
//! timers, deadlines and timeouts use the monotonic clock, which real clock
//! trouble (NTP steps, a wrong RTC) leaves alone. Faking it too would test
//! a machine whose monotonic clock jumps, which no kernel does, and would
//! make election timers fire early or late instead of testing the timestamp
//! path.

use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::ClusterStatusRequest;

/// The run folder's copy of the server binary, removed with the cluster.
const SERVER_COPY: &str = "ringkv-server.bin";

/// Longest wait for every shard to have a leader.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where libfaketime may be installed (Debian's `faketime` package first).
const LIBFAKETIME_PATHS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
];

/// Overrides the libfaketime path.
pub const LIBFAKETIME_ENV: &str = "RINGKV_JEPSEN_LIBFAKETIME";

/// libfaketime, preloaded into every node so its wall clock can be skewed.
#[derive(Debug, Clone)]
pub struct FakeTime {
    pub lib: PathBuf,
}

impl FakeTime {
    /// The installed library, if any.
    pub fn find() -> Option<FakeTime> {
        if let Some(p) = std::env::var_os(LIBFAKETIME_ENV) {
            let p = PathBuf::from(p);
            return p.exists().then_some(FakeTime { lib: p });
        }
        LIBFAKETIME_PATHS
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .map(|lib| FakeTime { lib })
    }
}

/// One node process.
pub struct NodeProc {
    pub id: u64,
    pub addr: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// libfaketime's offset file for this node.
    pub clock_file: PathBuf,
    /// The members it joins through (`--join`, comma-separated); `None` for
    /// bootstrap nodes.
    pub join: Option<String>,
    /// Left the layout and stopped for good.
    pub retired: bool,
    child: Option<Child>,
    paused: bool,
}

/// The cluster under test.
pub struct Cluster {
    server: PathBuf,
    initial_cluster: String,
    shards: u32,
    extra_args: Vec<String>,
    faketime: Option<FakeTime>,
    own_addresses: bool,
    dir: PathBuf,
    /// Node `id` is `nodes[id - 1]`; retired nodes stay (ids are never reused).
    pub nodes: Vec<NodeProc>,
    /// Decommissioned nodes still in the layout when their step ended: the
    /// heal phase retires them once they left it.
    pub draining: std::collections::BTreeSet<u64>,
}

/// The address of node `id` inside a private network namespace.
pub fn node_ip(id: u64) -> String {
    format!("127.0.0.{}", 10 + id)
}

/// Attempts at finding a port this process has not handed out yet.
const FREE_PORT_ATTEMPTS_MAX: usize = 100;

/// A port the OS reports free and this process has not handed out before:
/// the probe listener closes before the node binds, so the OS may offer the
/// same port twice, and two nodes would then fight over it.
fn free_port() -> anyhow::Result<u16> {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    for _ in 0..FREE_PORT_ATTEMPTS_MAX {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        if HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no fresh port in {FREE_PORT_ATTEMPTS_MAX} attempts")
}

fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let ok = Command::new("kill").args([sig, &pid.to_string()]).status()?.success();
    anyhow::ensure!(ok, "kill {sig} {pid} failed");
    Ok(())
}

impl Cluster {
    /// Starts `n` nodes with data under `dir` and waits until they are ready.
    /// With `own_addresses` (inside a private network namespace) node `i`
    /// listens on `127.0.0.(10+i):50051` and dials its peers from that
    /// address, so firewall rules can cut single nodes off. With `faketime`
    /// the nodes' wall clocks can be skewed.
    pub async fn start(
        server: &Path,
        dir: &Path,
        n: u64,
        shards: u32,
        extra_args: &[String],
        own_addresses: bool,
        faketime: Option<FakeTime>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(
            server.exists(),
            "{} not found: build ringkv-server first",
            server.display()
        );
        // A private copy: a build that replaces the binary during the run
        // (a shared target directory) must not restart nodes with other
        // code than they started with.
        std::fs::create_dir_all(dir)?;
        let own_server = dir.join(SERVER_COPY);
        std::fs::copy(server, &own_server).with_context(|| format!("copy {}", server.display()))?;
        let server = own_server.as_path();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let addr = if own_addresses {
                format!("{}:50051", node_ip(id))
            } else {
                format!("127.0.0.1:{}", free_port()?)
            };
            nodes.push(NodeProc {
                id,
                addr,
                data_dir: dir.join(format!("node{id}")),
                log: dir.join(format!("node{id}.log")),
                clock_file: dir.join(format!("node{id}.faketime")),
                join: None,
                retired: false,
                child: None,
                paused: false,
            });
        }
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            server: server.to_path_buf(),
            initial_cluster,
            shards,
            extra_args: extra_args.to_vec(),
            faketime,
            own_addresses,
            dir: dir.to_path_buf(),
            nodes,
            draining: Default::default(),
        };
        for id in 1..=n {
            if c.faketime.is_some() {
                c.set_clock_offset(id, 0)?;
            }
            c.spawn(id)?;
        }
        c.wait_ready().await?;
        Ok(c)
    }

    fn node(&mut self, id: u64) -> &mut NodeProc {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Starts node `id` (the next unused id) with `--join` through the
    /// running node `via` (and the other bootstrap nodes after it). Returns
    /// at once: the node joins on its own.
    pub fn add_joining_node(&mut self, id: u64, via: u64) -> anyhow::Result<()> {
        anyhow::ensure!(
            id > self.nodes.len() as u64,
            "node {id} cannot join: the next node id is {}",
            self.nodes.len() + 1
        );
        anyhow::ensure!(
            (via as usize) <= self.nodes.len() && self.is_up(via),
            "node {via} is not running"
        );
        // `via` first, then the other bootstrap nodes: the join goes on
        // through those if a fault takes `via` down meanwhile.
        let others = self.nodes.iter().filter(|n| n.join.is_none() && n.id != via);
        let join = std::iter::once(self.nodes[(via - 1) as usize].addr.as_str())
            .chain(others.map(|n| n.addr.as_str()))
            .collect::<Vec<_>>()
            .join(",");
        // Ids of joins that never started stay unused.
        while (self.nodes.len() as u64) < id {
            let id = self.nodes.len() as u64 + 1;
            let addr = if self.own_addresses {
                format!("{}:50051", node_ip(id))
            } else {
                format!("127.0.0.1:{}", free_port()?)
            };
            self.nodes.push(NodeProc {
                id,
                addr,
                data_dir: self.dir.join(format!("node{id}")),
                log: self.dir.join(format!("node{id}.log")),
                clock_file: self.dir.join(format!("node{id}.faketime")),
                join: Some(join.clone()),
                retired: true,
                child: None,
                paused: false,
            });
        }
        self.node(id).retired = false;
        if self.faketime.is_some() {
            self.set_clock_offset(id, 0)?;
        }
        self.spawn(id)
    }

    /// Stops node `id` for good (it left the layout): kill -9, and no
    /// restart, pause or partition hits it again.
    pub fn retire(&mut self, id: u64) {
        if (id as usize) <= self.nodes.len() {
            self.kill(id);
            let n = self.node(id);
            n.retired = true;
            n.paused = false;
        }
    }

    /// Whether node `id` was started by this harness and not retired.
    pub fn is_member(&self, id: u64) -> bool {
        id >= 1 && (id as usize) <= self.nodes.len() && !self.nodes[(id - 1) as usize].retired
    }

    /// Ids of the nodes not retired (running or not).
    pub fn members(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| !n.retired).map(|n| n.id).collect()
    }

    /// Whether node `id`'s process exited on its own (a join that gave up).
    pub fn exited(&mut self, id: u64) -> bool {
        match self.node(id).child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self, id: u64) -> anyhow::Result<()> {
        let (server, initial, shards, extra, faketime) = (
            self.server.clone(),
            self.initial_cluster.clone(),
            self.shards,
            self.extra_args.clone(),
            self.faketime.clone(),
        );
        let n = self.node(id);
        anyhow::ensure!(!n.retired, "node {id} left the cluster");
        anyhow::ensure!(n.child.is_none(), "node {id} is already running");
        let source = n.addr.split(':').next().unwrap_or_default().to_string();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log)?;
        let mut cmd = Command::new(&server);
        if let Some(ft) = &faketime {
            cmd.env("LD_PRELOAD", &ft.lib)
                .env("FAKETIME_TIMESTAMP_FILE", &n.clock_file)
                .env("FAKETIME_CACHE_DURATION", "1")
                .env("FAKETIME_DONT_FAKE_MONOTONIC", "1");
        }
        let child = cmd
            .args(["--node-id", &id.to_string(), "--listen", &n.addr])
            .arg("--data-dir")
            .arg(&n.data_dir)
            .args(["--initial-cluster", &initial, "--shards", &shards.to_string()])
            // Tolerant timeouts: two cores run the cluster, the clients and
            // the nemesis.
            .args(["--heartbeat-interval-ms", "200", "--election-timeout-ms-min", "1500"])
            .args(["--election-timeout-ms-max", "3000"])
            .args(&extra)
            .args(n.join.iter().flat_map(|j| ["--join", j.as_str()]))
            .args(["--peer-source-address", &source])
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", server.display()))?;
        n.child = Some(child);
        n.paused = false;
        Ok(())
    }

    pub fn is_up(&self, id: u64) -> bool {
        let n = &self.nodes[(id - 1) as usize];
        n.child.is_some() && !n.paused && !n.retired
    }

    /// kill -9.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut c) = self.node(id).child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts a killed node again (not a retired one).
    pub fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id);
        if n.child.is_none() && !n.retired {
            self.spawn(id)?;
        }
        Ok(())
    }

    /// SIGSTOP.
    pub fn pause(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id);
        if let Some(c) = &n.child {
            signal(c.id(), "-STOP")?;
            n.paused = true;
        }
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> anyhow::Result<()> {
        let n = self.node(id);
        if let Some(c) = &n.child {
            signal(c.id(), "-CONT")?;
            n.paused = false;
        }
        Ok(())
    }

    /// Resumes paused nodes and restarts killed ones (not retired ones).
    pub fn heal(&mut self) -> anyhow::Result<()> {
        for id in 1..=self.nodes.len() as u64 {
            self.resume(id)?;
            self.restart(id)?;
        }
        Ok(())
    }

    pub fn addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.addr.clone()).collect()
    }

    /// Every node's address, and the ids of the nodes that are up.
    pub fn addrs_up(&self) -> (Vec<String>, Vec<u64>) {
        let up = self.nodes.iter().filter(|n| self.is_up(n.id)).map(|n| n.id).collect();
        (self.addrs(), up)
    }

    /// Whether node clocks can be skewed.
    pub fn has_faketime(&self) -> bool {
        self.faketime.is_some()
    }

    /// Sets node `id`'s wall clock to real time plus `offset_ms`, effective
    /// within libfaketime's cache duration. The file is replaced atomically
    /// so the node never reads half of it.
    pub fn set_clock_offset(&self, id: u64, offset_ms: i64) -> anyhow::Result<()> {
        anyhow::ensure!(self.faketime.is_some(), "clock skew needs libfaketime");
        let n = &self.nodes[(id - 1) as usize];
        let tmp = n.clock_file.with_extension("faketime.tmp");
        let sign = if offset_ms < 0 { "-" } else { "+" };
        let abs = offset_ms.unsigned_abs();
        std::fs::write(&tmp, format!("{sign}{}.{:03}\n", abs / 1000, abs % 1000))?;
        std::fs::rename(&tmp, &n.clock_file)?;
        Ok(())
    }

    /// Waits until every running node sees a running leader for every shard
    /// it hosts, and every shard of the layout (also those created by
    /// splits during the run) is hosted by a running node that sees one.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ready_once().await {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "cluster not ready within {READY_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn ready_once(&self) -> bool {
        let up: Vec<u64> = self.nodes.iter().filter(|n| self.is_up(n.id)).map(|n| n.id).collect();
        // Every data shard any node lists, and those with a running leader
        // as seen by a node that hosts them.
        let mut listed = std::collections::BTreeSet::new();
        let mut led = std::collections::BTreeSet::new();
        for n in self.nodes.iter().filter(|n| self.is_up(n.id)) {
            let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{}", n.addr)) else {
                return false;
            };
            let Ok(ch) = ep.timeout(Duration::from_secs(2)).connect().await else {
                return false;
            };
            let Ok(st) = AdminClient::new(ch).cluster_status(ClusterStatusRequest {}).await else {
                return false;
            };
            let st = st.into_inner();
            let all = st.shards.iter().chain(st.metadata.iter());
            if all.filter(|s| s.hosted_here).any(|s| !up.contains(&s.leader_id)) {
                return false;
            }
            listed.extend(st.shards.iter().map(|s| s.id));
            led.extend(st.shards.iter().filter(|s| s.hosted_here).map(|s| s.id));
        }
        listed.is_subset(&led)
    }
}

/// The leader of the `shard`-th data shard (in id order) as a node that
/// hosts it reports, if that leader is up.
pub async fn leader_of(addrs: &[String], up: &[u64], shard: u32) -> Option<u64> {
    for (i, addr) in addrs.iter().enumerate() {
        if !up.contains(&(i as u64 + 1)) {
            continue;
        }
        let Ok(ep) = tonic::transport::Endpoint::from_shared(format!("http://{addr}")) else {
            continue;
        };
        let Ok(ch) = ep.timeout(Duration::from_secs(2)).connect().await else {
            continue;
        };
        let Ok(st) = AdminClient::new(ch).cluster_status(ClusterStatusRequest {}).await else {
            continue;
        };
        let mut shards = st.into_inner().shards;
        if shards.is_empty() {
            continue;
        }
        shards.sort_by_key(|s| s.id);
        let s = &shards[shard as usize % shards.len()];
        if s.hosted_here && up.contains(&s.leader_id) {
            return Some(s.leader_id);
        }
    }
    None
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                if n.paused {
                    let _ = signal(c.id(), "-CONT");
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        // The private copy is large (debug info): do not leave it behind.
        let _ = std::fs::remove_file(&self.server);
    }
}
