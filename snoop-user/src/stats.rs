//! The controller's own counters, by fixed names (the state machine's
//! ignored-message counts are its own, in `membership::IgnoredCounts`).
use std::collections::BTreeMap;

use crate::proto::{Family, ParseError};

/// The protocol a counter counts for: IGMP's keep their first names, MLD's
/// are prefixed `mld_`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Protocol {
    Igmp,
    Mld,
}

impl Protocol {
    pub fn of<A: Family>() -> Self {
        if A::FAMILY == snoop_common::FAMILY_IPV6 {
            Self::Mld
        } else {
            Self::Igmp
        }
    }

    const fn prefix(self) -> &'static str {
        match self {
            Self::Igmp => "",
            Self::Mld => "mld_",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ControllerCounter {
    /// Control frames taken from the event ring.
    Events,
    /// Ring records too short to hold a frame header.
    EventsShort,
    GeneralQueriesSent(Protocol),
    GroupQueriesSent(Protocol),
    /// Map writes that failed; the state machine stays authoritative and the
    /// write is retried.
    DatapathWriteErrors,
    /// Ports the programs could not be attached to (tried again at the next scan).
    AttachFailures,
    /// Memberships, groups or copy lists a full map could not hold (their
    /// ports get every group meanwhile; the writes are retried).
    MapFull,
    /// Memberships and source entries not written because their port holds
    /// its share (an eighth) of the map (it gets every group or source
    /// meanwhile; retried).
    MapShareFull,
    /// Control frames heard in a VLAN their port is not in (a VLAN-aware
    /// bridge drops them itself): nobody's membership.
    OutsideVlan,
    /// Times the bridge's own multicast snooping was found turned back on
    /// (a network manager, an administrator) and turned off again.
    KernelSnoopingReenabled,
    /// Captured frames dropped as malformed, by protocol and reason.
    Dropped(Protocol, ParseError),
}

impl ControllerCounter {
    /// Every counter, in display order.
    pub fn all() -> impl Iterator<Item = ControllerCounter> {
        use ControllerCounter::*;
        [Events, EventsShort, DatapathWriteErrors, AttachFailures]
            .into_iter()
            .chain([MapFull, MapShareFull, OutsideVlan, KernelSnoopingReenabled])
            .chain([Protocol::Igmp, Protocol::Mld].into_iter().flat_map(|p| {
                [GeneralQueriesSent(p), GroupQueriesSent(p)]
                    .into_iter()
                    .chain(ParseError::ALL.into_iter().map(move |e| Dropped(p, e)))
            }))
    }

    /// The counter's name in `snoop show stats`, JSON and metrics: a stable interface.
    pub fn name(self) -> String {
        match self {
            ControllerCounter::Events => "events".into(),
            ControllerCounter::EventsShort => "events_short".into(),
            ControllerCounter::GeneralQueriesSent(p) => format!("{}general_queries_sent", p.prefix()),
            ControllerCounter::GroupQueriesSent(p) => format!("{}group_queries_sent", p.prefix()),
            ControllerCounter::DatapathWriteErrors => "datapath_write_errors".into(),
            ControllerCounter::AttachFailures => "attach_failures".into(),
            ControllerCounter::MapFull => "map_full".into(),
            ControllerCounter::MapShareFull => "map_share_full".into(),
            ControllerCounter::OutsideVlan => "outside_vlan".into(),
            ControllerCounter::KernelSnoopingReenabled => "kernel_snooping_reenabled".into(),
            ControllerCounter::Dropped(p, reason) => format!("{}dropped_{}", p.prefix(), reason.name()),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Stats {
    counts: BTreeMap<ControllerCounter, u64>,
}

impl Stats {
    pub fn bump(&mut self, counter: ControllerCounter) {
        *self.counts.entry(counter).or_default() += 1;
    }

    pub fn get(&self, counter: ControllerCounter) -> u64 {
        self.counts.get(&counter).copied().unwrap_or(0)
    }

    /// Every counter by name, zeros included.
    pub fn named(&self) -> impl Iterator<Item = (String, u64)> + '_ {
        ControllerCounter::all().map(|c| (c.name(), self.get(c)))
    }
}
