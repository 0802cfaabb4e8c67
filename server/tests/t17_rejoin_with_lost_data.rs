//! A joined node whose data dir is lost must not come back under its id: an
//! empty node started with `--join` again would have forgotten its Raft
//! votes and log entries while the cluster still counts it as a member. It
//! exits and says why, also when the seed it asks has a layout that lags
//! (the metadata leader's answer to its AddNode refuses it then). Once the
//! node is decommissioned (`RemoveNode`), the same id joins again as a new,
//! empty node and serves.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::ListNodesRequest;
use ringkv_proto::v1::NodeStatus;
use ringkv_proto::v1::RemoveNodeRequest;
use ringkv_server::failpoint::NODE_JOIN_SKIP_LAYOUT_CHECK;

/// The nodes of the layout as the metadata leader lists them (through node 1).
async fn nodes(c: &Cluster) -> Option<Vec<NodeStatus>> {
    let mut admin = c.admin(1).await?;
    let r = admin.list_nodes(c.admin_request(ListNodesRequest {})).await.ok()?;
    Some(r.into_inner().nodes)
}

/// Waits until `pred` holds for the listed nodes; panics with `what` at the
/// deadline.
async fn wait_nodes(c: &Cluster, what: &str, deadline: Instant, pred: impl Fn(&[NodeStatus]) -> bool) {
    loop {
        let listed = nodes(c).await;
        if listed.as_deref().is_some_and(&pred) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}; ListNodes: {listed:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a refused node logs.
const REFUSED: &str = "is already a member of the cluster";

/// Waits for node `id` to exit; panics with `what` at the deadline.
async fn exit_of(c: &mut Cluster, id: u64, deadline: Instant, what: &str) -> std::process::ExitStatus {
    loop {
        if let Some(s) = c.exited(id) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn up(nodes: &[NodeStatus], id: u64) -> bool {
    nodes.iter().any(|n| n.id == id && n.up)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_with_an_empty_data_dir_is_refused_until_removed() {
    let mut c = Cluster::start(Opts {
        shards: 3,
        ..Opts::default()
    })
    .await;
    c.wait_ready().await;
    let deadline = Instant::now() + Duration::from_secs(240);
    let four = c.add_joining_node(1, vec![]);
    wait_nodes(&c, "node 4 never joined", deadline, |n| up(n, four)).await;
    c.put_retry(b"t17-before", b"1", deadline).await.expect("put");

    // Its volume is lost: the same id, an empty data dir, --join again.
    c.kill(four);
    let data_dir = c.nodes[&four].data_dir.clone();
    std::fs::remove_dir_all(&data_dir).expect("wipe node 4");
    c.restart(four);
    let status = exit_of(&mut c, four, deadline, "node 4 started empty as a member").await;
    assert!(!status.success(), "node 4 exited with {status}");
    let log = std::fs::read_to_string(&c.nodes[&four].log).expect("read log");
    assert!(log.contains(REFUSED), "{log}");

    // The same when the seed's layout lags (the check of it skipped): the
    // metadata leader answers the AddNode with `added: false`.
    std::fs::remove_dir_all(&data_dir).expect("wipe node 4");
    c.opts.env.insert(
        four,
        vec![(
            "RINGKV_FAILPOINTS".to_string(),
            format!("{NODE_JOIN_SKIP_LAYOUT_CHECK}=1"),
        )],
    );
    c.restart(four);
    let status = exit_of(
        &mut c,
        four,
        deadline,
        "node 4 started empty as a member when it skipped the layout check",
    )
    .await;
    assert!(!status.success(), "node 4 exited with {status}");
    let log = std::fs::read_to_string(&c.nodes[&four].log).expect("read log");
    let after = log
        .rsplit_once("joining without checking the seed's layout")
        .map(|(_, after)| after)
        .unwrap_or_else(|| panic!("the failpoint did not fire: {log}"));
    assert!(after.contains(REFUSED), "{log}");
    c.opts.env.remove(&four);
    c.put_retry(b"t17-during", b"2", deadline)
        .await
        .expect("the others serve");

    // Decommissioned, the id is free again: the node joins as a new one.
    let mut admin = c.admin(1).await.expect("admin");
    admin
        .remove_node(c.admin_request(RemoveNodeRequest { node_id: four }))
        .await
        .expect("remove node 4");
    wait_nodes(&c, "node 4 never left the layout", deadline, |n| {
        n.iter().all(|s| s.id != four)
    })
    .await;
    // Started again as it is (what the refused start left in the data dir
    // holds no membership), as a restarting pod would be.
    c.restart(four);
    wait_nodes(&c, "node 4 did not join again", deadline, |n| up(n, four)).await;
    for key in [&b"t17-before"[..], b"t17-during"] {
        assert!(
            c.get_retry(key, deadline).await.expect("get").is_some(),
            "{} lost",
            String::from_utf8_lossy(key)
        );
    }
    // And it serves: a write through node 4 itself.
    let mut kv = c.kv(four).await.expect("kv of node 4");
    loop {
        let put = kv
            .put(ringkv_proto::v1::PutRequest {
                header: None,
                key: b"t17-after".to_vec(),
                value: b"3".to_vec(),
            })
            .await;
        match put {
            Ok(_) => break,
            Err(s) => assert!(Instant::now() < deadline, "node 4 does not serve: {s:?}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
