//! The snapshot format of a shard, written and read as a stream so a
//! snapshot never has to fit in memory.
//!
//! ```text
//! "RKVS" version:u8
//! record*  where record = tag:u8 key_len:u32 key value_len:u32 value
//! 0xFF crc32:u32   (crc32 of every byte before the 0xFF end tag)
//! ```
//! Integers are big endian. The trailing crc32 protects the whole snapshot
//! end to end; transport chunks carry their own crc32 as well. Readers check
//! the crc32 in a first pass ([`verify`]) before anything is installed.

use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;

use super::StorageError;

const MAGIC: &[u8; 4] = b"RKVS";
const VERSION: u8 = 1;
const END_TAG: u8 = 0xFF;
/// Largest key or value a record may carry; protects readers from garbage.
pub const RECORD_PART_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Buffer size of snapshot file readers and writers.
const IO_BUFFER_BYTES: usize = 256 * 1024;

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
    /// Empty key -> encoded token ranges the shard owns. First record when
    /// present (data shards).
    Ranges = 5,
}

impl RecordTag {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => RecordTag::Data,
            2 => RecordTag::Session,
            3 => RecordTag::Layout,
            4 => RecordTag::Clock,
            5 => RecordTag::Ranges,
            _ => return None,
        })
    }
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt {
        what: "snapshot",
        detail: detail.into(),
    }
}

fn io(e: std::io::Error) -> StorageError {
    StorageError::Rocks(format!("snapshot file: {e}"))
}

/// Writes a snapshot to any `Write`, computing its crc32 as it goes.
pub struct SnapshotWriter<W: Write> {
    out: BufWriter<W>,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W) -> Result<Self, StorageError> {
        let mut w = Self {
            out: BufWriter::with_capacity(IO_BUFFER_BYTES, out),
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        };
        w.put(MAGIC)?;
        w.put(&[VERSION])?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), StorageError> {
        self.crc.update(b);
        self.bytes += b.len() as u64;
        self.out.write_all(b).map_err(io)
    }

    pub fn record(&mut self, tag: RecordTag, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        assert!(key.len() <= RECORD_PART_BYTES_MAX && value.len() <= RECORD_PART_BYTES_MAX);
        self.put(&[tag as u8])?;
        self.put(&(key.len() as u32).to_be_bytes())?;
        self.put(key)?;
        self.put(&(value.len() as u32).to_be_bytes())?;
        self.put(value)
    }

    /// Writes the end tag and crc32; returns the writer and the total size.
    pub fn finish(mut self) -> Result<(W, u64), StorageError> {
        let crc = self.crc.clone().finalize();
        self.out.write_all(&[END_TAG]).map_err(io)?;
        self.out.write_all(&crc.to_be_bytes()).map_err(io)?;
        let total = self.bytes + 5;
        let inner = self.out.into_inner().map_err(|e| io(e.into_error()))?;
        Ok((inner, total))
    }
}

/// One record: tag, key, value.
pub type Record = (RecordTag, Vec<u8>, Vec<u8>);

/// Reads records of a snapshot from any `Read`. The caller must have run
/// [`verify`] over the same bytes first; the reader still refuses anything
/// malformed, never panics, and checks the crc32 once more at the end.
pub struct SnapshotReader<R: Read> {
    input: BufReader<R>,
    crc: crc32fast::Hasher,
    done: bool,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<Self, StorageError> {
        let mut r = Self {
            input: BufReader::with_capacity(IO_BUFFER_BYTES, input),
            crc: crc32fast::Hasher::new(),
            done: false,
        };
        let mut head = [0u8; 5];
        r.take(&mut head)?;
        if &head[..4] != MAGIC {
            return Err(corrupt("missing header"));
        }
        if head[4] != VERSION {
            return Err(corrupt(format!("unsupported version {}", head[4])));
        }
        Ok(r)
    }

    fn take(&mut self, buf: &mut [u8]) -> Result<(), StorageError> {
        self.input
            .read_exact(buf)
            .map_err(|e| corrupt(format!("truncated: {e}")))?;
        self.crc.update(buf);
        Ok(())
    }

    fn take_vec(&mut self) -> Result<Vec<u8>, StorageError> {
        let mut len = [0u8; 4];
        self.take(&mut len)?;
        let n = u32::from_be_bytes(len) as usize;
        if n > RECORD_PART_BYTES_MAX {
            return Err(corrupt("record part too large"));
        }
        let mut v = vec![0u8; n];
        self.take(&mut v)?;
        Ok(v)
    }

    /// The next record, or `None` after the end tag (whose crc32 matched).
    pub fn next_record(&mut self) -> Result<Option<Record>, StorageError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.input
            .read_exact(&mut tag)
            .map_err(|e| corrupt(format!("truncated: {e}")))?;
        if tag[0] == END_TAG {
            let mut crc = [0u8; 4];
            self.input
                .read_exact(&mut crc)
                .map_err(|e| corrupt(format!("truncated crc: {e}")))?;
            let want = u32::from_be_bytes(crc);
            let got = self.crc.clone().finalize();
            if want != got {
                return Err(corrupt(format!(
                    "crc32 mismatch: stored {want:08x}, computed {got:08x}"
                )));
            }
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra).map_err(io)? != 0 {
                return Err(corrupt("bytes after the end"));
            }
            self.done = true;
            return Ok(None);
        }
        self.crc.update(&tag);
        let tag = RecordTag::from_u8(tag[0]).ok_or_else(|| corrupt("unknown record tag"))?;
        let k = self.take_vec()?;
        let v = self.take_vec()?;
        Ok(Some((tag, k, v)))
    }
}

/// Reads a whole snapshot once and checks its structure and crc32; returns
/// the number of records.
pub fn verify(input: impl Read) -> Result<u64, StorageError> {
    let mut r = SnapshotReader::new(input)?;
    let mut n = 0;
    while r.next_record()?.is_some() {
        n += 1;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new()).unwrap();
        w.record(RecordTag::Data, b"k1", b"v1").unwrap();
        w.record(RecordTag::Session, &[9; 16], b"").unwrap();
        let (bytes, total) = w.finish().unwrap();
        assert_eq!(total, bytes.len() as u64);
        bytes
    }

    #[test]
    fn round_trip_and_crc_detects_any_flip() {
        let bytes = sample();
        let mut r = SnapshotReader::new(&bytes[..]).unwrap();
        assert_eq!(
            r.next_record().unwrap(),
            Some((RecordTag::Data, b"k1".to_vec(), b"v1".to_vec()))
        );
        assert_eq!(r.next_record().unwrap().unwrap().0, RecordTag::Session);
        assert_eq!(r.next_record().unwrap(), None);
        assert_eq!(verify(&bytes[..]).unwrap(), 2);
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert!(verify(&b[..]).is_err(), "flip at {i} not detected");
        }
        assert!(verify(&bytes[..bytes.len() - 1]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(verify(&longer[..]).is_err());
        assert!(verify(&b""[..]).is_err());
    }

    #[test]
    fn empty_snapshot_is_valid() {
        let (bytes, _) = SnapshotWriter::new(Vec::new()).unwrap().finish().unwrap();
        assert_eq!(verify(&bytes[..]).unwrap(), 0);
    }
}
