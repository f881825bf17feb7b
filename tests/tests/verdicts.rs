//! The eBPF programs' verdicts, one packet class at a time, through
//! BPF_PROG_TEST_RUN: no hosts, no timing, just the programs, their maps (map
//! entries written here as the controller's reconciler writes them) and a
//! bridge whose ports give the test skbs a device. Each case asserts the verdict and that exactly the
//! expected data path counters moved, and no other.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, Ipv6Addr},
    ops::{Deref, DerefMut},
    time::Duration,
};

use anyhow::Result;
use snoop::{
    daemon::reconcile::{Entry, Key, Maps as _},
    datapath::{monotonic_now_ns, Datapath},
    proto::internet_checksum,
};
use snoop_common::{
    CaptureHeader, Counter, DatapathConfig, GroupKey, GroupPorts, GroupValue, MemberValue, PortCounters, PortGroupKey,
    PortValue, SourceAddr, SourceGroupKey, SourceKey, VlanPortKey, CONFIG_FLOOD_UNREGISTERED, CONFIG_NO_QUERIER,
    CONFIG_NO_QUERIER_IPV6, CONFIG_REDIRECT, CONFIG_VLAN_AWARE, FAMILY_IPV4, FAMILY_IPV6, MAX_FANOUT,
    MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, NO_SLOT, PORT_GETS_REPORTS, PORT_ROUTER, PORT_ROUTER_IPV6,
    PORT_UNPRUNED, PROG_EGRESS, PROG_INGRESS, VERDICT_DROP, VERDICT_NEXT, VLAN_NONE,
};
use snoop_tests::lab::{self, in_netns, Lab, LabOptions};

// What the programs return: a frame passed on to the hook's next program
// or filter, or dropped.
const PASS: i32 = VERDICT_NEXT;
const DROP: i32 = VERDICT_DROP;

const JOINED: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const UNJOINED: Ipv4Addr = Ipv4Addr::new(239, 9, 9, 9);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 10);

/// The ports of the lab's bridge: p0 (senders), p1 (member of JOINED),
/// p2 (no member), p3 (router port).
struct Ports {
    p0: u32,
    p1: u32,
    p2: u32,
    p3: u32,
}

/// Where redirect copies in a test: a port with a member, or a router port.
#[derive(Clone, Copy)]
enum CopyTarget {
    Member(u32),
    Router(u32),
}

/// The data path with the map entries the tests set, one setting at a
/// time, as the controller's reconciler writes them (whole entries, no
/// counter slots).
struct Dp {
    datapath: Datapath,
    control_rate_limit: u32,
    ports: BTreeMap<u32, PortValue>,
    members: BTreeMap<PortGroupKey, MemberValue>,
    sources: BTreeMap<PortGroupKey, (u8, BTreeSet<SourceAddr>)>,
    /// Sources with copy lists of their own, by group.
    source_lists: BTreeMap<GroupKey, Vec<SourceAddr>>,
}

impl Deref for Dp {
    type Target = Datapath;
    fn deref(&self) -> &Datapath {
        &self.datapath
    }
}

impl DerefMut for Dp {
    fn deref_mut(&mut self) -> &mut Datapath {
        &mut self.datapath
    }
}

impl Dp {
    fn configure(&mut self, flags: u32, failsafe: Option<Duration>, fresh: Duration, rate_limit: u32) -> Result<()> {
        self.control_rate_limit = rate_limit;
        let config = DatapathConfig {
            flags,
            restore: 0,
            heartbeat_ns: monotonic_now_ns(),
            failsafe_ns: failsafe.map_or(0, |d| d.as_nanos() as u64),
            redirect_fresh_ns: fresh.as_nanos() as u64,
        };
        self.datapath.put(&Entry::Config(config))?;
        // The default source-specific ranges, as the controller writes them.
        let ranges = std::array::from_fn(|i| snoop::settings::DEFAULT_SSM_RANGES.get(i).copied().unwrap_or_default());
        Ok(self.datapath.put(&Entry::SsmRanges(ranges))?)
    }

    fn set_port_flags(&mut self, ifindex: u32, flags: u32) -> Result<()> {
        let old =
            self.ports.get(&ifindex).copied().unwrap_or(PortValue { traffic_slot: NO_SLOT, ..Default::default() });
        self.port(ifindex, PortValue { flags, control_rate_limit: self.control_rate_limit, ..old })
    }

    fn set_port_vlans(&mut self, ifindex: u32, pvid: u16, untagged_vlan: u16) -> Result<()> {
        let old =
            self.ports.get(&ifindex).copied().unwrap_or(PortValue { traffic_slot: NO_SLOT, ..Default::default() });
        self.port(ifindex, PortValue { pvid, untagged_vlan, ..old })
    }

    fn port(&mut self, ifindex: u32, value: PortValue) -> Result<()> {
        self.ports.insert(ifindex, value);
        Ok(self.datapath.put(&Entry::Port(ifindex, value))?)
    }

    fn set_member(&mut self, member: PortGroupKey, version: u8, expires_ns: u64, flags: u8) -> Result<()> {
        let source_flags = self.sources.get(&member).map_or(0, |(flags, _)| *flags);
        let value =
            MemberValue { expires_ns, version, flags: flags | source_flags, _pad: [0; 2], traffic_slot: NO_SLOT };
        self.members.insert(member, value);
        Ok(self.datapath.put(&Entry::Member(member, value))?)
    }

    /// Only `listed` (`include`), or all but `listed`; nothing listed and
    /// not `include`: any source.
    fn set_member_sources(&mut self, member: PortGroupKey, include: bool, listed: BTreeSet<SourceAddr>) -> Result<()> {
        let flags = match (include, listed.is_empty()) {
            (true, _) => MEMBER_SOURCES_INCLUDE,
            (false, true) => 0,
            (false, false) => MEMBER_SOURCES_EXCLUDE,
        };
        for source in &listed {
            self.datapath.put(&Entry::Source(SourceKey { member, source: *source }))?;
        }
        let (_, old) = self.sources.insert(member, (flags, listed.clone())).unwrap_or_default();
        for source in old.difference(&listed) {
            self.datapath.delete(&Key::Source(SourceKey { member, source: *source }))?;
        }
        if let Some(value) = self.members.get(&member).copied() {
            let state = value.flags & !(MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE);
            self.set_member(member, value.version, value.expires_ns, state)?;
        }
        Ok(())
    }

    fn register_group(&mut self, group: GroupKey) -> Result<()> {
        Ok(self.datapath.put(&Entry::Group(group, GroupValue { traffic_slot: NO_SLOT, _pad: 0 }))?)
    }

    fn set_vlan_flags(&mut self, vlan: u16, flags: Option<u32>) -> Result<()> {
        match flags {
            Some(flags) => self.datapath.put(&Entry::Vlan(vlan, flags))?,
            None => self.datapath.delete(&Key::Vlan(vlan))?,
        }
        Ok(())
    }

    fn set_vlan_port_flags(&mut self, key: VlanPortKey, flags: u32) -> Result<()> {
        match flags {
            0 => self.datapath.delete(&Key::VlanPort(key))?,
            flags => self.datapath.put(&Entry::VlanPort(key, flags))?,
        }
        Ok(())
    }

    /// A group's copy list, and its sources' own; none at all: no list.
    fn set_group_ports(
        &mut self,
        group: GroupKey,
        targets: &[CopyTarget],
        by_source: &[(SourceAddr, Vec<CopyTarget>)],
        _vlan: Option<()>,
    ) -> Result<()> {
        for source in self.source_lists.remove(&group).unwrap_or_default() {
            self.datapath.delete(&Key::SourceGroupPorts(SourceGroupKey { group, source }))?;
        }
        self.source_lists.insert(group, by_source.iter().map(|(source, _)| *source).collect());
        if targets.is_empty() && by_source.is_empty() {
            return Ok(self.datapath.delete(&Key::GroupPorts(group))?);
        }
        for (source, targets) in by_source {
            let value = list(targets, false);
            self.datapath.put(&Entry::SourceGroupPorts(SourceGroupKey { group, source: *source }, value))?;
        }
        Ok(self.datapath.put(&Entry::GroupPorts(group, list(targets, !by_source.is_empty())))?)
    }

    fn set_report_targets(&mut self, key: GroupKey, targets: &[CopyTarget], _vlan: Option<()>) -> Result<()> {
        Ok(self.datapath.put(&Entry::GroupPorts(key, list(targets, false)))?)
    }
}

/// A copy list to `targets` (no hand-over, no counter slots).
fn list(targets: &[CopyTarget], by_source: bool) -> GroupPorts {
    let mut ifindexes = [0; MAX_FANOUT];
    for (to, target) in ifindexes.iter_mut().zip(targets) {
        *to = match target {
            CopyTarget::Member(port) | CopyTarget::Router(port) => *port,
        };
    }
    GroupPorts {
        count: targets.len() as u32,
        local: 0,
        traffic_slot: NO_SLOT,
        bridge_ports: 0,
        last_to_peer: 0,
        last_member_slot: NO_SLOT,
        last_port_slot: NO_SLOT,
        by_source: u32::from(by_source),
        untagged: 0,
        ifindexes,
    }
}

/// Loads the programs in the lab's bridge namespace and writes the maps as
/// the controller would; runs `check` there.
fn with_datapath(tag: &str, check: impl FnOnce(&mut Dp, &Ports) -> Result<()> + Send + 'static) -> Result<()> {
    let lab = Lab::new(tag, 4, &LabOptions::default())?;
    let ports = Ports {
        p0: lab.port_ifindex("p0")?,
        p1: lab.port_ifindex("p1")?,
        p2: lab.port_ifindex("p2")?,
        p3: lab.port_ifindex("p3")?,
    };
    let pin_dir = lab.pin_dir();
    in_netns(&lab.bridge_netns, move || -> Result<()> {
        let (datapath, _) = Datapath::load(&pin_dir, 0, Default::default())?;
        let mut datapath = Dp {
            datapath,
            control_rate_limit: 0,
            ports: BTreeMap::new(),
            members: BTreeMap::new(),
            sources: BTreeMap::new(),
            source_lists: BTreeMap::new(),
        };
        datapath.configure(CONFIG_FLOOD_UNREGISTERED, None, Duration::from_secs(3), 0)?;
        for port in [ports.p0, ports.p1, ports.p2] {
            datapath.set_port_flags(port, 0)?;
        }
        datapath.set_port_flags(ports.p3, PORT_ROUTER)?;
        let joined = GroupKey::ipv4(JOINED.octets(), VLAN_NONE);
        datapath.set_member(PortGroupKey { group: joined, ifindex: ports.p1 }, 3, u64::MAX, 0)?;
        datapath.register_group(joined)?;
        let result = check(&mut datapath, &ports);
        datapath.datapath.shutdown(false)?;
        result
    })?
}

/// Runs one frame and checks the verdict and the counter deltas.
fn case(
    datapath: &mut Datapath,
    name: &str,
    program: &'static str,
    ifindex: u32,
    frame: &[u8],
    verdict: i32,
    moved: &[(Counter, u64)],
) -> Result<()> {
    let before = datapath.counters();
    let (got, _) = datapath.test_run(program, frame, ifindex, 1)?;
    let after = datapath.counters();
    assert_eq!(got, verdict, "{name}: verdict");
    let deltas: BTreeMap<&str, u64> = Counter::ALL
        .iter()
        .map(|c| (c.name(), after[*c as usize] - before[*c as usize]))
        .filter(|(_, d)| *d != 0)
        .collect();
    let expected: BTreeMap<&str, u64> = moved.iter().map(|(c, n)| (c.name(), *n)).collect();
    assert_eq!(deltas, expected, "{name}: counters that moved");
    Ok(())
}

/// An Ethernet frame to the multicast MAC of `ip`'s destination.
fn frame(ip: &[u8]) -> Vec<u8> {
    lab::multicast_frame(ip).expect("an IPv4 packet")
}

/// A UDP packet to `group`.
fn data(group: Ipv4Addr) -> Vec<u8> {
    frame(&lab::udp_packet(HOST, group, 64))
}

/// An IPv4 packet with `options` (a multiple of 4 bytes) and `flags_fragment`
/// (the flags/fragment-offset word) around `payload`.
fn ipv4(protocol: u8, dst: [u8; 4], options: &[u8], flags_fragment: u16, payload: &[u8]) -> Vec<u8> {
    let header_len = 20 + options.len();
    let mut ip = vec![0x40 | (header_len / 4) as u8, 0, 0, 0, 0, 0, 0, 0, 1, protocol, 0, 0];
    ip[2..4].copy_from_slice(&((header_len + payload.len()) as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&flags_fragment.to_be_bytes());
    ip.extend_from_slice(&HOST.octets());
    ip.extend_from_slice(&dst);
    ip.extend_from_slice(options);
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(payload);
    ip
}

/// An IGMP message of `igmp_type` about `group`, in an IPv4 packet with the Router Alert option.
fn igmp(igmp_type: u8, group: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut msg = vec![igmp_type, 0, 0, 0];
    msg.extend_from_slice(&group.octets());
    if igmp_type == 0x22 {
        // A v3 report: one MODE_IS_EXCLUDE {} record.
        msg = vec![0x22, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0];
        msg.extend_from_slice(&group.octets());
    }
    let sum = internet_checksum(&msg);
    msg[2..4].copy_from_slice(&sum.to_be_bytes());
    frame(&ipv4(2, dst.octets(), &[0x94, 4, 0, 0], 0, &msg))
}

/// `frame` with another destination MAC.
fn to_mac(mut frame: Vec<u8>, mac: [u8; 6]) -> Vec<u8> {
    frame[..6].copy_from_slice(&mac);
    frame
}

const UNICAST_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x11];
const BROADCAST_MAC: [u8; 6] = [0xff; 6];

fn arp() -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[2, 0, 0, 0, 0, 0x10, 0x08, 0x06]);
    frame.extend_from_slice(&[0; 28]);
    frame
}

#[test]
fn egress_prunes_group_data_to_ports_without_members() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-egress", |dp, p| {
        case(dp, "member port", PROG_EGRESS, p.p1, &data(JOINED), PASS, &[(DataForwarded, 1)])?;
        case(dp, "port without a member", PROG_EGRESS, p.p2, &data(JOINED), DROP, &[(DataPruned, 1)])?;
        case(dp, "router port", PROG_EGRESS, p.p3, &data(JOINED), PASS, &[(DataForwarded, 1)])?;
        let unregistered = data(UNJOINED);
        case(dp, "unregistered, flooded", PROG_EGRESS, p.p2, &unregistered, PASS, &[(UnregisteredFlooded, 1)])?;
        let link_local = data(Ipv4Addr::new(224, 0, 0, 251));
        case(dp, "224.0.0.251", PROG_EGRESS, p.p2, &link_local, PASS, &[(LinkLocalFlooded, 1)])?;
        case(dp, "unicast", PROG_EGRESS, p.p2, &data(Ipv4Addr::new(10, 99, 0, 12)), PASS, &[])?;
        case(dp, "non-IP", PROG_EGRESS, p.p2, &arp(), PASS, &[])?;
        // IHL 4: not a valid header; counted and left to the bridge.
        let mut bad = data(JOINED);
        bad[14] = 0x44;
        case(dp, "IHL < 5", PROG_EGRESS, p.p2, &bad, PASS, &[(MalformedIp, 1)])?;
        // An options header moves nothing the decision reads.
        let udp = &lab::udp_packet(HOST, JOINED, 64)[20..];
        let with_options = frame(&ipv4(17, JOINED.octets(), &[1, 1, 1, 1], 0, udp));
        case(dp, "IP options, member", PROG_EGRESS, p.p1, &with_options, PASS, &[(DataForwarded, 1)])?;
        case(dp, "IP options, no member", PROG_EGRESS, p.p2, &with_options, DROP, &[(DataPruned, 1)])?;
        // Fragments of group data are group data, first (MF) or not (offset).
        for (name, word) in [("first fragment", 0x2000), ("later fragment", 0x0010)] {
            let fragment = frame(&ipv4(17, JOINED.octets(), &[], word, &udp[..16]));
            case(dp, name, PROG_EGRESS, p.p1, &fragment, PASS, &[(DataForwarded, 1)])?;
            case(dp, name, PROG_EGRESS, p.p2, &fragment, DROP, &[(DataPruned, 1)])?;
        }

        // A port whose memberships did not fit the maps gets every group, but no reports.
        dp.set_port_flags(p.p2, PORT_UNPRUNED)?;
        case(dp, "unpruned port", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(DataForwarded, 1)])?;
        let report = igmp(0x16, JOINED, JOINED);
        case(dp, "report to an unpruned port", PROG_EGRESS, p.p2, &report, DROP, &[(ReportsSuppressed, 1)])?;
        dp.set_port_flags(p.p2, 0)?;

        // Groups nobody joined, router ports only.
        dp.configure(0, None, Duration::from_secs(3), 0)?;
        case(dp, "unregistered, dropped", PROG_EGRESS, p.p2, &unregistered, DROP, &[(UnregisteredDropped, 1)])?;
        case(dp, "unregistered, router", PROG_EGRESS, p.p3, &unregistered, PASS, &[(DataForwarded, 1)])?;

        // A multicast IP to a unicast or broadcast MAC is not group traffic
        // to the bridge: it goes where the MAC says, unpruned.
        for (name, mac) in [("unicast MAC", UNICAST_MAC), ("broadcast MAC", BROADCAST_MAC)] {
            case(dp, name, PROG_EGRESS, p.p2, &to_mac(data(JOINED), mac), PASS, &[])?;
            case(dp, name, PROG_EGRESS, p.p2, &to_mac(unregistered.clone(), mac), PASS, &[])?;
        }

        // No querier present: nothing pruned, whatever the unregistered policy.
        dp.configure(CONFIG_NO_QUERIER, None, Duration::from_secs(3), 0)?;
        case(dp, "no querier, joined", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(NoQuerierFlooded, 1)])?;
        case(dp, "no querier, unregistered", PROG_EGRESS, p.p2, &unregistered, PASS, &[(NoQuerierFlooded, 1)])?;
        case(dp, "no querier, member", PROG_EGRESS, p.p1, &data(JOINED), PASS, &[(DataForwarded, 1)])?;

        // A controller gone past the failsafe time: flooding, not pruning.
        dp.configure(CONFIG_FLOOD_UNREGISTERED, Some(Duration::from_nanos(1)), Duration::from_secs(3), 0)?;
        std::thread::sleep(Duration::from_millis(20));
        case(dp, "failsafe", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(FailsafeFlooded, 1)])?;
        Ok(())
    })
}

#[test]
fn egress_sends_reports_to_router_ports_only_and_floods_queries() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-igmp-out", |dp, p| {
        let general = Ipv4Addr::new(224, 0, 0, 1);
        let v3_routers = Ipv4Addr::new(224, 0, 0, 22);
        for (name, message) in [
            ("v1 report", igmp(0x12, JOINED, JOINED)),
            ("v2 report", igmp(0x16, JOINED, JOINED)),
            ("v3 report", igmp(0x22, JOINED, v3_routers)),
            ("v2 leave", igmp(0x17, JOINED, Ipv4Addr::new(224, 0, 0, 2))),
        ] {
            case(dp, name, PROG_EGRESS, p.p2, &message, DROP, &[(ReportsSuppressed, 1)])?;
            case(dp, name, PROG_EGRESS, p.p3, &message, PASS, &[])?;
        }
        case(dp, "query", PROG_EGRESS, p.p2, &igmp(0x11, Ipv4Addr::UNSPECIFIED, general), PASS, &[])?;
        case(dp, "unknown IGMP type", PROG_EGRESS, p.p2, &igmp(0x99, JOINED, JOINED), PASS, &[])?;
        let report = igmp(0x16, JOINED, JOINED);
        // A trusted port while no router port is known gets reports.
        dp.set_port_flags(p.p2, PORT_GETS_REPORTS)?;
        case(dp, "report to a trusted port, no router known", PROG_EGRESS, p.p2, &report, PASS, &[])?;
        dp.set_port_flags(p.p2, 0)?;
        // With no querier present data floods, but reports still reach no
        // host (issue 29: an IGMPv2 host hearing one suppresses its own);
        // with no controller, everything floods.
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_NO_QUERIER, None, Duration::from_secs(3), 0)?;
        case(dp, "report, no querier", PROG_EGRESS, p.p2, &report, DROP, &[(ReportsSuppressed, 1)])?;
        case(dp, "data, no querier", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(NoQuerierFlooded, 1)])?;
        dp.configure(CONFIG_FLOOD_UNREGISTERED, Some(Duration::from_nanos(1)), Duration::from_secs(3), 0)?;
        std::thread::sleep(Duration::from_millis(20));
        case(dp, "report, failsafe", PROG_EGRESS, p.p2, &report, PASS, &[(FailsafeFlooded, 1)])?;
        Ok(())
    })
}

#[test]
fn egress_on_a_bridge_filtering_vlans_goes_by_the_frames_vlan() -> Result<()> {
    // Untagged frames leaving a port are in its untagged VLAN: p1 and p2 in
    // VLAN 10, p3 in VLAN 20. (Tagged egress, whose VLAN is the skb's tag,
    // needs 802.1Q: the lab tests in tests/vlan.rs.)
    use Counter::*;
    with_datapath("verdict-vlan", |dp, p| {
        dp.configure(CONFIG_VLAN_AWARE, None, Duration::from_secs(3), 0)?;
        for (port, vlan) in [(p.p1, 10), (p.p2, 10), (p.p3, 20)] {
            dp.set_port_vlans(port, vlan, vlan)?;
        }
        let in_10 = GroupKey::ipv4(JOINED.octets(), 10);
        dp.set_member(PortGroupKey { group: in_10, ifindex: p.p1 }, 3, u64::MAX, 0)?;
        dp.register_group(in_10)?;
        // A VLAN snoop has no entry for is not pruned: no querier is known there.
        case(dp, "VLAN not followed", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(NoQuerierFlooded, 1)])?;
        dp.set_vlan_flags(10, Some(0))?;
        dp.set_vlan_flags(20, Some(0))?;
        case(dp, "member in its VLAN", PROG_EGRESS, p.p1, &data(JOINED), PASS, &[(DataForwarded, 1)])?;
        case(dp, "no member in VLAN 10", PROG_EGRESS, p.p2, &data(JOINED), DROP, &[(DataPruned, 1)])?;
        // p3's port-wide router flag (set by with_datapath) does not count:
        // router ports are per VLAN here, and (JOINED, 20) is unregistered.
        case(dp, "router flag of the port", PROG_EGRESS, p.p3, &data(JOINED), DROP, &[(UnregisteredDropped, 1)])?;
        let report = igmp(0x16, JOINED, JOINED);
        case(dp, "report, no router in VLAN 20", PROG_EGRESS, p.p3, &report, DROP, &[(ReportsSuppressed, 1)])?;
        dp.set_vlan_port_flags(VlanPortKey::new(10, p.p3), PORT_ROUTER)?;
        case(dp, "router of another VLAN", PROG_EGRESS, p.p3, &data(JOINED), DROP, &[(UnregisteredDropped, 1)])?;
        dp.set_vlan_port_flags(VlanPortKey::new(20, p.p3), PORT_ROUTER)?;
        case(dp, "router of its VLAN", PROG_EGRESS, p.p3, &data(JOINED), PASS, &[(DataForwarded, 1)])?;
        case(dp, "report to its VLAN's router", PROG_EGRESS, p.p3, &report, PASS, &[])?;
        dp.set_vlan_port_flags(VlanPortKey::new(20, p.p3), 0)?;
        dp.set_vlan_port_flags(VlanPortKey::new(20, p.p3), PORT_GETS_REPORTS)?;
        case(dp, "report to a trusted port of the VLAN", PROG_EGRESS, p.p3, &report, PASS, &[])?;
        // No querier in VLAN 10: VLAN 10 floods, VLAN 20 still prunes; the
        // family-wide flag no longer decides.
        dp.set_vlan_flags(10, Some(CONFIG_NO_QUERIER))?;
        case(dp, "no querier in VLAN 10", PROG_EGRESS, p.p2, &data(JOINED), PASS, &[(NoQuerierFlooded, 1)])?;
        case(dp, "a querier in VLAN 20", PROG_EGRESS, p.p3, &data(JOINED), DROP, &[(UnregisteredDropped, 1)])?;
        dp.configure(CONFIG_VLAN_AWARE | CONFIG_NO_QUERIER, None, Duration::from_secs(3), 0)?;
        case(dp, "family flag set", PROG_EGRESS, p.p3, &data(JOINED), DROP, &[(UnregisteredDropped, 1)])?;
        Ok(())
    })
}

#[test]
fn ingress_hands_control_frames_to_the_controller_and_counts_them_per_port() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-capture", |dp, p| {
        let mut ring = dp.take_events().expect("the event ring");
        let seen = [(IgmpSeen, 1), (Captured, 1)];
        let cases = [
            ("v1 report", igmp(0x12, JOINED, JOINED), PortCounters { reports: 1, ..Default::default() }),
            ("v2 report", igmp(0x16, JOINED, JOINED), PortCounters { reports: 1, ..Default::default() }),
            ("v3 report", igmp(0x22, JOINED, JOINED), PortCounters { reports: 1, ..Default::default() }),
            ("leave", igmp(0x17, JOINED, JOINED), PortCounters { leaves: 1, ..Default::default() }),
            ("query", igmp(0x11, JOINED, JOINED), PortCounters { queries: 1, ..Default::default() }),
            ("unknown type", igmp(0x99, JOINED, JOINED), PortCounters { other_igmp: 1, ..Default::default() }),
            // IGMP with no message at all: handed over (the controller drops it as malformed).
            (
                "no IGMP bytes",
                frame(&ipv4(2, JOINED.octets(), &[], 0, &[])),
                PortCounters { other_igmp: 1, ..Default::default() },
            ),
        ];
        for (name, message, per_port) in cases {
            let before = dp.port_counters(p.p2);
            case(dp, name, PROG_INGRESS, p.p2, &message, PASS, &seen)?;
            assert_eq!(difference(dp.port_counters(p.p2), before), per_port, "{name}: per-port counters");
            // The controller gets the IP packet, whole, with the port it came in on.
            let item = ring.next().expect("a captured frame");
            let (header, packet) = CaptureHeader::read(&item).expect("a record header");
            assert_eq!((header.ifindex, header.family, packet), (p.p2, FAMILY_IPV4, &message[14..]), "{name}");
        }
        let mut hello = vec![0x20, 0, 0, 0, 0, 1, 0, 2, 0, 105];
        let sum = internet_checksum(&hello);
        hello[2..4].copy_from_slice(&sum.to_be_bytes());
        let pim = frame(&ipv4(103, [224, 0, 0, 13], &[], 0, &hello));
        case(dp, "PIM hello", PROG_INGRESS, p.p3, &pim, PASS, &[(PimSeen, 1), (Captured, 1)])?;
        assert_eq!(dp.port_counters(p.p3).pim_hellos, 1);
        assert!(ring.next().is_some(), "the hello was handed over");
        // PIM to another address is not a hello to all PIM routers: passed untouched.
        let other_pim = frame(&ipv4(103, JOINED.octets(), &[], 0, &hello));
        case(dp, "PIM elsewhere", PROG_INGRESS, p.p3, &other_pim, PASS, &[])?;

        // Bridge forwarding: group data entering is the bridge's to forward.
        case(dp, "group data, bridge mode", PROG_INGRESS, p.p0, &data(JOINED), PASS, &[])?;
        case(dp, "non-IP", PROG_INGRESS, p.p0, &arp(), PASS, &[])?;
        assert!(ring.next().is_none(), "nothing else was handed over");
        Ok(())
    })
}

/// The verifier stops at 1M processed instructions, and older kernels prune
/// less than newer ones: a program near the limit here fails to load on some
/// kernel. A fifth of it is the budget (the copy loop once took 770,000 on
/// Linux 6.1, and a small change then refused to load there).
#[test]
fn ingress_and_egress_leave_the_verifier_headroom() -> Result<()> {
    const BUDGET: u32 = 200_000;
    with_datapath("verdict-verifier", |dp, _| {
        for program in [PROG_INGRESS, PROG_EGRESS] {
            let Some(verified) = dp.verified_instructions(program) else {
                eprintln!("{program}: this kernel does not report the verifier's work");
                continue;
            };
            eprintln!("{program}: the verifier processed {verified} instructions");
            assert!(verified < BUDGET, "{program}: the verifier processed {verified} instructions, over {BUDGET}");
        }
        Ok(())
    })
}

#[test]
fn ingress_redirects_joined_groups_and_reports_in_redirect_mode() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-redirect", |dp, p| {
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_REDIRECT, None, Duration::from_secs(3), 0)?;
        let joined = GroupKey::ipv4(JOINED.octets(), VLAN_NONE);
        dp.set_group_ports(joined, &[CopyTarget::Member(p.p1), CopyTarget::Router(p.p3)], &[], None)?;
        dp.set_report_targets(GroupKey::report_targets(FAMILY_IPV4, VLAN_NONE), &[CopyTarget::Router(p.p3)], None)?;
        let copied = [(Redirected, 1), (RedirectCopies, 2)];
        case(dp, "joined group", PROG_INGRESS, p.p0, &data(JOINED), DROP, &copied)?;
        // The sender's own port never gets its packet back.
        case(dp, "from a member", PROG_INGRESS, p.p1, &data(JOINED), DROP, &[(Redirected, 1), (RedirectCopies, 1)])?;
        case(dp, "unregistered", PROG_INGRESS, p.p0, &data(UNJOINED), PASS, &[])?;
        let link_local = data(Ipv4Addr::new(224, 0, 0, 251));
        case(dp, "224.0.0.251", PROG_INGRESS, p.p0, &link_local, PASS, &[])?;
        // To a unicast or broadcast MAC: the bridge forwards it by its MAC.
        for (name, mac) in [("unicast MAC", UNICAST_MAC), ("broadcast MAC", BROADCAST_MAC)] {
            case(dp, name, PROG_INGRESS, p.p0, &to_mac(data(JOINED), mac), PASS, &[])?;
        }
        let report = igmp(0x16, JOINED, JOINED);
        let moved = [(IgmpSeen, 1), (Captured, 1), (RedirectCopies, 1)];
        case(dp, "report, to router ports", PROG_INGRESS, p.p1, &report, DROP, &moved)?;
        let query = igmp(0x11, Ipv4Addr::UNSPECIFIED, Ipv4Addr::new(224, 0, 0, 1));
        case(dp, "query, flooded by the bridge", PROG_INGRESS, p.p3, &query, PASS, &[(IgmpSeen, 1), (Captured, 1)])?;

        // No querier present: the bridge path (the egress programs keep
        // reports from the hosts).
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_REDIRECT | CONFIG_NO_QUERIER, None, Duration::from_secs(3), 0)?;
        case(dp, "joined group, no querier", PROG_INGRESS, p.p0, &data(JOINED), PASS, &[])?;
        let seen = [(IgmpSeen, 1), (Captured, 1)];
        case(dp, "report, no querier", PROG_INGRESS, p.p1, &report, PASS, &seen)?;

        // A heartbeat older than the lists' freshness (a killed or
        // keep-state-stopped controller, before the failsafe): the bridge
        // path, whose egress programs still prune.
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_REDIRECT, None, Duration::from_nanos(1), 0)?;
        std::thread::sleep(Duration::from_millis(20));
        case(dp, "joined group, stale lists", PROG_INGRESS, p.p0, &data(JOINED), PASS, &[])?;
        case(dp, "report, stale lists", PROG_INGRESS, p.p1, &report, PASS, &[(IgmpSeen, 1), (Captured, 1)])?;
        case(dp, "stale lists, no member", PROG_EGRESS, p.p2, &data(JOINED), DROP, &[(DataPruned, 1)])?;

        // With the controller gone, the bridge path takes over.
        dp.configure(
            CONFIG_FLOOD_UNREGISTERED | CONFIG_REDIRECT,
            Some(Duration::from_nanos(1)),
            Duration::from_secs(3),
            0,
        )?;
        std::thread::sleep(Duration::from_millis(20));
        case(dp, "joined group, no controller", PROG_INGRESS, p.p0, &data(JOINED), PASS, &[])?;
        Ok(())
    })
}

#[test]
fn control_frames_over_a_ports_rate_are_counted_and_not_handed_over() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-rate", |dp, p| {
        dp.configure(CONFIG_FLOOD_UNREGISTERED, None, Duration::from_secs(3), 2)?;
        dp.set_port_flags(p.p2, 0)?; // takes the new limit
        let report = igmp(0x16, JOINED, JOINED);
        for _ in 0..2 {
            case(dp, "within the rate", PROG_INGRESS, p.p2, &report, PASS, &[(IgmpSeen, 1), (Captured, 1)])?;
        }
        let over = [(IgmpSeen, 1), (ControlRateLimited, 1)];
        case(dp, "over the rate", PROG_INGRESS, p.p2, &report, PASS, &over)?;

        // By ring bytes: a frame whose record takes 2 KiB counts 16 small ones.
        dp.configure(CONFIG_FLOOD_UNREGISTERED, None, Duration::from_secs(3), 20)?;
        dp.set_port_flags(p.p2, 0)?; // a new window
        let mut large = report.clone();
        large.resize(1000, 0); // trailing bytes: the record is sized by the frame
        let captured = [(IgmpSeen, 1), (Captured, 1)];
        for _ in 0..4 {
            case(dp, "small, within the rate", PROG_INGRESS, p.p2, &report, PASS, &captured)?;
        }
        case(dp, "a large one fills the rest", PROG_INGRESS, p.p2, &large, PASS, &captured)?;
        case(dp, "then a small one is over it", PROG_INGRESS, p.p2, &report, PASS, &over)?;
        Ok(())
    })
}

fn difference(after: PortCounters, before: PortCounters) -> PortCounters {
    PortCounters {
        queries: after.queries - before.queries,
        reports: after.reports - before.reports,
        leaves: after.leaves - before.leaves,
        other_igmp: after.other_igmp - before.other_igmp,
        pim_hellos: after.pim_hellos - before.pim_hellos,
    }
}

const JOINED6: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x1234);
const UNJOINED6: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x9999);
const HOST6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);

/// A UDP packet to an IPv6 group, optionally behind `extension_headers`
/// empty destination-options headers.
fn data6(group: Ipv6Addr, extension_headers: usize) -> Vec<u8> {
    let mut ip = vec![0x60, 0, 0, 0, 0, 0, if extension_headers > 0 { 60 } else { 17 }, 1];
    ip.extend_from_slice(&HOST6.octets());
    ip.extend_from_slice(&group.octets());
    for i in 0..extension_headers {
        let next = if i + 1 == extension_headers { 17 } else { 60 };
        ip.extend_from_slice(&[next, 0, 1, 4, 0, 0, 0, 0]);
    }
    ip.extend_from_slice(&[0x13, 0x89, 0x13, 0x89, 0, 72, 0, 0]);
    ip.extend_from_slice(&[0x5a; 64]);
    let payload = (ip.len() - 40) as u16;
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    frame(&ip)
}

/// An MLD message of `icmp_type` about `group`, as hosts send it.
fn mld(icmp_type: u8, group: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut message = vec![icmp_type, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&group.octets());
    frame(&lab::mld_packet(HOST6, dst, message))
}

#[test]
fn ipv6_group_traffic_and_mld_take_the_paths_ipv4_does() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-ipv6", |dp, p| {
        let joined = GroupKey::ipv6(JOINED6.octets(), VLAN_NONE);
        dp.set_member(PortGroupKey { group: joined, ifindex: p.p1 }, 2, u64::MAX, 0)?;
        dp.register_group(joined)?;
        dp.set_port_flags(p.p3, PORT_ROUTER | PORT_ROUTER_IPV6)?;
        let all_nodes: Ipv6Addr = "ff02::1".parse()?;
        let mdns: Ipv6Addr = "ff02::fb".parse()?;
        let cases = [
            ("member port", p.p1, data6(JOINED6, 0), PASS, vec![(DataForwarded, 1)]),
            ("port without members", p.p2, data6(JOINED6, 0), DROP, vec![(DataPruned, 1)]),
            ("router port", p.p3, data6(JOINED6, 0), PASS, vec![(DataForwarded, 1)]),
            ("behind extension headers", p.p2, data6(JOINED6, 2), DROP, vec![(DataPruned, 1)]),
            ("unregistered", p.p2, data6(UNJOINED6, 0), PASS, vec![(UnregisteredFlooded, 1)]),
            ("link scope (mDNS)", p.p2, data6(mdns, 0), PASS, vec![(LinkLocalFlooded, 1)]),
            ("all nodes", p.p2, data6(all_nodes, 0), PASS, vec![(LinkLocalFlooded, 1)]),
            ("report to a host port", p.p2, mld(131, JOINED6, JOINED6), DROP, vec![(ReportsSuppressed, 1)]),
            ("done to a host port", p.p2, mld(132, JOINED6, "ff02::2".parse()?), DROP, vec![(ReportsSuppressed, 1)]),
            ("report to a router port", p.p3, mld(131, JOINED6, JOINED6), PASS, vec![]),
            // Queries are control, as IGMP's are: every port gets them,
            // group-specific ones (to the group's address) too, members or not.
            ("query", p.p2, mld(130, Ipv6Addr::UNSPECIFIED, all_nodes), PASS, vec![]),
            ("group-specific query, no member", p.p2, mld(130, JOINED6, JOINED6), PASS, vec![]),
            ("group-specific query, unjoined group", p.p2, mld(130, UNJOINED6, UNJOINED6), PASS, vec![]),
        ];
        for (name, port, frame, verdict, moved) in cases {
            case(dp, name, PROG_EGRESS, port, &frame, verdict, &moved)?;
        }
        // Router ports are per family: an IPv4 router port gets no IPv6 group.
        dp.set_port_flags(p.p3, PORT_ROUTER)?;
        case(dp, "IPv4-only router port", PROG_EGRESS, p.p3, &data6(JOINED6, 0), DROP, &[(DataPruned, 1)])?;
        // So is the querier: no MLD querier floods IPv6 groups, IPv4 ones are still pruned.
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_NO_QUERIER_IPV6, None, Duration::from_secs(3), 0)?;
        case(dp, "no MLD querier", PROG_EGRESS, p.p2, &data6(JOINED6, 0), PASS, &[(NoQuerierFlooded, 1)])?;
        case(dp, "IPv4 meanwhile", PROG_EGRESS, p.p2, &data(JOINED), DROP, &[(DataPruned, 1)])?;

        // Ingress: MLD is handed to the controller whole, with the port it came in on.
        let mut ring = dp.take_events().expect("the event ring");
        for (name, message, per_port) in [
            ("MLDv1 report", mld(131, JOINED6, JOINED6), PortCounters { reports: 1, ..Default::default() }),
            ("MLDv1 done", mld(132, JOINED6, "ff02::2".parse()?), PortCounters { leaves: 1, ..Default::default() }),
            ("MLD query", mld(130, JOINED6, JOINED6), PortCounters { queries: 1, ..Default::default() }),
        ] {
            let before = dp.port_counters(p.p2);
            case(dp, name, PROG_INGRESS, p.p2, &message, PASS, &[(MldSeen, 1), (Captured, 1)])?;
            assert_eq!(difference(dp.port_counters(p.p2), before), per_port, "{name}: per-port counters");
            let item = ring.next().expect("a captured frame");
            let (header, packet) = CaptureHeader::read(&item).expect("a record header");
            assert_eq!((header.family, packet), (FAMILY_IPV6, &message[14..]), "{name}: captured frame");
        }
        // Other ICMPv6 (neighbour discovery) and UDP are not control frames.
        case(dp, "group data in", PROG_INGRESS, p.p2, &data6(UNJOINED6, 0), PASS, &[])?;
        let mut echo = mld(128, JOINED6, JOINED6);
        echo[14 + 6] = 58; // no hop-by-hop header: straight to ICMPv6 (an echo request)
        case(dp, "ICMPv6 echo", PROG_INGRESS, p.p2, &echo, PASS, &[])?;
        Ok(())
    })
}

#[test]
fn source_specific_members_get_only_the_sources_they_want() -> Result<()> {
    use Counter::*;
    with_datapath("verdict-sources", |dp, p| {
        let (s1, s2, s3) = (Ipv4Addr::new(10, 1, 0, 1), Ipv4Addr::new(10, 1, 0, 2), Ipv4Addr::new(10, 1, 0, 3));
        let from = |source: Ipv4Addr, group: Ipv4Addr| frame(&lab::udp_packet(source, group, 64));
        let key = |source: Ipv4Addr| GroupKey::ipv4(source.octets(), VLAN_NONE).addr;
        let joined = GroupKey::ipv4(JOINED.octets(), VLAN_NONE);
        // p1: INCLUDE {S1}; p2: EXCLUDE {S3}; p3: a router port.
        let on = |ifindex| PortGroupKey { group: joined, ifindex };
        dp.set_member_sources(on(p.p1), true, [key(s1)].into())?;
        dp.set_member_sources(on(p.p2), false, [key(s3)].into())?;
        dp.set_member(on(p.p2), 3, u64::MAX, 0)?;
        for (name, port, source, verdict, counter) in [
            ("include, its source", p.p1, s1, PASS, DataForwarded),
            ("include, another source", p.p1, s2, DROP, SourcePruned),
            ("exclude, another source", p.p2, s1, PASS, DataForwarded),
            ("exclude, its blocked source", p.p2, s3, DROP, SourcePruned),
            ("router port, any source", p.p3, s3, PASS, DataForwarded),
        ] {
            case(dp, name, PROG_EGRESS, port, &from(source, JOINED), verdict, &[(counter, 1)])?;
        }
        // Back to any source: one lookup, every source.
        dp.set_member_sources(on(p.p1), false, Default::default())?;
        case(dp, "any source again", PROG_EGRESS, p.p1, &from(s2, JOINED), PASS, &[(DataForwarded, 1)])?;

        // Redirect: S1 has its own copy list; other sources take the group's.
        dp.configure(CONFIG_FLOOD_UNREGISTERED | CONFIG_REDIRECT, None, Duration::from_secs(3), 0)?;
        let by_source = [(key(s1), vec![CopyTarget::Member(p.p1), CopyTarget::Router(p.p3)])];
        dp.set_group_ports(joined, &[CopyTarget::Router(p.p3)], &by_source, None)?;
        let two = [(Redirected, 1), (RedirectCopies, 2)];
        case(dp, "redirect, a listed source", PROG_INGRESS, p.p0, &from(s1, JOINED), DROP, &two)?;
        let one = [(Redirected, 1), (RedirectCopies, 1)];
        case(dp, "redirect, another source", PROG_INGRESS, p.p0, &from(s2, JOINED), DROP, &one)?;
        // S1's list goes with the group's: the fast path never follows a stale one.
        dp.set_group_ports(joined, &[CopyTarget::Router(p.p3)], &[], None)?;
        case(dp, "redirect, S1's list gone", PROG_INGRESS, p.p0, &from(s1, JOINED), DROP, &one)?;
        dp.set_group_ports(joined, &[], &[], None)?;
        dp.configure(CONFIG_FLOOD_UNREGISTERED, None, Duration::from_secs(3), 0)?;

        // SSM: nobody asked, so it is never flooded, whatever the policy.
        let ssm = Ipv4Addr::new(232, 1, 1, 1);
        case(dp, "SSM, unrequested", PROG_EGRESS, p.p2, &from(s1, ssm), DROP, &[(SsmUnrequestedDropped, 1)])?;
        case(dp, "SSM, router port", PROG_EGRESS, p.p3, &from(s1, ssm), PASS, &[(DataForwarded, 1)])?;

        // IPv6: the source read from the IPv6 header.
        let joined6 = GroupKey::ipv6(JOINED6.octets(), VLAN_NONE);
        let member6 = PortGroupKey { group: joined6, ifindex: p.p1 };
        let other6: Ipv6Addr = "fd99::99".parse()?;
        dp.set_member_sources(member6, true, [HOST6.octets()].into())?;
        dp.set_member(member6, 2, u64::MAX, 0)?;
        dp.register_group(joined6)?;
        case(dp, "IPv6 include, its source", PROG_EGRESS, p.p1, &data6(JOINED6, 0), PASS, &[(DataForwarded, 1)])?;
        let mut from_other = data6(JOINED6, 0);
        from_other[22..38].copy_from_slice(&other6.octets());
        case(dp, "IPv6 include, another", PROG_EGRESS, p.p1, &from_other, DROP, &[(SourcePruned, 1)])?;
        Ok(())
    })
}
