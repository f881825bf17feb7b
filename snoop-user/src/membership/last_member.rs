//! Last-member queries: after a leave (or a BLOCK, or a TO_IN) snoop as
//! querier asks about the group, or just the sources it heard dropped,
//! last-member-query-count times (RFC 3376 6.6.3, RFC 3810 7.6.3).
use std::{
    collections::{BTreeMap, BTreeSet},
    time::Duration,
};

use super::{Action, Group, Snooper};
use crate::proto::Family;

/// Group-specific and group-and-source-specific queries still to send
/// (RFC 3376 6.6.3): how many more of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct PendingQueries<A> {
    pub(super) group: u32,
    pub(super) sources: BTreeMap<A, u32>,
    pub(super) next_at: Duration,
}

impl<A: Family> Snooper<A> {
    /// Sends the first of the last-member queries for `group` (and the
    /// sources in `sources`) now; the rest follow from [`Snooper::poll`].
    pub(super) fn query_now(
        &mut self,
        group: Group<A>,
        whole_group: bool,
        sources: BTreeSet<A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        if whole_group {
            actions.push(Action::SendQuery { group: Some(group.addr), sources: Vec::new() });
        }
        if !sources.is_empty() {
            let listed = sources.iter().copied().collect();
            actions.push(Action::SendQuery { group: Some(group.addr), sources: listed });
        }
        let remaining = self.timers.last_member_query_count.saturating_sub(1);
        if remaining == 0 {
            return;
        }
        let next_at = now + self.timers.last_member_query_interval;
        let pending =
            self.pending_queries.entry(group).or_insert(PendingQueries { group: 0, sources: BTreeMap::new(), next_at });
        if whole_group {
            pending.group = remaining;
        }
        pending.sources.extend(sources.into_iter().map(|source| (source, remaining)));
    }

    /// The group(-and-source)-specific queries due.
    pub(super) fn poll_last_member(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        let interval = self.timers.last_member_query_interval;
        self.pending_queries.retain(|group, pending| {
            if pending.next_at > now {
                return true;
            }
            if pending.group > 0 {
                pending.group -= 1;
                actions.push(Action::SendQuery { group: Some(group.addr), sources: Vec::new() });
            }
            if !pending.sources.is_empty() {
                let sources = pending.sources.keys().copied().collect();
                actions.push(Action::SendQuery { group: Some(group.addr), sources });
                pending.sources.retain(|_, remaining| {
                    *remaining -= 1;
                    *remaining > 0
                });
            }
            pending.next_at = now + interval;
            pending.group > 0 || !pending.sources.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, super::*};

    #[test]
    fn as_querier_a_block_sends_group_and_source_queries_and_a_to_in_both() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S1, S2]), secs(1));
        let actions = s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1, S3]), secs(2));
        let q_s1 = Action::SendQuery { group: Some(G1), sources: vec![S1] };
        assert!(actions.contains(&q_s1), "{actions:?}");
        assert_eq!(but_presence(s.poll(secs(3))), [q_s1], "retransmitted once (robustness 2)");
        s.poll(secs(4));
        assert_eq!(filter_of(&s, G1, 1, secs(4)), include(&[S2]));
        // EXCLUDE {} then TO_IN {S2}: Q(G) and Q(G, X - {S2}).
        s.handle(2, 0, &records(RecordType::ModeIsExclude, G1, &[]), secs(5));
        s.handle(2, 0, &records(RecordType::AllowNewSources, G1, &[S1]), secs(5));
        let actions = s.handle(2, 0, &records(RecordType::ChangeToInclude, G1, &[S2]), secs(6));
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![] }), "{actions:?}");
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![S1] }), "{actions:?}");
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
                Action::SendQuery { group: Some(G1), sources: vec![] }
            ]
        );
        assert_eq!(but_presence(s.poll(secs(11))), [Action::SendQuery { group: Some(G1), sources: vec![] }]);
        // Last member query time = 2 x 1 s: port 1 is gone at 12 s, port 2 stays.
        assert_eq!(s.poll(secs(12)), [Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Left }]);
        assert_eq!(members(&s, G1), [2]);
    }

    #[test]
    fn report_during_last_member_round_keeps_member_and_stops_queries() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &v2_report(G1), secs(1));
        s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(10));
        s.handle(1, 0, &v2_report(G1), secs(10));
        assert!(s.poll(secs(11)).iter().all(|a| !matches!(a, Action::SendQuery { group: Some(_), .. })));
        assert!(s.poll(secs(12)).is_empty());
        assert_eq!(members(&s, G1), [1]);
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
        assert!(actions.contains(&Action::SendQuery { group: Some(group), sources: vec![] }), "{actions:?}");
        // Port 2's host answers the second round; port 1's does not.
        assert_eq!(but_presence(s.poll(secs(11))), [Action::SendQuery { group: Some(group), sources: vec![] }]);
        s.handle(2, 0, &join, secs(11));
        let removed = Action::RemoveMember { group: Group::untagged(group), port: 1, reason: RemoveReason::Left };
        assert_eq!(s.poll(secs(12)), [removed]);
        assert_eq!(s.groups()[&Group::untagged(group)].keys().copied().collect::<Vec<_>>(), [2]);
    }
}
