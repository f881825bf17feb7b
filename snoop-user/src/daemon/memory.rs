//! The data path's maps in memory, for tests of the daemon without root:
//! what the reconciler writes lands here, each map with the room it is given.
use std::collections::BTreeMap;

use snoop_common::{
    DatapathConfig, MAP_GROUPS, MAP_GROUP_PORTS, MAP_MEMBERS, MAP_PORTS, MAP_SOURCES, MAP_SOURCE_GROUP_PORTS,
    MAP_VLANS, MAP_VLAN_PORTS, NO_SLOT,
};

use super::reconcile::{Entry, Key, Maps, SlotKind};
use crate::datapath;

/// Maps in memory.
#[derive(Debug, Default)]
pub struct MemoryMaps {
    pub entries: BTreeMap<Key, Entry>,
    pub config: Option<DatapathConfig>,
    pub ssm_ranges: Option<super::reconcile::SsmRanges>,
    /// Room per map (by name); none given: unbounded.
    pub room: BTreeMap<&'static str, usize>,
    /// Every write and removal, in order.
    pub log: Vec<String>,
    slots: BTreeMap<SlotKind, (u32, Vec<u32>)>,
}

/// The map a key is in.
pub fn map_of(key: &Key) -> &'static str {
    match key {
        Key::Member(_) => MAP_MEMBERS,
        Key::Source(_) => MAP_SOURCES,
        Key::Group(_) => MAP_GROUPS,
        Key::GroupPorts(_) => MAP_GROUP_PORTS,
        Key::SourceGroupPorts(_) => MAP_SOURCE_GROUP_PORTS,
        Key::Port(_) => MAP_PORTS,
        Key::VlanPort(_) => MAP_VLAN_PORTS,
        Key::Vlan(_) => MAP_VLANS,
    }
}

impl MemoryMaps {
    /// Maps where `map` holds at most `room` entries.
    pub fn with_room(map: &'static str, room: usize) -> Self {
        Self { room: [(map, room)].into(), ..Self::default() }
    }

    /// The entries of one map.
    pub fn of(&self, map: &str) -> Vec<&Entry> {
        self.entries.iter().filter(|(key, _)| map_of(key) == map).map(|(_, entry)| entry).collect()
    }
}

impl Maps for MemoryMaps {
    fn put(&mut self, entry: &Entry) -> datapath::Result<()> {
        let Some(key) = entry.key() else {
            match entry {
                Entry::Config(config) => self.config = Some(*config),
                Entry::SsmRanges(ranges) => self.ssm_ranges = Some(*ranges),
                _ => unreachable!("only the configuration and the SSM ranges have no key"),
            }
            return Ok(());
        };
        let map = map_of(&key);
        let held = self.entries.keys().filter(|k| map_of(k) == map).count();
        if !self.entries.contains_key(&key) && self.room.get(map).is_some_and(|room| held >= *room) {
            return Err(datapath::Error::MapFull { map });
        }
        self.log.push(format!("put {key:?}"));
        self.entries.insert(key, entry.clone());
        Ok(())
    }

    fn delete(&mut self, key: &Key) -> datapath::Result<()> {
        if self.entries.remove(key).is_some() {
            self.log.push(format!("delete {key:?}"));
        }
        Ok(())
    }

    fn take_slot(&mut self, kind: SlotKind) -> u32 {
        let (next, free) = self.slots.entry(kind).or_default();
        free.pop().unwrap_or_else(|| {
            *next += 1;
            *next - 1
        })
    }

    fn give_slot(&mut self, kind: SlotKind, slot: u32) {
        if slot != NO_SLOT {
            self.slots.entry(kind).or_default().1.push(slot);
        }
    }
}
