//! Data path counters: slots of the per-CPU array [`crate::MAP_COUNTERS`], and their names.
/// Data path counters, indexes into the per-CPU array [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// IGMP frames seen entering a port.
    IgmpSeen = 0,
    /// PIM hellos (IPv4 and IPv6) seen entering a port (router port learning).
    PimSeen,
    /// Control frames handed to the controller.
    Captured,
    /// Control frames lost because the event ring was full.
    CaptureRingFull,
    /// Control frames longer than [`CAPTURE_LEN`]; only the head was handed over.
    CaptureTruncated,
    /// IP frames whose header the data path could not read (counted, passed).
    MalformedIp,
    /// IGMP reports/leaves not sent to a host (non-router) port.
    ReportsSuppressed,
    /// Group data sent to a member or router port.
    DataForwarded,
    /// Group data not sent to a port without members.
    DataPruned,
    /// 224.0.0.0/24 and link-scope IPv6 traffic, flooded.
    LinkLocalFlooded,
    /// Data for a group nobody joined, flooded.
    UnregisteredFlooded,
    /// Data for a group nobody joined, dropped (router-ports-only policy).
    UnregisteredDropped,
    /// Control frames over a port's rate limit: forwarded, not handed over.
    ControlRateLimited,
    /// Data that would have been pruned, flooded because the controller's
    /// heartbeat is older than the failsafe time.
    FailsafeFlooded,
    /// Redirect mode: group packets copied straight to their ports.
    Redirected,
    /// Redirect mode: copies made to bridge ports (copies to the bridge
    /// device itself are not counted).
    RedirectCopies,
    /// Redirect mode: frames left to the bridge because of their ingress
    /// port's policy (isolated, locked, not forwarding).
    SourcePortBridgePath,
    /// Data and reports flooded because no querier is present (see
    /// [`crate::CONFIG_NO_QUERIER`]).
    NoQuerierFlooded,
    /// MLD and IPv6 router discovery frames seen entering a port.
    MldSeen,
    /// Group data not sent to a member port that does not want its source
    /// (source-specific membership).
    SourcePruned,
    /// Data for a source-specific multicast group (232/8, ff3x::/32) nobody
    /// asked for: never flooded, only source-specific joins forward it.
    SsmUnrequestedDropped,
}

/// Number of [`Counter`] slots.
pub const COUNTER_COUNT: u32 = Counter::SsmUnrequestedDropped as u32 + 1;

impl Counter {
    /// Every counter, in slot order.
    pub const ALL: [Counter; COUNTER_COUNT as usize] = [
        Counter::IgmpSeen,
        Counter::PimSeen,
        Counter::Captured,
        Counter::CaptureRingFull,
        Counter::CaptureTruncated,
        Counter::MalformedIp,
        Counter::ReportsSuppressed,
        Counter::DataForwarded,
        Counter::DataPruned,
        Counter::LinkLocalFlooded,
        Counter::UnregisteredFlooded,
        Counter::UnregisteredDropped,
        Counter::ControlRateLimited,
        Counter::FailsafeFlooded,
        Counter::Redirected,
        Counter::RedirectCopies,
        Counter::SourcePortBridgePath,
        Counter::NoQuerierFlooded,
        Counter::MldSeen,
        Counter::SourcePruned,
        Counter::SsmUnrequestedDropped,
    ];

    /// The counter's name in `snoop show stats`, JSON and metrics: a stable interface.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::IgmpSeen => "igmp_seen",
            Counter::PimSeen => "pim_seen",
            Counter::Captured => "control_frames_captured",
            Counter::CaptureRingFull => "control_frames_lost_ring_full",
            Counter::CaptureTruncated => "control_frames_truncated",
            Counter::MalformedIp => "malformed_ip",
            Counter::ReportsSuppressed => "reports_suppressed",
            Counter::DataForwarded => "data_forwarded",
            Counter::DataPruned => "data_pruned",
            Counter::LinkLocalFlooded => "link_local_flooded",
            Counter::UnregisteredFlooded => "unregistered_flooded",
            Counter::UnregisteredDropped => "unregistered_dropped",
            Counter::ControlRateLimited => "control_frames_rate_limited",
            Counter::FailsafeFlooded => "failsafe_flooded",
            Counter::Redirected => "redirected",
            Counter::RedirectCopies => "redirect_copies",
            Counter::SourcePortBridgePath => "source_port_bridge_path",
            Counter::NoQuerierFlooded => "no_querier_flooded",
            Counter::MldSeen => "mld_seen",
            Counter::SourcePruned => "source_pruned",
            Counter::SsmUnrequestedDropped => "ssm_unrequested_dropped",
        }
    }
}

// Each counter sits in the slot its discriminant names.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!(Counter::ALL[i] as usize == i);
        i += 1;
    }
};

/// Traffic counters, in per-CPU arrays summed by userspace: per membership
/// (what a member port was sent), per group (what all ports were spared) and
/// per port (what router ports were sent, what the port was spared). Slots are
/// handed out by the controller and stored in the map values, so counting is
/// an array update, not a second hash lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct TrafficCounters {
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
}

/// Control traffic entering through one port, a per-CPU value keyed by ifindex.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PortCounters {
    pub queries: u64,
    /// Membership reports: IGMPv1-v3, MLDv1-v2.
    pub reports: u64,
    /// IGMPv2 leaves and MLDv1 dones (v3/v2 leaves are records inside reports).
    pub leaves: u64,
    /// IGMP and MLD-family ICMPv6 of other types (router discovery, unknown).
    pub other_igmp: u64,
    pub pim_hellos: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: repr(C) plain data of u64 fields, no padding, any bit pattern valid.
    unsafe impl aya::Pod for TrafficCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PortCounters {}
}
