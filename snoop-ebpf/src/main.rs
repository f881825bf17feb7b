//! snoop data path: two TC programs on every port of a bridge.
//!
//! - `snoop_ingress` sees frames entering the bridge from a port. It hands
//!   IGMP and PIM hellos to the controller ([`capture`]), and in redirect mode
//!   copies joined groups' traffic straight to their member and router ports
//!   ([`forward`]).
//! - `snoop_egress` sees frames the bridge sends out of a port. It drops
//!   group traffic the port has no member or router for, and reports/leaves
//!   to host ports (so every host keeps reporting, RFC 4541 2.1.1) ([`prune`]).
//!
//! Membership lives in maps the controller writes ([`maps`]); nothing here
//! parses IGMP beyond the message type ([`packet`]), so there is exactly one
//! IGMP parser (userspace). Every decision is counted ([`counters`]).
#![no_std]
#![no_main]

mod capture;
mod config;
mod counters;
mod forward;
mod maps;
mod packet;
mod prune;

use aya_ebpf::{bindings::TC_ACT_OK, macros::classifier, programs::TcContext};
use snoop_common::{
    wire::{
        is_igmp_report, is_ipv4_link_local_group, is_ipv4_multicast, IPPROTO_IGMP, IPPROTO_PIM, IPV4_ALL_PIM_ROUTERS,
    },
    Counter,
};

use crate::counters::{count, count_port_control};

#[classifier]
pub fn snoop_ingress(ctx: TcContext) -> i32 {
    let Some(ip) = packet::ipv4_head(&ctx) else { return TC_ACT_OK };
    if ip.protocol == IPPROTO_IGMP {
        count(Counter::IgmpSeen);
        // Too short to hold a type: counted as other IGMP.
        let igmp_type = packet::igmp_type(&ctx, &ip).unwrap_or(0xff);
        count_port_control(&ctx, Some(igmp_type));
        capture::capture_within_rate(&ctx);
        if is_igmp_report(igmp_type) && ip.to_group_mac {
            return forward::redirect_reports(&ctx);
        }
    } else if ip.protocol == IPPROTO_PIM && ip.dst == IPV4_ALL_PIM_ROUTERS {
        count(Counter::PimSeen);
        count_port_control(&ctx, None);
        capture::capture_within_rate(&ctx);
    } else if ip.to_group_mac && is_ipv4_multicast(ip.dst) && !is_ipv4_link_local_group(ip.dst) {
        return forward::redirect_group(&ctx, ip.dst);
    }
    TC_ACT_OK
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
