//! snoop data path: two TC programs on every port of a bridge.
//!
//! - `snoop_ingress` sees frames entering the bridge from a port. It copies IGMP
//!   and PIM hellos into a ring for the controller, and in redirect mode copies
//!   joined groups' traffic straight to their member and router ports.
//! - `snoop_egress` sees frames the bridge sends out of a port. It drops IPv4
//!   group traffic the port has no member or router for, and IGMP reports/leaves
//!   to host ports (so every host keeps reporting, RFC 4541 2.1.1).
//!
//! Membership lives in maps the controller writes; nothing here parses IGMP
//! beyond the message type, so there is exactly one IGMP parser (userspace).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_F_NO_PREALLOC, TC_ACT_OK, TC_ACT_SHOT},
    macros::{classifier, map},
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::TcContext,
};
use aya_log_ebpf::warn;
use snoop_common::{
    CapturedFrame, Counter, DatapathConfig, GroupKey, GroupPorts, GroupValue, MemberValue, PortCounters, PortGroupKey,
    PortValue, TrafficCounters, CAPTURE_LEN, CONFIG_FLOOD_UNREGISTERED, CONFIG_REDIRECT, COUNTER_COUNT,
    EVENT_RING_BYTES, MAX_FANOUT, MAX_GROUPS, MAX_MEMBERSHIPS, MAX_PORTS, MAX_TRAFFIC_SLOTS, PORT_ROUTER,
    REPORT_TARGETS, SMALL_CAPTURE_LEN, VLAN_NONE,
};

// Membership state is pinned so a restarted controller (and the programs it
// replaces) keep forwarding from the same maps.
#[map]
static SNOOP_MEMBERS: HashMap<PortGroupKey, MemberValue> = HashMap::pinned(MAX_MEMBERSHIPS, BPF_F_NO_PREALLOC);
#[map]
static SNOOP_GROUPS: HashMap<GroupKey, GroupValue> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);
#[map]
static SNOOP_PORTS: HashMap<u32, PortValue> = HashMap::pinned(MAX_PORTS, 0);
#[map]
static SNOOP_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);
#[map]
static SNOOP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);
#[map]
static SNOOP_MEMBER_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_TRAFFIC_SLOTS, 0);
#[map]
static SNOOP_GROUP_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_TRAFFIC_SLOTS, 0);
#[map]
static SNOOP_PORT_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_PORTS, 0);
#[map]
static SNOOP_GROUP_PORTS: HashMap<GroupKey, GroupPorts> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);
#[map]
static SNOOP_PORT_COUNTERS: PerCpuHashMap<u32, PortCounters> = PerCpuHashMap::pinned(MAX_PORTS, 0);
// Pinned too: reports that arrive while the controller restarts wait here.
#[map]
static SNOOP_EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const IPPROTO_IGMP: u8 = 2;
const IPPROTO_PIM: u8 = 103;
const ALL_PIM_ROUTERS: [u8; 4] = [224, 0, 0, 13];

const IGMP_V1_REPORT: u8 = 0x12;
const IGMP_V2_REPORT: u8 = 0x16;
const IGMP_V2_LEAVE: u8 = 0x17;
const IGMP_V3_REPORT: u8 = 0x22;

/// Adds one to a per-CPU counter and returns this CPU's new total.
#[inline(always)]
fn count(counter: Counter) -> u64 {
    count_n(counter, 1)
}

#[inline(always)]
fn count_n(counter: Counter, n: u64) -> u64 {
    match SNOOP_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(slot) => unsafe {
            *slot += n;
            *slot
        },
        None => 0,
    }
}

/// The IPv4 header fields both programs need, read with direct packet access.
struct Ipv4Head {
    dst: [u8; 4],
    protocol: u8,
    header_len: usize,
}

/// `None` for anything but an IPv4 frame with a readable header.
#[inline(always)]
fn ipv4_head(ctx: &TcContext) -> Option<Ipv4Head> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + ETH_HLEN + 20 > data_end {
        // Short linear area (or a runt frame): not worth a pull for non-IP.
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = u16::from_be(unsafe { *((data + 12) as *const u16) });
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = data + ETH_HLEN;
    let version_ihl = unsafe { *(ip as *const u8) };
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        count(Counter::MalformedIp);
        return None;
    }
    let protocol = unsafe { *((ip + 9) as *const u8) };
    let dst = unsafe { *((ip + 16) as *const [u8; 4]) };
    Some(Ipv4Head { dst, protocol, header_len })
}

#[classifier]
pub fn snoop_ingress(ctx: TcContext) -> i32 {
    if let Some(ip) = ipv4_head(&ctx) {
        let is_pim_hello_dst = ip.protocol == IPPROTO_PIM && ip.dst == ALL_PIM_ROUTERS;
        if ip.protocol == IPPROTO_IGMP {
            count(Counter::IgmpSeen);
            // Too short to hold a type: counted as other IGMP.
            let igmp_type = ctx.load::<u8>(ETH_HLEN + ip.header_len).unwrap_or(0xff);
            count_port_control(&ctx, Some(igmp_type));
            capture_within_rate(&ctx);
            if is_report(igmp_type) {
                return redirect_reports(&ctx);
            }
        } else if is_pim_hello_dst {
            count(Counter::PimSeen);
            count_port_control(&ctx, None);
            capture_within_rate(&ctx);
        } else if ip.dst[0] & 0xf0 == 0xe0 && !(ip.dst[0] == 224 && ip.dst[1] == 0 && ip.dst[2] == 0) {
            return redirect_group(&ctx, ip.dst);
        }
    }
    TC_ACT_OK
}

/// Redirect mode: copies a registered group's packet to its ports and
/// consumes the original, so the bridge never clones it for ports that would
/// only drop it. When the list ends with a veth port whose peer is in another
/// namespace, that port gets the original itself, handed to the peer's
/// ingress: one clone, one transmit and one backlog pass fewer. Anything else
/// (unregistered groups, more ports than MAX_FANOUT, no controller) takes the
/// bridge path.
#[inline(always)]
fn redirect_group(ctx: &TcContext, dst: [u8; 4]) -> i32 {
    let Some(config) = SNOOP_CONFIG.get(0) else { return TC_ACT_OK };
    if config.flags & CONFIG_REDIRECT == 0 {
        return TC_ACT_OK;
    }
    let heartbeat_age = heartbeat_age_ns(config);
    if controller_gone(config, heartbeat_age) {
        return TC_ACT_OK;
    }
    // SAFETY: plain map lookup; the value is only read.
    let Some(ports) = (unsafe { SNOOP_GROUP_PORTS.get(GroupKey::ipv4(dst, VLAN_NONE)) }) else {
        return TC_ACT_OK;
    };
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
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
        if target == ingress {
            continue;
        }
        // Kept branch-free: each branch here multiplies the verifier's work
        // by the 32 iterations.
        let to_ingress = u64::from((ports.ingress_mask >> i) & 1);
        let made = ctx.clone_redirect(target, to_ingress * BPF_F_INGRESS).is_ok();
        copies += u32::from(made) * (1 - to_ingress as u32);
    }
    copies
}

/// Redirect mode: reports and leaves go to router ports and the bridge
/// device only (RFC 4541 2.1.1), copied here instead of flooded by the bridge
/// and dropped again at every host port.
#[inline(always)]
fn redirect_reports(ctx: &TcContext) -> i32 {
    let Some(config) = SNOOP_CONFIG.get(0) else { return TC_ACT_OK };
    if config.flags & CONFIG_REDIRECT == 0 || controller_gone(config, heartbeat_age_ns(config)) {
        return TC_ACT_OK;
    }
    // SAFETY: plain map lookup; the value is only read.
    let Some(targets) = (unsafe { SNOOP_GROUP_PORTS.get(REPORT_TARGETS) }) else {
        return TC_ACT_OK;
    };
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ingress = unsafe { (*ctx.skb.skb).ifindex };
    let copies = copy_to(ctx, targets, ingress, targets.count);
    count_n(Counter::RedirectCopies, u64::from(copies));
    TC_ACT_SHOT
}

#[inline(always)]
fn is_report(igmp_type: u8) -> bool {
    matches!(igmp_type, IGMP_V1_REPORT | IGMP_V2_REPORT | IGMP_V3_REPORT | IGMP_V2_LEAVE)
}

const BPF_F_INGRESS: u64 = 1;

const IGMP_QUERY: u8 = 0x11;

/// Per-port control-traffic counters, by IGMP type (`None`: a PIM hello).
#[inline(always)]
fn count_port_control(ctx: &TcContext, igmp_type: Option<u8>) {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
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

const NS_PER_SEC: u64 = 1_000_000_000;

/// Captures unless the port is over its control-frame rate, so one flooding
/// host cannot fill the ring and starve every other port's reports.
#[inline(always)]
fn capture_within_rate(ctx: &TcContext) {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some(port) = SNOOP_PORTS.get_ptr_mut(ifindex) {
        // SAFETY: a map value; concurrent CPUs only make the window approximate.
        unsafe {
            let limit = u64::from((*port).control_rate_limit);
            if limit != 0 {
                let now = aya_ebpf::helpers::bpf_ktime_get_ns();
                if now.wrapping_sub((*port).window_start_ns) >= NS_PER_SEC {
                    (*port).window_start_ns = now;
                    (*port).window_frames = 0;
                }
                // Not atomic (the BPF target's core has no fetch_add): CPUs
                // racing here may let a few extra frames through.
                (*port).window_frames += 1;
                if (*port).window_frames > limit {
                    count(Counter::ControlRateLimited);
                    return;
                }
            }
        }
    }
    capture(ctx);
}

/// Hands the frame's IP packet to the controller through the event ring, in
/// a small record when it fits one.
#[inline(always)]
fn capture(ctx: &TcContext) {
    let wire_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    if wire_len <= SMALL_CAPTURE_LEN {
        capture_into::<SMALL_CAPTURE_LEN>(ctx, wire_len);
    } else {
        capture_into::<CAPTURE_LEN>(ctx, wire_len);
    }
}

#[inline(always)]
fn capture_into<const N: usize>(ctx: &TcContext, wire_len: usize) {
    let Some(mut entry) = SNOOP_EVENTS.reserve::<CapturedFrame<N>>(0) else {
        let lost = count(Counter::CaptureRingFull);
        // Log at 1, 2, 4, 8... losses per CPU: visible, but no log storm.
        if lost & (lost - 1) == 0 {
            warn!(ctx, "event ring full: {} control frames lost on this CPU", lost);
        }
        return;
    };
    let frame = entry.as_mut_ptr();
    let mut len = wire_len;
    if len > N {
        count(Counter::CaptureTruncated);
        len = N;
    }
    // SAFETY: `frame` points at a reserved, writable CapturedFrame<N>.
    unsafe {
        (*frame).ifindex = (*ctx.skb.skb).ifindex;
        (*frame).wire_len = wire_len as u16;
        (*frame).vlan = VLAN_NONE;
        (*frame)._pad = [0; 6];
        // The verifier needs a provably bounded, non-zero length. Read it back
        // through memory so the compiler cannot drop a check it believes
        // redundant, and keep two checks with different effects so it cannot
        // fuse them into one unsigned compare the verifier cannot follow.
        (*frame).captured_len = len as u16;
        let len = usize::from(core::ptr::read_volatile(&raw const (*frame).captured_len));
        if len == 0 {
            entry.discard(0);
            count(Counter::MalformedIp);
            return;
        }
        if len > N {
            entry.discard(0);
            count(Counter::CaptureTruncated);
            return;
        }
        let ret = aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            (*frame).data.as_mut_ptr() as *mut _,
            len as u32,
        );
        if ret != 0 {
            entry.discard(0);
            count(Counter::MalformedIp);
            return;
        }
    }
    entry.submit(0);
    count(Counter::Captured);
}

#[classifier]
pub fn snoop_egress(ctx: TcContext) -> i32 {
    let Some(ip) = ipv4_head(&ctx) else {
        return TC_ACT_OK;
    };
    if ip.dst[0] & 0xf0 != 0xe0 {
        return TC_ACT_OK; // not IPv4 multicast
    }
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if ip.protocol == IPPROTO_IGMP {
        return igmp_egress(&ctx, &ip, ifindex);
    }
    if ip.dst[0] == 224 && ip.dst[1] == 0 && ip.dst[2] == 0 {
        count(Counter::LinkLocalFlooded);
        return TC_ACT_OK;
    }
    let bytes = u64::from(ctx.len());
    let key = PortGroupKey { group: GroupKey::ipv4(ip.dst, VLAN_NONE), ifindex };
    // The common case first: a member port, one hash lookup.
    if let Some(member) = SNOOP_MEMBERS.get_ptr(&key) {
        count(Counter::DataForwarded);
        // SAFETY: a map value pointer from a successful lookup.
        count_traffic(&SNOOP_MEMBER_TRAFFIC, unsafe { (*member).traffic_slot }, 1, bytes, true);
        return TC_ACT_OK;
    }
    // SAFETY: as above.
    let Some(port) = (unsafe { SNOOP_PORTS.get(ifindex) }) else {
        // Not a port snoop manages (yet): leave the bridge's decision alone.
        return TC_ACT_OK;
    };
    if port.flags & PORT_ROUTER != 0 {
        count(Counter::DataForwarded);
        count_traffic(&SNOOP_PORT_TRAFFIC, port.traffic_slot, 1, bytes, true);
        return TC_ACT_OK;
    }
    let config = SNOOP_CONFIG.get(0);
    let group = SNOOP_GROUPS.get_ptr(&key.group);
    let flood_unregistered = config.is_none_or(|c| c.flags & CONFIG_FLOOD_UNREGISTERED != 0);
    let forward = if group.is_none() && flood_unregistered {
        count(Counter::UnregisteredFlooded);
        true
    } else if config.is_some_and(|c| controller_gone(c, heartbeat_age_ns(c))) {
        // Only checked on the prune path: forwarding costs nothing extra.
        count(Counter::FailsafeFlooded);
        true
    } else if group.is_some() {
        count(Counter::DataPruned);
        false
    } else {
        count(Counter::UnregisteredDropped);
        false
    };
    if !forward {
        if let Some(group) = group {
            // SAFETY: a map value pointer from a successful lookup.
            count_traffic(&SNOOP_GROUP_TRAFFIC, unsafe { (*group).traffic_slot }, 1, bytes, false);
        }
    }
    count_traffic(&SNOOP_PORT_TRAFFIC, port.traffic_slot, 1, bytes, forward);
    if forward {
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// Reports and leaves go to router ports only; queries and unknown IGMP types
/// are flooded (RFC 4541 2.1.1 (1) and (3)).
#[inline(always)]
fn igmp_egress(ctx: &TcContext, ip: &Ipv4Head, ifindex: u32) -> i32 {
    // SAFETY: plain map lookup.
    let is_router_port = match unsafe { SNOOP_PORTS.get(ifindex) } {
        Some(port) => port.flags & PORT_ROUTER != 0,
        None => return TC_ACT_OK, // not managed
    };
    let type_offset = ETH_HLEN + ip.header_len;
    let Ok(igmp_type) = ctx.load::<u8>(type_offset) else {
        return TC_ACT_OK; // too short to be a report: flood like unknown IGMP
    };
    if is_report(igmp_type) && !is_router_port {
        count(Counter::ReportsSuppressed);
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}

/// The controller's heartbeat is older than the failsafe time.
#[inline(always)]
fn controller_gone(config: &DatapathConfig, heartbeat_age: u64) -> bool {
    config.failsafe_ns != 0 && heartbeat_age > config.failsafe_ns
}

#[inline(always)]
fn heartbeat_age_ns(config: &DatapathConfig) -> u64 {
    // The coarse clock (CLOCK_MONOTONIC_COARSE) is a memory read, not a clock
    // source read, and this runs for every redirected packet; a tick of lag
    // is nothing next to a failsafe time of seconds.
    // SAFETY: plain helper call.
    let now = unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() };
    now.saturating_sub(config.heartbeat_ns)
}

#[inline(always)]
fn count_traffic(counters: &PerCpuArray<TrafficCounters>, slot: u32, packets: u64, bytes: u64, forwarded: bool) {
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
