//! A layout change whose admin RPC is dropped half-way must still be
//! carried out on the metadata leader. `MoveReplica` commits a layout with
//! the move in it, and the metadata leader then adopts it: it records the
//! layout and routes with it, then opens the replicas the layout gives it.
//! Here the move's target is the metadata leader itself, and the caller
//! gives up while the leader is between those two steps (failpoint
//! `node.adopt_move_slow`; `node.sync_move_late` holds back the leader's
//! background adoption of the same layout, so that the RPC's adoption
//! comes first, as it may by chance). The move must still complete. Before
//! the fix
//! the leader had taken the new epoch but never opened the target replica,
//! and no later adoption of the same epoch did it, so the move stalled.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::ListOperationsRequest;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::MoveReplicaRequest;

const SHARDS: u32 = 4;
/// On every node; only the metadata leader's adoptions matter.
const FAILPOINTS: &str = "node.adopt_move_slow=1,node.sync_move_late=1";
/// The metadata shard's id.
const META_SHARD: u64 = 0;
/// How long the caller waits for `MoveReplica`: well inside the
/// failpoint's 3 s pause.
const CANCEL_AFTER: Duration = Duration::from_millis(500);
/// Bound on the move, on a starved machine.
const MOVE_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_caller_gave_up_still_completes() {
    let seed = common::seed(16);
    let mut opts = Opts {
        nodes: 4,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200"].map(String::from).to_vec(),
        ..Opts::default()
    };
    for id in 1..=4 {
        opts.env
            .insert(id, vec![("RINGKV_FAILPOINTS".into(), FAILPOINTS.into())]);
    }
    let c = Cluster::start(opts).await;
    let deadline = Instant::now() + MOVE_TIMEOUT;

    // Wait for a metadata leader, then turn rebalancing off through it.
    let meta = loop {
        let st = c.status(1).await;
        if let Some(l) = st.and_then(|s| s.metadata).map(|m| m.leader_id).filter(|l| *l != 0) {
            break l;
        }
        assert!(Instant::now() < deadline, "seed {seed}: no metadata leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut admin = c.rebalance_off(meta).await;

    // A shard the metadata leader does not host, moved onto it.
    let shards = admin
        .list_shards(c.admin_request(ListShardsRequest {}))
        .await
        .expect("list shards")
        .into_inner();
    let shard = shards
        .shards
        .iter()
        .find(|s| s.id != META_SHARD && !s.replicas.contains(&meta))
        .unwrap_or_else(|| panic!("seed {seed}: every shard has a replica on node {meta}: {shards:?}"));
    let (id, from) = (shard.id, shard.replicas[0]);
    eprintln!("moving shard {id} from node {from} to node {meta}, the metadata leader");

    let mut req = c.admin_request(MoveReplicaRequest {
        shard_id: id,
        from_node: from,
        to_node: meta,
    });
    req.set_timeout(CANCEL_AFTER);
    let r = tokio::time::timeout(CANCEL_AFTER, admin.move_replica(req)).await;
    eprintln!("MoveReplica, given up after {CANCEL_AFTER:?}: {r:?}");

    // The move completes: the shard's replicas include the metadata leader,
    // not the source, and no operation is left.
    loop {
        let ops = admin
            .list_operations(c.admin_request(ListOperationsRequest {}))
            .await
            .map(|r| r.into_inner());
        let shards = admin
            .list_shards(c.admin_request(ListShardsRequest {}))
            .await
            .map(|r| r.into_inner());
        if let (Ok(ops), Ok(shards)) = (&ops, &shards) {
            let s = shards.shards.iter().find(|s| s.id == id);
            let moved = s.is_some_and(|s| s.replicas.contains(&meta) && !s.replicas.contains(&from));
            if moved && ops.operations.is_empty() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the move of shard {id} to node {meta} did not complete: {ops:?} {shards:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
