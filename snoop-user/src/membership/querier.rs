//! The querier: the election by lowest address (RFC 3376 6.6.2, RFC 3810
//! 7.6.2), the other querier's timers adopted, queries heard lowering the
//! timers they ask about, and whether a querier is present at all (while
//! none is, nothing may be pruned).
use std::time::Duration;

use super::{Action, FilterMode, Group, Snooper, Timers};
use crate::proto::{Announced, Family};

/// Where a query was heard: entering a port, or sent by the bridge's own host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Heard {
    OnPort,
    FromHost,
}

/// The "port" of the bridge's own host: no port's ifindex (0 is none).
pub(super) const HOST_PORT: u32 = 0;

/// What a heard query says beyond its group.
#[derive(Clone, Copy, Debug)]
pub(super) struct HeardQuery<'a, A> {
    pub(super) version: u8,
    pub(super) max_response: Duration,
    pub(super) announced: Option<Announced>,
    /// Group-and-source-specific: these sources only.
    pub(super) sources: &'a [A],
    /// Routers suppress their timer updates (RFC 3376 4.1.5).
    pub(super) suppress: bool,
    pub(super) from: Heard,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuerierState<A> {
    /// This snoop may act as querier at all.
    pub enabled: bool,
    /// Source address of our queries; the unspecified address loses every election.
    pub own_address: A,
    /// Another querier that won the election, and until when it counts as present.
    pub other: Option<(A, Duration)>,
    /// When our next general query is due (only while we are the querier).
    pub next_general_query: Option<Duration>,
    pub(super) startup_queries_left: u32,
    /// The version of our queries: the configured one, or the lowest an
    /// older querier was heard speaking. It stays lowered: that querier falls
    /// silent once we win the election, not because it is gone.
    pub version: u8,
    /// When the elected querier's last general query was heard, to learn its
    /// interval when its queries do not announce one (IGMPv2).
    pub(super) last_general_query: Option<Duration>,
    /// A querier counts as present from this time: its first query's max
    /// response time after it was sent, when hosts have answered it.
    pub(super) present_from: Option<Duration>,
    /// After a restart with memberships resumed and no querier of our own:
    /// present until then, unless another querier is heard.
    pub(super) resumed_until: Option<Duration>,
    /// A querier speaking from 0.0.0.0 (another snooping switch) was heard:
    /// hosts are asked until then.
    pub(super) unspecified_until: Option<Duration>,
    /// The presence last emitted as [`Action::QuerierPresence`].
    pub(super) present_announced: bool,
}

impl<A: Family> QuerierState<A> {
    /// A querier is present: snoop queries (it can: MLD needs a link-local
    /// address), another was elected, a predecessor's memberships were just
    /// resumed, or a snooping switch queries from 0.0.0.0 (which elects
    /// nobody, but asks the hosts all the same, as the Linux bridge counts it).
    pub(super) fn is_present(&self, now: Duration) -> bool {
        let asked = self.is_querier()
            || self.other.is_some()
            || self.resumed_until.is_some_and(|until| until > now)
            || self.unspecified_until.is_some_and(|until| until > now);
        asked && self.present_from.is_some_and(|from| from <= now)
    }

    /// Snoop queries: enabled, no other querier elected, and an address
    /// hosts accept queries from (MLD: link-local, none until the bridge has one).
    pub fn is_querier(&self) -> bool {
        self.enabled && self.other.is_none() && A::can_query_from(self.own_address)
    }
}

impl<A: Family> Snooper<A> {
    /// Whether a querier is present, so that pruning is safe.
    pub fn querier_present(&self, now: Duration) -> bool {
        self.querier.is_present(now)
    }

    /// Our query source changed (the bridge was readdressed). The election
    /// is held again against the querier elected now: a lower address than
    /// its takes over at once.
    pub fn set_own_address(&mut self, own: A, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        self.querier.own_address = own;
        let other = self.querier.other.map(|(addr, _)| addr);
        if self.querier.enabled
            && other.is_some_and(|other| !own.is_unspecified() && A::can_query_from(own) && own < other)
        {
            self.querier.other = None;
            self.querier.next_general_query = Some(now);
            actions.push(Action::QuerierChanged { other_querier: None });
        }
        actions
    }

    pub(super) fn query_heard(
        &mut self,
        port: u32,
        source: A,
        group: Option<Group<A>>,
        heard: HeardQuery<'_, A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        // An unspecified source is another snooping switch, not a router,
        // and takes no part in the election (RFC 4541 2.1.1); it does ask
        // the hosts, so a querier is present.
        if source.is_unspecified() {
            if group.is_none() {
                self.querier.unspecified_until = Some(now + self.timers.other_querier_present_interval);
                self.querier.present_from.get_or_insert(now + heard.max_response);
            }
            return;
        }
        // Older routers are there: the querier must speak their version
        // (RFC 3376 7.3.1), whoever wins the election.
        if heard.version < self.querier.version {
            self.querier.version = heard.version;
            actions.push(Action::QueryVersionChanged { version: heard.version });
        }

        // The lowest address heard wins: lower than ours and than the one
        // elected now (RFC 3376 6.6.2). Only the elected querier's queries
        // keep it present and set the timers.
        let elected = self.querier.other.map(|(addr, _)| addr);
        let own = self.querier.own_address;
        let from_host = heard.from == Heard::FromHost;
        // The host's own router wins at our address too (snoop queries from
        // the bridge's address by default): it, not snoop, is the querier.
        let beats_own = !self.querier.enabled
            || own.is_unspecified()
            || !A::can_query_from(own)
            || source < own
            || (from_host && source == own);
        let beats_elected = elected.is_none_or(|elected| source <= elected);
        let mut querier_changed = false;
        if beats_own && beats_elected {
            if elected != Some(source) {
                self.querier.last_general_query = None;
            }
            if group.is_none() {
                self.adopt_querier_timers(&heard, now);
            }
            let until = now + self.timers.other_querier_present_interval;
            self.querier.other = Some((source, until));
            self.querier.present_from.get_or_insert(now + heard.max_response);
            self.querier.resumed_until = None;
            if self.querier.enabled {
                self.querier.next_general_query = None;
                self.querier.startup_queries_left = 0;
                self.pending_queries.clear();
                querier_changed = elected != Some(source);
            }
        }
        // With the timers it announced: the port outlives its interval.
        let until = now + self.timers.other_querier_present_interval;
        self.learn_router_port(port, until, now, actions);
        if querier_changed {
            actions.push(Action::QuerierChanged { other_querier: Some(source) });
        }

        // Another querier's group(-and-source)-specific query: its last-member
        // round is on, so lower the timers it asks about as the querier does
        // (RFC 3376 6.6.1): the group timer for Q(G), only the sources' for
        // Q(G,S); nothing when it says routers suppress their updates.
        if let Some(group) = group.filter(|_| !heard.suppress) {
            let limit = now + heard.max_response * self.timers.last_member_query_count;
            let Some(ports) = self.groups.get_mut(&group) else { return };
            for member in ports.values_mut().filter(|m| !m.permanent) {
                if heard.sources.is_empty() {
                    if member.mode == FilterMode::Exclude && member.group_timer > limit {
                        member.group_timer = limit;
                    }
                } else {
                    for source in heard.sources {
                        if let Some(timer) = member.sources.get_mut(source).filter(|t| **t > limit) {
                            *timer = limit;
                        }
                    }
                }
            }
            let ports: Vec<u32> = ports.keys().copied().collect();
            for port in ports {
                self.settle(group, port, false, now, actions);
            }
        }
    }

    /// The elected querier's general query sets the timers: its announced
    /// robustness and interval (IGMPv3), else the interval seen between its
    /// queries when longer than ours (IGMPv2 announces none), and its max
    /// response time. Memberships and router ports then outlive its interval.
    fn adopt_querier_timers(&mut self, heard: &HeardQuery<'_, A>, now: Duration) {
        let configured = &self.configured;
        let announced = heard.announced.unwrap_or(Announced { robustness: 0, query_interval: Duration::ZERO });
        let robustness = if announced.robustness == 0 { configured.robustness } else { announced.robustness.into() };
        let seen = self.querier.last_general_query.map(|last| now.saturating_sub(last));
        self.querier.last_general_query = Some(now);
        let query_interval = if !announced.query_interval.is_zero() {
            announced.query_interval
        } else {
            // Startup queries come faster: only a longer interval counts.
            seen.map_or(self.timers.query_interval, |seen| seen.max(configured.query_interval))
        };
        let mut adopted =
            Timers::derived(robustness, query_interval, heard.max_response.max(Duration::from_millis(100)));
        adopted.last_member_query_interval = configured.last_member_query_interval;
        self.timers = adopted;
    }

    /// The other querier's time running out (snoop takes over), and snoop's
    /// own general queries.
    pub(super) fn poll_querier(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        if let Some((_, until)) = self.querier.other {
            if until <= now {
                self.querier.other = None;
                self.querier.last_general_query = None;
                self.timers = self.configured.clone();
                // Nobody asks the hosts now unless snoop can.
                if !self.querier.is_querier() {
                    self.querier.present_from = None;
                }
                if self.querier.enabled {
                    // Take over at once (RFC 3376 6.6.2 via 7.6).
                    self.querier.next_general_query = Some(now);
                    actions.push(Action::QuerierChanged { other_querier: None });
                }
            }
        }

        if self.querier.is_querier() && self.querier.next_general_query.is_some_and(|at| at <= now) {
            actions.push(Action::SendQuery { group: None, sources: Vec::new(), suppress: false });
            self.querier.present_from.get_or_insert(now + self.timers.query_response_interval);
            let interval = if self.querier.startup_queries_left > 1 {
                self.querier.startup_queries_left -= 1;
                self.timers.startup_query_interval
            } else {
                self.querier.startup_queries_left = 0;
                self.timers.query_interval
            };
            self.querier.next_general_query = Some(now + interval);
        }
    }

    /// Whether a querier is present, told when it changes.
    pub(super) fn poll_presence(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        let querier = &mut self.querier;
        for until in [&mut querier.resumed_until, &mut querier.unspecified_until] {
            if until.is_some_and(|until| until <= now) {
                *until = None;
            }
        }
        if !querier.is_present(now) && !querier.is_querier() && querier.other.is_none() {
            querier.present_from = None;
        }
        let present = self.querier.is_present(now);
        if present != self.querier.present_announced {
            self.querier.present_announced = present;
            actions.push(Action::QuerierPresence { present });
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::{super::testing::*, super::*};

    #[test]
    fn querier_startup_then_regular_interval() {
        let mut s = snooper(true);
        let t = Timers::default();
        assert_eq!(s.poll(secs(0)), [Action::SendQuery { group: None, sources: vec![], suppress: false }]);
        assert_eq!(s.poll(t.query_response_interval), [Action::QuerierPresence { present: true }]);
        assert_eq!(s.next_deadline(), Some(t.startup_query_interval));
        assert_eq!(
            s.poll(t.startup_query_interval),
            [Action::SendQuery { group: None, sources: vec![], suppress: false }]
        );
        assert_eq!(s.next_deadline(), Some(t.startup_query_interval + t.query_interval));
    }

    #[test]
    fn lower_ip_querier_wins_and_we_resume_after_it_goes_silent() {
        let mut s = snooper(true);
        s.poll(secs(0));
        let other = Ipv4Addr::new(10, 0, 0, 0);
        let actions = s.handle(2, 0, &query(other, Ipv4Addr::UNSPECIFIED), secs(5));
        assert_eq!(
            actions,
            [Action::SetRouterPort { port: 2, is_router: true }, Action::QuerierChanged { other_querier: Some(other) }]
        );
        assert!(!s.querier().is_querier());
        // Silent for the other-querier-present interval (255 s): we take over.
        assert!(s.poll(secs(259)).iter().all(|a| !matches!(a, Action::SendQuery { .. })));
        let actions = s.poll(secs(260));
        assert!(actions.contains(&Action::QuerierChanged { other_querier: None }));
        assert!(actions.contains(&Action::SendQuery { group: None, sources: vec![], suppress: false }));
        assert!(actions.contains(&Action::SetRouterPort { port: 2, is_router: false }));
    }

    #[test]
    fn a_readdressed_querier_holds_the_election_again() {
        let mut s = snooper(true); // own 10.0.0.1
        s.poll(secs(0));
        // We win against 10.0.0.5, become 10.0.0.9 and keep querying until
        // someone lower is heard.
        assert!(s.set_own_address(Ipv4Addr::new(10, 0, 0, 9), secs(1)).is_empty());
        assert!(s.querier().is_querier());
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 5), Ipv4Addr::UNSPECIFIED), secs(2));
        assert!(!s.querier().is_querier());
        // Readdressed below the elected querier: we take over at once.
        let actions = s.set_own_address(Ipv4Addr::new(10, 0, 0, 2), secs(3));
        assert_eq!(actions, [Action::QuerierChanged { other_querier: None }]);
        assert_eq!(s.poll(secs(3)), [Action::SendQuery { group: None, sources: vec![], suppress: false }]);
        // Without an address we never win.
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::UNSPECIFIED), secs(4));
        assert!(s.set_own_address(Ipv4Addr::UNSPECIFIED, secs(5)).is_empty());
        assert!(!s.querier().is_querier());
    }

    #[test]
    fn the_bridge_hosts_own_router_takes_part_and_wins_at_our_address() {
        let mut s = snooper(true); // own 10.0.0.1
        s.poll(secs(0));
        // A host router at a higher address loses, as any querier would.
        assert!(s.host_query(0, &query(Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::UNSPECIFIED), secs(1)).is_empty());
        assert!(s.querier().is_querier());
        // At our own address (both query from the bridge's): the host's
        // router is the querier, and no port becomes a router port.
        let own = Ipv4Addr::new(10, 0, 0, 1);
        let actions = s.host_query(0, &query(own, Ipv4Addr::UNSPECIFIED), secs(2));
        assert_eq!(actions, [Action::QuerierChanged { other_querier: Some(own) }]);
        assert!(!s.querier().is_querier());
        assert!(s.ports().values().all(|p| !p.is_router(secs(2))));
        // The same query entering a port does not beat us (RFC 3376 6.6.2: lower only).
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(2, 0, &query(own, Ipv4Addr::UNSPECIFIED), secs(1));
        assert!(s.querier().is_querier());
        // Anything but a query from the host is ignored.
        assert!(s.host_query(0, &v2_report(Ipv4Addr::new(239, 1, 1, 1)), secs(1)).is_empty());
        assert!(s.groups().is_empty());
    }

    #[test]
    fn higher_ip_or_unspecified_querier_does_not_win() {
        let mut s = snooper(true);
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::UNSPECIFIED), secs(0));
        assert!(s.querier().is_querier());
        assert!(s.handle(2, 0, &query(Ipv4Addr::UNSPECIFIED, Ipv4Addr::UNSPECIFIED), secs(0)).is_empty());
        assert!(s.querier().is_querier());
        // With our own address unspecified, any addressed querier wins.
        let mut s = Snooper::new(Timers::default(), true, Ipv4Addr::UNSPECIFIED, secs(0));
        s.add_port(1, TRUSTED);
        s.handle(1, 0, &query(Ipv4Addr::new(192, 168, 9, 9), Ipv4Addr::UNSPECIFIED), secs(0));
        assert!(!s.querier().is_querier());
    }

    #[test]
    fn other_querier_group_query_shortens_membership() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        s.handle(
            2,
            0,
            &pkt(
                Ipv4Addr::new(10, 0, 0, 1),
                Message::Query {
                    version: 2,
                    group: G1,
                    sources: vec![],
                    suppress: false,
                    max_response: secs(1),
                    announced: None,
                },
            ),
            secs(10),
        );
        assert!(but_presence(s.poll(secs(11))).is_empty());
        assert_eq!(s.poll(secs(12)).len(), 2);
    }

    #[test]
    fn an_older_querier_makes_our_queries_its_version_and_it_stays_so() {
        let mut s = snooper(true); // own 10.0.0.1
        s.poll(secs(0));
        assert_eq!(s.querier().version, 3);
        // A v2 router with a higher address: it loses, and falls silent
        // because of our queries, but its hosts must keep reporting in v2.
        let actions = s.handle(2, 0, &v2_query(Ipv4Addr::new(10, 0, 0, 9)), secs(1));
        assert!(actions.contains(&Action::QueryVersionChanged { version: 2 }), "{actions:?}");
        assert_eq!(s.querier().version, 2);
        assert!(s.querier().is_querier());
        s.poll(secs(1000));
        assert_eq!(s.querier().version, 2, "still v2 long after the router went silent");
        // Configured for v2 from the start: nothing to change.
        let mut s = snooper(true);
        s.set_query_version(2);
        assert!(!s
            .handle(2, 0, &v2_query(Ipv4Addr::new(10, 0, 0, 9)), secs(1))
            .iter()
            .any(|a| matches!(a, Action::QueryVersionChanged { .. })));
        // In v1 mode leaves mean nothing (RFC 3376 7.3.1).
        let mut s = snooper(true);
        let v1 = pkt(
            Ipv4Addr::new(10, 0, 0, 9),
            Message::Query {
                sources: vec![],
                suppress: false,
                version: 1,
                group: Ipv4Addr::UNSPECIFIED,
                max_response: secs(10),
                announced: None,
            },
        );
        s.handle(2, 0, &v1, secs(0));
        assert_eq!(s.querier().version, 1);
        s.handle(1, 0, &v2_report(G1), secs(1));
        assert!(s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(2)).is_empty());
    }

    #[test]
    fn the_elected_queriers_robustness_and_interval_are_adopted() {
        let mut s = snooper(true);
        let router = Ipv4Addr::new(10, 0, 0, 0);
        // A router querying every 300 s with robustness 3.
        s.handle(2, 0, &v3_query_announcing(router, 3, 300), secs(0));
        assert_eq!(s.timers().query_interval, secs(300));
        assert_eq!(s.timers().robustness, 3);
        s.handle(1, 0, &v2_report(G1), secs(5));
        // Our own 125 s timers would expire the member at 265 s, the router
        // port and the other querier at 255 s: all must last past 300 s.
        let actions = but_presence(s.poll(secs(299)));
        assert!(actions.is_empty(), "{actions:?}");
        assert!(!s.querier().is_querier());
        assert!(s.ports()[&2].is_router(secs(299)));
        s.handle(2, 0, &v3_query_announcing(router, 3, 300), secs(300));
        s.handle(1, 0, &v2_report(G1), secs(301));
        assert_eq!(members(&s, G1), [1]);
        // It goes silent: after its own other-querier-present interval
        // (3 x 300 + 5 = 905 s) we take over with our own timers again.
        assert!(s.poll(secs(1204)).iter().all(|a| !matches!(a, Action::QuerierChanged { .. })));
        let actions = s.poll(secs(1205));
        assert!(actions.contains(&Action::QuerierChanged { other_querier: None }), "{actions:?}");
        assert_eq!(s.timers().query_interval, secs(125));
        assert_eq!(s.timers().robustness, 2);
    }

    #[test]
    fn a_v2_queriers_long_interval_is_learned_from_its_queries() {
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 0);
        s.handle(2, 0, &v2_query(router), secs(0));
        s.handle(2, 0, &v2_query(router), secs(300));
        assert_eq!(s.timers().query_interval, secs(300));
        s.handle(1, 0, &v2_report(G1), secs(301));
        assert!(but_presence(s.poll(secs(600))).is_empty(), "the member outlives the next query");
        assert!(s.ports()[&2].is_router(secs(600)));
    }

    #[test]
    fn the_election_is_against_the_querier_elected_now() {
        let mut s = snooper(true); // own 10.0.0.9 below
        s.set_own_address(Ipv4Addr::new(10, 0, 0, 9), secs(0));
        let low = Ipv4Addr::new(10, 0, 0, 2);
        let mid = Ipv4Addr::new(10, 0, 0, 5);
        s.handle(1, 0, &query(low, Ipv4Addr::UNSPECIFIED), secs(1));
        let actions = s.handle(2, 0, &query(mid, Ipv4Addr::UNSPECIFIED), secs(2));
        assert!(!actions.iter().any(|a| matches!(a, Action::QuerierChanged { .. })), "{actions:?}");
        assert_eq!(s.querier().other.map(|(a, _)| a), Some(low));
        // Only the elected querier's queries keep it present.
        s.handle(2, 0, &query(mid, Ipv4Addr::UNSPECIFIED), secs(200));
        assert!(s.poll(secs(256)).contains(&Action::QuerierChanged { other_querier: None }));
        // Without our own querier, the same election.
        let mut s = snooper(false);
        s.handle(1, 0, &query(low, Ipv4Addr::UNSPECIFIED), secs(1));
        s.handle(2, 0, &query(mid, Ipv4Addr::UNSPECIFIED), secs(2));
        assert_eq!(s.querier().other.map(|(a, _)| a), Some(low));
    }

    #[test]
    fn nothing_is_pruned_until_a_querier_is_present() {
        // Our own querier: present once its first query had its response time.
        let mut s = snooper(true);
        assert!(!s.querier_present(secs(0)));
        let actions = s.poll(secs(0));
        assert!(!actions.iter().any(|a| matches!(a, Action::QuerierPresence { .. })));
        assert_eq!(s.next_deadline(), Some(secs(10)));
        assert_eq!(s.poll(secs(10)), [Action::QuerierPresence { present: true }]);
        // No querier of ours: present once another is heard and answered,
        // absent again when it goes silent.
        let mut s = snooper(false);
        assert!(s.poll(secs(100)).is_empty());
        assert!(!s.querier_present(secs(100)));
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 9), Ipv4Addr::UNSPECIFIED), secs(100));
        assert!(!s.querier_present(secs(109)));
        assert_eq!(s.poll(secs(110)), [Action::QuerierPresence { present: true }]);
        let actions = s.poll(secs(355));
        assert!(actions.contains(&Action::QuerierPresence { present: false }), "{actions:?}");
        // Resumed memberships are known: present at once, and with no querier
        // of ours, for one other-querier-present interval unless one is heard.
        let mut s = snooper(false);
        s.resume_querier_presence(secs(5));
        assert_eq!(s.poll(secs(5)), [Action::QuerierPresence { present: true }]);
        assert_eq!(s.poll(secs(260)), [Action::QuerierPresence { present: false }]);
    }

    /// An MLDv2 general query from `source`, answered within 10 s.
    fn mld_general_query(source: Ipv6Addr) -> Packet<Ipv6Addr> {
        from(
            source,
            Message::Query {
                version: 2,
                group: Ipv6Addr::UNSPECIFIED,
                sources: vec![],
                suppress: false,
                max_response: secs(10),
                announced: None,
            },
        )
    }

    #[test]
    fn the_lowest_address_wins_the_election() {
        let mut s = mld_snooper(OWN);
        s.poll(secs(0));
        let query = mld_general_query;
        let higher = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x11);
        s.handle(2, 0, &query(higher), secs(1));
        assert!(s.querier().is_querier());
        let lower = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x01);
        let actions = s.handle(2, 0, &query(lower), secs(2));
        assert!(actions.contains(&Action::QuerierChanged { other_querier: Some(lower) }));
        assert!(!s.querier().is_querier());
    }

    #[test]
    fn without_a_link_local_address_snoop_sends_no_queries_until_it_has_one() {
        let mut s = mld_snooper(Ipv6Addr::UNSPECIFIED);
        assert!(!s.querier().is_querier());
        assert!(s.poll(secs(0)).is_empty());
        assert!(s.poll(secs(30)).is_empty(), "no query and no presence: nothing of IPv6 is pruned");
        s.set_own_address(OWN, secs(31));
        assert!(s.poll(secs(31)).contains(&Action::SendQuery { group: None, sources: vec![], suppress: false }));
    }

    both_families!(a_lower_querier_wins_and_snoop_takes_over_when_it_falls_silent);

    fn a_lower_querier_wins_and_snoop_takes_over_when_it_falls_silent<A: Sample>() {
        let mut s = machine::<A>(true);
        assert!(s.poll(secs(0)).contains(&Action::SendQuery { group: None, sources: vec![], suppress: false }));
        // A higher address loses.
        s.handle(2, 0, &query_of(A::router(9), A::UNSPECIFIED), secs(1));
        assert!(s.querier().is_querier());
        let actions = s.handle(2, 0, &query_of(A::router(1), A::UNSPECIFIED), secs(2));
        assert!(actions.contains(&Action::QuerierChanged { other_querier: Some(A::router(1)) }), "{actions:?}");
        assert!(!s.querier().is_querier() && s.querier_present(secs(20)));
        // Silent for the other-querier-present interval (255 s): snoop queries again.
        let actions = s.poll(secs(2 + 255));
        assert!(actions.contains(&Action::QuerierChanged { other_querier: None }), "{actions:?}");
        assert!(actions.contains(&Action::SendQuery { group: None, sources: vec![], suppress: false }), "{actions:?}");
    }

    both_families!(a_querier_from_the_unspecified_address_is_present_but_no_router);

    fn a_querier_from_the_unspecified_address_is_present_but_no_router<A: Sample>() {
        let mut s = machine::<A>(false);
        assert!(!s.querier_present(secs(0)));
        // Another snooping switch queries from :: / 0.0.0.0: hosts are asked.
        s.handle(1, 0, &query_of(A::UNSPECIFIED, A::UNSPECIFIED), secs(0));
        assert!(s.poll(secs(10)).contains(&Action::QuerierPresence { present: true }));
        assert!(!s.ports()[&1].is_router(secs(10)), "no router port");
        assert!(s.querier().other.is_none(), "it wins no election");
        // Silent for the other-querier-present interval: nobody asks any more.
        assert!(s.poll(secs(256)).contains(&Action::QuerierPresence { present: false }));
    }

    #[test]
    fn an_mld_querier_that_cannot_query_is_no_querier_once_the_other_goes() {
        // No link-local address on the bridge: snoop's MLD querier cannot speak.
        let mut s = mld_snooper(Ipv6Addr::UNSPECIFIED);
        s.poll(secs(0));
        assert!(!s.querier_present(secs(20)), "a querier that cannot query is none");
        s.handle(1, 0, &mld_general_query(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)), secs(20));
        assert!(s.poll(secs(30)).contains(&Action::QuerierPresence { present: true }));
        // The other querier stops: nobody asks the hosts; their groups flood, not age out pruned.
        let actions = s.poll(secs(20 + 255));
        assert!(actions.contains(&Action::QuerierPresence { present: false }), "{actions:?}");
        assert!(!s.querier_present(secs(300)));
        // A keep-state restart with no MLD querier: present for one interval, then not.
        s.resume_querier_presence(secs(300));
        assert!(s.querier_present(secs(301)));
        s.poll(secs(301));
        assert!(s.poll(secs(300 + 255)).contains(&Action::QuerierPresence { present: false }));
    }
}
