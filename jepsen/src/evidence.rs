//! What a run that did not come out valid leaves in its own output, for
//! whoever has only that output (CI keeps a failing test's output, not its
//! run folder): the nemesis timeline and, from each node's log, the lines
//! that tell how shards changed hands (leadership per shard and term,
//! restarts, joins, splits, warnings, errors), all on the history's clock.
//!
//! Reads the run folder and the history; decides nothing about validity.

use std::fmt::Write as _;
use std::path::Path;

use crate::history::History;

/// Log lines kept per node: the first [`LINES_HEAD`] and the last
/// `LINES_PER_NODE_MAX - LINES_HEAD`, with a marker for those left out.
pub const LINES_PER_NODE_MAX: usize = 200;
const LINES_HEAD: usize = 50;
/// Longest line kept, in characters (the rest is cut).
pub const LINE_CHARS_MAX: usize = 240;
/// Largest node log read, in bytes (its end is what is read).
const LOG_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Messages worth keeping from a node's log, besides every warning and
/// error.
const MESSAGES: [&str; 8] = [
    "shard leadership seen",
    "resuming from data dir",
    "bootstrapping a new cluster",
    "joined the cluster",
    "shard split",
    "cluster layout confirmed",
    "shutting down",
    "panicked",
];

/// The evidence of the run in `dir`: the nemesis events of `history`, then
/// each `node<N>.log`'s kept lines, times in seconds from the history's
/// start (`start_unix_ms`, wall clock; node logs stamp UTC wall time).
pub fn digest(dir: &Path, history: &History, start_unix_ms: u64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "== evidence: nemesis events and node log excerpts (seconds from the history's start) =="
    );
    let _ = writeln!(s, "\nnemesis:");
    for &i in &history.nemesis {
        let ev = &history.events[i];
        let _ = writeln!(
            s,
            "  {:>9} {} {}",
            seconds(ev.time as i64 / 1_000_000),
            ev.f.as_str(),
            ev.value
        );
    }
    for (id, path) in node_logs(dir) {
        let text = match read_tail(&path) {
            Ok(t) => t,
            Err(e) => {
                let _ = writeln!(s, "\nnode {id}: cannot read {}: {e}", path.display());
                continue;
            }
        };
        let kept = collapse(text.lines().filter(|l| keep(l)).map(|l| excerpt(l, start_unix_ms)));
        let _ = writeln!(s, "\nnode {id} ({} lines kept of {}):", kept.len(), path.display());
        for line in bounded(&kept) {
            let _ = writeln!(s, "  {line}");
        }
    }
    s
}

/// `(id, path)` of every `node<N>.log` in `dir`, by id.
fn node_logs(dir: &Path) -> Vec<(u64, std::path::PathBuf)> {
    let mut logs: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let id = name.strip_prefix("node")?.strip_suffix(".log")?.parse().ok()?;
                    Some((id, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    logs.sort();
    logs
}

/// The last [`LOG_BYTES_MAX`] bytes of `path`, lossily decoded.
fn read_tail(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    use std::io::Seek as _;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(std::io::SeekFrom::Start(len.saturating_sub(LOG_BYTES_MAX)))?;
    let mut bytes = Vec::new();
    f.take(LOG_BYTES_MAX).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Log targets whose warnings are left out: openraft repeats every
/// replication timeout to a stopped node several times a second, which
/// would crowd the leadership lines out of the bound; the HTTP/2 stack's
/// say nothing about the shards.
const NOISY_TARGETS: [&str; 4] = [" openraft::", " h2::", " hyper", " tower"];

fn keep(line: &str) -> bool {
    if MESSAGES.iter().any(|m| line.contains(m)) {
        return true;
    }
    (line.contains(" WARN ") || line.contains(" ERROR ")) && !NOISY_TARGETS.iter().any(|t| line.contains(t))
}

/// `line` split into the seconds since the history's start of its leading
/// UTC timestamp (`?` without one) and the rest, cut to
/// [`LINE_CHARS_MAX`].
fn excerpt(line: &str, start_unix_ms: u64) -> (String, String) {
    let (time, rest) = match line.split_once(' ') {
        Some((ts, rest)) => match parse_utc_ms(ts) {
            Some(ms) => (seconds(ms as i64 - start_unix_ms as i64), rest.trim_start()),
            None => ("?".to_string(), line),
        },
        None => ("?".to_string(), line),
    };
    (time, rest.chars().take(LINE_CHARS_MAX).collect())
}

/// One line per run of equal consecutive messages: the first one's time,
/// and how many there were until when.
fn collapse(lines: impl Iterator<Item = (String, String)>) -> Vec<String> {
    let mut runs: Vec<(String, String, usize, String)> = Vec::new();
    for (time, text) in lines {
        match runs.last_mut() {
            Some((_, last, n, until)) if *last == text => {
                *n += 1;
                *until = time;
            }
            _ => runs.push((time.clone(), text, 1, time)),
        }
    }
    runs.into_iter()
        .map(|(time, text, n, until)| match n {
            1 => format!("{time:>9} {text}"),
            n => format!("{time:>9} {text} ({n} times until {until})"),
        })
        .collect()
}

/// The first [`LINES_HEAD`] and the last lines of `lines`, at most
/// [`LINES_PER_NODE_MAX`] with the marker saying how many were left out.
fn bounded(lines: &[String]) -> Vec<String> {
    if lines.len() <= LINES_PER_NODE_MAX {
        return lines.to_vec();
    }
    let tail = LINES_PER_NODE_MAX - LINES_HEAD;
    let left_out = lines.len() - LINES_PER_NODE_MAX;
    let mut out = lines[..LINES_HEAD].to_vec();
    out.push(format!("... {left_out} lines left out ..."));
    out.extend_from_slice(&lines[lines.len() - tail..]);
    assert_eq!(out.len(), LINES_PER_NODE_MAX + 1);
    out
}

/// `ms` as signed seconds with millisecond precision (`+1.200s`): how
/// the evidence and the summary's anomalies give times from the history's
/// start.
pub fn seconds(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "+" };
    format!("{sign}{}.{:03}s", ms.unsigned_abs() / 1000, ms.unsigned_abs() % 1000)
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC timestamp as
/// tracing writes it (`2026-12-07T23:50:01.123456Z`), or `None`.
fn parse_utc_ms(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (h, min, sec) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec > 60 {
        return None;
    }
    let frac_ms: i64 = format!("{:0<3}", frac.get(..3).unwrap_or(frac)).parse().ok()?;
    let ms = ((days_from_civil(y, m, day) * 24 + h) * 60 + min) * 60_000 + sec * 1000 + frac_ms;
    u64::try_from(ms).ok()
}

/// Days from 1970-01-01 to the proleptic Gregorian date `y-m-d`.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_timestamps() {
        assert_eq!(parse_utc_ms("1970-01-01T00:00:00.000Z"), Some(0));
        assert_eq!(parse_utc_ms("1970-01-02T00:00:01.5Z"), Some(86_401_500));
        // date -u -d 2026-12-07T23:50:01Z +%s
        assert_eq!(parse_utc_ms("2026-12-07T23:50:01.123456Z"), Some(1_796_687_401_123));
        assert_eq!(parse_utc_ms("2024-02-29T12:00:00Z"), Some(1_709_208_000_000));
        assert_eq!(parse_utc_ms("INFO"), None);
        assert_eq!(parse_utc_ms("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_utc_ms("2026-12-07T23:50:01"), None);
    }

    #[test]
    fn lines_get_the_history_clock() {
        let start = parse_utc_ms("2026-12-07T23:50:00.000Z").expect("ts");
        let line = "2026-12-07T23:50:01.250000Z  INFO ringkv_server::node: shard leadership seen shard=2 term=3";
        let before = "2026-12-07T23:49:59.000000Z  WARN x: y";
        let again = "2026-12-07T23:50:02.000000Z  WARN x: y";
        let last = "2026-12-07T23:50:03.000000Z  WARN x: y";
        let panic = "thread 'main' panicked at x";
        let lines = [before, line, again, last, panic];
        assert_eq!(
            collapse(lines.iter().map(|l| excerpt(l, start))),
            vec![
                "  -1.000s WARN x: y",
                "  +1.250s INFO ringkv_server::node: shard leadership seen shard=2 term=3",
                "  +2.000s WARN x: y (2 times until +3.000s)",
                "        ? thread 'main' panicked at x",
            ]
        );
        assert!(lines.iter().all(|l| keep(l)));
        assert!(!keep("2026-12-07T23:50:01Z  INFO ringkv_server::raft: sent"));
        assert!(!keep(
            "2026-12-07T23:50:01Z  WARN openraft::replication: error replication to target=3"
        ));
    }

    #[test]
    fn long_logs_keep_their_start_and_end() {
        let lines: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
        let kept = bounded(&lines);
        assert_eq!(kept.len(), LINES_PER_NODE_MAX + 1);
        assert_eq!(kept[0], "0");
        assert_eq!(kept[LINES_HEAD - 1], (LINES_HEAD - 1).to_string());
        assert_eq!(
            kept[LINES_HEAD],
            format!("... {} lines left out ...", 1000 - LINES_PER_NODE_MAX)
        );
        assert_eq!(kept.last().map(String::as_str), Some("999"));
        assert_eq!(bounded(&lines[..10]).len(), 10);
    }

    #[test]
    fn node_logs_are_found_in_id_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in ["node10.log", "node2.log", "node1.log", "history.jsonl", "nodeX.log"] {
            std::fs::write(dir.path().join(name), "").expect("write");
        }
        let ids: Vec<u64> = node_logs(dir.path()).into_iter().map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2, 10]);
    }
}
