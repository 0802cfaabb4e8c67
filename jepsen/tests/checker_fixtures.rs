//! The checkers against fabricated histories in `tests/fixtures/`: planted anomalies must be
//! found (with a small window naming the culprit) and tricky valid histories accepted.

use std::path::PathBuf;

use ringkv_jepsen::checker::{self, Budget, Workload};
use ringkv_jepsen::history::History;
use ringkv_jepsen::report::{Anomaly, CheckerReport, Validity};

fn load(name: &str) -> History {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.jsonl"));
    History::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn run_with(name: &str, workload: Workload, budget: Budget) -> CheckerReport {
    let results = checker::check(&load(name), &[workload], budget, None);
    results.checkers[workload.name()].clone()
}

fn run(name: &str, workload: Workload) -> CheckerReport {
    run_with(name, workload, Budget::default())
}

fn only_anomaly(r: &CheckerReport) -> &Anomaly {
    assert_eq!(r.anomalies.len(), 1, "{:#?}", r.anomalies);
    &r.anomalies[0]
}

#[test]
fn stale_read_is_invalid() {
    let r = run("register_stale_read", Workload::Register);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert_eq!(a.kind, "nonlinearizable");
    assert_eq!(a.key.as_deref(), Some("k1"));
    // the stale read (op 6) and the write it missed (op 2)
    assert_eq!(a.details["op"], 6);
    assert_eq!(a.details["state"], 2);
    assert!(a.window.contains(&6) && a.window.contains(&2), "{:?}", a.window);
    assert!(a.window.len() <= 5, "{:?}", a.window);
}

#[test]
fn lost_acknowledged_write_is_invalid() {
    let r = run("register_lost_write", Workload::Register);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert_eq!(a.key.as_deref(), Some("k1"));
    assert_eq!(a.details["op"], 8, "{a:#?}");
    assert!(
        a.window.contains(&6),
        "the acknowledged write 2 (op 6) is in {:?}",
        a.window
    );
    assert_eq!(r.stats["valid_keys"], 1, "k2 is fine");
}

#[test]
fn cas_applied_twice_is_invalid() {
    let r = run("register_cas_twice", Workload::Register);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert!(
        a.window.contains(&2) && a.window.contains(&3),
        "both CASes in {:?}",
        a.window
    );
}

#[test]
fn counter_above_attempted_is_invalid() {
    let r = run("counter_double_applied", Workload::Counter);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert_eq!(a.kind, "counter-too-high");
    assert_eq!(
        (a.details["read"].as_i64(), a.details["attempted"].as_i64()),
        (Some(5), Some(4))
    );
    assert_eq!(a.details["acknowledged"], 3);
}

#[test]
fn read_of_value_never_written_is_invalid() {
    let r = run("register_never_written", Workload::Register);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert!(a.message.contains("42 was never written"), "{}", a.message);
    assert_eq!(a.details["op"], 8);
}

#[test]
fn info_write_observed_much_later_is_valid() {
    let r = run("register_info_write_observed_late", Workload::Register);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert_eq!(
        r.stats["pruned_info_ops"], 0,
        "the observed info write must stay in the search"
    );
}

#[test]
fn info_write_never_observed_is_valid() {
    let r = run("register_info_write_never_observed", Workload::Register);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    // the info write, the info cas and the never-completed write are all irrelevant
    assert_eq!(r.stats["pruned_info_ops"], 3);
}

#[test]
fn concurrent_overlapping_operations_are_valid() {
    let r = run("register_concurrent", Workload::Register);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert_eq!(r.stats["keys"], 6);
}

#[test]
fn set_lost_add_is_invalid() {
    let r = run("set_lost", Workload::Set);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert_eq!(a.kind, "lost");
    assert_eq!(a.details["element"], 3);
    assert_eq!(a.window, vec![4, 8], "the add of 3 and the final read");
}

#[test]
fn set_unexpected_element_is_invalid() {
    let r = run("set_unexpected", Workload::Set);
    assert_eq!(r.valid, Validity::Invalid);
    let a = only_anomaly(&r);
    assert_eq!(a.kind, "unexpected");
    assert_eq!(a.details["element"], 99);
}

#[test]
fn set_info_adds_present_or_absent_are_valid() {
    let r = run("set_info", Workload::Set);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
    assert_eq!(
        (r.stats["info_present"].as_u64(), r.stats["info_absent"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(r.stats["concurrent_absent"], 1);
}

#[test]
fn counter_within_bounds_is_valid() {
    let r = run("counter_valid", Workload::Counter);
    assert_eq!(r.valid, Validity::Valid, "{r:#?}");
}

#[test]
fn budget_exhaustion_is_unknown() {
    let one_state = Budget {
        max_states: Some(1),
        ..Budget::UNLIMITED
    };
    let r = run_with("register_concurrent", Workload::Register, one_state);
    assert_eq!(r.valid, Validity::Unknown);
    assert!(r.anomalies.is_empty());
    assert!(r.stats["unknown"].as_u64().unwrap() > 0);
    // an invalid history whose search runs out of budget is unknown too, never a guess
    let r = run_with("register_stale_read", Workload::Register, one_state);
    assert_eq!(r.valid, Validity::Unknown);
}

#[test]
fn all_workloads_together() {
    let h = load("mixed_valid");
    let results = checker::check(&h, &Workload::ALL, Budget::default(), None);
    assert_eq!(results.valid, Validity::Valid, "{results:#?}");
    assert_eq!(results.history.nemesis_events, 3);
    for w in Workload::ALL {
        assert_eq!(results.checkers[w.name()].stats["keys"], 1, "{w}");
    }
}

#[test]
fn invalid_fixtures_are_invalid_for_all_checkers_together() {
    for name in [
        "register_stale_read",
        "register_lost_write",
        "register_cas_twice",
        "register_never_written",
        "set_lost",
    ] {
        let results = checker::check(&load(name), &Workload::ALL, Budget::default(), None);
        assert_eq!(results.valid, Validity::Invalid, "{name}");
    }
}
