//! Checkers: decide whether a history is consistent with a workload's model.
//!
//! This module owns what is common to all checkers: the [`Workload`] names, the [`Budget`], the
//! assignment of keys to workloads and [`check`], which runs the selected checkers and assembles
//! the [`Results`]. Each workload's model lives in its own module: [`linear`] (per-key
//! linearizable registers), [`set`] (unique adds and final reads) and [`counter`] (increments).
//!
//! Keys are assigned by the operations they carry: a key with `incr` belongs to the counter
//! workload, one with `add`/`read-all` to the set workload, one with `write`/`cas` (or only reads)
//! to the register workload. A key whose operations span workloads is reported `unknown` by the
//! checkers that claim it rather than being guessed at.

pub mod counter;
pub mod linear;
pub mod set;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde_json::{json, Value};

use crate::history::{History, Op, F};
use crate::report::{CheckerReport, HistoryStats, Results};

/// A workload, and so the checker that understands its operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    Register,
    Set,
    Counter,
}

impl Workload {
    pub const ALL: [Workload; 3] = [Workload::Register, Workload::Set, Workload::Counter];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Register => "register",
            Workload::Set => "set",
            Workload::Counter => "counter",
        }
    }

    /// Operations this workload's checker understands.
    fn vocabulary(self, f: &F) -> bool {
        match self {
            Workload::Register => matches!(f, F::Read | F::Write | F::Cas),
            Workload::Set => matches!(f, F::Add | F::ReadAll),
            Workload::Counter => matches!(f, F::Incr | F::Read),
        }
    }

    /// Operations that mark a key as belonging to this workload.
    fn marks(self, f: &F) -> bool {
        match self {
            Workload::Register => matches!(f, F::Write | F::Cas),
            Workload::Set => matches!(f, F::Add | F::ReadAll),
            Workload::Counter => matches!(f, F::Incr),
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Workload {
    type Err = String;
    fn from_str(s: &str) -> Result<Workload, String> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == s)
            .ok_or_else(|| format!("unknown workload {s:?} (expected register, set or counter)"))
    }
}

/// Limits on the linearizability search, per key. When a key exceeds either, its result is
/// `unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Maximum number of distinct (linearized-set, state) configurations memoised for one key.
    pub max_states: Option<u64>,
    /// Maximum wall-clock time spent searching one key.
    pub max_time: Option<Duration>,
    /// Maximum memory (bytes, approximate) of one key's memoised configurations.
    pub max_memory: Option<usize>,
}

impl Budget {
    pub const DEFAULT_MAX_STATES: u64 = 10_000_000;
    pub const DEFAULT_MAX_TIME: Duration = Duration::from_secs(10);
    pub const DEFAULT_MAX_MEMORY: usize = 1 << 30;

    pub const UNLIMITED: Budget = Budget {
        max_states: None,
        max_time: None,
        max_memory: None,
    };
}

impl Default for Budget {
    fn default() -> Budget {
        Budget {
            max_states: Some(Budget::DEFAULT_MAX_STATES),
            max_time: Some(Budget::DEFAULT_MAX_TIME),
            max_memory: Some(Budget::DEFAULT_MAX_MEMORY),
        }
    }
}

/// A key as it appears in reports (`None` for operations without a key).
pub type Key = Option<String>;

/// The operations of every key that belongs to `workload`, grouped by key, in invocation order.
pub fn keys_for(history: &History, workload: Workload) -> BTreeMap<Key, Vec<&Op>> {
    let mut by_key: BTreeMap<Key, Vec<&Op>> = BTreeMap::new();
    for op in &history.ops {
        by_key.entry(op.key.clone()).or_default().push(op);
    }
    by_key.retain(|_, ops| claims(workload, ops));
    by_key
}

fn claims(workload: Workload, ops: &[&Op]) -> bool {
    if ops.iter().any(|o| workload.marks(&o.f)) {
        return true;
    }
    // A key with reads only (and nothing marking it for another workload) is a register that was
    // never written.
    workload == Workload::Register
        && ops.iter().any(|o| o.f == F::Read)
        && !Workload::ALL.iter().any(|w| ops.iter().any(|o| w.marks(&o.f)))
}

/// If `ops` contains operations `workload` does not model, a reason to report the key unknown.
pub(crate) fn foreign_ops(workload: Workload, ops: &[&Op]) -> Option<String> {
    let mut foreign: Vec<&str> = ops
        .iter()
        .filter(|o| !workload.vocabulary(&o.f))
        .map(|o| o.f.as_str())
        .collect();
    if foreign.is_empty() {
        return None;
    }
    foreign.sort_unstable();
    foreign.dedup();
    Some(format!(
        "key also carries operations the {workload} checker does not model: {}",
        foreign.join(", ")
    ))
}

pub(crate) fn key_json(key: &Key) -> Value {
    key.as_ref().map_or(Value::Null, |k| json!(k))
}

/// Runs the checkers of `workloads` over `history`.
pub fn check(history: &History, workloads: &[Workload], budget: Budget, file: Option<&Path>) -> Results {
    let mut checkers = BTreeMap::new();
    for &w in workloads {
        let report: CheckerReport = match w {
            Workload::Register => linear::check(history, budget),
            Workload::Set => set::check(history),
            Workload::Counter => counter::check(history),
        };
        checkers.insert(w.name().to_string(), report);
    }
    Results::new(HistoryStats::of(history, file), checkers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_assigned_by_their_operations() {
        let text = [
            r#"{"index":0,"type":"invoke","f":"incr","key":"c","value":1,"process":0,"time":0}"#,
            r#"{"index":1,"type":"ok","f":"incr","key":"c","value":1,"process":0,"time":1}"#,
            r#"{"index":2,"type":"invoke","f":"read","key":"c","process":0,"time":2}"#,
            r#"{"index":3,"type":"ok","f":"read","key":"c","value":1,"process":0,"time":3}"#,
            r#"{"index":4,"type":"invoke","f":"read","key":"r","process":0,"time":4}"#,
            r#"{"index":5,"type":"ok","f":"read","key":"r","value":null,"process":0,"time":5}"#,
            r#"{"index":6,"type":"invoke","f":"add","key":"s","value":1,"process":0,"time":6}"#,
            r#"{"index":7,"type":"ok","f":"add","key":"s","value":1,"process":0,"time":7}"#,
            r#"{"index":8,"type":"invoke","f":"write","key":"w","value":1,"process":0,"time":8}"#,
            r#"{"index":9,"type":"ok","f":"write","key":"w","value":1,"process":0,"time":9}"#,
        ]
        .join("\n");
        let h = History::parse(text.as_bytes()).unwrap();
        let names = |w| keys_for(&h, w).into_keys().map(|k| k.unwrap()).collect::<Vec<_>>();
        assert_eq!(names(Workload::Register), ["r", "w"]);
        assert_eq!(names(Workload::Set), ["s"]);
        assert_eq!(names(Workload::Counter), ["c"]);
        assert_eq!("set".parse::<Workload>(), Ok(Workload::Set));
        assert!("bank".parse::<Workload>().is_err());
    }
}
