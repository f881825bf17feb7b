//! What goes into the daemon's step function and what comes out of it:
//! typed [`Input`]s, read by the runner from the kernel, the clients and
//! the clock, and typed [`Effect`]s, which the runner carries out. What the
//! data path's maps must hold is not an effect: it is projected from the
//! state after each step ([`super::project`]) and written by the one
//! writer ([`super::reconcile`]).
use std::{collections::BTreeSet, net::IpAddr};

use crate::{
    bridge::{Port, VlanConfig},
    control::Change,
    settings::RunConfig,
    snapshot::Event,
};

/// One thing that happened, as the daemon's step function takes it.
#[derive(Debug)]
pub enum Input<'a> {
    /// A control frame of `family` captured entering port `ifindex`, in
    /// `vlan`: its IP packet.
    Frame { ifindex: u32, vlan: u16, family: u8, packet: &'a [u8] },
    /// A query the bridge's own host sent (its IP packet, of `family`), in
    /// `vlan` when it was tagged.
    HostQuery { vlan: Option<u16>, family: u8, packet: &'a [u8] },
    /// Time passed: the timers due now fire.
    Timers,
    /// The bridge as rtnetlink shows it now (a link change, or a port scan).
    Bridge(Box<BridgeView>),
    /// The groups the bridge's own host has joined, by VLAN, and the VLANs
    /// and families (FAMILY_*) it routes multicast in (read at port scans:
    /// redirect copies them to it).
    Local { groups: BTreeSet<(u16, IpAddr)>, routed: BTreeSet<(u16, u8)> },
    /// Senders whose frames the fast path consumed lately: (MAC, port, VLAN).
    Senders(Vec<([u8; 6], u32, u16)>),
    /// A client asks for a change.
    Change(Change),
    /// The configuration read again for a reload (SIGHUP or a client), or
    /// why it could not be; `reply` when a client asked.
    Reloaded { config: Result<Box<RunConfig>, String>, reply: bool },
    /// What a keep-state predecessor left in the pinned maps, to resume.
    Resume(Pinned),
}

/// The bridge as the runner read it: what snoop follows of it.
#[derive(Clone, Debug, Default)]
pub struct BridgeView {
    pub mac: [u8; 6],
    pub vlans: VlanConfig,
    pub addresses: QuerySources,
    /// Its ports that carry snoop's programs, each with what the bridge
    /// decides for it and what else runs on its hooks.
    pub ports: Vec<Port>,
    /// The bridge's own multicast snooping is on.
    pub kernel_snooping: bool,
    /// Why redirect forwarding must not be used now, if it must not (STP,
    /// filtering rules): checked live.
    pub obstacle: Option<&'static str>,
    /// STP's topology change flag is up.
    pub topology_change: bool,
    /// `mcast_router 2` on the bridge device: its host is a router.
    pub host_is_router: bool,
}

/// Addresses queries can speak from: the bridge's own, and those of VLAN
/// interfaces on it by VLAN.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuerySources {
    pub bridge_ipv4: Option<std::net::Ipv4Addr>,
    pub bridge_ipv6: Option<std::net::Ipv6Addr>,
    pub vlan_ipv4: std::collections::BTreeMap<u16, std::net::Ipv4Addr>,
    pub vlan_ipv6: std::collections::BTreeMap<u16, std::net::Ipv6Addr>,
}

/// What a predecessor left pinned that the state machines resume.
#[derive(Clone, Debug, Default)]
pub struct Pinned {
    /// Memberships: (group key, port), version, leaving, static, source filter.
    pub members: Vec<PinnedMember>,
    /// Learned router ports: (family, VLAN, or every VLAN of the port, port).
    pub routers: Vec<(u8, Option<u16>, u32)>,
}

#[derive(Clone, Debug)]
pub struct PinnedMember {
    pub key: snoop_common::PortGroupKey,
    pub version: u8,
    pub leaving: bool,
    pub permanent: bool,
    /// `MEMBER_SOURCES_*` and the sources listed; none: any source.
    pub sources: Option<(u8, BTreeSet<snoop_common::SourceAddr>)>,
}

/// What the runner does for the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Send a frame to every port of `vlan` (through the bridge device
    /// while it does not filter VLANs).
    Send { vlan: u16, frame: Vec<u8> },
    /// Send a frame out of one port alone (a bridge without VLANs).
    SendOnPort { ifindex: u32, frame: Vec<u8> },
    /// A membership event: logged and streamed to `snoop watch`.
    Event(Event),
    /// A line for the log.
    Log(log::Level, String),
    /// Turn the bridge's own multicast snooping off (found on).
    KernelSnoopingOff,
    /// Teach the bridge that `mac` is behind `port` in `vlan`.
    Learn { port: u32, mac: [u8; 6], vlan: u16 },
    /// The answer to a client's change.
    Reply(Result<String, String>),
}
