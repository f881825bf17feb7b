//! The one writer of the data path's maps. It keeps what it wrote (or
//! found pinned at start), diffs a projection's desired entries against it
//! and writes only the difference, in an order that never prunes what must
//! be delivered: first what grants (source entries, memberships, group
//! registrations), then ports, VLANs and the configuration, then copy
//! lists, and last what revokes (memberships, sources, registrations that
//! go). What a full map cannot hold is remembered ([`Unwritten`]): its ports
//! get every group (the projection's PORT_UNPRUNED) and it is retried.
//! Counter slots are handed out and given back here.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use log::Level;
use snoop_common::{
    DatapathConfig, GroupKey, GroupPorts, GroupValue, MapSizes, MemberValue, PortGroupKey, PortValue, SourceAddr,
    SourceGroupKey, SourceKey, SsmRange, VlanFlags, VlanPortKey, MAX_FANOUT, MAX_SOURCES, MAX_SSM_RANGES,
    MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, NO_SLOT, PORT_UNPRUNED,
};

use super::project::{ConfigEntry, CopyList, Desired, GroupEntries, MemberEntry, PortEntry, Target, Unwritten};
use crate::{datapath, membership::NEVER};

/// One entry of one map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Member(PortGroupKey, MemberValue),
    Source(SourceKey),
    Group(GroupKey, GroupValue),
    GroupPorts(GroupKey, GroupPorts),
    SourceGroupPorts(SourceGroupKey, GroupPorts),
    Port(u32, PortValue),
    VlanPort(VlanPortKey, u32),
    Vlan(u16, VlanFlags),
    Config(DatapathConfig),
    /// The whole [`snoop_common::MAP_SSM_RANGES`] array.
    SsmRanges(SsmRanges),
}

/// What [`snoop_common::MAP_SSM_RANGES`] holds: the ranges, unused ones zero.
pub type SsmRanges = [SsmRange; MAX_SSM_RANGES as usize];

/// The key of one entry, to remove it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Member(PortGroupKey),
    Source(SourceKey),
    Group(GroupKey),
    GroupPorts(GroupKey),
    SourceGroupPorts(SourceGroupKey),
    Port(u32),
    VlanPort(VlanPortKey),
    Vlan(u16),
}

impl Entry {
    pub fn key(&self) -> Option<Key> {
        Some(match self {
            Entry::Member(key, _) => Key::Member(*key),
            Entry::Source(key) => Key::Source(*key),
            Entry::Group(key, _) => Key::Group(*key),
            Entry::GroupPorts(key, _) => Key::GroupPorts(*key),
            Entry::SourceGroupPorts(key, _) => Key::SourceGroupPorts(*key),
            Entry::Port(key, _) => Key::Port(*key),
            Entry::VlanPort(key, _) => Key::VlanPort(*key),
            Entry::Vlan(key, _) => Key::Vlan(*key),
            Entry::Config(_) | Entry::SsmRanges(_) => return None,
        })
    }
}

/// Which counter slots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotKind {
    Member,
    Group,
    Port,
}

/// The maps as the reconciler writes them: the data path's, or memory in tests.
pub trait Maps {
    /// Writes an entry; [`datapath::Error::MapFull`] when there is no room.
    fn put(&mut self, entry: &Entry) -> datapath::Result<()>;
    /// Removes an entry; one not there is no error.
    fn delete(&mut self, key: &Key) -> datapath::Result<()>;
    /// A zeroed counter slot, or NO_SLOT when none is left (uncounted).
    fn take_slot(&mut self, kind: SlotKind) -> u32;
    fn give_slot(&mut self, kind: SlotKind, slot: u32);
}

/// What the maps hold, as the reconciler wrote them (or found them pinned).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub members: HashMap<PortGroupKey, MemberValue>,
    /// The source entries of each membership.
    pub sources: HashMap<PortGroupKey, BTreeSet<SourceAddr>>,
    pub groups: HashMap<GroupKey, GroupValue>,
    /// Copy lists: groups' and report targets'.
    pub lists: HashMap<GroupKey, GroupPorts>,
    pub source_lists: HashMap<GroupKey, BTreeMap<SourceAddr, GroupPorts>>,
    pub ports: BTreeMap<u32, PortValue>,
    pub vlans: BTreeMap<u16, VlanFlags>,
    pub vlan_ports: BTreeMap<VlanPortKey, u32>,
    pub config: DatapathConfig,
    pub ssm_ranges: SsmRanges,
    /// Counter slots held by memberships (their entry, a hand-over to their
    /// port) and by groups (their registration and copy lists).
    pub member_slots: HashMap<PortGroupKey, u32>,
    pub group_slots: HashMap<GroupKey, u32>,
}

impl Written {
    /// Every group with an entry of its own in some map.
    fn groups_with_entries(&self) -> BTreeSet<GroupKey> {
        let members = self.members.keys().map(|m| m.group);
        let lists = self.lists.keys().filter(|k| !k.is_report_targets()).copied();
        members.chain(self.groups.keys().copied()).chain(lists).chain(self.source_lists.keys().copied()).collect()
    }
}

/// No port may hold more than an eighth of the membership or source map:
/// one host cannot fill what every port's memberships and filters need...
const PORT_SHARE_DIVISOR: usize = 8;
/// ...but every port may hold this many (the default group limit), or the
/// whole map where it is smaller: a small map is shared by full-map fallback.
const PORT_SHARE_FLOOR: usize = 1024;

/// The most entries one port may hold in the maps a remote host can grow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortShares {
    pub members: usize,
    pub sources: usize,
}

impl PortShares {
    pub fn of(sizes: MapSizes) -> Self {
        let share = |capacity: usize| (capacity / PORT_SHARE_DIVISOR).max(capacity.min(PORT_SHARE_FLOOR));
        Self { members: share(sizes.memberships as usize), sources: share(MAX_SOURCES as usize) }
    }
}

/// Why an entry was not written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unfit {
    MapFull,
    /// Its port holds its share of the map.
    Share,
}

/// What a reconciliation did that the daemon counts and tells.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub map_full: u64,
    /// Entries not written because their port holds its share of the map.
    pub share_full: u64,
    pub write_errors: u64,
    pub logs: Vec<(Level, String)>,
    /// Ports whose PORT_UNPRUNED changed, and to what.
    pub unpruned: Vec<(u32, bool)>,
}

/// The one writer.
pub struct Reconciler {
    written: Written,
    unwritten: Unwritten,
    /// CLOCK_MONOTONIC ns at the state machines' time zero: expiries are
    /// written on the data path's clock, so a restart resumes them.
    clock_base_ns: u64,
    report: Report,
    shares: PortShares,
    /// Written memberships and source entries per port, against its shares.
    port_members: HashMap<u32, usize>,
    port_sources: HashMap<u32, usize>,
    /// Ports told they hold their share.
    share_told: BTreeSet<u32>,
    /// The ports with a written membership or source entries, per group:
    /// what a group may have to revoke, found without a walk of every map.
    group_ports: HashMap<GroupKey, BTreeSet<u32>>,
}

impl Reconciler {
    /// Starting from what the maps hold (empty, or a predecessor's).
    pub fn new(written: Written, clock_base_ns: u64, shares: PortShares) -> Self {
        let mut port_members: HashMap<u32, usize> = HashMap::new();
        for key in written.members.keys() {
            *port_members.entry(key.ifindex).or_default() += 1;
        }
        let mut port_sources: HashMap<u32, usize> = HashMap::new();
        for (key, sources) in &written.sources {
            *port_sources.entry(key.ifindex).or_default() += sources.len();
        }
        let mut group_ports: HashMap<GroupKey, BTreeSet<u32>> = HashMap::new();
        for key in written.members.keys().chain(written.sources.keys()) {
            group_ports.entry(key.group).or_default().insert(key.ifindex);
        }
        Self {
            written,
            unwritten: Unwritten::default(),
            clock_base_ns,
            report: Report::default(),
            shares,
            port_members,
            port_sources,
            share_told: BTreeSet::new(),
            group_ports,
        }
    }

    pub fn written(&self) -> &Written {
        &self.written
    }

    pub fn unwritten(&self) -> &Unwritten {
        &self.unwritten
    }

    /// Writes what differs between `desired` and what was written.
    pub fn apply(&mut self, desired: &Desired, maps: &mut dyn Maps) -> Report {
        let was_empty = self.unwritten.is_empty();
        let mut groups: BTreeMap<GroupKey, &GroupEntries> = desired.groups.iter().map(|(k, v)| (*k, v)).collect();
        let nothing = GroupEntries::default();
        if desired.all {
            for key in self.written.groups_with_entries() {
                groups.entry(key).or_insert(&nothing);
            }
        }
        for (key, want) in &groups {
            self.grant(*key, want, maps);
        }
        if was_empty && !self.unwritten.is_empty() && self.report.map_full > 0 {
            self.log(
                Level::Warn,
                "a map is full: ports whose memberships do not fit get every group until they do (raise \
                 --max-memberships / --max-groups)"
                    .into(),
            );
        }
        self.ports(desired, maps);
        if let Some(entries) = &desired.vlan_entries {
            self.vlans(&entries.vlans, &entries.ports, maps);
        }
        if let Some(config) = &desired.config {
            self.config(config, self.written.config.heartbeat_ns, maps);
        }
        for (key, want) in &groups {
            self.lists(*key, want, maps);
        }
        if let Some(lists) = &desired.report_targets {
            self.report_targets(lists, maps);
        } else if desired.all {
            self.report_targets(&BTreeMap::new(), maps);
        }
        for (key, want) in &groups {
            self.revoke(*key, want, maps);
        }
        std::mem::take(&mut self.report)
    }

    /// Records `restore` (`RESTORE_*` flags) in the pinned configuration,
    /// before the bridge setting it names is changed.
    pub fn set_restore(&mut self, restore: u32, maps: &mut dyn Maps) -> datapath::Result<()> {
        let mut config = self.written.config;
        config.restore = restore;
        maps.put(&Entry::Config(config))?;
        self.written.config = config;
        Ok(())
    }

    /// Tells the data path the controller is alive (at `now_ns`).
    pub fn heartbeat(&mut self, now_ns: u64, maps: &mut dyn Maps) -> Report {
        let mut config = self.written.config;
        config.heartbeat_ns = now_ns;
        if self.put(Entry::Config(config), maps).is_ok() {
            self.written.config = config;
        }
        std::mem::take(&mut self.report)
    }

    /// An entry of `port` not written for its share of the `map` map:
    /// counted, and told once per port.
    fn share_used_up(&mut self, port: u32, map: &str, share: usize) {
        self.report.share_full += 1;
        if self.share_told.insert(port) {
            self.log(
                Level::Warn,
                format!(
                    "port {port} holds its share of the {map} map ({share} entries): what does not fit leaves it \
                     over-forwarded until it does (map_share_full counts each; told once)"
                ),
            );
        }
    }

    fn log(&mut self, level: Level, line: String) {
        self.report.logs.push((level, line));
    }

    /// Writes an entry; a failure is counted and logged, and returned.
    fn put(&mut self, entry: Entry, maps: &mut dyn Maps) -> datapath::Result<()> {
        let result = maps.put(&entry);
        match &result {
            Ok(()) => {}
            Err(datapath::Error::MapFull { .. }) => self.report.map_full += 1,
            Err(error) => {
                self.report.write_errors += 1;
                self.log(Level::Warn, format!("writing {entry:?}: {}", crate::error_chain(error)));
            }
        }
        result
    }

    fn delete(&mut self, key: Key, maps: &mut dyn Maps) {
        if let Err(error) = maps.delete(&key) {
            self.report.write_errors += 1;
            self.log(Level::Warn, format!("removing {key:?}: {}", crate::error_chain(&error)));
        }
    }

    fn expires_ns(&self, member: &MemberEntry) -> u64 {
        if member.expires == NEVER {
            return u64::MAX;
        }
        self.clock_base_ns.saturating_add(u64::try_from(member.expires.as_nanos()).unwrap_or(u64::MAX))
    }

    fn slot(&mut self, kind: SlotKind, maps: &mut dyn Maps, key: impl SlotOwner) -> u32 {
        let held = key.held(&mut self.written);
        if let Some(slot) = held.get(&key) {
            return *slot;
        }
        let slot = maps.take_slot(kind);
        if slot != NO_SLOT {
            key.held(&mut self.written).insert(key, slot);
        }
        slot
    }

    /// Source entries, memberships and the registration a group gains.
    fn grant(&mut self, group: GroupKey, want: &GroupEntries, maps: &mut dyn Maps) {
        for (port, member) in &want.members {
            let key = PortGroupKey { group, ifindex: *port };
            // Sources first: a membership's filter flag never names
            // sources it lacks (a full map leaves it with every source).
            let mut flags = member.flags;
            if flags & (MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE) != 0 {
                let have = self.written.sources.get(&key).cloned().unwrap_or_default();
                let mut unfit = None;
                for source in member.sources.difference(&have) {
                    if self.port_sources.get(port).copied().unwrap_or(0) >= self.shares.sources {
                        self.share_used_up(*port, "source", self.shares.sources);
                        unfit = Some(Unfit::Share);
                        break;
                    }
                    match self.put(Entry::Source(SourceKey { member: key, source: *source }), maps) {
                        Ok(()) => {
                            self.written.sources.entry(key).or_default().insert(*source);
                            self.group_ports.entry(group).or_default().insert(*port);
                            *self.port_sources.entry(*port).or_default() += 1;
                        }
                        Err(_) => {
                            unfit = Some(Unfit::MapFull);
                            break;
                        }
                    }
                }
                match unfit {
                    None => drop(self.unwritten.sources.remove(&key)),
                    Some(unfit) => {
                        // A full map is told per membership (it is rare), a
                        // port over its share once (share_used_up).
                        if self.unwritten.sources.insert(key) && unfit == Unfit::MapFull {
                            self.log(
                                Level::Warn,
                                format!(
                                    "{group:?} on port {port}: its sources do not fit the map: it gets every source \
                                     meanwhile"
                                ),
                            );
                        }
                        flags &= !(MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE);
                    }
                }
            } else {
                self.unwritten.sources.remove(&key);
            }
            let traffic_slot = self.slot(SlotKind::Member, maps, key);
            let value = MemberValue {
                expires_ns: self.expires_ns(member),
                version: member.version,
                flags,
                _pad: [0; 2],
                traffic_slot,
            };
            if self.written.members.get(&key) == Some(&value) {
                continue;
            }
            let new = !self.written.members.contains_key(&key);
            if new && self.port_members.get(port).copied().unwrap_or(0) >= self.shares.members {
                // Like a full map, for this port alone: it gets every group.
                self.share_used_up(*port, "membership", self.shares.members);
                self.unwritten.members.insert(key);
                continue;
            }
            match self.put(Entry::Member(key, value), maps) {
                Ok(()) => {
                    if new {
                        *self.port_members.entry(*port).or_default() += 1;
                        self.group_ports.entry(group).or_default().insert(*port);
                    }
                    self.written.members.insert(key, value);
                    self.unwritten.members.remove(&key);
                }
                Err(datapath::Error::MapFull { .. }) => drop(self.unwritten.members.insert(key)),
                Err(_) => {}
            }
        }
        // After the members: the group must not be pruned for its first
        // member before that member's entry exists.
        if want.registered && !self.written.groups.contains_key(&group) {
            let traffic_slot = self.slot(SlotKind::Group, maps, group);
            let value = GroupValue { traffic_slot, _pad: 0 };
            match self.put(Entry::Group(group, value), maps) {
                Ok(()) => {
                    self.written.groups.insert(group, value);
                    self.unwritten.groups.remove(&group);
                }
                Err(datapath::Error::MapFull { .. }) => drop(self.unwritten.groups.insert(group)),
                Err(_) => {}
            }
        }
        if !want.registered {
            self.unwritten.groups.remove(&group);
        }
    }

    /// A group's copy lists. One that does not fit leaves the group to the
    /// bridge path: no stale list may stay behind to miss a new member.
    fn lists(&mut self, group: GroupKey, want: &GroupEntries, maps: &mut dyn Maps) {
        let Some(list) = &want.list else {
            self.remove_lists(group, maps);
            return;
        };
        let slot = self.slot(SlotKind::Group, maps, group);
        let have: BTreeMap<SourceAddr, GroupPorts> = self.written.source_lists.get(&group).cloned().unwrap_or_default();
        for (source, list) in &want.by_source {
            let value = self.value(group, list, slot, maps);
            if have.get(source) == Some(&value) {
                continue;
            }
            if self.put(Entry::SourceGroupPorts(SourceGroupKey { group, source: *source }, value), maps).is_err() {
                // A source's list does not fit: the whole group takes the bridge path.
                self.remove_lists(group, maps);
                return;
            }
            self.written.source_lists.entry(group).or_default().insert(*source, value);
        }
        let value = self.value(group, list, slot, maps);
        if self.written.lists.get(&group) != Some(&value) {
            match self.put(Entry::GroupPorts(group, value), maps) {
                Ok(()) => drop(self.written.lists.insert(group, value)),
                Err(_) => {
                    self.remove_lists(group, maps);
                    return;
                }
            }
        }
        for source in have.keys().filter(|s| !want.by_source.contains_key(*s)) {
            self.delete(Key::SourceGroupPorts(SourceGroupKey { group, source: *source }), maps);
            if let Some(lists) = self.written.source_lists.get_mut(&group) {
                lists.remove(source);
            }
        }
        if self.written.source_lists.get(&group).is_some_and(BTreeMap::is_empty) {
            self.written.source_lists.remove(&group);
        }
    }

    fn remove_lists(&mut self, group: GroupKey, maps: &mut dyn Maps) {
        if self.written.lists.remove(&group).is_some() {
            self.delete(Key::GroupPorts(group), maps);
        }
        for source in self.written.source_lists.remove(&group).unwrap_or_default().into_keys() {
            self.delete(Key::SourceGroupPorts(SourceGroupKey { group, source }), maps);
        }
    }

    /// A copy list's value, with its counter slots.
    fn value(&mut self, group: GroupKey, list: &CopyList, traffic_slot: u32, maps: &mut dyn Maps) -> GroupPorts {
        let (mut last_member_slot, mut last_port_slot) = (NO_SLOT, NO_SLOT);
        match list.last_to_peer {
            Some(Target::Member(port)) => {
                last_member_slot = self.slot(SlotKind::Member, maps, PortGroupKey { group, ifindex: port })
            }
            Some(Target::Router(port)) => {
                last_port_slot = self.written.ports.get(&port).map_or(NO_SLOT, |p| p.traffic_slot)
            }
            Some(Target::Local(_)) | None => {}
        }
        let mut ifindexes = [0; MAX_FANOUT];
        for (to, from) in ifindexes.iter_mut().zip(&list.ports) {
            *to = *from;
        }
        GroupPorts {
            count: list.ports.len().min(MAX_FANOUT) as u32,
            local: list.local,
            traffic_slot,
            bridge_ports: list.bridge_ports,
            last_to_peer: u32::from(list.last_to_peer.is_some()),
            last_member_slot,
            last_port_slot,
            by_source: u32::from(list.by_source),
            untagged: list.untagged,
            ifindexes,
        }
    }

    /// Where reports go: every list of them (all VLANs, both families).
    fn report_targets(&mut self, lists: &BTreeMap<GroupKey, CopyList>, maps: &mut dyn Maps) {
        for (key, list) in lists {
            let value = self.value(*key, list, NO_SLOT, maps);
            if self.written.lists.get(key) == Some(&value) {
                continue;
            }
            match self.put(Entry::GroupPorts(*key, value), maps) {
                Ok(()) => drop(self.written.lists.insert(*key, value)),
                Err(_) => self.remove_lists(*key, maps),
            }
        }
        let stale: Vec<GroupKey> =
            self.written.lists.keys().filter(|k| k.is_report_targets() && !lists.contains_key(k)).copied().collect();
        for key in stale {
            self.remove_lists(key, maps);
        }
    }

    /// What a group loses: memberships, their sources, its registration.
    fn revoke(&mut self, group: GroupKey, want: &GroupEntries, maps: &mut dyn Maps) {
        let ports: Vec<u32> = self.group_ports.get(&group).into_iter().flatten().copied().collect();
        let keys: Vec<PortGroupKey> = ports.iter().map(|ifindex| PortGroupKey { group, ifindex: *ifindex }).collect();
        let written: Vec<PortGroupKey> =
            keys.iter().filter(|k| self.written.members.contains_key(k)).copied().collect();
        let unwritten: Vec<PortGroupKey> =
            self.unwritten.members.iter().filter(|m| m.group == group).copied().collect();
        for key in written.into_iter().chain(unwritten) {
            if want.members.contains_key(&key.ifindex) {
                continue;
            }
            if self.written.members.remove(&key).is_some() {
                self.delete(Key::Member(key), maps);
                if let Some(count) = self.port_members.get_mut(&key.ifindex) {
                    *count = count.saturating_sub(1);
                }
            }
            self.unwritten.members.remove(&key);
            self.unwritten.sources.remove(&key);
            if let Some(slot) = self.written.member_slots.remove(&key) {
                maps.give_slot(SlotKind::Member, slot);
            }
        }
        // Sources a membership no longer lists (or all, with no filter).
        let with_sources: Vec<PortGroupKey> =
            keys.iter().filter(|k| self.written.sources.contains_key(k)).copied().collect();
        for key in with_sources {
            let keep: BTreeSet<SourceAddr> = match want.members.get(&key.ifindex) {
                Some(member) if member.flags & (MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE) != 0 => {
                    member.sources.clone()
                }
                _ => BTreeSet::new(),
            };
            let stale: Vec<SourceAddr> =
                self.written.sources[&key].iter().filter(|s| !keep.contains(*s)).copied().collect();
            for source in stale {
                self.delete(Key::Source(SourceKey { member: key, source }), maps);
                self.written.sources.get_mut(&key).expect("listed").remove(&source);
                if let Some(count) = self.port_sources.get_mut(&key.ifindex) {
                    *count = count.saturating_sub(1);
                }
            }
            if self.written.sources[&key].is_empty() {
                self.written.sources.remove(&key);
            }
        }
        // The index keeps the ports that still hold an entry of the group.
        if let Some(ports) = self.group_ports.get_mut(&group) {
            let written = &self.written;
            ports.retain(|ifindex| {
                let key = PortGroupKey { group, ifindex: *ifindex };
                written.members.contains_key(&key) || written.sources.contains_key(&key)
            });
            if ports.is_empty() {
                self.group_ports.remove(&group);
            }
        }
        if !want.registered && self.written.groups.remove(&group).is_some() {
            self.delete(Key::Group(group), maps);
        }
        let holds_slot = self.written.groups.contains_key(&group)
            || self.written.lists.contains_key(&group)
            || self.written.source_lists.contains_key(&group);
        if !holds_slot {
            if let Some(slot) = self.written.group_slots.remove(&group) {
                maps.give_slot(SlotKind::Group, slot);
            }
        }
    }

    /// Port entries in scope; with the whole scope, those of ports gone go.
    fn ports(&mut self, desired: &Desired, maps: &mut dyn Maps) {
        for (ifindex, want) in &desired.ports {
            let traffic_slot = match self.written.ports.get(ifindex) {
                Some(port) => port.traffic_slot,
                None => maps.take_slot(SlotKind::Port),
            };
            let value = port_value(want, traffic_slot);
            let old = self.written.ports.get(ifindex).copied();
            if old == Some(value) {
                continue;
            }
            if self.put(Entry::Port(*ifindex, value), maps).is_ok() {
                self.written.ports.insert(*ifindex, value);
                let (was, is) = (old.is_some_and(|o| o.flags & PORT_UNPRUNED != 0), want.flags & PORT_UNPRUNED != 0);
                if was != is {
                    self.report.unpruned.push((*ifindex, is));
                }
            } else if old.is_none() && traffic_slot != NO_SLOT {
                maps.give_slot(SlotKind::Port, traffic_slot);
            }
        }
        if desired.all {
            let gone: Vec<u32> =
                self.written.ports.keys().filter(|p| !desired.ports.contains_key(p)).copied().collect();
            for ifindex in gone {
                let old = self.written.ports.remove(&ifindex).expect("listed");
                self.delete(Key::Port(ifindex), maps);
                if old.traffic_slot != NO_SLOT {
                    maps.give_slot(SlotKind::Port, old.traffic_slot);
                }
            }
        }
    }

    fn vlans(&mut self, vlans: &BTreeMap<u16, VlanFlags>, ports: &BTreeMap<VlanPortKey, u32>, maps: &mut dyn Maps) {
        for (vlan, flags) in vlans {
            if self.written.vlans.get(vlan) != Some(flags) && self.put(Entry::Vlan(*vlan, *flags), maps).is_ok() {
                self.written.vlans.insert(*vlan, *flags);
            }
        }
        let gone: Vec<u16> = self.written.vlans.keys().filter(|v| !vlans.contains_key(v)).copied().collect();
        for vlan in gone {
            self.written.vlans.remove(&vlan);
            self.delete(Key::Vlan(vlan), maps);
        }
        for (key, flags) in ports {
            if self.written.vlan_ports.get(key) != Some(flags) && self.put(Entry::VlanPort(*key, *flags), maps).is_ok()
            {
                self.written.vlan_ports.insert(*key, *flags);
            }
        }
        let gone: Vec<VlanPortKey> =
            self.written.vlan_ports.keys().filter(|k| !ports.contains_key(k)).copied().collect();
        for key in gone {
            self.written.vlan_ports.remove(&key);
            self.delete(Key::VlanPort(key), maps);
        }
    }

    fn config(&mut self, want: &ConfigEntry, heartbeat_ns: u64, maps: &mut dyn Maps) {
        let value = DatapathConfig {
            flags: want.flags,
            restore: want.restore,
            heartbeat_ns,
            failsafe_ns: want.failsafe.map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            redirect_fresh_ns: u64::try_from(want.redirect_fresh.as_nanos()).unwrap_or(u64::MAX),
        };
        if value != self.written.config && self.put(Entry::Config(value), maps).is_ok() {
            self.written.config = value;
        }
        if want.ssm_ranges != self.written.ssm_ranges && self.put(Entry::SsmRanges(want.ssm_ranges), maps).is_ok() {
            self.written.ssm_ranges = want.ssm_ranges;
        }
    }
}

fn port_value(want: &PortEntry, traffic_slot: u32) -> PortValue {
    PortValue {
        flags: want.flags,
        control_rate_limit: want.control_rate_limit,
        window_start_ns: 0,
        window_frames: 0,
        traffic_slot,
        pvid: want.pvid,
        untagged_vlan: want.untagged_vlan,
    }
}

/// Keys that hold counter slots, and where.
trait SlotOwner: Copy + Eq + std::hash::Hash {
    fn held(self, written: &mut Written) -> &mut HashMap<Self, u32>;
}

impl SlotOwner for PortGroupKey {
    fn held(self, written: &mut Written) -> &mut HashMap<Self, u32> {
        &mut written.member_slots
    }
}

impl SlotOwner for GroupKey {
    fn held(self, written: &mut Written) -> &mut HashMap<Self, u32> {
        &mut written.group_slots
    }
}
