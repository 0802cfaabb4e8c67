//! Property-style test: histories recorded from a simulated linearizable register, with random
//! concurrency and `info` outcomes, are always valid; changing one read to a value never written
//! makes them invalid. Seeds are printed on failure (`RINGKV_JEPSEN_SEED=<n>` replays one).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use ringkv_jepsen::checker::{linear, Budget};
use ringkv_jepsen::history::{Event, EventType, History, Process, F};
use ringkv_jepsen::report::Validity;

const KEYS: [&str; 3] = ["a", "b", "c"];

enum Phase {
    Idle,
    /// Invoked, not yet applied to the register.
    Invoked {
        key: usize,
        f: F,
        arg: Value,
    },
    /// Applied (or deliberately not applied) and waiting to report.
    Applied {
        key: usize,
        f: F,
        arg: Value,
        result: Result<Value, ()>,
    },
}

/// Simulates `clients` concurrent clients against a linearizable register per key: every
/// operation takes effect at one instant between its invocation and completion.
fn simulate(seed: u64, clients: usize, steps: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut regs: Vec<Value> = vec![Value::Null; KEYS.len()];
    let mut written: Vec<Vec<Value>> = vec![vec![Value::Null]; KEYS.len()];
    let mut pids: Vec<u64> = (0..clients as u64).collect();
    let mut next_pid = clients as u64;
    let mut phases: Vec<Phase> = (0..clients).map(|_| Phase::Idle).collect();
    let mut next_value = 0u64;
    let mut events = Vec::new();
    let mut time = 0u64;
    let mut push = |events: &mut Vec<Event>, kind, f: &F, key: usize, value: Value, pid: u64| {
        time += rng_step(seed, events.len());
        events.push(Event {
            index: events.len() as u64,
            kind,
            f: f.clone(),
            key: Some(KEYS[key].to_string()),
            value,
            process: Process::Client(pid),
            time,
            error: None,
        });
    };
    for _ in 0..steps {
        let c = rng.gen_range(0..clients);
        let pid = pids[c];
        match std::mem::replace(&mut phases[c], Phase::Idle) {
            Phase::Idle => {
                let key = rng.gen_range(0..KEYS.len());
                let (f, arg) = match rng.gen_range(0..10) {
                    0..=3 => (F::Read, Value::Null),
                    4..=6 => {
                        next_value += 1;
                        (F::Write, json!(next_value))
                    }
                    _ => {
                        next_value += 1;
                        let expected = if rng.gen_bool(0.6) {
                            regs[key].clone()
                        } else {
                            written[key][rng.gen_range(0..written[key].len())].clone()
                        };
                        (F::Cas, json!([expected, next_value]))
                    }
                };
                push(&mut events, EventType::Invoke, &f, key, arg.clone(), pid);
                phases[c] = Phase::Invoked { key, f, arg };
            }
            Phase::Invoked { key, f, arg } => {
                // Sometimes the operation is lost before it takes effect.
                let result = if rng.gen_bool(0.08) {
                    Err(())
                } else {
                    match f {
                        F::Read => Ok(regs[key].clone()),
                        F::Write => {
                            regs[key] = arg.clone();
                            written[key].push(arg.clone());
                            Ok(arg.clone())
                        }
                        _ => {
                            if regs[key] == arg[0] {
                                regs[key] = arg[1].clone();
                                written[key].push(arg[1].clone());
                                Ok(arg.clone())
                            } else {
                                Err(())
                            }
                        }
                    }
                };
                phases[c] = Phase::Applied { key, f, arg, result };
            }
            Phase::Applied { key, f, arg, result } => {
                let (kind, value) = if rng.gen_bool(0.1) {
                    // The client cannot tell: indeterminate, and it continues as a new process.
                    (EventType::Info, if f == F::Read { Value::Null } else { arg })
                } else {
                    match result {
                        Ok(v) => (EventType::Ok, v),
                        Err(()) if f == F::Read => (EventType::Fail, Value::Null),
                        Err(()) => (EventType::Fail, arg),
                    }
                };
                push(&mut events, kind, &f, key, value, pid);
                if kind == EventType::Info {
                    pids[c] = next_pid;
                    next_pid += 1;
                }
            }
        }
    }
    events
}

fn rng_step(seed: u64, i: usize) -> u64 {
    1 + (seed.wrapping_mul(31).wrapping_add(i as u64 * 7919)) % 1000
}

fn verdict(events: Vec<Event>) -> Validity {
    let h = History::from_events(events).expect("simulated history is well formed");
    linear::check(&h, Budget::default()).valid
}

fn seeds() -> Vec<u64> {
    match std::env::var("RINGKV_JEPSEN_SEED") {
        Ok(s) => vec![s.parse().expect("RINGKV_JEPSEN_SEED must be an integer")],
        Err(_) => (0..300).collect(),
    }
}

#[test]
fn simulated_linearizable_histories_are_valid_and_planted_reads_are_caught() {
    let mut checked_mutations = 0;
    for seed in seeds() {
        let clients = 2 + (seed % 5) as usize;
        let events = simulate(seed, clients, 150 + (seed % 7) as usize * 30);
        assert_eq!(
            verdict(events.clone()),
            Validity::Valid,
            "seed {seed}: simulated history judged not valid"
        );

        let mut rng = StdRng::seed_from_u64(seed ^ 0xdead_beef);
        let reads: Vec<usize> = (0..events.len())
            .filter(|&i| events[i].kind == EventType::Ok && events[i].f == F::Read)
            .collect();
        if reads.is_empty() {
            continue;
        }
        let mut mutated = events;
        let i = reads[rng.gen_range(0..reads.len())];
        mutated[i].value = json!(1_000_000_000u64 + seed);
        assert_eq!(
            verdict(mutated),
            Validity::Invalid,
            "seed {seed}: read at index {i} of a never-written value missed"
        );
        checked_mutations += 1;
    }
    assert!(checked_mutations > 0);
}

/// The same simulation with the search's budget set to one state per key: the checker must say
/// `unknown` (or `valid` for keys too small to need a second state), never `invalid`.
#[test]
fn tiny_budget_never_guesses_invalid() {
    for seed in seeds().into_iter().take(50) {
        let h = History::from_events(simulate(seed, 3, 100)).unwrap();
        let v = linear::check(
            &h,
            Budget {
                max_states: Some(1),
                ..Budget::UNLIMITED
            },
        )
        .valid;
        assert_ne!(v, Validity::Invalid, "seed {seed}");
    }
}
