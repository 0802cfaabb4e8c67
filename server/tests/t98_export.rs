//! Admin/ExportShard: each shard's leader streams a consistent, key-ordered,
//! crc-checked copy of the shard; together the shards hold every key.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::BatchPutRequest;
use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::ExportShardRequest;
use ringkv_proto::v1::KeyValue;

const KEYS: usize = 3_000;
const SHARDS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_every_shard_from_its_leader() {
    let seed = common::seed(98);
    let c = Cluster::start(Opts {
        shards: SHARDS,
        ..Opts::default()
    })
    .await;
    let mut want = BTreeMap::new();
    for i in 0..KEYS {
        // Values up to ~3 KiB so a shard spans several 1 MiB chunks.
        want.insert(
            format!("exp-{i:05}").into_bytes(),
            vec![(i % 251) as u8; (i * 7 + seed as usize) % 3000],
        );
    }
    let pairs: Vec<KeyValue> = want
        .iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: v.clone(),
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    for batch in pairs.chunks(500) {
        c.on_any_node(deadline, |mut kv| {
            let req = BatchPutRequest {
                header: None,
                pairs: batch.to_vec(),
            };
            async move {
                let r = kv.batch_put(req).await?.into_inner();
                match r.results.iter().find(|k| k.error.is_some()) {
                    Some(bad) => Err(tonic::Status::unavailable(format!("{:?}", bad.error))),
                    None => Ok(()),
                }
            }
        })
        .await
        .expect("batch put");
    }

    let mut got = BTreeMap::new();
    for shard in 1..=u64::from(SHARDS) {
        let leader = c.leader_of(shard).await.expect("leader");
        let follower = (1..=3).find(|n| *n != leader).expect("a follower");
        let err = c
            .admin(follower)
            .await
            .expect("connect")
            .export_shard(ExportShardRequest { shard_id: shard })
            .await
            .expect_err("a follower does not export");
        assert_eq!(common::error_detail(&err).code, ErrorCode::NotLeader as i32, "{err:?}");

        let mut stream = c
            .admin(leader)
            .await
            .expect("connect")
            .export_shard(ExportShardRequest { shard_id: shard })
            .await
            .expect("export")
            .into_inner();
        let (mut chunks, mut last_seen, mut prev_key) = (0, false, Vec::new());
        while let Some(chunk) = stream.message().await.expect("export stream") {
            assert!(!last_seen, "chunk after the last one");
            assert_eq!(chunk.shard_id, shard);
            assert_eq!(
                chunk.crc32,
                ringkv_proto::export_chunk_crc(&chunk.pairs),
                "crc of chunk {chunks}"
            );
            for p in &chunk.pairs {
                assert!(p.key > prev_key, "keys out of order in shard {shard}");
                prev_key = p.key.clone();
                assert!(
                    got.insert(p.key.clone(), p.value.clone()).is_none(),
                    "key in two shards"
                );
            }
            last_seen = chunk.last;
            chunks += 1;
        }
        assert!(last_seen, "shard {shard} export ended without its last chunk");
        eprintln!("shard {shard}: {chunks} chunks from leader {leader}");
    }
    assert_eq!(got.len(), want.len(), "exported key count");
    assert!(got == want, "exported data differs from what was written");
}
