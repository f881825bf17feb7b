//! Resuming after a restart: memberships and learned router ports a
//! previous snoop left in the pinned maps, and the querier's presence.
use std::{collections::BTreeMap, time::Duration};

use super::{
    filter_mode::Persisted, last_member::PendingQueries, Action, FilterMode, Group, Member, Snooper, SourceFilter,
};
use crate::proto::Family;

impl<A: Family> Snooper<A> {
    /// Memberships were resumed from a previous run: they are known, so a
    /// querier counts as present at once (and, with no querier of our own,
    /// for one other-querier-present interval unless another is heard).
    pub fn resume_querier_presence(&mut self, now: Duration) {
        self.querier.present_from = Some(now);
        self.querier.resumed_until = Some(now + self.timers.other_querier_present_interval);
    }

    /// Re-adopts a membership found in the pinned map after a restart, with
    /// the source filter the data path holds. It gets a full membership
    /// interval (hosts re-report to our startup queries well before), unless
    /// a leave was being confirmed: then only the last-member query time,
    /// with group-specific queries if we are the querier.
    pub fn restore_member(
        &mut self,
        group: Group<A>,
        port: u32,
        version: u8,
        leaving: bool,
        filter: SourceFilter<A>,
        now: Duration,
    ) {
        // Already known (a static group of the configuration): that wins.
        if self.groups.get(&group).is_some_and(|ports| ports.contains_key(&port)) {
            return;
        }
        let expires = if leaving {
            if self.querier.enabled {
                let count = self.timers.last_member_query_count;
                self.pending_queries.entry(group).or_insert(PendingQueries {
                    group: count,
                    sources: BTreeMap::new(),
                    next_at: now,
                });
            }
            now + self.timers.last_member_query_time()
        } else {
            now + self.timers.group_membership_interval
        };
        if let Some(state) = self.ports.get_mut(&port) {
            state.groups += 1;
        }
        let mut member = Member::new(version, A::UNSPECIFIED, now);
        match &filter {
            SourceFilter::Include(sources) => member.sources = sources.iter().map(|s| (*s, expires)).collect(),
            SourceFilter::Exclude(blocked) => {
                member.mode = FilterMode::Exclude;
                member.group_timer = expires;
                member.sources = blocked.iter().map(|s| (*s, Duration::ZERO)).collect();
            }
        }
        member.expires = expires;
        member.next_event = expires;
        member.leaving = leaving;
        member.filter = filter;
        member.persisted = Persisted { expires, version, leaving };
        // A host of a version without leaves or sources was there: it still is.
        member.no_leave_host_until = A::sends_no_leaves(version).then_some(expires);
        member.older_host_until = (version < A::RECORD_VERSION).then_some(expires);
        // Which hosts wanted it is not kept: until they have all reported
        // again, fast leave must not take one host's leave for the port's.
        member.untracked_hosts_until = now + self.timers.group_membership_interval;
        self.expiries.insert((expires, group, port));
        self.groups.entry(group).or_default().insert(port, member);
    }

    /// Re-adopts a router port a previous snoop had learned: it stays one for
    /// the other-querier-present interval unless its router speaks again.
    pub fn restore_router_port(&mut self, port: u32, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        self.learn_router_port(port, now + self.timers.other_querier_present_interval, now, &mut actions);
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::{super::testing::*, super::*};

    #[test]
    fn refresh_is_persisted_at_most_once_per_query_interval() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        assert!(s.handle(1, 0, &v2_report(G1), secs(60)).is_empty());
        assert_eq!(
            s.handle(1, 0, &v2_report(G1), secs(125)),
            [Action::RefreshMember { group: g(G1), port: 1, version: 2, expires: secs(385), leaving: false }]
        );
        // The refresh still moved the timer.
        assert!(s.poll(secs(384)).is_empty());
    }

    #[test]
    fn a_restored_member_that_was_leaving_gets_only_the_last_member_round() {
        let mut s = snooper(true);
        s.restore_member(g(G1), 1, 3, true, SourceFilter::any(), secs(100));
        s.restore_member(g(G2), 2, 3, false, SourceFilter::any(), secs(100));
        // Queried for at once, and gone after 2 x 1 s unless a host answers.
        let actions = s.poll(secs(100));
        assert!(
            actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![], suppress: false }),
            "{actions:?}"
        );
        assert!(s.groups()[&g(G1)][&1].leaving);
        let actions = s.poll(secs(102));
        assert!(actions.contains(&Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Left }));
        assert_eq!(members(&s, G2), [2], "the other keeps its full interval");
    }

    #[test]
    fn a_restart_keeps_learned_router_ports_and_v1_hosts() {
        let mut s = snooper(false);
        assert_eq!(s.restore_router_port(2, secs(100)), [Action::SetRouterPort { port: 2, is_router: true }]);
        assert!(s.ports()[&2].is_router(secs(354)));
        s.restore_member(g(G1), 1, 1, false, SourceFilter::any(), secs(100));
        assert!(s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(101)).is_empty(), "a v1 host is there");
        assert_eq!(members(&s, G1), [1]);
    }

    #[test]
    fn restored_members_get_a_full_interval() {
        let mut s = snooper(false);
        s.restore_member(g(G1), 2, 3, false, SourceFilter::any(), secs(100));
        assert_eq!(members(&s, G1), [2]);
        assert!(s.poll(secs(359)).is_empty());
        assert_eq!(s.poll(secs(360)).len(), 2);
    }

    both_families!(a_restored_membership_gets_a_full_interval_and_its_filter);

    fn a_restored_membership_gets_a_full_interval_and_its_filter<A: Sample>() {
        let mut s = machine::<A>(true);
        let group = Group::untagged(A::group(1));
        let filter = SourceFilter::Include([A::host(11)].into());
        s.restore_member(group, 1, A::RECORD_VERSION, false, filter.clone(), secs(0));
        assert_eq!(s.groups()[&group][&1].filter(secs(0)), filter);
        assert!(s.poll(secs(259)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        assert!(s.poll(secs(260)).contains(&Action::RemoveMember { group, port: 1, reason: RemoveReason::Expired }));
    }
}
