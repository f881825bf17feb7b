//! snoop: IGMP snooping for Linux bridges, on eBPF.
//!
//! Where a packet is parsed, where membership is decided, where it is enforced:
//! - [`proto`]: the one parser shape (IGMP now), and the query builder;
//! - [`membership`]: the membership/querier state machine (pure, injected
//!   time, generic over the address family, groups keyed by VLAN), with
//!   [`port_groups`]: the groups a port may join and those it always has;
//! - [`datapath`]: loading and driving the eBPF programs and their pinned
//!   maps (the layout is snoop-common's);
//! - [`controller`]: `snoop run`, carrying the state machine's decisions
//!   into the data path; [`bridge`]: what it reads of the bridge (rtnetlink),
//!   [`filtering`]: whether the kernel filters bridged traffic;
//! - [`control`]: the protocol `snoop show`/`watch` and the metrics speak to
//!   it; [`snapshot`]: the state it answers with; [`stats`]: its counters;
//! - [`show`], [`metrics`]: the views;
//! - [`switch`]: `snoop switch`, a bridge made of interfaces and undone.
pub mod bridge;
pub mod config;
pub mod control;
pub mod controller;
pub mod datapath;
pub mod filtering;
pub mod frame_sender;
pub mod membership;
pub mod metrics;
pub mod netns;
pub mod port_groups;
pub mod proto;
pub mod show;
pub mod snapshot;
pub mod stats;
pub mod switch;
