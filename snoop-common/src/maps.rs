//! The data path's maps: names, sizes, keys and values, and [`MAPS`], the
//! table both the userspace loader and the object check read.
use crate::{PortCounters, TrafficCounters};
/// Address family tags stored in [`GroupKey::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;
/// The family of the keys listing where reports go ([`GroupKey::report_targets`]).
pub const FAMILY_REPORT_TARGETS: u8 = 0;

/// VLAN id used while snooping is not VLAN-aware.
pub const VLAN_NONE: u16 = 0;
/// The VLAN id bits of an 802.1Q tag's TCI.
pub const VLAN_VID_MASK: u16 = 0x0fff;

/// A multicast group as the data path sees it.
///
/// Sized for an IPv6 group and a VLAN id so MLD and VLAN-aware snooping need no
/// new map layout. IPv4 groups use the first four bytes of `addr` (network order)
/// and leave the rest zero.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub addr: [u8; 16],
    pub vlan: u16,
    pub family: u8,
    pub _pad: u8,
}

impl GroupKey {
    #[inline(always)]
    pub const fn ipv4(octets: [u8; 4], vlan: u16) -> Self {
        Self {
            addr: [octets[0], octets[1], octets[2], octets[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            vlan,
            family: FAMILY_IPV4,
            _pad: 0,
        }
    }

    #[inline(always)]
    pub const fn ipv6(addr: [u8; 16], vlan: u16) -> Self {
        Self { addr, vlan, family: FAMILY_IPV6, _pad: 0 }
    }

    /// The IPv6 group, if this key holds one.
    pub const fn ipv6_octets(&self) -> Option<[u8; 16]> {
        if self.family == FAMILY_IPV6 {
            Some(self.addr)
        } else {
            None
        }
    }

    /// The key of the [`MAP_GROUP_PORTS`] entry listing where redirect
    /// copies `family`'s reports and leaves in `vlan` (router ports and the
    /// bridge device). Its family is [`FAMILY_REPORT_TARGETS`], no address
    /// family, so no group collides with it; IPv6's have 6 in their first
    /// address byte, IPv4's 0. (Built field by field: a constant copied and
    /// changed in the data path would be read-only data there.)
    #[inline(always)]
    pub const fn report_targets(family: u8, vlan: u16) -> Self {
        let mut addr = [0; 16];
        if family == FAMILY_IPV6 {
            addr[0] = FAMILY_IPV6;
        }
        Self { addr, vlan, family: FAMILY_REPORT_TARGETS, _pad: 0 }
    }

    /// A [`GroupKey::report_targets`] key, not a group's.
    pub const fn is_report_targets(&self) -> bool {
        self.family == FAMILY_REPORT_TARGETS
    }

    /// The IPv4 group, if this key holds one.
    pub const fn ipv4_octets(&self) -> Option<[u8; 4]> {
        if self.family == FAMILY_IPV4 {
            Some([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
        } else {
            None
        }
    }
}

/// Key of the per-(group, port) maps: membership and traffic counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortGroupKey {
    pub group: GroupKey,
    /// Bridge port (interface index) the traffic leaves through.
    pub ifindex: u32,
}

/// Value of [`MAP_MEMBERS`]: a port has at least one member of a group.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberValue {
    /// CLOCK_MONOTONIC time (ns, as `bpf_ktime_get_ns`) at which the membership
    /// expires if not refreshed. A restarted controller resumes its timers from it.
    pub expires_ns: u64,
    /// Lowest version heard from this port for this group (IGMP 1-3, MLD 1-2).
    pub version: u8,
    /// `MEMBER_*` flags.
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Index into [`MAP_MEMBER_TRAFFIC`], or [`NO_SLOT`].
    pub traffic_slot: u32,
}

/// A leave was heard and the last-member round is running: a restarted
/// controller gives the membership only what is left of that round.
pub const MEMBER_LEAVING: u8 = 1;
/// The port gets only the sources [`MAP_SOURCES`] lists for it (INCLUDE mode).
pub const MEMBER_SOURCES_INCLUDE: u8 = 2;
/// The port gets every source but those [`MAP_SOURCES`] lists for it
/// (EXCLUDE mode with blocked sources). Neither flag: any source, the one
/// lookup of any-source multicast.
pub const MEMBER_SOURCES_EXCLUDE: u8 = 4;
/// A static membership (configured, never aged): a restarted controller
/// keeps it static.
pub const MEMBER_STATIC: u8 = 8;
/// The flags that are the membership's state, not its source filter.
pub const MEMBER_STATE_FLAGS: u8 = MEMBER_LEAVING | MEMBER_STATIC;

/// A source address as keys hold it: IPv4 in the first four bytes (network
/// order), as in [`GroupKey::addr`].
pub type SourceAddr = [u8; 16];

/// Key of [`MAP_SOURCES`]: one source a source-specific membership names.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceKey {
    pub member: PortGroupKey,
    pub source: SourceAddr,
}

/// Value of [`MAP_SOURCES`]: the entry's presence is the fact.
pub const SOURCE_LISTED: u32 = 1;

/// Key of [`MAP_SOURCE_GROUP_PORTS`]: a group's traffic from one source.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SourceGroupKey {
    pub group: GroupKey,
    pub source: SourceAddr,
}

/// No traffic counter slot: the slots ran out, the traffic is not counted.
pub const NO_SLOT: u32 = u32::MAX;

/// Value of [`MAP_GROUPS`]: the group has members on at least one port, so the
/// data path prunes it instead of treating it as unregistered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupValue {
    /// Index into [`MAP_GROUP_TRAFFIC`], or [`NO_SLOT`].
    pub traffic_slot: u32,
    pub _pad: u32,
}

/// Value of [`MAP_PORTS`], keyed by the port's ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortValue {
    /// `PORT_*` flags.
    pub flags: u32,
    /// Control frames per second handed to the controller from this port; the
    /// rest are counted and still forwarded. 0: no limit. A frame counts
    /// the ring space its record takes, in small records (1 up to 128
    /// bytes, 16 up to 2 KiB, 512 beyond).
    pub control_rate_limit: u32,
    /// Rate-limit window: start (CLOCK_MONOTONIC ns) and what it used so
    /// far (in small records). Written by the data path only; a userspace
    /// write just restarts the window.
    pub window_start_ns: u64,
    pub window_frames: u64,
    /// Index into [`MAP_PORT_TRAFFIC`], or [`NO_SLOT`].
    pub traffic_slot: u32,
    /// On a VLAN-aware bridge ([`CONFIG_VLAN_AWARE`]): the VLAN of untagged
    /// (and priority-tagged) frames entering the port, its PVID...
    pub pvid: u16,
    /// ...and the VLAN whose frames leave it untagged (the tag is gone by
    /// the time the egress program sees them). [`VLAN_NONE`] for none.
    pub untagged_vlan: u16,
}

/// A multicast router is behind the port: it gets all group traffic and all
/// reports. Router ports are learned per family (IGMP queries make an IPv4
/// router port, MLD queries an IPv6 one): [`PORT_ROUTER_IPV6`].
pub const PORT_ROUTER: u32 = 1;
/// The port gets all group traffic (but not reports): some of its
/// memberships did not fit a full map, and pruning it would blackhole them.
pub const PORT_UNPRUNED: u32 = 2;
/// Frames entering through the port take the bridge path, never a redirect:
/// the bridge checks something a copy made here would skip (the port is
/// isolated, locked, or not forwarding).
pub const PORT_BRIDGE_PATH: u32 = 4;
/// Reports and leaves go to the port though it is no router port: it is
/// trusted and no router port is known yet, so an upstream router or proxy
/// hears joins at once instead of at its next query.
pub const PORT_GETS_REPORTS: u32 = 8;
/// [`PORT_ROUTER`] for IPv6 group traffic and MLD reports.
pub const PORT_ROUTER_IPV6: u32 = 16;
/// [`PORT_GETS_REPORTS`] for MLD reports.
pub const PORT_GETS_REPORTS_IPV6: u32 = 32;

/// Key of [`MAP_VLAN_PORTS`]: a port within one VLAN.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VlanPortKey {
    pub vlan: u16,
    pub _pad: u16,
    pub ifindex: u32,
}

impl VlanPortKey {
    #[inline(always)]
    pub const fn new(vlan: u16, ifindex: u32) -> Self {
        Self { vlan, _pad: 0, ifindex }
    }
}

/// The `PORT_*` flags a port has in one VLAN rather than on the whole port,
/// kept in [`MAP_VLAN_PORTS`] on a VLAN-aware bridge: a router port of VLAN
/// 10 is none of VLAN 20. Entries only for ports with some of them.
pub const PORT_VLAN_FLAGS: u32 = PORT_ROUTER | PORT_ROUTER_IPV6 | PORT_GETS_REPORTS | PORT_GETS_REPORTS_IPV6;
/// In [`MAP_VLAN_PORTS`] only: the port is in the VLAN (the bridge's VLAN
/// configuration), so redirect may take the VLAN's tagged frames entering
/// it. Without it the bridge path decides, and its ingress filter drops them.
pub const PORT_IN_VLAN: u32 = 64;

/// How often the controller writes its heartbeat (a clock reading in
/// [`DatapathConfig::heartbeat_ns`]), whatever else it is doing.
pub const HEARTBEAT_INTERVAL: core::time::Duration = core::time::Duration::from_secs(1);

/// Value of the single-entry [`MAP_CONFIG`] array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DatapathConfig {
    /// `CONFIG_*` flags.
    pub flags: u32,
    /// `RESTORE_*` flags: bridge settings snoop changed and must put back
    /// at a clean exit, kept here so keep-state restarts remember them.
    pub restore: u32,
    /// CLOCK_MONOTONIC ns of the controller's last heartbeat.
    pub heartbeat_ns: u64,
    /// With no heartbeat for this long the controller counts as gone and the
    /// data path stops pruning (floods like a plain bridge). 0: never.
    pub failsafe_ns: u64,
    /// With no heartbeat for this long the copy lists are stale: only a
    /// running controller follows ports that leave a VLAN, turn isolated or
    /// go down, so the data path stops redirecting (the bridge path, whose
    /// egress programs still prune, takes every frame) until the controller
    /// is back or the failsafe floods. 0: no limit.
    pub redirect_fresh_ns: u64,
}

/// Groups nobody has joined are flooded (off: sent to router ports only).
pub const CONFIG_FLOOD_UNREGISTERED: u32 = 1;
/// Redirect mode: registered group traffic is copied straight from the
/// ingress port to the ports in [`MAP_GROUP_PORTS`], bypassing the bridge.
pub const CONFIG_REDIRECT: u32 = 2;
/// Some port has [`PORT_BRIDGE_PATH`]: redirect looks the ingress port up
/// (without it, the fast path spends no lookup on it).
pub const CONFIG_CHECK_SOURCE_PORT: u32 = 4;
/// No querier is present (none heard, snoop's own disabled, or its first
/// query not yet answered): hosts report only when queried, so membership is
/// unknown and nothing is pruned or redirected, as the Linux bridge does.
/// On a VLAN-aware bridge: in some VLAN (pruning asks [`MAP_VLANS`]).
pub const CONFIG_NO_QUERIER: u32 = 8;
/// [`CONFIG_NO_QUERIER`] for MLD: IPv6 groups are not pruned.
pub const CONFIG_NO_QUERIER_IPV6: u32 = 16;
/// Link-scope IPv6 groups but ff02::1 are snooped like any other (off:
/// flooded, so neighbour discovery never depends on snooping).
pub const CONFIG_SNOOP_IPV6_LINK_SCOPE: u32 = 32;
/// The bridge filters VLANs: membership is per VLAN, and a frame's VLAN is
/// its tag's or, untagged, the port's ([`PortValue::pvid`],
/// [`PortValue::untagged_vlan`]). Router and report flags are then the
/// port's in the frame's VLAN ([`MAP_VLAN_PORTS`]) and the querier's
/// presence the VLAN's ([`MAP_VLANS`]). Off: every frame is in [`VLAN_NONE`].
pub const CONFIG_VLAN_AWARE: u32 = 64;

/// Value of [`MAP_VLANS`], keyed by VLAN id on a VLAN-aware bridge: the
/// [`no_querier_flag`]s of the families with no querier present in that
/// VLAN. A VLAN without an entry is one snoop does not follow (yet): not
/// pruned, as one without a querier.
pub type VlanFlags = u32;

/// The flags and keys that differ between the address families, so one
/// data path serves both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyFlags {
    /// The port flag of a router port of this family.
    pub router: u32,
    /// The port flag of a port that gets this family's reports.
    pub gets_reports: u32,
    /// The config flag: no querier of this family is present.
    pub no_querier: u32,
}

// The data path passes the one-byte family around and asks these for its
// flags: a struct passed to a function the compiler does not inline would
// become read-only data, a map the object must not have.

/// The port flag of a router port of `family`.
#[inline(always)]
pub const fn router_flag(family: u8) -> u32 {
    if family == FAMILY_IPV6 {
        PORT_ROUTER_IPV6
    } else {
        PORT_ROUTER
    }
}

/// The port flag of a port that gets `family`'s reports.
#[inline(always)]
pub const fn gets_reports_flag(family: u8) -> u32 {
    if family == FAMILY_IPV6 {
        PORT_GETS_REPORTS_IPV6
    } else {
        PORT_GETS_REPORTS
    }
}

/// The config flag: no querier of `family` is present.
#[inline(always)]
pub const fn no_querier_flag(family: u8) -> u32 {
    if family == FAMILY_IPV6 {
        CONFIG_NO_QUERIER_IPV6
    } else {
        CONFIG_NO_QUERIER
    }
}

const fn family_flags(family: u8) -> FamilyFlags {
    FamilyFlags {
        router: router_flag(family),
        gets_reports: gets_reports_flag(family),
        no_querier: no_querier_flag(family),
    }
}

pub const IPV4_FLAGS: FamilyFlags = family_flags(FAMILY_IPV4);
pub const IPV6_FLAGS: FamilyFlags = family_flags(FAMILY_IPV6);

/// Slots of [`MAP_SENDERS`].
pub const SENDER_SLOTS: u32 = 256;

/// Value of the per-CPU array [`MAP_SENDERS`]: a host whose frames the fast
/// path consumed, so the bridge never saw them and never learned its MAC.
/// The controller teaches the bridge from these. Slot = hash of the MAC.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SenderSlot {
    pub mac: [u8; 6],
    /// The VLAN its frames were in ([`VLAN_NONE`] unless the bridge filters
    /// VLANs): the bridge learns MACs per VLAN.
    pub vlan: u16,
    /// The port its frames entered through.
    pub ifindex: u32,
    pub _pad2: u32,
    /// CLOCK_MONOTONIC_COARSE ns when last recorded (at most once a second per sender).
    pub seen_ns: u64,
}

/// The slot of a sender's MAC: its last two bytes, which vary most.
#[inline(always)]
pub const fn sender_slot(mac: &[u8; 6]) -> u32 {
    ((mac[4] as u32) << 8 | mac[5] as u32) % SENDER_SLOTS
}

/// The bridge's own multicast snooping was on before snoop turned it off.
pub const RESTORE_KERNEL_SNOOPING: u32 = 1;

/// Most ports one group can be copied to in redirect mode; groups with more
/// member and router ports take the bridge path. (64 also passes the
/// verifier on 6.18; 32 keeps each group's entry at 164 bytes.)
pub const MAX_FANOUT: usize = 32;

/// Value of [`MAP_GROUP_PORTS`]: where redirect mode copies a group's traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupPorts {
    /// Ports in `ifindexes`.
    pub count: u32,
    /// The bridge device, when the bridge host has a member (its sockets
    /// get a copy at the device's ingress); 0: none.
    pub local: u32,
    /// The group's slot in [`MAP_GROUP_TRAFFIC`] (copies not made count as pruned).
    pub traffic_slot: u32,
    /// Ports of the bridge snoop manages: a packet spares those it is not copied to.
    pub bridge_ports: u32,
    /// 1: the last target is a veth port whose peer lives in another network
    /// namespace, and no qdisc of its own: the packet itself (not a clone) goes
    /// straight into the peer's ingress (bpf_redirect_peer), skipping the
    /// port's transmit path, its egress program and a backlog queue pass.
    pub last_to_peer: u32,
    /// Counters for that last copy, which no egress program sees: its
    /// membership's slot in [`MAP_MEMBER_TRAFFIC`] (a member port) or its
    /// port's slot in [`MAP_PORT_TRAFFIC`] (a router port); the other is [`NO_SLOT`].
    pub last_member_slot: u32,
    pub last_port_slot: u32,
    /// 1: some sources of the group have their own list in
    /// [`MAP_SOURCE_GROUP_PORTS`]; this one is for every other source.
    pub by_source: u32,
    /// On a VLAN-aware bridge, `UNTAGGED_*` flags: which of the copies no
    /// egress program sees leave untagged. (Copies through a port's
    /// transmit path all leave tagged with the frame's VLAN; the port's
    /// egress program takes the tag off in its untagged VLAN, as the
    /// bridge's egress would.)
    pub untagged: u32,
    pub ifindexes: [u32; MAX_FANOUT],
}

/// [`GroupPorts::untagged`]: the bridge device gets its copy untagged.
pub const UNTAGGED_LOCAL: u32 = 1;
/// [`GroupPorts::untagged`]: the copy handed to the last port's veth peer
/// ([`GroupPorts::last_to_peer`]) leaves untagged.
pub const UNTAGGED_LAST: u32 = 2;

/// Most source-specific multicast ranges (`--ssm-range`), IPv4 and IPv6 together.
pub const MAX_SSM_RANGES: u32 = 4;

/// A range of source-specific multicast groups: those of `family` whose
/// address bits under `mask` are `addr`'s. A [`MAP_SSM_RANGES`] entry
/// (family 0: none). Masks, not prefix lengths: ff3x::/32 leaves the scope
/// nibble out.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SsmRange {
    pub addr: [u8; 16],
    pub mask: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}

impl SsmRange {
    /// 232.0.0.0/8: IPv4 source-specific multicast (RFC 4607).
    pub const IPV4_SSM: Self = Self::prefix(FAMILY_IPV4, [232, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    /// ff3x::/32, any scope x: IPv6 source-specific multicast (RFC 4607 1).
    pub const IPV6_SSM: Self = Self {
        addr: [0xff, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        mask: [0xff, 0xf0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        family: FAMILY_IPV6,
        _pad: [0; 3],
    };

    /// The groups of `family` whose first `len` bits are `addr`'s.
    pub const fn prefix(family: u8, addr: [u8; 16], len: u8) -> Self {
        let mut mask = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            let before = 8 * i as u32;
            let bits = if len as u32 <= before {
                0
            } else if len as u32 >= before + 8 {
                8
            } else {
                len as u32 - before
            };
            mask[i] = (0xff00u16 >> bits) as u8;
            i += 1;
        }
        let mut masked = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            masked[i] = addr[i] & mask[i];
            i += 1;
        }
        Self { addr: masked, mask, family, _pad: [0; 3] }
    }

    #[inline(always)]
    pub fn contains(&self, group: &GroupKey) -> bool {
        if self.family != group.family {
            return false;
        }
        let mut i = 0;
        while i < 16 {
            if group.addr[i] & self.mask[i] != self.addr[i] {
                return false;
            }
            i += 1;
        }
        true
    }
}

// Map names: the eBPF statics and the userspace lookups use these strings.
pub const MAP_MEMBERS: &str = "SNOOP_MEMBERS";
pub const MAP_GROUPS: &str = "SNOOP_GROUPS";
pub const MAP_PORTS: &str = "SNOOP_PORTS";
pub const MAP_CONFIG: &str = "SNOOP_CONFIG";
pub const MAP_COUNTERS: &str = "SNOOP_COUNTERS";
pub const MAP_MEMBER_TRAFFIC: &str = "SNOOP_MEMBER_TRAFFIC";
pub const MAP_GROUP_TRAFFIC: &str = "SNOOP_GROUP_TRAFFIC";
pub const MAP_PORT_TRAFFIC: &str = "SNOOP_PORT_TRAFFIC";
pub const MAP_PORT_COUNTERS: &str = "SNOOP_PORT_COUNTERS";
pub const MAP_GROUP_PORTS: &str = "SNOOP_GROUP_PORTS";
pub const MAP_EVENTS: &str = "SNOOP_EVENTS";
pub const MAP_SENDERS: &str = "SNOOP_SENDERS";
pub const MAP_SOURCES: &str = "SNOOP_SOURCES";
pub const MAP_SOURCE_GROUP_PORTS: &str = "SNOOP_SOURCE_GROUP_PORTS";
pub const MAP_VLAN_PORTS: &str = "SNOOP_VLAN_PORTS";
pub const MAP_VLANS: &str = "SNOOP_VLANS";
pub const MAP_SSM_RANGES: &str = "SNOOP_SSM_RANGES";

/// Program names (the eBPF function names).
pub const PROG_INGRESS: &str = "snoop_ingress";
pub const PROG_EGRESS: &str = "snoop_egress";

/// Map sizes.
pub const MAX_PORTS: u32 = 1024;
pub const MAX_GROUPS: u32 = 131_072;
pub const MAX_MEMBERSHIPS: u32 = 262_144;
/// Traffic slots for memberships and for groups (each array holds this many
/// counters per CPU); memberships beyond it forward normally, uncounted.
pub const MAX_TRAFFIC_SLOTS: u32 = 16_384;
/// Sources named by source-specific memberships, all ports and groups.
pub const MAX_SOURCES: u32 = 65_536;
/// Redirect copy lists of single sources of source-specific groups.
pub const MAX_SOURCE_GROUPS: u32 = 16_384;
/// Ports' per-VLAN flags: a router port of every VLAN on a trunk of 4094,
/// on 16 ports.
pub const MAX_VLAN_PORTS: u32 = 65_536;
/// Every VLAN id.
pub const MAX_VLANS: u32 = 4096;
/// Bytes of the control-frame ring: about 55,000 small records (4,000 full-size).
pub const EVENT_RING_BYTES: u32 = 8 << 20;

/// BPF map types snoop uses (`enum bpf_map_type`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    Hash = 1,
    Array = 2,
    PerCpuHash = 5,
    PerCpuArray = 6,
    RingBuf = 27,
}

/// One pinned map as this build defines it. For per-CPU maps the value size
/// is one CPU's value; for the ring, the entries are its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSpec {
    pub name: &'static str,
    pub kind: MapKind,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
}

const fn spec(name: &'static str, kind: MapKind, key_size: usize, value_size: usize, max_entries: u32) -> MapSpec {
    MapSpec { name, kind, key_size: key_size as u32, value_size: value_size as u32, max_entries }
}

use core::mem::size_of;

/// Sizes of the maps that grow with the network, as the controller loads
/// them: the object's are the defaults ([`MAX_MEMBERSHIPS`], [`MAX_GROUPS`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub memberships: u32,
    /// Groups: the group map and the redirect copy lists.
    pub groups: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self { memberships: MAX_MEMBERSHIPS, groups: MAX_GROUPS }
    }
}

impl MapSizes {
    /// `spec` with the entries these sizes give it.
    pub const fn apply(&self, spec: MapSpec) -> MapSpec {
        let max_entries = match spec.name.as_bytes() {
            b"SNOOP_MEMBERS" => self.memberships,
            b"SNOOP_GROUPS" | b"SNOOP_GROUP_PORTS" => self.groups,
            _ => spec.max_entries,
        };
        MapSpec { max_entries, ..spec }
    }
}

/// Every map of the data path. snoop-ebpf declares its statics from the same
/// types and sizes; a test checks the built object against this table.
pub const MAPS: [MapSpec; 17] = [
    spec(MAP_MEMBERS, MapKind::Hash, size_of::<PortGroupKey>(), size_of::<MemberValue>(), MAX_MEMBERSHIPS),
    spec(MAP_GROUPS, MapKind::Hash, size_of::<GroupKey>(), size_of::<GroupValue>(), MAX_GROUPS),
    spec(MAP_PORTS, MapKind::Hash, 4, size_of::<PortValue>(), MAX_PORTS),
    spec(MAP_CONFIG, MapKind::Array, 4, size_of::<DatapathConfig>(), 1),
    spec(MAP_COUNTERS, MapKind::PerCpuArray, 4, 8, crate::COUNTER_COUNT),
    spec(MAP_MEMBER_TRAFFIC, MapKind::PerCpuArray, 4, size_of::<TrafficCounters>(), MAX_TRAFFIC_SLOTS),
    spec(MAP_GROUP_TRAFFIC, MapKind::PerCpuArray, 4, size_of::<TrafficCounters>(), MAX_TRAFFIC_SLOTS),
    spec(MAP_PORT_TRAFFIC, MapKind::PerCpuArray, 4, size_of::<TrafficCounters>(), MAX_PORTS),
    spec(MAP_GROUP_PORTS, MapKind::Hash, size_of::<GroupKey>(), size_of::<GroupPorts>(), MAX_GROUPS),
    spec(MAP_PORT_COUNTERS, MapKind::PerCpuHash, 4, size_of::<PortCounters>(), MAX_PORTS),
    spec(MAP_EVENTS, MapKind::RingBuf, 0, 0, EVENT_RING_BYTES),
    spec(MAP_SENDERS, MapKind::PerCpuArray, 4, size_of::<SenderSlot>(), SENDER_SLOTS),
    spec(MAP_SOURCES, MapKind::Hash, size_of::<SourceKey>(), 4, MAX_SOURCES),
    spec(
        MAP_SOURCE_GROUP_PORTS,
        MapKind::Hash,
        size_of::<SourceGroupKey>(),
        size_of::<GroupPorts>(),
        MAX_SOURCE_GROUPS,
    ),
    spec(MAP_VLAN_PORTS, MapKind::Hash, size_of::<VlanPortKey>(), 4, MAX_VLAN_PORTS),
    spec(MAP_VLANS, MapKind::Hash, 2, size_of::<VlanFlags>(), MAX_VLANS),
    spec(MAP_SSM_RANGES, MapKind::Array, 4, size_of::<SsmRange>(), MAX_SSM_RANGES),
];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for GroupKey {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for PortGroupKey {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for MemberValue {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for GroupValue {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for PortValue {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for DatapathConfig {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for GroupPorts {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for SenderSlot {}
    // SAFETY: repr(C) plain data, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for SourceKey {}
    // SAFETY: repr(C) plain data, no padding; every bit pattern is valid.
    unsafe impl aya::Pod for SourceGroupKey {}
    // SAFETY: repr(C), plain bytes, no padding left implicit.
    unsafe impl aya::Pod for SsmRange {}
    // SAFETY: repr(C) plain data with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for VlanPortKey {}
}

// Layout checks: a change here changes the pinned maps' format.
const _: () = assert!(core::mem::size_of::<GroupKey>() == 20);
const _: () = assert!(core::mem::size_of::<PortGroupKey>() == 24);
const _: () = assert!(core::mem::size_of::<MemberValue>() == 16);
const _: () = assert!(core::mem::size_of::<GroupPorts>() == 36 + 4 * MAX_FANOUT);
const _: () = assert!(core::mem::size_of::<SenderSlot>() == 24);
const _: () = assert!(core::mem::size_of::<SourceKey>() == 40);
const _: () = assert!(core::mem::size_of::<SourceGroupKey>() == 36);
const _: () = assert!(core::mem::size_of::<VlanPortKey>() == 8);
