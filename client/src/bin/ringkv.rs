//! `ringkv`: the command-line client of ringkv, built on `ringkv-client`.
//!
//! ```text
//! ringkv [--endpoints A,B,C] [--json] [--timeout 10s] [--admin-token-file F]
//!        [--tls-ca-file F [--tls-cert-file F --tls-key-file F]] <command>
//!   get KEY                                   print the value
//!   put KEY (VALUE | - | --file PATH)         write a value (- = stdin)
//!   del KEY                                   delete; says whether it existed
//!   cas KEY (--expect V | --expect-absent) (--new V | --delete)
//!   scan [--start K] [--end K] [--limit N]    pairs in key order
//!   cluster status                            nodes, shards, leaders, epoch
//!   backup DIR                                every shard into DIR, with checksums
//!   restore DIR [--force]                     verify DIR, then write it into an empty cluster
//! ```
//!
//! Exit codes (stable, for scripts):
//!
//! | code | meaning |
//! | --- | --- |
//! | 0 | success |
//! | 1 | `get`: key not found; `cas`: the condition did not hold (nothing changed); `restore`: the cluster is not empty (nothing written) |
//! | 2 | usage error: bad arguments, unreadable `--file`, malformed endpoint; `backup`: DIR not empty or not writable; `restore`: the backup does not verify (nothing written) |
//! | 3 | unavailable: no node reachable, shard without leader, overloaded, or the timeout passed (nothing was applied) |
//! | 4 | invalid argument: the server refused the request (a limit such as `value_bytes_max`) |
//! | 5 | indeterminate: a write was sent but its outcome is unknown |
//! | 6 | other server error (storage, internal, unauthenticated) |
//!
//! A `restore` that ends with 3 to 6 stopped partway: some pairs were
//! written; run it again with `--force` to complete it.
//!
//! Errors are printed as one line on stderr: `ringkv: error: ...`.

use std::io::Read;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use futures::StreamExt;
use ringkv_client::backup;
use ringkv_client::backup::BackupError;
use ringkv_client::backup::BackupOptions;
use ringkv_client::backup::RestoreOptions;
use ringkv_client::CallOptions;
use ringkv_client::Client;
use ringkv_client::Config;
use ringkv_client::Error;
use ringkv_client::ErrorKind;
use ringkv_client::TlsConfig;
use serde_json::json;

const EXIT_OK: u8 = 0;
const EXIT_NOT_FOUND: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_UNAVAILABLE: u8 = 3;
const EXIT_INVALID: u8 = 4;
const EXIT_INDETERMINATE: u8 = 5;
const EXIT_SERVER: u8 = 6;

/// Command-line client of ringkv.
#[derive(Parser, Debug)]
#[command(name = "ringkv", version, about, after_help = EXIT_HELP)]
struct Cli {
    /// Comma-separated node addresses (host:port); any reachable node is
    /// enough, the others are learned from it.
    #[arg(
        long,
        global = true,
        env = "RINGKV_ENDPOINTS",
        default_value = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Print results as JSON (values as UTF-8 strings, or hex in
    /// `value_hex` when they are not UTF-8).
    #[arg(long, global = true)]
    json: bool,
    /// Deadline of the whole command, retries included (e.g. 10s, 500ms,
    /// 2). For backup and restore: of each step (opening one shard's
    /// export, waiting for one chunk, one batch).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// File holding the Admin API bearer token (the cluster's
    /// `admin.token_file`); needed by every command when the cluster has one.
    #[arg(long, global = true, env = "RINGKV_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// CA bundle (PEM) that signs the nodes' certificates: talk TLS to the
    /// cluster.
    #[arg(long, global = true, env = "RINGKV_TLS_CA_FILE")]
    tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for clusters that require mutual TLS; needs
    /// --tls-key-file and --tls-ca-file.
    #[arg(long, global = true, env = "RINGKV_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert-file.
    #[arg(long, global = true, env = "RINGKV_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Name to check the nodes' certificates against instead of the address
    /// dialled (for certificates that name a host rather than the IP).
    #[arg(long, global = true, env = "RINGKV_TLS_SERVER_NAME")]
    tls_server_name: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Largest admin token file read.
const ADMIN_TOKEN_FILE_BYTES_MAX: u64 = 64 * 1024;

const EXIT_HELP: &str = "Exit codes: 0 ok, 1 key not found (get), CAS condition false or restore target \
not empty, 2 usage (also: backup DIR not empty, backup fails verification), 3 unavailable/unreachable/timeout, \
4 invalid argument, 5 write outcome unknown, 6 other server error.";

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the value of KEY (exit 1 when absent).
    Get { key: String },
    /// Write a value: VALUE, `-` for stdin, or --file PATH.
    Put {
        key: String,
        /// The value; `-` reads it from stdin.
        #[arg(conflicts_with = "file", required_unless_present = "file")]
        value: Option<String>,
        /// Read the value from this file.
        #[arg(long)]
        file: Option<std::path::PathBuf>,
    },
    /// Delete KEY.
    Del { key: String },
    /// Compare-and-swap: if KEY holds --expect (or is absent with
    /// --expect-absent), set it to --new (or --delete it). Exit 1 when the
    /// condition did not hold.
    Cas {
        key: String,
        #[arg(long, required_unless_present = "expect_absent", conflicts_with = "expect_absent")]
        expect: Option<String>,
        #[arg(long)]
        expect_absent: bool,
        #[arg(long = "new", required_unless_present = "delete", conflicts_with = "delete")]
        new_value: Option<String>,
        #[arg(long)]
        delete: bool,
    },
    /// List pairs in key order: --start inclusive, --end exclusive.
    Scan {
        #[arg(long, default_value = "")]
        start: String,
        #[arg(long, default_value = "")]
        end: String,
        /// At most this many pairs (0 = all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Write a backup of every shard into DIR (new or empty): one data
    /// file per shard with checksums, then manifest.json. Each shard is a
    /// consistent point in time; shards are not consistent with each other.
    Backup {
        dir: PathBuf,
        /// Shards exported at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Verify the backup in DIR completely, then write its pairs into the
    /// cluster (which must be empty unless --force). Keys are placed by the
    /// target's ring, so its shard count may differ.
    Restore {
        dir: PathBuf,
        /// Write even if the cluster already holds data (existing keys that
        /// are in the backup are overwritten, others are kept).
        #[arg(long)]
        force: bool,
        /// BatchPut calls in flight.
        #[arg(long, default_value_t = 4)]
        concurrency: usize,
        /// Most pairs per BatchPut; at most the cluster's
        /// limits.batch_keys_max (default 1000).
        #[arg(long, default_value_t = 500)]
        batch_keys: usize,
        /// Most key + value bytes per BatchPut (e.g. 4MiB, 512KiB, 1000000);
        /// at most the cluster's limits.batch_bytes_max (default 16MiB).
        #[arg(long, default_value = "4MiB", value_parser = parse_bytes)]
        batch_bytes: usize,
    },
    /// Cluster information.
    Cluster {
        #[command(subcommand)]
        cmd: ClusterCmd,
    },
}

#[derive(Subcommand, Debug)]
enum ClusterCmd {
    /// Nodes, shards with replicas and leaders, and the ring epoch.
    Status,
    /// Nodes as the metadata leader sees them: up, draining, replicas, leaders.
    Nodes,
    /// Shards: replicas, learners, leader, size, in-flight operation.
    Shards,
    /// In-flight moves with their step and progress.
    Ops,
    /// Move one replica of SHARD from node FROM to node TO (runs in the background).
    Move { shard: u64, from: u64, to: u64 },
    /// Roll back an in-flight move whose target is not a voter yet.
    Cancel { operation: u64 },
    /// Split SHARD at --at TOKEN (default: the middle of its range).
    Split {
        shard: u64,
        #[arg(long)]
        at: Option<u64>,
    },
    /// Hand the leadership of SHARD to its voter TO.
    TransferLeader { shard: u64, to: u64 },
    /// Decommission NODE: its replicas move away, then it leaves the cluster.
    RemoveNode { node: u64 },
    /// Turn automatic rebalancing on or off.
    Rebalance {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

/// `10s`, `500ms`, `2m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (try 10s or 500ms)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s or m)")),
    };
    if !(secs > 0.0 && secs < 86_400.0) {
        return Err(format!("timeout out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `4MiB`, `512KiB`, `1GiB` or a plain number of bytes.
fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = [("GiB", 1usize << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("B", 1)]
        .iter()
        .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("not a size: {s:?} (try 4MiB or 1000000)"))?;
    n.checked_mul(mult).ok_or_else(|| format!("size too large: {s:?}"))
}

/// A failure of the command: its exit code and one line of text.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = match e.kind() {
            ErrorKind::InvalidArgument => EXIT_INVALID,
            ErrorKind::Indeterminate | ErrorKind::StaleSequence => EXIT_INDETERMINATE,
            ErrorKind::Unavailable | ErrorKind::DeadlineExceeded | ErrorKind::Overloaded | ErrorKind::Transport => {
                EXIT_UNAVAILABLE
            }
            ErrorKind::Config => EXIT_USAGE,
            _ => EXIT_SERVER,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

impl From<BackupError> for Failure {
    fn from(e: BackupError) -> Self {
        let code = match &e {
            BackupError::TargetNotEmpty { .. } => EXIT_NOT_FOUND,
            BackupError::RingChanged { .. } => EXIT_UNAVAILABLE,
            BackupError::Export { source, .. } | BackupError::Partial { source, .. } | BackupError::Client(source) => {
                Failure::from(source.clone()).code
            }
            _ => EXIT_USAGE,
        };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn usage(message: String) -> Failure {
    Failure {
        code: EXIT_USAGE,
        message,
    }
}

/// A value as JSON: a UTF-8 string under `value`, otherwise hex under
/// `value_hex`.
fn value_json(obj: &mut serde_json::Map<String, serde_json::Value>, field: &str, v: &[u8]) {
    match std::str::from_utf8(v) {
        Ok(s) => obj.insert(field.to_string(), json!(s)),
        Err(_) => obj.insert(format!("{field}_hex"), json!(hex::encode(v))),
    };
}

fn print_json(v: serde_json::Value) {
    println!("{v}");
}

fn write_raw(v: &[u8]) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(v);
    let _ = out.write_all(b"\n");
}

/// The client configuration from the global flags; reads the token and
/// certificate files.
fn config(cli: &Cli) -> Result<Config, Failure> {
    let admin_token = match &cli.admin_token_file {
        None => None,
        Some(path) => {
            let shown = path.display();
            let meta = std::fs::metadata(path).map_err(|e| usage(format!("cannot read {shown}: {e}")))?;
            if meta.len() > ADMIN_TOKEN_FILE_BYTES_MAX {
                return Err(usage(format!(
                    "{shown} is larger than {ADMIN_TOKEN_FILE_BYTES_MAX} bytes"
                )));
            }
            let text = std::fs::read_to_string(path).map_err(|e| usage(format!("cannot read {shown}: {e}")))?;
            let token = text.trim();
            if token.is_empty() {
                return Err(usage(format!("{shown} holds no token")));
            }
            Some(token.to_string())
        }
    };
    let tls = match (&cli.tls_ca_file, &cli.tls_cert_file, &cli.tls_key_file) {
        (None, None, None) => None,
        (None, _, _) => return Err(usage("--tls-cert-file and --tls-key-file need --tls-ca-file".into())),
        (Some(ca), cert, key) => {
            let identity = cert.as_deref().zip(key.as_deref());
            let mut tls = TlsConfig::from_pem_files(ca, identity)?;
            tls.domain_name = cli.tls_server_name.clone();
            Some(tls)
        }
    };
    let timeout = cli.timeout;
    Ok(Config {
        request_timeout: timeout,
        connect_timeout: timeout.min(Duration::from_secs(2)),
        attempt_timeout: timeout.min(Duration::from_secs(4)),
        stream_idle_timeout: timeout,
        admin_token,
        tls,
        ..Config::default()
    })
}

async fn run(cli: Cli) -> Result<u8, Failure> {
    // Read local inputs before touching the network.
    let put_value = match &cli.cmd {
        Cmd::Put { value, file, .. } => Some(match (value.as_deref(), file) {
            (_, Some(path)) => {
                std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?
            }
            (Some("-"), None) => {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| usage(format!("cannot read stdin: {e}")))?;
                buf
            }
            (Some(v), None) => v.as_bytes().to_vec(),
            (None, None) => return Err(usage("put needs VALUE, - (stdin) or --file PATH".into())),
        }),
        _ => None,
    };
    // A backup to restore is checked completely before anything else.
    let verified = match &cli.cmd {
        Cmd::Restore { dir, .. } => {
            let dir = dir.clone();
            let v = tokio::task::spawn_blocking(move || backup::verify(&dir))
                .await
                .map_err(|e| Failure {
                    code: EXIT_SERVER,
                    message: format!("verification stopped: {e}"),
                })??;
            Some(v)
        }
        _ => None,
    };
    if let Cmd::Backup { dir, .. } = &cli.cmd {
        // Refuse a non-empty directory before connecting, too.
        if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
            return Err(BackupError::DirNotEmpty(dir.clone()).into());
        }
    }
    let client = Client::connect_with(&cli.endpoints, config(&cli)?).await?;
    let json = cli.json;
    match cli.cmd {
        Cmd::Get { key } => {
            let v = client.get(&key).await?;
            if json {
                let mut o = serde_json::Map::new();
                o.insert("key".into(), json!(key));
                o.insert("found".into(), json!(v.is_some()));
                if let Some(v) = &v {
                    value_json(&mut o, "value", v);
                }
                print_json(o.into());
            }
            match v {
                Some(v) => {
                    if !json {
                        write_raw(&v);
                    }
                    Ok(EXIT_OK)
                }
                None => {
                    if !json {
                        eprintln!("ringkv: key not found: {key}");
                    }
                    Ok(EXIT_NOT_FOUND)
                }
            }
        }
        Cmd::Put { key, .. } => {
            let value = put_value.unwrap_or_default();
            client.put(&key, &value).await?;
            if json {
                print_json(json!({"key": key, "ok": true, "bytes": value.len()}));
            } else {
                println!("OK");
            }
            Ok(EXIT_OK)
        }
        Cmd::Del { key } => {
            let existed = client.delete(&key).await?;
            if json {
                print_json(json!({"key": key, "existed": existed}));
            } else {
                println!("{}", if existed { "deleted" } else { "absent" });
            }
            Ok(EXIT_OK)
        }
        Cmd::Cas {
            key, expect, new_value, ..
        } => {
            let out = client
                .compare_and_swap(
                    &key,
                    expect.as_deref().map(str::as_bytes),
                    new_value.as_deref().map(str::as_bytes),
                )
                .await?;
            if json {
                let mut o = serde_json::Map::new();
                o.insert("key".into(), json!(key));
                o.insert("succeeded".into(), json!(out.succeeded));
                o.insert("previous_found".into(), json!(out.previous.is_some()));
                if let Some(p) = &out.previous {
                    value_json(&mut o, "previous", p);
                }
                print_json(o.into());
            } else if out.succeeded {
                println!("OK");
            } else {
                match &out.previous {
                    Some(p) => println!("not applied; current value: {}", String::from_utf8_lossy(p)),
                    None => println!("not applied; key is absent"),
                }
            }
            Ok(if out.succeeded { EXIT_OK } else { EXIT_NOT_FOUND })
        }
        Cmd::Scan { start, end, limit } => {
            let mut s = Box::pin(client.scan_with(&start, &end, limit, &CallOptions::default()));
            while let Some(pair) = s.next().await {
                let (k, v) = pair?;
                if json {
                    let mut o = serde_json::Map::new();
                    value_json(&mut o, "key", &k);
                    value_json(&mut o, "value", &v);
                    print_json(o.into());
                } else {
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&k);
                    let _ = out.write_all(b"\t");
                    let _ = out.write_all(&v);
                    let _ = out.write_all(b"\n");
                }
            }
            Ok(EXIT_OK)
        }
        Cmd::Backup { dir, concurrency } => {
            let opts = BackupOptions {
                concurrency,
                call: CallOptions::new().timeout(cli.timeout),
            };
            let done = backup::backup(&client, &dir, &opts).await?;
            let m = &done.manifest;
            let secs = done.elapsed.as_secs_f64();
            if json {
                print_json(json!({
                    "dir": dir.display().to_string(),
                    "epoch": m.cluster_epoch,
                    "shards": m.shards.len(),
                    "pairs": m.total_pairs,
                    "bytes": m.total_bytes,
                    "seconds": secs,
                }));
            } else {
                println!(
                    "backed up {} pairs ({} bytes) of {} shards at epoch {} to {} in {secs:.1} s",
                    m.total_pairs,
                    m.total_bytes,
                    m.shards.len(),
                    m.cluster_epoch,
                    dir.display()
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Restore {
            force,
            concurrency,
            batch_keys,
            batch_bytes,
            ..
        } => {
            let Some(verified) = verified else {
                return Err(usage("restore without a verified backup".into()));
            };
            let opts = RestoreOptions {
                concurrency,
                batch_keys,
                batch_bytes,
                force,
                call: CallOptions::new().timeout(cli.timeout),
            };
            let done = backup::restore(&client, &verified, &opts).await?;
            let secs = done.elapsed.as_secs_f64();
            if json {
                print_json(json!({
                    "pairs": done.pairs,
                    "bytes": done.bytes,
                    "batches": done.batches,
                    "seconds": secs,
                    "backup_epoch": verified.manifest().cluster_epoch,
                    "backup_created_at": verified.manifest().created_at,
                }));
            } else {
                println!(
                    "restored {} pairs ({} bytes) in {} batches in {secs:.1} s",
                    done.pairs, done.bytes, done.batches
                );
            }
            Ok(EXIT_OK)
        }
        Cmd::Cluster {
            cmd: ClusterCmd::Status,
        } => {
            let st = client.cluster_status().await?;
            if json {
                print_json(status_json(&st));
            } else {
                print!("{}", status_table(&st));
            }
            Ok(EXIT_OK)
        }
        Cmd::Cluster { cmd } => placement_cmd(&client, &cmd, json).await,
    }
}

fn ids(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// The placement subcommands of `ringkv cluster`.
async fn placement_cmd(client: &Client, cmd: &ClusterCmd, json: bool) -> Result<u8, Failure> {
    let done = |v: serde_json::Value, text: String| {
        if json {
            print_json(v);
        } else {
            println!("{text}");
        }
        Ok(EXIT_OK)
    };
    match cmd {
        ClusterCmd::Status => unreachable!("handled by run"),
        ClusterCmd::Nodes => {
            let r = client.list_nodes().await?;
            let rows: Vec<serde_json::Value> = r
                .nodes
                .iter()
                .map(|n| {
                    json!({"id": n.id, "addr": n.addr, "up": n.up, "draining": n.draining,
                       "metadata_member": n.metadata_member, "replicas": n.replicas, "leaders": n.leaders})
                })
                .collect();
            let mut text = format!(
                "epoch {} (rebalancing {})\n{:<6} {:<22} {:<5} {:<9} {:<5} {:<9} {}",
                r.epoch,
                if r.rebalance_enabled { "on" } else { "off" },
                "NODE",
                "ADDRESS",
                "UP",
                "DRAINING",
                "META",
                "REPLICAS",
                "LEADERS"
            );
            for n in &r.nodes {
                text += &format!(
                    "\n{:<6} {:<22} {:<5} {:<9} {:<5} {:<9} {}",
                    n.id, n.addr, n.up, n.draining, n.metadata_member, n.replicas, n.leaders
                );
            }
            done(
                json!({"epoch": r.epoch, "rebalance_enabled": r.rebalance_enabled, "nodes": rows}),
                text,
            )
        }
        ClusterCmd::Shards => {
            let r = client.list_shards().await?;
            let rows: Vec<serde_json::Value> = r
                .shards
                .iter()
                .map(|s| {
                    json!({"id": s.id, "replicas": s.replicas, "learners": s.learners, "leader": s.leader_id,
                       "approximate_bytes": s.approximate_bytes, "operation": s.operation_id})
                })
                .collect();
            let mut text = format!(
                "epoch {}\n{:<6} {:<12} {:<9} {:<7} {:<14} {}",
                r.epoch, "SHARD", "REPLICAS", "LEARNERS", "LEADER", "BYTES", "OPERATION"
            );
            for s in &r.shards {
                text += &format!(
                    "\n{:<6} {:<12} {:<9} {:<7} {:<14} {}",
                    s.id,
                    ids(&s.replicas),
                    ids(&s.learners),
                    s.leader_id,
                    s.approximate_bytes,
                    s.operation_id
                );
            }
            done(json!({"epoch": r.epoch, "shards": rows}), text)
        }
        ClusterCmd::Ops => {
            let r = client.list_operations().await?;
            let rows: Vec<serde_json::Value> = r
                .operations
                .iter()
                .map(|o| {
                    json!({"id": o.id, "shard": o.shard_id, "from": o.from_node, "to": o.to_node,
                       "reason": o.reason, "step": o.step, "entries_behind": o.entries_behind,
                       "age_ms": o.age_ms, "cancelled": o.cancelled})
                })
                .collect();
            let mut text = format!(
                "epoch {}\n{:<5} {:<6} {:<5} {:<5} {:<13} {:<15} {:<9} {}",
                r.epoch, "OP", "SHARD", "FROM", "TO", "REASON", "STEP", "BEHIND", "AGE"
            );
            for o in &r.operations {
                text += &format!(
                    "\n{:<5} {:<6} {:<5} {:<5} {:<13} {:<15} {:<9} {:.1}s{}",
                    o.id,
                    o.shard_id,
                    o.from_node,
                    o.to_node,
                    o.reason,
                    o.step,
                    o.entries_behind,
                    o.age_ms as f64 / 1000.0,
                    if o.cancelled { " (cancelled)" } else { "" }
                );
            }
            done(json!({"epoch": r.epoch, "operations": rows}), text)
        }
        ClusterCmd::Move { shard, from, to } => {
            let r = client.move_replica(*shard, *from, *to).await?;
            done(
                json!({"epoch": r.epoch, "operation": r.operation_id}),
                format!(
                    "move {} recorded (epoch {}): shard {shard} from node {from} to node {to}; follow it with `ringkv cluster ops`",
                    r.operation_id, r.epoch
                ),
            )
        }
        ClusterCmd::Cancel { operation } => {
            let r = client.cancel_operation(*operation).await?;
            done(
                json!({"epoch": r.epoch}),
                format!("operation {operation} marked for roll-back (epoch {})", r.epoch),
            )
        }
        ClusterCmd::Split { shard, at } => {
            let r = client.split_shard(*shard, *at).await?;
            done(
                json!({"epoch": r.epoch, "new_shard": r.new_shard_id, "split_token": r.split_token}),
                format!(
                    "shard {shard} split at token {:#018x}: new shard {} (epoch {})",
                    r.split_token, r.new_shard_id, r.epoch
                ),
            )
        }
        ClusterCmd::TransferLeader { shard, to } => {
            let r = client.transfer_leader(*shard, *to).await?;
            done(
                json!({"leader": r.leader_id}),
                format!("shard {shard} is now led by node {}", r.leader_id),
            )
        }
        ClusterCmd::RemoveNode { node } => {
            let r = client.remove_node(*node).await?;
            done(
                json!({"epoch": r.epoch}),
                format!(
                    "node {node} is draining (epoch {}); it leaves once `ringkv cluster nodes` no longer lists it",
                    r.epoch
                ),
            )
        }
        ClusterCmd::Rebalance { state } => {
            let r = client.set_rebalance(state == "on").await?;
            done(
                json!({"epoch": r.epoch, "enabled": r.enabled}),
                format!(
                    "rebalancing {} (epoch {})",
                    if r.enabled { "on" } else { "off" },
                    r.epoch
                ),
            )
        }
    }
}

fn range_end(r: &ringkv_client::proto::TokenRange) -> String {
    if r.end_is_max {
        "2^64".to_string()
    } else {
        format!("{:#018x}", r.end)
    }
}

fn status_json(st: &ringkv_client::proto::ClusterStatusResponse) -> serde_json::Value {
    json!({
        "epoch": st.epoch,
        "served_by": st.served_by,
        "nodes": st.nodes.iter().map(|n| json!({"id": n.id, "addr": n.addr})).collect::<Vec<_>>(),
        "shards": st.shards.iter().map(|s| json!({
            "id": s.id,
            "leader": s.leader_id,
            "replicas": s.replicas,
            "term": s.term,
            "last_applied_index": s.last_applied_index,
            "ranges": s.ranges.iter().map(|r| json!({
                "start": r.start,
                "end": if r.end_is_max { serde_json::Value::Null } else { json!(r.end) },
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn status_table(st: &ringkv_client::proto::ClusterStatusResponse) -> String {
    let mut out = format!("epoch {} (as seen by node {})\n\n", st.epoch, st.served_by);
    out += &format!("{:<6} {}\n", "NODE", "ADDRESS");
    for n in &st.nodes {
        out += &format!("{:<6} {}\n", n.id, n.addr);
    }
    out += &format!(
        "\n{:<6} {:<7} {:<10} {:<6} {}\n",
        "SHARD", "LEADER", "REPLICAS", "TERM", "TOKEN RANGES"
    );
    for s in &st.shards {
        let replicas = s.replicas.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let leader = if s.leader_id == 0 {
            "?".to_string()
        } else {
            s.leader_id.to_string()
        };
        let ranges = s
            .ranges
            .iter()
            .map(|r| format!("[{:#018x}, {})", r.start, range_end(r)))
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!("{:<6} {:<7} {:<10} {:<6} {}\n", s.id, leader, replicas, s.term, ranges);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringkv: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_SERVER);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            let one_line = f.message.replace(['\n', '\r'], " ");
            eprintln!("ringkv: error: {one_line}");
            ExitCode::from(f.code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("5h").is_err());
    }

    #[test]
    fn cli_parses() {
        Cli::command_check();
        let c = Cli::try_parse_from(["ringkv", "--json", "cas", "k", "--expect-absent", "--new", "1"]).unwrap();
        assert!(c.json);
        assert!(matches!(
            c.cmd,
            Cmd::Cas {
                expect: None,
                expect_absent: true,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["ringkv", "cas", "k", "--new", "1"]).is_err());
        assert!(Cli::try_parse_from(["ringkv", "put", "k"]).is_err());
        assert!(Cli::try_parse_from(["ringkv", "put", "k", "--file", "/x"]).is_ok());
        let c = Cli::try_parse_from(["ringkv", "restore", "/b", "--force", "--batch-bytes", "1MiB"]).unwrap();
        assert!(matches!(
            c.cmd,
            Cmd::Restore {
                force: true,
                batch_bytes: 1_048_576,
                batch_keys: 500,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["ringkv", "backup"]).is_err(), "backup needs DIR");
        assert!(
            Cli::try_parse_from(["ringkv", "--tls-cert-file", "c.pem", "get", "k"]).is_err(),
            "a certificate without its key"
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("4MiB"), Ok(4 << 20));
        assert_eq!(parse_bytes("512KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert_eq!(parse_bytes("10B"), Ok(10));
        assert!(parse_bytes("4MB").is_err());
        assert!(parse_bytes("lots").is_err());
    }

    impl Cli {
        fn command_check() {
            use clap::CommandFactory;
            Cli::command().debug_assert();
        }
    }
}
