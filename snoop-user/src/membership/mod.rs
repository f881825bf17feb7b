//! Per-port group membership, router ports and the querier, as a pure state
//! machine: messages and the current time go in, [`Action`]s come out. Time is
//! injected (a [`Duration`] since any fixed origin) so every timer is testable.
//!
//! One machine serves every address family ([`Family`]: IGMP for IPv4, MLD
//! for IPv6) and keys groups by VLAN ([`Group`]). Behaviour follows RFC 4541
//! (snooping), RFC 2236 (IGMPv2), RFC 3376 (IGMPv3), RFC 2710 and RFC 3810
//! (MLDv1/v2). [`Snooper`] is one machine; its concerns, each with its tests:
//!
//! - [`ports`]: ports, their options, admission (group filter and limit);
//! - [`filter_mode`]: each port's membership of a group, the router-side
//!   filter mode and source timers of RFC 3376 6.2-6.5 (RFC 3810 7.2-7.5),
//!   so the data path forwards each source only to the ports that want it;
//!   hosts of the older versions are EXCLUDE {}: any source;
//! - [`querier`]: the election, the other querier's timers, presence;
//! - [`routers`]: router ports learned from queries, PIM and MRD;
//! - [`last_member`]: the queries after a leave;
//! - [`statics`]: static memberships;
//! - [`restore`]: resuming what a previous snoop left pinned;
//! - [`timers`]: the protocol's timers.
mod filter_mode;
mod last_member;
mod ports;
mod querier;
mod restore;
mod routers;
mod statics;
mod timers;

#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod testing;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use snoop_common::{GroupKey, SsmRange, VLAN_NONE};

use filter_mode::HeardRecord;
pub use filter_mode::{FilterMode, Member, SourceFilter, DEFAULT_MAX_SOURCES};
use last_member::{PendingQueries, RoundBudget};
pub use ports::{PortOptions, PortState, Refusal};
pub use querier::QuerierState;
use querier::{Heard, HeardQuery, HOST_PORT};
pub use routers::{RouterSign, UntrustedRouter};
pub use statics::StaticError;
pub use timers::{Timers, NEVER};

use crate::proto::{Family, Message, Packet, RecordType};

/// A group as snooping tracks it: its address in one VLAN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Group<A> {
    pub vlan: u16,
    pub addr: A,
}

impl<A: Family> Group<A> {
    /// The group outside any VLAN (snooping that is not VLAN-aware).
    pub const fn untagged(addr: A) -> Self {
        Self { vlan: VLAN_NONE, addr }
    }

    /// The data path's key for the group.
    pub fn key(self) -> GroupKey {
        self.addr.key(self.vlan)
    }

    pub fn from_key(key: &GroupKey) -> Option<Self> {
        Some(Self { vlan: key.vlan, addr: A::from_key(key)? })
    }
}

impl<A: fmt::Display> fmt::Display for Group<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.vlan == VLAN_NONE {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} vlan {}", self.addr, self.vlan)
        }
    }
}

/// What the state machine ignored on purpose, for `snoop show stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoredCounts {
    /// Reports for groups that are not multicast or always flooded.
    pub not_snoopable_groups: u64,
    /// Queries and PIM hellos from untrusted ports.
    pub untrusted_router_messages: u64,
    /// Joins over a port's group limit.
    pub group_limit_refusals: u64,
    /// Messages from ports snoop does not manage.
    pub unknown_port_messages: u64,
    /// Sources over the per-port, per-group limit.
    pub source_limit_refusals: u64,
    /// Any-source joins (IGMPv1/v2, MLDv1, EXCLUDE records) of
    /// source-specific multicast groups, which only take source lists (RFC 4604 2.2.1).
    pub ssm_any_source_joins: u64,
    /// Joins of groups a port's filter does not allow.
    pub filter_refusals: u64,
    /// Leaves that lowered no timer: the budget of last-member query
    /// rounds per interval was spent.
    pub query_rounds_over_budget: u64,
    /// Group records of a type this snoop does not know, skipped (the
    /// rest of their reports read).
    pub unknown_record_types: u64,
}

impl IgnoredCounts {
    /// The counts by their names in `snoop show stats` (a stable interface).
    pub fn named(&self) -> [(&'static str, u64); 9] {
        [
            ("ignored_not_snoopable_groups", self.not_snoopable_groups),
            ("ignored_untrusted_router_messages", self.untrusted_router_messages),
            ("ignored_group_limit", self.group_limit_refusals),
            ("ignored_unknown_port", self.unknown_port_messages),
            ("ignored_source_limit", self.source_limit_refusals),
            ("ignored_ssm_any_source_joins", self.ssm_any_source_joins),
            ("ignored_group_filter", self.filter_refusals),
            ("ignored_query_rounds_over_budget", self.query_rounds_over_budget),
            // (The name of the days when such a report was dropped whole.)
            ("dropped_unknown_record_type", self.unknown_record_types),
        ]
    }
}

/// What the controller must do to the data path or the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action<A> {
    /// Forward `group` to `port` from now on (first member on the port).
    AddMember { group: Group<A>, port: u32, version: u8, expires: Duration },
    /// The membership was refreshed, or a leave shortened it: record the new
    /// expiry, version and leaving state in the pinned map (a restart resumes
    /// from them). A refresh is emitted at most about once per query interval.
    RefreshMember { group: Group<A>, port: u32, version: u8, expires: Duration, leaving: bool },
    /// `port` gets these of `group`'s sources from now on. Comes before
    /// the [`Action::AddMember`] of a new member that is not any-source.
    SetSources { group: Group<A>, port: u32, filter: SourceFilter<A> },
    /// Stop forwarding `group` to `port`.
    RemoveMember { group: Group<A>, port: u32, reason: RemoveReason },
    /// `group` now has members somewhere (the data path prunes it).
    RegisterGroup { group: Group<A> },
    /// `group` has no members left (the data path treats it as unregistered).
    UnregisterGroup { group: Group<A> },
    /// Send a query (in the VLAN of the state machine that asks): general
    /// when `group` is `None`, group-and-source specific when `sources` is
    /// not empty; `suppress`: with the S flag (routers keep their timers).
    SendQuery { group: Option<A>, sources: Vec<A>, suppress: bool },
    /// A port became, or stopped being, a router port.
    SetRouterPort { port: u32, is_router: bool },
    /// Who the querier is changed; `None` when snoop itself queries.
    QuerierChanged { other_querier: Option<A> },
    /// Whether a querier is present changed: while none is, hosts report
    /// only on their own joins, so nothing may be pruned (the data path
    /// floods, as the Linux bridge does).
    QuerierPresence { present: bool },
    /// Our queries are of this version from now on: an older querier was
    /// heard (RFC 3376 7.3.1).
    QueryVersionChanged { version: u8 },
    /// A router spoke on a port that is not trusted and was ignored: its
    /// hosts' reports will not reach it. Emitted when first heard.
    UntrustedRouterHeard { port: u32, source: A, sign: RouterSign },
    /// A join was refused: the port's filter or group limit.
    JoinRefused { group: Group<A>, port: u32, why: Refusal },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RemoveReason {
    /// No report within the group membership interval.
    Expired,
    /// A leave, by fast leave or confirmed by unanswered last-member queries.
    Left,
    /// The port left the bridge.
    PortRemoved,
    /// The port's group filter no longer allows the group.
    Filtered,
    /// A static membership was deleted while another querier serves the
    /// link (it asks hosts again at its next general query).
    StaticDeleted,
    /// The port went down (or STP blocked it): its hosts report again when
    /// it comes back, asked by a query then.
    PortDown,
}

/// The whole membership state of one bridge for one address family.
#[derive(Clone, Debug)]
pub struct Snooper<A> {
    /// The timers in force: `configured`, or those the elected querier
    /// announces or shows by its queries (RFC 3376 4.1.6, 4.1.7).
    timers: Timers,
    configured: Timers,
    ports: BTreeMap<u32, PortState>,
    /// Hashed: a report's lookups are O(1) with 100k groups (display sorts).
    groups: HashMap<Group<A>, BTreeMap<u32, Member<A>>>,
    querier: QuerierState<A>,
    pending_queries: BTreeMap<Group<A>, PendingQueries<A>>,
    round_budget: RoundBudget,
    /// Every member's next timer event, ordered, so timers cost O(log n)
    /// with 100k members.
    expiries: BTreeSet<(Duration, Group<A>, u32)>,
    /// Most sources a port keeps per group; more are refused. 0: no limit.
    max_sources: usize,
    ignored: IgnoredCounts,
    untrusted_routers: BTreeMap<u32, UntrustedRouter<A>>,
    /// Link-scope groups are snooped too (IPv6, `--snoop-ipv6-link-scope`).
    link_scope: bool,
    /// Source-specific multicast ranges (`--ssm-range`).
    ssm_ranges: Vec<SsmRange>,
}

impl<A: Family> Snooper<A> {
    pub fn new(timers: Timers, querier_enabled: bool, own_address: A, now: Duration) -> Self {
        let querier = QuerierState {
            enabled: querier_enabled,
            own_address,
            other: None,
            next_general_query: querier_enabled.then_some(now),
            startup_queries_left: if querier_enabled { timers.startup_query_count } else { 0 },
            version: A::RECORD_VERSION,
            last_general_query: None,
            present_from: None,
            resumed_until: None,
            unspecified_until: None,
            present_announced: false,
        };
        Self {
            configured: timers.clone(),
            timers,
            ports: BTreeMap::new(),
            groups: HashMap::new(),
            querier,
            pending_queries: BTreeMap::new(),
            round_budget: RoundBudget::default(),
            expiries: BTreeSet::new(),
            max_sources: DEFAULT_MAX_SOURCES,
            ignored: IgnoredCounts::default(),
            untrusted_routers: BTreeMap::new(),
            link_scope: false,
            ssm_ranges: crate::settings::DEFAULT_SSM_RANGES.to_vec(),
        }
    }

    /// Most sources a port keeps per group (0: no limit).
    pub fn set_max_sources(&mut self, max: usize) {
        self.max_sources = max;
    }

    /// The source-specific multicast ranges (of this family; others are ignored).
    pub fn set_ssm_ranges(&mut self, ranges: &[SsmRange]) {
        self.ssm_ranges = ranges.to_vec();
    }

    /// A group of a source-specific multicast range: only source lists join it.
    fn is_ssm(&self, group: Group<A>) -> bool {
        let key = group.key();
        self.ssm_ranges.iter().any(|range| range.contains(&key))
    }

    /// Snoop link-scope groups too (see [`Family::is_snoopable`]).
    pub fn set_link_scope_snooped(&mut self, on: bool) {
        self.link_scope = on;
    }

    pub fn link_scope_snooped(&self) -> bool {
        self.link_scope
    }

    /// The version of the queries we send (`--query-version`); an older
    /// querier heard lowers it further.
    pub fn set_query_version(&mut self, version: u8) {
        self.querier.version = version;
    }

    pub fn ignored(&self) -> &IgnoredCounts {
        &self.ignored
    }

    pub fn timers(&self) -> &Timers {
        &self.timers
    }

    pub fn ports(&self) -> &BTreeMap<u32, PortState> {
        &self.ports
    }

    pub fn groups(&self) -> &HashMap<Group<A>, BTreeMap<u32, Member<A>>> {
        &self.groups
    }

    pub fn querier(&self) -> &QuerierState<A> {
        &self.querier
    }

    /// Handles one validated control packet that entered through `port` in `vlan`.
    pub fn handle(&mut self, port: u32, vlan: u16, packet: &Packet<A>, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        let Some(state) = self.ports.get(&port) else {
            self.ignored.unknown_port_messages += 1;
            return actions;
        };
        let sign = match packet.message {
            Message::Query { .. } => Some(RouterSign::Query),
            Message::PimHello => Some(RouterSign::PimHello),
            Message::MrdAdvertisement { .. } | Message::MrdTermination => Some(RouterSign::MrdAdvertisement),
            _ => None,
        };
        if let Some(sign) = sign.filter(|_| !state.options.trusted) {
            self.ignored.untrusted_router_messages += 1;
            // Another snooping switch's queries (no source) are no router.
            if !packet.source.is_unspecified() {
                let heard = UntrustedRouter { source: packet.source, sign, last_heard: now };
                if self.untrusted_routers.insert(port, heard).is_none() {
                    actions.push(Action::UntrustedRouterHeard { port, source: packet.source, sign });
                }
            }
            return actions;
        }
        let group = |addr| Group { vlan, addr };
        let reporter = packet.source;
        match &packet.message {
            // An older host's join: any source (RFC 3376 7.3.2).
            Message::Report { version, group: addr } => {
                let heard = HeardRecord { kind: RecordType::ModeIsExclude, sources: &[], version: *version, reporter };
                self.record(group(*addr), port, heard, now, &mut actions)
            }
            // An IGMPv1 querier ignores leaves (RFC 3376 7.3.1): hosts keep
            // the group until the membership interval ends.
            Message::Leave { .. } if A::sends_no_leaves(self.querier.version) => {}
            // TO_IN {} (RFC 3376 7.3.2). Only a report says an older host
            // is present: a leave sets no older-host timer.
            Message::Leave { group: addr } => {
                let version = A::RECORD_VERSION;
                let heard = HeardRecord { kind: RecordType::ChangeToInclude, sources: &[], version, reporter };
                self.record(group(*addr), port, heard, now, &mut actions)
            }
            Message::RecordReport { records, unknown_types } => {
                self.ignored.unknown_record_types += u64::from(*unknown_types);
                for record in records {
                    let heard = HeardRecord {
                        kind: record.record_type,
                        sources: &record.sources,
                        version: A::RECORD_VERSION,
                        reporter,
                    };
                    self.record(group(record.group), port, heard, now, &mut actions);
                }
            }
            Message::Query { .. } => self.query(port, vlan, packet, Heard::OnPort, now, &mut actions),
            Message::PimHello => {
                let until = now + self.timers.other_querier_present_interval;
                self.learn_router_port(port, until, now, &mut actions)
            }
            // Advertised again within the interval; three missed ones end it.
            Message::MrdAdvertisement { interval } => {
                let until = now + (*interval * 3).max(Duration::from_secs(1));
                self.learn_router_port(port, until, now, &mut actions)
            }
            Message::MrdTermination => self.forget_router_port(port, now, &mut actions),
            Message::MrdSolicitation => {}
        }
        actions
    }

    /// A query the bridge's own host sent in `vlan` (a multicast router
    /// running on it: FRR's pimd, igmpproxy), which no port's program sees:
    /// it takes part in the election as the kernel bridge counts its host's
    /// queries. Anything else the host sends is not a port's business.
    pub fn host_query(&mut self, vlan: u16, packet: &Packet<A>, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        self.query(HOST_PORT, vlan, packet, Heard::FromHost, now, &mut actions);
        actions
    }

    fn query(
        &mut self,
        port: u32,
        vlan: u16,
        packet: &Packet<A>,
        from: Heard,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        let Message::Query { version, group: addr, sources, suppress, max_response, announced } = &packet.message
        else {
            return;
        };
        let specific = (!addr.is_unspecified()).then_some(Group { vlan, addr: *addr });
        let heard = HeardQuery {
            version: *version,
            max_response: *max_response,
            announced: *announced,
            sources,
            suppress: *suppress,
            from,
        };
        self.query_heard(port, packet.source, specific, heard, now, actions)
    }

    /// Fires every timer due at `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();
        self.poll_members(now, &mut actions);
        self.poll_routers(now, &mut actions);
        self.poll_querier(now, &mut actions);
        self.poll_last_member(now, &mut actions);
        self.poll_presence(now, &mut actions);
        actions
    }

    /// The earliest time at which [`Snooper::poll`] has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        let members = self.expiries.first().map(|(expires, _, _)| *expires).into_iter();
        let routers = self.ports.values().filter_map(|p| p.router_until);
        let querier = self
            .querier
            .other
            .map(|(_, until)| until)
            .into_iter()
            .chain(self.querier.next_general_query.filter(|_| self.querier.is_querier()));
        let group_queries = self.pending_queries.values().map(|p| p.next_at);
        let presence = if self.querier.present_announced {
            self.querier.resumed_until.into_iter().chain(self.querier.unspecified_until).min()
        } else {
            self.querier.present_from
        };
        members.chain(routers).chain(querier).chain(group_queries).chain(presence).min()
    }

    /// The member ports of `group` (used by the tests).
    #[cfg(test)]
    fn group_ports(&self, group: Group<A>) -> BTreeSet<u32> {
        self.groups.get(&group).map(|p| p.keys().copied().collect()).unwrap_or_default()
    }
}
