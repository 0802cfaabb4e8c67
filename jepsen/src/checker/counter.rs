//! The counter workload: increments (`incr`, value = delta, `null` meaning 1) and reads.
//!
//! This module owns the counter model. Clients increment through CAS with sessions, so a retried
//! increment that is applied twice shows up as a value above everything attempted. For every
//! successful read of a counter key (the last one is the final read):
//!
//! - lower bound: the sum of `ok` increments that completed before the read was invoked;
//! - upper bound: the sum of increments that did not fail and were invoked before the read
//!   completed (`ok` plus `info`);
//!
//! and the value read (`null` = 0) must lie within them, else `counter-too-low` (acknowledged
//! increments lost) or `counter-too-high` (increments applied twice, or out of nowhere). Deltas
//! must be non-negative for the bounds to hold; a key with a negative delta, a non-integer read or
//! no successful read is `unknown`.

use serde_json::{json, Map, Value};

use super::{foreign_ops, key_json, keys_for, Key, Workload};
use crate::history::{History, Op, Outcome, F};
use crate::report::{Anomaly, CheckerReport, Validity};

/// Anomalies listed per key; the stats count all of them.
const MAX_ANOMALIES_PER_KEY: usize = 50;

#[derive(Default)]
struct Totals {
    reads: u64,
    too_low: u64,
    too_high: u64,
    acknowledged: i64,
    indeterminate: i64,
    failed: i64,
}

/// Checks every counter key of `history`.
pub fn check(history: &History) -> CheckerReport {
    let keys = keys_for(history, Workload::Counter);
    let mut t = Totals::default();
    let mut anomalies = Vec::new();
    let mut unknown_keys = Vec::new();
    let mut finals = Vec::new();
    for (key, ops) in &keys {
        match check_key(key, ops, &mut t, &mut anomalies) {
            Ok(f) => finals.push(f),
            Err(reason) => unknown_keys.push(json!({"key": key_json(key), "reason": reason})),
        }
    }
    if keys.is_empty() {
        unknown_keys.push(json!({"key": null, "reason": "no counter operations (incr) in the history"}));
    }
    let valid = Validity::of(!anomalies.is_empty(), !unknown_keys.is_empty());
    let mut stats = Map::new();
    stats.insert("keys".into(), json!(keys.len()));
    stats.insert("reads".into(), json!(t.reads));
    stats.insert("acknowledged".into(), json!(t.acknowledged));
    stats.insert("indeterminate".into(), json!(t.indeterminate));
    stats.insert("failed".into(), json!(t.failed));
    stats.insert("too_low".into(), json!(t.too_low));
    stats.insert("too_high".into(), json!(t.too_high));
    stats.insert("unknown".into(), json!(unknown_keys.len()));
    stats.insert("final_reads".into(), Value::Array(finals));
    stats.insert("unknown_keys".into(), Value::Array(unknown_keys));
    CheckerReport {
        valid,
        anomalies,
        stats,
    }
}

fn delta(op: &Op) -> Result<i64, String> {
    let d = match op.value() {
        Value::Null => 1,
        v => v
            .as_i64()
            .ok_or_else(|| format!("incr at index {} has a non-integer delta {v}", op.invoke_index))?,
    };
    if d < 0 {
        return Err(format!(
            "incr at index {} has a negative delta {d}; the bounds need deltas >= 0",
            op.invoke_index
        ));
    }
    Ok(d)
}

/// Sums of `(position, delta)` pairs strictly before a position.
struct Prefix {
    positions: Vec<u64>,
    sums: Vec<i64>,
}

impl Prefix {
    fn new(mut items: Vec<(u64, i64)>) -> Prefix {
        items.sort_unstable();
        let mut sums = vec![0];
        let mut acc = 0i64;
        for &(_, d) in &items {
            acc = acc.saturating_add(d);
            sums.push(acc);
        }
        Prefix {
            positions: items.iter().map(|&(p, _)| p).collect(),
            sums,
        }
    }

    fn before(&self, pos: u64) -> i64 {
        self.sums[self.positions.partition_point(|&p| p < pos)]
    }
}

/// Returns the key's final-read summary, or why the key cannot be checked.
fn check_key(key: &Key, ops: &[&Op], t: &mut Totals, anomalies: &mut Vec<Anomaly>) -> Result<Value, String> {
    if let Some(reason) = foreign_ops(Workload::Counter, ops) {
        return Err(reason);
    }
    let (mut acked, mut attempted) = (Vec::new(), Vec::new());
    let (mut ack_total, mut info_total, mut fail_total) = (0i64, 0i64, 0i64);
    for op in ops.iter().filter(|o| o.f == F::Incr) {
        let d = delta(op)?;
        match op.outcome {
            Outcome::Ok => {
                ack_total += d;
                acked.push((op.complete_index.unwrap_or(u64::MAX), d));
                attempted.push((op.invoke_index, d));
            }
            Outcome::Info => {
                info_total += d;
                attempted.push((op.invoke_index, d));
            }
            Outcome::Fail => fail_total += d,
        }
    }
    let mut reads = Vec::new();
    for op in ops.iter().filter(|o| o.f == F::Read && o.outcome == Outcome::Ok) {
        let v = match op.value() {
            Value::Null => 0,
            v => v
                .as_i64()
                .ok_or_else(|| format!("read at index {} returned a non-integer {v}", op.invoke_index))?,
        };
        reads.push((*op, v));
    }
    let Some(&(final_read, final_value)) = reads.iter().max_by_key(|(op, _)| op.complete_index) else {
        return Err("no successful read on this counter key".into());
    };
    t.acknowledged += ack_total;
    t.indeterminate += info_total;
    t.failed += fail_total;
    t.reads += reads.len() as u64;

    let lower = Prefix::new(acked);
    let upper = Prefix::new(attempted);
    let mut listed = 0;
    for &(read, value) in &reads {
        let lo = lower.before(read.invoke_index);
        let hi = upper.before(read.complete_index.unwrap_or(u64::MAX));
        let (kind, what) = if value < lo {
            t.too_low += 1;
            (
                "counter-too-low",
                format!("below the {lo} acknowledged before it began: acknowledged increments lost"),
            )
        } else if value > hi {
            t.too_high += 1;
            (
                "counter-too-high",
                format!("above the {hi} attempted before it completed: increments applied twice"),
            )
        } else {
            continue;
        };
        listed += 1;
        if listed > MAX_ANOMALIES_PER_KEY {
            continue;
        }
        anomalies.push(
            Anomaly::new(
                kind,
                key.as_deref(),
                format!("read {value} (op {}) is {what}", read.invoke_index),
                &[read],
            )
            .detail("read", value)
            .detail("acknowledged", lo)
            .detail("attempted", hi),
        );
    }
    Ok(json!({
        "key": key_json(key),
        "op": final_read.invoke_index,
        "value": final_value,
        "acknowledged": ack_total,
        "attempted": ack_total + info_total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(lines: &[&str]) -> CheckerReport {
        check(&History::parse(lines.join("\n").as_bytes()).unwrap())
    }

    const INCRS: [&str; 6] = [
        r#"{"index":0,"type":"invoke","f":"incr","key":"c","value":1,"process":0,"time":0}"#,
        r#"{"index":1,"type":"ok","f":"incr","key":"c","value":1,"process":0,"time":1}"#,
        r#"{"index":2,"type":"invoke","f":"incr","key":"c","value":2,"process":1,"time":2}"#,
        r#"{"index":3,"type":"info","f":"incr","key":"c","value":2,"process":1,"time":3}"#,
        r#"{"index":4,"type":"invoke","f":"incr","key":"c","process":0,"time":4}"#,
        r#"{"index":5,"type":"fail","f":"incr","key":"c","process":0,"time":5}"#,
    ];

    fn with_read(value: i64) -> CheckerReport {
        let read = format!(r#"{{"index":7,"type":"ok","f":"read","key":"c","value":{value},"process":0,"time":7}}"#);
        let mut lines = INCRS.to_vec();
        lines.push(r#"{"index":6,"type":"invoke","f":"read","key":"c","process":0,"time":6}"#);
        lines.push(&read);
        run(&lines)
    }

    #[test]
    fn bounds() {
        assert_eq!(with_read(0).valid, Validity::Invalid);
        assert_eq!(with_read(0).anomalies[0].kind, "counter-too-low");
        assert_eq!(with_read(1).valid, Validity::Valid);
        assert_eq!(with_read(3).valid, Validity::Valid);
        let high = with_read(4);
        assert_eq!(high.valid, Validity::Invalid);
        assert_eq!(high.anomalies[0].kind, "counter-too-high");
        assert_eq!(high.anomalies[0].details["attempted"], json!(3));
        assert_eq!(high.anomalies[0].window, vec![6]);
    }

    #[test]
    fn no_read_is_unknown() {
        assert_eq!(run(&INCRS).valid, Validity::Unknown);
    }
}
