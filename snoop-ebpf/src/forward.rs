//! Redirect mode, the ingress fast path: a registered group's packet is
//! copied from the sender's port straight to its member and router ports, and
//! reports straight to router ports, instead of being flooded by the bridge
//! and dropped again at every other port.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use snoop_common::{
    no_querier_flag, report_targets, sender_slot, Counter, DatapathConfig, GroupKey, GroupPorts, SourceGroupKey,
    CONFIG_CHECK_SOURCE_PORT, CONFIG_REDIRECT, MAX_FANOUT, PORT_BRIDGE_PATH,
};

use crate::{
    config::{coarse_now_ns, config, controller_gone},
    counters::{count, count_n, count_traffic},
    maps::{
        SNOOP_GROUP_PORTS, SNOOP_GROUP_TRAFFIC, SNOOP_MEMBER_TRAFFIC, SNOOP_PORTS, SNOOP_PORT_TRAFFIC, SNOOP_SENDERS,
        SNOOP_SOURCE_GROUP_PORTS,
    },
    packet::{ifindex, ip_source},
};

/// Whether redirect may take frames entering through `ingress`: the bridge
/// checks isolated, locked and non-forwarding ports itself, so their frames
/// take its path. The lookup is skipped while no port needs it.
#[inline(always)]
fn source_port_allowed(config: &DatapathConfig, ingress: u32) -> bool {
    if config.flags & CONFIG_CHECK_SOURCE_PORT == 0 {
        return true;
    }
    // SAFETY: plain map lookup; the value is only read.
    let bridge_path = unsafe { SNOOP_PORTS.get(ingress) }.is_some_and(|port| port.flags & PORT_BRIDGE_PATH != 0);
    if bridge_path {
        count(Counter::SourcePortBridgePath);
    }
    !bridge_path
}

/// Records the frame's sender for the controller, which teaches the bridge
/// its MAC: the bridge learns from frames it sees, and a redirected frame it
/// never sees. Written at most once a second per sender (a read otherwise).
#[inline(always)]
fn record_sender(ctx: &TcContext, ingress: u32, now: u64) {
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return;
    }
    // SAFETY: bounds checked above (direct packet access, no helper call).
    let mac = unsafe { *((data + 6) as *const [u8; 6]) };
    let Some(slot) = SNOOP_SENDERS.get_ptr_mut(sender_slot(&mac)) else { return };
    // SAFETY: a per-CPU value: no concurrent writer on this CPU.
    unsafe {
        if (*slot).mac != mac || (*slot).ifindex != ingress || now.wrapping_sub((*slot).seen_ns) > NS_PER_SEC {
            (*slot).mac = mac;
            (*slot).ifindex = ingress;
            (*slot).seen_ns = now;
        }
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

const BPF_F_INGRESS: u64 = 1;

/// Copies a registered group's packet to its ports and consumes the original,
/// so the bridge never clones it for ports that would only drop it. When the
/// list ends with a veth port whose peer is in another namespace, that port
/// gets the original itself, handed to the peer's ingress: one clone, one
/// transmit and one backlog pass fewer. Anything else (unregistered groups,
/// more ports than MAX_FANOUT, no controller) takes the bridge path.
#[inline(always)]
pub fn redirect_group(ctx: &TcContext, group: GroupKey, family: u8) -> i32 {
    let Some(config) = config() else { return TC_ACT_OK };
    // One test for both: no redirect mode, or nothing may be pruned now.
    if config.flags & (CONFIG_REDIRECT | no_querier_flag(family)) != CONFIG_REDIRECT {
        return TC_ACT_OK;
    }
    let now = coarse_now_ns();
    let heartbeat_age = now.saturating_sub(config.heartbeat_ns);
    if controller_gone(config, heartbeat_age) {
        return TC_ACT_OK;
    }
    // SAFETY: plain map lookup; the value is only read.
    let Some(mut ports) = (unsafe { SNOOP_GROUP_PORTS.get(group) }) else {
        return TC_ACT_OK;
    };
    // A source-specific group: the packet's source may have its own list.
    if ports.by_source != 0 {
        let Some(source) = ip_source(ctx, family) else { return TC_ACT_OK };
        // SAFETY: as above.
        if let Some(listed) = unsafe { SNOOP_SOURCE_GROUP_PORTS.get(SourceGroupKey { group, source }) } {
            ports = listed;
        }
    }
    let ingress = ifindex(ctx);
    if !source_port_allowed(config, ingress) {
        return TC_ACT_OK;
    }
    let last = ports.ifindexes.get((ports.count as usize).wrapping_sub(1)).copied().unwrap_or(ingress);
    // Hand-overs need a live controller (it alone sees a port go down), and
    // the sender's own port never gets its packet back: else every copy is a clone.
    let fresh = config.handover_ns == 0 || heartbeat_age <= config.handover_ns;
    let last_to_peer = ports.last_to_peer != 0 && last != ingress && fresh;
    let clones = if last_to_peer { ports.count - 1 } else { ports.count };
    let mut copies = copy_to(ctx, ports, ingress, clones);
    if copies == 0 && ports.ingress_mask == 0 && !last_to_peer {
        // No copy made (every one failed as a port vanished, or the sender's
        // is the only port): the bridge path delivers it, correctly if slower.
        return TC_ACT_OK;
    }
    record_sender(ctx, ingress, now);
    let bytes = u64::from(ctx.len());
    if last_to_peer {
        // No egress program sees this copy: count it here.
        copies += 1;
        count(Counter::DataForwarded);
        count_traffic(&SNOOP_MEMBER_TRAFFIC, ports.last_member_slot, 1, bytes, true);
        count_traffic(&SNOOP_PORT_TRAFFIC, ports.last_port_slot, 1, bytes, true);
    }
    count(Counter::Redirected);
    count_n(Counter::RedirectCopies, u64::from(copies));
    // Every other port (but the sender's) was spared the packet.
    let spared = ports.bridge_ports.saturating_sub(copies + 1);
    if spared > 0 {
        count_n(Counter::DataPruned, u64::from(spared));
        count_traffic(&SNOOP_GROUP_TRAFFIC, ports.traffic_slot, u64::from(spared), bytes * u64::from(spared), false);
    }
    if last_to_peer {
        // SAFETY: plain helper call; TC_ACT_REDIRECT is its result.
        return unsafe { aya_ebpf::helpers::bpf_redirect_peer(last, 0) } as i32;
    }
    // The copies carry it on. (TCX knows only OK/SHOT/REDIRECT/NEXT; any
    // other code, TC_ACT_STOLEN included, would pass it to the bridge too.)
    TC_ACT_SHOT
}

/// Reports and leaves (MLD: dones) go to router ports and the bridge device only (RFC
/// 4541 2.1.1), copied here instead of flooded by the bridge and dropped
/// again at every host port.
#[inline(always)]
pub fn redirect_reports(ctx: &TcContext, family: u8) -> i32 {
    let Some(config) = config() else { return TC_ACT_OK };
    let now = coarse_now_ns();
    if config.flags & (CONFIG_REDIRECT | no_querier_flag(family)) != CONFIG_REDIRECT
        || controller_gone(config, now.saturating_sub(config.heartbeat_ns))
    {
        return TC_ACT_OK;
    }
    // SAFETY: plain map lookup; the value is only read.
    let Some(targets) = (unsafe { SNOOP_GROUP_PORTS.get(report_targets(family)) }) else {
        return TC_ACT_OK;
    };
    let ingress = ifindex(ctx);
    if !source_port_allowed(config, ingress) {
        return TC_ACT_OK;
    }
    record_sender(ctx, ingress, now);
    let copies = copy_to(ctx, targets, ingress, targets.count);
    count_n(Counter::RedirectCopies, u64::from(copies));
    TC_ACT_SHOT
}

/// Clones the frame to the first `limit` ports in `ports` but the one it came
/// from. Returns the copies made to bridge ports (not to the bridge device).
#[inline(always)]
fn copy_to(ctx: &TcContext, ports: &GroupPorts, ingress: u32, limit: u32) -> u32 {
    let mut copies = 0u32;
    for i in 0..MAX_FANOUT {
        if i as u32 >= limit {
            break;
        }
        let Some(&target) = ports.ifindexes.get(i) else { break };
        // The sender's own port gets no copy: ifindex 0 names no device, so
        // the helper fails and copies nothing. (A `continue` here let the
        // compiler split the index in two, and the verifier then kept a state
        // per split: 6.1's came within 25% of its 1M-instruction limit, and
        // went past it with the per-source lists.) Kept branch-free
        // otherwise: each branch multiplies the verifier's work
        // by the 32 iterations.
        let target = if target == ingress { 0 } else { target };
        let to_ingress = u64::from((ports.ingress_mask >> i) & 1);
        let made = ctx.clone_redirect(target, to_ingress * BPF_F_INGRESS).is_ok();
        copies += u32::from(made) * (1 - to_ingress as u32);
    }
    copies
}
