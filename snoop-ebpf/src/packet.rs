//! Reading the few header fields the programs decide on, with direct packet
//! access.
use aya_ebpf::programs::TcContext;
use snoop_common::{
    wire::{
        ETH_HLEN, ETH_P_8021Q, ETH_P_IP, ETH_P_IPV6, IPPROTO_UDP, IPV6_DESTINATION_OPTIONS, IPV6_HLEN, IPV6_HOP_BY_HOP,
        IPV6_ROUTING, MAX_IPV6_EXTENSION_HEADERS,
    },
    Counter, SourceAddr, FAMILY_IPV6, VLAN_VID_MASK,
};

use crate::counters::count;

/// The interface the frame is on: the port it entered through (ingress) or
/// leaves through (egress).
#[inline(always)]
pub fn ifindex(ctx: &TcContext) -> u32 {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    unsafe { (*ctx.skb.skb).ifindex }
}

/// The IPv4 header fields both programs need.
pub struct Ipv4Head {
    pub dst: [u8; 4],
    pub protocol: u8,
    pub header_len: usize,
    /// The destination MAC is a multicast one (not broadcast): only such
    /// frames are group traffic to the bridge. A multicast IP to a unicast
    /// or broadcast MAC is forwarded (or flooded) by its MAC, as the bridge does.
    pub to_group_mac: bool,
}

/// The IPv6 header fields both programs need.
pub struct Ipv6Head {
    pub dst: [u8; 16],
    /// The fixed header's next header (the first extension header, or UDP).
    pub next_header: u8,
    /// As [`Ipv4Head::to_group_mac`]; 33:33:xx:xx:xx:xx for IPv6 groups.
    pub to_group_mac: bool,
}

/// An IP frame's head, by family.
pub enum IpHead {
    V4(Ipv4Head),
    V6(Ipv6Head),
}

/// `None` for anything but an IP frame with a readable header.
#[inline(always)]
pub fn ip_head(ctx: &TcContext) -> Option<IpHead> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + ETH_HLEN + 20 > data_end {
        // Short linear area (or a runt frame): not worth a pull for non-IP.
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = u16::from_be(unsafe { *((data + 12) as *const u16) });
    if ethertype == ETH_P_IPV6 {
        return ipv6_head(ctx).map(IpHead::V6);
    }
    if ethertype != ETH_P_IP {
        return None;
    }
    let ip = data + ETH_HLEN;
    // SAFETY: within the 20 bytes checked above.
    let version_ihl = unsafe { *(ip as *const u8) };
    let header_len = ((version_ihl & 0x0f) as usize) * 4;
    if version_ihl >> 4 != 4 || header_len < 20 {
        count(Counter::MalformedIp);
        return None;
    }
    // SAFETY: as above.
    let protocol = unsafe { *((ip + 9) as *const u8) };
    let dst = unsafe { *((ip + 16) as *const [u8; 4]) };
    let to_group_mac = to_group_mac(data);
    Some(IpHead::V4(Ipv4Head { dst, protocol, header_len, to_group_mac }))
}

/// The destination MAC is a multicast one, not broadcast.
#[inline(always)]
fn to_group_mac(data: usize) -> bool {
    // SAFETY: callers checked the frame holds an Ethernet header.
    let (first, mac_head, mac_tail) =
        unsafe { (*(data as *const u8), *(data as *const u32), *((data + 4) as *const u16)) };
    let broadcast = mac_head == u32::MAX && mac_tail == u16::MAX;
    first & 1 != 0 && !broadcast
}

#[inline(always)]
fn ipv6_head(ctx: &TcContext) -> Option<Ipv6Head> {
    let data = ctx.data();
    if data + ETH_HLEN + IPV6_HLEN > ctx.data_end() {
        // An IPv6 frame without a whole header in the linear area: the
        // stack pulls headers only when it needs them.
        let head: [u8; IPV6_HLEN] = ctx.load(ETH_HLEN).ok()?;
        return ipv6_fields(&head, to_group_mac(data));
    }
    let ip = data + ETH_HLEN;
    // SAFETY: bounds checked above.
    let head = unsafe { &*(ip as *const [u8; IPV6_HLEN]) };
    ipv6_fields(head, to_group_mac(data))
}

#[inline(always)]
fn ipv6_fields(head: &[u8; IPV6_HLEN], to_group_mac: bool) -> Option<Ipv6Head> {
    if head[0] >> 4 != 6 {
        count(Counter::MalformedIp);
        return None;
    }
    let mut dst = [0u8; 16];
    dst.copy_from_slice(&head[24..40]);
    Some(Ipv6Head { dst, next_header: head[6], to_group_mac })
}

/// The upper-layer protocol of an IPv6 packet and its offset from the frame
/// start, past hop-by-hop, routing and destination options headers (at most
/// [`MAX_IPV6_EXTENSION_HEADERS`]). `None` when the chain is longer or runs
/// past the frame. UDP (group traffic) costs no walk.
#[inline(always)]
pub fn ipv6_upper_layer(ctx: &TcContext, ip: &Ipv6Head) -> Option<(u8, usize)> {
    let mut next = ip.next_header;
    let mut offset = ETH_HLEN + IPV6_HLEN;
    if next == IPPROTO_UDP {
        return Some((next, offset));
    }
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        if !matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS) {
            return Some((next, offset));
        }
        // Next header, then the header's length in 8-byte units beyond the first 8.
        let [following, length]: [u8; 2] = ctx.load(offset).ok()?;
        next = following;
        offset += (usize::from(length) + 1) * 8;
    }
    if matches!(next, IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS) {
        return None;
    }
    Some((next, offset))
}

/// The ICMPv6 type at `offset`, if the frame is long enough to hold one.
#[inline(always)]
pub fn icmpv6_type(ctx: &TcContext, offset: usize) -> Option<u8> {
    ctx.load::<u8>(offset).ok()
}

/// The IGMP message type, if the frame is long enough to hold one.
#[inline(always)]
pub fn igmp_type(ctx: &TcContext, ip: &Ipv4Head) -> Option<u8> {
    ctx.load::<u8>(ETH_HLEN + ip.header_len).ok()
}

/// The packet's source address as keys hold it. Read only when a decision
/// needs it (a source-specific group), so any-source traffic pays nothing.
#[inline(always)]
pub fn ip_source(ctx: &TcContext, family: u8) -> Option<SourceAddr> {
    if family == FAMILY_IPV6 {
        return ctx.load::<SourceAddr>(ETH_HLEN + 8).ok();
    }
    let [a, b, c, d]: [u8; 4] = ctx.load(ETH_HLEN + 12).ok()?;
    Some([a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
}

/// The VLAN tag of a frame, as the stack keeps it: out of the frame, in
/// the skb (moved there before tc sees the frame at ingress; left there by
/// the bridge for a port that sends the VLAN tagged, at egress). The one
/// reader of a frame's tag.
#[derive(Clone, Copy)]
pub struct VlanTag {
    /// The tag's control information: priority and VLAN id.
    pub tci: u16,
    /// An 802.1Q tag (else 802.1ad).
    pub ieee8021q: bool,
}

impl VlanTag {
    #[inline(always)]
    pub fn vid(self) -> u16 {
        self.tci & VLAN_VID_MASK
    }
}

/// The frame's tag, if it has one.
#[inline(always)]
pub fn vlan_tag(ctx: &TcContext) -> Option<VlanTag> {
    // SAFETY: ctx.skb.skb is the program's context pointer.
    let (present, proto, tci) = unsafe {
        let skb = ctx.skb.skb;
        ((*skb).vlan_present != 0, (*skb).vlan_proto as u16, (*skb).vlan_tci as u16)
    };
    present.then_some(VlanTag { tci, ieee8021q: u16::from_be(proto) == ETH_P_8021Q })
}

/// The VLAN of the frame's tag, if it has one. A priority tag (VLAN 0) is
/// no VLAN, as for the bridge.
#[inline(always)]
pub fn tagged_vlan(ctx: &TcContext) -> Option<u16> {
    vlan_tag(ctx).map(VlanTag::vid).filter(|vlan| *vlan != 0)
}
