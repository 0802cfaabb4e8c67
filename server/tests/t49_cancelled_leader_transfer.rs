//! A leadership hand-off whose caller gives up must not leave the leader
//! half-way: `transfer_leader` stops heartbeats and registers the hand-off
//! (requests to the shard are refused while it runs), then waits out the
//! followers' lease before the target campaigns. When the RPC that started
//! it is dropped during that wait (the placement driver's deadline passed,
//! say, because the target was paused), the leader must take requests and
//! send heartbeats again at once. Before the fix it kept refusing the
//! shard's requests for as long as it led it.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::raft_transport_client::RaftTransportClient;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::MembershipAction;
use ringkv_proto::v1::ShardMembershipRequest;

const SHARDS: u32 = 4;
const SHARD: u64 = 1;
/// How long the hand-off runs before its caller gives up: well inside the
/// lease wait (the harness's `election_timeout_ms_max`, 3 s).
const CANCEL_AFTER: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_hand_off_leaves_the_leader_serving() {
    let seed = common::seed(49);
    let c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let key = common::key_in_shard(&format!("t49-{seed}"), SHARD, SHARDS);
    c.put_retry(&key, b"before", Instant::now() + Duration::from_secs(120))
        .await
        .expect("put");
    let leader = c.leader_of(SHARD).await.expect("shard leader");
    let to = c.nodes.keys().copied().find(|&id| id != leader).expect("another voter");

    let channel = c.channel(leader).await.expect("channel to the leader");
    let mut raft = RaftTransportClient::new(channel);
    let mut req = tonic::Request::new(ShardMembershipRequest {
        shard_id: SHARD,
        action: MembershipAction::TransferLeader as i32,
        nodes: vec![to],
        addr: String::new(),
        split_token: 0,
    });
    req.set_timeout(CANCEL_AFTER);
    let started = Instant::now();
    let r = tokio::time::timeout(CANCEL_AFTER, raft.shard_membership(req)).await;
    assert!(
        !matches!(r, Ok(Ok(_))),
        "the hand-off finished within {CANCEL_AFTER:?} ({r:?}): the test missed the lease wait"
    );
    eprintln!(
        "hand-off of shard {SHARD} from node {leader} to node {to} given up after {:?}: {r:?}",
        started.elapsed()
    );

    // Right away, before any follower's election timer (1.5 s without
    // heartbeats) can fire: the leader still leads and must serve.
    let mut kv = c.kv(leader).await.expect("kv");
    let mut get = tonic::Request::new(GetRequest {
        header: None,
        key: key.clone(),
    });
    get.set_timeout(Duration::from_secs(10));
    let got = kv.get(get).await;
    let got = got.unwrap_or_else(|s| {
        panic!(
            "seed {seed}: node {leader} refused a read after the hand-off was given up: {:?} {}",
            s.code(),
            s.message()
        )
    });
    let got = got.into_inner();
    assert!(got.found && got.value == b"before", "seed {seed}: {got:?}");
}
