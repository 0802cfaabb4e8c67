//! `manifest.json`: what a backup holds and how to check it.
//!
//! Written last, after every shard file is synced and renamed into place, so
//! a directory with a manifest is a complete backup. [`Manifest::check`]
//! validates its structure (format, version, unique shards and file names,
//! token ranges that cover the ring exactly once, totals) before any shard
//! file is opened.

use serde::Deserialize;
use serde::Serialize;

/// `format` of every manifest.
pub const FORMAT_NAME: &str = "ringkv-backup";
/// Manifest and backup layout version this code writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Name of the manifest in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest manifest read (4096 shards with many ranges fit easily).
pub const MANIFEST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// What `consistency` says: each shard is one consistent point in time,
/// shards are not consistent with each other.
pub const CONSISTENCY_PER_SHARD: &str = "per-shard";

/// The manifest of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`FORMAT_NAME`].
    pub format: String,
    /// [`FORMAT_VERSION`] of the writer.
    pub format_version: u32,
    /// When the backup started, RFC 3339 UTC.
    pub created_at: String,
    /// The same, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// Ring epoch of the source cluster when the backup started.
    pub cluster_epoch: u64,
    /// [`CONSISTENCY_PER_SHARD`].
    pub consistency: String,
    /// One entry per data shard.
    pub shards: Vec<ShardEntry>,
    /// Sum of the shards' `pairs`.
    pub total_pairs: u64,
    /// Sum of the shards' `bytes`.
    pub total_bytes: u64,
}

/// One shard of a backup and its data file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard id in the source cluster.
    pub id: u64,
    /// Token ranges the shard owned: `start` inclusive, `end` exclusive,
    /// `null` end = the end of the ring (2^64).
    pub ranges: Vec<RangeEntry>,
    /// The log index the shard's data is consistent with.
    pub applied_index: u64,
    /// Pairs in the file.
    pub pairs: u64,
    /// Key plus value bytes in the file.
    pub bytes: u64,
    /// Data file name, in the backup directory.
    pub file: String,
    /// Size of the data file.
    pub file_bytes: u64,
    /// SHA-256 of the data file, lowercase hex.
    pub sha256: String,
}

/// A half-open token range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeEntry {
    /// First token.
    pub start: u64,
    /// Exclusive end; `None` = 2^64.
    pub end: Option<u64>,
}

impl RangeEntry {
    /// Whether `token` falls in the range.
    pub fn contains(&self, token: u64) -> bool {
        token >= self.start && self.end.is_none_or(|e| token < e)
    }
}

/// Whether `name` is a plain file name (no directories, not hidden).
fn plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 255
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl Manifest {
    /// Checks everything that can be checked without the data files.
    pub fn check(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!("format is {:?}, expected {FORMAT_NAME:?}", self.format));
        }
        if self.format_version != FORMAT_VERSION {
            return Err(format!(
                "format_version {} is not supported (this ringkv reads {FORMAT_VERSION})",
                self.format_version
            ));
        }
        if self.shards.is_empty() {
            return Err("no shards".into());
        }
        let mut ids = std::collections::BTreeSet::new();
        let mut files = std::collections::BTreeSet::new();
        let mut ranges = Vec::new();
        for s in &self.shards {
            if s.id == 0 || !ids.insert(s.id) {
                return Err(format!("shard id {} is zero or listed twice", s.id));
            }
            if !plain_file_name(&s.file) || s.file == MANIFEST_FILE || !files.insert(s.file.as_str()) {
                return Err(format!("shard {} has a bad or duplicate file name {:?}", s.id, s.file));
            }
            if s.sha256.len() != 64 || !s.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("shard {} has a malformed sha256", s.id));
            }
            if s.ranges.is_empty() {
                return Err(format!("shard {} owns no token range", s.id));
            }
            for r in &s.ranges {
                if r.end.is_some_and(|e| e <= r.start) {
                    return Err(format!("shard {} has an empty range {:?}", s.id, r));
                }
                ranges.push(*r);
            }
        }
        ranges.sort_by_key(|r| r.start);
        let mut next = Some(0u64);
        for r in &ranges {
            if next != Some(r.start) {
                return Err(format!(
                    "token ranges do not cover the ring exactly once (gap or overlap at {})",
                    r.start
                ));
            }
            next = r.end;
        }
        if next.is_some() {
            return Err("token ranges do not reach the end of the ring".into());
        }
        let pairs: u64 = self.shards.iter().map(|s| s.pairs).sum();
        let bytes: u64 = self.shards.iter().map(|s| s.bytes).sum();
        if (pairs, bytes) != (self.total_pairs, self.total_bytes) {
            return Err("total_pairs / total_bytes disagree with the shards".into());
        }
        Ok(())
    }
}

/// `unix_ms` as RFC 3339 UTC (`2026-11-29T01:05:20.123Z`).
pub fn rfc3339_utc(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let entry = |id: u64, start: u64, end: Option<u64>| ShardEntry {
            id,
            ranges: vec![RangeEntry { start, end }],
            applied_index: 9,
            pairs: 1,
            bytes: 2,
            file: format!("shard-{id}.rkvb"),
            file_bytes: 50,
            sha256: "ab".repeat(32),
        };
        Manifest {
            format: FORMAT_NAME.into(),
            format_version: FORMAT_VERSION,
            created_at: rfc3339_utc(0),
            created_unix_ms: 0,
            cluster_epoch: 1,
            consistency: CONSISTENCY_PER_SHARD.into(),
            shards: vec![entry(1, 0, Some(1 << 63)), entry(2, 1 << 63, None)],
            total_pairs: 2,
            total_bytes: 4,
        }
    }

    #[test]
    fn a_good_manifest_passes_and_each_defect_is_named() {
        let m = manifest();
        m.check().unwrap();
        let json = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);

        let mut bad = m.clone();
        bad.format_version = 2;
        assert!(bad.check().unwrap_err().contains("not supported"));
        let mut bad = m.clone();
        bad.shards[1].file = "../etc/passwd".into();
        assert!(bad.check().unwrap_err().contains("file name"));
        let mut bad = m.clone();
        bad.shards[1].ranges[0].start += 1;
        assert!(bad.check().unwrap_err().contains("cover the ring"));
        let mut bad = m.clone();
        bad.shards[1].ranges[0].end = Some(u64::MAX);
        assert!(bad.check().unwrap_err().contains("end of the ring"));
        let mut bad = m.clone();
        bad.total_pairs = 3;
        assert!(bad.check().is_err());
        let mut bad = m;
        bad.shards[1].id = 1;
        assert!(bad.check().unwrap_err().contains("twice"));
    }

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_utc(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339_utc(1_796_000_000_000), "2026-11-30T00:53:20.000Z");
    }
}
