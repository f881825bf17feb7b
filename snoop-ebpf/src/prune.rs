//! The egress decision, for frames the bridge sends out of a port: group
//! traffic only to member and router ports, reports only to router ports.
//! Nothing is pruned while no querier is present or the controller is gone.
use aya_ebpf::{helpers::bpf_skb_vlan_pop, programs::TcContext};
use snoop_common::{
    gets_reports_flag, no_querier_flag, router_flag,
    wire::{is_igmp_report, is_mld_report},
    Counter, DatapathConfig, GroupKey, PortGroupKey, PortValue, SourceKey, VlanPortKey, CONFIG_FLOOD_UNREGISTERED,
    CONFIG_VLAN_AWARE, FAMILY_IPV4, MAX_SSM_RANGES, MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, PORT_UNPRUNED,
    PORT_VLAN_FLAGS, VERDICT_DROP, VERDICT_NEXT, VLAN_NONE,
};

use crate::{
    classify::{classify, Class},
    config::{config, controller_gone, heartbeat_age_ns},
    counters::{count, count_traffic},
    maps::{
        SNOOP_GROUPS, SNOOP_GROUP_TRAFFIC, SNOOP_MEMBERS, SNOOP_MEMBER_TRAFFIC, SNOOP_PORTS, SNOOP_PORT_TRAFFIC,
        SNOOP_SOURCES, SNOOP_SSM_RANGES, SNOOP_VLANS, SNOOP_VLAN_PORTS,
    },
    packet::{ifindex, ip_source, tagged_vlan},
};

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let frame = classify(ctx);
    // Group traffic is what goes to a multicast MAC (the bridge forwards
    // the rest by its MAC, or floods broadcast).
    if !frame.to_group_mac {
        return VERDICT_NEXT;
    }
    match frame.class {
        Class::Control { family, message } => {
            let is_report = if family == FAMILY_IPV4 { is_igmp_report(message) } else { is_mld_report(message) };
            let ifindex = ifindex(ctx);
            report_egress(is_report, ifindex, family, egress_vlan(ctx, ifindex))
        }
        Class::Flooded => {
            count(Counter::LinkLocalFlooded);
            VERDICT_NEXT
        }
        Class::Group { mut group, family } => {
            let ifindex = ifindex(ctx);
            let vlan = egress_vlan(ctx, ifindex);
            group.vlan = vlan.unwrap_or(VLAN_NONE);
            data_egress(ctx, group, ifindex, family, vlan)
        }
        Class::PimHello { .. } | Class::Other => VERDICT_NEXT,
    }
}

/// The VLAN a frame leaving through `ifindex` is in on a VLAN-aware
/// bridge: its tag's, or the port's untagged VLAN. None on a bridge that
/// is not VLAN-aware. A frame tagged with the port's untagged VLAN is a
/// redirect copy (the bridge's egress untags those): untagged here, as
/// the bridge would.
#[inline(always)]
fn egress_vlan(ctx: &TcContext, ifindex: u32) -> Option<u16> {
    if config().is_none_or(|c| c.flags & CONFIG_VLAN_AWARE == 0) {
        return None;
    }
    // SAFETY: plain map lookup.
    let untagged = unsafe { SNOOP_PORTS.get(ifindex) }.map_or(VLAN_NONE, |port| port.untagged_vlan);
    match tagged_vlan(ctx) {
        Some(vlan) if vlan == untagged => {
            // SAFETY: plain helper call on the program's own packet.
            unsafe { bpf_skb_vlan_pop(ctx.skb.skb) };
            Some(vlan)
        }
        Some(vlan) => Some(vlan),
        None => Some(untagged),
    }
}

/// The port's flags for a frame in `vlan`: on a VLAN-aware bridge its
/// router and report flags are those it has in that VLAN.
#[inline(always)]
fn port_flags(port: &PortValue, ifindex: u32, vlan: Option<u16>) -> u32 {
    let Some(vlan) = vlan else { return port.flags };
    // SAFETY: plain map lookup.
    let in_vlan = unsafe { SNOOP_VLAN_PORTS.get(&VlanPortKey::new(vlan, ifindex)) }.copied().unwrap_or(0);
    port.flags & !PORT_VLAN_FLAGS | in_vlan & PORT_VLAN_FLAGS
}

/// Group traffic: to member ports that want its source, and router ports.
#[inline(always)]
fn data_egress(ctx: &TcContext, group: GroupKey, ifindex: u32, family: u8, vlan: Option<u16>) -> i32 {
    let bytes = u64::from(ctx.len());
    let key = PortGroupKey { group, ifindex };
    // The common case first: a member port, one hash lookup (and a second
    // only when the membership names sources).
    let mut source_filtered = false;
    if let Some(member) = SNOOP_MEMBERS.get_ptr(&key) {
        // SAFETY: a map value pointer from a successful lookup.
        let (flags, slot) = unsafe { ((*member).flags, (*member).traffic_slot) };
        if flags & (MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE) == 0 || source_wanted(ctx, &key, flags, family) {
            count(Counter::DataForwarded);
            count_traffic(&SNOOP_MEMBER_TRAFFIC, slot, 1, bytes, true);
            return VERDICT_NEXT;
        }
        source_filtered = true;
    }
    // SAFETY: as above.
    let Some(port) = (unsafe { SNOOP_PORTS.get(ifindex) }) else {
        // Not a port snoop manages (yet): leave the bridge's decision alone.
        return VERDICT_NEXT;
    };
    if port_flags(port, ifindex, vlan) & (router_flag(family) | PORT_UNPRUNED) != 0 {
        count(Counter::DataForwarded);
        count_traffic(&SNOOP_PORT_TRAFFIC, port.traffic_slot, 1, bytes, true);
        return VERDICT_NEXT;
    }
    let config = config();
    let group = SNOOP_GROUPS.get_ptr(&key.group);
    let flood_unregistered = config.is_none_or(|c| c.flags & CONFIG_FLOOD_UNREGISTERED != 0);
    // Only checked on the prune path: forwarding costs nothing extra.
    let forward = if let Some(reason) = config.and_then(|c| unpruned_reason(c, family, vlan)) {
        count(reason);
        true
    } else if source_filtered {
        count(Counter::SourcePruned);
        false
    } else if group.is_none() && is_ssm(&key.group) {
        count(Counter::SsmUnrequestedDropped);
        false
    } else if group.is_none() && flood_unregistered {
        count(Counter::UnregisteredFlooded);
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
        VERDICT_NEXT
    } else {
        VERDICT_DROP
    }
}

/// Whether a source-specific membership wants the packet's source: listed
/// in INCLUDE mode, not listed in EXCLUDE mode. A packet whose source cannot
/// be read is forwarded.
#[inline(always)]
fn source_wanted(ctx: &TcContext, member: &PortGroupKey, flags: u8, family: u8) -> bool {
    let Some(source) = ip_source(ctx, family) else { return true };
    // SAFETY: plain map lookup; the value is not read.
    let listed = unsafe { SNOOP_SOURCES.get(&SourceKey { member: *member, source }) }.is_some();
    listed == (flags & MEMBER_SOURCES_INCLUDE != 0)
}

/// A group of a source-specific multicast range: nobody asked for a
/// source of it, so nobody gets it (RFC 4607).
#[inline(always)]
fn is_ssm(group: &GroupKey) -> bool {
    for index in 0..MAX_SSM_RANGES {
        match SNOOP_SSM_RANGES.get(index) {
            Some(range) if range.contains(group) => return true,
            _ => {}
        }
    }
    false
}

/// Why nothing of `family` (in `vlan`, on a VLAN-aware bridge) may be
/// pruned now, if so: no querier is present, or the controller is gone
/// (failsafe).
#[inline(always)]
fn unpruned_reason(config: &DatapathConfig, family: u8, vlan: Option<u16>) -> Option<Counter> {
    let no_querier = match vlan {
        // SAFETY: plain map lookup.
        Some(vlan) => unsafe { SNOOP_VLANS.get(&vlan) }.is_none_or(|flags| flags & no_querier_flag(family) != 0),
        None => config.flags & no_querier_flag(family) != 0,
    };
    if no_querier {
        Some(Counter::NoQuerierFlooded)
    } else if controller_gone(config, heartbeat_age_ns(config)) {
        Some(Counter::FailsafeFlooded)
    } else {
        None
    }
}

/// Reports and leaves go to router ports only (and to the ports named
/// trusted while no router port is known); queries and unknown types are
/// flooded (RFC 4541 2.1.1 (1) and (3)). Reports flood only with the
/// controller gone: with no querier present they still go to no host, for
/// an IGMPv2 or MLDv1 host hearing another's report suppresses its own
/// (and then never sends its leave).
#[inline(always)]
fn report_egress(is_report: bool, ifindex: u32, family: u8, vlan: Option<u16>) -> i32 {
    // SAFETY: plain map lookup.
    let gets_reports = match unsafe { SNOOP_PORTS.get(ifindex) } {
        Some(port) => port_flags(port, ifindex, vlan) & (router_flag(family) | gets_reports_flag(family)) != 0,
        None => return VERDICT_NEXT, // not managed
    };
    if is_report && !gets_reports {
        if config().is_some_and(|c| controller_gone(c, heartbeat_age_ns(c))) {
            count(Counter::FailsafeFlooded);
            return VERDICT_NEXT;
        }
        count(Counter::ReportsSuppressed);
        return VERDICT_DROP;
    }
    VERDICT_NEXT
}
