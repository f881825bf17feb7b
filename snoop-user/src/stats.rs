//! The controller's own counters, by fixed names (the state machine's
//! ignored-message counts are its own, in `membership::IgnoredCounts`).
use std::collections::BTreeMap;

use crate::proto::ParseError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ControllerCounter {
    /// Control frames taken from the event ring.
    Events,
    /// Ring records too short to hold a frame header.
    EventsShort,
    GeneralQueriesSent,
    GroupQueriesSent,
    /// Map writes that failed; the state machine stays authoritative and the
    /// write is retried.
    DatapathWriteErrors,
    /// Ports the programs could not be attached to (tried again at the next scan).
    AttachFailures,
    /// Memberships, groups or copy lists a full map could not hold (their
    /// ports get every group meanwhile; the writes are retried).
    MapFull,
    /// Captured frames dropped as malformed, by reason.
    Dropped(ParseError),
}

impl ControllerCounter {
    /// Every counter, in display order.
    pub fn all() -> impl Iterator<Item = ControllerCounter> {
        use ControllerCounter::*;
        [Events, EventsShort, GeneralQueriesSent, GroupQueriesSent, DatapathWriteErrors, AttachFailures, MapFull]
            .into_iter()
            .chain(ParseError::ALL.into_iter().map(Dropped))
    }

    /// The counter's name in `snoop show stats`, JSON and metrics: a stable interface.
    pub fn name(self) -> String {
        match self {
            ControllerCounter::Events => "events".into(),
            ControllerCounter::EventsShort => "events_short".into(),
            ControllerCounter::GeneralQueriesSent => "general_queries_sent".into(),
            ControllerCounter::GroupQueriesSent => "group_queries_sent".into(),
            ControllerCounter::DatapathWriteErrors => "datapath_write_errors".into(),
            ControllerCounter::AttachFailures => "attach_failures".into(),
            ControllerCounter::MapFull => "map_full".into(),
            ControllerCounter::Dropped(reason) => format!("dropped_{}", reason.name()),
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
