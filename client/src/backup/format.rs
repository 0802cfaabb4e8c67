//! The data file of one shard in a backup (`shard-<id>.rkvb`).
//!
//! Layout, integers big-endian:
//!
//! ```text
//! header  "RKVB" | version u32 = 1 | shard id u64 | applied index u64
//! block   tag u8 = 1 | pairs u32 | payload bytes u32 | crc32 u32 | payload
//! ...
//! end     tag u8 = 0xFF | pairs u64 | key + value bytes u64
//! ```
//!
//! A block's payload is one export chunk encoded exactly as
//! [`ringkv_proto::export_chunk_crc`] hashes it (`u32 len, key, u32 len,
//! value` per pair), so the crc32 the leader computed travels unchanged from
//! the server into the file. The whole file is also covered by the SHA-256
//! in the manifest. Readers refuse anything that does not parse exactly:
//! unknown tags, oversized blocks, counts that disagree, bytes after the end
//! record.

use std::io::Read;
use std::io::Write;

use ringkv_proto::v1::KeyValue;

/// First bytes of every shard file.
pub const MAGIC: &[u8; 4] = b"RKVB";
/// Version of the shard file layout this code writes and reads.
pub const VERSION: u32 = 1;
/// Largest block payload a reader accepts: one export chunk (1 MiB) plus
/// one pair of the largest key and value any server configuration allows
/// (64 KiB, 64 MiB), with headroom. Bounds the memory one block takes.
pub const BLOCK_BYTES_MAX: u32 = 80 * 1024 * 1024;
/// Largest key a block may hold (the servers' upper bound for
/// `limits.key_bytes_max`).
pub const KEY_BYTES_MAX: usize = 64 * 1024;

const TAG_BLOCK: u8 = 1;
const TAG_END: u8 = 0xFF;

/// Why a shard file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The bytes are not a valid shard file.
    #[error("{0}")]
    Corrupt(String),
}

fn corrupt<T>(m: impl Into<String>) -> Result<T, FormatError> {
    Err(FormatError::Corrupt(m.into()))
}

/// The header of a shard file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The shard the data came from.
    pub shard_id: u64,
    /// The log index the export was consistent with.
    pub applied_index: u64,
}

/// Totals of a finished shard file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileTotals {
    /// Pairs written.
    pub pairs: u64,
    /// Key plus value bytes written.
    pub bytes: u64,
    /// Size of the file.
    pub file_bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
}

/// A `Write` that hashes (SHA-256) and counts what passes through.
struct Hashing<W> {
    inner: W,
    hash: ring::digest::Context,
    count: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hash: ring::digest::Context::new(&ring::digest::SHA256),
            count: 0,
        }
    }

    fn hex(self) -> (W, u64, String) {
        (self.inner, self.count, hex::encode(self.hash.finish().as_ref()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Writes one shard file; [`ShardFileWriter::finish`] completes it.
pub struct ShardFileWriter<W: Write> {
    out: Hashing<W>,
    pairs: u64,
    bytes: u64,
}

impl<W: Write> ShardFileWriter<W> {
    /// Starts a file for `header` on `out` (give it a buffered writer).
    pub fn new(out: W, header: Header) -> std::io::Result<Self> {
        let mut out = Hashing::new(out);
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_be_bytes())?;
        out.write_all(&header.shard_id.to_be_bytes())?;
        out.write_all(&header.applied_index.to_be_bytes())?;
        Ok(Self {
            out,
            pairs: 0,
            bytes: 0,
        })
    }

    /// Appends one block: `pairs` with the crc32 that was checked for them
    /// (empty blocks are skipped). Fails with `InvalidInput` for a block
    /// that a reader would refuse as too large.
    pub fn write_block(&mut self, pairs: &[KeyValue], crc32: u32) -> std::io::Result<()> {
        if pairs.is_empty() {
            return Ok(());
        }
        let too_big = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        let payload: usize = pairs.iter().map(|p| 8 + p.key.len() + p.value.len()).sum();
        if payload > BLOCK_BYTES_MAX as usize || pairs.iter().any(|p| p.key.len() > KEY_BYTES_MAX) {
            return Err(too_big("export chunk larger than the backup format's block limit"));
        }
        let count = u32::try_from(pairs.len()).map_err(|_| too_big("too many pairs in one chunk"))?;
        self.out.write_all(&[TAG_BLOCK])?;
        self.out.write_all(&count.to_be_bytes())?;
        self.out.write_all(&(payload as u32).to_be_bytes())?;
        self.out.write_all(&crc32.to_be_bytes())?;
        for p in pairs {
            self.out.write_all(&(p.key.len() as u32).to_be_bytes())?;
            self.out.write_all(&p.key)?;
            self.out.write_all(&(p.value.len() as u32).to_be_bytes())?;
            self.out.write_all(&p.value)?;
            self.bytes += (p.key.len() + p.value.len()) as u64;
        }
        self.pairs += pairs.len() as u64;
        Ok(())
    }

    /// Writes the end record and flushes; returns the totals and the
    /// underlying writer (the caller syncs it).
    pub fn finish(mut self) -> std::io::Result<(W, FileTotals)> {
        self.out.write_all(&[TAG_END])?;
        self.out.write_all(&self.pairs.to_be_bytes())?;
        self.out.write_all(&self.bytes.to_be_bytes())?;
        self.out.flush()?;
        let (w, file_bytes, sha256) = self.out.hex();
        Ok((
            w,
            FileTotals {
                pairs: self.pairs,
                bytes: self.bytes,
                file_bytes,
                sha256,
            },
        ))
    }
}

fn read_array<const N: usize>(r: &mut impl Read, what: &str) -> Result<[u8; N], FormatError> {
    let mut b = [0u8; N];
    r.read_exact(&mut b).map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::Corrupt(format!("file ends inside the {what}")),
        _ => FormatError::Io(e),
    })?;
    Ok(b)
}

/// Reads one shard file block by block, checking every block's crc32 and
/// the end record; [`ShardFileReader::finish`] checks that nothing follows
/// and gives the file's totals and SHA-256.
pub struct ShardFileReader<R: Read> {
    input: Hashing<R>,
    header: Header,
    pairs: u64,
    bytes: u64,
    ended: bool,
}

impl<R: Read> ShardFileReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<Self, FormatError> {
        let mut input = Hashing::new(input);
        let magic: [u8; 4] = read_array(&mut input, "header")?;
        if &magic != MAGIC {
            return corrupt("not a ringkv backup shard file (bad magic)");
        }
        let version = u32::from_be_bytes(read_array(&mut input, "header")?);
        if version != VERSION {
            return corrupt(format!("shard file version {version}, this ringkv reads {VERSION}"));
        }
        let shard_id = u64::from_be_bytes(read_array(&mut input, "header")?);
        let applied_index = u64::from_be_bytes(read_array(&mut input, "header")?);
        Ok(Self {
            input,
            header: Header {
                shard_id,
                applied_index,
            },
            pairs: 0,
            bytes: 0,
            ended: false,
        })
    }

    /// The file's header.
    pub fn header(&self) -> Header {
        self.header
    }

    /// The next block's pairs, `None` after the end record.
    pub fn next_block(&mut self) -> Result<Option<Vec<KeyValue>>, FormatError> {
        if self.ended {
            return Ok(None);
        }
        let [tag] = read_array(&mut self.input, "record tag")?;
        match tag {
            TAG_BLOCK => {}
            TAG_END => {
                let pairs = u64::from_be_bytes(read_array(&mut self.input, "end record")?);
                let bytes = u64::from_be_bytes(read_array(&mut self.input, "end record")?);
                if (pairs, bytes) != (self.pairs, self.bytes) {
                    return corrupt(format!(
                        "end record says {pairs} pairs / {bytes} bytes, blocks hold {} / {}",
                        self.pairs, self.bytes
                    ));
                }
                self.ended = true;
                return Ok(None);
            }
            t => return corrupt(format!("unknown record tag {t:#04x}")),
        }
        let count = u32::from_be_bytes(read_array(&mut self.input, "block header")?);
        let len = u32::from_be_bytes(read_array(&mut self.input, "block header")?);
        let crc = u32::from_be_bytes(read_array(&mut self.input, "block header")?);
        if len > BLOCK_BYTES_MAX {
            return corrupt(format!("block of {len} bytes exceeds {BLOCK_BYTES_MAX}"));
        }
        let mut payload = vec![0u8; len as usize];
        self.input.read_exact(&mut payload).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => FormatError::Corrupt("file ends inside a block".into()),
            _ => FormatError::Io(e),
        })?;
        let actual = crc32fast::hash(&payload);
        if actual != crc {
            return corrupt(format!(
                "block {} crc32 {actual:#010x} != recorded {crc:#010x}",
                self.pairs
            ));
        }
        let pairs = decode_payload(&payload, count)?;
        self.pairs += pairs.len() as u64;
        self.bytes += pairs.iter().map(|p| (p.key.len() + p.value.len()) as u64).sum::<u64>();
        Ok(Some(pairs))
    }

    /// After the end record: checks that the file ends there and returns
    /// its totals.
    pub fn finish(mut self) -> Result<FileTotals, FormatError> {
        if !self.ended {
            return corrupt("finish before the end record");
        }
        let mut probe = [0u8; 1];
        if self.input.read(&mut probe)? != 0 {
            return corrupt("bytes after the end record");
        }
        let (_, file_bytes, sha256) = self.input.hex();
        Ok(FileTotals {
            pairs: self.pairs,
            bytes: self.bytes,
            file_bytes,
            sha256,
        })
    }
}

fn decode_payload(payload: &[u8], count: u32) -> Result<Vec<KeyValue>, FormatError> {
    fn take<'a>(p: &mut &'a [u8], n: usize) -> Result<&'a [u8], FormatError> {
        if p.len() < n {
            return corrupt("block payload ends inside a pair");
        }
        let (head, tail) = p.split_at(n);
        *p = tail;
        Ok(head)
    }
    fn len(p: &mut &[u8]) -> Result<usize, FormatError> {
        let b = take(p, 4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
    let mut p = payload;
    let mut out = Vec::with_capacity((count as usize).min(payload.len() / 8 + 1));
    for _ in 0..count {
        let klen = len(&mut p)?;
        if klen == 0 || klen > KEY_BYTES_MAX {
            return corrupt(format!("key of {klen} bytes"));
        }
        let key = take(&mut p, klen)?.to_vec();
        let vlen = len(&mut p)?;
        let value = take(&mut p, vlen)?.to_vec();
        out.push(KeyValue { key, value });
    }
    if !p.is_empty() {
        return corrupt(format!("{} bytes after the block's {count} pairs", p.len()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &[u8], v: &[u8]) -> KeyValue {
        KeyValue {
            key: k.to_vec(),
            value: v.to_vec(),
        }
    }

    fn sample() -> (Vec<u8>, FileTotals, Vec<Vec<KeyValue>>) {
        let blocks = vec![
            vec![kv(b"a", b""), kv(b"b\0\xff", &[7u8; 300])],
            vec![],
            vec![kv(b"c", b"x")],
        ];
        let mut w = ShardFileWriter::new(
            Vec::new(),
            Header {
                shard_id: 3,
                applied_index: 42,
            },
        )
        .unwrap();
        for b in &blocks {
            w.write_block(b, ringkv_proto::export_chunk_crc(b)).unwrap();
        }
        let (bytes, totals) = w.finish().unwrap();
        (bytes, totals, blocks.into_iter().filter(|b| !b.is_empty()).collect())
    }

    fn read_all(bytes: &[u8]) -> Result<(Header, Vec<Vec<KeyValue>>, FileTotals), FormatError> {
        let mut r = ShardFileReader::new(bytes)?;
        let mut blocks = vec![];
        while let Some(b) = r.next_block()? {
            blocks.push(b);
        }
        let h = r.header();
        Ok((h, blocks, r.finish()?))
    }

    #[test]
    fn round_trip_with_the_servers_crc_and_the_same_sha256() {
        let (bytes, totals, blocks) = sample();
        assert_eq!(totals.pairs, 3);
        assert_eq!(totals.bytes, 1 + 3 + 300 + 1 + 1);
        assert_eq!(totals.file_bytes, bytes.len() as u64);
        let (h, got, read_totals) = read_all(&bytes).unwrap();
        assert_eq!(
            h,
            Header {
                shard_id: 3,
                applied_index: 42
            }
        );
        assert_eq!(got, blocks);
        assert_eq!(read_totals, totals);
    }

    #[test]
    fn every_flipped_byte_or_truncation_is_caught() {
        let (bytes, totals, _) = sample();
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x20;
            let ok = matches!(read_all(&b), Ok((_, _, t)) if t.sha256 == totals.sha256);
            assert!(!ok, "flip at byte {i} went unnoticed");
        }
        for n in 0..bytes.len() {
            assert!(read_all(&bytes[..n]).is_err(), "truncation to {n} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(read_all(&longer).is_err(), "trailing byte accepted");
    }
}
