//! What the data path's maps must hold, projected from the daemon's state:
//! a pure function of the state (all VLANs, both families, port policies,
//! querier presence) and of what did not fit the maps so far. The daemon
//! notes what a step touched ([`Dirty`]); [`project`] gives the desired
//! entries of just those keys ([`Desired`]), and the reconciler writes the
//! difference ([`super::reconcile`]). Traffic slots and times are the
//! reconciler's to fill in: nothing here depends on what was written.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use snoop_common::{
    no_querier_flag, GroupKey, PortGroupKey, SourceAddr, VlanFlags, VlanPortKey, CONFIG_CHECK_SOURCE_PORT,
    CONFIG_FLOOD_UNREGISTERED, CONFIG_REDIRECT, CONFIG_SNOOP_IPV6_LINK_SCOPE, CONFIG_VLAN_AWARE, FAMILY_IPV4,
    FAMILY_IPV6, MAX_FANOUT, MEMBER_LEAVING, MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, MEMBER_STATIC,
    PORT_BRIDGE_PATH, PORT_IN_VLAN, PORT_UNPRUNED, UNTAGGED_LAST, UNTAGGED_LOCAL, VLAN_NONE,
};

use super::{
    state::Daemon,
    vlan::{Snooped, VlanContext},
};
use crate::membership::{Group, SourceFilter, NEVER};

/// What steps touched since the last projection: its scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dirty {
    /// Everything: a port came, went or changed, the VLANs, the forwarding.
    pub all: bool,
    /// Groups whose memberships, sources or copies changed.
    pub groups: BTreeSet<GroupKey>,
    /// Ports whose flags may have changed (router ports, say).
    pub ports: BTreeSet<u32>,
    /// VLANs whose router ports or querier presence changed: their entries,
    /// their report targets and every copy list of theirs.
    pub vlans: BTreeSet<u16>,
    /// The data path's configuration (querier presence, policies).
    pub config: bool,
}

impl Dirty {
    pub fn all() -> Self {
        Self { all: true, config: true, ..Self::default() }
    }

    pub fn extend(&mut self, other: Dirty) {
        self.all |= other.all;
        self.config |= other.config;
        self.groups.extend(other.groups);
        self.ports.extend(other.ports);
        self.vlans.extend(other.vlans);
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// Writes that did not fit a full map: their ports get every group
/// (PORT_UNPRUNED) until they do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwritten {
    pub members: BTreeSet<PortGroupKey>,
    pub groups: BTreeSet<GroupKey>,
    /// Memberships whose source filters did not fit: they get every source
    /// meanwhile (over-forwarding, never a blackhole).
    pub sources: BTreeSet<PortGroupKey>,
}

impl Unwritten {
    /// Nothing that leaves a port unpruned.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.groups.is_empty()
    }

    /// Everything to try again.
    pub fn retry(&self) -> Dirty {
        let members = self.members.iter().chain(&self.sources).map(|m| m.group);
        Dirty { groups: members.chain(self.groups.iter().copied()).collect(), ..Dirty::default() }
    }
}

/// The desired entries of the keys in a scope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// The scope was everything: written entries not desired here go.
    pub all: bool,
    /// Every group in scope, with what it must have (nothing: it goes).
    pub groups: BTreeMap<GroupKey, GroupEntries>,
    /// Ports in scope (all attached ones when `all`).
    pub ports: BTreeMap<u32, PortEntry>,
    /// Per-VLAN entries, all of them, when in scope.
    pub vlan_entries: Option<VlanEntries>,
    /// Where reports go, all lists of them, when in scope (redirect only).
    pub report_targets: Option<BTreeMap<GroupKey, CopyList>>,
    pub config: Option<ConfigEntry>,
}

/// One group's entries in the maps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupEntries {
    /// Its memberships, by port.
    pub members: BTreeMap<u32, MemberEntry>,
    /// Registered: it has members somewhere, so it is pruned, not unregistered.
    pub registered: bool,
    /// Where redirect copies it; none: the bridge path.
    pub list: Option<CopyList>,
    /// Sources with their own list.
    pub by_source: BTreeMap<SourceAddr, CopyList>,
}

/// A membership entry: its version, expiry (state time), flags
/// (`MEMBER_*`) and the sources a source filter lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberEntry {
    pub version: u8,
    pub expires: Duration,
    pub flags: u8,
    pub sources: BTreeSet<SourceAddr>,
}

/// A port entry: `PORT_*` flags, its control-frame rate limit and its VLANs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortEntry {
    pub flags: u32,
    pub control_rate_limit: u32,
    pub pvid: u16,
    pub untagged_vlan: u16,
}

/// What the data path prunes by per VLAN on a VLAN-aware bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VlanEntries {
    /// Each VLAN followed, with the no-querier flags of the families that
    /// have no querier there.
    pub vlans: BTreeMap<u16, VlanFlags>,
    /// Router and report flags of ports per VLAN, and PORT_IN_VLAN.
    pub ports: BTreeMap<VlanPortKey, u32>,
}

/// A copy list as redirect reads it, but for its counter slots.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyList {
    /// Bridge ports to clone to; the last one is `last_to_peer`'s.
    pub ports: Vec<u32>,
    /// The bridge device (its host's sockets), or 0.
    pub local: u32,
    /// Ports of the bridge (in the VLAN) a packet spares those it is not copied to.
    pub bridge_ports: u32,
    /// The last port gets the packet itself, handed to its veth peer: a
    /// member port's or a router port's (whose counter the hand-over counts).
    pub last_to_peer: Option<Target>,
    /// `UNTAGGED_*` flags.
    pub untagged: u32,
    /// Some sources have lists of their own.
    pub by_source: bool,
}

/// Where one copy goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// A port with a member of the group.
    Member(u32),
    /// A router port (without a member).
    Router(u32),
    /// The bridge device itself, for the bridge host's own sockets.
    Local(u32),
}

impl Target {
    fn ifindex(self) -> u32 {
        match self {
            Target::Member(i) | Target::Router(i) | Target::Local(i) => i,
        }
    }
}

/// The data path's configuration, but for the heartbeat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    pub flags: u32,
    pub restore: u32,
    pub failsafe: Option<Duration>,
    pub redirect_fresh: Duration,
    pub ssm_ranges: super::reconcile::SsmRanges,
}

/// How redirect copies leave in one VLAN of a VLAN-aware bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct VlanEgress {
    /// The ports (and the bridge device) in the VLAN, each with whether
    /// the VLAN's frames leave it tagged.
    tagged: BTreeMap<u32, bool>,
    /// How many of the bridge's ports are in the VLAN.
    ports: u32,
    /// Some port leaves the VLAN untagged, but its egress program untags
    /// another VLAN (a port has one untagged VLAN in the data path): the
    /// VLAN's traffic takes the bridge path.
    bridge_path: bool,
}

/// The desired entries of `scope` at `now`, given what did not fit.
pub fn project(daemon: &Daemon, scope: &Dirty, unwritten: &Unwritten, now: Duration) -> Desired {
    let projection = Projection { daemon, unwritten, now };
    let mut desired = Desired { all: scope.all, ..Desired::default() };
    // Groups: those touched, those of touched VLANs, or all.
    let mut groups: BTreeSet<GroupKey> = scope.groups.clone();
    for (vlan, context) in &daemon.contexts {
        if scope.all || scope.vlans.contains(vlan) {
            groups.extend(context.igmp.groups().keys().map(|g| g.key()));
            groups.extend(context.mld.iter().flat_map(|mld| mld.groups().keys().map(|g| g.key())));
        }
    }
    for key in groups {
        let entries = match key.family {
            FAMILY_IPV4 => projection.group::<Ipv4Addr>(&key),
            FAMILY_IPV6 => projection.group::<Ipv6Addr>(&key),
            _ => GroupEntries::default(),
        };
        desired.groups.insert(key, entries);
    }
    // Ports whose groups did not fit are unpruned: touched with them.
    let mut ports: BTreeSet<u32> = scope.ports.clone();
    ports.extend(unwritten.members.iter().map(|m| m.ifindex));
    if scope.all || !scope.vlans.is_empty() {
        ports.extend(daemon.ports.keys());
    }
    for ifindex in ports.into_iter().filter(|p| daemon.ports.contains_key(p)) {
        desired.ports.insert(ifindex, projection.port(ifindex));
    }
    if scope.all || !scope.vlans.is_empty() {
        desired.vlan_entries = Some(projection.vlan_entries());
        desired.report_targets = Some(projection.report_targets());
    }
    if scope.all || scope.config || !scope.vlans.is_empty() {
        desired.config = Some(projection.config());
    }
    desired
}

/// The ports that get every group because some of their memberships, or
/// their groups, did not fit the maps.
pub fn unpruned_ports(daemon: &Daemon, unwritten: &Unwritten) -> BTreeSet<u32> {
    let projection = Projection { daemon, unwritten, now: Duration::ZERO };
    daemon.ports.keys().copied().filter(|port| projection.unpruned(*port)).collect()
}

struct Projection<'a> {
    daemon: &'a Daemon,
    unwritten: &'a Unwritten,
    now: Duration,
}

impl Projection<'_> {
    fn group<A: Snooped>(&self, key: &GroupKey) -> GroupEntries {
        let Some(group) = Group::<A>::from_key(key) else { return GroupEntries::default() };
        let Some(context) = self.daemon.contexts.get(&group.vlan) else { return GroupEntries::default() };
        let Some(members) = A::of(context).and_then(|s| s.groups().get(&group)) else {
            return GroupEntries::default();
        };
        let members: BTreeMap<u32, MemberEntry> = members
            .iter()
            .map(|(port, member)| {
                let (expires, version, leaving) = member.persisted();
                let mut flags = if leaving { MEMBER_LEAVING } else { 0 };
                if member.permanent {
                    flags |= MEMBER_STATIC;
                }
                let (source_flag, sources) = match member.forwarded() {
                    SourceFilter::Include(listed) => (MEMBER_SOURCES_INCLUDE, listed),
                    SourceFilter::Exclude(listed) if listed.is_empty() => (0, listed),
                    SourceFilter::Exclude(listed) => (MEMBER_SOURCES_EXCLUDE, listed),
                };
                let expires = if member.permanent { NEVER } else { expires };
                let sources = sources.iter().map(|s| s.source_key()).collect();
                (*port, MemberEntry { version, expires, flags: flags | source_flag, sources })
            })
            .collect();
        let registered = !members.is_empty();
        let (list, by_source) =
            if self.daemon.forwarding.redirect { self.copy_lists(&group, context) } else { (None, BTreeMap::new()) };
        GroupEntries { members, registered, list, by_source }
    }

    /// Where redirect copies `group`: its member ports that want a source
    /// no member names, its VLAN's router ports, the bridge device if its
    /// host joined; and for each source a member names whose copies differ,
    /// a list of its own. None: the bridge path (too many ports, a VLAN the
    /// data path cannot tag alike, nobody to copy to).
    fn copy_lists<A: Snooped>(
        &self,
        group: &Group<A>,
        context: &VlanContext,
    ) -> (Option<CopyList>, BTreeMap<SourceAddr, CopyList>) {
        let daemon = self.daemon;
        let egress = self.vlan_egress(group.vlan);
        let routers = self.routers::<A>(context);
        let local = daemon.local.contains(&(group.vlan, group.addr.ip()))
            || daemon.host_routes.contains(&(group.vlan, A::FAMILY));
        let filters: Vec<(u32, &SourceFilter<A>)> = A::of(context)
            .and_then(|s| s.groups().get(group))
            .into_iter()
            .flatten()
            .filter(|(port, _)| self.forwarding(**port))
            .map(|(port, member)| (*port, member.forwarded()))
            .collect();
        // Who gets `source` (None: a source no member names).
        let copies_of = |source: Option<&A>| {
            let wants = |f: &SourceFilter<A>| source.map_or(!matches!(f, SourceFilter::Include(_)), |s| f.wants(s));
            let wanting: BTreeSet<u32> = filters.iter().filter(|(_, f)| wants(f)).map(|(p, _)| *p).collect();
            let mut targets: Vec<Target> = wanting.iter().map(|port| Target::Member(*port)).collect();
            // A router port gets every source, member or not.
            targets.extend(routers.iter().filter(|r| !wanting.contains(r)).map(|r| Target::Router(*r)));
            if local {
                targets.push(Target::Local(daemon.bridge.ifindex));
            }
            if let Some(egress) = &egress {
                // A target outside the VLAN is none of its ports.
                targets.retain(|t| egress.tagged.contains_key(&t.ifindex()));
            }
            targets
        };
        let default = copies_of(None);
        let named: BTreeSet<&A> = filters.iter().flat_map(|(_, f)| f.listed()).collect();
        let by_source: Vec<(SourceAddr, Vec<Target>)> = named
            .into_iter()
            .map(|source| (source.source_key(), copies_of(Some(source))))
            .filter(|(_, copies)| *copies != default)
            .collect();
        let too_long = default.len() > MAX_FANOUT
            || by_source.iter().any(|(_, t)| t.len() > MAX_FANOUT)
            || egress.as_ref().is_some_and(|e| e.bridge_path);
        if too_long || default.is_empty() && by_source.is_empty() {
            return (None, BTreeMap::new());
        }
        let mut list = self.list(&default, true, egress.as_ref());
        list.by_source = !by_source.is_empty();
        let by_source = by_source.iter().map(|(s, t)| (*s, self.list(t, true, egress.as_ref()))).collect();
        (Some(list), by_source)
    }

    /// One copy list of `targets`. For group traffic (`is_group`), a port
    /// reachable through its veth peer goes last, so the data path can hand
    /// it the packet itself instead of one more clone. In a VLAN, the copies
    /// no egress program untags are marked.
    fn list(&self, targets: &[Target], is_group: bool, egress: Option<&VlanEgress>) -> CopyList {
        let untagged =
            |target: &Target| egress.is_some_and(|e| !e.tagged.get(&target.ifindex()).copied().unwrap_or(false));
        let local = targets.iter().find(|t| matches!(t, Target::Local(_)));
        let mut ordered: Vec<Target> = targets.iter().filter(|t| !matches!(t, Target::Local(_))).copied().collect();
        let peer = is_group
            .then(|| ordered.iter().rposition(|t| self.daemon.ports.get(&t.ifindex()).is_some_and(|p| p.peer)))
            .flatten();
        let mut flags = 0;
        let mut last_to_peer = None;
        if let Some(index) = peer {
            let last = ordered.remove(index);
            if untagged(&last) {
                flags |= UNTAGGED_LAST;
            }
            ordered.push(last);
            last_to_peer = Some(last);
        }
        if local.is_some_and(untagged) {
            flags |= UNTAGGED_LOCAL;
        }
        CopyList {
            ports: ordered.iter().map(|t| t.ifindex()).collect(),
            local: local.map_or(0, |t| t.ifindex()),
            bridge_ports: egress.map_or(self.daemon.ports.len() as u32, |e| e.ports),
            last_to_peer,
            untagged: flags,
            by_source: false,
        }
    }

    /// A port the bridge would forward to: redirect copies to no other.
    fn forwarding(&self, port: u32) -> bool {
        self.daemon.ports.get(&port).is_some_and(|p| p.policy.forwarding)
    }

    /// The forwarding router ports of `A` in a context.
    fn routers<A: Snooped>(&self, context: &VlanContext) -> Vec<u32> {
        let Some(snooper) = A::of(context) else { return Vec::new() };
        let ports = snooper.ports().iter().filter(|(i, p)| p.is_router(self.now) && self.forwarding(**i));
        ports.map(|(ifindex, _)| *ifindex).collect()
    }

    /// How redirect copies leave in `vlan`: None while the bridge does not
    /// filter VLANs (frames keep whatever tags they came with).
    fn vlan_egress(&self, vlan: u16) -> Option<VlanEgress> {
        let daemon = self.daemon;
        if !daemon.vlans.filtering {
            return None;
        }
        let mut egress = VlanEgress::default();
        for (ifindex, port) in &daemon.vlans.ports {
            let attached = daemon.ports.contains_key(ifindex);
            if !attached && *ifindex != daemon.bridge.ifindex {
                continue;
            }
            if let Some(untagged) = port.vlans.get(&vlan) {
                egress.tagged.insert(*ifindex, !untagged);
                egress.ports += u32::from(attached);
                egress.bridge_path |= attached && *untagged && port.untagged_vlan() != Some(vlan);
            }
        }
        Some(egress)
    }

    /// Where each family's reports go in each VLAN: its router ports, or
    /// the ports named trusted while it has none (an upstream router or
    /// proxy hears joins at once, not at its next query), and up to the
    /// bridge device (a multicast routing daemon on it needs them). Never
    /// to the other hosts: an IGMPv2 or MLDv1 host hearing another's
    /// report suppresses its own, and then never sends its leave.
    fn report_targets(&self) -> BTreeMap<GroupKey, CopyList> {
        let mut lists = BTreeMap::new();
        if !self.daemon.forwarding.redirect {
            return lists;
        }
        for (vlan, context) in &self.daemon.contexts {
            let egress = self.vlan_egress(*vlan);
            for (family, routers, snooper_ports) in [
                (FAMILY_IPV4, self.routers::<Ipv4Addr>(context), Some(context.igmp.ports())),
                (FAMILY_IPV6, self.routers::<Ipv6Addr>(context), context.mld.as_ref().map(|m| m.ports())),
            ] {
                let Some(snooper_ports) = snooper_ports else { continue };
                let report_ports: Vec<u32> = if routers.is_empty() {
                    let upstream = snooper_ports.iter().filter(|(i, p)| p.options.upstream && self.forwarding(**i));
                    upstream.map(|(ifindex, _)| *ifindex).collect()
                } else {
                    routers
                };
                let mut targets: Vec<Target> = report_ports.iter().map(|r| Target::Router(*r)).collect();
                targets.push(Target::Local(self.daemon.bridge.ifindex));
                if let Some(egress) = &egress {
                    targets.retain(|t| egress.tagged.contains_key(&t.ifindex()));
                }
                if targets.is_empty() || targets.len() > MAX_FANOUT || egress.as_ref().is_some_and(|e| e.bridge_path) {
                    continue;
                }
                lists.insert(GroupKey::report_targets(family, *vlan), self.list(&targets, false, egress.as_ref()));
            }
        }
        lists
    }

    /// A port's flags: router port of a family (in some VLAN), gets a
    /// family's reports (trusted, in a VLAN without a router port of it),
    /// unpruned (some of its memberships did not fit), bridge path (its
    /// policy or filters); and its VLANs.
    fn port(&self, ifindex: u32) -> PortEntry {
        let daemon = self.daemon;
        let port = &daemon.ports[&ifindex];
        let mut flags = 0;
        for context in daemon.contexts.values().filter(|c| c.has_port(ifindex)) {
            flags |= self.family_flags::<Ipv4Addr>(context, ifindex, port.options.upstream);
            flags |= self.family_flags::<Ipv6Addr>(context, ifindex, port.options.upstream);
        }
        if self.unpruned(ifindex) {
            flags |= PORT_UNPRUNED;
        }
        if port.policy.bridge_path().is_some() {
            flags |= PORT_BRIDGE_PATH;
        }
        let (pvid, untagged_vlan) = match daemon.vlans.ports.get(&ifindex).filter(|_| daemon.vlans.filtering) {
            Some(vlans) => (vlans.pvid.unwrap_or(VLAN_NONE), vlans.untagged_vlan().unwrap_or(VLAN_NONE)),
            None => (VLAN_NONE, VLAN_NONE),
        };
        PortEntry { flags, control_rate_limit: daemon.start.control_rate_limit, pvid, untagged_vlan }
    }

    /// Router and report flags of `A` a port has in a context.
    fn family_flags<A: Snooped>(&self, context: &VlanContext, ifindex: u32, upstream: bool) -> u32 {
        let Some(snooper) = A::of(context) else { return 0 };
        let now = self.now;
        if snooper.ports().get(&ifindex).is_some_and(|p| p.is_router(now)) {
            A::FLAGS.router
        } else if upstream && !snooper.ports().values().any(|p| p.is_router(now)) {
            A::FLAGS.gets_reports
        } else {
            0
        }
    }

    /// A port some of whose memberships the maps could not hold: it gets
    /// every group until they fit.
    fn unpruned(&self, ifindex: u32) -> bool {
        self.unwritten.members.iter().any(|m| m.ifindex == ifindex)
            || self.unwritten.groups.iter().any(|group| self.group_members(group).contains(&ifindex))
    }

    fn group_members(&self, key: &GroupKey) -> BTreeSet<u32> {
        let Some(context) = self.daemon.contexts.get(&key.vlan) else { return BTreeSet::new() };
        match key.family {
            FAMILY_IPV4 => Group::<Ipv4Addr>::from_key(key).map(|g| context.members(&g).collect()),
            FAMILY_IPV6 => Group::<Ipv6Addr>::from_key(key).map(|g| context.members(&g).collect()),
            _ => None,
        }
        .unwrap_or_default()
    }

    /// On a VLAN-aware bridge: querier presence per VLAN, router and
    /// report flags of ports per VLAN, and the VLANs each port is in.
    fn vlan_entries(&self) -> VlanEntries {
        let daemon = self.daemon;
        let mut entries = VlanEntries::default();
        if !daemon.vlans.filtering {
            return entries;
        }
        for (vlan, context) in &daemon.contexts {
            let mut flags = 0;
            if !context.querier_present::<Ipv4Addr>(self.now) {
                flags |= no_querier_flag(FAMILY_IPV4);
            }
            if !context.querier_present::<Ipv6Addr>(self.now) {
                flags |= no_querier_flag(FAMILY_IPV6);
            }
            entries.vlans.insert(*vlan, flags);
            for (ifindex, port) in &daemon.ports {
                if !context.has_port(*ifindex) {
                    continue;
                }
                let flags = self.family_flags::<Ipv4Addr>(context, *ifindex, port.options.upstream)
                    | self.family_flags::<Ipv6Addr>(context, *ifindex, port.options.upstream);
                if flags != 0 {
                    entries.ports.insert(VlanPortKey::new(*vlan, *ifindex), flags);
                }
            }
        }
        // Redirect takes a tagged frame only from a port in its VLAN.
        for ifindex in daemon.ports.keys() {
            for vlan in daemon.vlans.vlans_of([*ifindex]) {
                *entries.ports.entry(VlanPortKey::new(vlan, *ifindex)).or_insert(0) |= PORT_IN_VLAN;
            }
        }
        entries
    }

    /// The data path's policy: flags from the configuration, querier
    /// presence, redirect (or not), and whether some port's frames must
    /// take the bridge path.
    fn config(&self) -> ConfigEntry {
        let daemon = self.daemon;
        let start = &daemon.start;
        let mut flags = if daemon.live.flood_unregistered { CONFIG_FLOOD_UNREGISTERED } else { 0 };
        if !daemon.family_present::<Ipv4Addr>(self.now) {
            flags |= no_querier_flag(FAMILY_IPV4);
        }
        if !start.mld || !daemon.family_present::<Ipv6Addr>(self.now) {
            flags |= no_querier_flag(FAMILY_IPV6);
        }
        if start.snoop_ipv6_link_scope {
            flags |= CONFIG_SNOOP_IPV6_LINK_SCOPE;
        }
        if daemon.vlans.filtering {
            flags |= CONFIG_VLAN_AWARE;
        }
        if daemon.forwarding.redirect {
            flags |= CONFIG_REDIRECT;
        }
        if daemon.ports.values().any(|p| p.policy.bridge_path().is_some()) {
            flags |= CONFIG_CHECK_SOURCE_PORT;
        }
        ConfigEntry {
            flags,
            restore: daemon.restore,
            failsafe: start.failsafe_after,
            // Three missed heartbeats end redirects.
            redirect_fresh: 3 * snoop_common::HEARTBEAT_INTERVAL,
            ssm_ranges: std::array::from_fn(|i| start.ssm_ranges.get(i).copied().unwrap_or_default()),
        }
    }
}
