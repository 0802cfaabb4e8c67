//! Key encodings of every column family. Big-endian integers so that byte
//! order equals numeric order.

/// Tags under a shard prefix in `raft_state`.
pub const STATE_VOTE: u8 = b'v';
pub const STATE_COMMITTED: u8 = b'c';
pub const STATE_PURGED: u8 = b'p';

/// Tags under a shard prefix in `meta`.
pub const META_APPLIED: u8 = b'a';
pub const META_SESSION: u8 = b's';
pub const META_SNAPSHOT: u8 = b'S';
pub const META_LAYOUT: u8 = b'L';
/// A snapshot install in progress (redone at open after a crash).
pub const META_INSTALLING: u8 = b'I';
/// The token ranges the shard owns, once they differ from its bootstrap
/// ranges (after a split); replicated state like the data.
pub const META_RANGES: u8 = b'R';
/// The Raft vote a deleted replica held, made uncommitted: kept after the
/// replica's state is deleted so a later replica of the shard on this node
/// starts from it instead of from no vote at all (see
/// `node::membership::delete_shard_data`). Not replicated.
pub const META_VOTE_TOMBSTONE: u8 = b'V';

/// Pseudo shard id for node-wide records in `meta`.
pub const NODE_RECORDS: u64 = u64::MAX;
pub const NODE_BOOTSTRAP: u8 = b'B';

pub fn log_key(shard: u64, index: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8..].copy_from_slice(&index.to_be_bytes());
    k
}

/// Decodes the index of a `raft_log` key.
pub fn log_key_index(key: &[u8]) -> Option<u64> {
    let b: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

pub fn tagged(shard: u64, tag: u8) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[..8].copy_from_slice(&shard.to_be_bytes());
    k[8] = tag;
    k
}

pub fn session_key(shard: u64, client_id: &[u8; 16]) -> Vec<u8> {
    let mut k = tagged(shard, META_SESSION).to_vec();
    k.extend_from_slice(client_id);
    k
}

pub fn data_key(token: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&token.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Splits a `data` key into token and user key.
pub fn split_data_key(k: &[u8]) -> Option<(u64, &[u8])> {
    let t: [u8; 8] = k.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(t), &k[8..]))
}

pub fn index_key(shard: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(key);
    k
}

pub fn shard_prefix(shard: u64) -> [u8; 8] {
    shard.to_be_bytes()
}

/// Longest user key any configuration allows (`limits.key_bytes_max`).
const USER_KEY_BYTES_MAX: usize = 64 * 1024;

/// The `data` keys `[from, to)` of a token range (`end == None`: to the end
/// of the ring).
pub fn data_range(start: u64, end: Option<u64>) -> (Vec<u8>, Vec<u8>) {
    let from = start.to_be_bytes().to_vec();
    let to = match end {
        Some(e) => e.to_be_bytes().to_vec(),
        // Above every key of token 2^64-1: that token and the longest key
        // of 0xff bytes.
        None => vec![0xff; 8 + USER_KEY_BYTES_MAX + 1],
    };
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_round_trips() {
        assert!(log_key(1, 255) < log_key(1, 256));
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert_eq!(log_key_index(&log_key(3, 99)), Some(99));
        assert_eq!(log_key_index(b"short"), None);
        assert!(data_key(1, b"zzz") < data_key(2, b"a"));
        assert_eq!(split_data_key(&data_key(7, b"k")), Some((7, &b"k"[..])));
        assert!(index_key(1, b"a") < index_key(1, b"b"));
        assert!(index_key(1, b"\xff\xff") < index_key(2, b""));
    }
}
