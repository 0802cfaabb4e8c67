//! The snapshot byte format of a shard.
//!
//! ```text
//! "RKVS" version:u8
//! record*  where record = tag:u8 key_len:u32 key value_len:u32 value
//! 0xFF crc32:u32   (crc32 of every byte before the 0xFF end tag)
//! ```
//! Integers are big endian. The trailing crc32 protects the whole snapshot
//! end to end; transport chunks carry their own crc32 as well.

use super::StorageError;

const MAGIC: &[u8; 4] = b"RKVS";
const VERSION: u8 = 1;
const END_TAG: u8 = 0xFF;
/// Largest key or value a record may carry; protects readers from garbage.
pub const RECORD_PART_BYTES_MAX: usize = 256 * 1024 * 1024;

/// Kinds of records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordTag {
    /// User key -> value.
    Data = 1,
    /// Client id -> encoded session record.
    Session = 2,
    /// Empty key -> encoded cluster layout (metadata group only).
    Layout = 3,
    /// Empty key -> encoded state-machine clock.
    Clock = 4,
}

impl RecordTag {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordTag::Data,
            2 => RecordTag::Session,
            3 => RecordTag::Layout,
            4 => RecordTag::Clock,
            _ => return None,
        })
    }
}

/// Appends records to a snapshot buffer.
pub struct SnapshotWriter {
    buf: Vec<u8>,
}

impl Default for SnapshotWriter {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotWriter {
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(MAGIC);
        buf.push(VERSION);
        Self { buf }
    }

    pub fn record(&mut self, tag: RecordTag, key: &[u8], value: &[u8]) {
        assert!(key.len() <= RECORD_PART_BYTES_MAX && value.len() <= RECORD_PART_BYTES_MAX);
        self.buf.push(tag as u8);
        self.buf.extend_from_slice(&(key.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(key);
        self.buf.extend_from_slice(&(value.len() as u32).to_be_bytes());
        self.buf.extend_from_slice(value);
    }

    pub fn finish(mut self) -> Vec<u8> {
        let crc = crc32fast::hash(&self.buf);
        self.buf.push(END_TAG);
        self.buf.extend_from_slice(&crc.to_be_bytes());
        self.buf
    }
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what: "snapshot",
        detail: detail.into(),
    }
}

/// One parsed record: tag, key, value (borrowed from the snapshot bytes).
pub type Record<'a> = (RecordTag, &'a [u8], &'a [u8]);

/// Validates a whole snapshot and returns its records.
pub fn parse(bytes: &[u8]) -> Result<Vec<Record<'_>>, StorageError> {
    if bytes.len() < MAGIC.len() + 1 + 5 || &bytes[..4] != MAGIC {
        return Err(corrupt("missing header"));
    }
    if bytes[4] != VERSION {
        return Err(corrupt(format!("unsupported version {}", bytes[4])));
    }
    let body_end = bytes.len() - 5;
    if bytes[body_end] != END_TAG {
        return Err(corrupt("missing end tag"));
    }
    let mut crc_bytes = [0u8; 4];
    crc_bytes.copy_from_slice(&bytes[body_end + 1..]);
    let want = u32::from_be_bytes(crc_bytes);
    let got = crc32fast::hash(&bytes[..body_end]);
    if want != got {
        return Err(corrupt(format!(
            "crc32 mismatch: stored {want:08x}, computed {got:08x}"
        )));
    }
    let mut out = Vec::new();
    let mut pos = 5;
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], StorageError> {
        let end = pos
            .checked_add(n)
            .filter(|e| *e <= body_end)
            .ok_or_else(|| corrupt("record overruns body"))?;
        let s = &bytes[*pos..end];
        *pos = end;
        Ok(s)
    };
    let take_len = |pos: &mut usize| -> Result<usize, StorageError> {
        let b = take(pos, 4)?;
        let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if n > RECORD_PART_BYTES_MAX {
            return Err(corrupt("record part too large"));
        }
        Ok(n)
    };
    while pos < body_end {
        let tag = RecordTag::from_u8(take(&mut pos, 1)?[0]).ok_or_else(|| corrupt("unknown record tag"))?;
        let kl = take_len(&mut pos)?;
        let k = take(&mut pos, kl)?;
        let vl = take_len(&mut pos)?;
        let v = take(&mut pos, vl)?;
        out.push((tag, k, v));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_crc_detects_any_flip() {
        let mut w = SnapshotWriter::new();
        w.record(RecordTag::Data, b"k1", b"v1");
        w.record(RecordTag::Session, &[9; 16], b"");
        let bytes = w.finish();
        let recs = parse(&bytes).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], (RecordTag::Data, &b"k1"[..], &b"v1"[..]));
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(parse(&b).is_err(), "flip at {i} not detected");
        }
        assert!(parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn empty_snapshot_is_valid() {
        assert!(parse(&SnapshotWriter::new().finish()).unwrap().is_empty());
    }
}
