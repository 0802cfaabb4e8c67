//! The set workload: unique-valued `add`s to a set per key, and a final `read-all`.
//!
//! This module owns the set model. For every set key the last successful `read-all` (by
//! completion) is the final read, and:
//!
//! - an element whose `add` completed `ok` before the final read was invoked must be present
//!   (else `lost`);
//! - an element present in the read must have an `add` that did not fail and was invoked before
//!   the read completed (else `unexpected`: never attempted, only failed, or added afterwards);
//! - an element must not appear twice in the read (else `duplicated`);
//! - `info` adds, and `ok` adds concurrent with the final read, may be present or absent.
//!
//! A key without a successful `read-all` is `unknown`.

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use super::{foreign_ops, keys_for, Key, Workload};
use crate::history::{History, Op, Outcome, F};
use crate::report::{Anomaly, CheckerReport, Validity};

/// Anomalies listed per kind and key; the stats count all of them.
const MAX_ANOMALIES_PER_KIND: usize = 50;

#[derive(Default)]
struct Totals {
    adds: u64,
    ok: u64,
    info: u64,
    fail: u64,
    present: u64,
    lost: u64,
    unexpected: u64,
    duplicated: u64,
    info_present: u64,
    info_absent: u64,
    concurrent_absent: u64,
}

/// Checks every set key of `history`.
pub fn check(history: &History) -> CheckerReport {
    let keys = keys_for(history, Workload::Set);
    let mut t = Totals::default();
    let mut anomalies = Vec::new();
    let mut unknown_keys = Vec::new();
    for (key, ops) in &keys {
        if let Err(reason) = check_key(key, ops, &mut t, &mut anomalies) {
            unknown_keys.push(json!({"key": super::key_json(key), "reason": reason}));
        }
    }
    if keys.is_empty() {
        unknown_keys.push(json!({"key": null, "reason": "no set operations (add/read-all) in the history"}));
    }
    let valid = Validity::of(!anomalies.is_empty(), !unknown_keys.is_empty());
    let mut stats = Map::new();
    for (name, v) in [
        ("keys", keys.len() as u64),
        ("adds", t.adds),
        ("acknowledged", t.ok),
        ("indeterminate", t.info),
        ("failed", t.fail),
        ("present", t.present),
        ("lost", t.lost),
        ("unexpected", t.unexpected),
        ("duplicated", t.duplicated),
        ("info_present", t.info_present),
        ("info_absent", t.info_absent),
        ("concurrent_absent", t.concurrent_absent),
        ("unknown", unknown_keys.len() as u64),
    ] {
        stats.insert(name.into(), json!(v));
    }
    stats.insert("unknown_keys".into(), Value::Array(unknown_keys));
    CheckerReport {
        valid,
        anomalies,
        stats,
    }
}

struct Element<'a> {
    value: Value,
    adds: Vec<&'a Op>,
}

fn check_key(key: &Key, ops: &[&Op], t: &mut Totals, anomalies: &mut Vec<Anomaly>) -> Result<(), String> {
    if let Some(reason) = foreign_ops(Workload::Set, ops) {
        return Err(reason);
    }
    let Some(read) = ops
        .iter()
        .filter(|o| o.f == F::ReadAll && o.outcome == Outcome::Ok)
        .max_by_key(|o| o.complete_index)
        .copied()
    else {
        return Err("no successful read-all on this key".into());
    };
    let read_invoke = read.invoke_index;
    let read_complete = read.complete_index.unwrap_or(u64::MAX);
    let key_str = key.as_deref();

    let mut elements: BTreeMap<String, Element> = BTreeMap::new();
    for &op in ops.iter().filter(|o| o.f == F::Add) {
        t.adds += 1;
        match op.outcome {
            Outcome::Ok => t.ok += 1,
            Outcome::Info => t.info += 1,
            Outcome::Fail => t.fail += 1,
        }
        let v = op.value();
        elements
            .entry(v.to_string())
            .or_insert_with(|| Element {
                value: v.clone(),
                adds: Vec::new(),
            })
            .adds
            .push(op);
    }
    let mut present: BTreeMap<String, (Value, u64)> = BTreeMap::new();
    for v in read.value().as_array().map(Vec::as_slice).unwrap_or_default() {
        present.entry(v.to_string()).or_insert_with(|| (v.clone(), 0)).1 += 1;
    }
    t.present += present.len() as u64;

    let mut emitted: BTreeMap<String, usize> = BTreeMap::new();
    let mut emit = |a: Anomaly| {
        let n = emitted.entry(a.kind.clone()).or_default();
        *n += 1;
        if *n <= MAX_ANOMALIES_PER_KIND {
            anomalies.push(a);
        }
    };

    for (text, (value, count)) in &present {
        let adds = elements.get(text).map(|e| e.adds.as_slice()).unwrap_or_default();
        let mut window: Vec<&Op> = adds.to_vec();
        window.push(read);
        if *count > 1 {
            t.duplicated += 1;
            emit(
                Anomaly::new(
                    "duplicated",
                    key_str,
                    format!("element {value} appears {count} times in the final read"),
                    &window,
                )
                .detail("element", value.clone()),
            );
        }
        let possible = adds
            .iter()
            .any(|a| a.outcome != Outcome::Fail && a.invoke_index < read_complete);
        if !possible {
            t.unexpected += 1;
            let why = if adds.is_empty() {
                "was never added"
            } else if adds.iter().all(|a| a.outcome == Outcome::Fail) {
                "was only added by adds that failed"
            } else {
                "was only added after the final read completed"
            };
            emit(
                Anomaly::new(
                    "unexpected",
                    key_str,
                    format!("element {value} is present in the final read (op {read_invoke}) but {why}"),
                    &window,
                )
                .detail("element", value.clone()),
            );
        }
    }

    for (text, e) in &elements {
        let is_present = present.contains_key(text);
        let acked = e
            .adds
            .iter()
            .find(|a| a.outcome == Outcome::Ok && a.complete_index.is_some_and(|c| c < read_invoke));
        if let Some(add) = acked {
            if !is_present {
                t.lost += 1;
                emit(
                    Anomaly::new(
                        "lost",
                        key_str,
                        format!(
                            "element {} was acknowledged (add op {}) before the final read (op {read_invoke}) began, \
                             but the read does not contain it",
                            e.value, add.invoke_index
                        ),
                        &[add, read],
                    )
                    .detail("element", e.value.clone()),
                );
            }
        } else if e.adds.iter().any(|a| a.outcome == Outcome::Ok) {
            if !is_present {
                t.concurrent_absent += 1;
            }
        } else if e.adds.iter().any(|a| a.outcome == Outcome::Info) {
            if is_present {
                t.info_present += 1;
            } else {
                t.info_absent += 1;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> CheckerReport {
        check(&History::parse(lines.join("\n").as_bytes()).unwrap())
    }

    #[test]
    fn lost_unexpected_and_duplicated() {
        let r = run(&[
            r#"{"index":0,"type":"invoke","f":"add","key":"s","value":1,"process":0,"time":0}"#,
            r#"{"index":1,"type":"ok","f":"add","key":"s","value":1,"process":0,"time":1}"#,
            r#"{"index":2,"type":"invoke","f":"add","key":"s","value":2,"process":0,"time":2}"#,
            r#"{"index":3,"type":"ok","f":"add","key":"s","value":2,"process":0,"time":3}"#,
            r#"{"index":4,"type":"invoke","f":"add","key":"s","value":3,"process":1,"time":4}"#,
            r#"{"index":5,"type":"fail","f":"add","key":"s","value":3,"process":1,"time":5}"#,
            r#"{"index":6,"type":"invoke","f":"read-all","key":"s","process":0,"time":6}"#,
            r#"{"index":7,"type":"ok","f":"read-all","key":"s","value":[2,2,3,9],"process":0,"time":7}"#,
        ]);
        assert_eq!(r.valid, Validity::Invalid);
        let kinds: Vec<&str> = r.anomalies.iter().map(|a| a.kind.as_str()).collect();
        assert_eq!(kinds, ["duplicated", "unexpected", "unexpected", "lost"]);
        assert_eq!(r.anomalies[3].window, vec![0, 6]);
        assert_eq!(r.stats["lost"], json!(1));
        assert_eq!(r.stats["unexpected"], json!(2));
    }

    #[test]
    fn no_final_read_is_unknown() {
        let r = run(&[
            r#"{"index":0,"type":"invoke","f":"add","key":"s","value":1,"process":0,"time":0}"#,
            r#"{"index":1,"type":"ok","f":"add","key":"s","value":1,"process":0,"time":1}"#,
        ]);
        assert_eq!(r.valid, Validity::Unknown);
    }
}
