//! Static memberships: the administrator's, never aged, unmoved by hosts.
use std::{collections::BTreeSet, time::Duration};

use super::{Action, FilterMode, Group, Member, RemoveReason, Snooper, NEVER};
use crate::proto::Family;

/// Why a static membership cannot be added or deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StaticError {
    #[error("the group is not snooped (not multicast, or link-local: always flooded)")]
    NotSnoopable,
    #[error("a source-specific multicast group takes sources (RFC 4604): give --source")]
    SsmWithoutSources,
    #[error("no such port on the bridge")]
    UnknownPort,
    #[error("the port is no static member of the group")]
    NotStatic,
}

impl<A: Family> Snooper<A> {
    /// Makes `port` a static member of `group`: of `sources` only, or of any
    /// source when there are none. It is never aged, and hosts' reports and
    /// leaves on the port leave it as it is (as the Linux bridge's permanent
    /// entries); a learned membership there becomes this one.
    pub fn add_static(
        &mut self,
        group: Group<A>,
        port: u32,
        sources: &BTreeSet<A>,
        now: Duration,
    ) -> Result<Vec<Action<A>>, StaticError> {
        if !group.addr.is_snoopable(self.link_scope) {
            return Err(StaticError::NotSnoopable);
        }
        if self.is_ssm(group) && sources.is_empty() {
            return Err(StaticError::SsmWithoutSources);
        }
        let state = self.ports.get_mut(&port).ok_or(StaticError::UnknownPort)?;
        let new = !self.groups.get(&group).is_some_and(|ports| ports.contains_key(&port));
        if new {
            state.groups += 1;
            let member = Member::new(A::RECORD_VERSION, A::UNSPECIFIED, now);
            self.groups.entry(group).or_default().insert(port, member);
        }
        let member = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)).expect("inserted above");
        member.permanent = true;
        member.leaving = false;
        member.older_host_until = None;
        member.no_leave_host_until = None;
        if sources.is_empty() {
            member.mode = FilterMode::Exclude;
            member.group_timer = NEVER;
            member.sources.clear();
        } else {
            member.mode = FilterMode::Include;
            member.sources = sources.iter().map(|source| (*source, NEVER)).collect();
        }
        let mut actions = Vec::new();
        self.settle(group, port, new, now, &mut actions);
        Ok(actions)
    }

    /// Ends a static membership. While snoop is the querier it is asked
    /// about as after a leave, so hosts that want the group keep it by
    /// answering; otherwise it goes at once, as `bridge mdb del` does, and
    /// the querier's next general query finds any host that wants it.
    pub fn remove_static(&mut self, group: Group<A>, port: u32, now: Duration) -> Result<Vec<Action<A>>, StaticError> {
        let member = self
            .groups
            .get_mut(&group)
            .and_then(|ports| ports.get_mut(&port))
            .filter(|member| member.permanent)
            .ok_or(StaticError::NotStatic)?;
        member.permanent = false;
        let mut actions = Vec::new();
        if !self.querier.is_querier() {
            self.remove_member(group, port, RemoveReason::StaticDeleted, &mut actions);
            return Ok(actions);
        }
        let lmqt = now + self.timers.last_member_query_time();
        member.leaving = true;
        let whole_group = member.mode == FilterMode::Exclude;
        member.group_timer = member.group_timer.min(lmqt);
        member.sources.values_mut().for_each(|timer| *timer = (*timer).min(lmqt));
        let sources = if whole_group { BTreeSet::new() } else { member.sources.keys().copied().collect() };
        self.settle(group, port, false, now, &mut actions);
        self.query_now(group, whole_group, sources, now, &mut actions);
        Ok(actions)
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{super::testing::*, super::*, *};

    #[test]
    fn a_static_member_is_never_aged_and_hosts_change_nothing() {
        let mut s = snooper(true);
        let added = s.add_static(g(G1), 1, &BTreeSet::new(), secs(0)).unwrap();
        assert_eq!(
            added,
            vec![
                Action::AddMember { group: g(G1), port: 1, version: 3, expires: NEVER },
                Action::RegisterGroup { group: g(G1) },
            ]
        );
        assert_eq!(s.port_group_count(1), 1);
        // A leave from a host behind the port, and a day of timers: it stays.
        assert!(s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(10)).is_empty());
        assert!(s.poll(secs(86_400)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        assert!(s.groups()[&g(G1)][&1].permanent);
        assert!(s.next_deadline().is_some_and(|at| at < secs(86_400 + 200)), "no deadline at the end of time");
        // Another querier's group-specific query lowers nothing either.
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 0), G1), secs(86_401));
        assert!(s.poll(secs(86_500)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        assert_eq!(
            s.add_static(g(Ipv4Addr::new(224, 0, 0, 1)), 1, &BTreeSet::new(), secs(0)),
            Err(StaticError::NotSnoopable)
        );
        let ssm = g(Ipv4Addr::new(232, 1, 1, 1));
        assert_eq!(s.add_static(ssm, 1, &BTreeSet::new(), secs(0)), Err(StaticError::SsmWithoutSources));
        assert_eq!(s.add_static(g(G2), 9, &BTreeSet::new(), secs(0)), Err(StaticError::UnknownPort));
    }

    #[test]
    fn a_deleted_static_member_is_asked_about_like_a_leave() {
        let mut s = snooper(true);
        s.poll(secs(0));
        // A learned member becomes static, with a source list.
        s.handle(1, 0, &v2_report(G1), secs(1));
        let source = Ipv4Addr::new(10, 1, 0, 7);
        let actions = s.add_static(g(G1), 1, &BTreeSet::from([source]), secs(2)).unwrap();
        assert!(actions.contains(&Action::SetSources {
            group: g(G1),
            port: 1,
            filter: SourceFilter::Include(BTreeSet::from([source]))
        }));
        assert_eq!(s.port_group_count(1), 1, "one membership, not two");
        assert_eq!(s.remove_static(g(G2), 1, secs(3)), Err(StaticError::NotStatic));
        let actions = s.remove_static(g(G1), 1, secs(3)).unwrap();
        assert!(
            actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![source], suppress: false }),
            "{actions:?}"
        );
        // A host answering keeps it.
        s.handle(1, 0, &record(RecordType::ModeIsInclude, G1, 8), secs(3));
        assert!(s.poll(secs(10)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        // Deleted again with nobody answering, it goes after the last-member time.
        s.add_static(g(G1), 1, &BTreeSet::new(), secs(11)).unwrap();
        s.remove_static(g(G1), 1, secs(12)).unwrap();
        let gone = s.poll(secs(15));
        assert!(gone.contains(&Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Left }), "{gone:?}");
        // Without the querier's role it goes at once.
        let mut s = snooper(false);
        s.add_static(g(G1), 1, &BTreeSet::new(), secs(0)).unwrap();
        let gone = s.remove_static(g(G1), 1, secs(1)).unwrap();
        assert!(gone.contains(&Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::StaticDeleted }));
    }
}
