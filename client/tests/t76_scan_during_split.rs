//! Full scans while a split is applied and the layout does not show it yet.
//!
//! A scan fans out to every shard of the answering node's layout. Once a
//! shard has applied a split, the keys of its upper half belong to the new
//! shard, which a layout that lags the split does not list: a scan that
//! trusted the layout would silently leave those keys out. The
//! `placement.split_done_late` failpoint holds that state for 3 s on every
//! node; scans during it must return every key (the node answers
//! WRONG_SHARD until its layout catches up and the client retries), and
//! at least one must have been refused, or the test did not hit the
//! window. A background load writes other keys throughout.

#[path = "../../server/tests/common/mod.rs"]
mod common;
mod load;

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use futures::TryStreamExt;
use ringkv_proto::v1::ListShardsRequest;
use ringkv_proto::v1::SplitShardRequest;

const SHARDS: u32 = 2;
const SHARD: u64 = 1;
const KEYS: usize = 200;
/// Scans done at most, whatever the machine's speed.
const SCANS_MAX: usize = 2_000;
const TIMEOUT: Duration = Duration::from_secs(120);

/// `ringkv_requests_total` of Scan requests answered WRONG_SHARD by node
/// `node`, whose status port is `addr`.
fn scans_refused(addr: &str, node: u64) -> f64 {
    let series = format!("ringkv_requests_total{{node=\"{node}\",method=\"Scan\",outcome=\"WRONG_SHARD\"}}");
    common::metric(addr, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_while_the_layout_lags_a_split_return_every_key() {
    let mut opts = Opts {
        nodes: 3,
        shards: SHARDS,
        extra_args: ["--placement-tick-ms", "200"].map(String::from).to_vec(),
        status_ports: true,
        ..Opts::default()
    };
    // Whichever node leads the metadata group drives the split.
    for id in 1..=3 {
        opts.env.insert(
            id,
            vec![("RINGKV_FAILPOINTS".into(), "placement.split_done_late=1".into())],
        );
    }
    let c = Cluster::start(opts).await;
    let mut admin = c.rebalance_off(1).await;
    let client = load::patient_client(&c).await;
    let mut want = BTreeMap::new();
    for i in 0..KEYS {
        let (k, v) = (format!("t76-{i:04}").into_bytes(), format!("value-{i}").into_bytes());
        client.put(&k, &v).await.expect("fill");
        want.insert(k, v);
    }

    // Writes to other keys go on through the split.
    let load = load::Load::start(client.clone(), "load76", 2, common::seed(76));
    load.wait_ops(100, Duration::from_secs(60)).await;

    let mut split_admin = c.admin(1).await.expect("admin 1");
    let split_req = c.admin_request(SplitShardRequest {
        shard_id: SHARD,
        split_token: 0,
    });
    let split = tokio::spawn(async move { split_admin.split_shard(split_req).await });

    // Scan until the layout shows the new shard, then once more.
    let deadline = Instant::now() + TIMEOUT;
    let mut scans = 0usize;
    let mut listed = false;
    loop {
        let got: BTreeMap<Vec<u8>, Vec<u8>> = client
            .scan("t76-", "t76.")
            .try_collect::<Vec<_>>()
            .await
            .unwrap_or_else(|e| panic!("scan {scans}: {e}"))
            .into_iter()
            .collect();
        let missing: Vec<String> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert!(
            missing.is_empty(),
            "scan {scans} left out {} keys, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(got, want, "scan {scans} returned other pairs");
        scans += 1;
        if listed {
            break;
        }
        let shards = admin
            .list_shards(c.admin_request(ListShardsRequest {}))
            .await
            .map(|r| r.into_inner().shards.len())
            .unwrap_or(0);
        listed = shards > SHARDS as usize;
        assert!(
            scans < SCANS_MAX,
            "the split did not reach the layout in {SCANS_MAX} scans"
        );
        assert!(
            Instant::now() < deadline,
            "the split did not reach the layout in {TIMEOUT:?}"
        );
    }
    split.await.expect("split task").expect("split");
    let report = load.finish(&client).await;
    eprintln!("load: {} ops, {} keys checked", report.ops, report.keys);
    assert!(report.errors.is_empty(), "client-visible errors: {:#?}", report.errors);
    let refused: f64 = c
        .nodes
        .iter()
        .map(|(id, n)| scans_refused(n.status_addr.as_deref().expect("status port"), *id))
        .sum();
    eprintln!("{scans} scans, {refused} shard scans refused while the layout lagged the split");
    assert!(
        refused >= 1.0,
        "no scan was refused: the scans missed the window the failpoint holds open"
    );
}
