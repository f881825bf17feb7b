//! Scenario tests: inputs replayed into the daemon without root, in
//! milliseconds, checking the effects it gives and the maps that the
//! projection and the one writer leave (in memory).
use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use snoop_common::{
    GroupKey, VlanPortKey, CONFIG_NO_QUERIER, CONFIG_NO_QUERIER_IPV6, CONFIG_REDIRECT, CONFIG_VLAN_AWARE, MAP_MEMBERS,
    MAP_SOURCES, MEMBER_SOURCES_INCLUDE, PORT_IN_VLAN, PORT_ROUTER, PORT_UNPRUNED, VLAN_NONE,
};

use super::{
    event::{BridgeView, Effect, Input},
    memory::MemoryMaps,
    pinned,
    project::project,
    reconcile::{Entry, Key, PortShares, Reconciler, Written},
    state::{BridgeId, Daemon},
};
use crate::{
    bridge::{Port, PortPolicy, PortVlans, VlanConfig},
    control::Change,
    membership::Timers,
    port_groups::StaticGroup,
    proto::{internet_checksum, mld},
    settings::{Forwarding, Live, RunConfig, Start},
    snapshot::EventKind,
    stats::ControllerCounter,
};

const BRIDGE: u32 = 2;
const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const ROUTER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The settings of a lab run: a query every 2 s answered within 1 s.
fn config() -> RunConfig {
    RunConfig {
        start: Start {
            bridge: "br0".into(),
            timers: Timers::derived(2, secs(2), secs(1)),
            querier: true,
            query_version: 3,
            query_source: Some(Ipv4Addr::new(10, 0, 0, 5)),
            mld: true,
            mld_query_version: 2,
            mld_query_source: Some("fe80::5".parse().unwrap()),
            vlan_query_sources: Default::default(),
            snoop_ipv6_link_scope: false,
            max_sources_per_group: 64,
            control_rate_limit: 1000,
            failsafe_after: Some(secs(5)),
            forwarding: Forwarding::Redirect,
            pin_dir: "/nonexistent".into(),
            port_scan_interval: secs(1),
            metrics: None,
            metrics_sources: false,
            control_group: None,
            map_sizes: Default::default(),
            ssm_ranges: crate::settings::DEFAULT_SSM_RANGES.to_vec(),
        },
        live: Live { max_groups_per_port: 1024, trusted_ports: vec!["p13".into()], ..Live::default() },
    }
}

/// A daemon on a bridge and what it wrote, in memory.
struct Scenario {
    daemon: Daemon,
    reconciler: Reconciler,
    maps: MemoryMaps,
    now: Duration,
    effects: Vec<Effect>,
}

impl Scenario {
    fn new(config: RunConfig) -> Self {
        Self::resuming(config, Written::default(), MemoryMaps::default())
    }

    fn resuming(config: RunConfig, written: Written, maps: MemoryMaps) -> Self {
        let resumed = written != Written::default();
        let bridge = BridgeId { name: "br0".into(), ifindex: BRIDGE, mac: [2, 0, 0, 0, 0, 1] };
        let shares = PortShares::of(config.start.map_sizes);
        let daemon = Daemon::new(config, bridge, resumed, 0);
        Self {
            daemon,
            reconciler: Reconciler::new(written, 1_000_000_000, shares),
            maps,
            now: Duration::ZERO,
            effects: Vec::new(),
        }
    }

    /// One input, then what the runner does after each: project what it
    /// touched and write the difference.
    fn input(&mut self, input: Input) {
        let effects = self.daemon.step(self.now, input);
        self.effects.extend(effects);
        self.write();
    }

    fn write(&mut self) {
        for _ in 0..2 {
            let scope = self.daemon.take_dirty();
            if scope.is_empty() {
                return;
            }
            let before = super::project::unpruned_ports(&self.daemon, self.reconciler.unwritten());
            let desired = project(&self.daemon, &scope, self.reconciler.unwritten(), self.now);
            self.reconciler.apply(&desired, &mut self.maps);
            let after = super::project::unpruned_ports(&self.daemon, self.reconciler.unwritten());
            let ports = before.symmetric_difference(&after).copied().collect();
            self.daemon.touch(super::project::Dirty { ports, ..Default::default() });
        }
    }

    /// The time goes on to `at`; timers fire.
    fn at(&mut self, at: Duration) {
        self.now = at;
        self.input(Input::Timers);
    }

    /// The bridge with ports p11.. (ifindex 11..), each forwarding.
    fn ports(&mut self, ports: &[u32]) {
        self.bridge(ports, VlanConfig::default());
    }

    fn bridge(&mut self, ports: &[u32], vlans: VlanConfig) {
        let ports = ports
            .iter()
            .map(|i| Port { ifindex: *i, name: format!("p{i}"), policy: PortPolicy::default(), peer_redirect: false })
            .collect();
        self.input(Input::Bridge(Box::new(BridgeView {
            mac: [2, 0, 0, 0, 0, 1],
            vlans,
            ports,
            ..BridgeView::default()
        })));
    }

    fn frame(&mut self, ifindex: u32, vlan: u16, packet: &[u8]) {
        let family = if packet[0] >> 4 == 6 { snoop_common::FAMILY_IPV6 } else { snoop_common::FAMILY_IPV4 };
        self.input(Input::Frame { ifindex, vlan, family, packet });
    }

    /// Queries snoop sent since the last look.
    fn take_sent(&mut self) -> usize {
        let sent = self.effects.iter().filter(|e| matches!(e, Effect::Send { .. })).count();
        self.effects.retain(|e| !matches!(e, Effect::Send { .. }));
        sent
    }

    fn events(&self, kind: EventKind) -> usize {
        self.effects.iter().filter(|e| matches!(e, Effect::Event(event) if event.event == kind)).count()
    }

    fn member_ports(&self, group: GroupKey) -> BTreeSet<u32> {
        self.maps
            .of(MAP_MEMBERS)
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Member(key, _) if key.group == group => Some(key.ifindex),
                _ => None,
            })
            .collect()
    }

    fn copy_list(&self, group: GroupKey) -> Option<Vec<u32>> {
        match self.maps.entries.get(&Key::GroupPorts(group))? {
            Entry::GroupPorts(_, list) => Some(list.ifindexes[..list.count as usize].to_vec()),
            _ => None,
        }
    }

    fn port_flags(&self, ifindex: u32) -> u32 {
        match self.maps.entries.get(&Key::Port(ifindex)) {
            Some(Entry::Port(_, value)) => value.flags,
            _ => 0,
        }
    }

    fn config_flags(&self) -> u32 {
        self.maps.config.map_or(0, |c| c.flags)
    }

    /// A querier present: snoop queried at 0 and hosts answered within 1 s.
    fn with_querier(&mut self) {
        self.at(secs(0));
        self.at(secs(1));
        assert_eq!(self.config_flags() & CONFIG_NO_QUERIER, 0, "snoop's own querier counts from 1 s");
    }
}

/// An IGMP message in an IPv4 packet (TTL 1) from `source` to `destination`.
fn igmp(source: Ipv4Addr, destination: Ipv4Addr, mut message: Vec<u8>) -> Vec<u8> {
    let sum = internet_checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0];
    ip[2..4].copy_from_slice(&((20 + message.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&source.octets());
    ip.extend_from_slice(&destination.octets());
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend(message);
    ip
}

fn v2_report(group: Ipv4Addr) -> Vec<u8> {
    igmp(HOST, group, [&[0x16, 0, 0, 0][..], &group.octets()].concat())
}

fn v2_leave(group: Ipv4Addr) -> Vec<u8> {
    igmp(HOST, Ipv4Addr::new(224, 0, 0, 2), [&[0x17, 0, 0, 0][..], &group.octets()].concat())
}

fn v2_query(source: Ipv4Addr) -> Vec<u8> {
    igmp(source, Ipv4Addr::new(224, 0, 0, 1), vec![0x11, 10, 0, 0, 0, 0, 0, 0])
}

/// An MLDv2 report: one IS_EX {} record for `group`.
fn mldv2_report(group: Ipv6Addr) -> Vec<u8> {
    let mut message = vec![143, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0];
    message.extend_from_slice(&group.octets());
    mld::ip_packet("fe80::11".parse().unwrap(), "ff02::16".parse().unwrap(), message)
}

fn key(group: Ipv4Addr) -> GroupKey {
    GroupKey::ipv4(group.octets(), VLAN_NONE)
}

#[test]
fn a_join_becomes_a_membership_a_registration_and_a_copy_list() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12, 13]);
    assert_ne!(s.config_flags() & CONFIG_NO_QUERIER, 0, "no querier yet: nothing pruned");
    assert_ne!(s.config_flags() & CONFIG_REDIRECT, 0);
    s.with_querier();
    assert_eq!(s.take_sent(), 4, "startup queries at 0 s and 0.5 s, IGMP and MLD");
    s.frame(12, VLAN_NONE, &v2_report(G));
    assert_eq!(s.member_ports(key(G)), [12].into());
    assert!(s.maps.entries.contains_key(&Key::Group(key(G))));
    assert_eq!(s.copy_list(key(G)), Some(vec![12]));
    assert_eq!(s.events(EventKind::Join), 1);
    // A second member is one more membership and one more copy.
    s.frame(11, VLAN_NONE, &v2_report(G));
    assert_eq!(s.copy_list(key(G)), Some(vec![11, 12]));
    // The refresh of a known membership writes nothing.
    let writes = s.maps.log.len();
    s.frame(11, VLAN_NONE, &v2_report(G));
    assert_eq!(s.maps.log.len(), writes, "{:?}", &s.maps.log[writes..]);
}

#[test]
fn a_leave_asks_and_the_copy_goes_before_the_membership() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12]);
    s.with_querier();
    s.frame(11, VLAN_NONE, &v2_report(G));
    s.frame(12, VLAN_NONE, &v2_report(G));
    s.take_sent();
    s.now = secs(2);
    s.frame(11, VLAN_NONE, &v2_leave(G));
    assert_eq!(s.take_sent(), 1, "a group-specific query at once");
    // Nobody answers on p11 within the last-member time (2 x 1 s).
    let from = s.maps.log.len();
    s.at(secs(3));
    s.at(secs(4));
    assert_eq!(s.member_ports(key(G)), [12].into());
    assert_eq!(s.copy_list(key(G)), Some(vec![12]));
    let log = &s.maps.log[from..];
    let list = log.iter().position(|l| l.starts_with("put GroupPorts")).expect("the list rewritten");
    let member = log.iter().position(|l| l.starts_with("delete Member")).expect("the membership removed");
    assert!(list < member, "copies stop before the membership goes: {log:?}");
    // The last member goes: nothing of the group is left.
    s.frame(12, VLAN_NONE, &v2_leave(G));
    s.at(secs(5));
    s.at(secs(6));
    assert!(s.member_ports(key(G)).is_empty());
    assert!(!s.maps.entries.contains_key(&Key::Group(key(G))));
    assert_eq!(s.copy_list(key(G)), None);
}

#[test]
fn a_restart_resumes_what_is_pinned_without_writing_it_again() {
    let mut first = Scenario::new(config());
    first.ports(&[11, 12]);
    first.with_querier();
    first.frame(11, VLAN_NONE, &v2_report(G));
    let written = first.reconciler.written().clone();
    let maps = std::mem::take(&mut first.maps);
    let pinned = pinned(&written);

    // What the runner does at a resumed start: the bridge, the pinned state, then one write.
    let mut second = Scenario::resuming(config(), written, maps);
    let from = second.maps.log.len();
    let ports: Vec<Port> = [11, 12]
        .iter()
        .map(|i| Port { ifindex: *i, name: format!("p{i}"), policy: PortPolicy::default(), peer_redirect: false })
        .collect();
    let view = BridgeView { mac: [2, 0, 0, 0, 0, 1], ports, ..BridgeView::default() };
    second.daemon.step(Duration::ZERO, Input::Bridge(Box::new(view)));
    second.daemon.step(Duration::ZERO, Input::Resume(pinned));
    second.write();
    assert_eq!(second.member_ports(key(G)), [11].into());
    assert_eq!(second.config_flags() & CONFIG_NO_QUERIER, 0, "resumed state is pruned at once");
    // Memberships are updated in place (their timers restart), never
    // removed and made again; the registration and copies stand as they were.
    let log = &second.maps.log[from..];
    let dropped: Vec<&String> = log.iter().filter(|l| l.starts_with("delete")).collect();
    assert!(dropped.is_empty(), "resumed state dropped: {dropped:?}");
    let rewritten: Vec<&String> =
        log.iter().filter(|l| l.contains("put Group(") || l.contains("put GroupPorts")).collect();
    assert!(rewritten.is_empty(), "resumed groups written again: {rewritten:?}");
}

#[test]
fn a_full_membership_map_unprunes_the_port_until_its_membership_fits() {
    let mut s = Scenario::resuming(config(), Written::default(), MemoryMaps::with_room(MAP_MEMBERS, 1));
    s.ports(&[11, 12]);
    s.with_querier();
    s.frame(11, VLAN_NONE, &v2_report(G));
    s.frame(12, VLAN_NONE, &v2_report(G));
    assert_eq!(s.member_ports(key(G)), [11].into());
    assert_ne!(s.port_flags(12) & PORT_UNPRUNED, 0, "p12's membership did not fit: it gets every group");
    assert_eq!(s.port_flags(11) & PORT_UNPRUNED, 0);
    assert_eq!(s.daemon.stats.get(ControllerCounter::MapFull), 0, "counted by the runner, from the report");
    // p11 leaves (fast, no querier rounds needed here: its host's leave and nobody answering).
    s.frame(11, VLAN_NONE, &v2_leave(G));
    s.at(secs(5));
    // The retry at a port scan fits p12's now.
    s.daemon.touch(s.reconciler.unwritten().retry());
    s.write();
    assert_eq!(s.member_ports(key(G)), [12].into());
    assert_eq!(s.port_flags(12) & PORT_UNPRUNED, 0, "pruned again once everything fits");
}

#[test]
fn no_port_takes_more_than_its_share_of_the_membership_and_source_maps() {
    // A membership map of 16,384: each port may hold 2,048 memberships; no
    // group limit (the share is what bounds a port then).
    let mut config = config();
    config.start.map_sizes.memberships = 16_384;
    config.live.max_groups_per_port = 0;
    let mut s = Scenario::new(config);
    s.ports(&[11, 12]);
    s.with_querier();
    for i in 0..2_100u16 {
        s.frame(11, VLAN_NONE, &v2_report(Ipv4Addr::new(239, 3, (i >> 8) as u8, i as u8)));
    }
    let members = |s: &Scenario, port: u32| {
        s.maps.of(MAP_MEMBERS).into_iter().filter(|e| matches!(e, Entry::Member(m, _) if m.ifindex == port)).count()
    };
    assert_eq!(members(&s, 11), 2_048);
    assert_ne!(s.port_flags(11) & PORT_UNPRUNED, 0, "p11's memberships beyond its share: it gets every group");
    // The other port still has room, and stays pruned.
    s.frame(12, VLAN_NONE, &v2_report(Ipv4Addr::new(239, 4, 1, 1)));
    assert_eq!(members(&s, 12), 1);
    assert_eq!(s.port_flags(12) & PORT_UNPRUNED, 0);

    // A map smaller than the floor is not shared out: one port may fill it.
    let small = PortShares::of(snoop_common::MapSizes { memberships: 3, ..Default::default() });
    assert_eq!(small.members, 3);

    // Sources: each port may hold an eighth of the source map. p11 names
    // 64 sources in each of its groups until its share is used up; p12's
    // filter, written after, is whole.
    let share = snoop_common::MAX_SOURCES as usize / 8;
    let mut s = Scenario::new(self::config());
    s.ports(&[11, 12]);
    s.with_querier();
    let sources = |group: u16| -> Vec<Ipv4Addr> {
        (0..64u16).map(|i| Ipv4Addr::new(10, (group >> 8) as u8, group as u8, i as u8 + 1)).collect()
    };
    let groups = share / 64 + 2;
    for group in 0..groups as u16 {
        let g = Ipv4Addr::new(232, 1, (group >> 8) as u8, group as u8);
        s.frame(11, VLAN_NONE, &v3_record(1, g, &sources(group))); // IS_IN
    }
    let source_entries = |s: &Scenario, port: u32| {
        s.maps.of(MAP_SOURCES).into_iter().filter(|e| matches!(e, Entry::Source(k) if k.member.ifindex == port)).count()
    };
    assert_eq!(source_entries(&s, 11), share);
    let g = Ipv4Addr::new(232, 2, 0, 1);
    s.frame(12, VLAN_NONE, &v3_record(1, g, &[Ipv4Addr::new(10, 9, 9, 9)]));
    assert_eq!(source_entries(&s, 12), 1, "p12 keeps its source filter");
    let flags = s.maps.of(MAP_MEMBERS).into_iter().find_map(|e| match e {
        Entry::Member(k, v) if k.ifindex == 12 => Some(v.flags),
        _ => None,
    });
    assert_ne!(flags.unwrap() & MEMBER_SOURCES_INCLUDE, 0);
}

#[test]
fn a_router_port_gets_every_copy_and_the_reports() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12, 13]);
    s.with_querier();
    s.frame(11, VLAN_NONE, &v2_report(G));
    // A router on the trusted p13 (lower address: it is elected, too).
    s.frame(13, VLAN_NONE, &v2_query(ROUTER));
    assert_ne!(s.port_flags(13) & PORT_ROUTER, 0);
    assert_eq!(s.copy_list(key(G)), Some(vec![11, 13]));
    let reports = GroupKey::report_targets(snoop_common::FAMILY_IPV4, VLAN_NONE);
    assert_eq!(s.copy_list(reports), Some(vec![13]));
    // A router heard on an untrusted port is told, not believed.
    s.frame(12, VLAN_NONE, &v2_query(Ipv4Addr::new(10, 0, 0, 2)));
    assert_eq!(s.port_flags(12) & PORT_ROUTER, 0);
    assert!(s.effects.iter().any(|e| matches!(e, Effect::Log(_, line) if line.contains("--trusted-port p12"))));
}

#[test]
fn mld_joins_count_in_their_vlan_on_a_vlan_aware_bridge() {
    let mut s = Scenario::new(config());
    let port = |vlans: &[u16], pvid| PortVlans { vlans: vlans.iter().map(|v| (*v, false)).collect(), pvid };
    let vlans = VlanConfig {
        filtering: true,
        ports: [(11, port(&[10, 20], None)), (12, port(&[10], Some(10)))].into(),
        interfaces: Default::default(),
    };
    s.bridge(&[11, 12], vlans);
    assert_ne!(s.config_flags() & CONFIG_VLAN_AWARE, 0);
    s.with_querier();
    let group: Ipv6Addr = "ff0e::1234".parse().unwrap();
    s.frame(11, 10, &mldv2_report(group));
    let in_10 = GroupKey::ipv6(group.octets(), 10);
    assert_eq!(s.member_ports(in_10), [11].into());
    assert!(s.member_ports(GroupKey::ipv6(group.octets(), 20)).is_empty());
    // Each VLAN is followed, with a querier of each family; each port is in its VLANs.
    assert_eq!(s.maps.entries.get(&Key::Vlan(10)), Some(&Entry::Vlan(10, 0)));
    assert_eq!(s.maps.entries.get(&Key::Vlan(20)), Some(&Entry::Vlan(20, 0)));
    for (vlan, port) in [(10, 11), (20, 11), (10, 12)] {
        let entry = s.maps.entries.get(&Key::VlanPort(VlanPortKey::new(vlan, port)));
        assert!(matches!(entry, Some(Entry::VlanPort(_, flags)) if flags & PORT_IN_VLAN != 0), "{vlan}/{port}");
    }
    assert_eq!(s.config_flags() & CONFIG_NO_QUERIER_IPV6, 0);
    // A report heard in a VLAN its port is not in is nobody's.
    s.frame(12, 20, &mldv2_report(group));
    assert_eq!(s.daemon.stats.get(ControllerCounter::OutsideVlan), 1);
}

#[test]
fn a_trunk_port_in_200_vlans_keeps_to_its_group_limit_across_vlans_and_families() {
    let mut config = config();
    config.live.max_groups_per_port = 100;
    let mut s = Scenario::new(config);
    let trunk = PortVlans { vlans: (1..=200).map(|v| (v, false)).collect(), pvid: None };
    let access = PortVlans { vlans: [(1, false)].into(), pvid: Some(1) };
    let vlans =
        VlanConfig { filtering: true, ports: [(11, trunk), (12, access)].into(), interfaces: Default::default() };
    s.bridge(&[11, 12], vlans);
    s.with_querier();
    // One IPv4 and one IPv6 group in each of 200 VLANs: 400 asked, 100 kept.
    for vlan in 1..=200u16 {
        s.frame(11, vlan, &v2_report(Ipv4Addr::new(239, 1, 0, 1)));
        s.frame(11, vlan, &mldv2_report("ff0e::1".parse().unwrap()));
    }
    let members = |s: &Scenario, port: u32| {
        s.maps.of(MAP_MEMBERS).into_iter().filter(|e| matches!(e, Entry::Member(m, _) if m.ifindex == port)).count()
    };
    assert_eq!(members(&s, 11), 100);
    assert_eq!(s.events(EventKind::Join), 100);
    // Another port is not limited by the trunk's groups.
    s.frame(12, 1, &v2_report(Ipv4Addr::new(239, 1, 0, 2)));
    assert_eq!(members(&s, 12), 1);
    // The trunk leaves a group in one VLAN (its last-member round ends
    // before the memberships' interval): one join elsewhere fits again.
    s.frame(11, 1, &v2_leave(Ipv4Addr::new(239, 1, 0, 1)));
    s.at(secs(4));
    assert_eq!(members(&s, 11), 99);
    s.frame(11, 150, &v2_report(Ipv4Addr::new(239, 1, 0, 3)));
    s.frame(11, 151, &v2_report(Ipv4Addr::new(239, 1, 0, 3)));
    assert_eq!(members(&s, 11), 100);
}

#[test]
fn the_bridges_own_snooping_turned_on_again_is_turned_off_and_told_once() {
    let mut s = Scenario::new(config());
    for _ in 0..2 {
        let view = BridgeView { kernel_snooping: true, ..BridgeView::default() };
        s.input(Input::Bridge(Box::new(view)));
    }
    let off = s.effects.iter().filter(|e| **e == Effect::KernelSnoopingOff).count();
    let told = s.effects.iter().filter(|e| matches!(e, Effect::Log(_, l) if l.contains("turned on again"))).count();
    assert_eq!((off, told), (2, 1));
    assert_eq!(s.daemon.stats.get(ControllerCounter::KernelSnoopingReenabled), 2);
}

#[test]
fn static_groups_and_reloads_change_the_state_a_client_asked_for() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12]);
    s.with_querier();
    let entry: StaticGroup = "p12=239.2.2.2".parse().unwrap();
    s.input(Input::Change(Change::GroupAdd(entry.clone())));
    assert!(s.effects.iter().any(|e| matches!(e, Effect::Reply(Ok(done)) if done.contains("static"))));
    let group = GroupKey::ipv4([239, 2, 2, 2], VLAN_NONE);
    assert_eq!(s.member_ports(group), [12].into());
    let no_port: StaticGroup = "p99=239.2.2.2".parse().unwrap();
    s.input(Input::Change(Change::GroupAdd(no_port)));
    assert!(s.effects.iter().any(|e| matches!(e, Effect::Reply(Err(why)) if why.contains("p99 is not a port"))));
    // A reload: a port setting applies at once, a timer waits for the next start.
    let mut new = config();
    new.live.fast_leave_ports = vec!["all".into()];
    new.start.timers.query_interval = secs(30);
    s.input(Input::Reloaded { config: Ok(Box::new(new)), reply: true });
    let reply = s.effects.iter().rev().find_map(|e| match e {
        Effect::Reply(reply) => Some(reply.clone()),
        _ => None,
    });
    assert_eq!(
        reply,
        Some(Ok(
            "static groups: 0 added, 0 changed, 0 deleted; changed but applied only at the next start: the timers"
                .into()
        ))
    );
    assert!(s.daemon.ports[&11].options.fast_leave);
    // The static group added at run time outlives the reload.
    assert_eq!(s.member_ports(group), [12].into());
}

#[test]
fn with_no_port_named_trusted_any_port_may_be_the_router_and_reports_go_to_it_only() {
    let mut open = config();
    open.live.trusted_ports.clear();
    let mut s = Scenario::new(open);
    s.ports(&[11, 12, 13]);
    s.with_querier();
    let reports = GroupKey::report_targets(snoop_common::FAMILY_IPV4, VLAN_NONE);
    // No router yet: reports go up to the bridge device only, to no host.
    assert_eq!(s.copy_list(reports), Some(vec![]));
    for port in [11, 12, 13] {
        assert_eq!(s.port_flags(port) & snoop_common::PORT_GETS_REPORTS, 0, "p{port} gets reports");
    }
    // A router on p12, no option needed.
    s.frame(12, VLAN_NONE, &v2_query(ROUTER));
    assert_ne!(s.port_flags(12) & PORT_ROUTER, 0);
    assert_eq!(s.copy_list(reports), Some(vec![12]));
    let start = s.daemon.started(s.now, false);
    assert!(start.iter().any(|e| matches!(e, Effect::Log(_, l) if l.contains("learned on any port"))), "{start:?}");
}

/// Router discovery solicitations: at start and twice more, a second
/// apart, in IPv4 and IPv6; then no more.
#[test]
fn router_discovery_solicitations_are_repeated() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12]);
    let solicitations = |effects: &[Effect]| {
        let is_solicitation = |frame: &[u8]| {
            // To 224.0.0.2 (IGMP type 0x31) or ff02::2 (ICMPv6 type 151).
            frame.starts_with(&[0x01, 0x00, 0x5e, 0, 0, 2]) || frame.starts_with(&[0x33, 0x33, 0, 0, 0, 2])
        };
        effects.iter().filter(|e| matches!(e, Effect::Send { frame, .. } if is_solicitation(frame))).count()
    };
    assert_eq!(solicitations(&s.daemon.started(s.now, false)), 2, "IGMP and MLD at start");
    let mut later = 0;
    for tenth in 1..=50 {
        s.effects.clear();
        s.at(Duration::from_millis(100 * tenth));
        later += solicitations(&s.effects);
    }
    assert_eq!(later, 4, "twice more per family within 5 s, then none");
}

/// An IGMPv3 report from HOST of one record of `kind` for `group` naming `sources`.
fn v3_record(kind: u8, group: Ipv4Addr, sources: &[Ipv4Addr]) -> Vec<u8> {
    let mut message = vec![0x22, 0, 0, 0, 0, 0, 0, 1, kind, 0];
    message.extend_from_slice(&(sources.len() as u16).to_be_bytes());
    message.extend_from_slice(&group.octets());
    sources.iter().for_each(|s| message.extend_from_slice(&s.octets()));
    igmp(HOST, Ipv4Addr::new(224, 0, 0, 22), message)
}

#[test]
fn a_source_query_too_long_for_one_frame_goes_in_several() {
    let mut config = config();
    config.start.max_sources_per_group = 400;
    let mut s = Scenario::new(config);
    s.ports(&[11, 12]);
    s.with_querier();
    s.take_sent();
    let sources: Vec<Ipv4Addr> = (0..400u16).map(|i| Ipv4Addr::new(10, 7, (i >> 8) as u8, i as u8)).collect();
    s.frame(11, VLAN_NONE, &v3_record(1, G, &sources)); // IS_IN
    s.frame(11, VLAN_NONE, &v3_record(6, G, &sources)); // BLOCK all 400
    let frames: Vec<Vec<u8>> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send { frame, .. } => Some(frame.clone()),
            _ => None,
        })
        .collect();
    // 366 sources fit a 1500-byte frame; the other 34 go in a second query.
    let listed: Vec<usize> = frames
        .iter()
        .map(|frame| {
            assert!(frame.len() <= 1514, "a {}-byte frame", frame.len());
            match crate::proto::igmp::parse(&frame[14..]).expect("a query").message {
                crate::proto::Message::Query { sources, .. } => sources.len(),
                other => panic!("not a query: {other:?}"),
            }
        })
        .collect();
    assert_eq!(listed, [366, 34]);
}

/// A port that goes down loses its learned memberships (the Linux bridge
/// forgets them too); one that comes up, or joins the bridge, is asked at
/// once, out of that port alone, with the last-member response time.
#[test]
fn a_port_going_down_is_flushed_and_one_coming_up_is_asked_at_once() {
    let mut s = Scenario::new(config());
    s.ports(&[11, 12]);
    s.with_querier();
    s.frame(12, VLAN_NONE, &v2_report(G));
    assert_eq!(s.member_ports(key(G)), [12].into());
    let view = |down: &[u32], ports: &[u32]| {
        let ports = ports
            .iter()
            .map(|i| Port {
                ifindex: *i,
                name: format!("p{i}"),
                policy: PortPolicy { forwarding: !down.contains(i), ..PortPolicy::default() },
                peer_redirect: false,
            })
            .collect();
        Input::Bridge(Box::new(BridgeView { mac: [2, 0, 0, 0, 0, 1], ports, ..BridgeView::default() }))
    };
    s.input(view(&[12], &[11, 12]));
    assert!(s.member_ports(key(G)).is_empty(), "p12's membership went with it");
    s.effects.clear();
    s.input(view(&[], &[11, 12]));
    let asked: Vec<u32> = s
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::SendOnPort { ifindex, frame } if frame[12..14] == [0x08, 0x00] => {
                let query = crate::proto::igmp::parse(&frame[14..]).expect("a query");
                let crate::proto::Message::Query { max_response, .. } = query.message else { panic!("not a query") };
                assert_eq!(max_response, Duration::from_secs(1), "the last-member interval");
                Some(*ifindex)
            }
            Effect::SendOnPort { ifindex, .. } => Some(*ifindex + 100), // MLD
            _ => None,
        })
        .collect();
    assert_eq!(asked, [12, 112], "p12 alone is asked, in IGMP and MLD");
    // A new port too.
    s.effects.clear();
    s.input(view(&[], &[11, 12, 13]));
    assert!(s.effects.iter().any(|e| matches!(e, Effect::SendOnPort { ifindex: 13, .. })));
}
