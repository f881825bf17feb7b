//! What `snoop run` is told, as types: [`Start`] holds what the data path
//! and the state machines are built from (a change waits for the next
//! start), [`Live`] what a reload applies while snoop runs. A reload is
//! that partition: the new [`Live`] replaces the old, and the [`Start`]
//! options that differ are named (by their option names, from the type
//! itself, not from a list kept beside it).
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use serde::Serialize;
use snoop_common::{MapSizes, SsmRange};

use crate::{
    bridge::PortPolicy,
    membership::{PortOptions, Timers},
    port_groups::{GroupFilter, GroupRange, StaticGroup},
};

/// Everything `snoop run` is told.
#[derive(Clone, Debug, PartialEq)]
pub struct RunConfig {
    pub start: Start,
    pub live: Live,
}

/// Settings the data path and the state machines are built from: a
/// changed one is named at a reload and applied at the next start. Field
/// names are the option names a reload reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Start {
    pub bridge: String,
    #[serde(rename = "the timers")]
    pub timers: Timers,
    #[serde(rename = "no-querier")]
    pub querier: bool,
    /// The version of snoop's queries (an older querier heard lowers it).
    pub query_version: u8,
    /// Source of our queries; default: the bridge's IPv4 address, else 0.0.0.0.
    pub query_source: Option<Ipv4Addr>,
    /// MLD snooping; off, IPv6 group traffic floods as on a plain bridge.
    #[serde(rename = "no-mld")]
    pub mld: bool,
    /// The version of snoop's MLD queries (an MLDv1 querier heard lowers it).
    pub mld_query_version: u8,
    /// Source of our MLD queries; default: the bridge's link-local address
    /// (without one, snoop sends no MLD queries).
    pub mld_query_source: Option<Ipv6Addr>,
    /// Query sources of single VLANs, by (VLAN, IPv6): they win over all else there.
    #[serde(rename = "vlan-query-source", serialize_with = "as_list")]
    pub vlan_query_sources: BTreeMap<(u16, bool), IpAddr>,
    /// Snoop link-scope IPv6 groups (ff02::/16 but ff02::1) like any other.
    pub snoop_ipv6_link_scope: bool,
    /// Most sources one port keeps per group (0: no limit).
    #[serde(rename = "max-sources-per-group")]
    pub max_sources_per_group: usize,
    /// Control frames per second per port handed to the controller (0: no limit).
    pub control_rate_limit: u32,
    /// Flood instead of pruning when the controller is gone this long.
    pub failsafe_after: Option<Duration>,
    pub forwarding: Forwarding,
    pub pin_dir: PathBuf,
    pub port_scan_interval: Duration,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
    /// A metrics series per source of each membership.
    pub metrics_sources: bool,
    /// Members of this group may read the state over the control socket (root always may).
    pub control_group: Option<u32>,
    #[serde(rename = "max-memberships/max-groups", serialize_with = "sizes")]
    pub map_sizes: MapSizes,
    /// Source-specific multicast ranges: any-source joins of their groups
    /// are ignored, and their unrequested sources pruned (RFC 4607).
    #[serde(rename = "ssm-range", serialize_with = "ssm_ranges")]
    pub ssm_ranges: Vec<SsmRange>,
}

/// The default SSM ranges: 232.0.0.0/8 and ff3x::/32.
pub const DEFAULT_SSM_RANGES: [SsmRange; 2] = [SsmRange::IPV4_SSM, SsmRange::IPV6_SSM];

/// `--ssm-range`: `A.B.C.D/LEN`, `X::/LEN`, `ff3x::/32` (any scope), or
/// `none` (the Linux bridge's behaviour: no range is source-specific).
pub fn parse_ssm_range(text: &str) -> Result<Option<SsmRange>, String> {
    if text == "none" {
        return Ok(None);
    }
    if text.eq_ignore_ascii_case("ff3x::/32") {
        return Ok(Some(SsmRange::IPV6_SSM));
    }
    let (address, length) = text.split_once('/').ok_or_else(|| format!("`{text}`: not PREFIX/LENGTH"))?;
    let address: IpAddr = address.parse().map_err(|_| format!("`{text}`: not an IP address"))?;
    let (family, octets, bits) = match address {
        IpAddr::V4(a) if a.is_multicast() => {
            let mut octets = [0; 16];
            octets[..4].copy_from_slice(&a.octets());
            (snoop_common::FAMILY_IPV4, octets, 32)
        }
        IpAddr::V6(a) if a.is_multicast() => (snoop_common::FAMILY_IPV6, a.octets(), 128),
        _ => return Err(format!("`{text}`: not a multicast prefix")),
    };
    let length: u8 = length
        .parse()
        .ok()
        .filter(|l| (4..=bits).contains(l))
        .ok_or_else(|| format!("`{text}`: a prefix length from 4 to {bits}"))?;
    let range = SsmRange::prefix(family, octets, length);
    if range.addr != octets {
        return Err(format!("`{text}`: host bits set after the prefix"));
    }
    Ok(Some(range))
}

/// An SSM range as `--ssm-range` takes it.
pub fn ssm_range_text(range: &SsmRange) -> String {
    if *range == SsmRange::IPV6_SSM {
        return "ff3x::/32".into();
    }
    let length: u32 = range.mask.iter().map(|b| b.count_ones()).sum();
    if range.family == snoop_common::FAMILY_IPV4 {
        let [a, b, c, d, ..] = range.addr;
        format!("{}/{length}", Ipv4Addr::new(a, b, c, d))
    } else {
        format!("{}/{length}", Ipv6Addr::from(range.addr))
    }
}

fn ssm_ranges<S: serde::Serializer>(ranges: &[SsmRange], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(ranges.iter().map(ssm_range_text))
}

/// Settings a reload applies while snoop runs: port settings, filters,
/// static groups, the unregistered policy, keep-state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Live {
    pub static_router_ports: Vec<String>,
    /// Ports never made router ports (`router = never`).
    pub never_router_ports: Vec<String>,
    /// Port names with fast leave, or "all".
    pub fast_leave_ports: Vec<String>,
    /// The only ports whose queries and PIM hellos count, or "all"; none
    /// named: every port's count (as the Linux bridge and managed switches learn).
    pub trusted_ports: Vec<String>,
    /// Most groups one port may join (0: no limit).
    pub max_groups_per_port: usize,
    /// Ports with limits of their own (the last one given for a port wins).
    pub port_max_groups: Vec<(String, usize)>,
    /// Group ranges ports may join (port "all": every port); none: any group.
    pub port_allow: Vec<(String, GroupRange)>,
    /// Group ranges ports may not join.
    pub port_deny: Vec<(String, GroupRange)>,
    pub static_groups: Vec<StaticGroup>,
    pub flood_unregistered: bool,
    pub keep_state: bool,
}

/// How group traffic reaches member ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Forwarding {
    /// The sender's port copies registered groups straight to member and
    /// router ports (TC redirect); the bridge never clones them for other ports.
    Redirect,
    /// The bridge floods; each port's egress drops what it has no member for.
    Bridge,
}

impl Start {
    /// The options whose values differ between `self` and `other`, by name.
    pub fn changed(&self, other: &Start) -> Vec<String> {
        let fields = |start: &Start| match serde_json::to_value(start) {
            Ok(serde_json::Value::Object(fields)) => fields,
            _ => unreachable!("Start serializes to an object"),
        };
        let (old, new) = (fields(self), fields(other));
        old.iter().filter(|(name, value)| new.get(*name) != Some(value)).map(|(name, _)| name.clone()).collect()
    }
}

impl Live {
    /// A port's options, resolved once from snoop's own settings
    /// (`--router-port`, ...) and the bridge's per-port snooping settings
    /// (`mcast_router 2`, `fastleave on`).
    pub fn port_options(&self, name: &str, policy: &PortPolicy) -> PortOptions {
        let listed = |list: &[String]| list.iter().any(|p| p == name || p == "all");
        let static_router = self.static_router_ports.iter().any(|p| p == name) || policy.static_router;
        let upstream = listed(&self.trusted_ports);
        PortOptions {
            fast_leave: listed(&self.fast_leave_ports) || policy.fast_leave,
            static_router,
            // Any port, unless some are named; a port declared a router port
            // is trusted to speak as one.
            trusted: static_router || upstream || self.trusted_ports.is_empty(),
            never_router: !static_router && (listed(&self.never_router_ports) || policy.never_router),
            upstream,
            // The last one given wins: the command line's come after the file's.
            max_groups: self
                .port_max_groups
                .iter()
                .rev()
                .find(|(port, _)| port == name)
                .map_or(self.max_groups_per_port, |(_, limit)| *limit),
        }
    }

    /// How router ports are learned, for the log at start.
    pub fn router_learning(&self) -> String {
        if self.trusted_ports.is_empty() {
            "router ports and queriers are learned on any port (--trusted-port names the only ones)".into()
        } else {
            format!("router ports and queriers are learned on {} only", self.trusted_ports.join(" "))
        }
    }

    /// A port's group filter: its own ranges and those given for `all`.
    pub fn port_filter(&self, name: &str) -> GroupFilter {
        let pick = |ranges: &[(String, GroupRange)]| {
            ranges.iter().filter(|(port, _)| port == name || port == "all").map(|(_, range)| *range).collect()
        };
        GroupFilter { allow: pick(&self.port_allow), deny: pick(&self.port_deny) }
    }
}

fn as_list<S: serde::Serializer>(sources: &BTreeMap<(u16, bool), IpAddr>, out: S) -> Result<S::Ok, S::Error> {
    out.collect_seq(sources.iter().map(|((vlan, _), addr)| (vlan, addr)))
}

fn sizes<S: serde::Serializer>(sizes: &MapSizes, out: S) -> Result<S::Ok, S::Error> {
    (sizes.memberships, sizes.groups).serialize(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start() -> Start {
        Start {
            bridge: "br0".into(),
            timers: Timers::default(),
            querier: true,
            query_version: 3,
            query_source: None,
            mld: true,
            mld_query_version: 2,
            mld_query_source: None,
            vlan_query_sources: BTreeMap::new(),
            snoop_ipv6_link_scope: false,
            max_sources_per_group: 64,
            control_rate_limit: 1000,
            failsafe_after: None,
            forwarding: Forwarding::Redirect,
            pin_dir: "/sys/fs/bpf/snoop/host/br0".into(),
            port_scan_interval: Duration::from_secs(1),
            metrics: None,
            metrics_sources: false,
            control_group: None,
            map_sizes: MapSizes::default(),
            ssm_ranges: DEFAULT_SSM_RANGES.to_vec(),
        }
    }

    #[test]
    fn ssm_ranges_parse_and_print_back() {
        for text in ["232.0.0.0/8", "239.232.0.0/16", "ff3x::/32", "ff3e::/16", "ff05::/16"] {
            let range = parse_ssm_range(text).unwrap().unwrap();
            assert_eq!(ssm_range_text(&range), text.replace("ff3X", "ff3x"));
        }
        assert_eq!(parse_ssm_range("none"), Ok(None));
        for bad in ["232.0.0.1/8", "10.0.0.0/8", "232.0.0.0", "232.0.0.0/40", "ff3e::/200", "fe80::/10", "x/8"] {
            assert!(parse_ssm_range(bad).is_err(), "{bad} was taken");
        }
        let key = |text: &str| match text.parse::<IpAddr>().unwrap() {
            IpAddr::V4(a) => snoop_common::GroupKey::ipv4(a.octets(), 0),
            IpAddr::V6(a) => snoop_common::GroupKey::ipv6(a.octets(), 0),
        };
        let ipv6 = SsmRange::IPV6_SSM;
        assert!(ipv6.contains(&key("ff3e::8000:1")) && ipv6.contains(&key("ff35::1")));
        assert!(!ipv6.contains(&key("ff3e:1::1")) && !ipv6.contains(&key("ff0e::1")));
        assert!(SsmRange::IPV4_SSM.contains(&key("232.1.2.3")) && !SsmRange::IPV4_SSM.contains(&key("233.1.2.3")));
        assert!(!SsmRange::IPV4_SSM.contains(&key("ff3e::1")), "another family");
    }

    #[test]
    fn a_reload_names_the_start_options_that_changed() {
        let old = start();
        assert!(old.changed(&old).is_empty());
        let mut new = start();
        new.querier = false;
        new.timers.query_interval = Duration::from_secs(60);
        new.vlan_query_sources.insert((10, false), "192.0.2.1".parse().unwrap());
        new.map_sizes.groups = 1;
        let mut changed = old.changed(&new);
        changed.sort();
        assert_eq!(changed, ["max-memberships/max-groups", "no-querier", "the timers", "vlan-query-source"]);
    }

    #[test]
    fn a_ports_options_are_resolved_from_the_settings_and_the_bridge() {
        let live = Live {
            static_router_ports: vec!["eth0".into()],
            fast_leave_ports: vec!["all".into()],
            trusted_ports: vec!["eth1".into()],
            max_groups_per_port: 1024,
            port_max_groups: vec![("eth1".into(), 8), ("eth1".into(), 16)],
            ..Live::default()
        };
        let plain = PortPolicy::default();
        let eth0 = live.port_options("eth0", &plain);
        assert!(eth0.static_router && eth0.trusted && eth0.fast_leave && eth0.max_groups == 1024);
        let eth1 = live.port_options("eth1", &plain);
        assert!(!eth1.static_router && eth1.trusted && eth1.max_groups == 16, "the last limit given wins");
        assert!(eth1.upstream, "a port named trusted gets reports while no router is known");
        let bridge_says = PortPolicy { static_router: true, ..plain };
        assert!(live.port_options("eth2", &bridge_says).trusted, "mcast_router 2 makes a trusted router port");
        assert!(!live.port_options("eth2", &plain).trusted, "with ports named trusted, the others are not");
        // None named: every port may be a router or the querier, none gets reports before one is known.
        let open = Live { never_router_ports: vec!["eth4".into()], ..Live::default() };
        let eth2 = open.port_options("eth2", &plain);
        assert!(eth2.trusted && !eth2.upstream && !eth2.never_router);
        assert!(open.port_options("eth4", &plain).never_router);
        let disabled = PortPolicy { never_router: true, ..plain };
        assert!(open.port_options("eth2", &disabled).never_router, "mcast_router 0 is never a router port");
    }
}
