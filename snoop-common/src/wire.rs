//! Wire constants both the eBPF programs and the userspace parsers use.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
/// The fixed IPv6 header (RFC 8200 3).
pub const IPV6_HLEN: usize = 40;

pub const IPPROTO_IGMP: u8 = 2;
pub const IPPROTO_PIM: u8 = 103;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_ICMPV6: u8 = 58;

/// IPv6 extension headers between the fixed header and MLD (RFC 8200 4):
/// MLD rides behind a hop-by-hop header carrying Router Alert (RFC 3810 5).
pub const IPV6_HOP_BY_HOP: u8 = 0;
pub const IPV6_ROUTING: u8 = 43;
pub const IPV6_FRAGMENT: u8 = 44;
pub const IPV6_DESTINATION_OPTIONS: u8 = 60;
/// Extension headers the data path walks past looking for MLD; a chain
/// longer than this is no control message (and the verifier needs a bound).
pub const MAX_IPV6_EXTENSION_HEADERS: usize = 4;
/// The hop-by-hop option Router Alert (RFC 2711), value 0: MLD.
pub const IPV6_OPTION_ROUTER_ALERT: u8 = 5;

/// MLD message types (ICMPv6, RFC 2710 3, RFC 3810 5).
pub const MLD_QUERY: u8 = 130;
pub const MLD_V1_REPORT: u8 = 131;
pub const MLD_V1_DONE: u8 = 132;
pub const MLD_V2_REPORT: u8 = 143;
/// Multicast router discovery on IPv6 (RFC 4286 3): ICMPv6 types.
pub const MLD_MRD_ADVERTISEMENT: u8 = 151;
pub const MLD_MRD_SOLICITATION: u8 = 152;
pub const MLD_MRD_TERMINATION: u8 = 153;

/// IGMP message types (RFC 3376 4, RFC 2236 2).
pub const IGMP_QUERY: u8 = 0x11;
pub const IGMP_V1_REPORT: u8 = 0x12;
pub const IGMP_V2_REPORT: u8 = 0x16;
pub const IGMP_V2_LEAVE: u8 = 0x17;
pub const IGMP_V3_REPORT: u8 = 0x22;
/// Multicast router discovery (RFC 4286 3): IGMP types on IPv4.
pub const IGMP_MRD_ADVERTISEMENT: u8 = 0x30;
pub const IGMP_MRD_SOLICITATION: u8 = 0x31;
pub const IGMP_MRD_TERMINATION: u8 = 0x32;
/// PIMv2 hello: version 2, type 0 (RFC 7761 4.9).
pub const PIM_HELLO: u8 = 0x20;

/// 224.0.0.1, the destination of general queries.
pub const IPV4_ALL_SYSTEMS: [u8; 4] = [224, 0, 0, 1];
/// 224.0.0.2, the destination of router discovery solicitations.
pub const IPV4_ALL_ROUTERS: [u8; 4] = [224, 0, 0, 2];
/// 224.0.0.13, the destination of PIM hellos.
pub const IPV4_ALL_PIM_ROUTERS: [u8; 4] = [224, 0, 0, 13];
/// 224.0.0.22, the destination of IGMPv3 reports.
pub const IPV4_IGMPV3_ROUTERS: [u8; 4] = [224, 0, 0, 22];

/// ff02::1, all nodes: the destination of general queries, always flooded.
pub const IPV6_ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// ff02::2, all routers: the destination of MLDv1 dones and router discovery solicitations.
pub const IPV6_ALL_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
/// ff02::d, the destination of PIM hellos.
pub const IPV6_ALL_PIM_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0d];
/// ff02::16, the destination of MLDv2 reports.
pub const IPV6_MLDV2_ROUTERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
/// ff02::6a, all snoopers: the destination of router discovery advertisements.
pub const IPV6_ALL_SNOOPERS: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x6a];

/// A membership report or leave: sent to routers only (RFC 4541 2.1.1).
#[inline(always)]
pub const fn is_igmp_report(igmp_type: u8) -> bool {
    matches!(igmp_type, IGMP_V1_REPORT | IGMP_V2_REPORT | IGMP_V3_REPORT | IGMP_V2_LEAVE)
}

/// An MLD report or done: sent to routers only, as IGMP's.
#[inline(always)]
pub const fn is_mld_report(icmp_type: u8) -> bool {
    matches!(icmp_type, MLD_V1_REPORT | MLD_V2_REPORT | MLD_V1_DONE)
}

/// The ICMPv6 types snoop hands to the controller: MLD and router discovery.
#[inline(always)]
pub const fn is_mld_control(icmp_type: u8) -> bool {
    matches!(
        icmp_type,
        MLD_QUERY
            | MLD_V1_REPORT
            | MLD_V1_DONE
            | MLD_V2_REPORT
            | MLD_MRD_ADVERTISEMENT
            | MLD_MRD_SOLICITATION
            | MLD_MRD_TERMINATION
    )
}

/// What a control frame is, as the per-port counters count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlKind {
    Query,
    Report,
    Leave,
    PimHello,
    Other,
}

impl ControlKind {
    #[inline(always)]
    pub const fn of_igmp(igmp_type: u8) -> Self {
        match igmp_type {
            IGMP_QUERY => Self::Query,
            IGMP_V1_REPORT | IGMP_V2_REPORT | IGMP_V3_REPORT => Self::Report,
            IGMP_V2_LEAVE => Self::Leave,
            _ => Self::Other,
        }
    }

    #[inline(always)]
    pub const fn of_mld(icmp_type: u8) -> Self {
        match icmp_type {
            MLD_QUERY => Self::Query,
            MLD_V1_REPORT | MLD_V2_REPORT => Self::Report,
            MLD_V1_DONE => Self::Leave,
            _ => Self::Other,
        }
    }
}

/// Link-scope IPv6 groups (ff02::/16, and the interface-local ff01::/16 that
/// never reaches a wire): flooded unless snooping them is asked for.
/// Neighbour discovery (solicited-node ff02::1:ffXX:XXXX), routers (ff02::2),
/// DHCPv6 (ff02::1:2) and mDNS (ff02::fb) live here.
#[inline(always)]
pub const fn is_ipv6_link_scope_group(addr: &[u8; 16]) -> bool {
    addr[0] == 0xff && addr[1] & 0x0f <= 2
}

/// ff02::1: always flooded (RFC 4541 3).
#[inline(always)]
pub const fn is_ipv6_all_nodes(addr: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if addr[i] != IPV6_ALL_NODES[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// 224.0.0.0/24, the local network control block: always flooded (RFC 4541 2.1.2).
#[inline(always)]
pub const fn is_ipv4_link_local_group(addr: [u8; 4]) -> bool {
    addr[0] == 224 && addr[1] == 0 && addr[2] == 0
}

/// 224.0.0.0/4.
#[inline(always)]
pub const fn is_ipv4_multicast(addr: [u8; 4]) -> bool {
    addr[0] & 0xf0 == 0xe0
}

/// IPv4 groups snoop tracks per port: multicast but 224.0.0.0/24, which is
/// always flooded (RFC 4541 2.1.2).
#[inline(always)]
pub const fn is_snooped_ipv4(addr: [u8; 4]) -> bool {
    is_ipv4_multicast(addr) && !is_ipv4_link_local_group(addr)
}

/// IPv6 groups snoop tracks per port: multicast but ff02::1 (RFC 4541 3)
/// and interface-local ones (ff01::/16, which never leave a host), and
/// link-scope ones only when asked (`link_scope`): neighbour discovery,
/// DHCPv6 and mDNS must not depend on snooping having heard every host.
#[inline(always)]
pub const fn is_snooped_ipv6(addr: &[u8; 16], link_scope: bool) -> bool {
    addr[0] == 0xff
        && !is_ipv6_all_nodes(addr)
        && addr[1] & 0x0f != 1
        && (link_scope || !is_ipv6_link_scope_group(addr))
}

/// The multicast MAC of an IPv4 group (RFC 1112 6.4): 01:00:5e and its
/// low 23 bits, so 32 groups share each MAC.
pub const fn ipv4_group_mac(addr: [u8; 4]) -> [u8; 6] {
    [0x01, 0x00, 0x5e, addr[1] & 0x7f, addr[2], addr[3]]
}

/// The multicast MAC of an IPv6 group (RFC 2464 7): 33:33 and its low 32 bits.
pub const fn ipv6_group_mac(addr: &[u8; 16]) -> [u8; 6] {
    [0x33, 0x33, addr[12], addr[13], addr[14], addr[15]]
}
