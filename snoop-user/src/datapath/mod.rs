//! The eBPF side as userspace drives it: load, attach to ports, the maps
//! as the reconciler writes them ([`Maps`](crate::daemon::reconcile::Maps)
//! entries, nothing more: what they must hold is the daemon's to say), read
//! counters. All kernel objects live under one bpffs directory per bridge,
//! so a restarted snoop adopts them without a gap in forwarding, and a
//! clean exit removes every one of them.
//!
//! - [`pins`]: the pin directory, and pinned state of another layout;
//! - [`slots`]: traffic counter slots;
//! - [`Error`]: what callers decide on.
use std::path::{Path, PathBuf};

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
    SenderSlot, SourceGroupKey, SourceKey, SsmRange, TrafficCounters, VlanFlags, VlanPortKey, COUNTER_COUNT,
    MAP_CONFIG, MAP_COUNTERS, MAP_EVENTS, MAP_GROUPS, MAP_GROUP_PORTS, MAP_GROUP_TRAFFIC, MAP_MEMBERS,
    MAP_MEMBER_TRAFFIC, MAP_PORTS, MAP_PORT_COUNTERS, MAP_PORT_TRAFFIC, MAP_SENDERS, MAP_SOURCES,
    MAP_SOURCE_GROUP_PORTS, MAP_SSM_RANGES, MAP_VLANS, MAP_VLAN_PORTS, MAX_PORTS, MAX_TRAFFIC_SLOTS, NO_SLOT,
    PROG_EGRESS, PROG_INGRESS, SENDER_SLOTS, SOURCE_LISTED,
};

use crate::daemon::reconcile::{Entry, Key, Maps, SlotKind, Written};

/// The compiled eBPF object, built by build.rs.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/snoop.bpf.o"));

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
    ssm_ranges: Array<MapData, SsmRange>,
    counters: PerCpuArray<MapData, u64>,
    member_traffic: TrafficSlots,
    group_traffic: TrafficSlots,
    port_traffic: TrafficSlots,
    port_counters: PerCpuHashMap<MapData, u32, PortCounters>,
    senders: PerCpuArray<MapData, SenderSlot>,
    events: Option<RingBuf<MapData>>,
    attachments: Attachments,
    /// The kernel's ids of the loaded ingress and egress programs: how
    /// TCX lists them among other programs on a hook.
    program_ids: [u32; 2],
}

impl Datapath {
    /// Loads the programs for the bridge `bridge_ifindex`, adopting the maps
    /// pinned in `pin_dir` if a previous snoop left them there. `resumed`
    /// tells which happened.
    pub fn load(pin_dir: &Path, bridge_ifindex: u32, sizes: MapSizes) -> Result<(Self, bool)> {
        let (mode, why) = AttachMode::for_this_kernel()?;
        log::info!("{why}");
        pins::ensure_bpffs()?;
        pins::secure_pin_dir(pin_dir, true)?;
        pins::drop_pins_of_another_layout(pin_dir, sizes)?;
        let resumed = pin_dir.join(MAP_MEMBERS).exists();
        let attachments = Attachments::new(mode, pin_dir.to_owned(), bridge_ifindex)?;
        let loaded = Self::load_pinned(pin_dir, attachments, sizes);
        if loaded.is_err() && !resumed {
            // Maps this failed attempt pinned must not look like state to resume.
            let _ = remove_pin_dir(pin_dir);
        }
        Ok((loaded?, resumed))
    }

    fn load_pinned(pin_dir: &Path, attachments: Attachments, sizes: MapSizes) -> Result<Self> {
        pins::secure_pin_dir(&pin_dir.join("links"), true)?;
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
            ssm_ranges: take_map(&mut ebpf, MAP_SSM_RANGES)?,
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
            port_counters: take_map(&mut ebpf, MAP_PORT_COUNTERS)?,
            senders: take_map(&mut ebpf, MAP_SENDERS)?,
            events: Some(take_map(&mut ebpf, MAP_EVENTS)?),
            ebpf,
            pin_dir: pin_dir.to_owned(),
            attachments,
            program_ids,
        };
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

    /// Attaches both programs to a port, adopting (and updating in place,
    /// atomically) what a previous snoop left there. [`Error::PortGone`]
    /// when the port vanished meanwhile. Its map entry is the reconciler's.
    pub fn attach_port(&mut self, ifindex: u32) -> Result<()> {
        if !self.attachments.contains(ifindex) {
            let (ingress, egress) = programs(&mut self.ebpf)?;
            self.attachments.attach(ingress, egress, ifindex)?;
        }
        Ok(())
    }

    /// Whether snoop's programs are on the port.
    pub fn is_attached(&self, ifindex: u32) -> bool {
        self.attachments.contains(ifindex)
    }

    /// How the programs are attached on this kernel.
    pub fn attach_mode(&self) -> AttachMode {
        self.attachments.mode()
    }

    /// Detaches from a port and drops its control counters (the data path
    /// made them; its map entry is the reconciler's).
    pub fn detach_port(&mut self, ifindex: u32) -> Result<()> {
        self.attachments.detach(ifindex);
        remove_if_present(MAP_PORT_COUNTERS, self.port_counters.remove(&ifindex))
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

    /// The verifier's work on one of the programs (see [`verified_instructions`]).
    pub fn verified_instructions(&mut self, program: &'static str) -> Option<u32> {
        verified_instructions(&mut self.ebpf, program)
    }

    /// What the maps hold, as a predecessor left them (for the reconciler
    /// to start from), with the counter slots they name taken over.
    pub fn read_written(&mut self) -> Written {
        let mut written = Written::default();
        for (key, value) in entries(&self.members) {
            if value.traffic_slot != NO_SLOT && self.member_traffic.claim(value.traffic_slot) {
                written.member_slots.insert(key, value.traffic_slot);
            }
            written.members.insert(key, value);
        }
        for (key, value) in entries(&self.groups) {
            if value.traffic_slot != NO_SLOT && self.group_traffic.claim(value.traffic_slot) {
                written.group_slots.insert(key, value.traffic_slot);
            }
            written.groups.insert(key, value);
        }
        for key in self.sources.keys().filter_map(|k| k.ok()) {
            written.sources.entry(key.member).or_default().insert(key.source);
        }
        written.lists = entries(&self.group_ports).into_iter().collect();
        for (key, value) in entries(&self.source_group_ports) {
            written.source_lists.entry(key.group).or_default().insert(key.source, value);
        }
        for (ifindex, value) in entries(&self.ports) {
            if value.traffic_slot != NO_SLOT && !self.port_traffic.claim(value.traffic_slot) {
                log::debug!("port {ifindex}: counter slot {} taken twice", value.traffic_slot);
            }
            written.ports.insert(ifindex, value);
        }
        written.vlans = entries(&self.vlans).into_iter().collect();
        written.vlan_ports = entries(&self.vlan_ports).into_iter().collect();
        written.config = self.config.get(&0, 0).unwrap_or_default();
        written
    }

    /// Data path counters summed over CPUs, indexed by `snoop_common::Counter`.
    pub fn counters(&self) -> Vec<u64> {
        (0..COUNTER_COUNT).map(|i| self.counters.get(&i, 0).map(|per_cpu| per_cpu.iter().sum()).unwrap_or(0)).collect()
    }

    /// The traffic counted in a slot, summed over CPUs (NO_SLOT: none).
    pub fn traffic(&self, kind: SlotKind, slot: u32) -> TrafficCounters {
        if slot == NO_SLOT {
            return TrafficCounters::default();
        }
        self.slots(kind).read(slot)
    }

    fn slots(&self, kind: SlotKind) -> &TrafficSlots {
        match kind {
            SlotKind::Member => &self.member_traffic,
            SlotKind::Group => &self.group_traffic,
            SlotKind::Port => &self.port_traffic,
        }
    }

    fn slots_mut(&mut self, kind: SlotKind) -> &mut TrafficSlots {
        match kind {
            SlotKind::Member => &mut self.member_traffic,
            SlotKind::Group => &mut self.group_traffic,
            SlotKind::Port => &mut self.port_traffic,
        }
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

impl Maps for Datapath {
    fn put(&mut self, entry: &Entry) -> Result<()> {
        let (map, result) = match entry {
            Entry::Member(key, value) => (MAP_MEMBERS, self.members.insert(key, value, 0)),
            Entry::Source(key) => (MAP_SOURCES, self.sources.insert(key, SOURCE_LISTED, 0)),
            Entry::Group(key, value) => (MAP_GROUPS, self.groups.insert(key, value, 0)),
            Entry::GroupPorts(key, value) => (MAP_GROUP_PORTS, self.group_ports.insert(key, value, 0)),
            Entry::SourceGroupPorts(key, value) => {
                (MAP_SOURCE_GROUP_PORTS, self.source_group_ports.insert(key, value, 0))
            }
            Entry::Port(key, value) => (MAP_PORTS, self.ports.insert(key, value, 0)),
            Entry::VlanPort(key, value) => (MAP_VLAN_PORTS, self.vlan_ports.insert(key, value, 0)),
            Entry::Vlan(key, value) => (MAP_VLANS, self.vlans.insert(key, value, 0)),
            Entry::Config(value) => (MAP_CONFIG, self.config.set(0, value, 0)),
            Entry::SsmRanges(ranges) => {
                let written = ranges.iter().zip(0u32..).try_for_each(|(range, i)| self.ssm_ranges.set(i, range, 0));
                (MAP_SSM_RANGES, written)
            }
        };
        result.map_err(|e| Error::map("writing", map, e))
    }

    fn delete(&mut self, key: &Key) -> Result<()> {
        let (map, result) = match key {
            Key::Member(key) => (MAP_MEMBERS, self.members.remove(key)),
            Key::Source(key) => (MAP_SOURCES, self.sources.remove(key)),
            Key::Group(key) => (MAP_GROUPS, self.groups.remove(key)),
            Key::GroupPorts(key) => (MAP_GROUP_PORTS, self.group_ports.remove(key)),
            Key::SourceGroupPorts(key) => (MAP_SOURCE_GROUP_PORTS, self.source_group_ports.remove(key)),
            Key::Port(key) => (MAP_PORTS, self.ports.remove(key)),
            Key::VlanPort(key) => (MAP_VLAN_PORTS, self.vlan_ports.remove(key)),
            Key::Vlan(key) => (MAP_VLANS, self.vlans.remove(key)),
        };
        remove_if_present(map, result)
    }

    fn take_slot(&mut self, kind: SlotKind) -> u32 {
        self.slots_mut(kind).take().unwrap_or_else(|error| {
            log::warn!("{}", crate::error_chain(&error));
            NO_SLOT
        })
    }

    fn give_slot(&mut self, kind: SlotKind, slot: u32) {
        self.slots_mut(kind).give_back(slot);
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

/// Every entry of a hash map that reads back.
fn entries<K: aya::Pod, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> Vec<(K, V)> {
    map.iter().filter_map(|entry| entry.ok()).collect()
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
