//! `ringkv backup` and `ringkv restore` with the real binary between two
//! real clusters of different shard counts: every pair (binary keys, empty
//! and ~100 KiB values) comes back; a backup with one flipped byte is
//! refused before anything is written; a non-empty target is refused
//! without --force; a non-empty backup directory is refused.

#[path = "../../server/tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::process::Output;
use std::process::Stdio;
use std::time::Duration;

use common::Cluster;
use common::Opts;
use futures::TryStreamExt;
use rand::Rng;
use rand::SeedableRng;
use ringkv_client::Client;
use ringkv_client::Config;

const KEYS: usize = 3_000;
/// Every this many keys, a value of about 100 KiB.
const BIG_EVERY: usize = 100;
const BIG_VALUE_BYTES: usize = 100 * 1024;
/// Every this many keys, an empty value.
const EMPTY_EVERY: usize = 7;
const SOURCE_SHARDS: u32 = 4;
const TARGET_SHARDS: u32 = 3;
const WRITE_BATCH: usize = 200;

fn ringkv(endpoints: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["--endpoints", endpoints, "--timeout", "30s"])
        .args(args)
        .env_remove("RINGKV_ENDPOINTS")
        .stdin(Stdio::null())
        .output()
        .expect("run ringkv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[track_caller]
fn assert_code(o: &Output, code: i32, what: &str) {
    assert_eq!(
        o.status.code(),
        Some(code),
        "{what}: stdout {:?} stderr {:?}",
        text(&o.stdout),
        text(&o.stderr)
    );
}

fn endpoints(c: &Cluster) -> String {
    c.nodes.values().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
}

fn patient() -> Config {
    Config {
        request_timeout: Duration::from_secs(60),
        max_attempts: 200,
        ..Config::default()
    }
}

async fn everything(c: &Cluster) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let client = Client::connect_with([c.addr(1), c.addr(2), c.addr(3)], patient())
        .await
        .expect("connect");
    let pairs: Vec<(Vec<u8>, Vec<u8>)> = client.scan("", "").try_collect().await.expect("scan");
    let n = pairs.len();
    let map: BTreeMap<_, _> = pairs.into_iter().collect();
    assert_eq!(map.len(), n, "scan returned a key twice");
    map
}

fn flip_a_byte_of_the_largest_file(dir: &Path) -> String {
    let (path, len) = std::fs::read_dir(dir)
        .expect("read backup dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "rkvb"))
        .map(|p| {
            let len = std::fs::metadata(&p).expect("stat").len();
            (p, len)
        })
        .max_by_key(|(_, len)| *len)
        .expect("a shard file");
    let mut bytes = std::fs::read(&path).expect("read shard file");
    bytes[(len / 2) as usize] ^= 0x01;
    std::fs::write(&path, bytes).expect("write shard file");
    path.file_name().expect("name").to_string_lossy().into_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read dir") {
        let p = e.expect("entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_into_a_cluster_with_another_shard_count() {
    let seed = common::seed(50);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut want: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut i = 0usize;
    while want.len() < KEYS {
        let klen = rng.gen_range(1..=48);
        let key: Vec<u8> = (0..klen).map(|_| rng.gen()).collect();
        let vlen = if i.is_multiple_of(BIG_EVERY) {
            BIG_VALUE_BYTES + rng.gen_range(0..1024)
        } else if i.is_multiple_of(EMPTY_EVERY) {
            0
        } else {
            rng.gen_range(1..1500)
        };
        let value: Vec<u8> = (0..vlen).map(|_| rng.gen()).collect();
        if want.insert(key, value).is_none() {
            i += 1;
        }
    }
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("backup");

    {
        let a = Cluster::start(Opts {
            shards: SOURCE_SHARDS,
            ..Opts::default()
        })
        .await;
        let client = Client::connect_with([a.addr(1)], patient()).await.expect("connect A");
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = want.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for batch in pairs.chunks(WRITE_BATCH) {
            client.batch_put(batch).await.expect("load cluster A");
        }

        let o = ringkv(&endpoints(&a), &["backup", dir.to_str().expect("utf8")]);
        assert_code(&o, 0, "backup");
        eprint!("{}", text(&o.stdout));
        assert!(
            text(&o.stdout).contains(&format!("backed up {KEYS} pairs")),
            "{}",
            text(&o.stdout)
        );
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
        assert_eq!(manifest["format_version"], 1);
        assert_eq!(manifest["total_pairs"], KEYS as u64);
        assert_eq!(
            manifest["shards"].as_array().expect("shards").len(),
            SOURCE_SHARDS as usize
        );
        let names: Vec<String> = std::fs::read_dir(&dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "temp files left: {names:?}");
        assert_eq!(names.len(), SOURCE_SHARDS as usize + 1, "{names:?}");

        // The same directory again: refused, one line, exit 2.
        let o = ringkv(&endpoints(&a), &["backup", dir.to_str().expect("utf8")]);
        assert_code(&o, 2, "backup into a non-empty directory");
        assert_eq!(text(&o.stderr).lines().count(), 1, "{}", text(&o.stderr));
        assert!(text(&o.stderr).contains("not empty"), "{}", text(&o.stderr));
        // Cluster A stops here: only one cluster runs at a time.
    }

    let b = Cluster::start(Opts {
        shards: TARGET_SHARDS,
        ..Opts::default()
    })
    .await;
    let eps = endpoints(&b);

    // A corrupted copy is refused before anything is written.
    let bad = work.path().join("corrupt");
    copy_dir(&dir, &bad);
    let file = flip_a_byte_of_the_largest_file(&bad);
    let o = ringkv(&eps, &["restore", bad.to_str().expect("utf8")]);
    assert_code(&o, 2, "restore of a corrupt backup");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("corrupt") && err.contains(&file), "{err}");
    assert!(everything(&b).await.is_empty(), "a corrupt backup wrote something");

    // The real restore, in small batches, into 3 shards instead of 4.
    let o = ringkv(
        &eps,
        &[
            "restore",
            dir.to_str().expect("utf8"),
            "--batch-keys",
            "250",
            "--batch-bytes",
            "1MiB",
        ],
    );
    assert_code(&o, 0, "restore");
    eprint!("{}", text(&o.stdout));
    assert!(
        text(&o.stdout).contains(&format!("restored {KEYS} pairs")),
        "{}",
        text(&o.stdout)
    );
    let got = everything(&b).await;
    assert_eq!(got.len(), want.len(), "restored key count");
    for (k, v) in &want {
        assert_eq!(
            got.get(k),
            Some(v),
            "key {:?} after restore",
            k.escape_ascii().to_string()
        );
    }

    // Once the target holds data: refused without --force (exit 1), and a
    // forced run writes the same pairs again.
    let o = ringkv(&eps, &["restore", dir.to_str().expect("utf8")]);
    assert_code(&o, 1, "restore into a non-empty cluster");
    let err = text(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--force"), "{err}");
    let o = ringkv(&eps, &["--json", "restore", dir.to_str().expect("utf8"), "--force"]);
    assert_code(&o, 0, "forced restore");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("restore --json is JSON");
    assert_eq!(v["pairs"], KEYS as u64);
    assert_eq!(
        everything(&b).await.len(),
        KEYS,
        "a forced restore changed the key count"
    );
}
