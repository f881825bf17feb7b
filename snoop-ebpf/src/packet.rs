//! Reading the few header fields the programs decide on, with direct packet
//! access.
use aya_ebpf::programs::TcContext;
use snoop_common::{
    wire::{ETH_HLEN, ETH_P_IP},
    Counter,
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

/// `None` for anything but an IPv4 frame with a readable header.
#[inline(always)]
pub fn ipv4_head(ctx: &TcContext) -> Option<Ipv4Head> {
    let data = ctx.data();
    let data_end = ctx.data_end();
    if data + ETH_HLEN + 20 > data_end {
        // Short linear area (or a runt frame): not worth a pull for non-IP.
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = u16::from_be(unsafe { *((data + 12) as *const u16) });
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
    // SAFETY: as above (the MAC is the frame's first 6 bytes).
    let (first, mac_head, mac_tail) =
        unsafe { (*(data as *const u8), *(data as *const u32), *((data + 4) as *const u16)) };
    let broadcast = mac_head == u32::MAX && mac_tail == u16::MAX;
    let to_group_mac = first & 1 != 0 && !broadcast;
    Some(Ipv4Head { dst, protocol, header_len, to_group_mac })
}

/// The IGMP message type, if the frame is long enough to hold one.
#[inline(always)]
pub fn igmp_type(ctx: &TcContext, ip: &Ipv4Head) -> Option<u8> {
    ctx.load::<u8>(ETH_HLEN + ip.header_len).ok()
}
