//! snoop: IGMP snooping for Linux bridges, on eBPF.
//!
//! - [`igmp`]: the IGMP parser and query builder;
//! - [`membership`]: the membership/querier state machine (pure, injected time);
//! - [`datapath`]: loading and driving the eBPF programs and their pinned maps;
//! - [`controller`]: `snoop run`;
//! - [`lab`]: network-namespace labs for the demo, tests and benchmarks.
pub mod bridge;
pub mod controller;
pub mod datapath;
pub mod demo;
pub mod frame_sender;
pub mod igmp;
pub mod lab;
pub mod membership;
pub mod metrics;
pub mod show;
pub mod snapshot;
