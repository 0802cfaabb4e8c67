//! YCSB core workloads and key choosers: what operation to run next and on
//! which key. Pure and seeded; no I/O.
//!
//! Keys are `user` followed by a 12-digit record number hashed over the key
//! space, so hot zipfian keys are spread across the ring rather than
//! clustered in one shard.

use rand::Rng;
use serde::Deserialize;
use serde::Serialize;

/// Operations a workload issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Read,
    Update,
    Insert,
    /// Read the record, then compare-and-swap it to a new value.
    ReadModifyWrite,
}

/// The workloads of `ringkv-bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// 100% updates.
    Write,
    /// YCSB A: 50% reads, 50% updates.
    A,
    /// YCSB B: 95% reads, 5% updates.
    B,
    /// YCSB C: 100% reads.
    C,
    /// YCSB D: 95% reads of the latest records, 5% inserts.
    D,
    /// YCSB F: 50% reads, 50% read-modify-writes.
    F,
}

impl Workload {
    /// Picks the next operation.
    pub fn next_op(self, rng: &mut impl Rng) -> Op {
        let p: f64 = rng.gen();
        match self {
            Workload::Write => Op::Update,
            Workload::A => {
                if p < 0.5 {
                    Op::Read
                } else {
                    Op::Update
                }
            }
            Workload::B => {
                if p < 0.95 {
                    Op::Read
                } else {
                    Op::Update
                }
            }
            Workload::C => Op::Read,
            Workload::D => {
                if p < 0.95 {
                    Op::Read
                } else {
                    Op::Insert
                }
            }
            Workload::F => {
                if p < 0.5 {
                    Op::Read
                } else {
                    Op::ReadModifyWrite
                }
            }
        }
    }

    /// D reads the latest records; the others use the configured chooser.
    pub fn reads_latest(self) -> bool {
        self == Workload::D
    }
}

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Distribution {
    Uniform,
    Zipfian,
}

/// The key of record `n`.
pub fn key_of(n: u64) -> Vec<u8> {
    format!("user{:012}", fnv64(n) % 1_000_000_000_000).into_bytes()
}

fn fnv64(n: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in n.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Zipfian record chooser over `[0, n)` (theta 0.99, as YCSB), by the
/// rejection-free method of Gray et al., "Quickly generating billion-record
/// synthetic databases". Item 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

/// Skew of the zipfian chooser.
pub const ZIPFIAN_THETA: f64 = 0.99;

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

impl Zipfian {
    pub fn new(n: u64) -> Self {
        assert!(n >= 2, "zipfian needs at least two items");
        let theta = ZIPFIAN_THETA;
        let zeta_n = zeta(n, theta);
        let zeta_2 = zeta(2, theta);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n);
        Self {
            n,
            theta,
            alpha,
            zeta_n,
            eta,
        }
    }

    pub fn sample(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.gen();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        let v = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        v.min(self.n - 1)
    }
}

/// Chooses record numbers for a run.
#[derive(Debug, Clone)]
pub enum Chooser {
    Uniform { n: u64 },
    Zipfian(Zipfian),
}

impl Chooser {
    pub fn new(d: Distribution, n: u64) -> Self {
        match d {
            Distribution::Uniform => Chooser::Uniform { n },
            Distribution::Zipfian => Chooser::Zipfian(Zipfian::new(n)),
        }
    }

    /// A record in `[0, n)`.
    pub fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            Chooser::Uniform { n } => rng.gen_range(0..*n),
            Chooser::Zipfian(z) => z.sample(rng),
        }
    }
}

/// "Latest" chooser of workload D: zipfian over recency, so the newest
/// record (`newest`) is the most popular.
pub fn latest(z: &Zipfian, newest: u64, rng: &mut impl Rng) -> u64 {
    newest.saturating_sub(z.sample(rng))
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn mixes_match_ycsb() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let n = 100_000;
        let count = |w: Workload, op: Op, rng: &mut rand::rngs::StdRng| {
            (0..n).filter(|_| w.next_op(rng) == op).count() as f64 / n as f64
        };
        assert!((count(Workload::A, Op::Read, &mut rng) - 0.5).abs() < 0.01);
        assert!((count(Workload::B, Op::Update, &mut rng) - 0.05).abs() < 0.005);
        assert_eq!(count(Workload::C, Op::Read, &mut rng), 1.0);
        assert!((count(Workload::D, Op::Insert, &mut rng) - 0.05).abs() < 0.005);
        assert!((count(Workload::F, Op::ReadModifyWrite, &mut rng) - 0.5).abs() < 0.01);
        assert_eq!(count(Workload::Write, Op::Update, &mut rng), 1.0);
    }

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let z = Zipfian::new(10_000);
        let mut hits = vec![0u32; 10_000];
        for _ in 0..200_000 {
            let s = z.sample(&mut rng);
            hits[s as usize] += 1;
        }
        // Item 0 is the hottest; the top 1% of items take a large share.
        assert!(hits[0] >= *hits.iter().max().unwrap());
        let top: u32 = hits[..100].iter().sum();
        assert!(top > 200_000 / 3, "top 1% got {top}");
        assert!(hits[9_000..].iter().sum::<u32>() < top);
    }

    #[test]
    fn keys_are_stable_distinct_and_fixed_width() {
        assert_eq!(key_of(0), key_of(0));
        assert_ne!(key_of(0), key_of(1));
        assert_eq!(key_of(5).len(), 16);
        let uniq: std::collections::BTreeSet<_> = (0..10_000).map(key_of).collect();
        assert_eq!(uniq.len(), 10_000);
    }
}
