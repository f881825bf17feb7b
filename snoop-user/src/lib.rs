//! snoop: IGMP and MLD snooping for Linux bridges, on eBPF.
//!
//! Where a packet is parsed, where membership is decided, where it is enforced:
//! - [`proto`]: the one parser shape for IGMP and MLD, and the query builder;
//! - [`membership`]: the membership/querier state machine (pure, injected
//!   time, generic over the address family, groups keyed by VLAN), one file
//!   per concern, with [`port_groups`]: the groups a port may join and
//!   those it always has;
//! - [`daemon`]: `snoop run`: the daemon as a step function (inputs in,
//!   effects out), the projection of its state into the data path's maps,
//!   the one writer of those maps, and the runner doing the I/O;
//!   [`settings`]: what it is told, start settings apart from those a
//!   reload applies; [`bridge`]: what it reads of the bridge (rtnetlink);
//!   [`filtering`]: whether the kernel filters bridged traffic;
//! - [`datapath`]: loading, attaching and driving the eBPF programs and
//!   their pinned maps (the layout is snoop-common's);
//! - [`control`]: the protocol `snoop show`/`watch` and the metrics speak to
//!   it; [`snapshot`]: the state it answers with; [`stats`]: its counters;
//! - [`show`], [`metrics`]: the views;
//! - [`switch`]: `snoop switch`, a bridge made of interfaces and undone.
pub mod bridge;
pub mod config;
pub mod control;
pub mod daemon;
pub mod datapath;
pub mod filtering;
pub mod frame_sender;
pub mod mdb;
pub mod membership;
pub mod metrics;
pub mod netlink;
pub mod netns;
pub mod port_groups;
pub mod proto;
pub mod settings;
pub mod show;
pub mod snapshot;
pub mod stats;
pub mod switch;

/// An error with its causes, on one line (`what: why: deeper why`): how
/// snoop logs and answers an error it goes on after.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(source) = cause {
        let said = source.to_string();
        // Transparent wrappers repeat their source's text.
        if !text.ends_with(&said) {
            text += &format!(": {said}");
        }
        cause = source.source();
    }
    text
}
