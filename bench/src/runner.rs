//! Drives a backend: loads the records, then runs a workload closed-loop
//! (N clients, each one request at a time) or open-loop (a fixed arrival
//! rate; latency counted from each request's intended start, so a stall is
//! not hidden by clients that stop sending: no coordinated omission).
//!
//! Every loop is bounded by its duration; warm-up is excluded from the
//! histograms. Owns measuring; the backends do the I/O.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use hdrhistogram::Histogram;
use rand::Rng;
use rand::SeedableRng;
use serde::Deserialize;
use serde::Serialize;

use crate::backend::Backend;
use crate::fsync::Fsync;
use crate::fsync::Probe;
use crate::workload::key_of;
use crate::workload::latest;
use crate::workload::Chooser;
use crate::workload::Distribution;
use crate::workload::Op;
use crate::workload::Workload;
use crate::workload::Zipfian;

/// Most concurrent clients.
pub const CONCURRENCY_MAX: usize = 4096;
/// Longest measured run.
pub const SECONDS_MAX: u64 = 3600;
/// Largest value.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Highest latency the histograms track (µs); slower requests are clamped.
const LATENCY_US_MAX: u64 = 60_000_000;

/// What to run (also the command-line flags of `ringkv-bench run`).
#[derive(Debug, Clone, Serialize, Deserialize, clap::Args)]
pub struct RunConfig {
    #[arg(long, value_enum, default_value = "a")]
    pub workload: Workload,
    #[arg(long, value_enum, default_value = "uniform")]
    pub distribution: Distribution,
    #[arg(long, default_value_t = 10_000)]
    pub records: u64,
    #[arg(long, default_value_t = 100)]
    pub value_bytes: usize,
    /// Concurrent clients (closed loop) or most outstanding requests (open).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Measured seconds.
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds run before measuring.
    #[arg(long, default_value_t = 3)]
    pub warmup_seconds: u64,
    /// Open loop at this many operations per second; `None` = closed loop.
    #[arg(long)]
    pub rate: Option<f64>,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl RunConfig {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.records >= 2, "records must be >= 2");
        anyhow::ensure!(
            (1..=CONCURRENCY_MAX).contains(&self.concurrency),
            "concurrency must be 1..={CONCURRENCY_MAX}"
        );
        anyhow::ensure!(
            (1..=SECONDS_MAX).contains(&self.seconds),
            "seconds must be 1..={SECONDS_MAX}"
        );
        anyhow::ensure!(self.warmup_seconds <= SECONDS_MAX, "warmup too long");
        anyhow::ensure!(
            self.value_bytes <= VALUE_BYTES_MAX,
            "value_bytes must be <= {VALUE_BYTES_MAX}"
        );
        if let Some(r) = self.rate {
            anyhow::ensure!(r > 0.0 && r.is_finite(), "rate must be > 0");
        }
        Ok(())
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// The latency distribution at [`CDF_QUANTILES`]: `(quantile, us)`,
    /// for the latency CDF chart. Empty in results written before it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cdf: Vec<(f64, u64)>,
}

/// Quantiles a [`Latency`] keeps for its CDF: dense in the body, then the
/// tail up to the maximum.
pub const CDF_QUANTILES: [f64; 19] = [
    0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 0.995, 0.999, 0.9995, 0.9999, 1.0,
];

impl Latency {
    /// The summary of a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let cdf = if h.is_empty() {
            Vec::new()
        } else {
            CDF_QUANTILES.iter().map(|&q| (q, h.value_at_quantile(q))).collect()
        };
        Self {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            cdf,
        }
    }
}

/// Outcome of one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub backend: String,
    pub config: RunConfig,
    /// Operations completed in the measured window.
    pub ops: u64,
    pub errors: u64,
    pub measured_seconds: f64,
    pub ops_per_second: f64,
    pub latency: Latency,
    pub per_op: BTreeMap<String, Latency>,
    /// Open loop: arrivals the clients could not even start in time.
    pub missed_arrivals: u64,
    /// The system's WAL fsyncs in the measured window, when its metrics
    /// were scraped (`--metrics`); absent in results written before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fsync: Option<Fsync>,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Read => "read",
        Op::Update => "update",
        Op::Insert => "insert",
        Op::ReadModifyWrite => "read_modify_write",
    }
}

/// Inserts records `0..records` with `concurrency` clients.
pub async fn load(backend: &Backend, records: u64, value_bytes: usize, concurrency: usize) -> anyhow::Result<()> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..concurrency.max(1) {
        let mut b = backend.for_task(t);
        let next = next.clone();
        let value = vec![b'x'; value_bytes];
        tasks.push(tokio::spawn(async move {
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= records {
                    return anyhow::Ok(());
                }
                b.write(&key_of(n), &value).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

struct TaskOut {
    hist: Histogram<u64>,
    per_op: BTreeMap<&'static str, Histogram<u64>>,
    errors: u64,
    missed: u64,
}

/// Runs one operation; returns its kind.
async fn one_op(
    b: &mut Backend,
    cfg: &RunConfig,
    chooser: &Chooser,
    latest_z: &Zipfian,
    inserted: &AtomicU64,
    rng: &mut rand::rngs::StdRng,
    value: &mut [u8],
) -> (Op, anyhow::Result<()>) {
    let op = cfg.workload.next_op(rng);
    rng.fill(value);
    let pick = |rng: &mut rand::rngs::StdRng| {
        if cfg.workload.reads_latest() {
            latest(latest_z, inserted.load(Ordering::Relaxed).saturating_sub(1), rng)
        } else {
            chooser.next(rng)
        }
    };
    let res = match op {
        Op::Read => b.read(&key_of(pick(rng))).await.map(|_| ()),
        Op::Update => b.write(&key_of(pick(rng)), value).await,
        Op::Insert => {
            let n = inserted.fetch_add(1, Ordering::Relaxed);
            b.write(&key_of(n), value).await
        }
        Op::ReadModifyWrite => {
            let key = key_of(pick(rng));
            match b.read(&key).await {
                Ok(Some(old)) => b.compare_and_swap(&key, &old, value).await.map(|_| ()),
                Ok(None) => b.write(&key, value).await,
                Err(e) => Err(e),
            }
        }
    };
    (op, res)
}

/// Runs the workload and measures it. With a `probe`, the system's fsync
/// histogram is read as the measured window opens and once every client
/// has stopped; a failed scrape is reported and leaves `fsync` empty.
pub async fn run(backend: &Backend, name: &str, cfg: RunConfig, probe: Option<Probe>) -> anyhow::Result<RunResult> {
    cfg.validate()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(cfg.warmup_seconds);
    let end = measure_from + Duration::from_secs(cfg.seconds);
    let fsync_before = probe.clone().map(|p| {
        tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            p.totals().await
        })
    });
    let chooser = Arc::new(Chooser::new(cfg.distribution, cfg.records));
    let latest_z = Arc::new(Zipfian::new(cfg.records));
    let inserted = Arc::new(AtomicU64::new(cfg.records));
    let tick = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for t in 0..cfg.concurrency {
        let mut b = backend.for_task(t);
        let cfg = cfg.clone();
        let (chooser, latest_z, inserted, tick) = (chooser.clone(), latest_z.clone(), inserted.clone(), tick.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed.wrapping_add(t as u64));
            let mut value = vec![0u8; cfg.value_bytes];
            let mut out = TaskOut {
                hist: histogram(),
                per_op: BTreeMap::new(),
                errors: 0,
                missed: 0,
            };
            loop {
                // Open loop: this request's intended start; closed: now.
                let intended = match cfg.rate {
                    Some(rate) => {
                        let i = tick.fetch_add(1, Ordering::Relaxed);
                        let at = start + Duration::from_secs_f64(i as f64 / rate);
                        if at >= end {
                            break;
                        }
                        if at > Instant::now() {
                            tokio::time::sleep_until(at.into()).await;
                        } else if Instant::now().duration_since(at) > Duration::from_secs(1) {
                            out.missed += 1;
                        }
                        at
                    }
                    None => {
                        let now = Instant::now();
                        if now >= end {
                            break;
                        }
                        now
                    }
                };
                let (op, res) = one_op(&mut b, &cfg, &chooser, &latest_z, &inserted, &mut rng, &mut value).await;
                let done = Instant::now();
                if intended < measure_from || done > end {
                    continue;
                }
                match res {
                    Ok(()) => {
                        let us = (done - intended).as_micros().clamp(1, u128::from(LATENCY_US_MAX)) as u64;
                        out.hist.saturating_record(us);
                        out.per_op
                            .entry(op_name(op))
                            .or_insert_with(histogram)
                            .saturating_record(us);
                    }
                    Err(_) => out.errors += 1,
                }
            }
            out
        }));
    }
    let mut all = histogram();
    let mut per_op: BTreeMap<&'static str, Histogram<u64>> = BTreeMap::new();
    let (mut errors, mut missed) = (0, 0);
    for t in tasks {
        let out = t.await?;
        all.add(&out.hist)
            .map_err(|e| anyhow::anyhow!("merge histograms: {e:?}"))?;
        for (k, h) in out.per_op {
            per_op
                .entry(k)
                .or_insert_with(histogram)
                .add(&h)
                .map_err(|e| anyhow::anyhow!("merge histograms: {e:?}"))?;
        }
        errors += out.errors;
        missed += out.missed;
    }
    let fsync = match (probe, fsync_before) {
        (Some(p), Some(before)) => match (before.await?, p.totals().await) {
            (Ok(b), Ok(a)) => a.since(b),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("fsync latency not measured: {e:#}");
                None
            }
        },
        _ => None,
    };
    let measured = cfg.seconds as f64;
    Ok(RunResult {
        backend: name.to_string(),
        ops: all.len(),
        errors,
        measured_seconds: measured,
        ops_per_second: all.len() as f64 / measured,
        latency: Latency::of(&all),
        per_op: per_op.iter().map(|(k, h)| (k.to_string(), Latency::of(h))).collect(),
        missed_arrivals: missed,
        fsync,
        config: cfg,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Kind;

    fn cfg(workload: Workload, rate: Option<f64>) -> RunConfig {
        RunConfig {
            workload,
            distribution: Distribution::Zipfian,
            records: 200,
            value_bytes: 64,
            concurrency: 8,
            seconds: 1,
            warmup_seconds: 0,
            rate,
            seed: 1,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn closed_and_open_loops_measure_the_local_backend() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::connect(Kind::RocksdbLocal, &[], dir.path(), Default::default())
            .await
            .unwrap();
        load(&b, 200, 64, 4).await.unwrap();
        for w in [Workload::A, Workload::D, Workload::F, Workload::Write] {
            let r = run(&b, "local", cfg(w, None), None).await.unwrap();
            assert!(r.ops > 0 && r.errors == 0, "{w:?}: {r:?}");
            assert!(r.latency.p50_us <= r.latency.p99_us && r.latency.p99_us <= r.latency.max_us);
        }
        // Open loop at 200/s for 1 s: about 200 operations, not more.
        let r = run(&b, "local", cfg(Workload::C, Some(200.0)), None).await.unwrap();
        assert!((150..=201).contains(&r.ops), "open loop did {} ops", r.ops);
        assert!(cfg(Workload::C, Some(0.0)).validate().is_err());
    }
}
