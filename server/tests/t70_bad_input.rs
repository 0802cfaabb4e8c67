//! Oversized, empty and malformed inputs get the documented errors: a gRPC
//! status with the right code, an encoded `ErrorDetail` naming the limit, and
//! the `ringkv-error-code` trailer. Garbage on the gRPC port and junk Raft
//! payloads from a "peer" never take a node down.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;
use ringkv_proto::v1::compare_and_swap_request::Action;
use ringkv_proto::v1::compare_and_swap_request::Expected;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::raft_transport_client::RaftTransportClient;
use ringkv_proto::v1::*;
use ringkv_proto::ERROR_CODE_METADATA_KEY;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tonic::transport::Channel;
use tonic::Code;
use tonic::Status;

const KEY_BYTES_MAX: u64 = 4096;
const VALUE_BYTES_MAX: u64 = 1024 * 1024;
const BATCH_KEYS_MAX: u64 = 1000;
const SCAN_LIMIT_MAX: u64 = 10_000;
const CLIENT_ID_BYTES: u64 = 16;

/// Deterministic junk bytes (an xorshift stream).
fn junk(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Checks a failed call: gRPC code, `ErrorDetail.code` and the trailer.
fn expect_err<T: std::fmt::Debug>(
    what: &str,
    res: Result<tonic::Response<T>, Status>,
    grpc: Code,
    code: ErrorCode,
) -> ErrorDetail {
    let status = match res {
        Ok(r) => panic!("{what}: expected {grpc:?}/{code:?}, got success {:?}", r.into_inner()),
        Err(s) => s,
    };
    assert_eq!(
        status.code(),
        grpc,
        "{what}: gRPC code (message: {:?})",
        status.message()
    );
    assert!(
        !status.details().is_empty(),
        "{what}: status has no details (message: {:?})",
        status.message()
    );
    // Details are a `google.rpc.Status` carrying one `ringkv.v1.ErrorDetail`.
    let detail = ringkv_proto::decode_error_detail(status.details()).unwrap_or_else(|| {
        panic!(
            "{what}: status details hold no ringkv.v1.ErrorDetail: {:02x?}",
            status.details()
        )
    });
    assert_eq!(
        detail.code,
        code as i32,
        "{what}: ErrorDetail.code is {:?}, detail {detail:?}",
        ErrorCode::try_from(detail.code)
    );
    let trailer = status.metadata().get(ERROR_CODE_METADATA_KEY).unwrap_or_else(|| {
        panic!(
            "{what}: no `{ERROR_CODE_METADATA_KEY}` trailer; metadata {:?}",
            status.metadata()
        )
    });
    assert_eq!(
        trailer.to_str().ok(),
        Some(code.as_str_name()),
        "{what}: `{ERROR_CODE_METADATA_KEY}` trailer"
    );
    eprintln!("{what}: {:?} {:?} ok", status.code(), status.message());
    detail
}

/// Checks an INVALID_ARGUMENT naming `limit` (and its values when given).
fn expect_limit<T: std::fmt::Debug>(
    what: &str,
    res: Result<tonic::Response<T>, Status>,
    limit: &str,
    values: Option<(u64, u64)>,
) {
    let d = expect_err(what, res, Code::InvalidArgument, ErrorCode::InvalidArgument);
    assert_eq!(d.limit_name, limit, "{what}: ErrorDetail.limit_name, detail {d:?}");
    if let Some((limit_value, actual_value)) = values {
        assert_eq!(
            d.limit_value, limit_value,
            "{what}: ErrorDetail.limit_value, detail {d:?}"
        );
        assert_eq!(
            d.actual_value, actual_value,
            "{what}: ErrorDetail.actual_value, detail {d:?}"
        );
    }
}

fn invalid<T: std::fmt::Debug>(what: &str, res: Result<tonic::Response<T>, Status>) {
    expect_err(what, res, Code::InvalidArgument, ErrorCode::InvalidArgument);
}

fn get(key: &[u8]) -> GetRequest {
    GetRequest {
        header: None,
        key: key.to_vec(),
    }
}

fn put(key: &[u8], value: &[u8]) -> PutRequest {
    PutRequest {
        header: None,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn session(client_id: Vec<u8>, sequence: u64) -> Option<RequestHeader> {
    Some(RequestHeader {
        client_id,
        sequence,
        ..RequestHeader::default()
    })
}

fn for_shard(shard_id: u64) -> Option<RequestHeader> {
    Some(RequestHeader {
        shard_id,
        ..RequestHeader::default()
    })
}

async fn kv_client(c: &Cluster, id: u64) -> KvClient<Channel> {
    c.kv(id)
        .await
        .unwrap_or_else(|| panic!("connect to node {id}"))
        .max_decoding_message_size(32 * 1024 * 1024)
}

/// Every Kv error documented for bad input, sent to node `id`.
async fn documented_errors(c: &Cluster, id: u64, shards: u32) {
    eprintln!("--- documented errors on node {id} ---");
    let mut kv = kv_client(c, id).await;
    let long_key = vec![b'k'; KEY_BYTES_MAX as usize + 1];
    let key = format!("t70-key-{id}").into_bytes();

    // Keys: empty and one byte too long, on every single-key method.
    expect_limit("Get empty key", kv.get(get(b"")).await, "key_bytes_min", None);
    expect_limit("Put empty key", kv.put(put(b"", b"v")).await, "key_bytes_min", None);
    let del = |k: &[u8]| DeleteRequest {
        header: None,
        key: k.to_vec(),
    };
    expect_limit("Delete empty key", kv.delete(del(b"")).await, "key_bytes_min", None);
    let too_long = Some((KEY_BYTES_MAX, KEY_BYTES_MAX + 1));
    expect_limit(
        "Get 4097-byte key",
        kv.get(get(&long_key)).await,
        "key_bytes_max",
        too_long,
    );
    expect_limit(
        "Put 4097-byte key",
        kv.put(put(&long_key, b"v")).await,
        "key_bytes_max",
        too_long,
    );
    expect_limit(
        "Delete 4097-byte key",
        kv.delete(del(&long_key)).await,
        "key_bytes_max",
        too_long,
    );

    // Values: one byte over 1 MiB.
    let big = vec![b'v'; VALUE_BYTES_MAX as usize + 1];
    let over = Some((VALUE_BYTES_MAX, VALUE_BYTES_MAX + 1));
    expect_limit(
        "Put 1 MiB + 1 value",
        kv.put(put(&key, &big)).await,
        "value_bytes_max",
        over,
    );
    let res = kv
        .batch_put(BatchPutRequest {
            header: None,
            pairs: vec![KeyValue {
                key: key.clone(),
                value: big.clone(),
            }],
        })
        .await;
    expect_limit("BatchPut with a 1 MiB + 1 value", res, "value_bytes_max", over);
    let res = kv
        .compare_and_swap(CompareAndSwapRequest {
            header: None,
            key: key.clone(),
            expected: Some(Expected::ExpectAbsent(true)),
            action: Some(Action::NewValue(big.clone())),
        })
        .await;
    expect_limit("CompareAndSwap new_value 1 MiB + 1", res, "value_bytes_max", over);
    drop(big);

    // Batches: 1001 keys and no keys.
    let many: Vec<Vec<u8>> = (0..=BATCH_KEYS_MAX)
        .map(|i| format!("t70-batch-{i}").into_bytes())
        .collect();
    let too_many = Some((BATCH_KEYS_MAX, BATCH_KEYS_MAX + 1));
    let res = kv
        .batch_get(BatchGetRequest {
            header: None,
            keys: many.clone(),
        })
        .await;
    expect_limit("BatchGet 1001 keys", res, "batch_keys_max", too_many);
    let pairs: Vec<KeyValue> = many
        .iter()
        .map(|k| KeyValue {
            key: k.clone(),
            value: b"v".to_vec(),
        })
        .collect();
    let res = kv.batch_put(BatchPutRequest { header: None, pairs }).await;
    expect_limit("BatchPut 1001 keys", res, "batch_keys_max", too_many);
    invalid(
        "BatchPut no pairs",
        kv.batch_put(BatchPutRequest {
            header: None,
            pairs: vec![],
        })
        .await,
    );
    invalid(
        "BatchGet no keys",
        kv.batch_get(BatchGetRequest {
            header: None,
            keys: vec![],
        })
        .await,
    );
    let res = kv
        .batch_get(BatchGetRequest {
            header: None,
            keys: vec![b"t70-ok".to_vec(), vec![]],
        })
        .await;
    expect_limit("BatchGet with an empty key", res, "key_bytes_min", None);

    // Sessions: a 15-byte client id; a 16-byte one with sequence 0.
    let mut req = put(&key, b"v");
    req.header = session(vec![7; 15], 1);
    expect_limit(
        "Put client_id 15 bytes",
        kv.put(req).await,
        "client_id_bytes",
        Some((CLIENT_ID_BYTES, 15)),
    );
    let mut req = put(&key, b"v");
    req.header = session(vec![7; 17], 1);
    expect_limit(
        "Put client_id 17 bytes",
        kv.put(req).await,
        "client_id_bytes",
        Some((CLIENT_ID_BYTES, 17)),
    );
    let mut req = put(&key, b"v");
    req.header = session(vec![7; 16], 0);
    invalid("Put client_id 16 bytes, sequence 0", kv.put(req).await);
    let req = DeleteRequest {
        header: session(vec![7; 16], 0),
        key: key.clone(),
    };
    invalid("Delete client_id 16 bytes, sequence 0", kv.delete(req).await);

    // CompareAndSwap without condition and/or action.
    let cas = |expected, action| CompareAndSwapRequest {
        header: None,
        key: key.clone(),
        expected,
        action,
    };
    invalid(
        "CompareAndSwap without expected and action",
        kv.compare_and_swap(cas(None, None)).await,
    );
    let res = kv
        .compare_and_swap(cas(None, Some(Action::NewValue(b"v".to_vec()))))
        .await;
    invalid("CompareAndSwap without expected", res);
    let res = kv.compare_and_swap(cas(Some(Expected::ExpectAbsent(true)), None)).await;
    invalid("CompareAndSwap without action", res);

    // Scan: limit over the maximum, malformed continuation.
    let scan = |limit, continuation: Vec<u8>| ScanRequest {
        header: None,
        start_key: vec![],
        end_key: vec![],
        limit,
        continuation,
    };
    let res = kv.scan(scan(SCAN_LIMIT_MAX as u32 + 1, vec![])).await;
    expect_limit(
        "Scan limit 10001",
        res,
        "scan_limit_max",
        Some((SCAN_LIMIT_MAX, SCAN_LIMIT_MAX + 1)),
    );
    invalid(
        "Scan continuation [ff 01 02]",
        kv.scan(scan(10, vec![0xFF, 1, 2])).await,
    );

    // Routing: the caller names a shard that does not own the key.
    let owner = 2u64;
    let k = common::key_in_shard(&format!("t70-route-{id}"), owner, shards);
    let other = 3u64;
    let mut req = get(&k);
    req.header = for_shard(other);
    let d = expect_err(
        "Get with header.shard_id of another shard",
        kv.get(req).await,
        Code::FailedPrecondition,
        ErrorCode::WrongShard,
    );
    eprintln!("WRONG_SHARD detail: {d:?}");
    let mut req = put(&k, b"v");
    req.header = for_shard(other);
    expect_err(
        "Put with header.shard_id of another shard",
        kv.put(req).await,
        Code::FailedPrecondition,
        ErrorCode::WrongShard,
    );
}

/// Sends 4 KiB of junk on a raw TCP connection (without and with the
/// HTTP/2 preface) and closes it.
async fn raw_garbage(addr: &str, seed: u64) {
    for (i, preface) in [&b""[..], &b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..]]
        .into_iter()
        .enumerate()
    {
        let mut s = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("tcp connect {addr}: {e}"));
        let mut bytes = preface.to_vec();
        bytes.extend(junk(4096, seed + i as u64));
        // The server may close the connection early; a write error is fine.
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
        let mut buf = vec![0u8; 64 * 1024];
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Ok(n) = s.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        eprintln!(
            "sent {} junk bytes to {addr} (preface: {})",
            bytes.len(),
            !preface.is_empty()
        );
    }
}

/// A "peer" that speaks garbage on the Raft transport.
async fn junk_raft_batch(c: &Cluster, id: u64, seed: u64) {
    let ch = c.channel(id).await.unwrap_or_else(|| panic!("connect to node {id}"));
    let mut raft = RaftTransportClient::new(ch);
    // Long junk whose byte 16 (where a bincode bool would be) is invalid,
    // so it can never decode into a real Raft request.
    let mut long = junk(4096, seed);
    long[16] = 0xAB;
    let messages = vec![
        RaftMessage {
            shard_id: 1,
            kind: RaftRpcKind::AppendEntries as i32,
            payload: long.clone(),
        },
        RaftMessage {
            shard_id: 1,
            kind: RaftRpcKind::AppendEntries as i32,
            payload: vec![0xAB; 7],
        },
        RaftMessage {
            shard_id: 1,
            kind: RaftRpcKind::Vote as i32,
            payload: vec![0xCD; 5],
        },
        RaftMessage {
            shard_id: 1,
            kind: RaftRpcKind::AppendEntries as i32,
            payload: vec![],
        },
        RaftMessage {
            shard_id: 1,
            kind: 77,
            payload: long,
        },
        RaftMessage {
            shard_id: 999,
            kind: RaftRpcKind::AppendEntries as i32,
            payload: vec![1, 2, 3],
        },
    ];
    let n = messages.len();
    let req = RaftBatchRequest {
        from_node: 42,
        to_node: id,
        messages,
    };
    let resp = raft
        .batch(req.clone())
        .await
        .unwrap_or_else(|s| {
            panic!("node {id}: RaftTransport/Batch of junk failed instead of answering per message: {s:?}")
        })
        .into_inner();
    assert_eq!(resp.replies.len(), n, "node {id}: one reply per junk message: {resp:?}");
    for (i, r) in resp.replies.iter().enumerate() {
        let e = r
            .error
            .as_ref()
            .unwrap_or_else(|| panic!("node {id}: junk message {i} got no error detail: {r:?}"));
        assert!(
            r.payload.is_empty(),
            "node {id}: junk message {i} has an error and a payload: {r:?}"
        );
        eprintln!(
            "node {id}: junk raft message {i}: {:?} {}",
            ErrorCode::try_from(e.code),
            e.message
        );
        assert_ne!(
            e.code,
            ErrorCode::Unspecified as i32,
            "node {id}: junk message {i}: {e:?}"
        );
    }
    let last = resp.replies.last().and_then(|r| r.error.as_ref()).map(|e| e.code);
    assert_eq!(
        last,
        Some(ErrorCode::UnknownShard as i32),
        "node {id}: message for shard 999"
    );
    // Misaddressed batch: refused as a whole, no crash.
    let mut wrong = req;
    wrong.to_node = id + 100;
    let res = raft.batch(wrong).await;
    assert!(
        res.is_err(),
        "node {id}: batch addressed to another node was accepted: {res:?}"
    );
    // A junk snapshot chunk: bad crc, then good crc over junk.
    let data = junk(1024, seed + 1);
    let mut chunk = SnapshotChunk {
        from_node: 42,
        to_node: id,
        shard_id: 1,
        request: junk(64, seed + 2),
        data: data.clone(),
        crc32: 0,
    };
    chunk.crc32 = !crc32fast::hash(&data);
    let r = raft
        .install_snapshot_chunk(chunk.clone())
        .await
        .unwrap_or_else(|s| panic!("node {id}: InstallSnapshotChunk with bad crc: {s:?}"))
        .into_inner();
    assert!(
        r.error.is_some(),
        "node {id}: snapshot chunk with a bad crc32 was not refused: {r:?}"
    );
    chunk.crc32 = crc32fast::hash(&data);
    chunk.request[16] = 0xAB;
    let r = raft
        .install_snapshot_chunk(chunk)
        .await
        .unwrap_or_else(|s| panic!("node {id}: InstallSnapshotChunk with junk request: {s:?}"))
        .into_inner();
    assert!(
        r.error.is_some(),
        "node {id}: snapshot chunk with a junk request was not refused: {r:?}"
    );
}

/// Put then linearizable Get of `value` through any node, retried until
/// `deadline` (leadership may move while the cluster is busy).
async fn round_trip(c: &Cluster, key: &[u8], value: &[u8], deadline: Instant) {
    let what = String::from_utf8_lossy(&key[..key.len().min(40)]).to_string();
    let mut last = String::new();
    let mut attempt = 0usize;
    loop {
        let nodes = c.running();
        let id = nodes[attempt % nodes.len()];
        attempt += 1;
        if let Some(kv) = c.kv(id).await {
            let mut kv = kv.max_decoding_message_size(32 * 1024 * 1024);
            match kv.put(put(key, value)).await {
                Err(s) => last = format!("put on node {id}: {:?} {}", s.code(), s.message()),
                Ok(_) => match kv.get(get(key)).await {
                    Err(s) => last = format!("get on node {id}: {:?} {}", s.code(), s.message()),
                    Ok(r) => {
                        let r = r.into_inner();
                        assert!(r.found, "{what}: not found right after a successful put (node {id})");
                        assert_eq!(
                            r.value.len(),
                            value.len(),
                            "{what}: value length read back from node {id}"
                        );
                        assert!(r.value == value, "{what}: value read back from node {id} differs");
                        return;
                    }
                },
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: no put/get round trip before the deadline; last error: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_documented_errors_and_never_crashes() {
    let seed = common::seed(70);
    let shards = 4;
    let mut c = Cluster::start(Opts {
        shards,
        ..Opts::default()
    })
    .await;
    let ids: Vec<u64> = c.nodes.keys().copied().collect();
    for id in &ids {
        documented_errors(&c, *id, shards).await;
    }

    // A value of exactly 1 MiB is accepted and reads back whole.
    let deadline = Instant::now() + Duration::from_secs(120);
    let exact = junk(VALUE_BYTES_MAX as usize, seed);
    round_trip(&c, b"t70-exactly-1MiB", &exact, deadline).await;
    // A key of exactly 4096 bytes too.
    let key_max = vec![b'x'; KEY_BYTES_MAX as usize];
    round_trip(&c, &key_max, b"max-key", deadline).await;

    // Garbage on the wire, then junk from a fake peer.
    for id in &ids {
        raw_garbage(c.addr(*id), seed + *id).await;
        junk_raft_batch(&c, *id, seed + *id).await;
    }

    // Every node is still alive and answering, and nothing panicked.
    for id in &ids {
        let n = c.nodes.get_mut(id).expect("known node");
        let exited = n.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten());
        assert!(exited.is_none(), "node {id} exited: {exited:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            if let Some(st) = c.status(*id).await {
                assert_eq!(st.served_by, *id, "ClusterStatus answered by the wrong node");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} does not answer ClusterStatus after bad input"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    for s in 1..=u64::from(shards) {
        let k = common::key_in_shard("t70-after", s, shards);
        round_trip(&c, &k, format!("after-{seed}-{s}").as_bytes(), deadline).await;
    }
    for id in &ids {
        let text = std::fs::read_to_string(&c.nodes[id].log).unwrap_or_default();
        let panics: Vec<&str> = text.lines().filter(|l| l.contains("panicked")).collect();
        assert!(panics.is_empty(), "node {id} log shows a panic: {panics:?}");
    }
}
