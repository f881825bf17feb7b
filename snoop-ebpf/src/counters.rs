//! Counting, in per-CPU maps the controller sums: the data path's counters by
//! reason, traffic per membership / group / port, control frames per port.
use aya_ebpf::{maps::PerCpuArray, programs::TcContext};
use snoop_common::{
    wire::{IGMP_QUERY, IGMP_V1_REPORT, IGMP_V2_LEAVE, IGMP_V2_REPORT, IGMP_V3_REPORT},
    Counter, PortCounters, TrafficCounters,
};

use crate::{
    maps::{SNOOP_COUNTERS, SNOOP_PORT_COUNTERS},
    packet::ifindex,
};

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(counter: Counter) {
    count_n(counter, 1)
}

#[inline(always)]
pub fn count_n(counter: Counter, n: u64) {
    if let Some(slot) = SNOOP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += n };
    }
}

#[inline(always)]
pub fn count_traffic(counters: &PerCpuArray<TrafficCounters>, slot: u32, packets: u64, bytes: u64, forwarded: bool) {
    let Some(c) = counters.get_ptr_mut(slot) else {
        return; // NO_SLOT or out of range: uncounted
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    unsafe {
        if forwarded {
            (*c).forwarded_packets += packets;
            (*c).forwarded_bytes += bytes;
        } else {
            (*c).pruned_packets += packets;
            (*c).pruned_bytes += bytes;
        }
    }
}

/// Per-port control-traffic counters, by IGMP type (`None`: a PIM hello).
#[inline(always)]
pub fn count_port_control(ctx: &TcContext, igmp_type: Option<u8>) {
    let ifindex = ifindex(ctx);
    let Some(counters) = SNOOP_PORT_COUNTERS.get_ptr_mut(ifindex) else {
        let mut fresh = PortCounters::default();
        bump(&mut fresh, igmp_type);
        let _ = SNOOP_PORT_COUNTERS.insert(ifindex, &fresh, 0);
        return;
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    bump(unsafe { &mut *counters }, igmp_type);
}

#[inline(always)]
fn bump(counters: &mut PortCounters, igmp_type: Option<u8>) {
    match igmp_type {
        None => counters.pim_hellos += 1,
        Some(IGMP_QUERY) => counters.queries += 1,
        Some(IGMP_V1_REPORT | IGMP_V2_REPORT | IGMP_V3_REPORT) => counters.reports += 1,
        Some(IGMP_V2_LEAVE) => counters.leaves += 1,
        Some(_) => counters.other_igmp += 1,
    }
}
