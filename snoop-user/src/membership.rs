//! Per-port group membership, router ports and the querier, as a pure state
//! machine: messages and the current time go in, [`Action`]s come out. Time is
//! injected (a [`Duration`] since any fixed origin) so every timer is testable.
//!
//! One machine serves every address family ([`Family`]: IGMP for IPv4, MLD
//! for IPv6) and keys groups by VLAN ([`Group`]). Behaviour follows RFC 4541
//! (snooping), RFC 2236 (IGMPv2), RFC 3376 (IGMPv3), RFC 2710 and RFC 3810
//! (MLDv1/v2): each port keeps, per group, the router-side filter mode and
//! source timers of RFC 3376 6.2-6.5 (RFC 3810 7.2-7.5), so the data path
//! forwards each source only to the ports that want it. Hosts of the older
//! versions are EXCLUDE {}: any source.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    time::Duration,
};

use snoop_common::{GroupKey, VLAN_NONE};

use crate::{
    port_groups::GroupFilter,
    proto::{Announced, Family, Message, Packet, RecordType},
};

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

/// The timer of what never expires: a static membership's.
pub const NEVER: Duration = Duration::MAX;

/// Sources a port keeps per group unless configured: twice the Linux
/// bridge's fixed 32, and enough for any SSM receiver seen in practice.
pub const DEFAULT_MAX_SOURCES: usize = 64;

/// The RFC 3376 section 8 timers. Defaults are the RFC's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timers {
    pub robustness: u32,
    pub query_interval: Duration,
    pub query_response_interval: Duration,
    pub group_membership_interval: Duration,
    pub other_querier_present_interval: Duration,
    pub startup_query_interval: Duration,
    pub startup_query_count: u32,
    pub last_member_query_interval: Duration,
    pub last_member_query_count: u32,
}

impl Timers {
    /// Derives the dependent timers from the three base ones as RFC 3376 8.x does.
    pub fn derived(robustness: u32, query_interval: Duration, query_response_interval: Duration) -> Self {
        Self {
            robustness,
            query_interval,
            query_response_interval,
            group_membership_interval: query_interval * robustness + query_response_interval,
            other_querier_present_interval: query_interval * robustness + query_response_interval / 2,
            startup_query_interval: query_interval / 4,
            startup_query_count: robustness,
            last_member_query_interval: Duration::from_secs(1),
            last_member_query_count: robustness,
        }
    }

    /// Time after a leave at which a port's membership ends unless a host reports.
    pub fn last_member_query_time(&self) -> Duration {
        self.last_member_query_interval * self.last_member_query_count
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self::derived(2, Duration::from_secs(125), Duration::from_secs(10))
    }
}

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
    /// Most groups the port may join; reports for more are refused. 0: no limit.
    pub max_groups: usize,
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
}

impl IgnoredCounts {
    /// The counts by their names in `snoop show stats` (a stable interface).
    pub fn named(&self) -> [(&'static str, u64); 7] {
        [
            ("ignored_not_snoopable_groups", self.not_snoopable_groups),
            ("ignored_untrusted_router_messages", self.untrusted_router_messages),
            ("ignored_group_limit", self.group_limit_refusals),
            ("ignored_unknown_port", self.unknown_port_messages),
            ("ignored_source_limit", self.source_limit_refusals),
            ("ignored_ssm_any_source_joins", self.ssm_any_source_joins),
            ("ignored_group_filter", self.filter_refusals),
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
    /// not empty.
    SendQuery { group: Option<A>, sources: Vec<A> },
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
}

/// A port's filter mode for a group (RFC 3376 6.2.1, RFC 3810 7.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    Include,
    Exclude,
}

impl FilterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Include => "include",
            Self::Exclude => "exclude",
        }
    }
}

/// Which of a group's sources a port gets: what the data path enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFilter<A> {
    /// Only these sources.
    Include(BTreeSet<A>),
    /// Every source but these; `Exclude({})` is any source.
    Exclude(BTreeSet<A>),
}

impl<A: Ord> SourceFilter<A> {
    /// Any source: an older host's join, or EXCLUDE {}.
    pub const fn any() -> Self {
        Self::Exclude(BTreeSet::new())
    }

    pub fn is_any(&self) -> bool {
        matches!(self, Self::Exclude(blocked) if blocked.is_empty())
    }

    pub fn wants(&self, source: &A) -> bool {
        match self {
            Self::Include(listed) => listed.contains(source),
            Self::Exclude(listed) => !listed.contains(source),
        }
    }

    /// The sources named: those forwarded (INCLUDE) or blocked (EXCLUDE).
    pub fn listed(&self) -> &BTreeSet<A> {
        match self {
            Self::Include(listed) | Self::Exclude(listed) => listed,
        }
    }
}

impl<A: fmt::Display> fmt::Display for SourceFilter<A> {
    /// "any source", "include S1,S2", "exclude S3".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mode, listed) = match self {
            Self::Exclude(listed) if listed.is_empty() => return write!(f, "any source"),
            Self::Include(listed) => ("include", listed),
            Self::Exclude(listed) => ("exclude", listed),
        };
        write!(f, "{mode} ")?;
        for (i, source) in listed.iter().enumerate() {
            write!(f, "{}{source}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// One port's membership of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<A> {
    /// When the membership ends unless refreshed: the group timer in
    /// EXCLUDE mode, the last source timer in INCLUDE mode.
    pub expires: Duration,
    pub mode: FilterMode,
    /// Source timers. INCLUDE: the sources wanted. EXCLUDE: sources asked
    /// for (timer running) and blocked ones (timer passed: not forwarded).
    pub sources: BTreeMap<A, Duration>,
    /// Lowest version heard, so an older host's presence is visible.
    pub version: u8,
    pub last_reporter: A,
    /// While set and in the future, leaves are ignored: hosts of a version
    /// that sends none are present (RFC 2236 4, IGMPv1), so a leave cannot
    /// mean they are gone.
    pub no_leave_host_until: Option<Duration>,
    /// While set and in the future a host of a version without source lists
    /// (IGMPv1/v2, MLDv1) is present: BLOCK records are ignored and TO_EX
    /// lists emptied, so the port keeps every source (RFC 3376 7.3.2, RFC 3810 8.3.2).
    pub older_host_until: Option<Duration>,
    /// A leave was heard and the last-member queries are running.
    pub leaving: bool,
    /// Static (configured): never aged, reports and leaves leave it as it is.
    pub permanent: bool,
    /// The group timer (EXCLUDE mode).
    group_timer: Duration,
    /// The member's next timer event: its key in [`Snooper`]'s expiry index.
    next_event: Duration,
    /// The filter last handed to the data path.
    filter: SourceFilter<A>,
    /// What the pinned map last got (a restart resumes from it).
    persisted: Persisted,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Persisted {
    expires: Duration,
    version: u8,
    leaving: bool,
}

impl<A: Family> Member<A> {
    fn new(version: u8, reporter: A, now: Duration) -> Self {
        Self {
            expires: now,
            mode: FilterMode::Include,
            sources: BTreeMap::new(),
            version,
            last_reporter: reporter,
            no_leave_host_until: None,
            older_host_until: None,
            leaving: false,
            permanent: false,
            group_timer: now,
            next_event: now,
            filter: SourceFilter::any(),
            persisted: Persisted::default(),
        }
    }

    /// The sources the port gets now.
    pub fn filter(&self, now: Duration) -> SourceFilter<A> {
        match self.mode {
            FilterMode::Include => SourceFilter::Include(self.sources.keys().copied().collect()),
            FilterMode::Exclude => {
                SourceFilter::Exclude(self.sources.iter().filter(|(_, t)| **t <= now).map(|(s, _)| *s).collect())
            }
        }
    }

    /// Sources asked for: timer running.
    fn requested(&self, now: Duration) -> BTreeSet<A> {
        self.sources.iter().filter(|(_, t)| **t > now).map(|(s, _)| *s).collect()
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortState {
    pub options: PortOptions,
    /// Learned router port (a query or PIM hello heard) until this time.
    pub router_until: Option<Duration>,
    /// Groups the port is a member of (kept so the group limit is O(1)).
    pub groups: usize,
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

/// What a heard query says beyond its group.
#[derive(Clone, Copy, Debug)]
struct HeardQuery<'a, A> {
    version: u8,
    max_response: Duration,
    announced: Option<Announced>,
    /// Group-and-source-specific: these sources only.
    sources: &'a [A],
    /// Routers suppress their timer updates (RFC 3376 4.1.5).
    suppress: bool,
}

/// A group record as the state machine reads it: IGMPv1/v2 and MLDv1
/// messages come as the records they stand for (RFC 3376 7.3.2).
#[derive(Clone, Copy, Debug)]
struct HeardRecord<'a, A> {
    kind: RecordType,
    sources: &'a [A],
    version: u8,
    reporter: A,
}

/// Group-specific and group-and-source-specific queries still to send
/// (RFC 3376 6.6.3): how many more of each.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingQueries<A> {
    group: u32,
    sources: BTreeMap<A, u32>,
    next_at: Duration,
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
    startup_queries_left: u32,
    /// The version of our queries: the configured one, or the lowest an
    /// older querier was heard speaking. It stays lowered: that querier falls
    /// silent once we win the election, not because it is gone.
    pub version: u8,
    /// When the elected querier's last general query was heard, to learn its
    /// interval when its queries do not announce one (IGMPv2).
    last_general_query: Option<Duration>,
    /// A querier counts as present from this time: its first query's max
    /// response time after it was sent, when hosts have answered it.
    present_from: Option<Duration>,
    /// After a restart with memberships resumed and no querier of our own:
    /// present until then, unless another querier is heard.
    resumed_until: Option<Duration>,
    /// The presence last emitted as [`Action::QuerierPresence`].
    present_announced: bool,
}

impl<A> QuerierState<A> {
    fn is_present(&self, now: Duration) -> bool {
        self.present_from.is_some_and(|from| from <= now)
            && (self.enabled || self.other.is_some() || self.resumed_until.is_some_and(|until| until > now))
    }
}

impl<A: Family> QuerierState<A> {
    /// Snoop queries: enabled, no other querier elected, and an address
    /// hosts accept queries from (MLD: link-local, none until the bridge has one).
    pub fn is_querier(&self) -> bool {
        self.enabled && self.other.is_none() && A::can_query_from(self.own_address)
    }
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
    /// Every member's next timer event, ordered, so timers cost O(log n)
    /// with 100k members.
    expiries: BTreeSet<(Duration, Group<A>, u32)>,
    /// Most sources a port keeps per group; more are refused. 0: no limit.
    max_sources: usize,
    ignored: IgnoredCounts,
    untrusted_routers: BTreeMap<u32, UntrustedRouter<A>>,
    /// Link-scope groups are snooped too (IPv6, `--snoop-ipv6-link-scope`).
    link_scope: bool,
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
            present_announced: false,
        };
        Self {
            configured: timers.clone(),
            timers,
            ports: BTreeMap::new(),
            groups: HashMap::new(),
            querier,
            pending_queries: BTreeMap::new(),
            expiries: BTreeSet::new(),
            max_sources: DEFAULT_MAX_SOURCES,
            ignored: IgnoredCounts::default(),
            untrusted_routers: BTreeMap::new(),
            link_scope: false,
        }
    }

    /// Most sources a port keeps per group (0: no limit).
    pub fn set_max_sources(&mut self, max: usize) {
        self.max_sources = max;
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

    /// Whether a querier is present, so that pruning is safe.
    pub fn querier_present(&self, now: Duration) -> bool {
        self.querier.is_present(now)
    }

    /// Memberships were resumed from a previous run: they are known, so a
    /// querier counts as present at once (and, with no querier of our own,
    /// for one other-querier-present interval unless another is heard).
    pub fn resume_querier_presence(&mut self, now: Duration) {
        self.querier.present_from = Some(now);
        self.querier.resumed_until = Some(now + self.timers.other_querier_present_interval);
    }

    /// Routers heard and ignored on untrusted ports, by port.
    pub fn untrusted_routers(&self) -> &BTreeMap<u32, UntrustedRouter<A>> {
        &self.untrusted_routers
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
        if group.addr.is_ssm() && sources.is_empty() {
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
            // TO_IN {} (RFC 3376 7.3.2).
            Message::Leave { group: addr } => {
                let version = A::RECORD_VERSION - 1;
                let heard = HeardRecord { kind: RecordType::ChangeToInclude, sources: &[], version, reporter };
                self.record(group(*addr), port, heard, now, &mut actions)
            }
            Message::RecordReport { records } => {
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
            Message::Query { version, group: addr, sources, suppress, max_response, announced } => {
                let specific = (!addr.is_unspecified()).then(|| group(*addr));
                let heard = HeardQuery {
                    version: *version,
                    max_response: *max_response,
                    announced: *announced,
                    sources,
                    suppress: *suppress,
                };
                self.query_heard(port, packet.source, specific, heard, now, &mut actions)
            }
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

    /// One group record (or an older host's report or leave, as the record
    /// it stands for) from `port`: the router-side rules of RFC 3376 6.4
    /// (RFC 3810 7.4), per port. Queries sent for it lower the queried
    /// timers to the last-member query time (RFC 3376 6.6.1).
    fn record(
        &mut self,
        group: Group<A>,
        port: u32,
        heard: HeardRecord<'_, A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        use RecordType::*;
        if !group.addr.is_snoopable(self.link_scope) {
            self.ignored.not_snoopable_groups += 1;
            return;
        }
        let HeardRecord { kind, sources, version, reporter } = heard;
        let excludes = matches!(kind, ModeIsExclude | ChangeToExclude);
        if excludes && group.addr.is_ssm() {
            self.ignored.ssm_any_source_joins += 1;
            return;
        }
        let gmi = now + self.timers.group_membership_interval;
        let lmqt = now + self.timers.last_member_query_time();
        let fast_leave = self.ports.get(&port).is_some_and(|p| p.options.fast_leave);
        let member = self.groups.get(&group).and_then(|ports| ports.get(&port));
        // A static membership is the administrator's: hosts change nothing.
        if member.is_some_and(|m| m.permanent) {
            return;
        }
        let is_member = member.is_some();
        if !is_member {
            // No state is INCLUDE {}: only records that want something add it.
            let wants = excludes || (!sources.is_empty() && kind != BlockOldSources);
            if !wants {
                return;
            }
            if let Err(why) = self.admit(port, group.addr) {
                actions.push(Action::JoinRefused { group, port, why });
                return;
            }
            self.groups.entry(group).or_default().insert(port, Member::new(version, reporter, now));
        }
        let max_sources = self.max_sources;
        let member = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)).expect("admitted above");
        let older_host = member.older_host_until.is_some_and(|until| until > now);
        if version < A::RECORD_VERSION {
            member.older_host_until = Some(gmi);
            if A::sends_no_leaves(version) {
                member.no_leave_host_until = Some(gmi);
            }
        }
        member.version = member.version.min(version);
        member.last_reporter = reporter;
        // An older host is present: it wants every source (RFC 3376 7.3.2).
        let sources: BTreeSet<A> = match kind {
            BlockOldSources if older_host => return self.settle(group, port, !is_member, now, actions),
            ChangeToExclude if older_host => BTreeSet::new(),
            _ => sources.iter().copied().collect(),
        };
        let mut refused = 0;
        let mut set = |member: &mut Member<A>, source: A, timer: Duration| {
            if member.sources.len() >= max_sources && max_sources > 0 && !member.sources.contains_key(&source) {
                refused += 1;
            } else {
                member.sources.insert(source, timer);
            }
        };
        let mut query_sources = BTreeSet::new();
        let mut query_group = false;
        match (member.mode, kind) {
            (FilterMode::Include, ModeIsInclude | AllowNewSources | ChangeToInclude) => {
                if kind == ChangeToInclude {
                    query_sources = member.sources.keys().filter(|s| !sources.contains(s)).copied().collect();
                }
                sources.iter().for_each(|source| set(member, *source, gmi));
            }
            (FilterMode::Include, ModeIsExclude | ChangeToExclude) => {
                // EXCLUDE(A*B, B-A): requested ones keep their timers, new ones are blocked.
                let old = std::mem::take(&mut member.sources);
                for source in &sources {
                    set(member, *source, old.get(source).copied().unwrap_or(Duration::ZERO));
                }
                if kind == ChangeToExclude {
                    query_sources = old.keys().filter(|s| sources.contains(s)).copied().collect();
                }
                member.mode = FilterMode::Exclude;
                member.group_timer = gmi;
            }
            (FilterMode::Include, BlockOldSources) => {
                query_sources = sources.iter().filter(|s| member.sources.contains_key(s)).copied().collect();
            }
            (FilterMode::Exclude, ModeIsInclude | AllowNewSources | ChangeToInclude) => {
                if kind == ChangeToInclude {
                    query_sources = member.requested(now).into_iter().filter(|s| !sources.contains(s)).collect();
                    query_group = true;
                }
                sources.iter().for_each(|source| set(member, *source, gmi));
            }
            (FilterMode::Exclude, ModeIsExclude | ChangeToExclude) => {
                // EXCLUDE(A-Y, Y*A): new sources get the membership interval
                // (IS_EX) or the group timer (TO_EX); unnamed ones go.
                let fresh = if kind == ModeIsExclude { gmi } else { member.group_timer };
                let old = std::mem::take(&mut member.sources);
                for source in &sources {
                    set(member, *source, old.get(source).copied().unwrap_or(fresh));
                }
                if kind == ChangeToExclude {
                    query_sources = member.requested(now);
                }
                member.group_timer = gmi;
            }
            (FilterMode::Exclude, BlockOldSources) => {
                // EXCLUDE(X+(A-Y), Y): new sources get the group timer; ask about A-Y.
                let group_timer = member.group_timer;
                for source in &sources {
                    if !member.sources.contains_key(source) {
                        set(member, *source, group_timer);
                    }
                }
                let requested = member.requested(now);
                query_sources = sources.iter().filter(|s| requested.contains(s)).copied().collect();
            }
        }
        self.ignored.source_limit_refusals += refused;
        let member = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)).expect("admitted above");
        // A record that raises timers ends a last-member round; one that asks, starts one.
        if kind != BlockOldSources && !sources.is_empty() || excludes {
            member.leaving = false;
        }
        if query_group && member.no_leave_host_until.is_some_and(|until| until > now) {
            query_group = false;
        }
        if query_group {
            member.group_timer = if fast_leave { now } else { member.group_timer.min(lmqt) };
            member.leaving = true;
        }
        for source in &query_sources {
            if let Some(timer) = member.sources.get_mut(source) {
                // Fast leave: the one host behind the port said so; no need to ask.
                *timer = if fast_leave { Duration::ZERO } else { (*timer).min(lmqt) };
            }
        }
        // A round runs, or fast leave ended the membership: either way it left.
        let emptied = member.mode == FilterMode::Include && member.sources.values().all(|t| *t <= now);
        if !query_sources.is_empty() && (!fast_leave || emptied) {
            member.leaving = true;
        }
        let answered: Vec<A> =
            if matches!(kind, BlockOldSources) { Vec::new() } else { sources.iter().copied().collect() };
        if let Some(pending) = self.pending_queries.get_mut(&group) {
            for source in &answered {
                pending.sources.remove(source);
            }
            if !query_group && excludes {
                pending.group = 0;
            }
        }
        self.settle(group, port, !is_member, now, actions);
        if !fast_leave && self.querier.is_querier() && (query_group || !query_sources.is_empty()) {
            self.query_now(group, query_group, query_sources, now, actions);
        }
    }

    /// Starts a port's membership of a new group unless the port's filter
    /// refuses the group or its group limit is reached (counted).
    fn admit(&mut self, port: u32, group: A) -> Result<(), Refusal> {
        if let Some(state) = self.ports.get_mut(&port) {
            if !state.filter.admits(group.ip()) {
                self.ignored.filter_refusals += 1;
                state.refused_by_filter += 1;
                return Err(Refusal::Filter);
            }
            if state.options.max_groups > 0 && state.groups >= state.options.max_groups {
                self.ignored.group_limit_refusals += 1;
                state.refused_by_limit += 1;
                return Err(Refusal::GroupLimit);
            }
            state.groups += 1;
        }
        Ok(())
    }

    /// Sends the first of the last-member queries for `group` (and the
    /// sources in `sources`) now; the rest follow from [`Snooper::poll`].
    fn query_now(
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

    /// After a change to `port`'s membership of `group`: a group timer run
    /// out turns EXCLUDE into INCLUDE (RFC 3376 6.5), sources past their
    /// timers go, a membership left with nothing is removed; the expiry index
    /// is brought up to date and the data path told what changed.
    fn settle(&mut self, group: Group<A>, port: u32, new: bool, now: Duration, actions: &mut Vec<Action<A>>) {
        let Some(member) = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)) else { return };
        if member.mode == FilterMode::Exclude && member.group_timer <= now {
            member.mode = FilterMode::Include;
            member.sources.retain(|_, timer| *timer > now);
        }
        if member.mode == FilterMode::Include {
            member.sources.retain(|_, timer| *timer > now);
            if member.sources.is_empty() {
                if new {
                    // Refused before it began (all its sources over the limit).
                    self.forget_member(group, port);
                } else {
                    let reason = if member.leaving { RemoveReason::Left } else { RemoveReason::Expired };
                    self.remove_member(group, port, reason, actions);
                }
                return;
            }
        }
        member.expires = match member.mode {
            FilterMode::Exclude => member.group_timer,
            FilterMode::Include => member.sources.values().copied().max().unwrap_or(now),
        };
        let running = member.sources.values().copied().filter(|timer| *timer > now).min();
        let next_event = match member.mode {
            FilterMode::Exclude => running.map_or(member.group_timer, |t| t.min(member.group_timer)),
            FilterMode::Include => running.unwrap_or(member.expires),
        };
        self.expiries.remove(&(member.next_event, group, port));
        if next_event != NEVER {
            self.expiries.insert((next_event, group, port));
        }
        member.next_event = next_event;
        let filter = member.filter(now);
        let (version, expires, leaving) = (member.version, member.expires, member.leaving);
        if new {
            member.persisted = Persisted { expires, version, leaving };
            if !filter.is_any() {
                member.filter = filter.clone();
                actions.push(Action::SetSources { group, port, filter });
            }
            actions.push(Action::AddMember { group, port, version, expires });
            // After the member: the group must not be pruned for its first
            // member before that member's entry exists.
            if self.groups[&group].len() == 1 {
                actions.push(Action::RegisterGroup { group });
            }
            return;
        }
        if filter != member.filter {
            member.filter = filter.clone();
            actions.push(Action::SetSources { group, port, filter });
        }
        let persisted = member.persisted;
        // Refreshes reach the pinned map about once a query interval.
        let refresh_slack = self.timers.query_interval;
        if version != persisted.version
            || leaving != persisted.leaving
            || expires < persisted.expires
            || expires >= persisted.expires.saturating_add(refresh_slack)
        {
            member.persisted = Persisted { expires, version, leaving };
            actions.push(Action::RefreshMember { group, port, version, expires, leaving });
        }
        // Nobody on this group is leaving any more: stop its last-member queries.
        if !self.pending_queries.is_empty() && self.groups[&group].values().all(|m| !m.leaving) {
            self.pending_queries.remove(&group);
        }
    }

    fn query_heard(
        &mut self,
        port: u32,
        source: A,
        group: Option<Group<A>>,
        heard: HeardQuery<'_, A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        // An unspecified source is another snooping switch, not a router,
        // and takes no part in the election (RFC 4541 2.1.1).
        if source.is_unspecified() {
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
        let beats_own = !self.querier.enabled || own.is_unspecified() || !A::can_query_from(own) || source < own;
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

    fn learn_router_port(&mut self, port: u32, until: Duration, now: Duration, actions: &mut Vec<Action<A>>) {
        if let Some(state) = self.ports.get_mut(&port) {
            let was_router = state.is_router(now);
            state.router_until = Some(until.max(state.router_until.unwrap_or_default()));
            if !was_router {
                actions.push(Action::SetRouterPort { port, is_router: true });
            }
        }
    }

    fn forget_router_port(&mut self, port: u32, now: Duration, actions: &mut Vec<Action<A>>) {
        if let Some(state) = self.ports.get_mut(&port) {
            let was_router = state.is_router(now);
            state.router_until = None;
            if was_router && !state.is_router(now) {
                actions.push(Action::SetRouterPort { port, is_router: false });
            }
        }
    }

    fn remove_member(&mut self, group: Group<A>, port: u32, reason: RemoveReason, actions: &mut Vec<Action<A>>) {
        if self.forget_member(group, port) {
            actions.push(Action::RemoveMember { group, port, reason });
            if !self.groups.contains_key(&group) {
                actions.push(Action::UnregisterGroup { group });
            }
        }
    }

    /// Drops a membership from the state; whether there was one.
    fn forget_member(&mut self, group: Group<A>, port: u32) -> bool {
        let Some(ports) = self.groups.get_mut(&group) else { return false };
        let Some(member) = ports.remove(&port) else { return false };
        self.expiries.remove(&(member.next_event, group, port));
        if let Some(state) = self.ports.get_mut(&port) {
            state.groups -= 1;
        }
        if ports.is_empty() {
            self.groups.remove(&group);
            self.pending_queries.remove(&group);
        }
        true
    }

    /// Fires every timer due at `now`.
    pub fn poll(&mut self, now: Duration) -> Vec<Action<A>> {
        let mut actions = Vec::new();

        while let Some(&(at, group, port)) = self.expiries.first() {
            if at > now {
                break;
            }
            // Never loop on an index entry: settling re-files the member.
            self.expiries.remove(&(at, group, port));
            let current =
                self.groups.get(&group).and_then(|ports| ports.get(&port)).is_some_and(|m| m.next_event == at);
            if current {
                self.settle(group, port, false, now, &mut actions);
            }
        }

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

        if let Some((_, until)) = self.querier.other {
            if until <= now {
                self.querier.other = None;
                self.querier.last_general_query = None;
                self.timers = self.configured.clone();
                if !self.querier.enabled {
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
            actions.push(Action::SendQuery { group: None, sources: Vec::new() });
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

        let querier = &mut self.querier;
        if querier.resumed_until.is_some_and(|until| until <= now) {
            querier.resumed_until = None;
            if !querier.enabled && querier.other.is_none() {
                querier.present_from = None;
            }
        }
        let present = self.querier.is_present(now);
        if present != self.querier.present_announced {
            self.querier.present_announced = present;
            actions.push(Action::QuerierPresence { present });
        }
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
        let presence =
            if self.querier.present_announced { self.querier.resumed_until } else { self.querier.present_from };
        members.chain(routers).chain(querier).chain(group_queries).chain(presence).min()
    }

    /// Groups the port is a member of.
    pub fn port_group_count(&self, port: u32) -> usize {
        self.ports.get(&port).map_or(0, |p| p.groups)
    }

    /// The member ports of `group` (used by the tests).
    #[cfg(test)]
    fn group_ports(&self, group: Group<A>) -> BTreeSet<u32> {
        self.groups.get(&group).map(|p| p.keys().copied().collect()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    type Packet = crate::proto::Packet<Ipv4Addr>;
    type Message = crate::proto::Message<Ipv4Addr>;

    fn g(addr: Ipv4Addr) -> Group<Ipv4Addr> {
        Group::untagged(addr)
    }

    const G1: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
    const G2: Ipv4Addr = Ipv4Addr::new(239, 129, 1, 1);
    const H1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn pkt(source: Ipv4Addr, message: Message) -> Packet {
        Packet { source, destination: Ipv4Addr::UNSPECIFIED, message }
    }

    fn v2_report(group: Ipv4Addr) -> Packet {
        pkt(H1, Message::Report { version: 2, group })
    }

    fn record(record_type: RecordType, group: Ipv4Addr, source_count: u8) -> Packet {
        let sources = (0..source_count).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
        pkt(H1, Message::RecordReport { records: vec![crate::proto::GroupRecord { record_type, group, sources }] })
    }

    fn query(source: Ipv4Addr, group: Ipv4Addr) -> Packet {
        pkt(
            source,
            Message::Query {
                version: 3,
                group,
                sources: vec![],
                suppress: false,
                max_response: secs(10),
                announced: None,
            },
        )
    }

    /// The actions but the querier's presence (tests of other things).
    fn but_presence(actions: Vec<Action<Ipv4Addr>>) -> Vec<Action<Ipv4Addr>> {
        actions.into_iter().filter(|a| !matches!(a, Action::QuerierPresence { .. })).collect()
    }

    const TRUSTED: PortOptions = PortOptions { fast_leave: false, static_router: false, trusted: true, max_groups: 0 };

    /// Querier off unless a test needs it, two trusted ports.
    fn snooper(querier: bool) -> Snooper<Ipv4Addr> {
        let mut s = Snooper::new(Timers::default(), querier, Ipv4Addr::new(10, 0, 0, 1), secs(0));
        s.add_port(1, TRUSTED);
        s.add_port(2, TRUSTED);
        s
    }

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
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![source] }), "{actions:?}");
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

    /// The same machine over IPv6: MLD's differences from IGMP.
    mod mld {
        use std::net::Ipv6Addr;

        use super::*;

        type Packet = crate::proto::Packet<Ipv6Addr>;
        type Message = crate::proto::Message<Ipv6Addr>;

        const OWN: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);
        const HOST: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x20);
        const GROUP: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x1234);

        fn mld_snooper(own: Ipv6Addr) -> Snooper<Ipv6Addr> {
            let mut s = Snooper::new(Timers::default(), true, own, secs(0));
            s.add_port(1, TRUSTED);
            s.add_port(2, TRUSTED);
            s
        }

        fn from(source: Ipv6Addr, message: Message) -> Packet {
            Packet { source, destination: Ipv6Addr::UNSPECIFIED, message }
        }

        #[test]
        fn v1_report_joins_and_done_runs_the_last_listener_queries() {
            let mut s = mld_snooper(OWN);
            s.poll(secs(0));
            let actions = s.handle(1, 0, &from(HOST, Message::Report { version: 1, group: GROUP }), secs(1));
            assert!(actions.iter().any(|a| matches!(a, Action::AddMember { port: 1, version: 1, .. })));
            let actions = s.handle(1, 0, &from(HOST, Message::Leave { group: GROUP }), secs(2));
            assert!(actions.iter().any(|a| matches!(a, Action::RefreshMember { leaving: true, .. })));
            assert!(actions.contains(&Action::SendQuery { group: Some(GROUP), sources: vec![] }), "{actions:?}");
            let removed = s.poll(secs(4));
            assert!(removed.iter().any(|a| matches!(a, Action::RemoveMember { reason: RemoveReason::Left, .. })));
        }

        #[test]
        fn a_report_sent_during_dad_from_the_unspecified_address_joins() {
            let mut s = mld_snooper(OWN);
            let report = from(Ipv6Addr::UNSPECIFIED, Message::Report { version: 1, group: GROUP });
            assert!(!s.handle(1, 0, &report, secs(0)).is_empty());
            assert_eq!(s.groups().len(), 1);
        }

        #[test]
        fn all_nodes_and_link_scope_groups_are_flooded_unless_asked_for() {
            let mut s = mld_snooper(OWN);
            let solicited: Ipv6Addr = "ff02::1:ff00:20".parse().unwrap();
            for group in [solicited, "ff02::1".parse().unwrap(), "ff02::fb".parse().unwrap()] {
                assert!(s.handle(1, 0, &from(HOST, Message::Report { version: 1, group }), secs(0)).is_empty());
            }
            s.set_link_scope_snooped(true);
            assert!(!s.handle(1, 0, &from(HOST, Message::Report { version: 1, group: solicited }), secs(0)).is_empty());
            let all_nodes = Message::Report { version: 1, group: "ff02::1".parse().unwrap() };
            assert!(s.handle(1, 0, &from(HOST, all_nodes), secs(0)).is_empty(), "ff02::1 always floods");
        }

        #[test]
        fn the_lowest_address_wins_the_election() {
            let mut s = mld_snooper(OWN);
            s.poll(secs(0));
            let query = |source| {
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
            };
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
            assert!(s.poll(secs(31)).contains(&Action::SendQuery { group: None, sources: vec![] }));
        }
    }

    const S1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
    const S2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);
    const S3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

    fn records(record_type: RecordType, group: Ipv4Addr, sources: &[Ipv4Addr]) -> Packet {
        let record = crate::proto::GroupRecord { record_type, group, sources: sources.to_vec() };
        pkt(H1, Message::RecordReport { records: vec![record] })
    }

    fn source_query(source: Ipv4Addr, group: Ipv4Addr, sources: &[Ipv4Addr], suppress: bool) -> Packet {
        let sources = sources.to_vec();
        pkt(source, Message::Query { version: 3, group, sources, suppress, max_response: secs(1), announced: None })
    }

    fn filter_of(s: &Snooper<Ipv4Addr>, group: Ipv4Addr, port: u32, now: Duration) -> Option<SourceFilter<Ipv4Addr>> {
        Some(s.groups().get(&g(group))?.get(&port)?.filter(now))
    }

    fn include(sources: &[Ipv4Addr]) -> Option<SourceFilter<Ipv4Addr>> {
        Some(SourceFilter::Include(sources.iter().copied().collect()))
    }

    #[test]
    fn a_block_and_another_queriers_source_query_keep_the_sources_still_wanted() {
        // The issue's scenario: an external querier in charge; port 1 wants
        // S1 and S2, blocks S1, and the router asks Q(G,{S1}).
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 2);
        s.handle(2, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(0));
        s.handle(1, 0, &records(RecordType::AllowNewSources, G1, &[S1, S2]), secs(1));
        s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1]), secs(2));
        s.handle(2, 0, &source_query(router, G1, &[S1], false), secs(2));
        assert_eq!(filter_of(&s, G1, 1, secs(2)), include(&[S1, S2]), "S1 is asked about, not gone yet");
        s.poll(secs(30));
        assert_eq!(members(&s, G1), [1], "port 1 still wants S2 and was pruned");
        assert_eq!(filter_of(&s, G1, 1, secs(30)), include(&[S2]));
    }

    #[test]
    fn a_source_query_lowers_only_its_sources_and_not_with_the_s_flag() {
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 2);
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S1, S2]), secs(0));
        s.handle(2, 0, &source_query(router, G1, &[S1], true), secs(1));
        s.poll(secs(10));
        assert_eq!(filter_of(&s, G1, 1, secs(10)), include(&[S1, S2]), "the S flag lowered a timer");
        s.handle(2, 0, &source_query(router, G1, &[S1], false), secs(10));
        s.poll(secs(13));
        assert_eq!(filter_of(&s, G1, 1, secs(13)), include(&[S2]));
        // Q(G) lowers the group timer, which INCLUDE mode has not.
        s.handle(2, 0, &source_query(router, G1, &[], false), secs(14));
        s.poll(secs(20));
        assert_eq!(filter_of(&s, G1, 1, secs(20)), include(&[S2]));
    }

    #[test]
    fn exclude_mode_forwards_all_but_the_blocked_sources_and_falls_back_to_include() {
        let mut s = snooper(false);
        let actions = s.handle(1, 0, &records(RecordType::ChangeToExclude, G1, &[S3]), secs(0));
        let blocked = SourceFilter::Exclude([S3].into());
        assert_eq!(actions[0], Action::SetSources { group: g(G1), port: 1, filter: blocked.clone() }, "{actions:?}");
        assert!(matches!(actions[1], Action::AddMember { .. }), "the filter goes first: {actions:?}");
        assert!(blocked.wants(&S1) && !blocked.wants(&S3));
        // ALLOW(S1) keeps S1 asked for past the group timer: EXCLUDE ends in INCLUDE {S1}.
        s.handle(1, 0, &records(RecordType::AllowNewSources, G1, &[S1]), secs(100));
        s.poll(secs(261));
        assert_eq!(filter_of(&s, G1, 1, secs(261)), include(&[S1]));
        s.poll(secs(400));
        assert!(members(&s, G1).is_empty());
    }

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
    fn an_older_host_keeps_every_source_and_ssm_takes_only_source_lists() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        s.handle(1, 0, &records(RecordType::ChangeToExclude, G1, &[S3]), secs(1));
        s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1]), secs(1));
        assert!(filter_of(&s, G1, 1, secs(1)).unwrap().is_any(), "a v2 host is there: any source");

        let ssm = Ipv4Addr::new(232, 1, 1, 1);
        assert!(s.handle(2, 0, &v2_report(ssm), secs(0)).is_empty());
        assert!(s.handle(2, 0, &records(RecordType::ModeIsExclude, ssm, &[]), secs(0)).is_empty());
        assert_eq!(s.ignored().ssm_any_source_joins, 2);
        s.handle(2, 0, &records(RecordType::ModeIsInclude, ssm, &[S1]), secs(0));
        assert_eq!(filter_of(&s, ssm, 2, secs(0)), include(&[S1]));
    }

    #[test]
    fn sources_over_the_limit_are_refused_and_counted() {
        let mut s = snooper(false);
        s.set_max_sources(4);
        let many: Vec<Ipv4Addr> = (0..10).map(|i| Ipv4Addr::new(10, 2, 0, i)).collect();
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &many), secs(0));
        assert_eq!(s.groups()[&g(G1)][&1].sources.len(), 4);
        assert_eq!(s.ignored().source_limit_refusals, 6);
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &many[..2]), secs(1));
        assert_eq!(s.ignored().source_limit_refusals, 6, "refreshing a kept source is no refusal");
    }

    fn members(s: &Snooper<Ipv4Addr>, group: Ipv4Addr) -> Vec<u32> {
        s.group_ports(g(group)).into_iter().collect()
    }

    #[test]
    fn report_adds_member_and_registers_group() {
        let mut s = snooper(false);
        let actions = s.handle(1, 0, &v2_report(G1), secs(1));
        assert_eq!(
            actions,
            [
                Action::AddMember { group: g(G1), port: 1, version: 2, expires: secs(261) },
                Action::RegisterGroup { group: g(G1) }
            ]
        );
        // A second port only adds a member.
        let actions = s.handle(2, 0, &v2_report(G1), secs(2));
        assert_eq!(actions, [Action::AddMember { group: g(G1), port: 2, version: 2, expires: secs(262) }]);
        assert_eq!(members(&s, G1), [1, 2]);
    }

    #[test]
    fn membership_expires_after_group_membership_interval() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        assert!(s.poll(secs(259)).is_empty());
        assert_eq!(s.next_deadline(), Some(secs(260)));
        let actions = s.poll(secs(260));
        assert_eq!(
            actions,
            [
                Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Expired },
                Action::UnregisterGroup { group: g(G1) }
            ]
        );
        assert!(s.groups().is_empty());
    }

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

    #[test]
    fn v3_to_include_empty_is_a_leave_and_fast_leave_removes_at_once() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        s.handle(3, 0, &record(RecordType::ChangeToExclude, G1, 0), secs(0));
        s.handle(1, 0, &record(RecordType::ModeIsExclude, G1, 0), secs(0));
        assert_eq!(members(&s, G1), [1, 3]);
        let actions = s.handle(3, 0, &record(RecordType::ChangeToInclude, G1, 0), secs(5));
        assert_eq!(actions, [Action::RemoveMember { group: g(G1), port: 3, reason: RemoveReason::Left }]);
        // Not querier and no fast leave: shortened to the last member query time.
        s.handle(1, 0, &record(RecordType::ChangeToInclude, G1, 0), secs(5));
        assert_eq!(s.poll(secs(7)).len(), 2); // remove + unregister
        assert!(s.groups().is_empty());
    }

    #[test]
    fn a_block_removes_only_the_blocked_sources_at_once_with_fast_leave() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        s.handle(3, 0, &record(RecordType::ModeIsInclude, G1, 2), secs(0));
        s.handle(3, 0, &record(RecordType::AllowNewSources, G2, 1), secs(0));
        assert_eq!(members(&s, G1), [3]);
        assert_eq!(members(&s, G2), [3]);
        let actions = s.handle(3, 0, &record(RecordType::BlockOldSources, G1, 1), secs(1));
        let kept = SourceFilter::Include([Ipv4Addr::new(10, 1, 0, 1)].into());
        assert_eq!(actions, [Action::SetSources { group: g(G1), port: 3, filter: kept }]);
        s.poll(secs(3));
        assert_eq!(members(&s, G1), [3], "the other source is still wanted");
        let actions = s.handle(3, 0, &record(RecordType::BlockOldSources, G1, 2), secs(4));
        assert!(actions.contains(&Action::RemoveMember { group: g(G1), port: 3, reason: RemoveReason::Left }));
    }

    #[test]
    fn v1_host_present_ignores_leaves() {
        let mut s = snooper(false);
        s.handle(1, 0, &pkt(H1, Message::Report { version: 1, group: G1 }), secs(0));
        s.handle(1, 0, &v2_report(G1), secs(1));
        s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(2));
        assert!(s.poll(secs(10)).is_empty());
        assert_eq!(s.groups()[&g(G1)][&1].version, 1);
    }

    #[test]
    fn link_local_and_unicast_groups_are_not_tracked() {
        let mut s = snooper(false);
        assert!(s.handle(1, 0, &v2_report(Ipv4Addr::new(224, 0, 0, 251)), secs(0)).is_empty());
        assert!(s.handle(1, 0, &v2_report(Ipv4Addr::new(10, 1, 1, 1)), secs(0)).is_empty());
        assert!(s.groups().is_empty());
    }

    #[test]
    fn querier_startup_then_regular_interval() {
        let mut s = snooper(true);
        let t = Timers::default();
        assert_eq!(s.poll(secs(0)), [Action::SendQuery { group: None, sources: vec![] }]);
        assert_eq!(s.poll(t.query_response_interval), [Action::QuerierPresence { present: true }]);
        assert_eq!(s.next_deadline(), Some(t.startup_query_interval));
        assert_eq!(s.poll(t.startup_query_interval), [Action::SendQuery { group: None, sources: vec![] }]);
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
        assert!(actions.contains(&Action::SendQuery { group: None, sources: vec![] }));
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
        assert_eq!(s.poll(secs(3)), [Action::SendQuery { group: None, sources: vec![] }]);
        // Without an address we never win.
        s.handle(2, 0, &query(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::UNSPECIFIED), secs(4));
        assert!(s.set_own_address(Ipv4Addr::UNSPECIFIED, secs(5)).is_empty());
        assert!(!s.querier().is_querier());
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
    fn a_restored_member_that_was_leaving_gets_only_the_last_member_round() {
        let mut s = snooper(true);
        s.restore_member(g(G1), 1, 3, true, SourceFilter::any(), secs(100));
        s.restore_member(g(G2), 2, 3, false, SourceFilter::any(), secs(100));
        // Queried for at once, and gone after 2 x 1 s unless a host answers.
        let actions = s.poll(secs(100));
        assert!(actions.contains(&Action::SendQuery { group: Some(G1), sources: vec![] }), "{actions:?}");
        assert!(s.groups()[&g(G1)][&1].leaving);
        let actions = s.poll(secs(102));
        assert!(actions.contains(&Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Left }));
        assert_eq!(members(&s, G2), [2], "the other keeps its full interval");
    }

    fn v2_query(source: Ipv4Addr) -> Packet {
        pkt(
            source,
            Message::Query {
                sources: vec![],
                suppress: false,
                version: 2,
                group: Ipv4Addr::UNSPECIFIED,
                max_response: secs(10),
                announced: None,
            },
        )
    }

    fn v3_query_announcing(source: Ipv4Addr, robustness: u8, interval: u64) -> Packet {
        let announced = Some(Announced { robustness, query_interval: secs(interval) });
        pkt(
            source,
            Message::Query {
                sources: vec![],
                suppress: false,
                version: 3,
                group: Ipv4Addr::UNSPECIFIED,
                max_response: secs(10),
                announced,
            },
        )
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

    #[test]
    fn restored_members_get_a_full_interval() {
        let mut s = snooper(false);
        s.restore_member(g(G1), 2, 3, false, SourceFilter::any(), secs(100));
        assert_eq!(members(&s, G1), [2]);
        assert!(s.poll(secs(359)).is_empty());
        assert_eq!(s.poll(secs(360)).len(), 2);
    }
}

/// Fuzzing the state machine with proptest: random messages on random ports
/// at increasing times. It must never panic and its invariants must hold.
#[cfg(test)]
mod fuzz {
    use std::net::Ipv4Addr;

    use proptest::prelude::*;

    use super::*;
    use crate::proto::Packet;

    type Message = crate::proto::Message<Ipv4Addr>;

    fn message() -> impl Strategy<Value = Message> {
        let group = (0u8..4).prop_map(|i| Ipv4Addr::new(239, 0, 0, i));
        let record =
            (0usize..6, group.clone(), 0u8..3).prop_map(|(t, group, source_count)| crate::proto::GroupRecord {
                record_type: [
                    RecordType::ModeIsInclude,
                    RecordType::ModeIsExclude,
                    RecordType::ChangeToInclude,
                    RecordType::ChangeToExclude,
                    RecordType::AllowNewSources,
                    RecordType::BlockOldSources,
                ][t],
                group,
                sources: (0..source_count).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect(),
            });
        prop_oneof![
            (1u8..=2, group.clone()).prop_map(|(version, group)| Message::Report { version, group }),
            group.clone().prop_map(|group| Message::Leave { group }),
            proptest::collection::vec(record, 0..4).prop_map(|records| Message::RecordReport { records }),
            (prop_oneof![Just(Ipv4Addr::UNSPECIFIED), group], 0u64..3).prop_map(|(group, s)| Message::Query {
                sources: vec![],
                suppress: false,
                version: 3,
                group,
                max_response: Duration::from_secs(s),
                announced: None,
            }),
            Just(Message::PimHello),
            (0u64..30).prop_map(|s| Message::MrdAdvertisement { interval: Duration::from_secs(s) }),
            Just(Message::MrdTermination),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        #[test]
        fn random_traffic_keeps_invariants(
            steps in proptest::collection::vec((0u32..5, any::<[u8; 4]>(), message(), 0u64..40_000), 1..200),
        ) {
            let timers = Timers::derived(2, Duration::from_secs(10), Duration::from_secs(2));
            let mut s = Snooper::new(timers, true, Ipv4Addr::new(10, 0, 0, 5), Duration::ZERO);
            for port in 0..4 {
                s.add_port(port, PortOptions { fast_leave: port == 1, trusted: port != 2, max_groups: 3, ..Default::default() });
            }
            let mut now = Duration::ZERO;
            for (port, source, message, advance_ms) in steps {
                now += Duration::from_millis(advance_ms);
                s.poll(now);
                let packet = Packet { source: Ipv4Addr::from(source), destination: Ipv4Addr::UNSPECIFIED, message };
                s.handle(port, 0, &packet, now);
                // No group without member ports; no port over its limit;
                // after a poll nothing is overdue.
                prop_assert!(s.groups().values().all(|ports| !ports.is_empty()));
                prop_assert!((0..4).all(|p| s.port_group_count(p) <= 3));
                s.poll(now);
                prop_assert!(s.next_deadline().is_none_or(|d| d > now));
                prop_assert!(s.groups().values().all(|ports| ports.keys().all(|p| *p < 4)));
                let members: usize = s.groups().values().map(|ports| ports.len()).sum();
                prop_assert_eq!(members, s.expiries.len(), "the expiry index matches the members");
                for p in 0..4 {
                    let counted = s.groups().values().filter(|ports| ports.contains_key(&p)).count();
                    prop_assert_eq!(s.port_group_count(p), counted, "the per-port group count is exact");
                }
            }
        }
    }
}
