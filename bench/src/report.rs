//! Turns run results (JSON lines) into `results.json`, a markdown table
//! with the ringkv/etcd ratios, and an SVG throughput chart. Pure string
//! building apart from reading and writing the files. Also the small
//! helpers every report shares: its timestamped folder, UTC timestamps and
//! the machine's load average.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use crate::runner::RunResult;

/// Reads every result line of `path`.
pub fn read_results(path: &Path) -> anyhow::Result<Vec<RunResult>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

fn workload_name(r: &RunResult) -> String {
    let w = serde_json::to_value(r.config.workload)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string));
    w.unwrap_or_else(|| "?".into())
}

/// The markdown table: one row per workload and backend; the ratio column
/// compares each backend's throughput with etcd's on the same workload.
pub fn markdown(results: &[RunResult]) -> String {
    let mut by_workload: BTreeMap<String, Vec<&RunResult>> = BTreeMap::new();
    for r in results {
        by_workload.entry(workload_name(r)).or_default().push(r);
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | system | clients | ops/s | p50 ms | p99 ms | p99.9 ms | errors | vs etcd |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (w, runs) in &by_workload {
        let etcd = runs.iter().find(|r| r.backend == "etcd").map(|r| r.ops_per_second);
        for r in runs {
            let ratio = match etcd {
                Some(e) if e > 0.0 => format!("{:.2}x", r.ops_per_second / e),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {w} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {ratio} |",
                r.backend,
                r.config.concurrency,
                r.ops_per_second,
                r.latency.p50_us as f64 / 1000.0,
                r.latency.p99_us as f64 / 1000.0,
                r.latency.p999_us as f64 / 1000.0,
                r.errors
            );
        }
    }
    out
}

/// A grouped bar chart of throughput per workload and backend.
pub fn throughput_svg(results: &[RunResult]) -> String {
    let mut workloads: Vec<String> = results.iter().map(workload_name).collect();
    workloads.dedup();
    workloads.sort();
    workloads.dedup();
    let mut backends: Vec<String> = results.iter().map(|r| r.backend.clone()).collect();
    backends.sort();
    backends.dedup();
    let max = results.iter().map(|r| r.ops_per_second).fold(1.0, f64::max);
    let (bar_w, gap, h, top, left) = (28.0, 24.0, 300.0, 30.0, 60.0);
    let group_w = bar_w * backends.len() as f64 + gap;
    let width = left + group_w * workloads.len() as f64 + 200.0;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{:.0}" font-family="sans-serif" font-size="12">"#,
        h + top + 60.0
    );
    let _ = writeln!(s, r#"<text x="{left}" y="18">throughput (ops/s), max {max:.0}</text>"#);
    for (wi, w) in workloads.iter().enumerate() {
        let gx = left + wi as f64 * group_w;
        for (bi, b) in backends.iter().enumerate() {
            let Some(r) = results.iter().find(|r| &r.backend == b && &workload_name(r) == w) else {
                continue;
            };
            let bh = r.ops_per_second / max * h;
            let x = gx + bi as f64 * bar_w;
            let y = top + h - bh;
            let c = colors[bi % colors.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{c}"><title>{b} {w}: {:.0} ops/s</title></rect>"#,
                bar_w - 2.0,
                r.ops_per_second
            );
        }
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{w}</text>"#, gx, top + h + 16.0);
    }
    for (bi, b) in backends.iter().enumerate() {
        let y = top + 14.0 * bi as f64;
        let x = left + group_w * workloads.len() as f64 + 20.0;
        let c = colors[bi % colors.len()];
        let _ = writeln!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{c}"/>"#);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}">{b}</text>"#, x + 14.0, y + 10.0);
    }
    s.push_str("</svg>\n");
    s
}

/// Writes `results.json`, `results.md` and `throughput.svg` into `dir`.
pub fn write_report(results: &[RunResult], dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(results)?)?;
    std::fs::write(dir.join("results.md"), markdown(results))?;
    std::fs::write(dir.join("throughput.svg"), throughput_svg(results))?;
    Ok(())
}

/// A report's default folder: `bench/results/<kind>-<UTC timestamp>`
/// (for example `bench/results/move-20261130T005320Z`).
pub fn results_dir(kind: &str, now: std::time::SystemTime) -> std::path::PathBuf {
    let secs = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    std::path::PathBuf::from(format!(
        "bench/results/{kind}-{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    ))
}

/// `t` as an RFC 3339 UTC timestamp with milliseconds
/// (`2026-11-30T00:53:20.123Z`), the form the nodes' logs use, so report
/// instants can be found in the logs.
pub fn utc_timestamp(t: std::time::SystemTime) -> String {
    let since = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The 1, 5 and 15 minute load averages (Linux only).
pub fn load_average() -> Option<String> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runner::Latency;
    use crate::runner::RunConfig;
    use crate::workload::Distribution;
    use crate::workload::Workload;

    fn result(backend: &str, workload: Workload, ops_per_second: f64) -> RunResult {
        RunResult {
            backend: backend.into(),
            config: RunConfig {
                workload,
                distribution: Distribution::Uniform,
                records: 10,
                value_bytes: 1,
                concurrency: 64,
                seconds: 10,
                warmup_seconds: 1,
                rate: None,
                seed: 1,
            },
            ops: (ops_per_second * 10.0) as u64,
            errors: 0,
            measured_seconds: 10.0,
            ops_per_second,
            latency: Latency {
                p50_us: 1500,
                p99_us: 4000,
                ..Latency::default()
            },
            per_op: BTreeMap::new(),
            missed_arrivals: 0,
        }
    }

    #[test]
    fn table_has_ratios_against_etcd_and_the_svg_is_well_formed() {
        let rs = vec![
            result("etcd", Workload::A, 1000.0),
            result("ringkv-forward", Workload::A, 2500.0),
            result("ringkv-forward", Workload::C, 900.0),
        ];
        let md = markdown(&rs);
        assert!(md.contains("| a | ringkv-forward | 64 | 2500 | 1.50 | 4.00 |"), "{md}");
        assert!(md.contains("2.50x"), "{md}");
        assert!(
            md.contains("| c | ringkv-forward | 64 | 900 |") && md.contains("| - |"),
            "{md}"
        );
        let svg = throughput_svg(&rs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3 + 2, "bars + legend");
        let dir = tempfile::tempdir().unwrap();
        write_report(&rs, dir.path()).unwrap();
        let back: Vec<RunResult> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(back.len(), 3);
    }

    #[test]
    fn timestamps_are_utc() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_796_000_000_123);
        assert_eq!(
            results_dir("move", t),
            std::path::PathBuf::from("bench/results/move-20261130T005320Z")
        );
        assert_eq!(utc_timestamp(t), "2026-11-30T00:53:20.123Z");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
