//! The status port: `/metrics` is valid Prometheus text (checked with a
//! real parser) and its counters follow the traffic; `/healthz` answers.

mod common;

use std::io::Read;
use std::io::Write;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use prometheus_parse::Value;

/// One blocking HTTP/1.1 GET; returns (status line, body).
fn http_get(addr: &str, path: &str) -> (String, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect status port");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").expect("send");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("http response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

fn scrape(addr: &str) -> prometheus_parse::Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert!(status.contains("200"), "{status}");
    let lines = body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format")
}

fn counter(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.samples
        .iter()
        .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match x.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_follow_traffic() {
    let c = Cluster::start(Opts {
        shards: 4,
        status_ports: true,
        ..Opts::default()
    })
    .await;
    let addr = c.nodes[&1].status_addr.clone().expect("status port");
    let (status, body) = http_get(&addr, "/healthz");
    assert!(status.contains("200") && body == "ok\n", "{status} {body}");
    assert!(http_get(&addr, "/nope").0.contains("404"));

    let before = scrape(&addr);
    let puts = 50;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut kv = c.kv(1).await.expect("connect");
    for i in 0..puts {
        let req = ringkv_proto::v1::PutRequest {
            header: None,
            key: format!("m-{i}").into_bytes(),
            value: b"v".to_vec(),
        };
        while kv.put(req.clone()).await.is_err() {
            assert!(Instant::now() < deadline, "put m-{i} kept failing");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let bad = kv
        .get(ringkv_proto::v1::GetRequest {
            header: None,
            key: vec![],
        })
        .await;
    assert!(bad.is_err());

    let after = scrape(&addr);
    let ok_puts = |s| counter(s, "ringkv_requests_total", &[("method", "Put"), ("outcome", "ok")]);
    assert!(
        ok_puts(&after) - ok_puts(&before) >= f64::from(puts),
        "Put counter did not follow"
    );
    assert_eq!(
        counter(
            &after,
            "ringkv_requests_total",
            &[("method", "Get"), ("outcome", "INVALID_ARGUMENT")]
        ),
        1.0
    );
    let hist = after
        .samples
        .iter()
        .find(|x| x.metric == "ringkv_request_duration_seconds" && x.labels.get("method") == Some("Put"))
        .expect("Put latency histogram");
    match &hist.value {
        Value::Histogram(buckets) => {
            let inf = buckets.iter().find(|b| b.less_than.is_infinite()).expect("+Inf bucket");
            assert!(inf.count >= f64::from(puts), "{buckets:?}");
        }
        other => panic!("latency is not a histogram: {other:?}"),
    }
    assert!(counter(&after, "ringkv_wal_syncs_total", &[]) > 0.0);
    // The leaders (wherever they are) replicated the puts, and sent
    // heartbeats and commit notices (appends without entries) besides.
    let scrapes: Vec<_> = c
        .nodes
        .values()
        .map(|n| scrape(n.status_addr.as_deref().expect("status port")))
        .collect();
    let total = |name| scrapes.iter().map(|s| counter(s, name, &[])).sum::<f64>();
    let (sent, empty) = (
        total("ringkv_raft_messages_sent_total"),
        total("ringkv_raft_empty_appends_sent_total"),
    );
    assert!(empty > 0.0 && empty < sent, "sent {sent}, empty {empty}");
    assert!(total("ringkv_raft_batches_sent_total") > 0.0);
    assert_eq!(counter(&after, "ringkv_shards_hosted", &[]), 5.0, "4 shards + metadata");
    assert!(counter(&after, "ringkv_layout_epoch", &[]) >= 1.0);
    assert_eq!(
        counter(&after, "ringkv_placement_operations_in_flight", &[("kind", "move")]),
        0.0,
        "no move in flight"
    );
    for name in [
        "ringkv_raft_term",
        "ringkv_rocksdb_live_sst_bytes",
        "ringkv_resident_memory_bytes",
        "ringkv_placement_driver_active",
    ] {
        assert!(after.samples.iter().any(|x| x.metric == name), "missing {name}");
    }
}
