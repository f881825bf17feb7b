//! What a frame is, decided once for both programs: control for the
//! controller, a group's traffic, traffic of a group always flooded, or
//! the bridge's business alone.
use aya_ebpf::programs::TcContext;
use snoop_common::{
    wire::{
        is_ipv4_multicast, is_mld_control, is_snooped_ipv4, is_snooped_ipv6, IPPROTO_ICMPV6, IPPROTO_IGMP, IPPROTO_PIM,
        IPPROTO_UDP, IPV4_ALL_PIM_ROUTERS, IPV6_ALL_PIM_ROUTERS,
    },
    GroupKey, CONFIG_SNOOP_IPV6_LINK_SCOPE, FAMILY_IPV4, FAMILY_IPV6, VLAN_NONE,
};

use crate::{
    config::config,
    packet::{icmpv6_type, igmp_type, ip_head, ipv6_upper_layer, IpHead},
};

/// What a frame is.
pub enum Class {
    /// IGMP (of `message` type; 0xff when too short to hold one), or MLD and
    /// IPv6 router discovery.
    Control { family: u8, message: u8 },
    /// A PIM hello, IPv4 or IPv6.
    PimHello { family: u8 },
    /// Traffic to a group that is always flooded: 224.0.0.0/24, and
    /// link-scope IPv6 unless snooping those was asked for.
    Flooded,
    /// A snooped group's traffic (outside any VLAN: the hooks add it).
    Group { group: GroupKey, family: u8 },
    /// Anything else: the bridge's alone.
    Other,
}

/// A frame's class, and whether it goes to a multicast MAC (not broadcast):
/// only such frames are group traffic to the bridge, which forwards the
/// rest by its MAC.
pub struct Frame {
    pub class: Class,
    pub to_group_mac: bool,
}

/// The class of the frame in `ctx`. IPv6 counts only to a multicast MAC
/// (33:33); IPv4 control counts whatever its MAC.
#[inline(always)]
pub fn classify(ctx: &TcContext) -> Frame {
    match ip_head(ctx) {
        Some(IpHead::V4(ip)) => {
            let class = if ip.protocol == IPPROTO_IGMP {
                Class::Control { family: FAMILY_IPV4, message: igmp_type(ctx, &ip).unwrap_or(0xff) }
            } else if ip.protocol == IPPROTO_PIM && ip.dst == IPV4_ALL_PIM_ROUTERS {
                Class::PimHello { family: FAMILY_IPV4 }
            } else if is_snooped_ipv4(ip.dst) {
                Class::Group { group: GroupKey::ipv4(ip.dst, VLAN_NONE), family: FAMILY_IPV4 }
            } else if is_ipv4_multicast(ip.dst) {
                Class::Flooded
            } else {
                Class::Other
            };
            Frame { class, to_group_mac: ip.to_group_mac }
        }
        Some(IpHead::V6(ip)) => {
            if ip.dst[0] != 0xff || !ip.to_group_mac {
                return Frame { class: Class::Other, to_group_mac: ip.to_group_mac };
            }
            // UDP (group traffic) costs no walk; a chain of extension
            // headers longer than the walk is no control message.
            if ip.next_header != IPPROTO_UDP {
                match ipv6_upper_layer(ctx, &ip) {
                    Some((IPPROTO_ICMPV6, offset)) => {
                        if let Some(message) = icmpv6_type(ctx, offset).filter(|t| is_mld_control(*t)) {
                            return Frame {
                                class: Class::Control { family: FAMILY_IPV6, message },
                                to_group_mac: true,
                            };
                        }
                    }
                    Some((IPPROTO_PIM, _)) if ip.dst == IPV6_ALL_PIM_ROUTERS => {
                        return Frame { class: Class::PimHello { family: FAMILY_IPV6 }, to_group_mac: true };
                    }
                    _ => {}
                }
            }
            let link_scope = config().is_some_and(|c| c.flags & CONFIG_SNOOP_IPV6_LINK_SCOPE != 0);
            let class = if is_snooped_ipv6(&ip.dst, link_scope) {
                Class::Group { group: GroupKey::ipv6(ip.dst, VLAN_NONE), family: FAMILY_IPV6 }
            } else {
                Class::Flooded
            };
            Frame { class, to_group_mac: true }
        }
        None => Frame { class: Class::Other, to_group_mac: false },
    }
}
