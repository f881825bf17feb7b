//! Traffic counter slots: indexes into per-CPU arrays, handed out by the
//! controller and stored in map values, so counting in the data path is an
//! array update and not a second hash lookup.
use std::collections::HashSet;

use aya::maps::{MapData, PerCpuArray, PerCpuValues};
use snoop_common::{TrafficCounters, NO_SLOT};

use super::{Error, Result};

/// A per-CPU array of traffic counters and which of its slots are in use.
pub(super) struct TrafficSlots {
    map: &'static str,
    counters: PerCpuArray<MapData, TrafficCounters>,
    free: Vec<u32>,
    /// Slots below this have been handed out at some time.
    next: u32,
    capacity: u32,
    in_use: HashSet<u32>,
}

impl TrafficSlots {
    pub fn new(map: &'static str, counters: PerCpuArray<MapData, TrafficCounters>, capacity: u32) -> Self {
        Self { map, counters, free: Vec::new(), next: 0, capacity, in_use: HashSet::new() }
    }

    /// A zeroed slot, or NO_SLOT when all are taken (the traffic then goes uncounted).
    pub fn take(&mut self) -> Result<u32> {
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None if self.next < self.capacity => {
                self.next += 1;
                self.next - 1
            }
            None => return Ok(NO_SLOT),
        };
        let cpus_error =
            |source| Error::Pins { what: "counting CPUs in", path: "/sys/devices/system/cpu/possible".into(), source };
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| cpus_error(e))?;
        let zeros = PerCpuValues::try_from(vec![TrafficCounters::default(); cpus]).map_err(cpus_error)?;
        self.counters.set(slot, zeros, 0).map_err(|e| Error::map("zeroing a slot of", self.map, e))?;
        self.in_use.insert(slot);
        Ok(slot)
    }

    pub fn give_back(&mut self, slot: u32) {
        if self.in_use.remove(&slot) {
            self.free.push(slot);
        }
    }

    /// Marks a slot found in a pinned map as taken; false if it is not valid.
    pub fn claim(&mut self, slot: u32) -> bool {
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

    pub fn read(&self, slot: u32) -> TrafficCounters {
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
