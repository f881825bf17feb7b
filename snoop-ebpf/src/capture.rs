//! Handing control frames (IGMP, PIM hellos) to the controller through the
//! event ring, within each port's rate limit.
use aya_ebpf::programs::TcContext;
use snoop_common::{
    wire::ETH_HLEN, CapturedFrame, Counter, CAPTURE_LEN, CONFIG_VLAN_AWARE, LARGE_CAPTURE_LEN, SMALL_CAPTURE_LEN,
    VLAN_NONE,
};

use crate::{
    config::config,
    counters::count,
    maps::{SNOOP_EVENTS, SNOOP_PORTS},
    packet::{ifindex, tagged_vlan},
};

const NS_PER_SEC: u64 = 1_000_000_000;

/// What a capture of `wire_len` bytes costs of its port's rate: the ring
/// space its record takes, in small records (a jumbo report's 64 KiB
/// record counts 512), so fairness between ports is by bytes.
#[inline(always)]
fn ring_weight(wire_len: usize) -> u64 {
    if wire_len <= SMALL_CAPTURE_LEN {
        1
    } else if wire_len <= CAPTURE_LEN {
        (CAPTURE_LEN / SMALL_CAPTURE_LEN) as u64
    } else {
        (LARGE_CAPTURE_LEN / SMALL_CAPTURE_LEN) as u64
    }
}

/// Captures unless the port is over its control-frame rate, so one flooding
/// host cannot fill the ring and starve every other port's reports.
#[inline(always)]
pub fn capture_within_rate(ctx: &TcContext, family: u8) {
    let mut vlan = VLAN_NONE;
    if let Some(port) = SNOOP_PORTS.get_ptr_mut(ifindex(ctx)) {
        if config().is_some_and(|c| c.flags & CONFIG_VLAN_AWARE != 0) {
            // SAFETY: a map value pointer from a successful lookup.
            vlan = tagged_vlan(ctx).unwrap_or(unsafe { (*port).pvid });
        }
        // SAFETY: a map value; concurrent CPUs only make the window approximate.
        unsafe {
            let limit = u64::from((*port).control_rate_limit);
            if limit != 0 {
                let now = aya_ebpf::helpers::bpf_ktime_get_ns();
                if now.wrapping_sub((*port).window_start_ns) >= NS_PER_SEC {
                    (*port).window_start_ns = now;
                    (*port).window_frames = 0;
                }
                // Not atomic (the BPF target's core has no fetch_add): CPUs
                // racing here may let a few extra frames through.
                (*port).window_frames += ring_weight((ctx.len() as usize).saturating_sub(ETH_HLEN));
                if (*port).window_frames > limit {
                    count(Counter::ControlRateLimited);
                    return;
                }
            }
        }
    }
    capture(ctx, vlan, family);
}

/// Hands the frame's IP packet of `family`, heard in `vlan`, to the
/// controller, in the smallest record it fits.
#[inline(always)]
fn capture(ctx: &TcContext, vlan: u16, family: u8) {
    let wire_len = (ctx.len() as usize).saturating_sub(ETH_HLEN);
    if wire_len <= SMALL_CAPTURE_LEN {
        capture_into::<SMALL_CAPTURE_LEN>(ctx, wire_len, vlan, family);
    } else if wire_len <= CAPTURE_LEN {
        capture_into::<CAPTURE_LEN>(ctx, wire_len, vlan, family);
    } else {
        capture_into::<LARGE_CAPTURE_LEN>(ctx, wire_len, vlan, family);
    }
}

#[inline(always)]
fn capture_into<const N: usize>(ctx: &TcContext, wire_len: usize, vlan: u16, family: u8) {
    let Some(mut entry) = SNOOP_EVENTS.reserve::<CapturedFrame<N>>(0) else {
        // Visible in `snoop show stats`; a log line here would cost more
        // instructions than the whole egress program.
        count(Counter::CaptureRingFull);
        return;
    };
    let frame = entry.as_mut_ptr();
    if wire_len == 0 {
        entry.discard(0);
        count(Counter::MalformedIp);
        return;
    }
    let mut len = wire_len;
    if len > N || len > u16::MAX as usize {
        // Longer than any IP packet: only a malformed frame gets here.
        count(Counter::CaptureTruncated);
        len = if N > u16::MAX as usize { u16::MAX as usize } else { N };
    }
    // SAFETY: `frame` points at a reserved, writable CapturedFrame<N>.
    unsafe {
        (*frame).ifindex = ifindex(ctx);
        (*frame).wire_len = wire_len.min(u16::MAX as usize) as u16;
        (*frame).vlan = vlan;
        (*frame).family = family;
        (*frame)._pad = [0; 5];
        (*frame).captured_len = len as u16;
        // The verifier must see a copy length in [1, N]. A mask (N is a power
        // of two) bounds it for every verifier: Linux 6.1's learns nothing
        // from `len != 0`. Read back through memory, the length is unknown to
        // the compiler, so it cannot fold the arithmetic back into `len`.
        let stored = u32::from(core::ptr::read_volatile(&raw const (*frame).captured_len));
        let size = 1 + (stored.wrapping_sub(1) & (N as u32 - 1));
        let ret = aya_ebpf::helpers::bpf_skb_load_bytes(
            ctx.skb.skb as *const _,
            ETH_HLEN as u32,
            (*frame).data.as_mut_ptr() as *mut _,
            size,
        );
        if ret != 0 {
            entry.discard(0);
            count(Counter::MalformedIp);
            return;
        }
    }
    entry.submit(0);
    count(Counter::Captured);
}
