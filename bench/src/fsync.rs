//! How fast the disk was during a run: the mean WAL fsync latency of the
//! system under test over the run's measured window, from the histograms
//! its nodes export in the Prometheus text format (ringkv's
//! `ringkv_wal_sync_duration_seconds`, etcd's
//! `etcd_disk_wal_fsync_duration_seconds`).
//!
//! On a shared machine the fsync latency moves between runs by a factor of
//! several, and write throughput follows it; a report that shows it next to
//! each run tells a slower system from a slower disk.
//!
//! Owns the scrape (one plain HTTP/1.0 GET per node, bounded in time and
//! size) and the parsing; knows nothing of workloads. A failed scrape is a
//! missing measurement, never a failed run.

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;

/// Longest one scrape may take, connect to last byte.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest metrics page read; a bigger one is an error.
const SCRAPE_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Most nodes one probe scrapes.
pub const URLS_MAX: usize = 16;

/// The fsync histogram a system exports, by backend name.
pub fn metric_of(backend: &str) -> Option<&'static str> {
    match backend {
        "ringkv" | "ringkv-forward" => Some("ringkv_wal_sync_duration_seconds"),
        "etcd" => Some("etcd_disk_wal_fsync_duration_seconds"),
        _ => None,
    }
}

/// A run's fsyncs, summed over every scraped node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fsync {
    /// fsyncs in the window, all nodes together.
    pub syncs: u64,
    /// Their mean duration, milliseconds.
    pub mean_ms: f64,
}

/// A histogram's `_sum` (seconds) and `_count`, summed over all nodes.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    pub seconds: f64,
    pub count: f64,
}

impl Totals {
    /// The fsyncs between two scrapes; `None` when there were none or a
    /// counter went backwards (a node restarted).
    pub fn since(self, before: Totals) -> Option<Fsync> {
        let count = self.count - before.count;
        let seconds = self.seconds - before.seconds;
        if count < 1.0 || seconds < 0.0 {
            return None;
        }
        Some(Fsync {
            syncs: count as u64,
            mean_ms: seconds / count * 1000.0,
        })
    }
}

/// Scrapes `metric` from nodes' `/metrics` pages (`host:port` each).
#[derive(Debug, Clone)]
pub struct Probe {
    addrs: Vec<String>,
    metric: &'static str,
}

impl Probe {
    pub fn new(addrs: Vec<String>, metric: &'static str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !addrs.is_empty() && addrs.len() <= URLS_MAX,
            "1..={URLS_MAX} metrics addresses"
        );
        Ok(Self { addrs, metric })
    }

    /// The histogram's totals over every node now; an error if any node
    /// could not be read (a partial sum would be wrong).
    pub async fn totals(&self) -> anyhow::Result<Totals> {
        let mut all = Totals::default();
        for addr in &self.addrs {
            let page = tokio::time::timeout(SCRAPE_TIMEOUT, get_metrics(addr))
                .await
                .with_context(|| format!("scrape {addr}: timed out"))??;
            let t = totals_of(&page, self.metric);
            all.seconds += t.seconds;
            all.count += t.count;
        }
        Ok(all)
    }
}

/// `GET /metrics` from `addr` over HTTP/1.0 (no chunking, the server closes
/// the connection); returns the body.
async fn get_metrics(addr: &str) -> anyhow::Result<String> {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    (&mut s).take(SCRAPE_BYTES_MAX as u64 + 1).read_to_end(&mut buf).await?;
    anyhow::ensure!(
        buf.len() <= SCRAPE_BYTES_MAX,
        "{addr}: metrics page over {SCRAPE_BYTES_MAX} bytes"
    );
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("{addr}: no HTTP header"))?;
    let status = head.lines().next().unwrap_or_default();
    anyhow::ensure!(status.split_whitespace().nth(1) == Some("200"), "{addr}: {status}");
    Ok(body.to_string())
}

/// Sums `<metric>_sum` and `<metric>_count` over every label set in a
/// Prometheus text page. Comments and other metrics are skipped; a sample
/// whose value does not parse counts as absent.
pub fn totals_of(page: &str, metric: &str) -> Totals {
    let mut t = Totals::default();
    for line in page.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        let (field, rest) = if let Some(r) = rest.strip_prefix("_sum") {
            (&mut t.seconds, r)
        } else if let Some(r) = rest.strip_prefix("_count") {
            (&mut t.count, r)
        } else {
            continue;
        };
        // Either labels `{...} value` or ` value` must follow the name.
        let value = match rest.chars().next() {
            Some('{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
        {
            if v.is_finite() {
                *field += v;
            }
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_label_set_and_skips_look_alikes() {
        let page = "\
# HELP ringkv_wal_sync_duration_seconds x
# TYPE ringkv_wal_sync_duration_seconds histogram
ringkv_wal_sync_duration_seconds_bucket{node=\"1\",le=\"0.001\"} 3
ringkv_wal_sync_duration_seconds_sum{node=\"1\"} 0.5
ringkv_wal_sync_duration_seconds_count{node=\"1\"} 400
ringkv_wal_sync_duration_seconds_sum{node=\"2\"} 1.5
ringkv_wal_sync_duration_seconds_count{node=\"2\"} 600
ringkv_wal_sync_duration_seconds_total_sum 99
ringkv_wal_syncs_total{node=\"1\"} 400
";
        let t = totals_of(page, "ringkv_wal_sync_duration_seconds");
        assert_eq!(
            t,
            Totals {
                seconds: 2.0,
                count: 1000.0
            }
        );
        let etcd = "etcd_disk_wal_fsync_duration_seconds_sum 0.25\netcd_disk_wal_fsync_duration_seconds_count 50\n";
        let e = totals_of(etcd, "etcd_disk_wal_fsync_duration_seconds");
        assert_eq!(
            e,
            Totals {
                seconds: 0.25,
                count: 50.0
            }
        );
        assert_eq!(totals_of("garbage\n{}", "x"), Totals::default());
    }

    #[test]
    fn a_window_is_the_difference_of_two_scrapes() {
        let before = Totals {
            seconds: 1.0,
            count: 100.0,
        };
        let after = Totals {
            seconds: 3.0,
            count: 1100.0,
        };
        assert_eq!(
            after.since(before),
            Some(Fsync {
                syncs: 1000,
                mean_ms: 2.0
            })
        );
        assert_eq!(before.since(before), None, "no fsyncs");
        assert_eq!(before.since(after), None, "a restarted node");
        assert_eq!(metric_of("etcd"), Some("etcd_disk_wal_fsync_duration_seconds"));
        assert_eq!(metric_of("rocksdb-local"), None);
    }

    #[tokio::test]
    async fn scrapes_a_metrics_page_over_http() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            for status in ["200 OK", "404 Not Found"] {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut req = vec![0u8; 1024];
                let n = s.read(&mut req).await.unwrap();
                assert!(String::from_utf8_lossy(&req[..n]).starts_with("GET /metrics HTTP/1.0\r\n"));
                let body = "x_sum 0.5\nx_count 10\n";
                let resp = format!("HTTP/1.0 {status}\r\nContent-Type: text/plain\r\n\r\n{body}");
                s.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let probe = Probe::new(vec![addr], "x").unwrap();
        assert_eq!(
            probe.totals().await.unwrap(),
            Totals {
                seconds: 0.5,
                count: 10.0
            }
        );
        assert!(probe.totals().await.is_err(), "a 404 is an error");
        server.await.unwrap();
        assert!(Probe::new(Vec::new(), "x").is_err());
    }
}
