//! TLS and Admin authentication: a cluster with mutual TLS between every
//! party and an admin token. Clients with a CA-signed certificate work
//! (peers and forwarding run over TLS too); plaintext and certificate-less
//! clients are refused; Admin calls without the token get UNAUTHENTICATED.

mod common;

use std::time::Duration;
use std::time::Instant;

use common::ClientTls;
use common::Cluster;
use common::Opts;
use rcgen::BasicConstraints;
use rcgen::CertificateParams;
use rcgen::IsCa;
use rcgen::KeyPair;
use ringkv_proto::v1::admin_client::AdminClient;
use ringkv_proto::v1::kv_client::KvClient;
use ringkv_proto::v1::ClusterStatusRequest;
use ringkv_proto::v1::ErrorCode;
use ringkv_proto::v1::GetRequest;
use ringkv_proto::v1::PutRequest;

const TOKEN: &str = "test-admin-token-0123456789";

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
        node: issue(vec!["127.0.0.1".into(), "localhost".into()]),
        client: issue(vec!["ringkv-test-client".into()]),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_admin_token() {
    let pki = pki();
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write pem");
        p.display().to_string()
    };
    let (ca, cert, key, token) = (
        write("ca.pem", &pki.ca_pem),
        write("node.pem", &pki.node.0),
        write("node.key", &pki.node.1),
        write("token", &format!("{TOKEN}\n")),
    );
    let c = Cluster::start(Opts {
        shards: 4,
        extra_args: vec![
            "--tls-cert-file".into(),
            cert,
            "--tls-key-file".into(),
            key,
            "--tls-ca-file".into(),
            ca,
            "--tls-require-client-cert".into(),
            "--admin-token-file".into(),
            token,
        ],
        tls: Some(ClientTls {
            ca_pem: pki.ca_pem.clone(),
            identity: Some(pki.client.clone()),
            admin_token: Some(TOKEN.into()),
        }),
        ..Opts::default()
    })
    .await;

    // A TLS client with a certificate: every key on every node works, so
    // forwarding between nodes runs over mutual TLS as well.
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..20 {
        let k = format!("tls-{i}");
        c.put_retry(k.as_bytes(), b"v", deadline)
            .await
            .unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    for id in 1..=3 {
        let mut kv = c.kv(id).await.expect("tls connect");
        for i in 0..20 {
            let r = kv
                .get(GetRequest {
                    header: None,
                    key: format!("tls-{i}").into_bytes(),
                })
                .await
                .expect("get over TLS")
                .into_inner();
            assert!(r.found);
        }
    }

    // Plaintext is refused.
    let plain = format!("http://{}", c.addr(1));
    let refused = match tonic::transport::Endpoint::from_shared(plain)
        .expect("uri")
        .connect()
        .await
    {
        Err(_) => true,
        Ok(ch) => KvClient::new(ch)
            .put(PutRequest {
                header: None,
                key: b"x".to_vec(),
                value: b"y".to_vec(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "a plaintext client was served");

    // TLS without a client certificate is refused (mutual TLS).
    let no_cert =
        tonic::transport::ClientTlsConfig::new().ca_certificate(tonic::transport::Certificate::from_pem(&pki.ca_pem));
    let ep = tonic::transport::Endpoint::from_shared(format!("https://{}", c.addr(1)))
        .expect("uri")
        .tls_config(no_cert)
        .expect("tls config");
    let refused = match ep.connect().await {
        Err(_) => true,
        Ok(ch) => KvClient::new(ch)
            .get(GetRequest {
                header: None,
                key: b"tls-0".to_vec(),
            })
            .await
            .is_err(),
    };
    assert!(refused, "a client without a certificate was served");

    // Admin: no token or a wrong one -> UNAUTHENTICATED; the token -> OK.
    let ch = c.channel(2).await.expect("connect");
    let err = AdminClient::new(ch.clone())
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect_err("admin without token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err:?}");
    assert_eq!(common::error_detail(&err).code, ErrorCode::Unauthenticated as i32);
    let mut wrong = tonic::Request::new(ClusterStatusRequest {});
    wrong
        .metadata_mut()
        .insert("authorization", "Bearer not-the-token-at-all".parse().unwrap());
    let err = AdminClient::new(ch.clone())
        .cluster_status(wrong)
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), tonic::Code::Unauthenticated);
    let st = AdminClient::new(ch)
        .cluster_status(c.admin_request(ClusterStatusRequest {}))
        .await
        .expect("admin with token")
        .into_inner();
    assert_eq!(st.nodes.len(), 3);
}
