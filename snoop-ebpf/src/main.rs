//! snoop data path: two TC programs on every port of a bridge.
//!
//! Both take a frame's class from the one classifier ([`classify`]).
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
mod classify;
mod config;
mod counters;
mod forward;
mod maps;
mod packet;
mod prune;

use aya_ebpf::{macros::classifier, programs::TcContext};
use snoop_common::{
    wire::{is_igmp_report, is_mld_report, ControlKind},
    Counter, FAMILY_IPV4, VERDICT_NEXT,
};

use crate::{
    classify::{classify, Class},
    counters::{count, count_port_control},
};

#[classifier]
pub fn snoop_ingress(ctx: TcContext) -> i32 {
    let frame = classify(&ctx);
    match frame.class {
        Class::Control { family, message } => {
            let (kind, report) = if family == FAMILY_IPV4 {
                count(Counter::IgmpSeen);
                (ControlKind::of_igmp(message), is_igmp_report(message))
            } else {
                count(Counter::MldSeen);
                (ControlKind::of_mld(message), is_mld_report(message))
            };
            count_port_control(&ctx, kind);
            capture::capture_within_rate(&ctx, family);
            if report && frame.to_group_mac {
                return forward::redirect_reports(&ctx, family);
            }
            VERDICT_NEXT
        }
        Class::PimHello { family } => {
            count(Counter::PimSeen);
            count_port_control(&ctx, ControlKind::PimHello);
            capture::capture_within_rate(&ctx, family);
            VERDICT_NEXT
        }
        Class::Group { group, family } if frame.to_group_mac => forward::redirect_group(&ctx, group, family),
        Class::Group { .. } | Class::Flooded | Class::Other => VERDICT_NEXT,
    }
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
