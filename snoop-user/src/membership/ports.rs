//! Ports and admission: each port's options, whether it may join one more
//! group (its filter, its limit), and what leaving the bridge ends.
use std::time::Duration;

use super::{Action, Group, RemoveReason, Snooper};
use crate::{port_groups::GroupFilter, proto::Family};

/// Per-port configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortOptions {
    /// Remove the port's membership on a leave, without a last-member query.
    pub fast_leave: bool,
    /// Always a router port.
    pub static_router: bool,
    /// Queries and PIM hellos from this port count: it can become a router
    /// port and win the querier election. Off, a host cannot pose as a router.
    pub trusted: bool,
    /// Never a router port, whatever is heard on it (the bridge's
    /// `mcast_router 0`, `router = never`); its queries still count in the
    /// election if it is trusted.
    pub never_router: bool,
    /// Named as a port routers are behind (`--trusted-port`): it gets the
    /// reports while no router port is known, so an upstream router or proxy
    /// hears joins at once instead of at its next query.
    pub upstream: bool,
    /// Most groups the port may join; reports for more are refused. 0: no limit.
    pub max_groups: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    pub options: PortOptions,
    /// Learned router port (a query or PIM hello heard) until this time.
    pub router_until: Option<Duration>,
    /// Groups the port is a member of (kept so the group limit is O(1)).
    pub groups: usize,
    /// Groups it holds in the other family and in other VLANs, which its
    /// limit counts too (the daemon says, before each frame): a trunk port
    /// in many VLANs may not multiply it.
    pub groups_elsewhere: usize,
    /// The groups it may join.
    pub filter: GroupFilter,
    /// Joins refused by its filter, and by its group limit.
    pub refused_by_filter: u64,
    pub refused_by_limit: u64,
}

impl PortState {
    pub fn is_router(&self, now: Duration) -> bool {
        self.options.static_router || self.router_until.is_some_and(|until| until > now)
    }
}

/// Why a port may not join a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The port's group filter does not allow it.
    Filter,
    /// The port has as many groups as it may.
    GroupLimit,
}

impl Refusal {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Filter => "refused: the port's group filter",
            Self::GroupLimit => "refused: the port's group limit",
        }
    }
}

impl<A: Family> Snooper<A> {
    /// Starts managing a port. Returns the router-port action for static routers.
    pub fn add_port(&mut self, port: u32, options: PortOptions) -> Vec<Action<A>> {
        self.ports.insert(port, PortState { options, ..PortState::default() });
        if options.static_router {
            vec![Action::SetRouterPort { port, is_router: true }]
        } else {
            Vec::new()
        }
    }

    /// New options for a port (the bridge's own settings for it changed).
    pub fn set_port_options(&mut self, port: u32, options: PortOptions, now: Duration) -> Vec<Action<A>> {
        let Some(state) = self.ports.get_mut(&port) else { return Vec::new() };
        let was_router = state.is_router(now);
        state.options = options;
        let is_router = state.is_router(now);
        if was_router == is_router {
            Vec::new()
        } else {
            vec![Action::SetRouterPort { port, is_router }]
        }
    }

    /// Forgets a port that left the bridge, with all of its memberships.
    pub fn remove_port(&mut self, port: u32) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        self.ports.remove(&port);
        self.untrusted_routers.remove(&port);
        let groups: Vec<Group<A>> = self.groups.keys().copied().collect();
        for group in groups {
            self.remove_member(group, port, RemoveReason::PortRemoved, &mut actions);
        }
        actions
    }

    /// `port` went down (or stopped forwarding): its learned memberships and
    /// router port go, as the Linux bridge forgets them (static ones stay).
    pub fn port_down(&mut self, port: u32, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        let learned: Vec<Group<A>> = self
            .groups
            .iter()
            .filter(|(_, ports)| ports.get(&port).is_some_and(|m| !m.permanent))
            .map(|(group, _)| *group)
            .collect();
        for group in learned {
            self.remove_member(group, port, RemoveReason::PortDown, &mut actions);
        }
        self.forget_router_port(port, now, &mut actions);
        actions
    }

    /// The groups `port` may join from now on; learned memberships the
    /// filter no longer allows end now (static ones stay).
    pub fn set_port_filter(&mut self, port: u32, filter: GroupFilter) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        let Some(state) = self.ports.get_mut(&port) else { return actions };
        if filter.is_open() {
            // Denies nothing: no membership to look at (100k groups, every port, every reload).
            state.filter = filter;
            return actions;
        }
        let denied: Vec<Group<A>> = self
            .groups
            .iter()
            .filter(|(group, ports)| ports.get(&port).is_some_and(|m| !m.permanent) && !filter.admits(group.addr.ip()))
            .map(|(group, _)| *group)
            .collect();
        state.filter = filter;
        for group in denied {
            self.remove_member(group, port, RemoveReason::Filtered, &mut actions);
        }
        actions
    }

    /// Starts a port's membership of a new group unless the port's filter
    /// refuses the group or its group limit is reached (counted).
    pub(super) fn admit(&mut self, port: u32, group: A) -> Result<(), Refusal> {
        if let Some(state) = self.ports.get_mut(&port) {
            if !state.filter.admits(group.ip()) {
                self.ignored.filter_refusals += 1;
                state.refused_by_filter += 1;
                return Err(Refusal::Filter);
            }
            if state.options.max_groups > 0 && state.groups + state.groups_elsewhere >= state.options.max_groups {
                self.ignored.group_limit_refusals += 1;
                state.refused_by_limit += 1;
                return Err(Refusal::GroupLimit);
            }
            state.groups += 1;
        }
        Ok(())
    }

    /// Groups the port is a member of.
    pub fn port_group_count(&self, port: u32) -> usize {
        self.ports.get(&port).map_or(0, |p| p.groups)
    }

    /// The groups `port` holds beyond this machine (the other family,
    /// other VLANs), which its group limit counts as well.
    pub fn set_groups_elsewhere(&mut self, port: u32, groups: usize) {
        if let Some(state) = self.ports.get_mut(&port) {
            state.groups_elsewhere = groups;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{super::testing::*, super::*, *};

    #[test]
    fn group_limit_refuses_new_groups_but_refreshes_old_ones() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { max_groups: 2, ..TRUSTED });
        for i in 0..5 {
            s.handle(3, 0, &v2_report(Ipv4Addr::new(239, 0, 0, i)), secs(0));
        }
        assert_eq!(s.port_group_count(3), 2);
        assert_eq!(s.ignored().group_limit_refusals, 3);
        assert!(s.handle(3, 0, &v2_report(Ipv4Addr::new(239, 0, 0, 0)), secs(200)).len() == 1, "refresh still works");
        assert_eq!(s.poll(secs(260)).len(), 2, "the unrefreshed group expires");
        s.handle(1, 0, &v2_report(Ipv4Addr::new(239, 0, 0, 4)), secs(0));
        assert_eq!(s.port_group_count(1), 1, "other ports are not limited");
    }

    #[test]
    fn a_port_filter_refuses_joins_and_ends_learned_memberships_it_denies() {
        let mut s = snooper(false);
        let range = |text: &str| text.parse::<crate::port_groups::GroupRange>().unwrap();
        s.add_static(g(G2), 1, &BTreeSet::new(), secs(0)).unwrap();
        s.handle(1, 0, &v2_report(G1), secs(0));
        let filter = GroupFilter { allow: vec![range("239.0.0.0/16")], deny: vec![] };
        let actions = s.set_port_filter(1, filter);
        assert_eq!(
            actions,
            vec![
                Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Filtered },
                Action::UnregisterGroup { group: g(G1) }
            ]
        );
        assert!(s.groups()[&g(G2)].contains_key(&1), "a static group passes any filter");
        let refused = s.handle(1, 0, &v2_report(G1), secs(1));
        assert_eq!(refused, vec![Action::JoinRefused { group: g(G1), port: 1, why: Refusal::Filter }]);
        assert_eq!((s.ports()[&1].refused_by_filter, s.ignored().filter_refusals), (1, 1));
        let allowed = Ipv4Addr::new(239, 0, 1, 1);
        assert!(!s.handle(1, 0, &v2_report(allowed), secs(1)).is_empty());
        assert!(s.handle(2, 0, &v2_report(G1), secs(1)).len() > 1, "other ports are not filtered");
        s.add_port(3, PortOptions { max_groups: 1, ..TRUSTED });
        s.handle(3, 0, &v2_report(G1), secs(1));
        let limited = s.handle(3, 0, &v2_report(allowed), secs(1));
        assert_eq!(limited, vec![Action::JoinRefused { group: g(allowed), port: 3, why: Refusal::GroupLimit }]);
        assert_eq!(s.ports()[&3].refused_by_limit, 1);
    }

    #[test]
    fn removed_port_loses_its_memberships() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        s.handle(2, 0, &v2_report(G1), secs(0));
        s.handle(1, 0, &v2_report(G2), secs(0));
        let actions = s.remove_port(1);
        assert!(actions.contains(&Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::PortRemoved }));
        assert!(actions.contains(&Action::UnregisterGroup { group: g(G2) }));
        assert_eq!(members(&s, G1), [2]);
        // Messages from unknown ports are ignored.
        assert!(s.handle(1, 0, &v2_report(G1), secs(1)).is_empty());
    }

    #[test]
    fn the_group_limit_counts_the_groups_held_elsewhere() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { max_groups: 3, ..TRUSTED });
        // Two groups in other VLANs or the other family: one more fits here.
        s.set_groups_elsewhere(3, 2);
        assert!(s.handle(3, 0, &v2_report(G1), secs(1)).iter().any(|a| matches!(a, Action::AddMember { .. })));
        let refused = s.handle(3, 0, &v2_report(G2), secs(1));
        assert_eq!(refused, vec![Action::JoinRefused { group: g(G2), port: 3, why: Refusal::GroupLimit }]);
        // They left there: room again.
        s.set_groups_elsewhere(3, 1);
        assert!(s.handle(3, 0, &v2_report(G2), secs(2)).iter().any(|a| matches!(a, Action::AddMember { .. })));
    }

    both_families!(the_group_limit_counts_per_port);

    fn the_group_limit_counts_per_port<A: Sample>() {
        let mut s = machine::<A>(false);
        s.add_port(3, PortOptions { max_groups: 2, ..TRUSTED });
        for n in 0..4 {
            let join = packet(A::host(1), Message::Report { version: A::OLDER, group: A::group(n) });
            s.handle(3, 0, &join, secs(0));
            s.handle(1, 0, &join, secs(0));
        }
        assert_eq!((s.port_group_count(3), s.port_group_count(1)), (2, 4));
        assert_eq!(s.ports()[&3].refused_by_limit, 2);
        // Leaving makes room.
        s.remove_port(3);
        s.add_port(3, PortOptions { max_groups: 2, ..TRUSTED });
        assert_eq!(s.port_group_count(3), 0);
    }
}
