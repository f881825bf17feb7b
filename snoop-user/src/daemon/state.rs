//! The daemon as a step function: [`Daemon::step`] takes one [`Input`] and
//! the time, changes the state (the VLAN contexts, the ports, the bridge as
//! last seen), and returns the [`Effect`]s for the runner to carry out. It
//! also notes what the change touched ([`Dirty`]), so the projection of the
//! state into the data path's maps is made for just that. Nothing here
//! does I/O: replayed inputs give the same effects and the same maps,
//! without root (the scenario tests).
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use log::Level;
use snoop_common::{MEMBER_SOURCES_INCLUDE, VLAN_NONE};

use super::{
    event::{BridgeView, Effect, Input, Pinned, PinnedMember, QuerySources},
    project::Dirty,
    vlan::{Actions, HeardFrom, Snooped, VlanContext},
};
use crate::{
    bridge::{Port as BridgePort, PortPolicy, VlanConfig},
    control::Change,
    membership::{Action, Group, PortOptions, RemoveReason, Snooper, SourceFilter, StaticError},
    port_groups::{GroupFilter, StaticGroup},
    proto::{QuerySource, QueryTimers},
    settings::{Forwarding, Live, RunConfig, Start},
    snapshot::{Event, EventKind},
    stats::{ControllerCounter, Protocol, Stats},
};

/// The bridge snoop runs on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BridgeId {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// A port of the bridge that carries snoop's programs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Port {
    pub name: String,
    /// What the bridge decides for it (redirect decides the same), and
    /// what else runs on its hooks.
    pub policy: PortPolicy,
    /// Its options and group filter, resolved once from the settings and
    /// the bridge's per-port snooping settings.
    pub options: PortOptions,
    pub filter: GroupFilter,
    /// Copies may be handed straight to its veth peer: another namespace,
    /// no qdisc, nothing on its egress hook.
    pub peer: bool,
    /// Control frames from it the controller dropped as malformed.
    pub malformed: u64,
}

impl Port {
    /// What `show ports` notes about the port.
    pub fn note(&self, redirect: bool) -> String {
        let mut notes = Vec::new();
        if let Some(why) = self.policy.bridge_path() {
            notes.push(if redirect { format!("{why}: bridge path") } else { why.to_owned() });
        }
        if self.policy.filters.egress > 0 || self.policy.nft_egress {
            notes.push("filters on its egress: every copy passes them".to_owned());
        }
        notes.join("; ")
    }
}

/// How group traffic is forwarded now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForwardingState {
    /// Redirect (the fast path) is in effect.
    pub redirect: bool,
    /// Why not, if not.
    pub why: Option<&'static str>,
}

/// Why a client's change was not made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChangeError {
    #[error("{port} is not a port of {bridge}")]
    NotAPort { port: String, bridge: String },
    #[error("{0} does not filter VLANs: a static group there takes no vlan")]
    NoVlans(String),
    #[error("{0} has no PVID: name the VLAN (vlan N)")]
    NoPvid(String),
    #[error("{port} is not in VLAN {vlan}")]
    NotInVlan { port: String, vlan: u16 },
    #[error("MLD snooping is off (--no-mld): IPv6 groups flood")]
    MldOff,
    #[error("{0}")]
    Static(#[from] StaticError),
    #[error("this snoop was not started from a command line to read again")]
    NoReload,
}

/// Everything `snoop run` keeps of the bridge and its groups.
pub struct Daemon {
    pub start: Start,
    pub live: Live,
    pub bridge: BridgeId,
    /// Ports carrying snoop's programs, by ifindex.
    pub ports: BTreeMap<u32, Port>,
    /// The bridge's VLAN configuration, as last read.
    pub vlans: VlanConfig,
    /// One context per VLAN ([`VLAN_NONE`] alone while the bridge does not
    /// filter VLANs), each with its queriers, router ports and memberships.
    pub contexts: BTreeMap<u16, VlanContext>,
    pub addresses: QuerySources,
    /// Groups the bridge's own host has joined, by VLAN.
    pub local: BTreeSet<(u16, IpAddr)>,
    /// VLANs and families (FAMILY_*) the bridge's host routes multicast in.
    pub host_routes: BTreeSet<(u16, u8)>,
    /// `mcast_router 2` on the bridge device.
    host_is_router: bool,
    /// The static groups in force: the configuration's, and those added
    /// and deleted at run time since. A port that joins the bridge gets its own.
    pub statics: BTreeSet<StaticGroup>,
    pub forwarding: ForwardingState,
    /// `RESTORE_*` flags: bridge settings to put back at a clean exit.
    pub restore: u32,
    pub stats: Stats,
    /// Memberships are being resumed: contexts made now count a querier as
    /// present (never a flood at a restart).
    resuming: bool,
    /// MACs (per VLAN) taught to the bridge lately, on which port, when.
    taught: HashMap<([u8; 6], u16), (u32, Duration)>,
    /// Whether each family's querier was present in every VLAN, as last told.
    presence_told: [bool; 2],
    /// A bridge view has been taken in.
    seen_bridge: bool,
    /// Joins refused per port since the last line said so.
    refusals: BTreeMap<u32, Refusals>,
    /// Ports to ask at once (they came up, or joined the bridge), once the
    /// bridge view is taken in.
    pending_port_queries: Vec<u32>,
    /// The bridge's STP topology change flag, as last seen.
    topology_change: bool,
    /// Router discovery solicitations still to send, and when the next goes.
    solicitations_left: u8,
    next_solicitation: Duration,
    /// The time of the step being taken.
    now: Duration,
    dirty: Dirty,
    effects: Vec<Effect>,
}

/// Router discovery solicitations sent at start, a second apart.
pub const SOLICITATIONS: u8 = 3;
pub const SOLICITATION_INTERVAL: Duration = Duration::from_secs(1);

/// How often refused joins of one port are summed up in a line.
pub const REFUSALS_SUMMED_UP_EVERY: Duration = Duration::from_secs(10);

/// Joins refused on one port since `since`, beyond the one told then.
struct Refusals {
    count: u64,
    since: Duration,
}

impl Daemon {
    /// The daemon for `bridge`, before its first look at the ports.
    /// `resuming`: a predecessor's state is pinned and will be resumed.
    pub fn new(config: RunConfig, bridge: BridgeId, resuming: bool, restore: u32) -> Self {
        let redirect = config.start.forwarding == Forwarding::Redirect;
        let statics = config.live.static_groups.iter().cloned().collect();
        Self {
            start: config.start,
            live: config.live,
            bridge,
            ports: BTreeMap::new(),
            vlans: VlanConfig::default(),
            contexts: BTreeMap::new(),
            addresses: QuerySources::default(),
            local: BTreeSet::new(),
            host_routes: BTreeSet::new(),
            host_is_router: false,
            statics,
            forwarding: ForwardingState { redirect, why: (!redirect).then_some("--forwarding bridge") },
            restore,
            stats: Stats::default(),
            resuming,
            taught: HashMap::new(),
            // Resumed memberships are known: a querier counts as present.
            presence_told: [resuming; 2],
            seen_bridge: false,
            refusals: BTreeMap::new(),
            pending_port_queries: Vec::new(),
            topology_change: false,
            solicitations_left: 0,
            next_solicitation: Duration::ZERO,
            now: Duration::ZERO,
            dirty: Dirty::all(),
            effects: Vec::new(),
        }
    }

    /// Takes one input at `now`; returns what the runner must do.
    pub fn step(&mut self, now: Duration, input: Input) -> Vec<Effect> {
        self.now = now;
        match input {
            Input::Frame { ifindex, vlan, family, packet } => self.frame(ifindex, vlan, family, packet, now),
            Input::HostQuery { vlan, family, packet } => self.host_query(vlan, family, packet, now),
            Input::Timers => {
                if self.solicitations_left > 0 && self.next_solicitation <= now {
                    self.solicitations_left -= 1;
                    self.next_solicitation = now + SOLICITATION_INTERVAL;
                    self.solicit();
                }
                let polled: Vec<(u16, Actions)> =
                    self.contexts.iter_mut().map(|(vlan, context)| (*vlan, context.poll(now))).collect();
                for (vlan, actions) in polled {
                    self.absorb(vlan, actions);
                }
            }
            Input::Bridge(view) => self.bridge_seen(*view, now),
            Input::Local { groups, routed } => {
                self.local_groups(groups);
                self.host_routes(routed);
            }
            Input::Senders(senders) => self.teach(senders, now),
            Input::Change(change) => {
                let reply = self.change(change, now).map_err(|error| error.to_string());
                self.effects.push(Effect::Reply(reply));
            }
            Input::Reloaded { config, reply } => {
                let result = config.map(|config| self.reload(*config, now));
                match &result {
                    Ok(done) => self.log(Level::Info, format!("reloaded: {done}")),
                    Err(why) => {
                        self.log(Level::Warn, format!("reload refused, the configuration in force is unchanged: {why}"))
                    }
                }
                if reply {
                    self.effects.push(Effect::Reply(result));
                }
            }
            Input::Resume(pinned) => self.resume(pinned, now),
        }
        self.tell_presence(now);
        self.sum_up_refusals(now);
        std::mem::take(&mut self.effects)
    }

    /// One line per port for the joins refused since its last: a host
    /// joining thousands of groups over its limit costs a line an interval.
    fn sum_up_refusals(&mut self, now: Duration) {
        let due: Vec<(u32, u64)> = self
            .refusals
            .iter()
            .filter(|(_, r)| r.since + REFUSALS_SUMMED_UP_EVERY <= now)
            .map(|(port, r)| (*port, r.count))
            .collect();
        for (port, count) in due {
            if count == 0 {
                self.refusals.remove(&port);
                continue;
            }
            self.refusals.insert(port, Refusals { count: 0, since: now });
            let every = REFUSALS_SUMMED_UP_EVERY.as_secs();
            let detail = format!("{count} more joins refused in {every} s (group limits or filters)");
            self.event(VLAN_NONE, EventKind::Refused, None, Some(port), detail);
        }
    }

    /// What the steps since the last call touched: the projection's scope.
    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    /// Marks more for the next projection (retries of what did not fit).
    pub fn touch(&mut self, dirty: Dirty) {
        self.dirty.extend(dirty);
    }

    /// When a timer is due next.
    pub fn next_deadline(&self) -> Option<Duration> {
        let summaries = self.refusals.values().map(|r| r.since + REFUSALS_SUMMED_UP_EVERY);
        let solicitation = (self.solicitations_left > 0).then_some(self.next_solicitation);
        self.contexts.values().filter_map(VlanContext::next_deadline).chain(summaries).chain(solicitation).min()
    }

    /// Sends a router discovery solicitation (RFC 4286) in every VLAN, so
    /// routers that speak it answer before any query (again, a second
    /// apart, [`SOLICITATIONS`] times in all: one lost frame must not leave
    /// them unknown until their next advertisement); logs how snoop runs.
    pub fn started(&mut self, now: Duration, resumed: bool) -> Vec<Effect> {
        self.solicit();
        self.solicitations_left = SOLICITATIONS - 1;
        self.next_solicitation = now + SOLICITATION_INTERVAL;
        self.log_start(resumed);
        std::mem::take(&mut self.effects)
    }

    fn solicit(&mut self) {
        let solicitations: Vec<(u16, Vec<u8>)> = self
            .contexts
            .iter()
            .flat_map(|(vlan, context)| {
                let v4 = solicitation(&context.igmp, self.bridge.mac);
                let v6 = context.mld.as_ref().and_then(|mld| solicitation(mld, self.bridge.mac));
                v4.into_iter().chain(v6).map(|frame| (*vlan, frame))
            })
            .collect();
        for (vlan, frame) in solicitations {
            self.effects.push(Effect::Send { vlan, frame });
        }
    }

    fn log(&mut self, level: Level, line: String) {
        self.effects.push(Effect::Log(level, line));
    }

    /// A membership event for the log and `snoop watch`, in `vlan`.
    fn event(&mut self, vlan: u16, kind: EventKind, group: Option<IpAddr>, port: Option<u32>, detail: String) {
        let mut event = Event::now(kind, group, port.map(|p| self.port_name(p)), detail);
        event.vlan = (vlan != VLAN_NONE).then_some(vlan);
        self.effects.push(Effect::Event(event));
    }

    pub fn port_name(&self, ifindex: u32) -> String {
        self.ports.get(&ifindex).map_or_else(|| format!("#{ifindex}"), |p| p.name.clone())
    }

    /// How logs name a VLAN of the bridge (or the bridge, without VLANs).
    fn vlan_name(&self, vlan: u16) -> String {
        if vlan == VLAN_NONE {
            self.bridge.name.clone()
        } else {
            format!("{} vlan {vlan}", self.bridge.name)
        }
    }

    // ------------------------------------------------------------ frames

    fn frame(&mut self, ifindex: u32, vlan: u16, family: u8, packet: &[u8], now: Duration) {
        self.stats.bump(ControllerCounter::Events);
        // Heard in a VLAN the port is not in (the bridge drops such frames
        // itself): nobody's membership.
        if !self.contexts.get(&vlan).is_some_and(|c| c.has_port(ifindex)) {
            self.stats.bump(ControllerCounter::OutsideVlan);
            return;
        }
        // The port's group limit counts its groups in every VLAN and family.
        let total: usize = self.contexts.values().map(|c| c.port_groups(ifindex)).map(|(v4, v6)| v4 + v6).sum();
        let context = self.contexts.get_mut(&vlan).expect("checked above");
        context.set_groups_elsewhere(ifindex, total);
        match context.handle(HeardFrom::Port(ifindex), vlan, family, packet, now) {
            Ok(Some(actions)) => self.absorb(vlan, actions),
            Ok(None) => {}
            Err((protocol, error)) => {
                log::debug!("port {ifindex}: dropped {protocol:?} frame: {error}");
                self.stats.bump(ControllerCounter::Dropped(protocol, error));
                if let Some(port) = self.ports.get_mut(&ifindex) {
                    port.malformed += 1;
                }
            }
        }
    }

    /// The bridge host's own query: sent untagged on a VLAN-aware bridge it
    /// is in the bridge device's PVID.
    fn host_query(&mut self, tag: Option<u16>, family: u8, packet: &[u8], now: Duration) {
        let vlan = match (self.vlans.filtering, tag) {
            (false, _) => VLAN_NONE,
            (true, Some(vlan)) => vlan,
            (true, None) => match self.vlans.ports.get(&self.bridge.ifindex).and_then(|v| v.pvid) {
                Some(pvid) => pvid,
                None => return,
            },
        };
        let Some(context) = self.contexts.get_mut(&vlan) else { return };
        match context.handle(HeardFrom::BridgeHost, vlan, family, packet, now) {
            Ok(Some(actions)) => self.absorb(vlan, actions),
            Ok(None) => {}
            Err((protocol, error)) => log::debug!("the host's own {protocol:?} query: {error}"),
        }
    }

    // ------------------------------------------------------------ actions

    /// What the machines of `vlan` decided: noted for the projection, told
    /// to the log and `snoop watch`, queries sent.
    fn absorb(&mut self, vlan: u16, actions: Actions) {
        self.absorb_family(vlan, actions.igmp);
        self.absorb_family(vlan, actions.mld);
    }

    fn absorb_family<A: Snooped>(&mut self, vlan: u16, actions: Vec<Action<A>>) {
        for action in actions {
            match action {
                Action::AddMember { group, port, version, expires } => {
                    self.dirty.groups.insert(group.key());
                    let detail = if expires == crate::membership::NEVER {
                        "static".to_owned()
                    } else {
                        format!("{}v{version}", A::PROTOCOL)
                    };
                    self.event(vlan, EventKind::Join, Some(group.addr.ip()), Some(port), detail);
                }
                Action::RefreshMember { group, .. }
                | Action::RegisterGroup { group }
                | Action::UnregisterGroup { group } => {
                    self.dirty.groups.insert(group.key());
                }
                Action::SetSources { group, port, filter } => {
                    self.dirty.groups.insert(group.key());
                    self.event(vlan, EventKind::Sources, Some(group.addr.ip()), Some(port), filter.to_string());
                }
                Action::RemoveMember { group, port, reason } => {
                    self.dirty.groups.insert(group.key());
                    let (kind, detail) = match reason {
                        RemoveReason::Expired => (EventKind::Expire, ""),
                        RemoveReason::Left => (EventKind::Leave, ""),
                        RemoveReason::PortRemoved => (EventKind::PortRemoved, ""),
                        RemoveReason::Filtered => (EventKind::Leave, "the port's group filter no longer allows it"),
                        RemoveReason::StaticDeleted => (EventKind::Leave, "static membership deleted"),
                        RemoveReason::PortDown => (EventKind::Leave, "the port went down"),
                    };
                    self.event(vlan, kind, Some(group.addr.ip()), Some(port), detail.to_owned());
                }
                Action::SendQuery { group, sources, suppress } => {
                    // A source list too long for one frame goes in several.
                    for chunk in
                        sources.chunks(A::MAX_QUERY_SOURCES.max(1)).chain(sources.is_empty().then_some(&[][..]))
                    {
                        self.send_query::<A>(vlan, group, chunk, suppress);
                    }
                }
                Action::SetRouterPort { port, is_router } => {
                    // A VLAN's router ports are in every copy list of it, its
                    // report targets, and the port's flags.
                    self.dirty.vlans.insert(vlan);
                    self.dirty.ports.insert(port);
                    let kind = if is_router { EventKind::RouterPortLearned } else { EventKind::RouterPortExpired };
                    self.event(vlan, kind, None, Some(port), String::new());
                }
                Action::QuerierChanged { other_querier: Some(addr) } => {
                    self.event(vlan, EventKind::QuerierOther, None, None, addr.to_string())
                }
                Action::QuerierChanged { other_querier: None } => {
                    let own = self.contexts.get(&vlan).and_then(A::of).map(|s| s.querier().own_address.to_string());
                    self.event(vlan, EventKind::QuerierSelf, None, None, own.unwrap_or_default())
                }
                Action::QuerierPresence { .. } => {
                    self.dirty.vlans.insert(vlan);
                    self.dirty.config = true;
                }
                Action::QueryVersionChanged { version } => self.log(
                    Level::Warn,
                    format!(
                        "an {protocol}v{version} querier was heard: snoop's queries are {protocol}v{version} from \
                         now on, so its routers can read the reports (--query-version {version} says so from the \
                         start)",
                        protocol = A::PROTOCOL
                    ),
                ),
                Action::JoinRefused { group, port, why } => {
                    // The first of a while is told at once, the rest summed up.
                    if let Some(refusals) = self.refusals.get_mut(&port) {
                        refusals.count += 1;
                        continue;
                    }
                    self.event(vlan, EventKind::Refused, Some(group.addr.ip()), Some(port), why.describe().to_owned());
                    self.refusals.insert(port, Refusals { count: 0, since: self.now });
                }
                Action::UntrustedRouterHeard { port, source, sign } => {
                    let name = self.port_name(port);
                    self.log(
                        Level::Warn,
                        format!(
                            "port {name}: {} ({source}) was heard and ignored: only the ports --trusted-port names \
                             may be routers or queriers, so reports do not reach it. If a router is behind {name}, \
                             add --trusted-port {name} (or --router-port {name})",
                            sign.describe()
                        ),
                    );
                }
            }
        }
    }

    /// A query from `vlan`'s machine of `A`, unless it has no address hosts
    /// accept queries from.
    fn send_query<A: Snooped>(&mut self, vlan: u16, group: Option<A>, sources: &[A], suppress: bool) {
        let Some(snooper) = self.contexts.get(&vlan).and_then(A::of) else { return };
        let querier = snooper.querier();
        if !A::can_query_from(querier.own_address) {
            return;
        }
        let timers = snooper.timers();
        let query = QueryTimers {
            max_response: if group.is_some() {
                timers.last_member_query_interval
            } else {
                timers.query_response_interval
            },
            robustness: u8::try_from(timers.robustness).unwrap_or(7),
            query_interval: timers.query_interval,
        };
        let source = QuerySource { mac: self.bridge.mac, address: querier.own_address };
        let frame = A::query_frame(source, group, sources, querier.version, &query, suppress);
        let protocol = Protocol::of::<A>();
        self.stats.bump(if group.is_some() {
            ControllerCounter::GroupQueriesSent(protocol)
        } else {
            ControllerCounter::GeneralQueriesSent(protocol)
        });
        log::debug!("sending {} query in {}", A::PROTOCOL, self.vlan_name(vlan));
        self.effects.push(Effect::Send { vlan, frame });
    }

    /// Whether each family has a querier in every VLAN, told when it
    /// changes: while one has none, its groups flood.
    fn tell_presence(&mut self, now: Duration) {
        for (index, present) in
            [self.family_present::<Ipv4Addr>(now), self.family_present::<Ipv6Addr>(now)].into_iter().enumerate()
        {
            if index == 1 && !self.start.mld || present == self.presence_told[index] || !self.seen_bridge {
                continue;
            }
            self.presence_told[index] = present;
            self.dirty.config = true;
            let protocol = if index == 0 { "IGMP" } else { "MLD" };
            if present {
                let every = if self.vlans.filtering { " in every VLAN" } else { "" };
                self.log(Level::Info, format!("an {protocol} querier is present{every}: pruning"));
            } else {
                let absent: Vec<String> = self
                    .contexts
                    .iter()
                    .filter(|(_, c)| {
                        if index == 0 {
                            !c.querier_present::<Ipv4Addr>(now)
                        } else {
                            !c.querier_present::<Ipv6Addr>(now)
                        }
                    })
                    .map(|(vlan, _)| vlan.to_string())
                    .collect();
                let vlans = if self.vlans.filtering { format!(" in VLAN {}", absent.join(" ")) } else { String::new() };
                self.log(
                    Level::Warn,
                    format!(
                        "no {protocol} querier is present{vlans}: flooding every {protocol} group, as a plain \
                         bridge, until one is heard (hosts report only when queried)"
                    ),
                );
            }
        }
    }

    /// A querier of `A` is present in every VLAN, so pruning is safe in all.
    pub fn family_present<A: Snooped>(&self, now: Duration) -> bool {
        !self.contexts.is_empty() && self.contexts.values().all(|c| c.querier_present::<A>(now))
    }

    // ------------------------------------------------------------ the bridge

    /// The bridge as the runner read it: its MAC, addresses, VLANs and
    /// ports, whether its own snooping came back on, whether redirect may
    /// be used. Containers come and go all the time: each scan is taken as
    /// it is.
    fn bridge_seen(&mut self, view: BridgeView, now: Duration) {
        let BridgeView { mac, vlans, addresses, ports, kernel_snooping, obstacle, topology_change, host_is_router } =
            view;
        self.host_is_router = host_is_router;
        if mac != self.bridge.mac && self.seen_bridge {
            self.log(Level::Info, format!("{} has a new MAC; queries are sent from it", self.bridge.name));
        }
        self.bridge.mac = mac;
        if kernel_snooping {
            self.kernel_snooping_on();
        }
        if vlans.filtering != self.vlans.filtering {
            if vlans.filtering {
                self.log(
                    Level::Info,
                    format!("{} filters VLANs: snooping per VLAN, a querier in each", self.bridge.name),
                );
            } else if self.vlans != VlanConfig::default() {
                self.log(Level::Info, format!("{} no longer filters VLANs: snooping without them", self.bridge.name));
            }
        }
        let vlans_changed = vlans != self.vlans;
        self.vlans = vlans;
        self.addresses = addresses;
        let mut joined = self.follow_ports(ports, now);
        if vlans_changed || !joined.is_empty() || !self.seen_bridge {
            self.dirty.all = true;
        }
        joined.extend(self.follow_vlans(now));
        for ifindex in joined {
            self.set_port_groups(ifindex, now);
        }
        self.follow_query_sources(now);
        self.follow_obstacle(obstacle);
        // STP saw the topology change: hosts may sit behind other ports
        // now (RFC 4541 2.1.1 (4)); every port is asked.
        if topology_change && !self.topology_change && self.seen_bridge {
            self.log(Level::Info, format!("{}: a topology change: asking every port", self.bridge.name));
            self.pending_port_queries.extend(self.ports.keys().copied());
        }
        self.topology_change = topology_change;
        self.seen_bridge = true;
        for ifindex in std::mem::take(&mut self.pending_port_queries) {
            self.query_port(ifindex);
        }
    }

    /// A port came up, joined the bridge or may lead elsewhere after a
    /// topology change: its hosts are asked at once, out of that port alone
    /// (in each of its VLANs, on a VLAN-aware bridge), and given only the
    /// last-member time to answer: a VM that moved here, a cable plugged
    /// into a switch, gets its streams within a second, not a query interval.
    fn query_port(&mut self, ifindex: u32) {
        let vlans: Vec<u16> = self.contexts.iter().filter(|(_, c)| c.has_port(ifindex)).map(|(v, _)| *v).collect();
        for vlan in vlans {
            self.query_port_in::<Ipv4Addr>(vlan, ifindex);
            self.query_port_in::<Ipv6Addr>(vlan, ifindex);
        }
    }

    fn query_port_in<A: Snooped>(&mut self, vlan: u16, ifindex: u32) {
        let Some(snooper) = self.contexts.get(&vlan).and_then(A::of) else { return };
        let querier = snooper.querier();
        if !querier.enabled || !A::can_query_from(querier.own_address) {
            return;
        }
        let timers = snooper.timers();
        let query = QueryTimers {
            max_response: timers.last_member_query_interval,
            robustness: u8::try_from(timers.robustness).unwrap_or(7),
            query_interval: timers.query_interval,
        };
        let source = QuerySource { mac: self.bridge.mac, address: querier.own_address };
        let frame = A::query_frame(source, None, &[], querier.version, &query, false);
        self.stats.bump(ControllerCounter::GeneralQueriesSent(Protocol::of::<A>()));
        // Without VLANs, out of the port alone; in a VLAN, to the VLAN.
        self.effects.push(if vlan == VLAN_NONE {
            Effect::SendOnPort { ifindex, frame }
        } else {
            Effect::Send { vlan, frame }
        });
    }

    fn kernel_snooping_on(&mut self) {
        self.stats.bump(ControllerCounter::KernelSnoopingReenabled);
        if self.stats.get(ControllerCounter::KernelSnoopingReenabled) == 1 {
            let name = &self.bridge.name;
            self.log(
                Level::Warn,
                format!(
                    "{name}'s own multicast snooping was turned on again (by a network manager or by hand): turning \
                     it off, as two snoopers prune each other's traffic. To keep it off: NetworkManager \
                     `bridge.multicast-snooping no`, systemd-networkd `MulticastSnooping=false`, ifupdown2 \
                     `bridge-mcsnoop 0` (this is told once; kernel_snooping_reenabled counts each time)"
                ),
            );
        }
        self.effects.push(Effect::KernelSnoopingOff);
    }

    /// Ports that joined, changed or left; returns those that joined.
    fn follow_ports(&mut self, scanned: Vec<BridgePort>, now: Duration) -> BTreeSet<u32> {
        let mut joined = BTreeSet::new();
        let (mut appeared, mut went_down) = (Vec::new(), Vec::new());
        let gone: Vec<u32> = self.ports.keys().copied().filter(|i| !scanned.iter().any(|p| p.ifindex == *i)).collect();
        for ifindex in gone {
            let removed: Vec<(u16, Actions)> =
                self.contexts.iter_mut().map(|(vlan, c)| (*vlan, c.remove_port(ifindex))).collect();
            for (vlan, actions) in removed {
                self.absorb(vlan, actions);
            }
            self.log(Level::Info, format!("port {} left the bridge", self.port_name(ifindex)));
            self.ports.remove(&ifindex);
            self.dirty.all = true;
        }
        for BridgePort { ifindex, name, policy, peer_redirect } in scanned {
            // A copy handed to the peer skips the port's egress hook: not
            // past the operator's filters there.
            let peer = peer_redirect && policy.filters.egress == 0 && !policy.nft_egress;
            let options = self.live.port_options(&name, &policy);
            match self.ports.get_mut(&ifindex) {
                Some(port) => {
                    // Up (or forwarding again under STP) or down: a change of topology.
                    match (port.policy.forwarding, policy.forwarding) {
                        (false, true) => appeared.push(ifindex),
                        (true, false) => went_down.push(ifindex),
                        _ => {}
                    }
                    if port.policy != policy || port.peer != peer || port.name != name {
                        let changed_options = port.options != options;
                        port.policy = policy;
                        port.peer = peer;
                        port.options = options;
                        port.name = name.clone();
                        let note = port.note(self.forwarding.redirect);
                        let note = if note.is_empty() { "forwarding as usual".to_owned() } else { note };
                        self.log(Level::Info, format!("port {name}: {note}"));
                        if changed_options {
                            let set: Vec<(u16, Actions)> = self
                                .contexts
                                .iter_mut()
                                .map(|(vlan, c)| (*vlan, c.set_port_options(ifindex, options, now)))
                                .collect();
                            for (vlan, actions) in set {
                                self.absorb(vlan, actions);
                            }
                        }
                        self.dirty.all = true;
                    }
                }
                None => {
                    if let Some(why) = policy.bridge_path() {
                        self.log(Level::Info, format!("port {name}: {why}: frames entering it take the bridge path"));
                    }
                    // (At the start every port is new: startup queries ask them all.)
                    if self.seen_bridge && policy.forwarding {
                        appeared.push(ifindex);
                    }
                    let filter = self.live.port_filter(&name);
                    self.ports.insert(ifindex, Port { name, policy, options, filter, peer, malformed: 0 });
                    self.event(VLAN_NONE, EventKind::PortAttached, None, Some(ifindex), format!("ifindex {ifindex}"));
                    joined.insert(ifindex);
                }
            }
        }
        for ifindex in went_down {
            let flushed: Vec<(u16, Actions)> =
                self.contexts.iter_mut().map(|(vlan, c)| (*vlan, c.port_down(ifindex, now))).collect();
            for (vlan, actions) in flushed {
                self.absorb(vlan, actions);
            }
        }
        self.pending_port_queries.extend(appeared);
        joined
    }

    /// Gives every VLAN its context and each context the ports in its VLAN
    /// (one for all ports while the bridge does not filter VLANs). Returns
    /// the ports that joined a VLAN (their filters and static groups are
    /// due there).
    fn follow_vlans(&mut self, now: Duration) -> BTreeSet<u32> {
        let mut wanted: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
        if self.vlans.filtering {
            for ifindex in self.ports.keys() {
                for vlan in self.vlans.vlans_of([*ifindex]) {
                    wanted.entry(vlan).or_default().insert(*ifindex);
                }
            }
        } else {
            wanted.insert(VLAN_NONE, self.ports.keys().copied().collect());
        }
        let mut joined = BTreeSet::new();
        let gone: Vec<u16> = self.contexts.keys().filter(|v| !wanted.contains_key(v)).copied().collect();
        for vlan in gone {
            let mut context = self.contexts.remove(&vlan).expect("listed");
            let ports: Vec<u32> = context.igmp.ports().keys().copied().collect();
            for port in ports {
                let actions = context.remove_port(port);
                self.absorb(vlan, actions);
            }
            if vlan != VLAN_NONE {
                self.log(
                    Level::Info,
                    format!("{}: no port is in it any more: its queriers stop", self.vlan_name(vlan)),
                );
            }
            self.dirty.all = true;
        }
        for (vlan, ports) in wanted {
            if !self.contexts.contains_key(&vlan) {
                let context = self.new_context(vlan, now);
                self.contexts.insert(vlan, context);
                self.dirty.all = true;
            }
            let context = self.contexts.get_mut(&vlan).expect("inserted");
            let leaving: Vec<u32> = context.igmp.ports().keys().filter(|p| !ports.contains(p)).copied().collect();
            let mut actions = Vec::new();
            for port in leaving {
                actions.push(context.remove_port(port));
            }
            for port in ports {
                if !context.has_port(port) {
                    let options = self.ports[&port].options;
                    actions.push(context.add_port(port, options));
                    joined.insert(port);
                }
            }
            if !actions.is_empty() {
                self.dirty.all = true;
            }
            for actions in actions {
                self.absorb(vlan, actions);
            }
        }
        joined
    }

    /// A new VLAN's context, its queriers speaking from the VLAN's source.
    fn new_context(&self, vlan: u16, now: Duration) -> VlanContext {
        let start = &self.start;
        let mut igmp = Snooper::new(start.timers.clone(), start.querier, self.query_source::<Ipv4Addr>(vlan), now);
        igmp.set_query_version(start.query_version);
        igmp.set_max_sources(start.max_sources_per_group);
        igmp.set_ssm_ranges(&start.ssm_ranges);
        let mld = start.mld.then(|| {
            let mut mld = Snooper::new(start.timers.clone(), start.querier, self.query_source::<Ipv6Addr>(vlan), now);
            mld.set_query_version(start.mld_query_version);
            mld.set_max_sources(start.max_sources_per_group);
            mld.set_link_scope_snooped(start.snoop_ipv6_link_scope);
            mld.set_ssm_ranges(&start.ssm_ranges);
            mld
        });
        let mut context = VlanContext { igmp, mld };
        if self.resuming {
            context.resume_querier_presence(now);
        }
        context
    }

    /// Queries speak from the bridge's addresses, or those of the VLAN's
    /// interface on it: they follow the bridge when it is readdressed.
    fn follow_query_sources(&mut self, now: Duration) {
        let vlans: Vec<u16> = self.contexts.keys().copied().collect();
        for vlan in vlans {
            self.follow_query_source::<Ipv4Addr>(vlan, now);
            if self.start.mld {
                self.follow_query_source::<Ipv6Addr>(vlan, now);
            }
        }
    }

    fn follow_query_source<A: Snooped>(&mut self, vlan: u16, now: Duration) {
        let own = self.query_source::<A>(vlan);
        let name = self.vlan_name(vlan);
        let Some(snooper) = self.contexts.get_mut(&vlan).and_then(A::of_mut) else { return };
        if own == snooper.querier().own_address {
            return;
        }
        let actions = snooper.set_own_address(own, now);
        if own.is_unspecified() && A::FAMILY == snoop_common::FAMILY_IPV6 {
            self.log(Level::Warn, format!("{name}: no link-local IPv6 address: snoop sends no MLD queries"));
        } else {
            self.log(Level::Info, format!("{name}: {} queries are sent from {own}", A::PROTOCOL));
        }
        self.absorb(vlan, A::actions(actions));
    }

    /// The address `vlan`'s queries speak from: `--vlan-query-source` for
    /// it, else the VLAN's interface on the bridge, else `--query-source` /
    /// `--mld-query-source`, else the bridge's own (for IPv4 only in the
    /// VLAN of its untagged frames: an IPv6 link-local address is valid on
    /// any link), else none (0.0.0.0, as RFC 4541 2.1.1 allows a snooping
    /// switch; MLD needs a link-local source and sends nothing).
    pub fn query_source<A: Snooped>(&self, vlan: u16) -> A {
        let bridge_pvid = self.vlans.ports.get(&self.bridge.ifindex).and_then(|v| v.pvid);
        let bridges_own = !self.vlans.filtering || bridge_pvid == Some(vlan);
        let ipv6 = A::FAMILY == snoop_common::FAMILY_IPV6;
        let for_vlan = self.start.vlan_query_sources.get(&(vlan, ipv6)).copied();
        let a = &self.addresses;
        let candidates: [Option<IpAddr>; 3] = if ipv6 {
            [
                a.vlan_ipv6.get(&vlan).copied().map(IpAddr::V6),
                self.start.mld_query_source.map(IpAddr::V6),
                a.bridge_ipv6.map(IpAddr::V6),
            ]
        } else {
            [
                a.vlan_ipv4.get(&vlan).copied().map(IpAddr::V4),
                self.start.query_source.map(IpAddr::V4),
                a.bridge_ipv4.filter(|_| bridges_own).map(IpAddr::V4),
            ]
        };
        let ip = for_vlan.into_iter().chain(candidates.into_iter().flatten()).next();
        ip.and_then(A::from_ip).unwrap_or(A::UNSPECIFIED)
    }

    /// Redirect must skip nothing the bridge checks: STP, 802.1ad VLAN
    /// filtering or filtering rules switched on since are seen here, live.
    fn follow_obstacle(&mut self, obstacle: Option<&'static str>) {
        if self.start.forwarding == Forwarding::Bridge {
            return;
        }
        if obstacle == self.forwarding.why {
            return;
        }
        let bridge = self.bridge.name.clone();
        match obstacle {
            Some(why) if self.seen_bridge => {
                self.log(Level::Warn, format!("{why} on {bridge}: forwarding through the bridge from now on"))
            }
            Some(why) => self
                .log(Level::Warn, format!("{why} on {bridge}: forwarding through the bridge instead of redirecting")),
            None => self.log(Level::Info, format!("redirect forwarding on {bridge} again")),
        }
        self.forwarding = ForwardingState { redirect: obstacle.is_none(), why: obstacle };
        self.dirty.all = true;
    }

    /// Groups the bridge's own host joined: redirect bypasses the bridge,
    /// so its copies go to the bridge device explicitly.
    fn local_groups(&mut self, groups: BTreeSet<(u16, IpAddr)>) {
        if groups == self.local {
            return;
        }
        for (vlan, addr) in groups.symmetric_difference(&self.local) {
            self.dirty.groups.insert(key_of(*addr, *vlan));
        }
        self.local = groups;
    }

    /// The VLANs and families the bridge's host routes multicast in: it
    /// gets every group of them (a router port), else redirect would take
    /// the streams it routes before it sees them.
    fn host_routes(&mut self, routed: BTreeSet<(u16, u8)>) {
        let routed: BTreeSet<(u16, u8)> = routed.into_iter().chain(self.host_router_by_setting()).collect();
        if routed == self.host_routes {
            return;
        }
        let changed: Vec<(u16, u8)> = routed.symmetric_difference(&self.host_routes).copied().collect();
        for (vlan, family) in &changed {
            let on = routed.contains(&(*vlan, *family));
            let what = if *family == snoop_common::FAMILY_IPV4 { "IPv4" } else { "IPv6" };
            let line = match on {
                true => format!("{}'s host routes {what} multicast: it gets every group", self.vlan_name(*vlan)),
                false => format!("{}'s host no longer routes {what} multicast", self.vlan_name(*vlan)),
            };
            self.log(Level::Info, line);
        }
        self.host_routes = routed;
        self.dirty.all = true;
    }

    /// `mcast_router 2` on the bridge device: the host is a router of both
    /// families in the bridge's own VLANs.
    fn host_router_by_setting(&self) -> Vec<(u16, u8)> {
        if !self.host_is_router {
            return Vec::new();
        }
        let (_, vlans) = self.local_interfaces().into_iter().next().unwrap_or_default();
        vlans.into_iter().flat_map(|v| [(v, snoop_common::FAMILY_IPV4), (v, snoop_common::FAMILY_IPV6)]).collect()
    }

    /// The interfaces whose sockets the bridge host's groups are read from,
    /// with the VLANs they hear: the bridge device (its untagged VLANs), and
    /// VLAN interfaces on it (br0.10).
    pub fn local_interfaces(&self) -> Vec<(u32, Vec<u16>)> {
        let bridge = self.bridge.ifindex;
        let vlans = &self.vlans;
        if !vlans.filtering {
            return vec![(bridge, vec![VLAN_NONE])];
        }
        let untagged = vlans.ports.get(&bridge).map(|v| v.vlans.iter().filter(|(_, u)| **u).map(|(v, _)| *v));
        let mut interfaces = vec![(bridge, untagged.into_iter().flatten().collect())];
        interfaces.extend(vlans.interfaces.iter().map(|(vlan, ifindex)| (*ifindex, vec![*vlan])));
        interfaces
    }

    /// Teaches the bridge the MACs of hosts whose frames the fast path
    /// consumed (so it never learned them itself): without it, unicast to a
    /// host that only sends multicast floods to every port. At most every 10
    /// s per host and port, well inside the bridge's ageing time.
    fn teach(&mut self, senders: Vec<([u8; 6], u32, u16)>, now: Duration) {
        self.taught.retain(|_, (_, at)| now.saturating_sub(*at) < Duration::from_secs(10));
        for (mac, port, vlan) in senders {
            let Some(info) = self.ports.get(&port) else { continue };
            // The bridge learns nothing on such ports; neither may snoop teach it.
            let taught = self.taught.get(&(mac, vlan)).is_some_and(|(p, _)| *p == port);
            if !info.policy.learning || info.policy.locked || taught {
                continue;
            }
            self.taught.insert((mac, vlan), (port, now));
            self.effects.push(Effect::Learn { port, mac, vlan });
        }
    }

    // ------------------------------------------------------------ clients

    /// A change a client asked for: what was done, or why not.
    fn change(&mut self, change: Change, now: Duration) -> Result<String, ChangeError> {
        match change {
            Change::GroupAdd(entry) => {
                self.set_static(&entry, true, now)?;
                self.statics.retain(|other| !other.same_membership(&entry));
                self.statics.insert(entry.clone());
                self.log(Level::Info, format!("static group added: {entry}"));
                Ok(format!("{entry}: static"))
            }
            Change::GroupDel(entry) => {
                self.set_static(&entry, false, now)?;
                self.statics.retain(|other| !other.same_membership(&entry));
                self.log(Level::Info, format!("static group deleted: {entry}"));
                Ok(format!("{entry}: no longer static"))
            }
            // The runner reads the configuration and hands it in as Reloaded.
            Change::Reload => Err(ChangeError::NoReload),
        }
    }

    /// Applies what can change while snoop runs: port settings, filters,
    /// static groups, the unregistered policy, keep-state. Memberships and
    /// the data path stay as they are, so no packet is lost; the start
    /// settings that changed are named and wait for the next start.
    fn reload(&mut self, new: RunConfig, now: Duration) -> String {
        let waiting = self.start.changed(&new.start);
        let old_statics: BTreeSet<StaticGroup> = self.live.static_groups.iter().cloned().collect();
        let new_statics: BTreeSet<StaticGroup> = new.live.static_groups.iter().cloned().collect();
        self.live = new.live;
        // Static groups the file no longer has go; those it gained come.
        for gone in old_statics.difference(&new_statics) {
            if new_statics.iter().any(|entry| entry.same_membership(gone)) {
                continue; // its sources changed: set anew below
            }
            self.statics.retain(|other| !other.same_membership(gone));
            if let Err(why) = self.set_static(gone, false, now) {
                log::debug!("static group {gone}: {why}");
            }
        }
        for added in new_statics.difference(&old_statics) {
            self.statics.retain(|other| !other.same_membership(added));
            self.statics.insert(added.clone());
        }
        let ports: Vec<u32> = self.ports.keys().copied().collect();
        for ifindex in &ports {
            let port = self.ports.get_mut(ifindex).expect("listed");
            port.options = self.live.port_options(&port.name, &port.policy);
            port.filter = self.live.port_filter(&port.name);
            let options = port.options;
            let set: Vec<(u16, Actions)> =
                self.contexts.iter_mut().map(|(vlan, c)| (*vlan, c.set_port_options(*ifindex, options, now))).collect();
            for (vlan, actions) in set {
                self.absorb(vlan, actions);
            }
            self.set_port_groups(*ifindex, now);
        }
        self.dirty.all = true;
        let mut failed = Vec::new();
        for added in new_statics.difference(&old_statics) {
            if !self.ports.values().any(|port| port.name == added.port) {
                failed.push(format!("static group {added}: {} is not a port of the bridge (yet)", added.port));
            }
        }
        // A static group whose sources changed is one changed, not one added and one deleted.
        let in_other =
            |entry: &&StaticGroup, others: &BTreeSet<StaticGroup>| others.iter().any(|o| o.same_membership(entry));
        let (changed, added): (Vec<_>, Vec<_>) =
            new_statics.difference(&old_statics).partition(|entry| in_other(entry, &old_statics));
        let deleted = old_statics.difference(&new_statics).filter(|entry| !in_other(entry, &new_statics)).count();
        let mut done = format!("static groups: {} added, {} changed, {deleted} deleted", added.len(), changed.len());
        if !waiting.is_empty() {
            done += &format!("; changed but applied only at the next start: {}", waiting.join(", "));
        }
        for note in failed {
            done += &format!("; {note}");
        }
        done
    }

    /// A port's group filter and static groups, from the configuration and
    /// the static groups added since: when it joins a VLAN, and at a reload.
    fn set_port_groups(&mut self, ifindex: u32, now: Duration) {
        let Some(port) = self.ports.get(&ifindex) else { return };
        let (filter, name) = (port.filter.clone(), port.name.clone());
        let set: Vec<(u16, Actions)> =
            self.contexts.iter_mut().map(|(vlan, c)| (*vlan, c.set_port_filter(ifindex, &filter))).collect();
        for (vlan, actions) in set {
            self.absorb(vlan, actions);
        }
        let statics: Vec<StaticGroup> = self.statics.iter().filter(|s| s.port == name).cloned().collect();
        for entry in statics {
            if let Err(why) = self.set_static(&entry, true, now) {
                self.log(Level::Warn, format!("static group {entry}: {why}"));
            }
        }
    }

    /// Adds or deletes one static membership.
    fn set_static(&mut self, entry: &StaticGroup, add: bool, now: Duration) -> Result<(), ChangeError> {
        let not_a_port = || ChangeError::NotAPort { port: entry.port.clone(), bridge: self.bridge.name.clone() };
        let ifindex = self
            .ports
            .iter()
            .find(|(_, port)| port.name == entry.port)
            .map(|(ifindex, _)| *ifindex)
            .ok_or_else(not_a_port)?;
        let vlan = if !self.vlans.filtering {
            if entry.vlan != VLAN_NONE {
                return Err(ChangeError::NoVlans(self.bridge.name.clone()));
            }
            VLAN_NONE
        } else {
            let port_vlans = self.vlans.ports.get(&ifindex).cloned().unwrap_or_default();
            // No VLAN given: the port's own (its PVID).
            let vlan = if entry.vlan == VLAN_NONE { port_vlans.pvid.unwrap_or(VLAN_NONE) } else { entry.vlan };
            if !port_vlans.vlans.contains_key(&vlan) {
                return Err(match vlan {
                    VLAN_NONE => ChangeError::NoPvid(entry.port.clone()),
                    vlan => ChangeError::NotInVlan { port: entry.port.clone(), vlan },
                });
            }
            vlan
        };
        let actions = match entry.group {
            IpAddr::V4(_) => set_static::<Ipv4Addr>(self.contexts.get_mut(&vlan), entry, vlan, ifindex, add, now)?,
            IpAddr::V6(_) if self.start.mld => {
                set_static::<Ipv6Addr>(self.contexts.get_mut(&vlan), entry, vlan, ifindex, add, now)?
            }
            IpAddr::V6(_) => return Err(ChangeError::MldOff),
        };
        self.absorb(vlan, actions);
        Ok(())
    }

    // ------------------------------------------------------------ restart

    /// Adopts the memberships and learned router ports a predecessor left
    /// pinned. The projection afterwards drops from the maps whatever was
    /// not adopted (a port gone, a VLAN the port left).
    fn resume(&mut self, pinned: Pinned, now: Duration) {
        for context in self.contexts.values_mut() {
            context.resume_querier_presence(now);
        }
        for (family, vlan, port) in pinned.routers {
            let restored: Vec<(u16, Actions)> = self
                .contexts
                .iter_mut()
                .filter(|(v, c)| vlan.is_none_or(|want| **v == want) && c.has_port(port))
                .filter_map(|(v, c)| {
                    let actions = if family == snoop_common::FAMILY_IPV4 {
                        Ipv4Addr::actions(c.igmp.restore_router_port(port, now))
                    } else {
                        Ipv6Addr::actions(c.mld.as_mut()?.restore_router_port(port, now))
                    };
                    Some((*v, actions))
                })
                .collect();
            for (vlan, actions) in restored {
                self.absorb(vlan, actions);
            }
        }
        let mut restored = 0;
        for member in &pinned.members {
            let adopted = match member.key.group.family {
                snoop_common::FAMILY_IPV4 => restore::<Ipv4Addr>(&mut self.contexts, member, now),
                snoop_common::FAMILY_IPV6 => restore::<Ipv6Addr>(&mut self.contexts, member, now),
                _ => false,
            };
            if adopted {
                restored += 1;
                self.dirty.groups.insert(member.key.group);
            }
            // Static ones stay static, those added at run time too (the
            // configuration's own win where both name a membership).
            if adopted && member.permanent {
                if let Some(entry) = self.pinned_static(member) {
                    if !self.statics.iter().any(|other| other.same_membership(&entry)) {
                        self.statics.insert(entry);
                    }
                }
            }
        }
        let ports: Vec<u32> = self.ports.keys().copied().collect();
        for ifindex in ports {
            self.set_port_groups(ifindex, now);
        }
        self.log(Level::Info, format!("resumed {restored} memberships from the pinned maps"));
        self.resuming = false;
        self.dirty.all = true;
    }

    /// A pinned static membership as a static group entry.
    fn pinned_static(&self, member: &PinnedMember) -> Option<StaticGroup> {
        let port = self.ports.get(&member.key.ifindex)?.name.clone();
        let group = crate::proto::key_ip(&member.key.group)?;
        let sources = match &member.sources {
            Some((flags, listed)) if *flags == MEMBER_SOURCES_INCLUDE => listed
                .iter()
                .map(|source| match group {
                    IpAddr::V4(_) => IpAddr::V4(<Ipv4Addr as crate::proto::Family>::from_source_key(source)),
                    IpAddr::V6(_) => IpAddr::V6(<Ipv6Addr as crate::proto::Family>::from_source_key(source)),
                })
                .collect(),
            _ => BTreeSet::new(),
        };
        Some(StaticGroup { port, group, sources, vlan: member.key.group.vlan })
    }

    fn log_start(&mut self, resumed: bool) {
        let first = self.contexts.values().next();
        let querier = match first {
            Some(context) if self.start.querier => format!("on, source {}", context.igmp.querier().own_address),
            _ => "off".into(),
        };
        let mld = if !self.start.mld {
            "off (IPv6 groups flood)".to_owned()
        } else if !self.start.querier {
            "on".to_owned()
        } else if let Some(mld) = first.and_then(|c| c.mld.as_ref()).filter(|mld| mld.querier().is_querier()) {
            format!("on, querier source {}", mld.querier().own_address)
        } else {
            "on, no MLD queries: the bridge has no link-local IPv6 address (IPv6 groups flood until another \
             querier is heard)"
                .to_owned()
        };
        let vlans = if self.vlans.filtering {
            let vlans: Vec<String> = self.contexts.keys().map(u16::to_string).collect();
            format!(", VLAN-aware: a querier per VLAN ({})", vlans.join(" "))
        } else {
            String::new()
        };
        let line = format!(
            "snooping on {} ({} ports){}{vlans}; querier {querier}; MLD {mld}; {}",
            self.bridge.name,
            self.ports.len(),
            if resumed { ", resumed from pinned state" } else { "" },
            self.live.router_learning(),
        );
        self.log(Level::Info, line);
    }
}

/// The data path's key of a group address in `vlan`.
pub fn key_of(addr: IpAddr, vlan: u16) -> snoop_common::GroupKey {
    match addr {
        IpAddr::V4(addr) => Group { vlan, addr }.key(),
        IpAddr::V6(addr) => Group { vlan, addr }.key(),
    }
}

/// Re-adopts one pinned membership in its VLAN's context, if its port is
/// still in that VLAN.
fn restore<A: Snooped>(contexts: &mut BTreeMap<u16, VlanContext>, member: &PinnedMember, now: Duration) -> bool {
    let Some(group) = Group::<A>::from_key(&member.key.group) else { return false };
    let Some(snooper) = contexts.get_mut(&group.vlan).and_then(A::of_mut) else { return false };
    if !snooper.ports().contains_key(&member.key.ifindex) {
        return false;
    }
    let filter = match &member.sources {
        Some((flags, listed)) => {
            let listed = listed.iter().map(A::from_source_key).collect();
            if *flags == MEMBER_SOURCES_INCLUDE {
                SourceFilter::Include(listed)
            } else {
                SourceFilter::Exclude(listed)
            }
        }
        None => SourceFilter::any(),
    };
    snooper.restore_member(group, member.key.ifindex, member.version, member.leaving, filter, now);
    true
}

fn set_static<A: Snooped>(
    context: Option<&mut VlanContext>,
    entry: &StaticGroup,
    vlan: u16,
    ifindex: u32,
    add: bool,
    now: Duration,
) -> Result<Actions, ChangeError> {
    let addr = A::from_ip(entry.group).ok_or(StaticError::NotSnoopable)?;
    let group = Group { vlan, addr };
    let sources = entry.sources.iter().filter_map(|source| A::from_ip(*source)).collect();
    let snooper = context.and_then(A::of_mut).ok_or(StaticError::UnknownPort)?;
    let actions = if add {
        snooper.add_static(group, ifindex, &sources, now)?
    } else {
        snooper.remove_static(group, ifindex, now)?
    };
    Ok(A::actions(actions))
}

/// A router discovery solicitation from `snooper`'s own address, if it has one.
fn solicitation<A: Snooped>(snooper: &Snooper<A>, mac: [u8; 6]) -> Option<Vec<u8>> {
    let own = snooper.querier().own_address;
    (!own.is_unspecified() && A::can_query_from(own)).then(|| A::mrd_solicitation_frame(mac, own))
}
