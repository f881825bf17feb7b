//! The eBPF side as userspace drives it: load, attach to ports, write the
//! membership maps, read counters. All kernel objects live under one bpffs
//! directory per bridge, so a restarted snoop adopts them without a gap in
//! forwarding, and a clean exit removes every one of them.
//!
//! - [`pins`]: the pin directory, and pinned state of another layout;
//! - [`slots`]: traffic counter slots;
//! - [`Error`]: what callers decide on.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap as StdHashMap},
    fs,
    path::{Path, PathBuf},
};

mod attach;
mod error;
mod pins;
mod slots;
mod tc;

use attach::Attachments;
pub use attach::{AttachMode, OtherFilters, MIN_KERNEL};
pub use error::{Error, Result};
pub use pins::{default_pin_dir, pinned_restore_flags, remove_pin_dir};
use slots::TrafficSlots;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::SchedClassifier,
    Ebpf, EbpfLoader,
};
use snoop_common::{
    DatapathConfig, GroupKey, GroupPorts, GroupValue, MapSizes, MemberValue, PortCounters, PortGroupKey, PortValue,
    SenderSlot, SourceAddr, SourceGroupKey, SourceKey, TrafficCounters, VlanFlags, VlanPortKey, COUNTER_COUNT,
    MAP_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_GROUPS, MAP_GROUP_PORTS, MAP_GROUP_TRAFFIC, MAP_MEMBERS,
    MAP_MEMBER_TRAFFIC, MAP_PORTS, MAP_PORT_COUNTERS, MAP_PORT_TRAFFIC, MAP_SENDERS, MAP_SOURCES,
    MAP_SOURCE_GROUP_PORTS, MAP_VLANS, MAP_VLAN_PORTS, MAX_FANOUT, MAX_PORTS, MAX_TRAFFIC_SLOTS,
    MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, MEMBER_STATE_FLAGS, NO_SLOT, PROG_EGRESS, PROG_INGRESS,
    SENDER_SLOTS, SOURCE_LISTED, UNTAGGED_LAST, UNTAGGED_LOCAL, VLAN_NONE,
};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snoop.bpf.o"));

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

/// How redirect copies leave in one VLAN of a VLAN-aware bridge.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VlanEgress {
    /// The ports (and the bridge device) in the VLAN, each with whether
    /// the VLAN's frames leave it tagged.
    pub tagged: BTreeMap<u32, bool>,
    /// How many of the bridge's ports are in the VLAN: a copy spares the
    /// others nothing.
    pub ports: u32,
    /// Some port leaves the VLAN untagged, but its egress program untags
    /// another VLAN (a port has one untagged VLAN in the data path): the
    /// VLAN's traffic takes the bridge path.
    pub bridge_path: bool,
}

impl VlanEgress {
    fn tags(&self, target: &CopyTarget) -> bool {
        self.tagged.get(&target.ifindex()).copied().unwrap_or(false)
    }
}

pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    members: HashMap<MapData, PortGroupKey, MemberValue>,
    groups: HashMap<MapData, GroupKey, GroupValue>,
    group_ports: HashMap<MapData, GroupKey, GroupPorts>,
    sources: HashMap<MapData, SourceKey, u32>,
    source_group_ports: HashMap<MapData, SourceGroupKey, GroupPorts>,
    ports: HashMap<MapData, u32, PortValue>,
    vlan_ports: HashMap<MapData, VlanPortKey, u32>,
    vlans: HashMap<MapData, u16, VlanFlags>,
    config: Array<MapData, DatapathConfig>,
    counters: PerCpuArray<MapData, u64>,
    member_traffic: TrafficSlots,
    group_traffic: TrafficSlots,
    port_traffic: TrafficSlots,
    /// Slots handed out, so refreshes keep theirs and removals free them.
    member_slots: StdHashMap<PortGroupKey, u32>,
    group_slots: StdHashMap<GroupKey, u32>,
    port_slots: StdHashMap<u32, u32>,
    /// Each port's VLANs as its map entry holds them: (PVID, untagged VLAN).
    port_vlans: StdHashMap<u32, (u16, u16)>,
    /// Source filters written: each source-specific membership's
    /// `MEMBER_SOURCES_*` flag and listed sources.
    member_sources: StdHashMap<PortGroupKey, (u8, BTreeSet<SourceAddr>)>,
    /// Sources with their own copy list, by group.
    source_lists: StdHashMap<GroupKey, BTreeSet<SourceAddr>>,
    port_counters: PerCpuHashMap<MapData, u32, PortCounters>,
    senders: PerCpuArray<MapData, SenderSlot>,
    events: Option<RingBuf<MapData>>,
    attachments: Attachments,
    /// The kernel's ids of the loaded ingress and egress programs: how
    /// TCX lists them among other programs on a hook.
    program_ids: [u32; 2],
    /// Ports whose copies can go straight to their veth peer (see GroupPorts::last_to_peer).
    peer_ports: BTreeSet<u32>,
    /// Last config written; heartbeats rewrite it with a new time.
    config_value: DatapathConfig,
    control_rate_limit: u32,
}

impl Datapath {
    /// Loads the programs for the bridge `bridge_ifindex`, adopting the maps
    /// pinned in `pin_dir` if a previous snoop left them there. `resumed`
    /// tells which happened.
    pub fn load(pin_dir: &Path, bridge_ifindex: u32, sizes: MapSizes) -> Result<(Self, bool)> {
        let (mode, why) = AttachMode::for_this_kernel()?;
        log::info!("{why}");
        pins::ensure_bpffs()?;
        pins::drop_pins_of_another_layout(pin_dir, sizes)?;
        let resumed = pin_dir.join(MAP_MEMBERS).exists();
        let attachments = Attachments::new(mode, pin_dir.to_owned(), bridge_ifindex)?;
        let loaded = Self::load_pinned(pin_dir, resumed, attachments, sizes);
        if loaded.is_err() && !resumed {
            // Maps this failed attempt pinned must not look like state to resume.
            let _ = remove_pin_dir(pin_dir);
        }
        Ok((loaded?, resumed))
    }

    fn load_pinned(pin_dir: &Path, resumed: bool, attachments: Attachments, sizes: MapSizes) -> Result<Self> {
        let links = pin_dir.join("links");
        fs::create_dir_all(&links).map_err(|source| Error::Pins { what: "creating", path: links, source })?;
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(pin_dir)
            .map_max_entries(MAP_MEMBERS, sizes.memberships)
            .map_max_entries(MAP_GROUPS, sizes.groups)
            .map_max_entries(MAP_GROUP_PORTS, sizes.groups)
            .load(EBPF_OBJECT)
            .map_err(|source| Error::Load { pin_dir: pin_dir.to_owned(), source: Box::new(source) })?;
        for name in [PROG_INGRESS, PROG_EGRESS] {
            program(&mut ebpf, name)?.load().map_err(|source| verifier_error(name, source))?;
        }
        let mut program_ids = [0; 2];
        for (id, name) in program_ids.iter_mut().zip([PROG_INGRESS, PROG_EGRESS]) {
            let info = program(&mut ebpf, name)?.info().map_err(|source| Error::Program {
                what: "reading the id of",
                program: name,
                source,
            })?;
            *id = info.id();
            if let Some(verified) = info.verified_instruction_count() {
                log::debug!("{name}: the verifier processed {verified} instructions (its limit: 1,000,000)");
            }
        }
        let datapath = Self {
            members: take_map(&mut ebpf, MAP_MEMBERS)?,
            groups: take_map(&mut ebpf, MAP_GROUPS)?,
            group_ports: take_map(&mut ebpf, MAP_GROUP_PORTS)?,
            sources: take_map(&mut ebpf, MAP_SOURCES)?,
            source_group_ports: take_map(&mut ebpf, MAP_SOURCE_GROUP_PORTS)?,
            ports: take_map(&mut ebpf, MAP_PORTS)?,
            vlan_ports: take_map(&mut ebpf, MAP_VLAN_PORTS)?,
            vlans: take_map(&mut ebpf, MAP_VLANS)?,
            config: take_map(&mut ebpf, MAP_CONFIG)?,
            counters: take_map(&mut ebpf, MAP_COUNTERS)?,
            member_traffic: TrafficSlots::new(
                MAP_MEMBER_TRAFFIC,
                take_map(&mut ebpf, MAP_MEMBER_TRAFFIC)?,
                MAX_TRAFFIC_SLOTS,
            ),
            group_traffic: TrafficSlots::new(
                MAP_GROUP_TRAFFIC,
                take_map(&mut ebpf, MAP_GROUP_TRAFFIC)?,
                MAX_TRAFFIC_SLOTS,
            ),
            port_traffic: TrafficSlots::new(MAP_PORT_TRAFFIC, take_map(&mut ebpf, MAP_PORT_TRAFFIC)?, MAX_PORTS),
            member_slots: StdHashMap::new(),
            group_slots: StdHashMap::new(),
            port_slots: StdHashMap::new(),
            port_vlans: StdHashMap::new(),
            member_sources: StdHashMap::new(),
            source_lists: StdHashMap::new(),
            port_counters: take_map(&mut ebpf, MAP_PORT_COUNTERS)?,
            senders: take_map(&mut ebpf, MAP_SENDERS)?,
            events: Some(take_map(&mut ebpf, MAP_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_owned(),
            attachments,
            program_ids,
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

    /// Runs `program` (PROG_INGRESS or PROG_EGRESS) on `frame` as if it were
    /// on interface `ifindex` (BPF_PROG_TEST_RUN), `repeat` times: its verdict
    /// and the kernel's average time per run. For the verdict tests and the
    /// benchmark; the frame is really forwarded where the program redirects it.
    pub fn test_run(
        &mut self,
        program_name: &'static str,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
    ) -> Result<(i32, std::time::Duration)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        // struct __sk_buff, with ifindex (offset 40) naming the device the
        // kernel gives the test skb.
        let mut skb = [0u8; 192];
        skb[40..44].copy_from_slice(&ifindex.to_ne_bytes());
        let options = TestRunOptions { data_in: Some(frame), ctx_in: Some(&skb), repeat, ..Default::default() };
        let result = program(&mut self.ebpf, program_name)?.test_run(options).map_err(|source| Error::Program {
            what: "test-running",
            program: program_name,
            source,
        })?;
        Ok((result.return_value as i32, result.duration))
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
        self.write_config()
    }

    fn write_config(&mut self) -> Result<()> {
        self.config.set(0, self.config_value, 0).map_err(|e| Error::map("writing", MAP_CONFIG, e))
    }

    /// Bridge settings to put back at a clean exit (`RESTORE_*`), kept in
    /// the pinned config so keep-state restarts remember them.
    pub fn restore_flags(&self) -> u32 {
        self.config_value.restore
    }

    pub fn add_restore_flags(&mut self, flags: u32) -> Result<()> {
        self.config_value.restore |= flags;
        self.write_config()
    }

    /// Tells the data path the controller is alive.
    pub fn heartbeat(&mut self) -> Result<()> {
        self.config_value.heartbeat_ns = monotonic_now_ns();
        self.write_config()
    }

    /// Attaches both programs to a port (adopting what a previous snoop left
    /// there, atomically) and writes its port map entry. [`Error::PortGone`]
    /// when the port vanished meanwhile.
    pub fn attach_port(&mut self, ifindex: u32, flags: u32) -> Result<()> {
        if !self.attachments.contains(ifindex) {
            let (ingress, egress) = programs(&mut self.ebpf)?;
            self.attachments.attach(ingress, egress, ifindex)?;
        }
        self.set_port_flags(ifindex, flags)
    }

    /// Whether snoop's programs are on the port.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attachments.contains(ifindex)
    }

    /// How the programs are attached on this kernel.
    pub fn attach_mode(&self) -> AttachMode {
        self.attachments.mode()
    }

    /// Detaches from a port and forgets it in the port map.
    pub fn detach_port(&mut self, ifindex: u32) -> Result<()> {
        self.attachments.detach(ifindex);
        remove_if_present(MAP_PORTS, self.ports.remove(&ifindex))?;
        remove_if_present(MAP_PORT_COUNTERS, self.port_counters.remove(&ifindex))?;
        self.port_vlans.remove(&ifindex);
        if let Some(slot) = self.port_slots.remove(&ifindex) {
            self.port_traffic.give_back(slot);
        }
        Ok(())
    }

    /// What else runs on an attached port's tc hooks (see [`OtherFilters`]).
    pub fn other_filters(&mut self, ifindex: u32) -> std::io::Result<OtherFilters> {
        self.attachments.others(ifindex, self.program_ids)
    }

    /// Removes what a previous snoop attached to interfaces that are not
    /// ports any more.
    pub fn remove_stale_attachments(&mut self, current: &[u32]) -> Result<()> {
        self.attachments.remove_stale(current)
    }

    /// Ifindexes that have an entry in the port map (from this or a previous run).
    pub fn port_entries(&self) -> Vec<u32> {
        self.ports.keys().filter_map(|k| k.ok()).collect()
    }

    /// Ports whose entry has the `router` flag of a family (read before they
    /// are rewritten, to resume learned router ports).
    pub fn router_port_entries(&self, router: u32) -> Vec<u32> {
        self.ports.iter().filter_map(|e| e.ok()).filter(|(_, v)| v.flags & router != 0).map(|(k, _)| k).collect()
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
        let (pvid, untagged_vlan) = self.port_vlans.get(&ifindex).copied().unwrap_or((VLAN_NONE, VLAN_NONE));
        let value = PortValue {
            flags,
            control_rate_limit: self.control_rate_limit,
            window_start_ns: 0,
            window_frames: 0,
            traffic_slot,
            pvid,
            untagged_vlan,
        };
        self.ports.insert(ifindex, value, 0).map_err(|e| Error::map("writing", MAP_PORTS, e))
    }

    /// A port's VLANs on a VLAN-aware bridge (see [`PortValue::pvid`]),
    /// written into its entry with the flags it has.
    pub fn set_port_vlans(&mut self, ifindex: u32, pvid: u16, untagged_vlan: u16) -> Result<()> {
        if self.port_vlans.insert(ifindex, (pvid, untagged_vlan)) == Some((pvid, untagged_vlan)) {
            return Ok(());
        }
        match self.ports.get(&ifindex, 0) {
            Ok(value) => self.set_port_flags(ifindex, value.flags),
            Err(_) => Ok(()), // not attached yet: its first write carries them
        }
    }

    /// A port's router and report flags in one VLAN ([`snoop_common::PORT_VLAN_FLAGS`]
    /// bits); 0 removes its entry.
    pub fn set_vlan_port_flags(&mut self, key: VlanPortKey, flags: u32) -> Result<()> {
        if flags == 0 {
            return remove_if_present(MAP_VLAN_PORTS, self.vlan_ports.remove(&key));
        }
        self.vlan_ports.insert(key, flags, 0).map_err(|e| Error::map("writing", MAP_VLAN_PORTS, e))
    }

    /// Every port's per-VLAN flags (from this or a previous run).
    pub fn vlan_port_entries(&self) -> Vec<(VlanPortKey, u32)> {
        self.vlan_ports.iter().filter_map(|e| e.ok()).collect()
    }

    /// A VLAN's entry ([`VlanFlags`]), or none: the VLAN is not followed.
    pub fn set_vlan_flags(&mut self, vlan: u16, flags: Option<VlanFlags>) -> Result<()> {
        match flags {
            Some(flags) => self.vlans.insert(vlan, flags, 0).map_err(|e| Error::map("writing", MAP_VLANS, e)),
            None => remove_if_present(MAP_VLANS, self.vlans.remove(&vlan)),
        }
    }

    /// Every VLAN's entry (from this or a previous run).
    pub fn vlan_entries(&self) -> Vec<(u16, VlanFlags)> {
        self.vlans.iter().filter_map(|e| e.ok()).collect()
    }

    /// Writes a membership; `state_flags` are its `MEMBER_LEAVING` and
    /// `MEMBER_STATIC` (the source flags come from [`Datapath::set_member_sources`]).
    pub fn set_member(&mut self, member: PortGroupKey, version: u8, expires_ns: u64, state_flags: u8) -> Result<()> {
        let traffic_slot = self.member_slot(member)?;
        let source_flags = self.member_sources.get(&member).map_or(0, |(flags, _)| *flags);
        let flags = state_flags & MEMBER_STATE_FLAGS | source_flags;
        let value = MemberValue { expires_ns, version, flags, _pad: [0; 2], traffic_slot };
        self.members.insert(member, value, 0).map_err(|e| Error::map("writing", MAP_MEMBERS, e))
    }

    pub fn remove_member(&mut self, member: PortGroupKey) -> Result<()> {
        if let Some(slot) = self.member_slots.remove(&member) {
            self.member_traffic.give_back(slot);
        }
        let removed = remove_if_present(MAP_MEMBERS, self.members.remove(&member));
        if let Some((_, listed)) = self.member_sources.remove(&member) {
            for source in listed {
                let _ = self.sources.remove(&SourceKey { member, source });
            }
        }
        removed
    }

    /// Which sources a membership gets: only `listed` (`include`), or all
    /// but `listed`; not `include` with nothing listed is any source. The
    /// membership entry itself (if written yet) is updated in place; a new
    /// one gets the filter from [`Datapath::set_member`]. Sources a full map
    /// cannot hold leave the membership with any source: over-forwarding,
    /// never a blackhole.
    pub fn set_member_sources(
        &mut self,
        member: PortGroupKey,
        include: bool,
        listed: BTreeSet<SourceAddr>,
    ) -> Result<()> {
        let flags = match (include, listed.is_empty()) {
            (true, _) => MEMBER_SOURCES_INCLUDE,
            (false, true) => 0,
            (false, false) => MEMBER_SOURCES_EXCLUDE,
        };
        let old = self.member_sources.remove(&member).unwrap_or_default();
        // New entries first, then the flag, then stale entries: each step
        // errs towards forwarding.
        let mut written = Ok(());
        for source in listed.difference(&old.1) {
            written = self.sources.insert(SourceKey { member, source: *source }, SOURCE_LISTED, 0);
            if written.is_err() {
                break;
            }
        }
        let keep = if written.is_ok() { listed.clone() } else { BTreeSet::new() };
        let flags = if written.is_ok() { flags } else { 0 };
        if let Ok(mut value) = self.members.get(&member, 0) {
            value.flags = value.flags & MEMBER_STATE_FLAGS | flags;
            self.members.insert(member, value, 0).map_err(|e| Error::map("writing", MAP_MEMBERS, e))?;
        }
        for source in old.1.union(&listed).filter(|s| !keep.contains(*s)) {
            let _ = self.sources.remove(&SourceKey { member, source: *source });
        }
        if flags != 0 {
            self.member_sources.insert(member, (flags, keep));
        }
        written.map_err(|e| Error::map("writing", MAP_SOURCES, e))
    }

    /// A membership's source filter as the maps hold it (after a restart):
    /// its `MEMBER_SOURCES_*` flag and listed sources.
    pub fn member_sources(&self, member: &PortGroupKey) -> Option<&(u8, BTreeSet<SourceAddr>)> {
        self.member_sources.get(member)
    }

    /// The membership's traffic slot, taken on first use (by whichever of its
    /// member entry and its group's copy list is written first).
    fn member_slot(&mut self, member: PortGroupKey) -> Result<u32> {
        if let Some(slot) = self.member_slots.get(&member) {
            return Ok(*slot);
        }
        let slot = self.member_traffic.take()?;
        self.member_slots.insert(member, slot);
        Ok(slot)
    }

    /// The group's traffic slot, taken on first use.
    fn group_slot(&mut self, group: GroupKey) -> Result<u32> {
        if let Some(slot) = self.group_slots.get(&group) {
            return Ok(*slot);
        }
        let slot = self.group_traffic.take()?;
        self.group_slots.insert(group, slot);
        Ok(slot)
    }

    pub fn register_group(&mut self, group: GroupKey) -> Result<()> {
        let traffic_slot = self.group_slot(group)?;
        self.groups
            .insert(group, GroupValue { traffic_slot, _pad: 0 }, 0)
            .map_err(|e| Error::map("writing", MAP_GROUPS, e))
    }

    pub fn unregister_group(&mut self, group: GroupKey) -> Result<()> {
        if let Some(slot) = self.group_slots.remove(&group) {
            self.group_traffic.give_back(slot);
        }
        remove_if_present(MAP_GROUPS, self.groups.remove(&group))
    }

    /// Where redirect mode copies `group`: `targets`, but for the sources
    /// in `by_source`, which have lists of their own; tagged as `vlan` says
    /// on a VLAN-aware bridge. No targets at all, or a list longer than
    /// MAX_FANOUT, leave the group to the bridge path.
    pub fn set_group_ports(
        &mut self,
        group: GroupKey,
        targets: &[CopyTarget],
        by_source: &[(SourceAddr, Vec<CopyTarget>)],
        vlan: Option<&VlanEgress>,
    ) -> Result<()> {
        let too_long = targets.len() > MAX_FANOUT
            || by_source.iter().any(|(_, t)| t.len() > MAX_FANOUT)
            || vlan.is_some_and(|v| v.bridge_path);
        let listed: BTreeSet<SourceAddr> =
            if too_long { BTreeSet::new() } else { by_source.iter().map(|(source, _)| *source).collect() };
        let result = if too_long || targets.is_empty() && listed.is_empty() {
            remove_if_present(MAP_GROUP_PORTS, self.group_ports.remove(&group))
        } else {
            // Written before the group's registration: the slot may be new.
            let slot = self.group_slot(group)?;
            let mut written = Ok(());
            for (source, targets) in by_source {
                let value = self.targets_value(group, true, targets, slot, vlan)?;
                written = self.source_group_ports.insert(SourceGroupKey { group, source: *source }, value, 0);
                if written.is_err() {
                    break;
                }
            }
            match written {
                Ok(()) => {
                    let mut value = self.targets_value(group, true, targets, slot, vlan)?;
                    value.by_source = u32::from(!listed.is_empty());
                    self.group_ports.insert(group, value, 0).map_err(|e| Error::map("writing", MAP_GROUP_PORTS, e))
                }
                // A source's list does not fit: the whole group takes the bridge path.
                Err(e) => {
                    let _ = self.group_ports.remove(&group);
                    Err(Error::map("writing", MAP_SOURCE_GROUP_PORTS, e))
                }
            }
        };
        let stale = self.source_lists.remove(&group).unwrap_or_default();
        for source in stale.difference(&listed) {
            let _ = self.source_group_ports.remove(&SourceGroupKey { group, source: *source });
        }
        if !listed.is_empty() {
            self.source_lists.insert(group, listed);
        }
        result
    }

    /// Where redirect mode copies one family's reports and leaves (`key`:
    /// its [`snoop_common::FamilyFlags::report_targets`], in a VLAN on a
    /// VLAN-aware bridge).
    pub fn set_report_targets(
        &mut self,
        key: GroupKey,
        targets: &[CopyTarget],
        vlan: Option<&VlanEgress>,
    ) -> Result<()> {
        if targets.is_empty() || targets.len() > MAX_FANOUT || vlan.is_some_and(|v| v.bridge_path) {
            return remove_if_present(MAP_GROUP_PORTS, self.group_ports.remove(&key));
        }
        let value = self.targets_value(key, false, targets, NO_SLOT, vlan)?;
        self.group_ports.insert(key, value, 0).map_err(|e| Error::map("writing", MAP_GROUP_PORTS, e))
    }

    /// Sets the ports whose copies may go straight to their veth peer;
    /// returns whether that changed (every copy list then needs rewriting).
    pub fn set_peer_ports(&mut self, ports: BTreeSet<u32>) -> bool {
        let changed = ports != self.peer_ports;
        self.peer_ports = ports;
        changed
    }

    /// One copy list; `targets` holds at most MAX_FANOUT entries. For a
    /// group, a port reachable through its veth peer goes last, so the data
    /// path can hand it the packet itself instead of one more clone. In a
    /// VLAN (`vlan`), the copies no egress program untags are marked.
    fn targets_value(
        &mut self,
        key: GroupKey,
        is_group: bool,
        targets: &[CopyTarget],
        traffic_slot: u32,
        vlan: Option<&VlanEgress>,
    ) -> Result<GroupPorts> {
        let untagged = |target: &CopyTarget| vlan.is_some_and(|v| !v.tags(target));
        let local = targets.iter().find(|t| matches!(t, CopyTarget::BridgeDevice(_)));
        let mut ordered: Vec<CopyTarget> = targets.iter().filter(|t| t.port().is_some()).copied().collect();
        // Group traffic only: reports keep going through every port's transmit path.
        let peer = is_group
            .then(|| ordered.iter().rposition(|t| t.port().is_some_and(|p| self.peer_ports.contains(&p))))
            .flatten();
        let (mut last_member_slot, mut last_port_slot) = (NO_SLOT, NO_SLOT);
        let mut tags = 0;
        if let Some(index) = peer {
            let last = ordered.remove(index);
            match last {
                CopyTarget::Member(port) => {
                    last_member_slot = self.member_slot(PortGroupKey { group: key, ifindex: port })?
                }
                CopyTarget::Router(port) => last_port_slot = self.port_slots.get(&port).copied().unwrap_or(NO_SLOT),
                CopyTarget::BridgeDevice(_) => {} // never chosen: it has no peer
            }
            if untagged(&last) {
                tags |= UNTAGGED_LAST;
            }
            ordered.push(last);
        }
        if local.is_some_and(untagged) {
            tags |= UNTAGGED_LOCAL;
        }
        let mut value = GroupPorts {
            count: ordered.len() as u32,
            local: local.map_or(0, |t| t.ifindex()),
            traffic_slot,
            bridge_ports: vlan.map_or(self.attachments.len() as u32, |v| v.ports),
            last_to_peer: u32::from(peer.is_some()),
            last_member_slot,
            last_port_slot,
            by_source: 0,
            untagged: tags,
            ifindexes: [0; MAX_FANOUT],
        };
        for (i, target) in ordered.iter().enumerate() {
            value.ifindexes[i] = target.ifindex();
        }
        Ok(value)
    }

    /// The verifier's work on one of the programs (see [`verified_instructions`]).
    pub fn verified_instructions(&mut self, program: &'static str) -> Option<u32> {
        verified_instructions(&mut self.ebpf, program)
    }

    /// Report-target lists (from this or a previous run), one per VLAN on a
    /// VLAN-aware bridge.
    pub fn report_target_keys(&self) -> Vec<GroupKey> {
        self.group_ports.keys().filter_map(|k| k.ok()).filter(|k| k.family == 0).collect()
    }

    /// Groups with redirect targets (from this or a previous run).
    pub fn redirected_groups(&self) -> Vec<GroupKey> {
        self.group_ports.keys().filter_map(|k| k.ok()).filter(|k| k.family != 0).collect()
    }

    /// Takes over the slots recorded in maps a previous snoop pinned.
    fn adopt_slots(&mut self) {
        for (member, value) in self.memberships() {
            if value.traffic_slot != NO_SLOT && self.member_traffic.claim(value.traffic_slot) {
                self.member_slots.insert(member, value.traffic_slot);
            }
        }
        let groups: Vec<(GroupKey, GroupValue)> = self.groups.iter().filter_map(|e| e.ok()).collect();
        for (key, value) in groups {
            if value.traffic_slot != NO_SLOT && self.group_traffic.claim(value.traffic_slot) {
                self.group_slots.insert(key, value.traffic_slot);
            }
        }
        let flags: StdHashMap<PortGroupKey, u8> = self
            .memberships()
            .into_iter()
            .map(|(member, value)| (member, value.flags & (MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE)))
            .collect();
        for key in self.sources.keys().filter_map(|k| k.ok()).collect::<Vec<_>>() {
            match flags.get(&key.member).filter(|f| **f != 0) {
                Some(flags) => {
                    let entry = self.member_sources.entry(key.member).or_insert((*flags, BTreeSet::new()));
                    entry.1.insert(key.source);
                }
                None => drop(self.sources.remove(&key)),
            }
        }
        for (member, flags) in flags.into_iter().filter(|(_, f)| *f == MEMBER_SOURCES_INCLUDE) {
            self.member_sources.entry(member).or_insert((flags, BTreeSet::new()));
        }
        for key in self.source_group_ports.keys().filter_map(|k| k.ok()).collect::<Vec<_>>() {
            self.source_lists.entry(key.group).or_default().insert(key.source);
        }
        let ports: Vec<(u32, PortValue)> = self.ports.iter().filter_map(|e| e.ok()).collect();
        for (ifindex, value) in ports {
            if value.traffic_slot != NO_SLOT && self.port_traffic.claim(value.traffic_slot) {
                self.port_slots.insert(ifindex, value.traffic_slot);
            }
        }
    }

    /// Every membership in the map, for resuming after a restart.
    pub fn memberships(&self) -> Vec<(PortGroupKey, MemberValue)> {
        self.members.iter().filter_map(|entry| entry.ok()).collect()
    }

    /// Groups registered in the map.
    pub fn registered_groups(&self) -> Vec<GroupKey> {
        self.groups.keys().filter_map(|k| k.ok()).collect()
    }

    /// Data path counters summed over CPUs, indexed by `snoop_common::Counter`.
    pub fn counters(&self) -> Vec<u64> {
        (0..COUNTER_COUNT).map(|i| self.counters.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)).collect()
    }

    /// Traffic sent to each member port, summed over CPUs.
    pub fn member_traffic(&self) -> Vec<(PortGroupKey, TrafficCounters)> {
        self.member_slots.iter().map(|(member, slot)| (*member, self.member_traffic.read(*slot))).collect()
    }

    /// Traffic of a group held back from ports without members.
    pub fn group_traffic(&self, group: GroupKey) -> TrafficCounters {
        self.group_slots.get(&group).map(|slot| self.group_traffic.read(*slot)).unwrap_or_default()
    }

    /// Traffic a port was sent as a router port, and spared.
    pub fn port_traffic(&self, ifindex: u32) -> TrafficCounters {
        self.port_slots.get(&ifindex).map(|slot| self.port_traffic.read(*slot)).unwrap_or_default()
    }

    /// Senders whose frames the fast path consumed since `since_ns`
    /// (CLOCK_MONOTONIC): their MAC, the port they sent from and their VLAN.
    pub fn recent_senders(&self, since_ns: u64) -> Vec<([u8; 6], u32, u16)> {
        let mut senders = Vec::new();
        for slot in 0..SENDER_SLOTS {
            let Ok(per_cpu) = self.senders.get(&slot, 0) else { continue };
            for sender in per_cpu.iter().filter(|s| s.ifindex != 0 && s.seen_ns >= since_ns) {
                let sender = (sender.mac, sender.ifindex, sender.vlan);
                if !senders.contains(&sender) {
                    senders.push(sender);
                }
            }
        }
        senders
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
    pub fn shutdown(self, keep_state: bool) -> Result<()> {
        self.attachments.release(keep_state);
        if keep_state {
            return Ok(()); // dropping the handles leaves the pins in place
        }
        remove_pin_dir(&self.pin_dir)
    }
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// How many instructions the verifier processed loading `name` (Linux 5.16+):
/// its limit is 1M, and older kernels prune less, so this is the headroom.
fn verified_instructions(ebpf: &mut Ebpf, name: &'static str) -> Option<u32> {
    program(ebpf, name).ok()?.info().ok()?.verified_instruction_count()
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier> {
    ebpf.program_mut(name).and_then(|p| p.try_into().ok()).ok_or(Error::Object(name))
}

/// Both programs at once.
fn programs(ebpf: &mut Ebpf) -> Result<(&mut SchedClassifier, &mut SchedClassifier)> {
    let (mut ingress, mut egress) = (None, None);
    for (name, program) in ebpf.programs_mut() {
        match name {
            PROG_INGRESS => ingress = program.try_into().ok(),
            PROG_EGRESS => egress = program.try_into().ok(),
            _ => {}
        }
    }
    Ok((ingress.ok_or(Error::Object(PROG_INGRESS))?, egress.ok_or(Error::Object(PROG_EGRESS))?))
}

/// A load failure; a verifier's refusal in a few lines (the log is at debug level).
fn verifier_error(program: &'static str, source: aya::programs::ProgramError) -> Error {
    match source {
        aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
            let log = verifier_log.to_string();
            log::debug!("{program}: verifier log:\n{log}");
            // The complaint comes before the verifier's closing statistics.
            let statistics = ["verification time", "stack depth", "processed "];
            let lines: Vec<&str> = log
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !statistics.iter().any(|s| l.starts_with(s)))
                .collect();
            let last_lines = lines[lines.len().saturating_sub(3)..].join(" / ");
            Error::Verifier { program, error: io_error, last_lines }
        }
        source => Error::Program { what: "loading", program, source },
    }
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    ebpf.take_map(name).and_then(|map| T::try_from(map).ok()).ok_or(Error::Object(name))
}

fn remove_if_present(map: &'static str, result: Result<(), aya::maps::MapError>) -> Result<()> {
    match result {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        // What a delete of an absent key returns.
        Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Error::map("removing from", map, e)),
    }
}

#[cfg(test)]
mod tests {
    use snoop_common::MAPS;

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
