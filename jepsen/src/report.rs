//! Results of a check: the `results.json` structure and the human summary.
//!
//! This module owns the verdict types shared by every checker ([`Validity`], [`Anomaly`],
//! [`CheckerReport`]) and the whole-run [`Results`]. In JSON a validity is `true`, `false` or
//! `"unknown"`; the overall verdict is invalid if any checker is invalid, else unknown if any is
//! unknown, else valid. Plots are in [`crate::plot`], the run folder's files in [`crate::runner::RunFiles`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

use crate::history::{History, Op, Outcome};

/// A checker's (or the run's) verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    Invalid,
    /// The checker could not decide (budget exhausted, nothing to check, unsupported input).
    Unknown,
}

impl Validity {
    /// Invalid if any is invalid, else unknown if any is unknown, else valid (also when empty).
    pub fn combine<I: IntoIterator<Item = Validity>>(all: I) -> Validity {
        let mut out = Validity::Valid;
        for v in all {
            match v {
                Validity::Invalid => return Validity::Invalid,
                Validity::Unknown => out = Validity::Unknown,
                Validity::Valid => {}
            }
        }
        out
    }

    /// A checker's verdict from what it found: invalid with any anomaly,
    /// else unknown when anything could not be decided, else valid.
    pub fn of(anomalies: bool, undecided: bool) -> Validity {
        if anomalies {
            Validity::Invalid
        } else if undecided {
            Validity::Unknown
        } else {
            Validity::Valid
        }
    }

    /// The CLI's exit status for this verdict: 0 valid, 1 invalid, 2 unknown.
    pub fn exit_code(self) -> u8 {
        match self {
            Validity::Valid => 0,
            Validity::Invalid => 1,
            Validity::Unknown => 2,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Validity::Valid => "VALID",
            Validity::Invalid => "INVALID",
            Validity::Unknown => "UNKNOWN",
        }
    }
}

impl Serialize for Validity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Validity::Valid => s.serialize_bool(true),
            Validity::Invalid => s.serialize_bool(false),
            Validity::Unknown => s.serialize_str("unknown"),
        }
    }
}

impl<'de> Deserialize<'de> for Validity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Validity, D::Error> {
        match Value::deserialize(d)? {
            Value::Bool(true) => Ok(Validity::Valid),
            Value::Bool(false) => Ok(Validity::Invalid),
            Value::String(s) if s == "unknown" => Ok(Validity::Unknown),
            other => Err(de::Error::custom(format!(
                "validity must be true, false or \"unknown\", got {other}"
            ))),
        }
    }
}

/// One operation as shown in an anomaly's window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OpSummary {
    /// Index of the invocation event; the op's identifier in reports.
    pub index: u64,
    #[serde(rename = "type")]
    pub outcome: Outcome,
    pub f: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub value: Value,
    pub process: u64,
    pub invoke_time: u64,
    /// Index of the completion event (`null` if the op never completed).
    pub complete_index: Option<u64>,
    pub complete_time: Option<u64>,
}

impl From<&Op> for OpSummary {
    fn from(op: &Op) -> OpSummary {
        OpSummary {
            index: op.invoke_index,
            outcome: op.outcome,
            f: op.f.as_str().to_string(),
            key: op.key.clone(),
            value: op.value().clone(),
            process: op.process,
            invoke_time: op.invoke_time,
            complete_index: op.complete_index,
            complete_time: op.complete_time,
        }
    }
}

/// One violation, with the smallest window of operations the checker found that shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Anomaly {
    /// Machine-readable kind, e.g. `nonlinearizable`, `lost`, `unexpected`, `counter-too-high`.
    pub kind: String,
    pub key: Option<String>,
    pub message: String,
    /// Invocation indices of the operations in the window, ascending.
    pub window: Vec<u64>,
    /// The window's operations.
    pub ops: Vec<OpSummary>,
    /// Checker-specific numbers and values.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Map<String, Value>,
}

impl Anomaly {
    /// When the window's operations ran, in seconds from the history's
    /// start (` from +1.200s to +3.450s`), as the run's evidence times its
    /// node log lines; `None` without operations.
    pub fn time_span(&self) -> Option<String> {
        let from = self.ops.iter().map(|o| o.invoke_time).min()?;
        let to = self
            .ops
            .iter()
            .map(|o| o.complete_time.unwrap_or(o.invoke_time))
            .max()?;
        let secs = |ns: u64| crate::evidence::seconds((ns / 1_000_000) as i64);
        Some(format!(" from {} to {}", secs(from), secs(to)))
    }

    /// Builds an anomaly whose window is `ops` (sorted and deduplicated by invocation index).
    pub fn new(kind: &str, key: Option<&str>, message: String, ops: &[&Op]) -> Anomaly {
        let mut ops: Vec<&Op> = ops.to_vec();
        ops.sort_by_key(|o| o.invoke_index);
        ops.dedup_by_key(|o| o.invoke_index);
        Anomaly {
            kind: kind.to_string(),
            key: key.map(str::to_string),
            message,
            window: ops.iter().map(|o| o.invoke_index).collect(),
            ops: ops.iter().map(|o| OpSummary::from(*o)).collect(),
            details: Map::new(),
        }
    }

    pub fn detail(mut self, name: &str, value: impl Into<Value>) -> Anomaly {
        self.details.insert(name.to_string(), value.into());
        self
    }
}

/// One checker's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckerReport {
    pub valid: Validity,
    pub anomalies: Vec<Anomaly>,
    pub stats: Map<String, Value>,
}

/// Counts describing the checked history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryStats {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub events: usize,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub nemesis_events: usize,
}

impl HistoryStats {
    pub fn of(history: &History, file: Option<&Path>) -> HistoryStats {
        let count = |o: Outcome| history.ops.iter().filter(|op| op.outcome == o).count();
        HistoryStats {
            file: file.map(|p| p.display().to_string()),
            events: history.events.len(),
            ops: history.ops.len(),
            ok: count(Outcome::Ok),
            fail: count(Outcome::Fail),
            info: count(Outcome::Info),
            nemesis_events: history.nemesis.len(),
        }
    }
}

/// The content of `results.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub valid: Validity,
    pub history: HistoryStats,
    /// Keyed by checker name (`register`, `set`, `counter`).
    pub checkers: BTreeMap<String, CheckerReport>,
}

/// How many anomalies per checker the text summary lists.
const SUMMARY_ANOMALIES: usize = 5;

impl Results {
    pub fn new(history: HistoryStats, checkers: BTreeMap<String, CheckerReport>) -> Results {
        let valid = Validity::combine(checkers.values().map(|c| c.valid));
        Results {
            valid,
            history,
            checkers,
        }
    }

    /// Writes pretty-printed JSON.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        std::fs::write(path, text)
    }

    /// A few lines for a terminal.
    pub fn summary(&self) -> String {
        let h = &self.history;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "history: {}{} events, {} client ops ({} ok, {} fail, {} info), {} nemesis events",
            h.file.as_deref().map(|f| format!("{f}: ")).unwrap_or_default(),
            h.events,
            h.ops,
            h.ok,
            h.fail,
            h.info,
            h.nemesis_events
        );
        for (name, c) in &self.checkers {
            let stats: Vec<String> = c
                .stats
                .iter()
                .filter(|(_, v)| v.is_number())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(s, "{name}: {} ({})", c.valid.label(), stats.join(", "));
            for a in c.anomalies.iter().take(SUMMARY_ANOMALIES) {
                let key = a.key.as_deref().map(|k| format!(" key {k:?}")).unwrap_or_default();
                let _ = writeln!(
                    s,
                    "  {}{key}: {} [ops {:?}{}]",
                    a.kind,
                    a.message,
                    a.window,
                    a.time_span().unwrap_or_default()
                );
            }
            if c.anomalies.len() > SUMMARY_ANOMALIES {
                let _ = writeln!(
                    s,
                    "  ... {} more anomalies in results.json",
                    c.anomalies.len() - SUMMARY_ANOMALIES
                );
            }
            if let Some(Value::Array(unknown)) = c.stats.get("unknown_keys") {
                for u in unknown.iter().take(SUMMARY_ANOMALIES) {
                    let _ = writeln!(s, "  unknown: {u}");
                }
            }
        }
        let _ = writeln!(s, "overall: {}", self.valid.label());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity_json_and_combination() {
        assert_eq!(serde_json::to_string(&Validity::Valid).unwrap(), "true");
        assert_eq!(serde_json::to_string(&Validity::Invalid).unwrap(), "false");
        assert_eq!(serde_json::to_string(&Validity::Unknown).unwrap(), "\"unknown\"");
        for v in [Validity::Valid, Validity::Invalid, Validity::Unknown] {
            let back: Validity = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
            assert_eq!(back, v);
        }
        assert!(serde_json::from_str::<Validity>("\"maybe\"").is_err());
        use Validity::*;
        assert_eq!(Validity::combine([]), Valid);
        assert_eq!(Validity::combine([Valid, Unknown, Valid]), Unknown);
        assert_eq!(Validity::combine([Unknown, Invalid, Valid]), Invalid);
    }

    #[test]
    fn an_anomaly_says_when_its_operations_ran() {
        let op = |index: u64, invoke_time: u64, complete_time: Option<u64>| OpSummary {
            index,
            outcome: Outcome::Ok,
            f: "add".into(),
            key: Some("s".into()),
            value: Value::Null,
            process: 0,
            invoke_time,
            complete_index: complete_time.map(|_| index + 1),
            complete_time,
        };
        let mut a = Anomaly {
            kind: "lost".into(),
            key: Some("s".into()),
            message: String::new(),
            window: vec![3, 9],
            ops: vec![op(3, 1_200_000_000, Some(1_500_000_000)), op(9, 61_000_000_000, None)],
            details: Map::new(),
        };
        assert_eq!(a.time_span().as_deref(), Some(" from +1.200s to +61.000s"));
        a.ops.clear();
        assert_eq!(a.time_span(), None);
    }
}
