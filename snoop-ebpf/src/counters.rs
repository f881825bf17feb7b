//! Counting, in per-CPU maps the controller sums: the data path's counters by
//! reason, traffic per membership / group / port, control frames per port.
use aya_ebpf::{maps::PerCpuArray, programs::TcContext};
use snoop_common::{wire::ControlKind, Counter, PortCounters, TrafficCounters};

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

/// Per-port control-traffic counters, by kind.
#[inline(always)]
pub fn count_port_control(ctx: &TcContext, kind: ControlKind) {
    let ifindex = ifindex(ctx);
    let Some(counters) = SNOOP_PORT_COUNTERS.get_ptr_mut(ifindex) else {
        let mut fresh = PortCounters::default();
        bump(&mut fresh, kind);
        let _ = SNOOP_PORT_COUNTERS.insert(ifindex, &fresh, 0);
        return;
    };
    // SAFETY: per-CPU value, no concurrent writer on this CPU.
    bump(unsafe { &mut *counters }, kind);
}

#[inline(always)]
fn bump(counters: &mut PortCounters, kind: ControlKind) {
    match kind {
        ControlKind::PimHello => counters.pim_hellos += 1,
        ControlKind::Query => counters.queries += 1,
        ControlKind::Report => counters.reports += 1,
        ControlKind::Leave => counters.leaves += 1,
        ControlKind::Other => counters.other_igmp += 1,
    }
}
