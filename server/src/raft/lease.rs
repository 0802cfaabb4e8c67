//! Leader lease for linearizable reads: a leader that a quorum
//! acknowledged recently enough serves reads from its state machine without
//! a quorum round.
//!
//! Why it is safe. openraft's follower refuses every vote request until
//! `election_timeout_max` (its leader lease) has passed since it last
//! accepted an append from its leader (`Engine::handle_vote_req`). An
//! append that a follower accepted was received after the leader sent it,
//! so once a quorum accepted appends sent at or after `t`, no other leader
//! can be elected before `t + election_timeout_max`. A read that starts
//! before `t + read_lease` (`read_lease` shorter than
//! `election_timeout_max`; the difference covers clock-rate drift) sees
//! every write acknowledged before it started: those came from this leader,
//! which acknowledges a write only after applying it, or from earlier
//! leaders, whose entries are applied once this leader applied an entry of
//! its own term (checked by the caller).
//!
//! Three holes are closed around it:
//! - the leader itself granting its vote to a candidate: any vote request or
//!   append carrying a vote not lower than the lease's fences the lease, and
//!   acknowledgements of appends sent before the fence are ignored;
//! - a refused append (`HigherVote`) fences it too;
//! - a follower that restarts forgets when it last heard from the leader and
//!   would vote at once; a replica with Raft history therefore declines
//!   votes for `election_timeout_max` after it opened (checked by the
//!   transport, see [`LeaseConfig::votes_withheld_until`]).
//!
//! Owns only the bookkeeping of acknowledgements and the pure decision. It
//! does no I/O and does not read any data; the node decides what to do with
//! the answer.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use openraft::raft::AppendEntriesResponse;

use super::types::NodeId;
use super::types::Vote;

/// Most voters a lease tracks acknowledgements for; a shard has three,
/// five during a move. A membership with more voters than this cannot be
/// granted a lease (the read falls back to a quorum round).
pub const LEASE_VOTERS_MAX: usize = 16;

/// The durations a lease is computed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// How long after a quorum-acknowledged send a leader serves reads from
    /// its lease; zero turns lease reads off.
    pub read_lease: Duration,
    /// openraft's follower lease (`election_timeout_max`).
    pub follower_lease: Duration,
}

impl LeaseConfig {
    pub fn enabled(&self) -> bool {
        !self.read_lease.is_zero()
    }

    /// Until when a replica opened at `opened` declines vote requests: one
    /// with Raft history (`history`) may have acknowledged a leader just
    /// before this process started, and forgot when. `None`: it votes.
    pub fn votes_withheld_until(&self, history: bool, opened: Instant) -> Option<Instant> {
        (self.enabled() && history).then(|| opened + self.follower_lease)
    }
}

#[derive(Debug, Default)]
struct State {
    /// The leader vote the acknowledgements belong to.
    vote: Option<Vote>,
    /// Per voter, the latest send instant of an append it accepted.
    acked_sent_at: BTreeMap<NodeId, Instant>,
    /// Acknowledgements of appends sent before this instant are ignored.
    fenced_at: Option<Instant>,
}

/// Acknowledgement bookkeeping of one replica, fed by the Raft transport.
#[derive(Debug, Default)]
pub struct Lease {
    state: Mutex<State>,
}

/// Why a lease read was not possible; the read takes a quorum round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoLease {
    Disabled,
    /// No acknowledgement under this vote since the last fence.
    NotAcknowledged,
    /// The quorum-acknowledged send is older than the read lease.
    Expired,
    /// More voters than [`LEASE_VOTERS_MAX`].
    TooManyVoters,
}

impl Lease {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the reply of `target` to an append sent at `sent` under
    /// `vote`.
    pub fn append_replied(&self, target: NodeId, vote: &Vote, sent: Instant, resp: &AppendEntriesResponse<NodeId>) {
        let mut s = self.lock();
        if let AppendEntriesResponse::HigherVote(_) = resp {
            s.fence(Instant::now());
            return;
        }
        if s.fenced_at.is_some_and(|f| sent < f) {
            return;
        }
        match s.vote {
            Some(v) if v == *vote => {}
            // An older leadership of this node: nothing to learn.
            Some(v) if *vote < v => return,
            _ => {
                s.vote = Some(*vote);
                s.acked_sent_at.clear();
            }
        }
        if s.acked_sent_at.len() >= LEASE_VOTERS_MAX && !s.acked_sent_at.contains_key(&target) {
            return;
        }
        let at = s.acked_sent_at.entry(target).or_insert(sent);
        *at = (*at).max(sent);
    }

    /// An incoming vote request or append carrying `vote`: unless it is
    /// lower than the lease's vote, this replica may grant it or follow it,
    /// so the lease ends here.
    pub fn saw_vote(&self, vote: &Vote) {
        let mut s = self.lock();
        let lower = s.vote.is_some_and(|v| *vote < v);
        if !lower {
            s.fence(Instant::now());
        }
    }

    /// Until when `me`, leading under `vote` with the voter sets `joint`
    /// (one set, or two during a joint membership change), may serve reads
    /// from its lease; `Err` if it may not at all.
    pub fn valid_until(
        &self,
        me: NodeId,
        vote: &Vote,
        joint: &[BTreeSet<NodeId>],
        cfg: &LeaseConfig,
        now: Instant,
    ) -> Result<Instant, NoLease> {
        if !cfg.enabled() {
            return Err(NoLease::Disabled);
        }
        let s = self.lock();
        if s.vote != Some(*vote) {
            return Err(NoLease::NotAcknowledged);
        }
        let mut acked: Option<Instant> = None;
        for voters in joint {
            let t = quorum_acked(me, voters, &s.acked_sent_at, now)?;
            acked = Some(acked.map_or(t, |a| a.min(t)));
        }
        let acked = acked.ok_or(NoLease::NotAcknowledged)?;
        let until = acked + cfg.read_lease;
        if now < until {
            Ok(until)
        } else {
            Err(NoLease::Expired)
        }
    }
}

impl State {
    fn fence(&mut self, now: Instant) {
        self.vote = None;
        self.acked_sent_at.clear();
        self.fenced_at = Some(self.fenced_at.map_or(now, |f| f.max(now)));
    }
}

/// The latest instant a majority of `voters` acknowledged: the leader
/// itself counts as acknowledging `now`.
fn quorum_acked(
    me: NodeId,
    voters: &BTreeSet<NodeId>,
    acked: &BTreeMap<NodeId, Instant>,
    now: Instant,
) -> Result<Instant, NoLease> {
    if voters.len() > LEASE_VOTERS_MAX {
        return Err(NoLease::TooManyVoters);
    }
    if voters.is_empty() {
        return Err(NoLease::NotAcknowledged);
    }
    let mut times: Vec<Instant> = voters
        .iter()
        .filter_map(|v| if *v == me { Some(now) } else { acked.get(v).copied() })
        .collect();
    let majority = voters.len() / 2 + 1;
    if times.len() < majority {
        return Err(NoLease::NotAcknowledged);
    }
    // Newest first: the majority-th newest is acknowledged by a majority.
    times.sort_unstable_by(|a, b| b.cmp(a));
    let t = times[majority - 1];
    debug_assert!(t <= now);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    const READ: Duration = Duration::from_millis(300);

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            read_lease: READ,
            follower_lease: Duration::from_millis(400),
        }
    }

    fn voters(ids: &[NodeId]) -> Vec<BTreeSet<NodeId>> {
        vec![ids.iter().copied().collect()]
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn one_follower_of_two_makes_a_quorum_with_the_leader() {
        let l = Lease::default();
        let v = Vote::new_committed(3, 1);
        let t0 = Instant::now();
        let now = t0 + ms(100);
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now),
            Err(NoLease::NotAcknowledged)
        );
        l.append_replied(2, &v, t0, &AppendEntriesResponse::Success);
        assert_eq!(l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now), Ok(t0 + READ));
        // The newer of the two followers counts.
        l.append_replied(3, &v, t0 + ms(50), &AppendEntriesResponse::Conflict);
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now),
            Ok(t0 + ms(50) + READ)
        );
        // Expires.
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), t0 + ms(50) + READ),
            Err(NoLease::Expired)
        );
        // An older send never moves a voter back.
        l.append_replied(3, &v, t0, &AppendEntriesResponse::Success);
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now),
            Ok(t0 + ms(50) + READ)
        );
    }

    #[test]
    fn five_voters_need_two_followers_and_joint_configs_need_both() {
        let l = Lease::default();
        let v = Vote::new_committed(2, 1);
        let t0 = Instant::now();
        let now = t0 + ms(10);
        l.append_replied(2, &v, t0, &AppendEntriesResponse::Success);
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3, 4, 5]), &cfg(), now),
            Err(NoLease::NotAcknowledged)
        );
        l.append_replied(5, &v, t0 + ms(5), &AppendEntriesResponse::Success);
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3, 4, 5]), &cfg(), now),
            Ok(t0 + READ)
        );
        // Joint {1,2,3} and {2,4,5}: the second needs two of 2, 4, 5.
        let joint = vec![[1, 2, 3].into_iter().collect(), [2, 4, 5].into_iter().collect()];
        assert_eq!(l.valid_until(1, &v, &joint, &cfg(), now), Ok(t0 + READ));
        let joint = vec![[1, 2, 3].into_iter().collect(), [3, 4, 6].into_iter().collect()];
        assert_eq!(l.valid_until(1, &v, &joint, &cfg(), now), Err(NoLease::NotAcknowledged));
        // A leader outside the voters counts for nothing.
        assert_eq!(
            l.valid_until(9, &v, &voters(&[2, 3, 4]), &cfg(), now),
            Err(NoLease::NotAcknowledged)
        );
    }

    #[test]
    fn a_vote_request_or_a_refusal_fences_and_earlier_sends_do_not_renew() {
        let l = Lease::default();
        let v = Vote::new_committed(3, 1);
        let t0 = Instant::now();
        l.append_replied(2, &v, t0, &AppendEntriesResponse::Success);
        // A candidate of a later term asks this leader for its vote.
        l.saw_vote(&Vote::new(4, 3));
        let now = Instant::now();
        assert_eq!(
            l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now),
            Err(NoLease::NotAcknowledged)
        );
        // A reply to an append sent before the fence does not count.
        l.append_replied(2, &v, t0, &AppendEntriesResponse::Success);
        assert!(l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), now).is_err());
        // One sent after it does.
        let t1 = Instant::now();
        l.append_replied(2, &v, t1, &AppendEntriesResponse::Success);
        assert_eq!(l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), t1), Ok(t1 + READ));
        // A lower vote (a stale candidate) does not fence.
        l.saw_vote(&Vote::new(2, 3));
        assert!(l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), t1).is_ok());
        // A follower that moved on to a higher vote fences.
        l.append_replied(3, &v, t1, &AppendEntriesResponse::HigherVote(Vote::new(5, 3)));
        assert!(l.valid_until(1, &v, &voters(&[1, 2, 3]), &cfg(), t1).is_err());
    }

    #[test]
    fn another_vote_or_a_disabled_lease_grants_nothing() {
        let l = Lease::default();
        let v = Vote::new_committed(3, 1);
        let t0 = Instant::now();
        l.append_replied(2, &v, t0, &AppendEntriesResponse::Success);
        let later = Vote::new_committed(5, 1);
        assert_eq!(
            l.valid_until(1, &later, &voters(&[1, 2, 3]), &cfg(), t0),
            Err(NoLease::NotAcknowledged)
        );
        // A newer leadership of this node starts over; the older one's
        // replies are then ignored.
        l.append_replied(3, &later, t0 + ms(1), &AppendEntriesResponse::Success);
        l.append_replied(2, &v, t0 + ms(2), &AppendEntriesResponse::Success);
        assert_eq!(
            l.valid_until(1, &later, &voters(&[1, 2, 3]), &cfg(), t0 + ms(2)),
            Ok(t0 + ms(1) + READ)
        );
        let off = LeaseConfig {
            read_lease: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(
            l.valid_until(1, &later, &voters(&[1, 2, 3]), &off, t0),
            Err(NoLease::Disabled)
        );
    }

    #[test]
    fn a_replica_with_history_declines_votes_for_the_follower_lease_after_it_opened() {
        let opened = Instant::now();
        let until = cfg().votes_withheld_until(true, opened).expect("withheld");
        assert!(opened + ms(399) < until);
        assert!(opened + ms(400) >= until);
        assert_eq!(cfg().votes_withheld_until(false, opened), None);
        let off = LeaseConfig {
            read_lease: Duration::ZERO,
            ..cfg()
        };
        assert_eq!(off.votes_withheld_until(true, opened), None);
    }
}
