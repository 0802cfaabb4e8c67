//! One HTTP/2 channel per node address, created lazily and reused by every
//! request to that node, with keep-alive pings; and each node's circuit
//! breaker.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use tonic::transport::Channel;
use tonic::transport::Endpoint;

use crate::breaker::Breaker;
use crate::breaker::State;
use crate::Config;
use crate::Error;

/// `host:port` or a full `http://host:port` URI, as a URI. The key under
/// which a node's channel and breaker are kept: `https://` becomes
/// `http://` here, and [`Pool::channel`] picks the scheme from the TLS
/// settings, so an address learned from the ring and the same address
/// given as an endpoint share one channel.
pub(crate) fn normalize(addr: &str) -> String {
    let a = addr.trim().trim_end_matches('/');
    if let Some(rest) = a.strip_prefix("https://") {
        format!("http://{rest}")
    } else if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

#[derive(Debug)]
pub(crate) struct Pool {
    cfg: Config,
    channels: Mutex<HashMap<String, Channel>>,
    breakers: Mutex<HashMap<String, Breaker>>,
}

impl Pool {
    pub fn new(cfg: Config) -> Self {
        Self {
            cfg,
            channels: Mutex::new(HashMap::new()),
            breakers: Mutex::new(HashMap::new()),
        }
    }

    /// Checks that `addr` makes a valid endpoint.
    pub fn validate(addr: &str) -> Result<(), Error> {
        let uri = normalize(addr);
        let ep =
            Endpoint::from_shared(uri.clone()).map_err(|e| Error::Config(format!("bad endpoint {addr:?}: {e}")))?;
        if ep.uri().host().is_none() || ep.uri().port_u16().is_none() {
            return Err(Error::Config(format!("bad endpoint {addr:?}: expected host:port")));
        }
        Ok(())
    }

    /// The channel to `addr` (normalized), created on first use; it connects
    /// lazily and reconnects by itself after the node comes back.
    pub fn channel(&self, addr: &str) -> Result<Channel, Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ch) = map.get(addr) {
            return Ok(ch.clone());
        }
        let uri = match (&self.cfg.tls, addr.strip_prefix("http://")) {
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => addr.to_string(),
        };
        let mut ep = Endpoint::from_shared(uri).map_err(|e| Error::Config(format!("bad endpoint {addr:?}: {e}")))?;
        if let Some(tls) = &self.cfg.tls {
            ep = ep
                .tls_config(tls.tonic())
                .map_err(|e| Error::Config(format!("TLS settings: {e}")))?;
        }
        let ep = ep
            .connect_timeout(self.cfg.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(self.cfg.keep_alive_interval)
            .keep_alive_timeout(self.cfg.keep_alive_timeout)
            .keep_alive_while_idle(true);
        let ch = ep.connect_lazy();
        map.insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    fn with_breaker<R>(&self, addr: &str, f: impl FnOnce(&mut Breaker) -> R) -> R {
        let mut map = self.breakers.lock().unwrap_or_else(|p| p.into_inner());
        let b = map
            .entry(addr.to_string())
            .or_insert_with(|| Breaker::new(self.cfg.breaker_failure_threshold, self.cfg.breaker_cooldown));
        f(b)
    }

    /// 0 for a healthy node, 1 for one with recent failures, 2 for one whose
    /// breaker refuses requests now: the order in which to try nodes.
    pub fn health_rank(&self, addr: &str, now: Instant) -> u8 {
        self.with_breaker(addr, |b| match b.state() {
            State::Closed { failures: 0 } => 0,
            _ if b.would_allow(now) => 1,
            _ => 2,
        })
    }

    /// Takes permission to send to `addr` (the single probe when its
    /// breaker is half-open).
    pub fn allow(&self, addr: &str, now: Instant) -> bool {
        self.with_breaker(addr, |b| b.allow(now))
    }

    pub fn on_success(&self, addr: &str) {
        self.with_breaker(addr, |b| b.on_success())
    }

    pub fn on_failure(&self, addr: &str, now: Instant) {
        self.with_breaker(addr, |b| b.on_failure(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized_and_checked() {
        assert_eq!(normalize("127.0.0.1:1"), "http://127.0.0.1:1");
        assert_eq!(normalize(" http://h:2/ "), "http://h:2");
        assert_eq!(normalize("https://h:3"), "http://h:3");
        assert!(Pool::validate("127.0.0.1:50051").is_ok());
        assert!(Pool::validate("no port").is_err());
        assert!(Pool::validate("localhost").is_err());
    }
}
