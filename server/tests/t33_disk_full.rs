//! A node whose disk fills up must stop, not linger: RocksDB refuses every
//! write after a failed one, so a node that stayed up would keep answering
//! health checks with every shard on it stopped. It aborts, saying why; the
//! other two go on with every acknowledged write, and once its disk has
//! room again the node restarts and catches up.
//!
//! Node 3's data dir is moved onto a small tmpfs (needs root, as the
//! partition tests do), then large puts fill it.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;

const SHARD: u64 = 1;
const VICTIM: u64 = 3;
/// Size of the victim's tmpfs: room for its state and a little more.
const TMPFS_MB: u64 = 48;
/// Value of each filling put; the puts needed to fill the tmpfs are well
/// under `FILL_PUTS_MAX`.
const VALUE_BYTES: usize = 64 * 1024;
const FILL_PUTS_MAX: usize = 4000;

fn run(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run {cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?}: {status}");
}

/// Copies the contents of `from` into `to` (both existing dirs).
fn copy_dir(from: &Path, to: &Path) {
    let src = format!("{}/.", from.display());
    run("cp", &["-a", &src, to.to_str().expect("utf8")]);
}

/// The tmpfs mounted over the victim's data dir; unmounted however the
/// test ends.
struct Tmpfs(PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_up_aborts_and_loses_nothing() {
    let seed = common::seed(33);
    let mut c = Cluster::start(Opts {
        shards: 1,
        ..Opts::default()
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut acked: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for i in 0..20 {
        let (k, v) = (format!("t33-{seed}-small-{i}"), format!("v{i}"));
        c.put_retry(k.as_bytes(), v.as_bytes(), deadline)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: put {k}: {e}"));
        acked.push((k.into_bytes(), v.into_bytes()));
    }

    // Node 3's data onto a small tmpfs.
    c.kill(VICTIM);
    let dir = c.nodes[&VICTIM].data_dir.clone();
    let saved = dir.with_extension("saved");
    std::fs::rename(&dir, &saved).expect("move the data dir aside");
    std::fs::create_dir(&dir).expect("mount point");
    let size = format!("size={TMPFS_MB}m");
    run(
        "mount",
        &["-t", "tmpfs", "-o", &size, "tmpfs", dir.to_str().expect("utf8")],
    );
    let tmpfs = Tmpfs(dir.clone());
    copy_dir(&saved, &dir);
    std::fs::remove_dir_all(&saved).expect("drop the copy");
    c.restart(VICTIM);
    c.wait_ready().await;

    // Fill it: every node stores every put (one shard, three replicas).
    let value = vec![b'x'; VALUE_BYTES];
    let mut status = None;
    for i in 0..FILL_PUTS_MAX {
        let k = format!("t33-{seed}-big-{i}").into_bytes();
        c.put_retry(&k, &value, deadline)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: put {i} while node 3's disk fills: {e}"));
        acked.push((k, value.clone()));
        if let Some(s) = c.exited(VICTIM) {
            eprintln!("seed {seed}: node 3 exited after {} filling puts: {s}", i + 1);
            status = Some(s);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: node 3 still runs on a full disk"
        );
    }
    // It may exit a moment after the put that filled its disk.
    while status.is_none() && Instant::now() < deadline {
        status = c.exited(VICTIM);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = status.unwrap_or_else(|| panic!("seed {seed}: node 3 never stopped on a full disk"));
    assert_eq!(
        status.signal(),
        Some(common::SIGABRT),
        "seed {seed}: node 3 ended with {status}"
    );
    let log = std::fs::read_to_string(&c.nodes[&VICTIM].log).expect("read log");
    assert!(
        log.contains("a write to the node's database failed; aborting"),
        "seed {seed}: the abort's reason is not logged"
    );

    // The other two serve every acknowledged write, and new ones.
    for (k, v) in &acked {
        let got = c
            .get_retry(k, deadline)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: get: {e}"));
        assert_eq!(
            got.as_ref(),
            Some(v),
            "seed {seed}: {} lost",
            String::from_utf8_lossy(k)
        );
    }
    c.put_retry(b"t33-after", b"1", deadline).await.expect("put after");

    // Room again (the data back on the ordinary disk): it restarts and
    // catches up.
    let saved = dir.with_extension("full");
    std::fs::create_dir(&saved).expect("copy target");
    copy_dir(&dir, &saved);
    drop(tmpfs);
    std::fs::remove_dir(&dir).expect("remove the mount point");
    std::fs::rename(&saved, &dir).expect("data back in place");
    c.restart(VICTIM);
    c.wait_ready().await;
    let leader = c.leader_of(SHARD).await.expect("a leader");
    let target = loop {
        if let Some(a) = c.applied_on(leader, SHARD).await {
            break a;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: no applied index from the leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    loop {
        if c.applied_on(VICTIM, SHARD).await.is_some_and(|a| a >= target) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: node 3 did not catch up after its restart"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
