//! Redirect mode, the ingress fast path: a registered group's packet is
//! copied from the sender's port straight to its member and router ports, and
//! reports straight to router ports, instead of being flooded by the bridge
//! and dropped again at every other port.
use aya_ebpf::helpers::{bpf_clone_redirect, bpf_skb_vlan_pop, bpf_skb_vlan_push};
use aya_ebpf::programs::TcContext;
use snoop_common::{
    no_querier_flag, sender_slot, wire::ETH_P_8021Q, Counter, DatapathConfig, GroupKey, GroupPorts, SourceGroupKey,
    VlanPortKey, CONFIG_CHECK_SOURCE_PORT, CONFIG_REDIRECT, CONFIG_VLAN_AWARE, MAX_FANOUT, PORT_BRIDGE_PATH,
    PORT_IN_VLAN, UNTAGGED_LAST, UNTAGGED_LOCAL, VERDICT_DROP, VERDICT_NEXT, VLAN_NONE, VLAN_VID_MASK,
};

use crate::{
    config::{coarse_now_ns, config, controller_gone},
    counters::{count, count_n, count_traffic},
    maps::{
        SNOOP_GROUP_PORTS, SNOOP_GROUP_TRAFFIC, SNOOP_MEMBER_TRAFFIC, SNOOP_PORTS, SNOOP_PORT_TRAFFIC, SNOOP_SENDERS,
        SNOOP_SOURCE_GROUP_PORTS, SNOOP_VLANS, SNOOP_VLAN_PORTS,
    },
    packet::{ifindex, ip_source, vlan_tag},
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
fn record_sender(ctx: &TcContext, ingress: u32, vlan: u16, now: u64) {
    let data = ctx.data();
    if data + 12 > ctx.data_end() {
        return;
    }
    // SAFETY: bounds checked above (direct packet access, no helper call).
    let mac = unsafe { *((data + 6) as *const [u8; 6]) };
    let Some(slot) = SNOOP_SENDERS.get_ptr_mut(sender_slot(&mac)) else { return };
    // SAFETY: a per-CPU value: no concurrent writer on this CPU.
    unsafe {
        let moved = (*slot).ifindex != ingress || (*slot).vlan != vlan;
        if (*slot).mac != mac || moved || now.wrapping_sub((*slot).seen_ns) > NS_PER_SEC {
            (*slot).mac = mac;
            (*slot).vlan = vlan;
            (*slot).ifindex = ingress;
            (*slot).seen_ns = now;
        }
    }
}

const NS_PER_SEC: u64 = 1_000_000_000;

const BPF_F_INGRESS: u64 = 1;

/// A frame's VLAN on a VLAN-aware bridge, as the bridge's ingress assigns
/// it: its tag's, or the entry port's PVID for untagged and priority-tagged
/// frames.
#[derive(Clone, Copy)]
struct FrameVlan {
    /// The tag its tagged copies carry: the VLAN and the frame's priority.
    tci: u16,
    /// It carries that tag now (else it came untagged or priority-tagged).
    tagged: bool,
}

impl FrameVlan {
    #[inline(always)]
    fn id(self) -> u16 {
        self.tci & VLAN_VID_MASK
    }
}

/// Whether redirect may take a frame of `family` entering through
/// `ingress`, and in which VLAN: `Some(None)` on a bridge that does not
/// filter VLANs, `None` for the bridge path (no redirect mode, nothing
/// pruned, a VLAN the port is not in or whose querier is missing).
#[inline(always)]
fn redirect_vlan(ctx: &TcContext, config: &DatapathConfig, family: u8, ingress: u32) -> Option<Option<FrameVlan>> {
    // One test for the common case: redirect mode, no VLANs, a querier.
    let mode = config.flags & (CONFIG_REDIRECT | CONFIG_VLAN_AWARE | no_querier_flag(family));
    if mode == CONFIG_REDIRECT {
        return Some(None);
    }
    // (Without VLANs, a missing querier stops redirect; with them, the
    // config flag only says some VLAN has none.)
    if mode & (CONFIG_REDIRECT | CONFIG_VLAN_AWARE) != CONFIG_REDIRECT | CONFIG_VLAN_AWARE {
        return None;
    }
    let tag = vlan_tag(ctx);
    // (802.1ad bridges take the bridge path: see redirect_obstacle.)
    if tag.is_some_and(|tag| !tag.ieee8021q) {
        return None;
    }
    let vlan = match tag {
        Some(tag) if tag.vid() != 0 => {
            // The bridge's ingress filter drops a VLAN the port is not in.
            // SAFETY: plain map lookup; the value is only read.
            let flags = unsafe { SNOOP_VLAN_PORTS.get(&VlanPortKey::new(tag.vid(), ingress)) };
            if !flags.is_some_and(|flags| flags & PORT_IN_VLAN != 0) {
                return None;
            }
            FrameVlan { tci: tag.tci, tagged: true }
        }
        _ => {
            // SAFETY: as above.
            let pvid = unsafe { SNOOP_PORTS.get(ingress) }.map_or(VLAN_NONE, |port| port.pvid);
            if pvid == VLAN_NONE {
                return None; // the bridge drops it
            }
            let priority = tag.map_or(0, |tag| tag.tci & !VLAN_VID_MASK);
            FrameVlan { tci: priority | pvid, tagged: false }
        }
    };
    // SAFETY: as above.
    let querier = unsafe { SNOOP_VLANS.get(&vlan.id()) }.is_some_and(|flags| flags & no_querier_flag(family) == 0);
    querier.then_some(Some(vlan))
}

/// Whether the copy lists still say what the bridge would do: the
/// controller's heartbeat is recent. Only it follows ports leaving a VLAN,
/// turning isolated or going down; without it the bridge path decides.
#[inline(always)]
fn lists_fresh(config: &DatapathConfig, now: u64) -> bool {
    let age = now.saturating_sub(config.heartbeat_ns);
    (config.redirect_fresh_ns == 0 || age <= config.redirect_fresh_ns) && !controller_gone(config, age)
}

/// What every redirect checks first: the configuration, the entry port,
/// the frame's VLAN as the bridge decides it, and fresh lists at `now`.
struct Redirect {
    config: &'static DatapathConfig,
    ingress: u32,
    vlan: Option<FrameVlan>,
    now: u64,
}

/// None: the frame takes the bridge path.
#[inline(always)]
fn redirect_start(ctx: &TcContext, family: u8) -> Option<Redirect> {
    let config = config()?;
    let ingress = ifindex(ctx);
    let vlan = redirect_vlan(ctx, config, family, ingress)?;
    let now = coarse_now_ns();
    lists_fresh(config, now).then_some(Redirect { config, ingress, vlan, now })
}

/// Copies a registered group's packet to its ports and consumes the original,
/// so the bridge never clones it for ports that would only drop it. When the
/// list ends with a veth port whose peer is in another namespace, that port
/// gets the original itself, handed to the peer's ingress: one clone, one
/// transmit and one backlog pass fewer. Anything else (unregistered groups,
/// more ports than MAX_FANOUT, no controller) takes the bridge path. On a
/// VLAN-aware bridge the group's list is its VLAN's, the frame's VLAN is
/// checked as the bridge would, and each copy is tagged as its port's
/// egress policy says.
#[inline(always)]
pub fn redirect_group(ctx: &TcContext, mut group: GroupKey, family: u8) -> i32 {
    let Some(Redirect { config, ingress, vlan, now }) = redirect_start(ctx, family) else { return VERDICT_NEXT };
    if let Some(vlan) = vlan {
        group.vlan = vlan.id();
    }
    // SAFETY: plain map lookup; the value is only read.
    let Some(mut ports) = (unsafe { SNOOP_GROUP_PORTS.get(group) }) else {
        return VERDICT_NEXT;
    };
    // A source-specific group: the packet's source may have its own list.
    if ports.by_source != 0 {
        let Some(source) = ip_source(ctx, family) else { return VERDICT_NEXT };
        // SAFETY: as above.
        if let Some(listed) = unsafe { SNOOP_SOURCE_GROUP_PORTS.get(SourceGroupKey { group, source }) } {
            ports = listed;
        }
    }
    if !source_port_allowed(config, ingress) {
        return VERDICT_NEXT;
    }
    let last = ports.ifindexes.get((ports.count as usize).wrapping_sub(1)).copied().unwrap_or(ingress);
    // The sender's own port never gets its packet back: else every copy is a clone.
    let last_to_peer = ports.last_to_peer != 0 && last != ingress;
    let clones = if last_to_peer { ports.count - 1 } else { ports.count };
    let mut copies = copy_to(ctx, ports, ingress, clones, vlan);
    if copies == 0 && ports.local == 0 && !last_to_peer {
        // No copy made (every one failed as a port vanished, or the sender's
        // is the only port): the bridge path delivers it, correctly if
        // slower (in a VLAN, tagged with it: as the bridge tags it too).
        return VERDICT_NEXT;
    }
    record_sender(ctx, ingress, group.vlan, now);
    let bytes = u64::from(ctx.len());
    if last_to_peer {
        // No egress program sees this copy: it leaves as its port says.
        if ports.untagged & UNTAGGED_LAST != 0 {
            untag(ctx);
        }
        // ...nor counts it: counted here.
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
    VERDICT_DROP
}

/// Reports and leaves (MLD: dones) go to router ports and the bridge device only (RFC
/// 4541 2.1.1), copied here instead of flooded by the bridge and dropped
/// again at every host port: on a VLAN-aware bridge, those of the VLAN.
#[inline(always)]
pub fn redirect_reports(ctx: &TcContext, family: u8) -> i32 {
    let Some(Redirect { config, ingress, vlan, now }) = redirect_start(ctx, family) else { return VERDICT_NEXT };
    let key = GroupKey::report_targets(family, vlan.map_or(VLAN_NONE, FrameVlan::id));
    // SAFETY: plain map lookup; the value is only read.
    let Some(targets) = (unsafe { SNOOP_GROUP_PORTS.get(key) }) else {
        return VERDICT_NEXT;
    };
    if !source_port_allowed(config, ingress) {
        return VERDICT_NEXT;
    }
    record_sender(ctx, ingress, key.vlan, now);
    let copies = copy_to(ctx, targets, ingress, targets.count, vlan);
    count_n(Counter::RedirectCopies, u64::from(copies));
    VERDICT_DROP
}

/// Gives the frame its VLAN's tag, as the bridge does at its ingress: a
/// priority tag becomes the PVID's, an untagged frame gets it.
#[inline(always)]
fn retag(ctx: &TcContext, vlan: FrameVlan) {
    // SAFETY: plain helper calls on the program's own packet. The pop
    // (nothing to pop for an untagged frame) keeps the push from moving a
    // tag already there into the payload.
    unsafe {
        bpf_skb_vlan_pop(ctx.skb.skb);
        bpf_skb_vlan_push(ctx.skb.skb, ETH_P_8021Q.to_be(), vlan.tci);
    }
}

/// Clones the frame to the bridge device if listed, and to the first
/// `limit` ports in `ports` but the one it came from. Returns the copies
/// made to bridge ports. In a VLAN (`vlan`) the bridge device's copy is
/// tagged as [`GroupPorts::untagged`] says, and the rest (the original
/// too) leave tagged with it: the ports' egress programs untag them as the
/// ports' policies say.
#[inline(always)]
fn copy_to(ctx: &TcContext, ports: &GroupPorts, ingress: u32, limit: u32, vlan: Option<FrameVlan>) -> u32 {
    // The tag changes before the loop (a change in it would multiply the
    // verifier's work by its 32 iterations), and nothing after it asks
    // for the VLAN (else it explores the loop once per kind of VLAN).
    match vlan {
        Some(vlan) if ports.untagged & UNTAGGED_LOCAL != 0 => {
            untag(ctx);
            copy_to_local(ctx, ports);
            retag(ctx, vlan);
        }
        Some(vlan) => {
            if !vlan.tagged {
                retag(ctx, vlan);
            }
            copy_to_local(ctx, ports);
        }
        None => copy_to_local(ctx, ports),
    }
    // Failures are counted, not copies: a failed helper call's result is
    // negative, and its sign bit counts it without a branch (BPF has no
    // conditional set: a comparison would be one, and it would give the
    // count a known value on each path, which the verifier then tells apart).
    let mut failed = 0u32;
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
        // otherwise: each branch multiplies the verifier's work by the 32
        // iterations (so would any change to the tag: done outside the loop).
        let target = if target == ingress { 0 } else { target };
        // SAFETY: plain helper call on the program's own packet.
        let result = unsafe { bpf_clone_redirect(ctx.skb.skb, target, 0) };
        failed += (result as u64 >> 63) as u32;
    }
    limit.min(MAX_FANOUT as u32).saturating_sub(failed)
}

/// The bridge host's copy, into the bridge device's ingress.
#[inline(always)]
fn copy_to_local(ctx: &TcContext, ports: &GroupPorts) {
    if ports.local != 0 {
        // SAFETY: plain helper call on the program's own packet.
        unsafe { bpf_clone_redirect(ctx.skb.skb, ports.local, BPF_F_INGRESS) };
    }
}

/// Takes the frame's tag off (none to take off: nothing happens).
#[inline(always)]
fn untag(ctx: &TcContext) {
    // SAFETY: plain helper call on the program's own packet.
    unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
}
