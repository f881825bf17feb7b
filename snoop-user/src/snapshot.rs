//! The state a running controller reports to `snoop show`: one JSON document,
//! also the `--json` output, collected from the state machine and the data
//! path by [`collect`]. Field names are a stable interface: add fields, never
//! rename or remove them.
use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use snoop_common::{
    Counter, GroupKey, PortCounters, PortGroupKey, TrafficCounters, PORT_GETS_REPORTS, PORT_GETS_REPORTS_IPV6,
    PORT_UNPRUNED, VLAN_NONE,
};

use crate::{
    daemon::{state::Port, vlan::VlanContext},
    membership::{FilterMode, IgnoredCounts, Member, PortState, RouterSign, Snooper, NEVER},
    proto::{key_ip, Family},
    stats::Stats,
};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub bridge: String,
    #[serde(default)]
    pub bridge_ifindex: u32,
    pub uptime_secs: f64,
    /// The IGMP querier.
    pub querier: QuerierView,
    /// The MLD querier; absent when MLD snooping is off.
    #[serde(default)]
    pub mld_querier: Option<QuerierView>,
    /// On a VLAN-aware bridge: each VLAN's queriers (`querier` and
    /// `mld_querier` are the lowest VLAN's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<VlanView>,
    #[serde(default)]
    pub forwarding: ForwardingView,
    pub ports: Vec<PortView>,
    pub groups: Vec<GroupView>,
    /// Data path counters by name (summed over CPUs).
    pub datapath: BTreeMap<String, u64>,
    /// Controller counters: parse errors by kind and event handling.
    pub controller: BTreeMap<String, u64>,
    /// Traffic per (group, member port) as the data path counted it.
    pub traffic: Vec<TrafficView>,
    /// Groups the bridge's own host joined (known in redirect forwarding).
    #[serde(default)]
    pub local_groups: Vec<LocalGroupView>,
    /// What runs: snoop's version, the kernel, how the programs attach.
    #[serde(default)]
    pub build: BuildView,
    /// How full the data path's maps are.
    #[serde(default)]
    pub maps: Vec<MapFillView>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct MapFillView {
    /// "memberships", "groups", "copy_lists", "sources".
    pub map: String,
    pub entries: u64,
    pub capacity: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BuildView {
    pub version: String,
    pub kernel: String,
    /// "tcx" or "clsact".
    pub attach: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LocalGroupView {
    pub group: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VlanView {
    pub vlan: u16,
    pub querier: QuerierView,
    pub mld_querier: Option<QuerierView>,
    /// Its ports.
    pub ports: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuerierView {
    /// "self": snoop queries; "other": another querier won the election;
    /// "none": snoop's querier is disabled and no other was heard.
    pub role: String,
    /// Source address of snoop's own queries.
    pub own_address: IpAddr,
    /// The elected querier's address (own address when role is "self").
    pub querier_address: Option<IpAddr>,
    /// Seconds until the other querier counts as gone.
    pub other_querier_expires_in_secs: Option<f64>,
    /// Seconds until snoop's next general query.
    pub next_query_in_secs: Option<f64>,
    /// A querier is present; while none is, nothing is pruned.
    pub present: bool,
    /// The version of snoop's queries (lowered while older queriers are about).
    pub query_version: u8,
    /// The timers in force: snoop's own, or those the elected querier announces.
    pub query_interval_secs: f64,
    pub robustness: u32,
    /// Routers heard on untrusted ports and ignored: reports do not reach them.
    pub ignored_routers: Vec<IgnoredRouterView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IgnoredRouterView {
    pub port: String,
    pub address: IpAddr,
    /// "a querier", "a PIM router", "a multicast router (MRD)".
    pub heard_as: String,
    pub heard_secs_ago: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortView {
    pub ifindex: u32,
    pub name: String,
    /// An IPv4 (IGMP) router port (in some VLAN, on a VLAN-aware bridge).
    pub router: bool,
    /// On a VLAN-aware bridge: the VLANs it is in, and those it is an IGMP
    /// or MLD router port of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vlans: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub router_vlans: Vec<u16>,
    pub static_router: bool,
    pub fast_leave: bool,
    /// Seconds until a learned IPv4 router port expires.
    pub router_expires_in_secs: Option<f64>,
    /// An IPv6 (MLD) router port.
    #[serde(default)]
    pub mld_router: bool,
    #[serde(default)]
    pub mld_router_expires_in_secs: Option<f64>,
    pub groups: usize,
    /// The groups it may join: "any group", or its allow and deny ranges.
    #[serde(default)]
    pub group_filter: String,
    /// Joins refused by its group filter, and by its group limit.
    #[serde(default)]
    pub refused_by_filter: u64,
    #[serde(default)]
    pub refused_by_limit: u64,
    /// Control frames that entered through the port, counted by the data path.
    pub queries_received: u64,
    pub reports_received: u64,
    pub leaves_received: u64,
    pub other_igmp_received: u64,
    pub pim_hellos_received: u64,
    /// Control frames from this port the controller dropped as malformed.
    pub malformed_dropped: u64,
    /// Group traffic sent out of this port (to members and as a router
    /// port) and held back from it, all groups.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
    /// Some of the port's memberships did not fit a full map: it gets every
    /// group until they do (see `--max-memberships`).
    #[serde(default)]
    pub unpruned: bool,
    /// Why the port is treated specially (isolated, not forwarding, maps full), if it is.
    #[serde(default)]
    pub note: String,
}

/// How group traffic is forwarded now, and why not redirected if it is not.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ForwardingView {
    /// "redirect" (copied from the sender's port) or "bridge" (the bridge
    /// floods, each port's egress prunes).
    pub mode: String,
    pub why: Option<String>,
    /// Redirecting: ports whose frames take the bridge path all the same,
    /// by name, and why (isolated, or the operator's tc filters after
    /// snoop's program on its ingress, ...).
    #[serde(default)]
    pub bridge_path_ports: BTreeMap<String, String>,
    /// Ports snoop's programs could not be attached to (tried again every
    /// port scan), and why: traffic through them is neither snooped nor
    /// pruned.
    #[serde(default)]
    pub unattached_ports: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub group: IpAddr,
    /// Its VLAN, on a VLAN-aware bridge: the same group in two VLANs is two groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    pub members: Vec<MemberView>,
    /// Group traffic sent to member ports, and held back from ports without
    /// members (router ports' copies are counted per port).
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    pub ifindex: u32,
    pub port: String,
    /// "IGMP" or "MLD".
    #[serde(default)]
    pub protocol: String,
    /// Lowest version of the protocol heard on the port for this group.
    pub version: u8,
    /// `null` for a static membership, which never expires.
    pub expires_in_secs: Option<f64>,
    /// Configured (`snoop group add`, `static-groups`): never aged, hosts' reports change nothing.
    #[serde(rename = "static", default)]
    pub permanent: bool,
    pub last_reporter: IpAddr,
    /// The hosts behind the port known to want the group (IGMPv3/MLDv2
    /// hosts all report; of older ones, those that did).
    #[serde(default)]
    pub hosts: Vec<IpAddr>,
    /// A leave was heard; the membership ends unless a host answers the last-member queries.
    pub leaving: bool,
    /// "include" (only `sources` marked forwarded) or "exclude" (all but the blocked ones).
    #[serde(default = "exclude")]
    pub filter_mode: FilterMode,
    /// The sources the port named, with their timers.
    #[serde(default)]
    pub sources: Vec<SourceView>,
    /// Group traffic sent to this port.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
}

fn exclude() -> FilterMode {
    FilterMode::Exclude
}

/// One source a membership names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SourceView {
    pub address: IpAddr,
    /// Sent to the port: requested (INCLUDE, or EXCLUDE with its timer
    /// running), not blocked.
    pub forwarded: bool,
    /// 0 in a static membership (its sources never expire).
    pub expires_in_secs: f64,
}

/// Traffic sent to one member port for one group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficView {
    pub group: IpAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    pub ifindex: u32,
    pub port: String,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
}

/// One line of `snoop watch`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    pub event: EventKind,
    pub group: Option<IpAddr>,
    pub port: Option<String>,
    /// Free text: IGMP version of a join, reason of a removal, querier address.
    pub detail: String,
    /// The VLAN it happened in, on a VLAN-aware bridge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A port got its first member of a group.
    Join,
    /// A port's membership ended on a leave (fast leave, or unanswered last-member queries).
    Leave,
    /// A port's membership timed out: no report within the membership interval.
    Expire,
    /// The sources a port gets of a group changed (detail: its filter).
    Sources,
    /// A port's memberships ended because the port left the bridge.
    PortRemoved,
    PortAttached,
    RouterPortLearned,
    RouterPortExpired,
    /// Another querier won the election (detail: its address).
    QuerierOther,
    /// snoop is the querier.
    QuerierSelf,
    /// A join was refused (detail: the port's filter, or its group limit).
    Refused,
    /// The watcher fell behind and missed events (detail: how many).
    Lost,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Expire => "expire",
            Self::Sources => "sources",
            Self::PortRemoved => "port-removed",
            Self::PortAttached => "port-attached",
            Self::RouterPortLearned => "router-port-learned",
            Self::RouterPortExpired => "router-port-expired",
            Self::QuerierOther => "querier-other",
            Self::QuerierSelf => "querier-self",
            Self::Refused => "refused",
            Self::Lost => "lost",
        }
    }
}

impl Event {
    pub fn now(event: EventKind, group: Option<IpAddr>, port: Option<String>, detail: String) -> Self {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        Self { time, event, group, port, detail, vlan: None }
    }

    /// The one-line text form.
    pub fn to_line(&self) -> String {
        let group = self.group.map_or("-".to_string(), |g| g.to_string());
        let vlan = self.vlan.map_or(String::new(), |v| format!("vlan {v} "));
        let line = format!(
            "{}  {:<20} {:<15} {:<8} {vlan}{}",
            self.time,
            self.event.as_str(),
            group,
            self.port.as_deref().unwrap_or("-"),
            self.detail
        );
        line.trim_end().to_owned()
    }
}

/// The data path's counters, as the controller reads them.
pub trait Counters {
    /// The data path counters, indexed by [`Counter`].
    fn datapath(&self) -> Vec<u64>;
    /// Traffic sent to each member port.
    fn member_traffic(&self) -> Vec<(PortGroupKey, TrafficCounters)>;
    /// Traffic of a group held back from ports without members.
    fn group_traffic(&self, group: GroupKey) -> TrafficCounters;
    /// Traffic a port was sent as a router port, and spared.
    fn port_traffic(&self, ifindex: u32) -> TrafficCounters;
    /// Control traffic that entered through a port.
    fn port_counters(&self, ifindex: u32) -> PortCounters;
}

/// What a snapshot is collected from.
pub struct Sources<'a> {
    pub bridge: &'a str,
    pub bridge_ifindex: u32,
    /// Groups the bridge's host joined, by VLAN.
    pub local: &'a std::collections::BTreeSet<(u16, IpAddr)>,
    /// "tcx" or "clsact".
    pub attach: &'static str,
    pub maps: Vec<MapFillView>,
    pub uptime: Duration,
    /// The VLAN contexts ([`VLAN_NONE`] alone without VLANs).
    pub contexts: &'a BTreeMap<u16, VlanContext>,
    /// MLD snooping is on.
    pub mld: bool,
    pub ports: &'a BTreeMap<u32, Port>,
    /// Each port's flags as the data path has them (unpruned, gets reports).
    pub port_flags: BTreeMap<u32, u32>,
    pub counters: &'a dyn Counters,
    pub stats: &'a Stats,
    pub forwarding: ForwardingView,
}

impl Sources<'_> {
    fn port_name(&self, ifindex: u32) -> String {
        self.ports.get(&ifindex).map_or_else(|| format!("#{ifindex}"), |p| p.name.clone())
    }

    fn secs_until(&self, at: Duration) -> f64 {
        at.saturating_sub(self.uptime).as_secs_f64()
    }

    fn vlan_aware(&self) -> bool {
        self.contexts.keys().any(|vlan| *vlan != VLAN_NONE)
    }

    /// The IGMP machines, by VLAN.
    fn igmp(&self) -> impl Iterator<Item = (u16, &Snooper<Ipv4Addr>)> + '_ {
        self.contexts.iter().map(|(vlan, context)| (*vlan, &context.igmp))
    }

    /// The MLD machines, by VLAN (none while MLD snooping is off).
    fn mld(&self) -> impl Iterator<Item = (u16, &Snooper<Ipv6Addr>)> + '_ {
        self.contexts.iter().filter_map(|(vlan, context)| Some((*vlan, context.mld.as_ref()?)))
    }
}

/// The VLAN a view shows: none without VLANs.
fn shown_vlan(vlan: u16) -> Option<u16> {
    (vlan != VLAN_NONE).then_some(vlan)
}

/// The current state; without groups and traffic when `counters_only`
/// (cheap however many groups there are).
pub fn collect(sources: &Sources, counters_only: bool) -> Snapshot {
    let traffic = if counters_only { Vec::new() } else { traffic(sources) };
    let mut groups = Vec::new();
    if !counters_only {
        groups = sources.igmp().flat_map(|(_, s)| group_views(sources, s, &traffic)).collect();
        for (_, mld) in sources.mld() {
            groups.extend(group_views(sources, mld, &traffic));
        }
        groups.sort_by_key(|g| (g.group, g.vlan));
    }
    let ignored = |named: &mut BTreeMap<String, u64>, prefix: &str, counts: [(&str, u64); 9]| {
        for (name, count) in counts {
            *named.entry(format!("{prefix}{name}")).or_default() += count;
        }
    };
    let mut controller: BTreeMap<String, u64> = sources.stats.named().collect();
    let mut ignored_counts = BTreeMap::new();
    for (_, snooper) in sources.igmp() {
        ignored(&mut ignored_counts, "", snooper.ignored().named());
    }
    for (_, snooper) in sources.mld() {
        ignored(&mut ignored_counts, "mld_", snooper.ignored().named());
    }
    if ignored_counts.is_empty() {
        // No state machine (a VLAN-aware bridge with no VLAN yet): zeros.
        ignored(&mut ignored_counts, "", IgnoredCounts::default().named());
    }
    controller.extend(ignored_counts);
    let vlans = if sources.vlan_aware() {
        sources
            .contexts
            .iter()
            .map(|(vlan, context)| VlanView {
                vlan: *vlan,
                querier: querier_view(sources, Some(&context.igmp)),
                mld_querier: sources.mld.then(|| querier_view(sources, context.mld.as_ref())),
                ports: context.igmp.ports().keys().map(|p| sources.port_name(*p)).collect(),
            })
            .collect()
    } else {
        Vec::new()
    };
    let local_groups = if counters_only {
        Vec::new()
    } else {
        let vlan = |v: u16| (v != VLAN_NONE).then_some(v);
        sources.local.iter().map(|(v, group)| LocalGroupView { group: *group, vlan: vlan(*v) }).collect()
    };
    Snapshot {
        bridge: sources.bridge.to_owned(),
        bridge_ifindex: sources.bridge_ifindex,
        local_groups,
        maps: sources.maps.clone(),
        build: BuildView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned(),
            attach: sources.attach.to_owned(),
        },
        uptime_secs: sources.uptime.as_secs_f64(),
        querier: querier_view(sources, sources.igmp().next().map(|(_, s)| s)),
        mld_querier: sources.mld.then(|| querier_view(sources, sources.mld().next().map(|(_, s)| s))),
        vlans,
        forwarding: sources.forwarding.clone(),
        ports: port_views(sources, &traffic),
        groups,
        datapath: Counter::ALL.iter().zip(sources.counters.datapath()).map(|(c, v)| (c.name().to_owned(), v)).collect(),
        controller,
        traffic,
    }
}

/// Traffic per (group, member port), sorted.
fn traffic(sources: &Sources) -> Vec<TrafficView> {
    let mut traffic: Vec<TrafficView> = sources
        .counters
        .member_traffic()
        .into_iter()
        .filter_map(|(PortGroupKey { group, ifindex }, c)| {
            Some(TrafficView {
                group: key_ip(&group)?,
                vlan: shown_vlan(group.vlan),
                ifindex,
                port: sources.port_name(ifindex),
                forwarded_packets: c.forwarded_packets,
                forwarded_bytes: c.forwarded_bytes,
            })
        })
        .collect();
    traffic.sort_by_key(|t| (t.group, t.vlan, t.ifindex));
    traffic
}

/// A querier's view; `None`: no state machine (no VLAN on the bridge yet).
fn querier_view<A: Family>(sources: &Sources, snooper: Option<&Snooper<A>>) -> QuerierView {
    let Some(snooper) = snooper else {
        return QuerierView {
            role: "none".into(),
            own_address: A::from_ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
                .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |a| a.ip()),
            querier_address: None,
            other_querier_expires_in_secs: None,
            next_query_in_secs: None,
            present: false,
            query_version: 0,
            query_interval_secs: 0.0,
            robustness: 0,
            ignored_routers: Vec::new(),
        };
    };
    let querier = snooper.querier();
    let (role, querier_address) = match querier.other {
        Some((addr, _)) => ("other", Some(addr.ip())),
        None if querier.is_querier() => ("self", Some(querier.own_address.ip())),
        None => ("none", None),
    };
    QuerierView {
        role: role.into(),
        own_address: querier.own_address.ip(),
        querier_address,
        other_querier_expires_in_secs: querier.other.map(|(_, until)| sources.secs_until(until)),
        next_query_in_secs: querier
            .next_general_query
            .filter(|_| querier.is_querier())
            .map(|at| sources.secs_until(at)),
        present: snooper.querier_present(sources.uptime),
        query_version: querier.version,
        query_interval_secs: snooper.timers().query_interval.as_secs_f64(),
        robustness: snooper.timers().robustness,
        ignored_routers: snooper
            .untrusted_routers()
            .iter()
            .map(|(port, heard)| IgnoredRouterView {
                port: sources.port_name(*port),
                address: heard.source.ip(),
                heard_as: heard.sign.describe().into(),
                heard_secs_ago: sources.uptime.saturating_sub(heard.last_heard).as_secs_f64(),
            })
            .collect(),
    }
}

fn port_views(sources: &Sources, traffic: &[TrafficView]) -> Vec<PortView> {
    // Totals per port in one pass (100k groups must stay cheap).
    let mut to_members: HashMap<u32, (u64, u64)> = HashMap::new();
    for t in traffic {
        let total = to_members.entry(t.ifindex).or_default();
        total.0 += t.forwarded_packets;
        total.1 += t.forwarded_bytes;
    }
    let now = sources.uptime;
    let vlan_aware = sources.vlan_aware();
    sources
        .ports
        .keys()
        .filter_map(|ifindex| {
            // A port's state in each VLAN it is in (one without VLANs).
            let states: Vec<(u16, &PortState)> =
                sources.igmp().filter_map(|(v, s)| Some((v, s.ports().get(ifindex)?))).collect();
            let mld_states: Vec<(u16, &PortState)> =
                sources.mld().filter_map(|(v, s)| Some((v, s.ports().get(ifindex)?))).collect();
            let (_, first) = *states.first()?;
            let router_until = |states: &[(u16, &PortState)]| states.iter().filter_map(|(_, s)| s.router_until).max();
            let sum = |f: fn(&PortState) -> u64| states.iter().chain(&mld_states).map(|(_, s)| f(s)).sum::<u64>();
            let control = sources.counters.port_counters(*ifindex);
            let as_router = sources.counters.port_traffic(*ifindex);
            let (member_packets, member_bytes) = to_members.get(ifindex).copied().unwrap_or_default();
            let mut router_vlans: Vec<u16> =
                states.iter().chain(&mld_states).filter(|(_, s)| s.is_router(now)).map(|(v, _)| *v).collect();
            router_vlans.sort_unstable();
            router_vlans.dedup();
            Some(PortView {
                ifindex: *ifindex,
                name: sources.port_name(*ifindex),
                router: states.iter().any(|(_, s)| s.is_router(now)),
                vlans: if vlan_aware { states.iter().map(|(v, _)| *v).collect() } else { Vec::new() },
                router_vlans: if vlan_aware { router_vlans } else { Vec::new() },
                static_router: first.options.static_router,
                fast_leave: first.options.fast_leave,
                router_expires_in_secs: router_until(&states).map(|at| sources.secs_until(at)),
                mld_router: mld_states.iter().any(|(_, s)| s.is_router(now)),
                mld_router_expires_in_secs: router_until(&mld_states).map(|at| sources.secs_until(at)),
                groups: sum(|s| s.groups as u64) as usize,
                group_filter: first.filter.to_string(),
                refused_by_filter: sum(|s| s.refused_by_filter),
                refused_by_limit: sum(|s| s.refused_by_limit),
                queries_received: control.queries,
                reports_received: control.reports,
                leaves_received: control.leaves,
                other_igmp_received: control.other_igmp,
                pim_hellos_received: control.pim_hellos,
                malformed_dropped: sources.ports.get(ifindex).map_or(0, |p| p.malformed),
                forwarded_packets: member_packets + as_router.forwarded_packets,
                forwarded_bytes: member_bytes + as_router.forwarded_bytes,
                pruned_packets: as_router.pruned_packets,
                pruned_bytes: as_router.pruned_bytes,
                unpruned: sources.port_flags.get(ifindex).is_some_and(|f| f & PORT_UNPRUNED != 0),
                note: {
                    let mut notes: Vec<String> = sources
                        .ports
                        .get(ifindex)
                        .map(|p| p.note(sources.forwarding.mode == "redirect"))
                        .into_iter()
                        .filter(|note| !note.is_empty())
                        .collect();
                    let flags = sources.port_flags.get(ifindex).copied().unwrap_or(0);
                    if flags & PORT_UNPRUNED != 0 {
                        notes.push("maps full: gets every group".to_owned());
                    }
                    if flags & (PORT_GETS_REPORTS | PORT_GETS_REPORTS_IPV6) != 0 {
                        notes.push("trusted: gets reports until a router port is known".to_owned());
                    }
                    let mut note = notes.join("; ");
                    let heard_v4 = sources
                        .igmp()
                        .filter_map(|(_, s)| s.untrusted_routers().get(ifindex).map(|h| (h.sign, h.source.ip())));
                    let heard_v6 = sources
                        .mld()
                        .filter_map(|(_, s)| s.untrusted_routers().get(ifindex).map(|h| (h.sign, h.source.ip())));
                    let mut heard: Vec<(RouterSign, IpAddr)> = heard_v4.chain(heard_v6).collect();
                    heard.dedup();
                    for (sign, source) in heard {
                        let sep = if note.is_empty() { "" } else { "; " };
                        note = format!("{note}{sep}{} ({source}) ignored: untrusted", sign.describe());
                    }
                    note
                },
            })
        })
        .collect()
}

fn group_views<A: Family>(sources: &Sources, snooper: &Snooper<A>, traffic: &[TrafficView]) -> Vec<GroupView> {
    let by_member: HashMap<(IpAddr, Option<u16>, u32), (u64, u64)> =
        traffic.iter().map(|t| ((t.group, t.vlan, t.ifindex), (t.forwarded_packets, t.forwarded_bytes))).collect();
    snooper
        .groups()
        .iter()
        .map(|(group, members)| {
            let vlan = shown_vlan(group.vlan);
            let members: Vec<MemberView> = members
                .iter()
                .map(|(ifindex, member)| {
                    let traffic = by_member.get(&(group.addr.ip(), vlan, *ifindex)).copied().unwrap_or_default();
                    member_view(sources, *ifindex, member, traffic)
                })
                .collect();
            let spared = sources.counters.group_traffic(group.key());
            GroupView {
                group: group.addr.ip(),
                vlan,
                forwarded_packets: members.iter().map(|m| m.forwarded_packets).sum(),
                forwarded_bytes: members.iter().map(|m| m.forwarded_bytes).sum(),
                members,
                pruned_packets: spared.pruned_packets,
                pruned_bytes: spared.pruned_bytes,
            }
        })
        .collect()
}

fn member_view<A: Family>(sources: &Sources, ifindex: u32, member: &Member<A>, traffic: (u64, u64)) -> MemberView {
    let (forwarded_packets, forwarded_bytes) = traffic;
    MemberView {
        ifindex,
        port: sources.port_name(ifindex),
        protocol: A::PROTOCOL.to_owned(),
        version: member.version,
        expires_in_secs: (!member.permanent).then(|| sources.secs_until(member.expires)),
        permanent: member.permanent,
        last_reporter: member.last_reporter.ip(),
        hosts: member.hosts.iter().filter(|(_, until)| **until > sources.uptime).map(|(host, _)| host.ip()).collect(),
        leaving: member.leaving,
        filter_mode: member.mode,
        sources: member
            .sources
            .iter()
            .map(|(source, timer)| SourceView {
                address: source.ip(),
                forwarded: *timer > sources.uptime,
                expires_in_secs: if *timer == NEVER { 0.0 } else { sources.secs_until(*timer) },
            })
            .collect(),
        forwarded_packets,
        forwarded_bytes,
    }
}
