//! Operation histories: the JSON-lines event format and the pairing of events into operations.
//!
//! This module owns the on-disk history format shared by the runner (which writes it) and the
//! checkers (which read it). One event per line, with Jepsen's field names:
//!
//! ```text
//! {"index":0,"type":"invoke","f":"write","key":"k1","value":3,"process":0,"time":1200}
//! {"index":1,"type":"ok","f":"write","key":"k1","value":3,"process":0,"time":5400}
//! ```
//!
//! - `index`: strictly increasing; the order of lines is the real-time order of the events.
//! - `type`: `invoke`, `ok` (definitely happened), `fail` (definitely did not happen) or `info`
//!   (indeterminate: it may have happened, at any time after its invocation, or never).
//! - `f`: the operation (`read`, `write`, `cas`, `add`, `read-all`, `incr`, or any other name,
//!   e.g. a nemesis action). `cas` carries `[expected, new]`; a `null` register value is "absent".
//! - `process`: a non-negative integer for clients or the string `"nemesis"`. A client process has
//!   at most one outstanding operation; after an `info` completion the process id is retired and
//!   the client continues under a new id.
//! - `time`: nanoseconds since the start of the run, never decreasing.
//!
//! [`History::parse`] validates every line and reports problems as a [`HistoryError`] carrying the
//! line number; it never panics on bad input. Invocations still outstanding at the end of the
//! history are treated as `info`.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

/// The `type` field of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// How a client operation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Definitely took effect, between its invocation and its completion.
    Ok,
    /// Definitely did not take effect.
    Fail,
    /// Indeterminate: may take effect at any point after its invocation, or never. Also used for
    /// invocations that never completed before the history ended.
    Info,
}

/// The `f` field: what an operation does. Unknown names are kept verbatim in [`F::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum F {
    Read,
    Write,
    Cas,
    Add,
    ReadAll,
    Incr,
    Other(String),
}

impl F {
    pub fn as_str(&self) -> &str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Add => "add",
            F::ReadAll => "read-all",
            F::Incr => "incr",
            F::Other(s) => s,
        }
    }

    /// Whether the operation's interesting value comes back in its completion (reads).
    pub fn returns_value(&self) -> bool {
        matches!(self, F::Read | F::ReadAll)
    }
}

impl From<&str> for F {
    fn from(s: &str) -> F {
        match s {
            "read" => F::Read,
            "write" => F::Write,
            "cas" => F::Cas,
            "add" => F::Add,
            "read-all" => F::ReadAll,
            "incr" => F::Incr,
            other => F::Other(other.to_string()),
        }
    }
}

impl fmt::Display for F {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for F {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for F {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<F, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(de::Error::custom("`f` must not be empty"));
        }
        Ok(F::from(s.as_str()))
    }
}

/// The `process` field: a client process id or the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Process {
    Client(u64),
    Nemesis,
}

impl fmt::Display for Process {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Process::Client(p) => write!(f, "{p}"),
            Process::Nemesis => f.write_str("nemesis"),
        }
    }
}

impl Serialize for Process {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Process::Client(p) => s.serialize_u64(*p),
            Process::Nemesis => s.serialize_str("nemesis"),
        }
    }
}

impl<'de> Deserialize<'de> for Process {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Process, D::Error> {
        struct V;
        const EXPECTED: &str = "a non-negative integer or \"nemesis\"";
        impl Visitor<'_> for V {
            type Value = Process;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Process, E> {
                Ok(Process::Client(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Process, E> {
                u64::try_from(v)
                    .map(Process::Client)
                    .map_err(|_| E::invalid_value(de::Unexpected::Signed(v), &EXPECTED))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Process, E> {
                if v == "nemesis" {
                    Ok(Process::Nemesis)
                } else {
                    Err(E::invalid_value(de::Unexpected::Str(v), &EXPECTED))
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// One line of a history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub index: u64,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub f: F,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub value: Value,
    pub process: Process,
    pub time: u64,
    /// Optional error description recorded by the client for `fail`/`info` completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// A client operation: an invocation paired with its completion (if any).
#[derive(Debug, Clone, PartialEq)]
pub struct Op {
    /// Position in [`History::ops`] (ops are ordered by invocation).
    pub id: usize,
    pub process: u64,
    pub f: F,
    pub key: Option<String>,
    pub outcome: Outcome,
    pub invoke_index: u64,
    pub invoke_time: u64,
    /// `None` when the history ended with the operation outstanding (then `outcome` is `Info`).
    pub complete_index: Option<u64>,
    pub complete_time: Option<u64>,
    pub invoke_value: Value,
    /// `Null` when there is no completion.
    pub complete_value: Value,
    pub error: Option<Value>,
}

impl Op {
    /// The operation's value: what a successful read returned (`Null` for reads that did not
    /// complete `ok`, i.e. unknown), otherwise the invocation's argument (falling back to the
    /// completion's value when the invocation carried none).
    pub fn value(&self) -> &Value {
        if self.f.returns_value() {
            if self.outcome == Outcome::Ok {
                &self.complete_value
            } else {
                &Value::Null
            }
        } else if self.invoke_value.is_null() {
            &self.complete_value
        } else {
            &self.invoke_value
        }
    }

    /// Index of the completion event if the op definitely took effect by then (`ok`); `None`
    /// means "no deadline" (`info`) or "never" (`fail`).
    pub fn ok_deadline(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok => self.complete_index,
            _ => None,
        }
    }
}

/// Why a history could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot open {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("line {line}: cannot read: {source}")]
    Read { line: usize, source: io::Error },
    #[error("line {line}: malformed event: {source}")]
    Json { line: usize, source: serde_json::Error },
    #[error("line {line}: {reason}")]
    Invalid { line: usize, reason: String },
}

impl HistoryError {
    /// The 1-based line the error refers to, if any.
    pub fn line(&self) -> Option<usize> {
        match self {
            HistoryError::Open { .. } => None,
            HistoryError::Read { line, .. } | HistoryError::Json { line, .. } | HistoryError::Invalid { line, .. } => {
                Some(*line)
            }
        }
    }
}

/// A parsed, validated history.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// Every event, in file order.
    pub events: Vec<Event>,
    /// Client operations, ordered by invocation.
    pub ops: Vec<Op>,
    /// Positions in `events` of nemesis events.
    pub nemesis: Vec<usize>,
}

impl History {
    /// Reads and validates a JSONL history file.
    pub fn load(path: &Path) -> Result<History, HistoryError> {
        let file = std::fs::File::open(path).map_err(|source| HistoryError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        History::parse(io::BufReader::new(file))
    }

    /// Parses JSON lines; blank lines are ignored. Errors carry 1-based line numbers.
    pub fn parse<R: BufRead>(reader: R) -> Result<History, HistoryError> {
        let mut events = Vec::new();
        let mut lines = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line_no = i + 1;
            let text = line.map_err(|source| HistoryError::Read { line: line_no, source })?;
            if text.trim().is_empty() {
                continue;
            }
            let event: Event =
                serde_json::from_str(&text).map_err(|source| HistoryError::Json { line: line_no, source })?;
            events.push(event);
            lines.push(line_no);
        }
        History::build(events, &lines)
    }

    /// Validates and pairs events built in memory (the "line" of event `i` in errors is `i + 1`).
    pub fn from_events(events: Vec<Event>) -> Result<History, HistoryError> {
        let lines: Vec<usize> = (1..=events.len()).collect();
        History::build(events, &lines)
    }

    fn build(events: Vec<Event>, lines: &[usize]) -> Result<History, HistoryError> {
        let mut ops: Vec<Op> = Vec::new();
        let mut nemesis = Vec::new();
        // process -> op id of its outstanding invocation
        let mut outstanding: HashMap<u64, usize> = HashMap::new();
        // process -> index of the info completion that retired it
        let mut retired: HashMap<u64, u64> = HashMap::new();
        let mut prev: Option<&Event> = None;

        for (pos, ev) in events.iter().enumerate() {
            let line = lines[pos];
            let invalid = |reason: String| HistoryError::Invalid { line, reason };
            if let Some(p) = prev {
                if ev.index <= p.index {
                    return Err(invalid(format!(
                        "index {} is not greater than the previous index {}",
                        ev.index, p.index
                    )));
                }
                if ev.time < p.time {
                    return Err(invalid(format!(
                        "time {} is earlier than the previous event's time {}",
                        ev.time, p.time
                    )));
                }
            }
            prev = Some(ev);

            let process = match ev.process {
                Process::Nemesis => {
                    nemesis.push(pos);
                    continue;
                }
                Process::Client(p) => p,
            };
            validate_value(ev).map_err(invalid)?;

            if ev.kind == EventType::Invoke {
                if let Some(at) = retired.get(&process) {
                    return Err(invalid(format!(
                        "process {process} was retired by its info completion at index {at}; \
                         later operations must use a new process id"
                    )));
                }
                if let Some(&id) = outstanding.get(&process) {
                    return Err(invalid(format!(
                        "process {process} invokes a new operation while its {} from index {} is outstanding",
                        ops[id].f, ops[id].invoke_index
                    )));
                }
                let id = ops.len();
                ops.push(Op {
                    id,
                    process,
                    f: ev.f.clone(),
                    key: ev.key.clone(),
                    outcome: Outcome::Info,
                    invoke_index: ev.index,
                    invoke_time: ev.time,
                    complete_index: None,
                    complete_time: None,
                    invoke_value: ev.value.clone(),
                    complete_value: Value::Null,
                    error: None,
                });
                outstanding.insert(process, id);
                continue;
            }

            let Some(id) = outstanding.remove(&process) else {
                return Err(invalid(format!(
                    "{} completion for process {process} which has no outstanding invocation",
                    type_name(ev.kind)
                )));
            };
            let op = &mut ops[id];
            if op.f != ev.f {
                return Err(invalid(format!(
                    "completion f {:?} does not match the invocation's f {:?} (index {})",
                    ev.f.as_str(),
                    op.f.as_str(),
                    op.invoke_index
                )));
            }
            if op.key != ev.key {
                return Err(invalid(format!(
                    "completion key {:?} does not match the invocation's key {:?} (index {})",
                    ev.key, op.key, op.invoke_index
                )));
            }
            op.outcome = match ev.kind {
                EventType::Ok => Outcome::Ok,
                EventType::Fail => Outcome::Fail,
                EventType::Info | EventType::Invoke => Outcome::Info,
            };
            op.complete_index = Some(ev.index);
            op.complete_time = Some(ev.time);
            op.complete_value = ev.value.clone();
            op.error = ev.error.clone();
            if ev.kind == EventType::Info {
                retired.insert(process, ev.index);
            }
        }
        Ok(History { events, ops, nemesis })
    }

    /// Writes `events` as JSON lines.
    pub fn write_jsonl<W: Write>(events: &[Event], mut out: W) -> io::Result<()> {
        for ev in events {
            serde_json::to_writer(&mut out, ev)?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

fn type_name(t: EventType) -> &'static str {
    match t {
        EventType::Invoke => "invoke",
        EventType::Ok => "ok",
        EventType::Fail => "fail",
        EventType::Info => "info",
    }
}

/// Shape checks for the operations the checkers understand.
fn validate_value(ev: &Event) -> Result<(), String> {
    let v = &ev.value;
    match (&ev.f, ev.kind) {
        (F::Cas, EventType::Invoke) => match v.as_array() {
            Some(a) if a.len() == 2 => Ok(()),
            _ => Err(format!("cas value must be [expected, new], got {v}")),
        },
        (F::Add, EventType::Invoke) if v.is_null() => Err("add needs a non-null value".to_string()),
        (F::Incr, EventType::Invoke) if !(v.is_null() || v.is_i64()) => {
            Err(format!("incr value must be an integer delta (or null for 1), got {v}"))
        }
        (F::ReadAll, EventType::Ok) if !v.is_array() => Err(format!("ok read-all value must be an array, got {v}")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<History, HistoryError> {
        History::parse(s.as_bytes())
    }

    #[test]
    fn parses_and_pairs() {
        let h = parse(concat!(
            r#"{"index":0,"type":"invoke","f":"write","key":"k","value":1,"process":0,"time":1}"#,
            "\n",
            r#"{"index":1,"type":"invoke","f":"read","key":"k","value":null,"process":1,"time":2}"#,
            "\n\n",
            r#"{"index":2,"type":"info","f":"start-partition","value":"majority","process":"nemesis","time":3}"#,
            "\n",
            r#"{"index":3,"type":"ok","f":"read","key":"k","value":1,"process":1,"time":4}"#,
            "\n",
            r#"{"index":4,"type":"info","f":"write","key":"k","value":1,"process":0,"time":5,"error":"timeout"}"#,
            "\n",
            r#"{"index":5,"type":"invoke","f":"cas","key":"k","value":[1,2],"process":2,"time":6}"#,
        ))
        .unwrap();
        assert_eq!(h.events.len(), 6);
        assert_eq!(h.nemesis, vec![2]);
        assert_eq!(h.ops.len(), 3);
        assert_eq!(h.ops[0].outcome, Outcome::Info);
        assert_eq!(h.ops[0].value(), &serde_json::json!(1));
        assert_eq!(h.ops[1].outcome, Outcome::Ok);
        assert_eq!(h.ops[1].value(), &serde_json::json!(1));
        assert_eq!(h.ops[1].complete_index, Some(3));
        // never completed: indeterminate
        assert_eq!(h.ops[2].outcome, Outcome::Info);
        assert_eq!(h.ops[2].complete_index, None);
    }

    #[test]
    fn round_trips_jsonl() {
        let text = concat!(
            r#"{"index":0,"type":"invoke","f":"cas","key":"k","value":[null,2],"process":7,"time":10}"#,
            "\n",
            r#"{"index":1,"type":"info","f":"kill","value":null,"process":"nemesis","time":11}"#,
            "\n",
            r#"{"index":2,"type":"fail","f":"cas","key":"k","value":[null,2],"process":7,"time":12,"error":"precondition"}"#,
            "\n",
        );
        let h = parse(text).unwrap();
        let mut out = Vec::new();
        History::write_jsonl(&h.events, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), text);
    }

    fn err_of(s: &str) -> HistoryError {
        parse(s).expect_err("history should be rejected")
    }

    #[test]
    fn rejects_malformed_lines_with_line_numbers() {
        let ok = r#"{"index":0,"type":"invoke","f":"read","key":"k","process":0,"time":1}"#;
        let cases = [
            "{not json",
            r#"{"index":1,"type":"begin","f":"read","key":"k","process":0,"time":1}"#,
            r#"{"index":1,"type":"ok","f":"read","key":"k","process":-1,"time":1}"#,
            r#"{"index":1,"type":"ok","f":"read","key":"k","process":"bob","time":1}"#,
            r#"{"index":1,"type":"ok","f":"read","key":"k","process":0}"#,
            r#"{"index":1,"type":"ok","f":"read","key":"k","process":0,"time":1.5}"#,
            r#"{"index":1,"type":"ok","f":"","key":"k","process":0,"time":1}"#,
            r#"{"index":1,"type":"ok","f":"read","key":"k","process":0,"time":1,"colour":"red"}"#,
            r#"{"index":1,"type":"ok","f":"read","key":7,"process":0,"time":1}"#,
        ];
        for bad in cases {
            let e = err_of(&format!("{ok}\n\n{bad}\n"));
            assert_eq!(e.line(), Some(3), "{bad}: {e}");
            assert!(matches!(e, HistoryError::Json { .. }), "{bad}: {e}");
        }
    }

    #[test]
    fn rejects_inconsistent_histories() {
        let inv = |i: u64, p: u64, t: u64| {
            format!(r#"{{"index":{i},"type":"invoke","f":"read","key":"k","process":{p},"time":{t}}}"#)
        };
        let done = |i: u64, ty: &str, p: u64, t: u64| {
            format!(r#"{{"index":{i},"type":"{ty}","f":"read","key":"k","value":null,"process":{p},"time":{t}}}"#)
        };
        let cases: Vec<(String, &str)> = vec![
            (format!("{}\n{}", inv(1, 0, 1), inv(1, 1, 2)), "not greater"),
            (format!("{}\n{}", inv(0, 0, 5), inv(1, 1, 2)), "earlier"),
            (format!("{}\n{}", inv(0, 0, 1), inv(1, 0, 2)), "outstanding"),
            (done(0, "ok", 0, 1), "no outstanding"),
            (
                format!("{}\n{}\n{}", inv(0, 0, 1), done(1, "info", 0, 2), inv(2, 0, 3)),
                "retired",
            ),
            (
                format!(
                    "{}\n{}",
                    inv(0, 0, 1),
                    r#"{"index":1,"type":"ok","f":"write","key":"k","value":1,"process":0,"time":2}"#
                ),
                "does not match",
            ),
            (
                format!(
                    "{}\n{}",
                    inv(0, 0, 1),
                    r#"{"index":1,"type":"ok","f":"read","key":"other","value":1,"process":0,"time":2}"#
                ),
                "does not match",
            ),
            (
                r#"{"index":0,"type":"invoke","f":"cas","key":"k","value":[1],"process":0,"time":1}"#.into(),
                "[expected, new]",
            ),
            (
                r#"{"index":0,"type":"invoke","f":"add","key":"s","process":0,"time":1}"#.into(),
                "non-null",
            ),
            (
                r#"{"index":0,"type":"invoke","f":"incr","key":"c","value":"x","process":0,"time":1}"#.into(),
                "integer",
            ),
        ];
        for (text, needle) in cases {
            let e = err_of(&text);
            assert!(matches!(e, HistoryError::Invalid { .. }), "{text}: {e}");
            assert!(e.to_string().contains(needle), "{text}: {e}");
            assert!(e.line().is_some());
        }
    }
}
