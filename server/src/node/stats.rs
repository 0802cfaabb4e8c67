//! Node-wide counters reported by `Admin/NodeStats`, and the resident
//! memory reading. Counting only: nothing here changes behaviour.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

/// Counters of the request path.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Writes proposed to a local leader.
    pub client_writes: AtomicU64,
    /// Requests this node forwarded to another node.
    pub forwarded_requests: AtomicU64,
    /// Local reads discarded because the replica was removed from this
    /// node while they ran (they are answered as if not hosted here).
    pub reads_raced_removal: AtomicU64,
    /// Local reads refused because their replica was installing a snapshot
    /// (its data torn) while they ran.
    pub reads_during_install: AtomicU64,
    /// Linearizable reads (or read batches) served from the leader's lease,
    /// without a quorum round.
    pub lease_reads: AtomicU64,
    /// Snapshot chunks refused because their crc32 did not match.
    pub snapshot_chunks_rejected: AtomicU64,
}

impl NodeStats {
    pub fn inc(&self, c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// Resident set size of this process in bytes, from Linux
/// `/proc/self/smaps_rollup` (exact, in kB), or 0 where unavailable.
pub fn resident_memory_bytes() -> u64 {
    let Ok(s) = std::fs::read_to_string("/proc/self/smaps_rollup") else {
        return 0;
    };
    s.lines()
        .find(|l| l.starts_with("Rss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_plausible_rss() {
        let rss = super::resident_memory_bytes();
        assert!(rss > 1024 * 1024, "rss {rss}");
        assert!(rss < 64 * 1024 * 1024 * 1024);
    }
}
