//! Last-member queries: after a leave (or a BLOCK, or a TO_IN) snoop as
//! querier asks about the group, or just the sources it heard dropped,
//! last-member-query-count times (RFC 3376 6.6.3, RFC 3810 7.6.3).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{Action, Group, Member, Snooper};
use crate::proto::Family;

/// Most last-member query rounds started per last-member interval, all
/// groups together: a host repeating leaves for hundreds of groups must not
/// make snoop flood queries. Leaves over it lower no timer (the memberships
/// age as usual: nothing is lost, a leave just takes longer).
pub const MAX_ROUNDS_PER_INTERVAL: u32 = 256;

/// Group-specific and group-and-source-specific queries still to send
/// (RFC 3376 6.6.3): how many more of each, and when the next may go. A
/// group's entry outlives its round by one last-member interval, so leaves
/// repeated meanwhile join it instead of each sending a query: at most one
/// query (one of each kind) per group per interval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingQueries<A> {
    pub(super) group: u32,
    pub(super) sources: BTreeMap<A, u32>,
    pub(super) next_at: Duration,
}

impl<A> PendingQueries<A> {
    fn is_done(&self) -> bool {
        self.group == 0 && self.sources.is_empty()
    }

    /// Ends the round (nobody is leaving any more); the entry stays until
    /// its next slot, so a new round waits for it.
    pub(super) fn stop(&mut self) {
        self.group = 0;
        self.sources.clear();
    }
}

/// Rounds started in the current last-member interval.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct RoundBudget {
    window_start: Duration,
    started: u32,
}

impl<A: Family> Snooper<A> {
    /// Whether a leave of `group` may have snoop ask about it now: a round
    /// for it runs already (the leave joins it), or the budget of rounds
    /// has room. Counts a refusal.
    pub(super) fn may_query(&mut self, group: Group<A>, now: Duration) -> bool {
        if self.pending_queries.contains_key(&group) {
            return true;
        }
        let interval = self.timers.last_member_query_interval;
        let budget = &mut self.round_budget;
        if now >= budget.window_start + interval {
            *budget = RoundBudget { window_start: now, started: 0 };
        }
        if budget.started < MAX_ROUNDS_PER_INTERVAL {
            return true;
        }
        self.ignored.query_rounds_over_budget += 1;
        false
    }

    /// Asks about `group` (and the sources in `sources`)
    /// last-member-query-count times: now, unless a query for it went out
    /// less than a last-member interval ago; the rest from [`Snooper::poll`].
    pub(super) fn query_now(
        &mut self,
        group: Group<A>,
        whole_group: bool,
        sources: BTreeSet<A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        let count = self.timers.last_member_query_count;
        let interval = self.timers.last_member_query_interval;
        if !self.pending_queries.contains_key(&group) {
            self.round_budget.started += 1;
        }
        let pending = self.pending_queries.entry(group).or_insert(PendingQueries {
            group: 0,
            sources: BTreeMap::new(),
            next_at: now,
        });
        if whole_group {
            pending.group = pending.group.max(count);
        }
        for source in sources {
            let left = pending.sources.entry(source).or_insert(0);
            *left = (*left).max(count);
        }
        if pending.next_at <= now {
            let lowered = Lowered { ports: self.groups.get(&group), until: now + self.timers.last_member_query_time() };
            send_due(group, pending, &lowered, now + interval, actions);
        }
    }

    /// The group(-and-source)-specific queries due; rounds over for an
    /// interval are forgotten.
    pub(super) fn poll_last_member(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        let interval = self.timers.last_member_query_interval;
        let until = now + self.timers.last_member_query_time();
        let groups = &self.groups;
        self.pending_queries.retain(|group, pending| {
            if pending.next_at > now {
                return true;
            }
            if pending.is_done() {
                return false;
            }
            send_due(*group, pending, &Lowered { ports: groups.get(group), until }, now + interval, actions);
            true
        });
    }
}

/// Which of a group's timers are (still) lowered to the last-member query
/// time, `until`, on the ports that are its members: those a query asks
/// about without the S flag.
struct Lowered<'a, A> {
    ports: Option<&'a BTreeMap<u32, Member<A>>>,
    until: Duration,
}

impl<A: Family> Lowered<'_, A> {
    /// A port is leaving the group: its group timer was lowered.
    fn group(&self) -> bool {
        self.ports.is_some_and(|ports| ports.values().any(|m| m.leaving))
    }

    /// A port's timer of `source` is at or below the last-member query time.
    fn source(&self, source: &A) -> bool {
        let lowered = |m: &Member<A>| m.sources.get(source).is_some_and(|timer| *timer <= self.until);
        self.ports.is_some_and(|ports| ports.values().any(lowered))
    }
}

/// Sends the next query of each kind `pending` still holds; the one after
/// goes at `next_at`. A query about timers no longer lowered (a report
/// raised them) carries the S flag, so routers keep theirs (RFC 3376
/// 6.6.3.1); sources split into a query with it and one without (6.6.3.2).
fn send_due<A: Family>(
    group: Group<A>,
    pending: &mut PendingQueries<A>,
    lowered: &Lowered<'_, A>,
    next_at: Duration,
    actions: &mut Vec<Action<A>>,
) {
    if pending.group > 0 {
        pending.group -= 1;
        actions.push(Action::SendQuery { group: Some(group.addr), sources: Vec::new(), suppress: !lowered.group() });
    }
    if !pending.sources.is_empty() {
        let (asked, raised): (Vec<A>, Vec<A>) = pending.sources.keys().partition(|s| lowered.source(s));
        for (sources, suppress) in [(asked, false), (raised, true)] {
            if !sources.is_empty() {
                actions.push(Action::SendQuery { group: Some(group.addr), sources, suppress });
            }
        }
        pending.sources.retain(|_, remaining| {
            *remaining -= 1;
            *remaining > 0
        });
    }
    pending.next_at = next_at;
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, super::*, MAX_ROUNDS_PER_INTERVAL};

    #[test]
    fn as_querier_a_block_sends_group_and_source_queries_and_a_to_in_both() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S1, S2]), secs(1));
        let actions = s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1, S3]), secs(2));
        let q_s1 = Action::SendQuery { group: Some(G1), sources: vec![S1], suppress: false };
        assert!(actions.contains(&q_s1), "{actions:?}");
        assert_eq!(but_presence(s.poll(secs(3))), [q_s1], "retransmitted once (robustness 2)");
        s.poll(secs(4));
        assert_eq!(filter_of(&s, G1, 1, secs(4)), include(&[S2]));
        // EXCLUDE {} then TO_IN {S2}: Q(G) and Q(G, X - {S2}).
        s.handle(2, 0, &records(RecordType::ModeIsExclude, G1, &[]), secs(5));
        s.handle(2, 0, &records(RecordType::AllowNewSources, G1, &[S1]), secs(5));
        let actions = s.handle(2, 0, &records(RecordType::ChangeToInclude, G1, &[S2]), secs(6));
        assert!(
            actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![], suppress: false }),
            "{actions:?}"
        );
        assert!(
            actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![S1], suppress: false }),
            "{actions:?}"
        );
        s.poll(secs(7));
        s.poll(secs(8));
        assert_eq!(filter_of(&s, G1, 2, secs(8)), include(&[S2]));
    }

    #[test]
    fn leave_as_querier_sends_last_member_queries_then_expires() {
        let mut s = snooper(true);
        s.poll(secs(0)); // startup query
        s.handle(1, 0, &v2_report(G1), secs(1));
        s.handle(2, 0, &v2_report(G1), secs(1));
        let actions = s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(10));
        // The shortened membership is recorded (a restart resumes from it).
        assert_eq!(
            actions,
            [
                Action::RefreshMember { group: g(G1), port: 1, version: 2, expires: secs(12), leaving: true },
                Action::SendQuery { group: Some(G1), sources: vec![], suppress: false }
            ]
        );
        assert_eq!(
            but_presence(s.poll(secs(11))),
            [Action::SendQuery { group: Some(G1), sources: vec![], suppress: false }]
        );
        // Last member query time = 2 x 1 s: port 1 is gone at 12 s, port 2 stays.
        assert_eq!(s.poll(secs(12)), [Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Left }]);
        assert_eq!(members(&s, G1), [2]);
    }

    #[test]
    fn report_during_last_member_round_keeps_member_and_suppresses_the_rest() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &v2_report(G1), secs(1));
        let actions = s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(10));
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![], suppress: false }));
        s.handle(1, 0, &v2_report(G1), secs(10));
        // The retransmission goes on (RFC 3376 6.6.3.1), saying the timer
        // was raised: routers keep theirs.
        let retransmitted = Action::SendQuery { group: Some(G1), sources: vec![], suppress: true };
        assert_eq!(but_presence(s.poll(secs(11))), [retransmitted]);
        assert!(s.poll(secs(12)).is_empty());
        assert_eq!(members(&s, G1), [1]);
    }

    #[test]
    fn source_retransmissions_split_by_whether_a_report_raised_the_timer() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S1, S2]), secs(1));
        let actions = s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1, S2]), secs(2));
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![S1, S2], suppress: false }));
        // A host still wants S2: its timer is raised again.
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S2]), secs(2));
        let retransmitted = but_presence(s.poll(secs(3)));
        assert_eq!(
            retransmitted,
            [
                Action::SendQuery { group: Some(G1), sources: vec![S1], suppress: false },
                Action::SendQuery { group: Some(G1), sources: vec![S2], suppress: true },
            ]
        );
    }

    both_families!(a_leave_as_querier_asks_and_ends_the_unanswered_membership);

    fn a_leave_as_querier_asks_and_ends_the_unanswered_membership<A: Sample>() {
        let mut s = machine::<A>(true);
        s.poll(secs(0));
        let group = A::group(1);
        let join = packet(A::host(1), Message::Report { version: A::OLDER, group });
        s.handle(1, 0, &join, secs(1));
        s.handle(2, 0, &join, secs(1));
        let actions = s.handle(1, 0, &packet(A::host(1), Message::Leave { group }), secs(10));
        assert!(
            actions.contains(&Action::SendQuery { group: Some(group), sources: vec![], suppress: false }),
            "{actions:?}"
        );
        // Port 2's host answers the second round; port 1's does not.
        assert_eq!(
            but_presence(s.poll(secs(11))),
            [Action::SendQuery { group: Some(group), sources: vec![], suppress: false }]
        );
        s.handle(2, 0, &join, secs(11));
        let removed = Action::RemoveMember { group: Group::untagged(group), port: 1, reason: RemoveReason::Left };
        assert_eq!(s.poll(secs(12)), [removed]);
        assert_eq!(s.groups()[&Group::untagged(group)].keys().copied().collect::<Vec<_>>(), [2]);
    }

    both_families!(repeated_leaves_ask_once_per_interval, leaves_over_the_round_budget_lower_nothing);

    fn repeated_leaves_ask_once_per_interval<A: Sample>() {
        let mut s = machine::<A>(true);
        s.poll(secs(0));
        let group = A::group(1);
        let join = packet(A::host(1), Message::Report { version: A::OLDER, group });
        let leave = packet(A::host(1), Message::Leave { group });
        s.handle(1, 0, &join, secs(1));
        let mut queries = 0;
        // A leave and a join every 100 ms for 3 s: 30 rounds asked for.
        for tenth in 0..30u64 {
            let now = secs(2) + Duration::from_millis(100 * tenth);
            queries += s.handle(1, 0, &leave, now).iter().filter(|a| matches!(a, Action::SendQuery { .. })).count();
            queries += s.poll(now).iter().filter(|a| matches!(a, Action::SendQuery { .. })).count();
            s.handle(1, 0, &join, now);
        }
        // One a last-member interval (1 s) at most.
        assert!(queries <= 3, "{queries} queries in 3 s");
    }

    fn leaves_over_the_round_budget_lower_nothing<A: Sample>() {
        let mut s = machine::<A>(true);
        s.add_port(1, PortOptions { max_groups: 0, ..TRUSTED });
        s.poll(secs(0));
        let groups: Vec<A> = (0..MAX_ROUNDS_PER_INTERVAL + 10).map(|i| A::nth_group(i)).collect();
        for group in &groups {
            s.handle(1, 0, &packet(A::host(1), Message::Report { version: A::OLDER, group: *group }), secs(1));
        }
        let mut queries = 0;
        for group in &groups {
            let actions = s.handle(1, 0, &packet(A::host(1), Message::Leave { group: *group }), secs(2));
            queries += actions.iter().filter(|a| matches!(a, Action::SendQuery { .. })).count();
        }
        assert_eq!(queries, MAX_ROUNDS_PER_INTERVAL as usize);
        assert_eq!(s.ignored().query_rounds_over_budget, 10);
        // Those lowered nothing: still members after the last-member time.
        let last = Group::untagged(*groups.last().expect("groups"));
        s.poll(secs(5));
        assert!(s.groups()[&last].contains_key(&1), "a leave over the budget removed a member");
    }
}
