//! `ringkv-client` and the `ringkv` CLI against a cluster with mutual TLS
//! and an admin token: the library with a CA and client certificate reads
//! and writes every shard; the CLI with `--tls-*` and `--admin-token-file`
//! runs put/get, `cluster status`, a backup (ExportShard over TLS with the
//! token) and a forced restore of it; without a client certificate or
//! without the token it fails with one line and its exit code.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;

use common::ClientTls;
use common::Cluster;
use common::Opts;
use futures::TryStreamExt;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::IsCa;
use rcgen::KeyPair;
use ringkv_client::Client;
use ringkv_client::Config;
use ringkv_client::ErrorKind;
use ringkv_client::TlsConfig;

const TOKEN: &str = "t60-admin-token-0123456789";
const KEYS: usize = 200;

struct Pki {
    ca_pem: String,
    node: (String, String),
    client: (String, String),
}

/// A test CA, a node certificate for 127.0.0.1 and a client certificate.
fn pki() -> Pki {
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca cert");
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().expect("key");
        let params = CertificateParams::new(names).expect("params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("sign");
        (cert.pem(), key.serialize_pem())
    };
    Pki {
        ca_pem: ca.pem(),
        node: issue(vec!["127.0.0.1".into()]),
        client: issue(vec!["ringkv-t60-client".into()]),
    }
}

fn ringkv(endpoints: &str, flags: &[&str], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["--endpoints", endpoints, "--timeout", "30s"])
        .args(flags)
        .args(args)
        .env_remove("RINGKV_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run ringkv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn path(p: &Path) -> &str {
    p.to_str().expect("utf8 path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_cli_over_mutual_tls_with_an_admin_token() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write file");
        p
    };
    let ca = write("ca.pem", &pki.ca_pem);
    let node_cert = write("node.pem", &pki.node.0);
    let node_key = write("node.key", &pki.node.1);
    let client_cert = write("client.pem", &pki.client.0);
    let client_key = write("client.key", &pki.client.1);
    let token = write("token", &format!("{TOKEN}\n"));
    let c = Cluster::start(Opts {
        shards: 4,
        extra_args: vec![
            "--tls-cert-file".into(),
            path(&node_cert).into(),
            "--tls-key-file".into(),
            path(&node_key).into(),
            "--tls-ca-file".into(),
            path(&ca).into(),
            "--tls-require-client-cert".into(),
            "--admin-token-file".into(),
            path(&token).into(),
        ],
        tls: Some(ClientTls {
            ca_pem: pki.ca_pem.clone(),
            identity: Some(pki.client.clone()),
            admin_token: Some(TOKEN.into()),
        }),
        ..Opts::default()
    })
    .await;
    let addrs: Vec<String> = c.nodes.values().map(|n| n.addr.clone()).collect();
    let eps = addrs.join(",");

    // The library: TLS from PEM files, every shard reachable.
    let tls = TlsConfig::from_pem_files(&ca, Some((&client_cert, &client_key))).expect("tls files");
    let cfg = Config {
        tls: Some(tls.clone()),
        admin_token: Some(TOKEN.into()),
        request_timeout: Duration::from_secs(60),
        max_attempts: 200,
        ..Config::default()
    };
    let client = Client::connect_with(&addrs, cfg.clone())
        .await
        .expect("connect over TLS");
    let want: BTreeMap<Vec<u8>, Vec<u8>> = (0..KEYS)
        .map(|i| (format!("t60-{i:04}").into_bytes(), vec![(i % 251) as u8; i % 50]))
        .collect();
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    client.batch_put(&pairs).await.expect("batch put over TLS");
    client.put("t60-single", "v").await.expect("put over TLS");
    assert_eq!(client.get("t60-single").await.expect("get"), Some(b"v".to_vec()));
    let got: Vec<(Vec<u8>, Vec<u8>)> = client.scan("t60-0", "t60-9").try_collect().await.expect("scan");
    assert_eq!(got, pairs, "scan over TLS");

    // Without the token the Admin API (routing) refuses: a typed error.
    let no_token = Config {
        admin_token: None,
        ..cfg.clone()
    };
    let err = Client::connect_with(&addrs, no_token).await.expect_err("no token");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    // A plaintext client reaches nobody.
    let plain = Config {
        tls: None,
        connect_timeout: Duration::from_secs(2),
        ..cfg.clone()
    };
    assert!(Client::connect_with(&addrs, plain).await.is_err(), "plaintext served");

    // The CLI with every TLS flag and the token file.
    let flags = [
        "--tls-ca-file",
        path(&ca),
        "--tls-cert-file",
        path(&client_cert),
        "--tls-key-file",
        path(&client_key),
        "--admin-token-file",
        path(&token),
    ];
    let o = ringkv(&eps, &flags, &["put", "cli-key", "over tls"]);
    assert_code(&o, 0, "put over TLS");
    let o = ringkv(&eps, &flags, &["get", "cli-key"]);
    assert_code(&o, 0, "get over TLS");
    assert_eq!(text(&o.stdout), "over tls\n");
    let o = ringkv(&eps, &flags, &["--json", "cluster", "status"]);
    assert_code(&o, 0, "cluster status over TLS");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["nodes"].as_array().expect("nodes").len(), 3);

    // Backup over TLS (ExportShard needs the token), then a forced restore.
    let backup = dir.path().join("backup");
    let o = ringkv(&eps, &flags, &["backup", path(&backup)]);
    assert_code(&o, 0, "backup over TLS");
    let total = KEYS + 2;
    assert!(
        text(&o.stdout).contains(&format!("backed up {total} pairs")),
        "{}",
        text(&o.stdout)
    );
    let o = ringkv(&eps, &flags, &["restore", path(&backup)]);
    assert_code(&o, 1, "restore into this non-empty cluster");
    let o = ringkv(&eps, &flags, &["restore", path(&backup), "--force"]);
    assert_code(&o, 0, "forced restore over TLS");
    assert!(
        text(&o.stdout).contains(&format!("restored {total} pairs")),
        "{}",
        text(&o.stdout)
    );

    // No client certificate: the handshake fails, nothing reachable (3).
    let o = ringkv(
        &eps,
        &["--tls-ca-file", path(&ca), "--admin-token-file", path(&token)],
        &["get", "cli-key"],
    );
    assert_code(&o, 3, "no client certificate");
    assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
    // No token: unauthenticated (6).
    let o = ringkv(&eps, &flags[..6], &["get", "cli-key"]);
    assert_code(&o, 6, "no admin token");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("unauthenticated"), "{err}");
    // Certificate without its key: usage (2).
    let o = ringkv(
        &eps,
        &["--tls-ca-file", path(&ca), "--tls-cert-file", path(&client_cert)],
        &["get", "cli-key"],
    );
    assert_code(&o, 2, "certificate without key");
}
