//! The eBPF side as userspace drives it: load, attach to ports, write the
//! membership maps, read counters. All kernel objects live under one bpffs
//! directory per bridge, so a restarted snoop adopts them without a gap in
//! forwarding, and a clean exit removes every one of them.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    fs, io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::{anyhow, bail, Context as _, Result};
use aya::{
    maps::{Array, HashMap, MapData, MapInfo, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        SchedClassifier, TcAttachType,
    },
    Ebpf, EbpfLoader,
};
use snoop_common::{
    DatapathConfig, GroupKey, GroupPorts, GroupValue, MemberValue, PortCounters, PortGroupKey, PortValue,
    TrafficCounters, COUNTER_COUNT, MAPS, MAP_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_GROUPS, MAP_GROUP_PORTS,
    MAP_GROUP_TRAFFIC, MAP_MEMBERS, MAP_MEMBER_TRAFFIC, MAP_PORTS, MAP_PORT_COUNTERS, MAP_PORT_TRAFFIC, MAX_FANOUT,
    MAX_PORTS, MAX_TRAFFIC_SLOTS, NO_SLOT, PROG_EGRESS, PROG_INGRESS, REPORT_TARGETS, VLAN_NONE,
};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snoop.bpf.o"));

const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// One direction of one port: the pinned TCX link keeps the program attached
/// even while no snoop process runs.
struct PortLinks {
    ingress: PinnedLink,
    egress: PinnedLink,
}

/// One place redirect mode copies a frame to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyTarget {
    /// A port with a member of the group.
    Member(u32),
    /// A router port (without a member).
    Router(u32),
    /// The bridge device itself, for the bridge host's own sockets: the copy
    /// goes to its ingress.
    BridgeDevice(u32),
}

impl CopyTarget {
    pub fn ifindex(self) -> u32 {
        match self {
            CopyTarget::Member(i) | CopyTarget::Router(i) | CopyTarget::BridgeDevice(i) => i,
        }
    }

    /// The bridge port, for a member or router port.
    fn port(self) -> Option<u32> {
        match self {
            CopyTarget::Member(i) | CopyTarget::Router(i) => Some(i),
            CopyTarget::BridgeDevice(_) => None,
        }
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    members: HashMap<MapData, PortGroupKey, MemberValue>,
    groups: HashMap<MapData, GroupKey, GroupValue>,
    group_ports: HashMap<MapData, GroupKey, GroupPorts>,
    ports: HashMap<MapData, u32, PortValue>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    member_traffic: TrafficSlots,
    group_traffic: TrafficSlots,
    port_traffic: TrafficSlots,
    /// Slots handed out, so refreshes keep theirs and removals free them.
    member_slots: StdHashMap<(Ipv4Addr, u32), u32>,
    group_slots: StdHashMap<Ipv4Addr, u32>,
    port_slots: StdHashMap<u32, u32>,
    port_counters: PerCpuHashMap<MapData, u32, PortCounters>,
    events: Option<RingBuf<MapData>>,
    links: BTreeMap<u32, PortLinks>,
    /// Ports whose copies can go straight to their veth peer (see GroupPorts::last_to_peer).
    peer_ports: BTreeSet<u32>,
    /// Last config written; heartbeats rewrite it with a new time.
    config_value: DatapathConfig,
    control_rate_limit: u32,
}

impl Datapath {
    /// Loads the programs, adopting the maps pinned in `pin_dir` if a previous
    /// snoop left them there. `resumed` tells which happened.
    pub fn load(pin_dir: &Path) -> Result<(Self, bool)> {
        ensure_bpffs()?;
        drop_pins_of_another_layout(pin_dir)?;
        let resumed = pin_dir.join(MAP_MEMBERS).exists();
        let loaded = Self::load_pinned(pin_dir, resumed);
        if loaded.is_err() && !resumed {
            // Maps this failed attempt pinned must not look like state to resume.
            let _ = remove_pin_dir(pin_dir);
        }
        Ok((loaded?, resumed))
    }

    fn load_pinned(pin_dir: &Path, resumed: bool) -> Result<Self> {
        fs::create_dir_all(pin_dir.join("links")).with_context(|| format!("creating {}", pin_dir.display()))?;
        let mut ebpf = EbpfLoader::new().default_map_pin_directory(pin_dir).load(EBPF_OBJECT).with_context(|| {
            format!(
                "loading the eBPF programs (pinned state in {}; if it is from another snoop \
                     version, remove that directory)",
                pin_dir.display()
            )
        })?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            let program: &mut SchedClassifier = program(&mut ebpf, name)?;
            program.load().with_context(|| format!("verifying {name}"))?;
        }
        let datapath = Self {
            members: take_map(&mut ebpf, MAP_MEMBERS)?,
            groups: take_map(&mut ebpf, MAP_GROUPS)?,
            group_ports: take_map(&mut ebpf, MAP_GROUP_PORTS)?,
            ports: take_map(&mut ebpf, MAP_PORTS)?,
            config: take_map(&mut ebpf, MAP_CONFIG)?,
            counters: take_map(&mut ebpf, MAP_COUNTERS)?,
            member_traffic: TrafficSlots::new(take_map(&mut ebpf, MAP_MEMBER_TRAFFIC)?, MAX_TRAFFIC_SLOTS),
            group_traffic: TrafficSlots::new(take_map(&mut ebpf, MAP_GROUP_TRAFFIC)?, MAX_TRAFFIC_SLOTS),
            port_traffic: TrafficSlots::new(take_map(&mut ebpf, MAP_PORT_TRAFFIC)?, MAX_PORTS),
            member_slots: StdHashMap::new(),
            group_slots: StdHashMap::new(),
            port_slots: StdHashMap::new(),
            port_counters: take_map(&mut ebpf, MAP_PORT_COUNTERS)?,
            events: Some(take_map(&mut ebpf, MAP_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_owned(),
            links: BTreeMap::new(),
            peer_ports: BTreeSet::new(),
            config_value: DatapathConfig::default(),
            control_rate_limit: 0,
        };
        let mut datapath = datapath;
        if resumed {
            datapath.adopt_slots();
            // Keeps what a keep-state predecessor must still restore.
            datapath.config_value = datapath.config.get(&0, 0).unwrap_or_default();
        }
        Ok(datapath)
    }

    /// The raw fd of a loaded program (for BPF_PROG_TEST_RUN in the benchmarks).
    pub fn program_fd(&mut self, name: &str) -> Result<std::os::fd::RawFd> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        Ok(program(&mut self.ebpf, name)?.fd()?.as_fd().as_raw_fd())
    }

    /// The ring of captured control frames (taken once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Sets the data path policy: `CONFIG_*` flags, the failsafe time (see
    /// [`DatapathConfig::failsafe_ns`]), how long peer hand-overs outlive the
    /// last heartbeat ([`DatapathConfig::handover_ns`]) and the per-port
    /// control-frame rate limit.
    pub fn configure(
        &mut self,
        flags: u32,
        failsafe: Option<std::time::Duration>,
        handover: std::time::Duration,
        control_rate_limit: u32,
    ) -> Result<()> {
        self.control_rate_limit = control_rate_limit;
        self.config_value = DatapathConfig {
            flags,
            restore: self.config_value.restore,
            heartbeat_ns: monotonic_now_ns(),
            failsafe_ns: failsafe.map_or(0, |d| d.as_nanos() as u64),
            handover_ns: handover.as_nanos() as u64,
        };
        self.config.set(0, self.config_value, 0).context("writing the data path config")
    }

    /// Bridge settings to put back at a clean exit (`RESTORE_*`), kept in
    /// the pinned config so keep-state restarts remember them.
    pub fn restore_flags(&self) -> u32 {
        self.config_value.restore
    }

    pub fn add_restore_flags(&mut self, flags: u32) -> Result<()> {
        self.config_value.restore |= flags;
        self.config.set(0, self.config_value, 0).context("writing the data path config")
    }

    /// Tells the data path the controller is alive.
    pub fn heartbeat(&mut self) -> Result<()> {
        self.config_value.heartbeat_ns = monotonic_now_ns();
        self.config.set(0, self.config_value, 0).context("writing the heartbeat")
    }

    /// Attaches both programs to a port. A link pinned by a previous snoop is
    /// updated in place (atomically: no frame sees no program).
    pub fn attach_port(&mut self, ifindex: u32, name: &str, flags: u32) -> Result<()> {
        self.set_port_flags(ifindex, flags)?;
        if self.links.contains_key(&ifindex) {
            return Ok(());
        }
        let ingress = self.attach_one(ifindex, name, PROG_INGRESS, TcAttachType::Ingress)?;
        let egress = self.attach_one(ifindex, name, PROG_EGRESS, TcAttachType::Egress)?;
        self.links.insert(ifindex, PortLinks { ingress, egress });
        Ok(())
    }

    fn attach_one(&mut self, ifindex: u32, name: &str, prog: &str, direction: TcAttachType) -> Result<PinnedLink> {
        let pin = self.link_pin(ifindex, direction);
        let program: &mut SchedClassifier = program(&mut self.ebpf, prog)?;
        match PinnedLink::from_pin(&pin) {
            Ok(old) => {
                let link = SchedClassifierLink::try_from(FdLink::from(old))
                    .with_context(|| format!("{} is not a TCX link", pin.display()))?;
                let id = program.attach_to_link(link).with_context(|| format!("replacing the program on {name}"))?;
                // The pin already names this link; keep a handle to it.
                drop(program.take_link(id)?);
                PinnedLink::from_pin(&pin).map_err(|e| anyhow!("reopening {}: {e}", pin.display()))
            }
            Err(_) => {
                let id = program.attach(name, direction).with_context(|| format!("attaching {prog} to {name}"))?;
                let link: FdLink = program
                    .take_link(id)?
                    .try_into()
                    .context("attaching did not give a TCX link: snoop needs Linux 6.6 or newer")?;
                Ok(link.pin(&pin).with_context(|| format!("pinning {}", pin.display()))?)
            }
        }
    }

    /// Detaches from a port and forgets it in the port map.
    pub fn detach_port(&mut self, ifindex: u32) -> Result<()> {
        if let Some(links) = self.links.remove(&ifindex) {
            for link in [links.ingress, links.egress] {
                // Closing the last reference to an unpinned link detaches it.
                let _ = link.unpin();
            }
        }
        remove_if_present(self.ports.remove(&ifindex))?;
        remove_if_present(self.port_counters.remove(&ifindex))?;
        if let Some(slot) = self.port_slots.remove(&ifindex) {
            self.port_traffic.give_back(slot);
        }
        Ok(())
    }

    /// Removes link pins of ports that are not on the bridge any more.
    pub fn remove_stale_link_pins(&self, current: &[u32]) -> Result<()> {
        let dir = self.pin_dir.join("links");
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            let ifindex = name.to_string_lossy().split('-').next().and_then(|i| i.parse::<u32>().ok());
            if ifindex.is_none_or(|i| !current.contains(&i)) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Ifindexes that have an entry in the port map (from this or a previous run).
    pub fn port_entries(&self) -> Vec<u32> {
        self.ports.keys().filter_map(|k| k.ok()).collect()
    }

    pub fn set_port_flags(&mut self, ifindex: u32, flags: u32) -> Result<()> {
        let traffic_slot = match self.port_slots.get(&ifindex) {
            Some(slot) => *slot,
            None => {
                let slot = self.port_traffic.take()?;
                self.port_slots.insert(ifindex, slot);
                slot
            }
        };
        let value = PortValue {
            flags,
            control_rate_limit: self.control_rate_limit,
            window_start_ns: 0,
            window_frames: 0,
            traffic_slot,
            _pad: 0,
        };
        self.ports.insert(ifindex, value, 0).with_context(|| format!("writing port {ifindex} to the port map"))
    }

    pub fn set_member(&mut self, group: Ipv4Addr, port: u32, version: u8, expires_ns: u64) -> Result<()> {
        let traffic_slot = self.member_slot(group, port)?;
        let value = MemberValue { expires_ns, version, _pad: [0; 3], traffic_slot };
        self.members
            .insert(member_key(group, port), value, 0)
            .with_context(|| format!("adding {group} on port {port} (membership map full?)"))
    }

    pub fn remove_member(&mut self, group: Ipv4Addr, port: u32) -> Result<()> {
        if let Some(slot) = self.member_slots.remove(&(group, port)) {
            self.member_traffic.give_back(slot);
        }
        remove_if_present(self.members.remove(&member_key(group, port)))
    }

    /// The membership's traffic slot, taken on first use (by whichever of its
    /// member entry and its group's copy list is written first).
    fn member_slot(&mut self, group: Ipv4Addr, port: u32) -> Result<u32> {
        if let Some(slot) = self.member_slots.get(&(group, port)) {
            return Ok(*slot);
        }
        let slot = self.member_traffic.take()?;
        self.member_slots.insert((group, port), slot);
        Ok(slot)
    }

    /// The group's traffic slot, taken on first use.
    fn group_slot(&mut self, group: Ipv4Addr) -> Result<u32> {
        if let Some(slot) = self.group_slots.get(&group) {
            return Ok(*slot);
        }
        let slot = self.group_traffic.take()?;
        self.group_slots.insert(group, slot);
        Ok(slot)
    }

    pub fn register_group(&mut self, group: Ipv4Addr) -> Result<()> {
        let traffic_slot = self.group_slot(group)?;
        self.groups
            .insert(GroupKey::ipv4(group.octets(), VLAN_NONE), GroupValue { traffic_slot, _pad: 0 }, 0)
            .with_context(|| format!("registering {group} (group map full?)"))
    }

    pub fn unregister_group(&mut self, group: Ipv4Addr) -> Result<()> {
        if let Some(slot) = self.group_slots.remove(&group) {
            self.group_traffic.give_back(slot);
        }
        remove_if_present(self.groups.remove(&GroupKey::ipv4(group.octets(), VLAN_NONE)))
    }

    /// Where redirect mode copies `group`. No targets, or more than
    /// MAX_FANOUT, leave the group to the bridge path.
    pub fn set_group_ports(&mut self, group: Ipv4Addr, targets: &[CopyTarget]) -> Result<()> {
        let key = GroupKey::ipv4(group.octets(), VLAN_NONE);
        if targets.is_empty() || targets.len() > MAX_FANOUT {
            return remove_if_present(self.group_ports.remove(&key));
        }
        // Written before the group's registration: the slot may be new.
        let slot = self.group_slot(group)?;
        self.write_targets(key, Some(group), targets, slot).with_context(|| format!("writing the ports of {group}"))
    }

    /// Where redirect mode copies reports and leaves.
    pub fn set_report_targets(&mut self, targets: &[CopyTarget]) -> Result<()> {
        if targets.is_empty() || targets.len() > MAX_FANOUT {
            return remove_if_present(self.group_ports.remove(&REPORT_TARGETS));
        }
        self.write_targets(REPORT_TARGETS, None, targets, NO_SLOT).context("writing the report targets")
    }

    /// Sets the ports whose copies may go straight to their veth peer;
    /// returns whether that changed (every copy list then needs rewriting).
    pub fn set_peer_ports(&mut self, ports: BTreeSet<u32>) -> bool {
        let changed = ports != self.peer_ports;
        self.peer_ports = ports;
        changed
    }

    /// Writes one copy list; `targets` holds 1..=MAX_FANOUT entries. For a
    /// group, a port reachable through its veth peer goes last, so the data
    /// path can hand it the packet itself instead of one more clone.
    fn write_targets(
        &mut self,
        key: GroupKey,
        group: Option<Ipv4Addr>,
        targets: &[CopyTarget],
        traffic_slot: u32,
    ) -> Result<()> {
        let mut ordered = targets.to_vec();
        // Group traffic only: reports keep going through every port's transmit path.
        let peer = group.and_then(|group| {
            let index = ordered.iter().rposition(|t| t.port().is_some_and(|p| self.peer_ports.contains(&p)))?;
            Some((group, index))
        });
        let (mut last_member_slot, mut last_port_slot) = (NO_SLOT, NO_SLOT);
        if let Some((group, index)) = peer {
            let last = ordered.remove(index);
            match last {
                CopyTarget::Member(port) => last_member_slot = self.member_slot(group, port)?,
                CopyTarget::Router(port) => last_port_slot = self.port_slots.get(&port).copied().unwrap_or(NO_SLOT),
                CopyTarget::BridgeDevice(_) => {} // never chosen: it has no peer
            }
            ordered.push(last);
        }
        let mut value = GroupPorts {
            count: ordered.len() as u32,
            ingress_mask: 0,
            traffic_slot,
            bridge_ports: self.links.len() as u32,
            last_to_peer: u32::from(peer.is_some()),
            last_member_slot,
            last_port_slot,
            _pad: 0,
            ifindexes: [0; MAX_FANOUT],
        };
        for (i, target) in ordered.iter().enumerate() {
            value.ifindexes[i] = target.ifindex();
            if matches!(target, CopyTarget::BridgeDevice(_)) {
                value.ingress_mask |= 1 << i;
            }
        }
        Ok(self.group_ports.insert(key, value, 0)?)
    }

    /// Groups with redirect targets (from this or a previous run).
    pub fn redirected_groups(&self) -> Vec<Ipv4Addr> {
        self.group_ports.keys().filter_map(|k| k.ok()).filter_map(|k| k.ipv4_octets()).map(Ipv4Addr::from).collect()
    }

    /// Takes over the slots recorded in maps a previous snoop pinned.
    fn adopt_slots(&mut self) {
        for (group, port, value) in self.memberships() {
            if value.traffic_slot != NO_SLOT && self.member_traffic.claim(value.traffic_slot) {
                self.member_slots.insert((group, port), value.traffic_slot);
            }
        }
        let groups: Vec<(GroupKey, GroupValue)> = self.groups.iter().filter_map(|e| e.ok()).collect();
        for (key, value) in groups {
            if let Some(octets) = key.ipv4_octets() {
                if value.traffic_slot != NO_SLOT && self.group_traffic.claim(value.traffic_slot) {
                    self.group_slots.insert(Ipv4Addr::from(octets), value.traffic_slot);
                }
            }
        }
        let ports: Vec<(u32, PortValue)> = self.ports.iter().filter_map(|e| e.ok()).collect();
        for (ifindex, value) in ports {
            if value.traffic_slot != NO_SLOT && self.port_traffic.claim(value.traffic_slot) {
                self.port_slots.insert(ifindex, value.traffic_slot);
            }
        }
    }

    /// Every membership in the map, for resuming after a restart.
    pub fn memberships(&self) -> Vec<(Ipv4Addr, u32, MemberValue)> {
        self.members
            .iter()
            .filter_map(|entry| entry.ok())
            .filter_map(|(key, value)| Some((Ipv4Addr::from(key.group.ipv4_octets()?), key.ifindex, value)))
            .collect()
    }

    /// Groups registered in the map.
    pub fn registered_groups(&self) -> Vec<Ipv4Addr> {
        self.groups.keys().filter_map(|k| k.ok()).filter_map(|k| k.ipv4_octets()).map(Ipv4Addr::from).collect()
    }

    /// Data path counters summed over CPUs, indexed by `snoop_common::Counter`.
    pub fn counters(&self) -> Vec<u64> {
        (0..COUNTER_COUNT).map(|i| self.counters.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)).collect()
    }

    /// Traffic sent to each member port, summed over CPUs.
    pub fn member_traffic(&self) -> Vec<(Ipv4Addr, u32, TrafficCounters)> {
        self.member_slots.iter().map(|((group, port), slot)| (*group, *port, self.member_traffic.read(*slot))).collect()
    }

    /// Traffic of a group held back from ports without members.
    pub fn group_traffic(&self, group: Ipv4Addr) -> TrafficCounters {
        self.group_slots.get(&group).map(|slot| self.group_traffic.read(*slot)).unwrap_or_default()
    }

    /// Traffic a port was sent as a router port, and spared.
    pub fn port_traffic(&self, ifindex: u32) -> TrafficCounters {
        self.port_slots.get(&ifindex).map(|slot| self.port_traffic.read(*slot)).unwrap_or_default()
    }

    /// Control traffic per port, summed over CPUs.
    pub fn port_counters(&self, ifindex: u32) -> PortCounters {
        let Ok(per_cpu) = self.port_counters.get(&ifindex, 0) else {
            return PortCounters::default();
        };
        per_cpu.iter().fold(PortCounters::default(), |mut acc, c| {
            acc.queries += c.queries;
            acc.reports += c.reports;
            acc.leaves += c.leaves;
            acc.other_igmp += c.other_igmp;
            acc.pim_hellos += c.pim_hellos;
            acc
        })
    }

    /// Stops snooping. With `keep_state` the programs stay attached and the
    /// maps pinned, so forwarding continues until a new snoop adopts them.
    /// Without it every link, pin and the directory are removed.
    pub fn shutdown(mut self, keep_state: bool) -> Result<()> {
        if keep_state {
            return Ok(()); // dropping the handles leaves the pins in place
        }
        for (_, links) in std::mem::take(&mut self.links) {
            let _ = links.ingress.unpin();
            let _ = links.egress.unpin();
        }
        remove_pin_dir(&self.pin_dir)
    }

    fn link_pin(&self, ifindex: u32, direction: TcAttachType) -> PathBuf {
        let suffix = if direction == TcAttachType::Ingress { "ingress" } else { "egress" };
        self.pin_dir.join("links").join(format!("{ifindex}-{suffix}"))
    }
}

/// A per-CPU array of traffic counters and which of its slots are in use.
struct TrafficSlots {
    counters: PerCpuArray<MapData, TrafficCounters>,
    free: Vec<u32>,
    /// Slots below this have been handed out at some time.
    next: u32,
    capacity: u32,
    in_use: std::collections::HashSet<u32>,
}

impl TrafficSlots {
    fn new(counters: PerCpuArray<MapData, TrafficCounters>, capacity: u32) -> Self {
        Self { counters, free: Vec::new(), next: 0, capacity, in_use: Default::default() }
    }

    /// A zeroed slot, or NO_SLOT when all are taken (the traffic then goes uncounted).
    fn take(&mut self) -> Result<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return Ok(NO_SLOT),
        };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| e).context("counting CPUs")?;
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus])?;
        self.counters.set(slot, zeros, 0).context("zeroing a traffic slot")?;
        self.in_use.insert(slot);
        Ok(slot)
    }

    fn give_back(&mut self, slot: u32) {
        if self.in_use.remove(&slot) {
            self.free.push(slot);
        }
    }

    /// Marks a slot found in a pinned map as taken; false if it is not valid.
    fn claim(&mut self, slot: u32) -> bool {
        if slot >= self.capacity || !self.in_use.insert(slot) {
            return false;
        }
        while self.next <= slot {
            if self.next != slot {
                self.free.push(self.next);
            }
            self.next += 1;
        }
        self.free.retain(|s| *s != slot);
        true
    }

    fn read(&self, slot: u32) -> TrafficCounters {
        let Ok(per_cpu) = self.counters.get(&slot, 0) else { return TrafficCounters::default() };
        per_cpu.iter().fold(TrafficCounters::default(), |mut acc, c| {
            acc.forwarded_packets += c.forwarded_packets;
            acc.forwarded_bytes += c.forwarded_bytes;
            acc.pruned_packets += c.pruned_packets;
            acc.pruned_bytes += c.pruned_bytes;
            acc
        })
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `RESTORE_*` flags in a pin directory's config map (0 without one).
pub fn pinned_restore_flags(pin_dir: &Path) -> Result<u32> {
    let path = pin_dir.join(MAP_CONFIG);
    if !path.exists() {
        return Ok(0);
    }
    let map = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let config: Array<MapData, DatapathConfig> = Array::try_from(aya::maps::Map::Array(map))?;
    Ok(config.get(&0, 0).map_or(0, |c| c.restore))
}

/// Removes a pin directory (maps and link pins), and its parents up to
/// /sys/fs/bpf if that leaves them empty.
pub fn remove_pin_dir(pin_dir: &Path) -> Result<()> {
    match fs::remove_dir_all(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", pin_dir.display())),
    }
    for parent in pin_dir.ancestors().skip(1).take_while(|p| p.starts_with(BPF_FS) && *p != Path::new(BPF_FS)) {
        if fs::remove_dir(parent).is_err() {
            break; // not empty: another bridge's state lives there
        }
    }
    Ok(())
}

/// The default pin directory: one per (network namespace, bridge), so bridges
/// of the same name in different namespaces never share state.
pub fn default_pin_dir(netns: &str, bridge: &str) -> PathBuf {
    Path::new(BPF_FS).join("snoop").join(netns).join(bridge)
}

fn member_key(group: Ipv4Addr, port: u32) -> PortGroupKey {
    PortGroupKey { group: GroupKey::ipv4(group.octets(), VLAN_NONE), ifindex: port }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name)
        .with_context(|| format!("program {name} missing from the eBPF object"))?
        .try_into()
        .with_context(|| format!("program {name} is not a TC classifier"))
}

/// Pinned maps left by a snoop with another map layout would be adopted as
/// they are and fail verification. The memberships are the state a restart
/// keeps: those are never dropped silently, that is a clear error. Every
/// other map is rewritten by the controller at start (or holds counters), so
/// it is unpinned and made anew; the old programs keep theirs until replaced.
fn drop_pins_of_another_layout(pin_dir: &Path) -> Result<()> {
    for spec in MAPS {
        let (name, key, value, entries) = (spec.name, spec.key_size, spec.value_size, spec.max_entries);
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).with_context(|| format!("reading {}", path.display()))?;
        let pinned = (info.key_size(), info.value_size(), info.max_entries());
        if pinned == (key, value, entries) {
            continue;
        }
        if name == MAP_MEMBERS || name == MAP_GROUPS {
            bail!(
                "the memberships kept in {} are from a snoop with another map layout ({name}: key {} B, value {} B, \
                 {} entries; this snoop: {key} B, {value} B, {entries}). Remove them with `snoop cleanup --bridge \
                 BRIDGE` (hosts report their groups again at the next query) and start snoop again",
                pin_dir.display(),
                pinned.0,
                pinned.1,
                pinned.2
            );
        }
        log::info!("{name}: pinned by a snoop with another map layout; made anew");
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).with_context(|| format!("map {name} missing from the eBPF object"))?;
    T::try_from(map).with_context(|| format!("map {name} has an unexpected type"))
}

fn remove_if_present(result: Result<(), aya::maps::MapError>) -> Result<()> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (as systemd does).
fn ensure_bpffs() -> Result<()> {
    let path = std::ffi::CString::new(BPF_FS).expect("no NUL");
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPF_FS).with_context(|| format!("creating {BPF_FS}"))?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .context("mounting bpffs at /sys/fs/bpf (is this kernel built with BPF syscall support?)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The built eBPF object declares exactly the maps snoop-common defines:
    /// a drift between the two sides fails here, without root or a kernel.
    #[test]
    fn built_object_matches_snoop_common() {
        let object = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let mut declared: Vec<&str> = object.maps.keys().map(String::as_str).collect();
        declared.sort_unstable();
        let mut defined: Vec<&str> = MAPS.iter().map(|spec| spec.name).collect();
        defined.sort_unstable();
        assert_eq!(declared, defined, "map names");
        for spec in MAPS {
            let map = &object.maps[spec.name];
            let declared = (map.map_type(), map.key_size(), map.value_size(), map.max_entries());
            let defined = (spec.kind as u32, spec.key_size, spec.value_size, spec.max_entries);
            assert_eq!(declared, defined, "{}: (type, key, value, entries)", spec.name);
        }
        for program in [PROG_INGRESS, PROG_EGRESS] {
            assert!(object.programs.contains_key(program), "program {program} missing");
        }
    }
}
