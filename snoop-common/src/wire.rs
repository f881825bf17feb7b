//! Wire constants both the eBPF programs and the userspace parsers use.

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;

pub const IPPROTO_IGMP: u8 = 2;
pub const IPPROTO_PIM: u8 = 103;

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

/// A membership report or leave: sent to routers only (RFC 4541 2.1.1).
#[inline(always)]
pub const fn is_igmp_report(igmp_type: u8) -> bool {
    matches!(igmp_type, IGMP_V1_REPORT | IGMP_V2_REPORT | IGMP_V3_REPORT | IGMP_V2_LEAVE)
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
