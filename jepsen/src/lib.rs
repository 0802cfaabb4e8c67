//! ringkv-jepsen: Jepsen-style fault testing for ringkv.
//!
//! The crate is organised so that every stage of a test run has one home:
//!
//! - [`history`]: the JSON-lines operation history (format, validation, pairing of invocations
//!   with completions).
//! - [`checker`]: consistency checkers over a history: [`checker::linear`] (per-key
//!   linearizable registers), [`checker::set`] and [`checker::counter`].
//! - [`report`]: verdicts, anomalies and the `results.json` written next to a history.
//!
//! The cluster runner, the nemeses and the workload generators (modules `runner`, `nemesis`,
//! `workload`) produce histories in the format of [`history`] and feed them to [`checker::check`].

pub mod checker;
pub mod cluster;
pub mod history;
pub mod report;
pub mod runner;
