//! Router ports: learned from queries, PIM hellos and multicast router
//! discovery (RFC 4286) on trusted ports, for a time, and remembered when
//! heard on untrusted ones (told once, shown, never believed).
use std::{collections::BTreeMap, time::Duration};

use super::{Action, Snooper};
use crate::proto::Family;

/// How a router made itself known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RouterSign {
    Query,
    PimHello,
    MrdAdvertisement,
}

impl RouterSign {
    pub fn describe(self) -> &'static str {
        match self {
            Self::Query => "a querier",
            Self::PimHello => "a PIM router",
            Self::MrdAdvertisement => "a multicast router (MRD)",
        }
    }
}

/// A router heard and ignored on an untrusted port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UntrustedRouter<A> {
    pub source: A,
    pub sign: RouterSign,
    pub last_heard: Duration,
}

impl<A: Family> Snooper<A> {
    /// Routers heard and ignored on untrusted ports, by port.
    pub fn untrusted_routers(&self) -> &BTreeMap<u32, UntrustedRouter<A>> {
        &self.untrusted_routers
    }

    pub(super) fn learn_router_port(
        &mut self,
        port: u32,
        until: Duration,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        if let Some(state) = self.ports.get_mut(&port).filter(|state| !state.options.never_router) {
            let was_router = state.is_router(now);
            state.router_until = Some(until.max(state.router_until.unwrap_or_default()));
            if !was_router {
                actions.push(Action::SetRouterPort { port, is_router: true });
            }
        }
    }

    pub(super) fn forget_router_port(&mut self, port: u32, now: Duration, actions: &mut Vec<Action<A>>) {
        if let Some(state) = self.ports.get_mut(&port) {
            let was_router = state.is_router(now);
            state.router_until = None;
            if was_router && !state.is_router(now) {
                actions.push(Action::SetRouterPort { port, is_router: false });
            }
        }
    }

    /// Learned router ports whose time ran out, and untrusted routers not
    /// heard for an other-querier-present interval.
    pub(super) fn poll_routers(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        for (port, state) in &mut self.ports {
            if state.router_until.is_some_and(|until| until <= now) {
                state.router_until = None;
                if !state.options.static_router {
                    actions.push(Action::SetRouterPort { port: *port, is_router: false });
                }
            }
        }

        let forget_after = self.timers.other_querier_present_interval;
        self.untrusted_routers.retain(|_, heard| heard.last_heard + forget_after > now);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::{super::testing::*, super::*, *};

    #[test]
    fn untrusted_port_cannot_pose_as_router_or_querier() {
        let mut s = snooper(true);
        s.add_port(3, PortOptions::default());
        let router = Ipv4Addr::new(1, 1, 1, 1);
        assert_eq!(
            s.handle(3, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(0)),
            [Action::UntrustedRouterHeard { port: 3, source: router, sign: RouterSign::Query }]
        );
        assert!(s.handle(3, 0, &pkt(H1, Message::PimHello), secs(0)).is_empty());
        assert!(s.querier().is_querier());
        assert!(!s.ports()[&3].is_router(secs(0)));
        assert_eq!(s.ignored().untrusted_router_messages, 2);
        // Reports from it still count.
        assert!(!s.handle(3, 0, &v2_report(G1), secs(0)).is_empty());
    }

    #[test]
    fn pim_hello_learns_router_port_and_static_router_stays() {
        let mut s = snooper(false);
        assert_eq!(
            s.add_port(3, PortOptions { static_router: true, ..TRUSTED }),
            [Action::SetRouterPort { port: 3, is_router: true }]
        );
        assert_eq!(
            s.handle(1, 0, &pkt(H1, Message::PimHello), secs(0)),
            [Action::SetRouterPort { port: 1, is_router: true }]
        );
        let actions = s.poll(secs(1000));
        assert_eq!(actions, [Action::SetRouterPort { port: 1, is_router: false }]);
        assert!(s.ports()[&3].is_router(secs(1000)));
    }

    #[test]
    fn router_discovery_advertisements_learn_and_terminations_end_router_ports() {
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 7);
        let advertisement = pkt(router, Message::MrdAdvertisement { interval: secs(20) });
        assert_eq!(s.handle(1, 0, &advertisement, secs(0)), [Action::SetRouterPort { port: 1, is_router: true }]);
        assert!(s.ports()[&1].is_router(secs(59)), "three intervals");
        assert_eq!(s.poll(secs(60)), [Action::SetRouterPort { port: 1, is_router: false }]);
        s.handle(1, 0, &advertisement, secs(100));
        assert_eq!(
            s.handle(1, 0, &pkt(router, Message::MrdTermination), secs(101)),
            [Action::SetRouterPort { port: 1, is_router: false }]
        );
        // Untrusted: ignored like queries.
        s.add_port(3, PortOptions::default());
        let actions = s.handle(3, 0, &advertisement, secs(102));
        assert_eq!(
            actions,
            [Action::UntrustedRouterHeard { port: 3, source: router, sign: RouterSign::MrdAdvertisement }]
        );
        assert!(!s.ports()[&3].is_router(secs(102)));
    }

    #[test]
    fn a_router_heard_on_an_untrusted_port_is_reported_once_and_remembered() {
        let mut s = snooper(true);
        s.add_port(3, PortOptions::default());
        let router = Ipv4Addr::new(10, 0, 0, 0);
        let actions = s.handle(3, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(0));
        assert_eq!(actions, [Action::UntrustedRouterHeard { port: 3, source: router, sign: RouterSign::Query }]);
        assert!(s.handle(3, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(10)).is_empty(), "once");
        assert!(s.handle(3, 0, &pkt(router, Message::PimHello), secs(11)).is_empty());
        let heard = &s.untrusted_routers()[&3];
        assert_eq!((heard.source, heard.last_heard), (router, secs(11)));
        assert!(s.querier().is_querier(), "still ignored");
        // Forgotten once silent for the other-querier-present interval, or
        // with its port.
        s.poll(secs(11 + 255));
        assert!(s.untrusted_routers().is_empty());
        s.handle(3, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(300));
        s.remove_port(3);
        assert!(s.untrusted_routers().is_empty(), "a port gone from the bridge is still listed");
    }

    both_families!(a_routers_query_on_a_trusted_port_makes_a_router_port_for_a_while);

    fn a_routers_query_on_a_trusted_port_makes_a_router_port_for_a_while<A: Sample>() {
        let mut s = machine::<A>(false);
        let actions = s.handle(1, 0, &query_of(A::router(1), A::UNSPECIFIED), secs(0));
        assert!(actions.contains(&Action::SetRouterPort { port: 1, is_router: true }), "{actions:?}");
        assert!(s.ports()[&1].is_router(secs(254)));
        assert!(s.poll(secs(256)).contains(&Action::SetRouterPort { port: 1, is_router: false }));
        // A PIM hello does the same.
        let actions = s.handle(2, 0, &packet(A::router(2), Message::PimHello), secs(300));
        assert!(actions.contains(&Action::SetRouterPort { port: 2, is_router: true }), "{actions:?}");
    }

    both_families!(a_port_that_is_never_a_router_stays_none);

    fn a_port_that_is_never_a_router_stays_none<A: Sample>() {
        let mut s = machine::<A>(true);
        s.poll(secs(0));
        s.add_port(3, PortOptions { never_router: true, ..TRUSTED });
        let actions = s.handle(3, 0, &query_of(A::router(1), A::UNSPECIFIED), secs(1));
        assert!(!actions.iter().any(|a| matches!(a, Action::SetRouterPort { .. })), "{actions:?}");
        assert!(!s.ports()[&3].is_router(secs(1)));
        // Its query still counts in the election, as the Linux bridge's.
        assert_eq!(s.querier().other.map(|(addr, _)| addr), Some(A::router(1)));
        assert!(s.handle(3, 0, &packet(A::router(1), Message::PimHello), secs(2)).is_empty());
    }
}
