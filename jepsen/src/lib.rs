//! ringkv-jepsen: Jepsen-style fault testing for ringkv.
//!
//! The crate is organised so that every stage of a test run has one home:
//!
//! - [`history`]: the JSON-lines operation history (format, validation, pairing of invocations
//!   with completions).
//! - [`checker`]: consistency checkers over a history: [`checker::linear`] (per-key
//!   linearizable registers), [`checker::set`] and [`checker::counter`].
//! - [`report`]: verdicts, anomalies and the `results.json` written next to a history.
//! - [`plot`]: latency and throughput over time as SVG, nemesis intervals shaded.
//! - [`cluster`]: the `ringkv-server` processes of a run (kill, restart, pause, clock files).
//! - [`nemesis`]: fault kinds, the seeded fault schedule and its execution.
//! - [`topology`]: the topology faults (moves, splits, leader transfers, joins, decommissions)
//!   through the Admin API, and the heal phase's wait for the layout to settle.
//! - [`runner`]: `ringkv-jepsen run`: workloads, nemesis, final reads, checking, summary.
//! - [`evidence`]: what a run that is not valid prints for later diagnosis: the nemesis timeline
//!   and excerpts of the node logs on the history's clock.

pub mod checker;
pub mod cluster;
pub mod evidence;
pub mod history;
pub mod nemesis;
pub mod plot;
pub mod report;
pub mod runner;
pub mod topology;
