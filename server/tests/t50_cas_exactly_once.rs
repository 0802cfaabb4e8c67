//! A CompareAndSwap retried with the same client id and sequence after a
//! leader kill is applied once: the retry is answered from the shard's
//! session table.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::CompareAndSwapRequest;
use ringkv_proto::v1::CompareAndSwapResponse;
use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::RequestHeader;

const INCREMENTS: u64 = 20;

fn cas(client_id: &[u8; 16], seq: u64, key: &[u8], expected: Option<u64>, new: u64) -> CompareAndSwapRequest {
    CompareAndSwapRequest {
        header: Some(RequestHeader {
            client_id: client_id.to_vec(),
            sequence: seq,
            ..RequestHeader::default()
        }),
        key: key.to_vec(),
        expected: Some(match expected {
            Some(v) => Expected::ExpectedValue(v.to_string().into_bytes()),
            None => Expected::ExpectAbsent(true),
        }),
        action: Some(Action::NewValue(new.to_string().into_bytes())),
    }
}

/// Sends `req` to running nodes until one answers, or the deadline passes.
async fn send(
    c: &Cluster,
    req: &CompareAndSwapRequest,
    deadline: Instant,
) -> Result<CompareAndSwapResponse, tonic::Status> {
    let mut i = 0usize;
    loop {
        let nodes = c.running();
        let id = nodes[i % nodes.len()];
        i += 1;
        let res = match c.kv(id).await {
            Some(mut kv) => kv.compare_and_swap(req.clone()).await.map(|r| r.into_inner()),
            None => Err(tonic::Status::unavailable("connect")),
        };
        match res {
            Ok(r) => return Ok(r),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => return Err(s),
            Err(s) if Instant::now() > deadline => return Err(s),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_retried_after_leader_kill_applies_once() {
    let seed = common::seed(50);
    let shards = 2;
    let mut c = Cluster::start(Opts {
        shards,
        ..Opts::default()
    })
    .await;
    let key = common::key_in_shard(&format!("t50-{seed}"), 1, shards);
    let client_id = [0x5a; 16];
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut killed = None;
    for i in 0..INCREMENTS {
        let seq = i + 1;
        let expected = (i > 0).then_some(i);
        let req = cas(&client_id, seq, &key, expected, i + 1);
        if i == INCREMENTS / 2 {
            // Kill the leader while this CAS is in flight; the outcome is
            // unknown to the client, which retries with the same sequence.
            let leader = c.leader_of(1).await.expect("leader of shard 1");
            let mut kv = c.kv(leader).await.expect("connect leader");
            let inflight = tokio::spawn({
                let req = req.clone();
                async move { kv.compare_and_swap(req).await }
            });
            c.kill(leader);
            killed = Some(leader);
            let _ = inflight.await;
        }
        let r = send(&c, &req, deadline)
            .await
            .unwrap_or_else(|s| panic!("cas seq {seq}: {s:?}"));
        assert!(r.succeeded, "cas seq {seq} did not succeed (applied twice?): {r:?}");
        // Retrying a sequence already answered returns the same result.
        let again = send(&c, &req, deadline)
            .await
            .unwrap_or_else(|s| panic!("retry seq {seq}: {s:?}"));
        assert_eq!(again.succeeded, r.succeeded, "retry of seq {seq} answered differently");
        assert_eq!(
            again.current_value, r.current_value,
            "retry of seq {seq} answered differently"
        );
    }
    let got = c.get_retry(&key, deadline).await.expect("final get");
    assert_eq!(
        got,
        Some(INCREMENTS.to_string().into_bytes()),
        "counter must equal the number of increments"
    );
    // An older sequence is refused with STALE_SEQUENCE.
    let old = cas(&client_id, 3, &key, Some(2), 3);
    let err = send(&c, &old, deadline).await.expect_err("stale sequence must fail");
    let detail = ringkv_proto::decode_error_detail(err.details()).expect("error detail");
    assert_eq!(detail.code, ErrorCode::StaleSequence as i32, "{err:?}");
    assert_eq!(detail.last_sequence, INCREMENTS);
    if let Some(k) = killed {
        c.restart(k);
        c.wait_ready().await;
    }
}
