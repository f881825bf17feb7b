//! snoop data path: two TC programs on every port of a bridge.
//!
//! - `snoop_ingress` sees frames entering the bridge from a port. It hands
//!   IGMP, MLD and PIM hellos to the controller ([`capture`]), and in redirect mode
//!   copies joined groups' traffic straight to their member and router ports
//!   ([`forward`]).
//! - `snoop_egress` sees frames the bridge sends out of a port. It drops
//!   group traffic the port has no member or router for, and reports/leaves
//!   to host ports (so every host keeps reporting, RFC 4541 2.1.1) ([`prune`]).
//!
//! Both hand every frame they do not drop or consume on to what follows
//! them on the hook ([`snoop_common::VERDICT_NEXT`]), so the operator's own
//! tc programs and filters still see it; redirect copies nothing past them
//! (a port with any after snoop's ingress program takes the bridge path).
//!
//! Membership lives in maps the controller writes ([`maps`]); nothing here
//! parses IGMP or MLD beyond the message type ([`packet`]), so there is exactly
//! one parser of each (userspace). Every decision is counted ([`counters`]).
#![no_std]
#![no_main]

mod capture;
mod config;
mod counters;
mod forward;
mod maps;
mod packet;
mod prune;

use aya_ebpf::{macros::classifier, programs::TcContext};
use snoop_common::{
    wire::{
        is_igmp_report, is_ipv4_link_local_group, is_ipv4_multicast, is_mld_control, is_mld_report, ControlKind,
        IPPROTO_ICMPV6, IPPROTO_IGMP, IPPROTO_PIM, IPV4_ALL_PIM_ROUTERS, IPV6_ALL_PIM_ROUTERS,
    },
    Counter, GroupKey, FAMILY_IPV4, FAMILY_IPV6, VERDICT_NEXT, VLAN_NONE,
};

use crate::{
    counters::{count, count_port_control},
    packet::{IpHead, Ipv4Head, Ipv6Head},
};

#[classifier]
pub fn snoop_ingress(ctx: TcContext) -> i32 {
    match packet::ip_head(&ctx) {
        Some(IpHead::V4(ip)) => ipv4_ingress(&ctx, &ip),
        Some(IpHead::V6(ip)) => ipv6_ingress(&ctx, &ip),
        None => VERDICT_NEXT,
    }
}

#[inline(always)]
fn ipv4_ingress(ctx: &TcContext, ip: &Ipv4Head) -> i32 {
    if ip.protocol == IPPROTO_IGMP {
        count(Counter::IgmpSeen);
        // Too short to hold a type: counted as other IGMP.
        let igmp_type = packet::igmp_type(ctx, ip).unwrap_or(0xff);
        count_port_control(ctx, ControlKind::of_igmp(igmp_type));
        capture::capture_within_rate(ctx);
        if is_igmp_report(igmp_type) && ip.to_group_mac {
            return forward::redirect_reports(ctx, FAMILY_IPV4);
        }
    } else if ip.protocol == IPPROTO_PIM && ip.dst == IPV4_ALL_PIM_ROUTERS {
        count(Counter::PimSeen);
        count_port_control(ctx, ControlKind::PimHello);
        capture::capture_within_rate(ctx);
    } else if ip.to_group_mac && is_ipv4_multicast(ip.dst) && !is_ipv4_link_local_group(ip.dst) {
        return forward::redirect_group(ctx, GroupKey::ipv4(ip.dst, VLAN_NONE), FAMILY_IPV4);
    }
    VERDICT_NEXT
}

/// MLD is found behind the extension headers (Router Alert rides in a
/// hop-by-hop header); anything else to a group is group traffic.
#[inline(always)]
fn ipv6_ingress(ctx: &TcContext, ip: &Ipv6Head) -> i32 {
    if !ip.to_group_mac || ip.dst[0] != 0xff {
        return VERDICT_NEXT;
    }
    let Some((protocol, offset)) = packet::ipv6_upper_layer(ctx, ip) else {
        return VERDICT_NEXT;
    };
    if protocol == IPPROTO_ICMPV6 {
        if let Some(icmp_type) = packet::icmpv6_type(ctx, offset).filter(|t| is_mld_control(*t)) {
            count(Counter::MldSeen);
            count_port_control(ctx, ControlKind::of_mld(icmp_type));
            capture::capture_within_rate(ctx);
            if is_mld_report(icmp_type) {
                return forward::redirect_reports(ctx, FAMILY_IPV6);
            }
            return VERDICT_NEXT;
        }
    } else if protocol == IPPROTO_PIM && ip.dst == IPV6_ALL_PIM_ROUTERS {
        count(Counter::PimSeen);
        count_port_control(ctx, ControlKind::PimHello);
        capture::capture_within_rate(ctx);
        return VERDICT_NEXT;
    }
    if prune::ipv6_flooded(&ip.dst) {
        return VERDICT_NEXT;
    }
    forward::redirect_group(ctx, GroupKey::ipv6(ip.dst, VLAN_NONE), FAMILY_IPV6)
}

#[classifier]
pub fn snoop_egress(ctx: TcContext) -> i32 {
    prune::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
