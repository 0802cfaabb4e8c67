//! Linearizability of read/write/cas registers, one independent register per key.
//!
//! This module owns the register model and the search. The history is partitioned by key
//! (linearizability is compositional) and every key is checked on its own:
//!
//! - `ok` operations must take effect between their invocation and their completion;
//! - `fail` operations never take effect and are dropped;
//! - `info` (and never-completed) writes and CASes may take effect at any point after their
//!   invocation, or never: they have no completion deadline and are optional;
//! - reads that did not complete `ok` constrain nothing and are dropped.
//!
//! The search is Wing & Gong's, with Lowe's memoisation as used by Porcupine: the calls and
//! returns of a key's operations form a doubly linked list in history order; walking it from the
//! head, the checker tries to linearize each call it meets (every such call is a minimal
//! operation: it was invoked before the earliest pending return), and backtracks when it reaches
//! a return, i.e. an operation that had to take effect by then but could not. A configuration is
//! the set of linearized operations (a bitset) plus the register's state (the interned id of its
//! value; 0 = absent); configurations already explored are memoised and never revisited. The
//! search succeeds as soon as every `ok` operation is linearized.
//!
//! Indeterminate writes and CASes whose new value no read returns and no CAS expects are dropped
//! before the search: a linearization that applies one can always omit it instead (the next
//! operation after it must overwrite it blindly), so dropping them is exact and keeps the search
//! from branching over them. By the same argument an optional operation is only worth
//! linearizing if the very next one observes its value (a read of it, or a CAS expecting it): the
//! search never places a blind write right after an optional operation, and memoises that "last
//! op was optional" bit with the configuration so the restriction stays sound.
//!
//! The memo stores each linearized set compactly: per bitset (`ok` ops, optional ops) only the
//! words between the first one that is not all ones and the last one that is not all zeros.
//!
//! A [`Budget`] bounds the memoised configurations, their memory and the wall-clock time per
//! key; a key that exceeds it is `unknown`, never guessed.
//!
//! For a non-linearizable key the report names the operation the search could not get past in
//! its furthest configuration (the one whose completion lies latest in the history), the last
//! operations of that linearizable prefix (including the one that set the register's value), the
//! last write of the value the failing operation needed, and the `ok` operations concurrent with
//! it (plus optional ones that wrote the needed value): a small window that shows the anomaly.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::{foreign_ops, key_json, keys_for, Budget, Workload};
use crate::history::{History, Op, Outcome, F};
use crate::report::{Anomaly, CheckerReport, Validity};

/// How many operations concurrent with the failing one an anomaly lists (nearest first).
const MAX_CONCURRENT_IN_WINDOW: usize = 8;
/// How many of the last linearized operations an anomaly lists.
const RECENT_IN_WINDOW: usize = 3;

/// The verdict for one key.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyVerdict {
    Valid,
    Invalid(Box<Anomaly>),
    Unknown(String),
}

/// The result of checking one key.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyResult {
    pub verdict: KeyVerdict,
    /// Memoised configurations explored.
    pub states: u64,
    /// Indeterminate operations dropped because nothing ever observed their value.
    pub pruned: usize,
}

/// Checks every register key of `history`.
pub fn check(history: &History, budget: Budget) -> CheckerReport {
    let keys = keys_for(history, Workload::Register);
    let mut anomalies = Vec::new();
    let mut unknown_keys = Vec::new();
    let (mut valid_keys, mut invalid_keys) = (0u64, 0u64);
    let (mut states, mut max_states, mut pruned, mut ops) = (0u64, 0u64, 0u64, 0u64);
    for (key, key_ops) in &keys {
        let r = check_key(key.as_deref(), key_ops, budget);
        states += r.states;
        max_states = max_states.max(r.states);
        pruned += r.pruned as u64;
        ops += key_ops.len() as u64;
        match r.verdict {
            KeyVerdict::Valid => valid_keys += 1,
            KeyVerdict::Invalid(a) => {
                invalid_keys += 1;
                anomalies.push(*a);
            }
            KeyVerdict::Unknown(reason) => {
                unknown_keys.push(json!({"key": key_json(key), "reason": reason, "states": r.states}))
            }
        }
    }
    if keys.is_empty() {
        unknown_keys.push(json!({"key": null, "reason": "no register operations (read/write/cas) in the history"}));
    }
    let valid = Validity::of(invalid_keys > 0, !unknown_keys.is_empty());
    let mut stats = Map::new();
    stats.insert("keys".into(), json!(keys.len()));
    stats.insert("ops".into(), json!(ops));
    stats.insert("valid_keys".into(), json!(valid_keys));
    stats.insert("invalid_keys".into(), json!(invalid_keys));
    stats.insert("unknown".into(), json!(unknown_keys.len()));
    stats.insert("states_explored".into(), json!(states));
    stats.insert("max_states_per_key".into(), json!(max_states));
    stats.insert("pruned_info_ops".into(), json!(pruned));
    stats.insert("unknown_keys".into(), Value::Array(unknown_keys));
    CheckerReport {
        valid,
        anomalies,
        stats,
    }
}

/// The register operations after dropping what cannot matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read(u32),
    Write(u32),
    Cas(u32, u32),
}

impl Kind {
    /// Applies the operation to register state `s`; `None` if it cannot take effect there.
    fn step(self, s: u32) -> Option<u32> {
        match self {
            Kind::Read(v) => (v == s).then_some(s),
            Kind::Write(v) => Some(v),
            Kind::Cas(e, n) => (e == s).then_some(n),
        }
    }

    fn writes(self) -> Option<u32> {
        match self {
            Kind::Read(_) => None,
            Kind::Write(v) | Kind::Cas(_, v) => Some(v),
        }
    }
}

#[derive(Debug)]
struct MOp<'a> {
    op: &'a Op,
    kind: Kind,
    /// `ok`: must take effect by `ret`. Otherwise optional with no deadline.
    required: bool,
    call: u64,
    ret: Option<u64>,
}

/// Interns register values: 0 is "absent" (`null`).
#[derive(Default)]
struct Values {
    ids: HashMap<String, u32>,
    shown: Vec<Value>,
}

impl Values {
    fn id(&mut self, v: &Value) -> u32 {
        if v.is_null() {
            return 0;
        }
        let text = v.to_string();
        if let Some(&id) = self.ids.get(&text) {
            return id;
        }
        self.shown.push(v.clone());
        let id = self.shown.len() as u32;
        self.ids.insert(text, id);
        id
    }

    fn show(&self, id: u32) -> Value {
        if id == 0 {
            Value::Null
        } else {
            self.shown[id as usize - 1].clone()
        }
    }

    fn describe(&self, id: u32) -> String {
        if id == 0 {
            "absent".to_string()
        } else {
            self.show(id).to_string()
        }
    }
}

/// Checks one key's operations (which must all be on that key).
pub fn check_key(key: Option<&str>, ops: &[&Op], budget: Budget) -> KeyResult {
    let unknown = |reason: String| KeyResult {
        verdict: KeyVerdict::Unknown(reason),
        states: 0,
        pruned: 0,
    };
    if let Some(reason) = foreign_ops(Workload::Register, ops) {
        return unknown(reason);
    }
    let mut values = Values::default();
    let mut mops = Vec::new();
    for &op in ops {
        let required = match op.outcome {
            Outcome::Fail => continue,
            Outcome::Ok => true,
            Outcome::Info => false,
        };
        let kind = match op.f {
            F::Read if !required => continue,
            F::Read => Kind::Read(values.id(op.value())),
            F::Write => Kind::Write(values.id(op.value())),
            F::Cas => match op.value().as_array().map(Vec::as_slice) {
                Some([e, n]) => Kind::Cas(values.id(e), values.id(n)),
                _ => return unknown(format!("cas at index {} has no [expected, new] value", op.invoke_index)),
            },
            _ => return unknown(format!("unsupported operation {} at index {}", op.f, op.invoke_index)),
        };
        let ret = if required { op.complete_index } else { None };
        if required && ret.is_none() {
            return unknown(format!("ok operation at index {} has no completion", op.invoke_index));
        }
        mops.push(MOp {
            op,
            kind,
            required,
            call: op.invoke_index,
            ret,
        });
    }

    // Values some operation depends on: read results and CAS expectations.
    let mut observed = HashSet::new();
    for m in &mops {
        match m.kind {
            Kind::Read(v) => observed.insert(v),
            Kind::Cas(e, _) => observed.insert(e),
            Kind::Write(_) => false,
        };
    }
    let before = mops.len();
    mops.retain(|m| m.required || m.kind.writes().is_some_and(|v| observed.contains(&v)));
    let pruned = before - mops.len();

    if values.shown.len() >= (u32::MAX >> 1) as usize {
        return unknown("too many distinct values on one key".into());
    }
    let mut search = Search::new(&mops);
    let outcome = search.run(budget);
    let states = search.memo.len() as u64;
    let verdict = match outcome {
        Outcome2::Linearizable => KeyVerdict::Valid,
        Outcome2::Exhausted(reason) => KeyVerdict::Unknown(reason),
        Outcome2::NotLinearizable(best) => KeyVerdict::Invalid(Box::new(describe(key, &mops, &values, &best, states))),
    };
    KeyResult {
        verdict,
        states,
        pruned,
    }
}

/// The furthest point the search reached before it had to backtrack.
#[derive(Debug, Clone)]
struct Frontier {
    /// The operation whose completion was reached without it being linearizable.
    failed: usize,
    /// The last operations of the linearized prefix, oldest first.
    recent: Vec<usize>,
    /// The last write/cas of the prefix: the op that set `state`.
    setter: Option<usize>,
    state: u32,
    depth: usize,
}

enum Outcome2 {
    Linearizable,
    NotLinearizable(Frontier),
    Exhausted(String),
}

const HEAD: usize = 0;

struct Search<'m, 'a> {
    ops: &'m [MOp<'a>],
    // Doubly linked list of call/return entries in history order; entry 0 is the head sentinel,
    // entry `tail` the tail sentinel.
    next: Vec<usize>,
    prev: Vec<usize>,
    entry_op: Vec<usize>,
    entry_is_call: Vec<bool>,
    call_entry: Vec<usize>,
    ret_entry: Vec<Option<usize>>,
    tail: usize,
    zobrist: Vec<u64>,
    memo: Memo,
}

impl<'m, 'a> Search<'m, 'a> {
    fn new(ops: &'m [MOp<'a>]) -> Search<'m, 'a> {
        // (position in history, op, is_call)
        let mut entries: Vec<(u64, usize, bool)> = Vec::with_capacity(ops.len() * 2);
        for (i, m) in ops.iter().enumerate() {
            entries.push((m.call, i, true));
            if let Some(r) = m.ret {
                entries.push((r, i, false));
            }
        }
        entries.sort_unstable();
        let n = entries.len();
        let tail = n + 1;
        let mut s = Search {
            ops,
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|i| i.saturating_sub(1)).collect(),
            entry_op: vec![usize::MAX; tail + 1],
            entry_is_call: vec![false; tail + 1],
            call_entry: vec![0; ops.len()],
            ret_entry: vec![None; ops.len()],
            tail,
            zobrist: (0..ops.len() as u64).map(|i| splitmix64(i ^ 0x5eed_f0b5)).collect(),
            memo: Memo::default(),
        };
        for (k, &(_, op, is_call)) in entries.iter().enumerate() {
            let e = k + 1;
            s.entry_op[e] = op;
            s.entry_is_call[e] = is_call;
            if is_call {
                s.call_entry[op] = e;
            } else {
                s.ret_entry[op] = Some(e);
            }
        }
        s
    }

    fn unlink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        self.prev[n] = e;
    }

    /// Removes an op's entries (dancing links; undone by `unlift` in LIFO order).
    fn lift(&mut self, op: usize) {
        self.unlink(self.call_entry[op]);
        if let Some(r) = self.ret_entry[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.ret_entry[op] {
            self.relink(r);
        }
        self.relink(self.call_entry[op]);
    }

    fn run(&mut self, budget: Budget) -> Outcome2 {
        let started = Instant::now();
        let mut set = Linearized::new(self.ops);
        let mut encoded = Vec::new();
        let mut z = 0u64;
        let mut state = 0u32;
        // (op, state before it, after_optional before it)
        let mut stack: Vec<(usize, u32, bool)> = Vec::new();
        // Whether the last linearized op is optional: then the next one must observe its value.
        let mut after_optional = false;
        let mut required_left = self.ops.iter().filter(|m| m.required).count();
        let mut frontier: Option<Frontier> = None;
        let mut cur = self.next[HEAD];
        let mut iterations = 0u64;
        let max_states = budget.max_states.unwrap_or(u64::MAX).min(u32::MAX as u64 - 1);
        let max_bytes = budget.max_memory.unwrap_or(usize::MAX);
        loop {
            if required_left == 0 {
                return Outcome2::Linearizable;
            }
            iterations += 1;
            if iterations & 1023 == 0 {
                if let Some(limit) = budget.max_time {
                    if started.elapsed() >= limit {
                        return Outcome2::Exhausted(format!(
                            "time budget of {} ms exhausted after {} states",
                            limit.as_millis(),
                            self.memo.len()
                        ));
                    }
                }
            }
            if cur == self.tail {
                // Unreachable: a pending `ok` op's return entry always lies ahead of `cur`.
                return Outcome2::Exhausted("internal error: search ran past the end of the history".into());
            }
            let e = cur;
            let o = self.entry_op[e];
            if self.entry_is_call[e] {
                // A blind write right after an optional op would make that op pointless: every
                // linearization doing so is matched by one without the optional op.
                let blind = matches!(self.ops[o].kind, Kind::Write(_));
                let next = if after_optional && blind {
                    None
                } else {
                    self.ops[o].kind.step(state)
                };
                if let Some(ns) = next {
                    let optional = !self.ops[o].required;
                    let key_state = (ns << 1) | u32::from(optional);
                    set.toggle(o);
                    set.encode(&mut encoded);
                    let nz = z ^ self.zobrist[o];
                    let h = nz ^ splitmix64(key_state as u64);
                    if !self.memo.contains(h, &encoded, key_state) {
                        if self.memo.len() as u64 >= max_states {
                            return Outcome2::Exhausted(format!("state budget of {max_states} states exhausted"));
                        }
                        if self.memo.len() & 4095 == 0 && self.memo.bytes() > max_bytes {
                            return Outcome2::Exhausted(format!(
                                "memory budget of {} MiB exhausted after {} states",
                                max_bytes >> 20,
                                self.memo.len()
                            ));
                        }
                        self.memo.insert(h, &encoded, key_state);
                        stack.push((o, state, after_optional));
                        state = ns;
                        after_optional = optional;
                        z = nz;
                        self.lift(o);
                        if self.ops[o].required {
                            required_left -= 1;
                        }
                        cur = self.next[HEAD];
                        continue;
                    }
                    set.toggle(o);
                }
                cur = self.next[e];
            } else {
                // `o` had to take effect by now and cannot: record how far we got, backtrack.
                // Configurations right after an optional op are transient (only an observer of
                // its value may follow); they make poor explanations.
                let further = match &frontier {
                    None => true,
                    Some(_) if after_optional => false,
                    Some(f) => {
                        let (a, b) = (self.ops[o].ret, self.ops[f.failed].ret);
                        a > b || (a == b && stack.len() > f.depth)
                    }
                };
                if further {
                    frontier = Some(self.frontier(o, &stack, state));
                }
                let Some((p, prev_state, prev_after_optional)) = stack.pop() else {
                    return match frontier {
                        Some(f) => Outcome2::NotLinearizable(f),
                        None => Outcome2::Exhausted("internal error: no frontier recorded".into()),
                    };
                };
                state = prev_state;
                after_optional = prev_after_optional;
                set.toggle(p);
                z ^= self.zobrist[p];
                self.unlift(p);
                if self.ops[p].required {
                    required_left += 1;
                }
                cur = self.next[self.call_entry[p]];
            }
        }
    }

    fn frontier(&self, failed: usize, stack: &[(usize, u32, bool)], state: u32) -> Frontier {
        let recent = stack[stack.len().saturating_sub(RECENT_IN_WINDOW)..]
            .iter()
            .map(|&(o, _, _)| o)
            .collect();
        let setter = stack
            .iter()
            .rev()
            .map(|&(o, _, _)| o)
            .find(|&o| self.ops[o].kind.writes().is_some());
        Frontier {
            failed,
            recent,
            setter,
            state,
            depth: stack.len(),
        }
    }
}

/// Builds the anomaly for a key whose search failed at `f`.
fn describe(key: Option<&str>, ops: &[MOp<'_>], values: &Values, f: &Frontier, states: u64) -> Anomaly {
    let r = &ops[f.failed];
    let r_ret = r.ret.unwrap_or(u64::MAX);
    // The value the failing op needed the register to hold, if any.
    let needed = match r.kind {
        Kind::Read(v) | Kind::Cas(v, _) => Some(v),
        Kind::Write(_) => None,
    };
    // Concurrent `ok` ops, and optional ones only if they could have supplied the needed value
    // (an `info` op invoked long ago overlaps everything after it).
    let mut concurrent: Vec<usize> = (0..ops.len())
        .filter(|&i| i != f.failed && ops[i].call < r_ret && ops[i].ret.unwrap_or(u64::MAX) > r.call)
        .filter(|&i| ops[i].required || (needed.is_some() && ops[i].kind.writes() == needed))
        .collect();
    concurrent.sort_by_key(|&i| ops[i].call.abs_diff(r.call));
    concurrent.truncate(MAX_CONCURRENT_IN_WINDOW);
    // The last op invoked before the failing one that wrote the needed value.
    let last_writer = needed.and_then(|v| {
        (0..ops.len())
            .rev()
            .find(|&i| ops[i].call < r.call && ops[i].kind.writes() == Some(v))
    });
    let mut window: Vec<&Op> = vec![r.op];
    window.extend(
        f.recent
            .iter()
            .chain(f.setter.iter())
            .chain(last_writer.iter())
            .chain(concurrent.iter())
            .map(|&i| ops[i].op),
    );

    let what = match r.kind {
        Kind::Read(v) => format!("read of {}", values.describe(v)),
        Kind::Write(v) => format!("write of {}", values.describe(v)),
        Kind::Cas(e, n) => format!("cas {} -> {}", values.describe(e), values.describe(n)),
    };
    let who = format!("{what} by process {} (op {})", r.op.process, r.op.invoke_index);
    let held = values.describe(f.state);
    let set_by = match f.setter {
        Some(s) => format!(" (set by op {})", ops[s].op.invoke_index),
        None => " (initial)".to_string(),
    };
    let never_written = |v: u32| v != 0 && !ops.iter().any(|m| m.kind.writes() == Some(v));
    let why = match r.kind {
        Kind::Read(v) if never_written(v) => {
            format!(
                "{} was never written by a write or cas that did not fail",
                values.describe(v)
            )
        }
        Kind::Cas(e, _) if never_written(e) => {
            format!(
                "the expected {} was never written by a write or cas that did not fail",
                values.describe(e)
            )
        }
        _ => format!(
            "in the furthest linearizable prefix ({} ops) the register holds {held}{set_by}, and no ordering \
             of the concurrent operations lets it take effect before its completion",
            f.depth
        ),
    };
    Anomaly::new(
        "nonlinearizable",
        key,
        format!("{who} cannot be linearized: {why}"),
        &window,
    )
    .detail("op", r.op.invoke_index)
    .detail("state", values.show(f.state))
    .detail("linearized_ops", f.depth as u64)
    .detail("states_explored", states)
}

/// The linearized set as two bitsets, `ok` operations and optional (`info`) ones, each indexed
/// in invocation order.
struct Linearized {
    slot: Vec<(bool, usize)>,
    required: Vec<u64>,
    optional: Vec<u64>,
}

impl Linearized {
    fn new(ops: &[MOp<'_>]) -> Linearized {
        let (mut r, mut o) = (0, 0);
        let slot = ops
            .iter()
            .map(|m| {
                let counter = if m.required { &mut r } else { &mut o };
                *counter += 1;
                (m.required, *counter - 1)
            })
            .collect();
        Linearized {
            slot,
            required: vec![0; r.div_ceil(64)],
            optional: vec![0; o.div_ceil(64)],
        }
    }

    fn toggle(&mut self, op: usize) {
        let (req, i) = self.slot[op];
        let set = if req { &mut self.required } else { &mut self.optional };
        set[i / 64] ^= 1 << (i % 64);
    }

    /// A canonical, compact encoding of the set: per bitset, the words between the first word
    /// that is not all ones and the last word that is not all zeros. The search linearizes `ok`
    /// operations roughly in history order, so this is a few words even for long histories.
    fn encode(&self, out: &mut Vec<u64>) {
        out.clear();
        for set in [&self.required, &self.optional] {
            let lo = set.iter().position(|&w| w != u64::MAX).unwrap_or(set.len());
            let hi = set.iter().rposition(|&w| w != 0).map_or(lo, |i| (i + 1).max(lo));
            out.push(((lo as u64) << 32) | (hi - lo) as u64);
            out.extend_from_slice(&set[lo..hi]);
        }
    }
}

/// Memoised configurations: (encoded linearized set, register state << 1 | whether the last
/// linearized op is optional), stored in one flat
/// arena and indexed by a Zobrist hash of the set mixed with the state. Full encodings are
/// compared on lookup, so hash collisions cannot make the search skip a configuration.
#[derive(Default)]
struct Memo {
    words: Vec<u64>,
    /// Start of each entry's encoding in `words` (it ends where the next one starts).
    starts: Vec<u64>,
    states: Vec<u32>,
    /// Next entry with the same hash (`u32::MAX` ends the chain).
    chain: Vec<u32>,
    heads: HashMap<u64, u32, BuildHasherDefault<PassThrough>>,
}

impl Memo {
    fn len(&self) -> usize {
        self.states.len()
    }

    /// Approximate heap use.
    fn bytes(&self) -> usize {
        self.words.capacity() * 8
            + self.starts.capacity() * 8
            + self.states.capacity() * 4
            + self.chain.capacity() * 4
            + self.heads.capacity() * 13
    }

    fn entry(&self, k: usize) -> &[u64] {
        let end = self.starts.get(k + 1).map_or(self.words.len(), |&e| e as usize);
        &self.words[self.starts[k] as usize..end]
    }

    fn contains(&self, hash: u64, set: &[u64], state: u32) -> bool {
        let mut i = match self.heads.get(&hash) {
            Some(&i) => i,
            None => return false,
        };
        while i != u32::MAX {
            let k = i as usize;
            if self.states[k] == state && self.entry(k) == set {
                return true;
            }
            i = self.chain[k];
        }
        false
    }

    fn insert(&mut self, hash: u64, set: &[u64], state: u32) {
        let id = self.states.len() as u32;
        let prev_head = self.heads.insert(hash, id).unwrap_or(u32::MAX);
        self.chain.push(prev_head);
        self.states.push(state);
        self.starts.push(self.words.len() as u64);
        self.words.extend_from_slice(set);
    }
}

/// The memo's keys are already well-mixed hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, Process};

    /// A tiny DSL: (process, type, f, value) in history order; invocations take the value
    /// argument, completions the returned value. Every event is on key "k".
    fn history(events: &[(u64, &str, &str, Value)]) -> History {
        let evs = events
            .iter()
            .enumerate()
            .map(|(i, (p, ty, f, v))| Event {
                index: i as u64,
                kind: serde_json::from_value(json!(ty)).unwrap(),
                f: F::from(*f),
                key: Some("k".into()),
                value: v.clone(),
                process: Process::Client(*p),
                time: i as u64 * 10,
                error: None,
            })
            .collect();
        History::from_events(evs).unwrap()
    }

    fn verdict(h: &History, budget: Budget) -> KeyVerdict {
        let ops: Vec<&Op> = h.ops.iter().collect();
        check_key(Some("k"), &ops, budget).verdict
    }

    fn is_valid(h: &History) -> bool {
        match verdict(h, Budget::UNLIMITED) {
            KeyVerdict::Valid => true,
            KeyVerdict::Invalid(_) => false,
            KeyVerdict::Unknown(r) => panic!("unknown: {r}"),
        }
    }

    #[test]
    fn sequential_register() {
        let h = history(&[
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (0, "invoke", "read", Value::Null),
            (0, "ok", "read", json!(1)),
            (0, "invoke", "cas", json!([1, 2])),
            (0, "ok", "cas", json!([1, 2])),
            (0, "invoke", "read", Value::Null),
            (0, "ok", "read", json!(2)),
        ]);
        assert!(is_valid(&h));
    }

    #[test]
    fn initial_read_must_be_absent() {
        let h = history(&[(0, "invoke", "read", Value::Null), (0, "ok", "read", Value::Null)]);
        assert!(is_valid(&h));
        let h = history(&[(0, "invoke", "read", Value::Null), (0, "ok", "read", json!(3))]);
        let KeyVerdict::Invalid(a) = verdict(&h, Budget::UNLIMITED) else {
            panic!()
        };
        assert!(a.message.contains("3 was never written"), "{}", a.message);
        assert_eq!(a.window, vec![0]);
    }

    #[test]
    fn failed_write_never_takes_effect() {
        let h = history(&[
            (0, "invoke", "write", json!(1)),
            (0, "fail", "write", json!(1)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(1)),
        ]);
        assert!(!is_valid(&h));
    }

    #[test]
    fn info_cas_may_apply_later() {
        let h = history(&[
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (1, "invoke", "cas", json!([1, 2])),
            (1, "info", "cas", json!([1, 2])),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(1)),
            (2, "invoke", "read", Value::Null),
            (2, "ok", "read", json!(2)),
        ]);
        assert!(is_valid(&h));
    }

    #[test]
    fn window_names_the_failing_read_and_the_write_it_missed() {
        let h = history(&[
            (0, "invoke", "write", json!(1)),
            (0, "ok", "write", json!(1)),
            (0, "invoke", "write", json!(2)),
            (0, "ok", "write", json!(2)),
            (1, "invoke", "read", Value::Null),
            (1, "ok", "read", json!(1)),
        ]);
        let KeyVerdict::Invalid(a) = verdict(&h, Budget::UNLIMITED) else {
            panic!()
        };
        assert_eq!(a.details["op"], json!(4));
        assert_eq!(a.details["state"], json!(2));
        assert!(a.window.contains(&4) && a.window.contains(&2), "{:?}", a.window);
    }

    #[test]
    fn budget_gives_unknown() {
        let h = history(&[
            (0, "invoke", "write", json!(1)),
            (1, "invoke", "write", json!(2)),
            (0, "ok", "write", json!(1)),
            (1, "ok", "write", json!(2)),
            (0, "invoke", "read", Value::Null),
            (0, "ok", "read", json!(1)),
        ]);
        let budget = Budget {
            max_states: Some(1),
            ..Budget::UNLIMITED
        };
        assert!(matches!(verdict(&h, budget), KeyVerdict::Unknown(_)));
        assert!(is_valid(&h));
    }

    /// Exhaustive reference: try every minimal op at every step, no memo, no pruning.
    fn brute_force(h: &History) -> bool {
        #[derive(Clone)]
        struct B {
            kind: Kind,
            required: bool,
            call: u64,
            ret: u64,
        }
        let mut values = Values::default();
        let mut ops = Vec::new();
        for op in &h.ops {
            let required = op.outcome == Outcome::Ok;
            if op.outcome == Outcome::Fail || (op.f == F::Read && !required) {
                continue;
            }
            let kind = match op.f {
                F::Read => Kind::Read(values.id(op.value())),
                F::Write => Kind::Write(values.id(op.value())),
                _ => {
                    let a = op.value().as_array().unwrap();
                    Kind::Cas(values.id(&a[0]), values.id(&a[1]))
                }
            };
            let ret = if required { op.complete_index.unwrap() } else { u64::MAX };
            ops.push(B {
                kind,
                required,
                call: op.invoke_index,
                ret,
            });
        }
        fn go(ops: &[B], done: &mut Vec<bool>, state: u32) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !done[i]).collect();
            if pending.iter().all(|&i| !ops[i].required) {
                return true;
            }
            let deadline = pending.iter().map(|&i| ops[i].ret).min().unwrap();
            for &i in &pending {
                if ops[i].call < deadline {
                    if let Some(ns) = ops[i].kind.step(state) {
                        done[i] = true;
                        let ok = go(ops, done, ns);
                        done[i] = false;
                        if ok {
                            return true;
                        }
                    }
                }
            }
            false
        }
        go(&ops, &mut vec![false; ops.len()], 0)
    }

    /// Small random histories with arbitrary (often wrong) values: the search must agree with
    /// the exhaustive reference on every one.
    #[test]
    fn agrees_with_brute_force_on_small_random_histories() {
        let mut seed = 0x1234_5678_u64;
        let mut rnd = |n: u64| {
            seed = splitmix64(seed);
            seed % n
        };
        let (mut valid, mut invalid) = (0, 0);
        for case in 0..3000 {
            let procs = 1 + rnd(3);
            let mut evs: Vec<(u64, &str, &str, Value)> = Vec::new();
            let mut open: Vec<Option<(&str, Value)>> = vec![None; procs as usize];
            let mut next_pid: Vec<u64> = (0..procs).collect();
            let mut fresh = procs;
            let n_events = 2 + rnd(12);
            for _ in 0..n_events {
                let slot = rnd(procs) as usize;
                let val = |r: u64| if r == 0 { Value::Null } else { json!(r) };
                match open[slot].take() {
                    None => {
                        let (f, v) = match rnd(3) {
                            0 => ("read", Value::Null),
                            1 => ("write", val(1 + rnd(3))),
                            _ => ("cas", json!([val(rnd(4)), val(1 + rnd(3))])),
                        };
                        evs.push((next_pid[slot], "invoke", f, v.clone()));
                        open[slot] = Some((f, v));
                    }
                    Some((f, v)) => {
                        let ty = ["ok", "ok", "ok", "fail", "info"][rnd(5) as usize];
                        let out = if f == "read" { val(rnd(4)) } else { v };
                        evs.push((next_pid[slot], ty, f, out));
                        if ty == "info" {
                            next_pid[slot] = fresh;
                            fresh += 1;
                        }
                    }
                }
            }
            let h = history(&evs);
            let expected = brute_force(&h);
            assert_eq!(is_valid(&h), expected, "case {case}: {evs:?}");
            if expected {
                valid += 1
            } else {
                invalid += 1
            }
        }
        assert!(valid > 300 && invalid > 300, "valid {valid}, invalid {invalid}");
    }
}
