//! Loads the node's TLS material (certificate, key, CA bundle) from the
//! files named in `[tls]` into tonic's server and client TLS settings.
//!
//! Owns only reading and checking the PEM files at startup; the gRPC server
//! (`service`) and the peer pool (`raft::network`) apply the result.

use tonic::transport::Certificate;
use tonic::transport::ClientTlsConfig;
use tonic::transport::Identity;
use tonic::transport::ServerTlsConfig;

use crate::config::TlsConfig;

/// Largest PEM file accepted.
pub const PEM_BYTES_MAX: u64 = 1024 * 1024;
/// Longest a TLS handshake may take.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;

/// Errors loading TLS files; reported once at startup.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("{what} {path} is not PEM (no '-----BEGIN' line) or is larger than {PEM_BYTES_MAX} bytes")]
    NotPem { what: &'static str, path: String },
}

/// TLS settings for serving and for connecting to peers.
#[derive(Clone)]
pub struct TlsMaterial {
    pub server: ServerTlsConfig,
    pub client: ClientTlsConfig,
}

fn read_pem(what: &'static str, path: &std::path::Path) -> Result<Vec<u8>, TlsError> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| TlsError::Read {
        what,
        path: shown.clone(),
        source,
    })?;
    if meta.len() > PEM_BYTES_MAX {
        return Err(TlsError::NotPem { what, path: shown });
    }
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: shown.clone(),
        source,
    })?;
    if !bytes.windows(10).any(|w| w == b"-----BEGIN") {
        return Err(TlsError::NotPem { what, path: shown });
    }
    Ok(bytes)
}

/// The TLS material of `cfg`, or `None` for plaintext.
pub fn load(cfg: &TlsConfig) -> Result<Option<TlsMaterial>, TlsError> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let cert = read_pem("tls.cert_file", &cfg.cert_file)?;
    let key = read_pem("tls.key_file", &cfg.key_file)?;
    let ca = Certificate::from_pem(read_pem("tls.ca_file", &cfg.ca_file)?);
    let identity = Identity::from_pem(cert, key);
    let server = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone())
        .client_auth_optional(!cfg.require_client_cert)
        .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
    let client = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .timeout(std::time::Duration::from_millis(HANDSHAKE_TIMEOUT_MS));
    Ok(Some(TlsMaterial { server, client }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plaintext_when_unset_and_clear_errors_otherwise() {
        assert!(load(&TlsConfig::default()).unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let cfg = TlsConfig {
            cert_file: junk.clone(),
            key_file: junk.clone(),
            ca_file: junk,
            require_client_cert: false,
        };
        let err = load(&cfg).err().expect("junk must be refused").to_string();
        assert!(err.contains("tls.cert_file") && err.contains("not PEM"), "{err}");
        let missing = TlsConfig {
            cert_file: dir.path().join("nope.pem"),
            ..cfg
        };
        assert!(load(&missing)
            .err()
            .expect("missing")
            .to_string()
            .contains("cannot read"));
    }
}
