//! The egress decision, for frames the bridge sends out of a port: group
//! traffic only to member and router ports, reports only to router ports.
//! Nothing is pruned while no querier is present or the controller is gone.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use snoop_common::{
    wire::{is_igmp_report, is_ipv4_link_local_group, is_ipv4_multicast, IPPROTO_IGMP},
    Counter, DatapathConfig, GroupKey, PortGroupKey, CONFIG_FLOOD_UNREGISTERED, CONFIG_NO_QUERIER, PORT_GETS_REPORTS,
    PORT_ROUTER, PORT_UNPRUNED, VLAN_NONE,
};

use crate::{
    config::{config, controller_gone, heartbeat_age_ns},
    counters::{count, count_traffic},
    maps::{SNOOP_GROUPS, SNOOP_GROUP_TRAFFIC, SNOOP_MEMBERS, SNOOP_MEMBER_TRAFFIC, SNOOP_PORTS, SNOOP_PORT_TRAFFIC},
    packet::{ifindex, igmp_type, ipv4_head, Ipv4Head},
};

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    let Some(ip) = ipv4_head(ctx) else {
        return TC_ACT_OK;
    };
    // Group traffic is what goes to a multicast MAC (the bridge forwards
    // the rest by its MAC, or floods broadcast).
    if !is_ipv4_multicast(ip.dst) || !ip.to_group_mac {
        return TC_ACT_OK;
    }
    let ifindex = ifindex(ctx);
    if ip.protocol == IPPROTO_IGMP {
        return igmp_egress(ctx, &ip, ifindex);
    }
    if is_ipv4_link_local_group(ip.dst) {
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
    if port.flags & (PORT_ROUTER | PORT_UNPRUNED) != 0 {
        count(Counter::DataForwarded);
        count_traffic(&SNOOP_PORT_TRAFFIC, port.traffic_slot, 1, bytes, true);
        return TC_ACT_OK;
    }
    let config = config();
    let group = SNOOP_GROUPS.get_ptr(&key.group);
    let flood_unregistered = config.is_none_or(|c| c.flags & CONFIG_FLOOD_UNREGISTERED != 0);
    // Only checked on the prune path: forwarding costs nothing extra.
    let forward = if let Some(reason) = config.and_then(unpruned_reason) {
        count(reason);
        true
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
        TC_ACT_OK
    } else {
        TC_ACT_SHOT
    }
}

/// Why nothing may be pruned now, if so: no querier is present, or the
/// controller is gone (failsafe).
#[inline(always)]
fn unpruned_reason(config: &DatapathConfig) -> Option<Counter> {
    if config.flags & CONFIG_NO_QUERIER != 0 {
        Some(Counter::NoQuerierFlooded)
    } else if controller_gone(config, heartbeat_age_ns(config)) {
        Some(Counter::FailsafeFlooded)
    } else {
        None
    }
}

/// Reports and leaves go to router ports only (and to trusted ports while
/// no router port is known); queries and unknown IGMP types are flooded
/// (RFC 4541 2.1.1 (1) and (3)). With nothing pruned, reports flood too.
#[inline(always)]
fn igmp_egress(ctx: &TcContext, ip: &Ipv4Head, ifindex: u32) -> i32 {
    // SAFETY: plain map lookup.
    let gets_reports = match unsafe { SNOOP_PORTS.get(ifindex) } {
        Some(port) => port.flags & (PORT_ROUTER | PORT_GETS_REPORTS) != 0,
        None => return TC_ACT_OK, // not managed
    };
    let Some(igmp_type) = igmp_type(ctx, ip) else {
        return TC_ACT_OK; // too short to be a report: flood like unknown IGMP
    };
    if is_igmp_report(igmp_type) && !gets_reports {
        if let Some(reason) = config().and_then(unpruned_reason) {
            count(reason);
            return TC_ACT_OK;
        }
        count(Counter::ReportsSuppressed);
        return TC_ACT_SHOT;
    }
    TC_ACT_OK
}
