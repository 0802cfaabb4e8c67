//! SVG plots of a history, written straight as text (no plotting crate):
//! latency over time (one point per completed operation, coloured by
//! operation, shaped by outcome) and throughput over time (completions per
//! second by outcome), both with the nemesis intervals shaded.
//!
//! Nemesis intervals pair a start event (`kill`, `pause`,
//! `start-partition`, `bump-clock`) with its stop (`start`, `resume`,
//! `stop-partition`, `reset-clock`) by the `id` in their values; histories
//! without ids pair a stop with the oldest open start of the same kind. A
//! fault never stopped is shaded to the end of the history.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::history::History;
use crate::history::Outcome;
use crate::history::Process;

/// Most points the latency plot draws; beyond that `ok` points are thinned
/// (every k-th), then `info`/`fail` ones, keeping the file small.
pub const MAX_POINTS: usize = 30_000;
/// Throughput bucket.
const BUCKET_S: f64 = 1.0;
/// Most throughput buckets (a longer history gets wider buckets).
const MAX_BUCKETS: usize = 2_000;

const WIDTH: f64 = 1100.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 46.0;

/// A fault's time span, in nanoseconds since the start of the history.
#[derive(Debug, Clone, PartialEq)]
pub struct Interval {
    pub kind: &'static str,
    pub start: u64,
    pub end: u64,
}

/// The kind of a nemesis event's `f`, and whether it starts a fault.
fn nemesis_kind(f: &str) -> Option<(&'static str, bool)> {
    let find = |list: &[(&'static str, &'static str)]| list.iter().find(|(name, _)| *name == f).map(|(_, k)| *k);
    match (find(&crate::nemesis::START_FS), find(&crate::nemesis::STOP_FS)) {
        (Some(k), _) => Some((k, true)),
        (None, Some(k)) => Some((k, false)),
        (None, None) => None,
    }
}

fn kind_color(kind: &str) -> &'static str {
    match kind {
        "kill" => "#e377c2",
        "pause" => "#bcbd22",
        "partition" => "#17becf",
        "skew" => "#9467bd",
        "move" => "#ff9896",
        "split" => "#98df8a",
        "transfer" => "#c5b0d5",
        "membership" => "#c49c94",
        _ => "#7f7f7f",
    }
}

fn f_color(f: &str) -> &'static str {
    match f {
        "read" => "#1f77b4",
        "write" => "#2ca02c",
        "cas" => "#ff7f0e",
        "add" => "#8c564b",
        "read-all" => "#17becf",
        "incr" => "#d62728",
        _ => "#7f7f7f",
    }
}

fn outcome_color(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "#2ca02c",
        Outcome::Info => "#ff7f0e",
        Outcome::Fail => "#d62728",
    }
}

/// The nemesis intervals of `h`, in start order.
pub fn nemesis_intervals(h: &History) -> Vec<Interval> {
    let mut open: BTreeMap<(u64, u64), (&'static str, u64)> = BTreeMap::new();
    let mut done = Vec::new();
    let mut seq = 0u64;
    for &i in &h.nemesis {
        let ev = &h.events[i];
        let Some((kind, is_start)) = nemesis_kind(ev.f.as_str()) else {
            continue;
        };
        let id = ev.value.get("id").and_then(serde_json::Value::as_u64);
        if is_start {
            seq += 1;
            // Keyed by (id, 0) with an id, else (0, arrival order).
            open.insert(id.map_or((0, seq), |id| (id, 0)), (kind, ev.time));
            continue;
        }
        let key = match id {
            Some(id) => Some((id, 0)),
            None => open
                .iter()
                .find(|(k, (k_kind, _))| k.0 == 0 && *k_kind == kind)
                .map(|(k, _)| *k),
        };
        if let Some((kind, start)) = key.and_then(|k| open.remove(&k)) {
            done.push(Interval {
                kind,
                start,
                end: ev.time,
            });
        }
    }
    let last = h.events.last().map_or(0, |e| e.time);
    done.extend(
        open.into_values()
            .map(|(kind, start)| Interval { kind, start, end: last }),
    );
    done.sort_by_key(|i| i.start);
    done
}

/// Maps history time and a value to the plot area.
struct Frame {
    t_max: f64,
    y_min: f64,
    y_max: f64,
    log: bool,
}

impl Frame {
    fn x(&self, t_s: f64) -> f64 {
        LEFT + (WIDTH - LEFT - RIGHT) * (t_s / self.t_max).clamp(0.0, 1.0)
    }

    fn y(&self, v: f64) -> f64 {
        let (lo, hi, v) = if self.log {
            (self.y_min.log10(), self.y_max.log10(), v.max(self.y_min).log10())
        } else {
            (self.y_min, self.y_max, v)
        };
        let f = if hi > lo { (v - lo) / (hi - lo) } else { 0.0 };
        HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * f.clamp(0.0, 1.0)
    }
}

fn header(s: &mut String, title: &str) {
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="20" font-size="14" text-anchor="middle">{}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        escape(title)
    );
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Shading, axes, ticks and the nemesis legend.
fn frame(s: &mut String, fr: &Frame, intervals: &[Interval], y_label: &str) {
    let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, TOP, HEIGHT - BOTTOM);
    for iv in intervals {
        let (a, b) = (fr.x(iv.start as f64 / 1e9), fr.x(iv.end as f64 / 1e9));
        let _ = writeln!(
            s,
            r#"<rect x="{a:.1}" y="{y0}" width="{:.1}" height="{:.1}" fill="{}" fill-opacity="0.18"><title>{} {:.1}-{:.1} s</title></rect>"#,
            (b - a).max(0.5),
            y1 - y0,
            kind_color(iv.kind),
            iv.kind,
            iv.start as f64 / 1e9,
            iv.end as f64 / 1e9
        );
    }
    let _ = writeln!(
        s,
        r#"<rect x="{x0}" y="{y0}" width="{}" height="{}" fill="none" stroke="black"/>"#,
        x1 - x0,
        y1 - y0
    );
    // Time ticks: about ten, at a round step.
    let step = [1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|st| fr.t_max / st <= 12.0)
        .unwrap_or(1200.0);
    let mut t = 0.0;
    while t <= fr.t_max + 1e-9 {
        let x = fr.x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{y1}" x2="{x:.1}" y2="{}" stroke="black"/><text x="{x:.1}" y="{}" text-anchor="middle">{t}</text>"##,
            y1 + 4.0,
            y1 + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">time (s)</text>"#,
        (x0 + x1) / 2.0,
        HEIGHT - 8.0
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}</text>"#,
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        escape(y_label)
    );
    let mut kinds: Vec<&str> = intervals.iter().map(|i| i.kind).collect();
    kinds.sort_unstable();
    kinds.dedup();
    let mut ly = HEIGHT - BOTTOM - 14.0 * kinds.len() as f64;
    for k in kinds {
        let _ = writeln!(
            s,
            r#"<rect x="{}" y="{}" width="14" height="10" fill="{}" fill-opacity="0.35"/><text x="{}" y="{}">{k}</text>"#,
            x1 + 12.0,
            ly - 9.0,
            kind_color(k),
            x1 + 30.0,
            ly
        );
        ly += 14.0;
    }
}

fn t_max(h: &History) -> f64 {
    (h.events.last().map_or(0, |e| e.time) as f64 / 1e9).max(1.0)
}

/// Latency (ms, log scale) against invocation time, one point per completed
/// client operation.
pub fn latency_svg(h: &History) -> String {
    let points: Vec<(f64, f64, &str, Outcome)> = h
        .ops
        .iter()
        .filter_map(|op| {
            let done = op.complete_time?;
            let ms = done.saturating_sub(op.invoke_time) as f64 / 1e6;
            Some((op.invoke_time as f64 / 1e9, ms, op.f.as_str(), op.outcome))
        })
        .collect();
    let non_ok = points.iter().filter(|p| p.3 != Outcome::Ok).count();
    let ok = points.len() - non_ok;
    let non_ok_stride = non_ok.div_ceil(MAX_POINTS / 2).max(1);
    let ok_stride = ok.div_ceil(MAX_POINTS - non_ok.min(MAX_POINTS / 2)).max(1);
    let (mut lo, mut hi) = (f64::MAX, 0.0f64);
    for p in &points {
        lo = lo.min(p.1);
        hi = hi.max(p.1);
    }
    let y_min = if lo == f64::MAX {
        0.1
    } else {
        10f64.powf(lo.max(0.01).log10().floor())
    };
    let y_max = 10f64.powf(hi.max(y_min * 10.0).log10().ceil());
    let fr = Frame {
        t_max: t_max(h),
        y_min,
        y_max,
        log: true,
    };
    let mut s = String::new();
    let mut title = "latency by operation (point = invocation time)".to_string();
    if ok_stride > 1 || non_ok_stride > 1 {
        let _ = write!(
            title,
            "; 1 in {ok_stride} ok and 1 in {non_ok_stride} info/fail ops drawn"
        );
    }
    header(&mut s, &title);
    frame(&mut s, &fr, &nemesis_intervals(h), "latency (ms, log scale)");
    let mut decade = y_min;
    while decade <= y_max * 1.0001 {
        let y = fr.y(decade);
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="black"/><line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{decade}</text>"##,
            LEFT - 4.0,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
        decade *= 10.0;
    }
    let (mut n_ok, mut n_other) = (0usize, 0usize);
    let mut fs: Vec<&str> = Vec::new();
    for (t, ms, f, outcome) in &points {
        let keep = if *outcome == Outcome::Ok {
            n_ok += 1;
            (n_ok - 1) % ok_stride == 0
        } else {
            n_other += 1;
            (n_other - 1) % non_ok_stride == 0
        };
        if !keep {
            continue;
        }
        if !fs.contains(f) {
            fs.push(f);
        }
        let (x, y, c) = (fr.x(*t), fr.y(*ms), f_color(f));
        let _ = match outcome {
            Outcome::Ok => writeln!(
                s,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="1.5" fill="{c}" fill-opacity="0.6"/>"#
            ),
            Outcome::Info => writeln!(s, r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="none" stroke="{c}"/>"#),
            Outcome::Fail => writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="4" height="4" fill="{c}" fill-opacity="0.8"/>"#,
                x - 2.0,
                y - 2.0
            ),
        };
    }
    // Legend: operations by colour, outcomes by shape.
    fs.sort_unstable();
    let lx = WIDTH - RIGHT + 12.0;
    let mut ly = TOP + 10.0;
    for f in fs {
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="{}" r="4" fill="{}"/><text x="{}" y="{}">{f}</text>"#,
            lx + 6.0,
            ly - 4.0,
            f_color(f),
            lx + 18.0,
            ly
        );
        ly += 14.0;
    }
    ly += 6.0;
    for (shape, label) in [
        (
            format!(r#"<circle cx="{}" cy="{}" r="2" fill="black"/>"#, lx + 6.0, ly - 4.0),
            "ok",
        ),
        (
            format!(
                r#"<circle cx="{}" cy="{}" r="3" fill="none" stroke="black"/>"#,
                lx + 6.0,
                ly + 10.0
            ),
            "info (indeterminate)",
        ),
        (
            format!(
                r#"<rect x="{}" y="{}" width="4" height="4" fill="black"/>"#,
                lx + 4.0,
                ly + 22.0
            ),
            "fail",
        ),
    ] {
        let _ = writeln!(s, r#"{shape}<text x="{}" y="{ly}">{label}</text>"#, lx + 18.0);
        ly += 14.0;
    }
    s.push_str("</svg>\n");
    s
}

/// Completed client operations per second, by outcome.
pub fn throughput_svg(h: &History) -> String {
    let t_max = t_max(h);
    let bucket = BUCKET_S.max(t_max / MAX_BUCKETS as f64);
    let n = (t_max / bucket).ceil() as usize + 1;
    let mut counts: BTreeMap<&str, (Outcome, Vec<f64>)> = BTreeMap::new();
    for o in [Outcome::Ok, Outcome::Info, Outcome::Fail] {
        counts.insert(outcome_name(o), (o, vec![0.0; n]));
    }
    for ev in &h.events {
        if ev.process == Process::Nemesis {
            continue;
        }
        let o = match ev.kind {
            crate::history::EventType::Ok => Outcome::Ok,
            crate::history::EventType::Info => Outcome::Info,
            crate::history::EventType::Fail => Outcome::Fail,
            crate::history::EventType::Invoke => continue,
        };
        let b = ((ev.time as f64 / 1e9) / bucket) as usize;
        if let Some(c) = counts
            .get_mut(outcome_name(o))
            .and_then(|(_, v)| v.get_mut(b.min(n - 1)))
        {
            *c += 1.0 / bucket;
        }
    }
    let y_max = counts
        .values()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(1.0f64, f64::max)
        * 1.1;
    let fr = Frame {
        t_max,
        y_min: 0.0,
        y_max,
        log: false,
    };
    let mut s = String::new();
    header(
        &mut s,
        &format!("throughput: completions per second ({bucket:.0} s buckets)"),
    );
    frame(&mut s, &fr, &nemesis_intervals(h), "ops/s");
    for k in 0..=5 {
        let v = y_max * k as f64 / 5.0;
        let y = fr.y(v);
        let _ = writeln!(
            s,
            r##"<line x1="{LEFT}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{v:.0}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0
        );
    }
    let lx = WIDTH - RIGHT + 12.0;
    let mut ly = TOP + 10.0;
    for (name, (o, v)) in &counts {
        let pts: Vec<String> = v
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:.1},{:.1}", fr.x((i as f64 + 0.5) * bucket), fr.y(*c)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="1.5"/>"#,
            pts.join(" "),
            outcome_color(*o)
        );
        let _ = writeln!(
            s,
            r#"<line x1="{lx}" y1="{}" x2="{}" y2="{}" stroke="{}" stroke-width="2"/><text x="{}" y="{ly}">{name}</text>"#,
            ly - 4.0,
            lx + 14.0,
            ly - 4.0,
            outcome_color(*o),
            lx + 18.0
        );
        ly += 14.0;
    }
    s.push_str("</svg>\n");
    s
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Ok => "ok",
        Outcome::Info => "info",
        Outcome::Fail => "fail",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        let lines = [
            r#"{"index":0,"type":"invoke","f":"write","key":"r1","value":1,"process":0,"time":1000000}"#,
            r#"{"index":1,"type":"ok","f":"write","key":"r1","value":1,"process":0,"time":3000000}"#,
            r#"{"index":2,"type":"info","f":"kill","value":{"id":1,"fault":"kill-node","nodes":[2]},"process":"nemesis","time":1500000000}"#,
            r#"{"index":3,"type":"info","f":"start-partition","value":"majority","process":"nemesis","time":1600000000}"#,
            r#"{"index":4,"type":"invoke","f":"read","key":"r1","process":1,"time":1700000000}"#,
            r#"{"index":5,"type":"fail","f":"read","key":"r1","value":null,"process":1,"time":1800000000}"#,
            r#"{"index":6,"type":"invoke","f":"incr","key":"c","value":1,"process":2,"time":1900000000}"#,
            r#"{"index":7,"type":"info","f":"incr","key":"c","value":1,"process":2,"time":3900000000}"#,
            r#"{"index":8,"type":"info","f":"start","value":{"id":1,"fault":"kill-node","nodes":[2]},"process":"nemesis","time":4000000000}"#,
            r#"{"index":9,"type":"info","f":"stop-partition","value":null,"process":"nemesis","time":4500000000}"#,
            r#"{"index":10,"type":"info","f":"pause","value":{"id":2},"process":"nemesis","time":5000000000}"#,
        ];
        History::parse(lines.join("\n").as_bytes()).unwrap()
    }

    #[test]
    fn intervals_pair_by_id_or_kind_and_open_ones_run_to_the_end() {
        let iv = nemesis_intervals(&history());
        assert_eq!(
            iv,
            vec![
                Interval {
                    kind: "kill",
                    start: 1_500_000_000,
                    end: 4_000_000_000
                },
                Interval {
                    kind: "partition",
                    start: 1_600_000_000,
                    end: 4_500_000_000
                },
                Interval {
                    kind: "pause",
                    start: 5_000_000_000,
                    end: 5_000_000_000
                },
            ]
        );
    }

    #[test]
    fn plots_are_svg_with_points_shading_and_legends() {
        let h = history();
        let lat = latency_svg(&h);
        assert!(lat.starts_with("<svg") && lat.ends_with("</svg>\n"));
        // Three nemesis intervals shaded, one mark per completed op.
        assert_eq!(lat.matches("fill-opacity=\"0.18\"").count(), 3);
        assert_eq!(lat.matches("r=\"1.5\"").count(), 1, "one ok op");
        assert_eq!(
            lat.matches("r=\"3\" fill=\"none\" stroke=\"#d62728\"").count(),
            1,
            "one info incr"
        );
        assert!(lat.contains(">incr</text>") && lat.contains(">partition</text>"));
        let tp = throughput_svg(&h);
        assert_eq!(tp.matches("<polyline").count(), 3);
        assert!(tp.contains(">ok</text>") && tp.contains(">fail</text>"));
    }

    #[test]
    fn many_points_are_thinned() {
        let mut lines = Vec::new();
        for i in 0..(MAX_POINTS as u64 * 2) {
            lines.push(format!(
                r#"{{"index":{},"type":"invoke","f":"read","key":"k","process":0,"time":{}}}"#,
                2 * i,
                2 * i * 1000
            ));
            lines.push(format!(
                r#"{{"index":{},"type":"ok","f":"read","key":"k","value":null,"process":0,"time":{}}}"#,
                2 * i + 1,
                (2 * i + 1) * 1000
            ));
        }
        let h = History::parse(lines.join("\n").as_bytes()).unwrap();
        let svg = latency_svg(&h);
        let drawn = svg.matches("r=\"1.5\"").count();
        assert!((MAX_POINTS / 2..=MAX_POINTS).contains(&drawn), "{drawn}");
        assert!(svg.contains("1 in 2 ok"), "{}", &svg[..400]);
    }
}
