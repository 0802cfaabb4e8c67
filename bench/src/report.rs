//! Turns run results (JSON lines) into `results.json`, a markdown table
//! with the ringkv/etcd ratios, an SVG throughput chart and SVG latency
//! CDFs. Pure string
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

/// What a run is compared on: its workload, and for an open-loop run its
/// offered load (runs at the same offered load compare their latency).
fn run_label(r: &RunResult) -> String {
    match r.config.rate {
        Some(rate) => format!("{} @ {rate:.0}/s", workload_name(r)),
        None => workload_name(r),
    }
}

fn ratio(x: f64, of: Option<f64>) -> String {
    match of {
        Some(e) if e > 0.0 => format!("{:.2}x", x / e),
        _ => "-".into(),
    }
}

/// The median of `xs` (the mean of the middle two for an even count);
/// `None` when empty.
fn median(mut xs: Vec<f64>) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    Some(if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    })
}

/// Every run of one backend on one row label, in the order they ran: the
/// k-th run is round k (`make bench-compare` alternates the systems within
/// each round).
struct Group<'a> {
    label: String,
    backend: String,
    runs: Vec<&'a RunResult>,
}

impl Group<'_> {
    fn ops(&self) -> f64 {
        median(self.runs.iter().map(|r| r.ops_per_second).collect()).unwrap_or(0.0)
    }

    fn p99_us(&self) -> f64 {
        median(self.runs.iter().map(|r| r.latency.p99_us as f64).collect()).unwrap_or(0.0)
    }

    /// The run whose p99 is the median (the lower middle of an even count):
    /// the one whose latency CDF is drawn.
    fn median_latency_run(&self) -> &RunResult {
        let mut rs = self.runs.clone();
        rs.sort_by_key(|r| r.latency.p99_us);
        rs[(rs.len() - 1) / 2]
    }
}

/// The runs grouped by row label (sorted) and backend (in order of first
/// appearance within the label).
fn groups(results: &[RunResult]) -> Vec<Group<'_>> {
    let mut by_label: BTreeMap<String, Vec<Group<'_>>> = BTreeMap::new();
    for r in results {
        let label = run_label(r);
        let gs = by_label.entry(label.clone()).or_default();
        match gs.iter_mut().find(|g| g.backend == r.backend) {
            Some(g) => g.runs.push(r),
            None => gs.push(Group {
                label,
                backend: r.backend.clone(),
                runs: vec![r],
            }),
        }
    }
    by_label.into_values().flatten().collect()
}

fn find<'g, 'r>(gs: &'g [Group<'r>], label: &str, backend: &str) -> Option<&'g Group<'r>> {
    gs.iter().find(|g| g.label == label && g.backend == backend)
}

/// The report in markdown: the summary table, the ringkv/etcd ratio of
/// every round, and where the performance targets stand.
///
/// Summary: one row per workload (closed loop) or workload and offered load
/// (open loop, `@ N/s`) and backend. With several runs (rounds) of a row,
/// ops/s and the latencies are medians over the rounds and `range` their
/// spread; the ratio columns compare those medians with etcd's on the same
/// row label. `fsync ms` is the median of the runs' mean WAL fsync latency.
pub fn markdown(results: &[RunResult]) -> String {
    let gs = groups(results);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| workload | system | clients | runs | ops/s | range | p50 ms | p99 ms | p99.9 ms | fsync ms | errors | vs etcd | p99 vs etcd |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for g in &gs {
        let etcd = find(&gs, &g.label, "etcd");
        let ms =
            |f: fn(&RunResult) -> u64| median(g.runs.iter().map(|r| f(r) as f64 / 1000.0).collect()).unwrap_or(0.0);
        let range = if g.runs.len() > 1 {
            let lo = g.runs.iter().map(|r| r.ops_per_second).fold(f64::INFINITY, f64::min);
            let hi = g.runs.iter().map(|r| r.ops_per_second).fold(0.0, f64::max);
            format!("{lo:.0}-{hi:.0}")
        } else {
            "-".into()
        };
        let fsync = median(
            g.runs
                .iter()
                .filter_map(|r| r.fsync.as_ref().map(|f| f.mean_ms))
                .collect(),
        )
        .map_or("-".into(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {:.0} | {range} | {:.2} | {:.2} | {:.2} | {fsync} | {} | {} | {} |",
            g.label,
            g.backend,
            g.runs[0].config.concurrency,
            g.runs.len(),
            g.ops(),
            ms(|r| r.latency.p50_us),
            ms(|r| r.latency.p99_us),
            ms(|r| r.latency.p999_us),
            g.runs.iter().map(|r| r.errors).sum::<u64>(),
            ratio(g.ops(), etcd.map(Group::ops)),
            ratio(g.p99_us(), etcd.map(Group::p99_us)),
        );
    }
    out.push_str(&rounds_markdown(&gs));
    out.push_str(&targets_markdown(&gs));
    out
}

/// ringkv against etcd round by round, for the rows both ran more than
/// once: the throughput ratio (closed loop) or the p99 ratio (open loop)
/// of the k-th run of each. Empty when no row has rounds.
fn rounds_markdown(gs: &[Group<'_>]) -> String {
    let rows: Vec<(&Group<'_>, &Group<'_>)> = gs
        .iter()
        .filter(|g| g.backend == "ringkv" && g.runs.len() > 1)
        .filter_map(|g| find(gs, &g.label, "etcd").filter(|e| e.runs.len() > 1).map(|e| (g, e)))
        .collect();
    let Some(n) = rows.iter().map(|(g, e)| g.runs.len().min(e.runs.len())).max() else {
        return String::new();
    };
    let mut out = String::from(
        "\nringkv / etcd in each round (closed loop: throughput; open loop: p99), and the median of \
         those ratios:\n\n",
    );
    let heads: Vec<String> = (1..=n).map(|k| format!("round {k}")).collect();
    let _ = writeln!(out, "| workload | measure | {} | median |", heads.join(" | "));
    let _ = writeln!(out, "|---|---|{}---:|", "---:|".repeat(n));
    for (g, e) in rows {
        let open = g.runs[0].config.rate.is_some();
        let of = |r: &RunResult| {
            if open {
                r.latency.p99_us as f64
            } else {
                r.ops_per_second
            }
        };
        let cells: Vec<String> = (0..n)
            .map(|k| match (g.runs.get(k), e.runs.get(k)) {
                (Some(a), Some(b)) => ratio(of(a), Some(of(b))),
                _ => "-".into(),
            })
            .collect();
        let median = paired_ratio(g, e, of).map_or("-".into(), |r| format!("{r:.2}x"));
        let measure = if open { "p99" } else { "ops/s" };
        let _ = writeln!(out, "| {} | {measure} | {} | {median} |", g.label, cells.join(" | "));
    }
    out
}

/// The median of the round-by-round ratios `of(ringkv run k) / of(etcd run
/// k)`: runs of one round ran back to back under the same disk, so their
/// ratio is steadier than the ratio of two medians. `None` without a round
/// both ran.
fn paired_ratio(g: &Group<'_>, e: &Group<'_>, of: impl Fn(&RunResult) -> f64) -> Option<f64> {
    median(
        g.runs
            .iter()
            .zip(e.runs.iter())
            .filter(|(_, b)| of(b) > 0.0)
            .map(|(a, b)| of(a) / of(b))
            .collect(),
    )
}

/// What a target compares: ringkv against a reference, paired by round
/// when both ran several, else their single runs (or medians).
struct Target {
    name: String,
    /// ringkv's median over the reference's.
    ratio: Option<f64>,
    /// Met when the ratio is at least this (throughput) or at most it
    /// (latency).
    bound: f64,
    at_least: bool,
    /// Rounds that met the bound on their own, of those both systems ran.
    rounds: Option<(usize, usize)>,
}

/// The performance targets of `make bench-compare`, each with its median
/// ratio, the rounds that met it and a verdict ("not measured" when the
/// results lack a row).
fn targets_markdown(gs: &[Group<'_>]) -> String {
    let mut targets = Vec::new();
    for (w, name) in [("write", "write-only"), ("a", "YCSB-A"), ("c", "YCSB-C")] {
        targets.push(target(
            gs,
            format!("{name} throughput >= 2x etcd"),
            w,
            "etcd",
            2.0,
            true,
        ));
    }
    let mut open: Vec<&str> = gs
        .iter()
        .filter(|g| g.backend == "ringkv" && g.runs[0].config.rate.is_some())
        .map(|g| g.label.as_str())
        .collect();
    open.dedup();
    for label in open {
        targets.push(target(gs, format!("{label}: p99 <= etcd's"), label, "etcd", 1.0, false));
    }
    targets.push(target(
        gs,
        "write-only throughput >= 50% of rocksdb-local".into(),
        "write",
        "rocksdb-local",
        0.5,
        true,
    ));
    let mut out = String::from(
        "\nTargets (ringkv against the reference: the median of the round-by-round ratios when both ran \
         several rounds):\n\n",
    );
    let _ = writeln!(out, "| target | ratio | rounds meeting it | verdict |");
    let _ = writeln!(out, "|---|---:|---:|---|");
    for t in targets {
        let (ratio, verdict) = match t.ratio {
            Some(r) => {
                let met = if t.at_least { r >= t.bound } else { r <= t.bound };
                (format!("{r:.2}x"), if met { "met" } else { "not met" })
            }
            None => ("-".into(), "not measured"),
        };
        let rounds = t.rounds.map_or("-".into(), |(k, n)| format!("{k} of {n}"));
        let _ = writeln!(out, "| {} | {ratio} | {rounds} | {verdict} |", t.name);
    }
    out
}

fn target(gs: &[Group<'_>], name: String, label: &str, reference: &str, bound: f64, at_least: bool) -> Target {
    let pair = find(gs, label, "ringkv").zip(find(gs, label, reference));
    let of = |r: &RunResult| {
        if at_least {
            r.ops_per_second
        } else {
            r.latency.p99_us as f64
        }
    };
    let ratio = pair.and_then(|(g, e)| {
        if g.runs.len() > 1 && e.runs.len() > 1 {
            return paired_ratio(g, e, of);
        }
        let (a, b) = if at_least {
            (g.ops(), e.ops())
        } else {
            (g.p99_us(), e.p99_us())
        };
        (b > 0.0).then(|| a / b)
    });
    let rounds = pair
        .filter(|(g, e)| g.runs.len() > 1 && e.runs.len() > 1)
        .map(|(g, e)| {
            let both: Vec<(&&RunResult, &&RunResult)> = g.runs.iter().zip(e.runs.iter()).collect();
            let met = both
                .iter()
                .filter(|(a, b)| {
                    let r = of(a) / of(b).max(f64::MIN_POSITIVE);
                    if at_least {
                        r >= bound
                    } else {
                        r <= bound
                    }
                })
                .count();
            (met, both.len())
        });
    Target {
        name,
        ratio,
        bound,
        at_least,
        rounds,
    }
}

/// Lowest latency the CDF chart's logarithmic axis shows, microseconds.
const CDF_AXIS_US_MIN: f64 = 100.0;

/// A latency CDF of the runs with this `label`, one line per backend (its
/// run of median p99 when it ran several rounds): x is the latency on a
/// logarithmic axis, y the share of operations at or below it. `None` when
/// no run of that label has CDF points.
pub fn latency_cdf_svg(results: &[RunResult], label: &str) -> Option<String> {
    let gs = groups(results);
    let runs: Vec<&RunResult> = gs
        .iter()
        .filter(|g| g.label == label)
        .map(Group::median_latency_run)
        .filter(|r| !r.latency.cdf.is_empty())
        .collect();
    if runs.is_empty() {
        return None;
    }
    let max_us = runs
        .iter()
        .flat_map(|r| r.latency.cdf.iter().map(|p| p.1 as f64))
        .fold(CDF_AXIS_US_MIN * 10.0, f64::max);
    let (w, h, left, top) = (520.0, 300.0, 60.0, 30.0);
    let lo = CDF_AXIS_US_MIN.log10();
    let span = max_us.log10() - lo;
    let x_of = |us: f64| left + (us.max(CDF_AXIS_US_MIN).log10() - lo) / span * w;
    let y_of = |q: f64| top + (1.0 - q) * h;
    let colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{:.0}" height="{:.0}" font-family="sans-serif" font-size="12">"#,
        left + w + 180.0,
        top + h + 50.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{left}" y="18">latency CDF, {label} (x: ms, log scale; y: share of operations)</text>"#
    );
    let _ = writeln!(
        s,
        r##"<rect x="{left}" y="{top}" width="{w}" height="{h}" fill="none" stroke="#999"/>"##
    );
    // Axis marks at each power of ten, and at the quartiles.
    let mut tick = CDF_AXIS_US_MIN;
    while tick <= max_us {
        let x = x_of(tick);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            top + h,
            top + h + 16.0,
            tick / 1000.0
        );
        tick *= 10.0;
    }
    for q in [0.25, 0.5, 0.75, 1.0] {
        let y = y_of(q);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{q}</text>"#,
            left - 6.0,
            y + 4.0
        );
    }
    for (i, r) in runs.iter().enumerate() {
        let c = colors[i % colors.len()];
        let points: Vec<String> = r
            .latency
            .cdf
            .iter()
            .map(|&(q, us)| format!("{:.1},{:.1}", x_of(us as f64), y_of(q)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{c}" stroke-width="2" points="{}"><title>{}: p50 {:.2} ms, p99 {:.2} ms</title></polyline>"#,
            points.join(" "),
            r.backend,
            r.latency.p50_us as f64 / 1000.0,
            r.latency.p99_us as f64 / 1000.0
        );
        let y = top + 14.0 * i as f64;
        let x = left + w + 20.0;
        let _ = writeln!(s, r#"<rect x="{x:.1}" y="{y:.1}" width="10" height="10" fill="{c}"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            x + 14.0,
            y + 10.0,
            r.backend
        );
    }
    s.push_str("</svg>\n");
    Some(s)
}

/// File name of a label's CDF chart: `latency-<label>.svg` with every run
/// of characters outside `[a-z0-9]` turned into one `-`.
fn cdf_file_name(label: &str) -> String {
    let mut slug = String::with_capacity(label.len());
    for c in label.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') {
            slug.push('-');
        }
    }
    format!("latency-{}.svg", slug.trim_matches('-'))
}

/// A grouped bar chart of closed-loop throughput per workload and backend
/// (the median over rounds).
pub fn throughput_svg(results: &[RunResult]) -> String {
    let gs: Vec<Group<'_>> = groups(results)
        .into_iter()
        .filter(|g| g.runs[0].config.rate.is_none())
        .collect();
    let mut workloads: Vec<String> = gs.iter().map(|g| g.label.clone()).collect();
    workloads.sort();
    workloads.dedup();
    let mut backends: Vec<String> = gs.iter().map(|g| g.backend.clone()).collect();
    backends.sort();
    backends.dedup();
    let max = gs.iter().map(Group::ops).fold(1.0, f64::max);
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
            let Some(g) = find(&gs, w, b) else {
                continue;
            };
            let bh = g.ops() / max * h;
            let x = gx + bi as f64 * bar_w;
            let y = top + h - bh;
            let c = colors[bi % colors.len()];
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{bh:.1}" fill="{c}"><title>{b} {w}: {:.0} ops/s</title></rect>"#,
                bar_w - 2.0,
                g.ops()
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

/// Writes `results.json`, `results.md` (after `notes`, when given: what
/// was run, on what), `throughput.svg` and one latency CDF chart per row
/// label (`latency-<label>.svg`) into `dir`.
pub fn write_report(results: &[RunResult], dir: &Path, notes: Option<&str>) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("results.json"), serde_json::to_string_pretty(results)?)?;
    let md = match notes {
        Some(n) => format!("{}\n\n{}", n.trim_end(), markdown(results)),
        None => markdown(results),
    };
    std::fs::write(dir.join("results.md"), md)?;
    std::fs::write(dir.join("throughput.svg"), throughput_svg(results))?;
    let mut labels: Vec<String> = results.iter().map(run_label).collect();
    labels.sort();
    labels.dedup();
    for label in labels {
        if let Some(svg) = latency_cdf_svg(results, &label) {
            std::fs::write(dir.join(cdf_file_name(&label)), svg)?;
        }
    }
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
            fsync: None,
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
        assert!(
            md.contains("| a | ringkv-forward | 64 | 1 | 2500 | - | 1.50 | 4.00 | 0.00 | - | 0 | 2.50x | 1.00x |"),
            "{md}"
        );
        assert!(md.contains("| c | ringkv-forward | 64 | 1 | 900 | - |"), "{md}");
        assert!(md.contains("| 0 | - | - |"), "no etcd row for c: {md}");
        assert!(!md.contains("in each round"), "one round: no rounds table: {md}");
        assert!(
            md.contains("| write-only throughput >= 2x etcd | - | - | not measured |"),
            "{md}"
        );
        let svg = throughput_svg(&rs);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3 + 2, "bars + legend");
        let dir = tempfile::tempdir().unwrap();
        write_report(&rs, dir.path(), Some("# setup\n")).unwrap();
        let md = std::fs::read_to_string(dir.path().join("results.md")).unwrap();
        assert!(md.starts_with("# setup\n\n| workload |"), "{md}");
        let back: Vec<RunResult> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("results.json")).unwrap()).unwrap();
        assert_eq!(back.len(), 3);
        // No CDF points in these results: no CDF charts.
        assert!(!dir.path().join("latency-a.svg").exists());
    }

    #[test]
    fn open_loop_runs_compare_p99_at_the_same_offered_load_and_get_a_cdf() {
        let mut h = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            h.record(us * 10).unwrap();
        }
        let lat = Latency::of(&h);
        assert_eq!(lat.cdf.len(), crate::runner::CDF_QUANTILES.len());
        assert_eq!(lat.cdf.first().map(|p| p.0), Some(0.0));
        assert!(lat.cdf.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
        let open = |backend: &str, p99_us: u64| {
            let mut r = result(backend, Workload::Write, 500.0);
            r.config.rate = Some(500.0);
            r.latency = Latency { p99_us, ..lat.clone() };
            r
        };
        let rs = vec![
            result("etcd", Workload::Write, 1000.0),
            open("ringkv", 2000),
            open("etcd", 8000),
        ];
        let md = markdown(&rs);
        assert!(md.contains("| write @ 500/s | ringkv | 64 | 1 | 500 |"), "{md}");
        assert!(
            md.contains("| write @ 500/s: p99 <= etcd's | 0.25x | - | met |"),
            "{md}"
        );
        assert!(md.contains("| 1.00x | 0.25x |"), "{md}");
        let svg = latency_cdf_svg(&rs, "write @ 500/s").expect("a chart");
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(
            latency_cdf_svg(&rs, "write").is_none(),
            "closed-loop run has no CDF points"
        );
        assert_eq!(cdf_file_name("write @ 500/s"), "latency-write-500-s.svg");
        let dir = tempfile::tempdir().unwrap();
        write_report(&rs, dir.path(), None).unwrap();
        assert!(dir.path().join("latency-write-500-s.svg").exists());
    }

    #[test]
    fn rounds_are_summarised_by_medians_and_judged_against_the_targets() {
        let mut rs = Vec::new();
        // Alternated as bench-compare runs them: ringkv, etcd, per round.
        for (k, (ringkv, etcd)) in [(3000.0, 2000.0), (5000.0, 2000.0), (9000.0, 4000.0)]
            .into_iter()
            .enumerate()
        {
            let mut r = result("ringkv", Workload::Write, ringkv);
            r.fsync = Some(crate::fsync::Fsync {
                syncs: 100,
                mean_ms: 1.0 + k as f64,
            });
            rs.push(r);
            rs.push(result("etcd", Workload::Write, etcd));
        }
        rs.push(result("rocksdb-local", Workload::Write, 20_000.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(Vec::new()), None);
        let md = markdown(&rs);
        assert!(
            md.contains(
                "| write | ringkv | 64 | 3 | 5000 | 3000-9000 | 1.50 | 4.00 | 0.00 | 2.00 | 0 | 2.50x | 1.00x |"
            ),
            "{md}"
        );
        assert!(md.contains("| write | etcd | 64 | 3 | 2000 | 2000-4000 |"), "{md}");
        assert!(md.contains("| write | ops/s | 1.50x | 2.50x | 2.25x | 2.25x |"), "{md}");
        assert!(
            md.contains("| write-only throughput >= 2x etcd | 2.25x | 2 of 3 | met |"),
            "{md}"
        );
        assert!(
            md.contains("| YCSB-A throughput >= 2x etcd | - | - | not measured |"),
            "{md}"
        );
        assert!(
            md.contains("| write-only throughput >= 50% of rocksdb-local | 0.25x | - | not met |"),
            "{md}"
        );
        let svg = throughput_svg(&rs);
        assert!(svg.contains("ringkv write: 5000 ops/s"), "the median bar: {svg}");
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
