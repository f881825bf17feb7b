//! The state a running controller reports to `snoop show`: one JSON document,
//! also the `--json` output. Field names are a stable interface: add fields,
//! never rename or remove them.
use std::{collections::BTreeMap, net::Ipv4Addr};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Snapshot {
    pub bridge: String,
    pub uptime_secs: f64,
    pub querier: QuerierView,
    pub ports: Vec<PortView>,
    pub groups: Vec<GroupView>,
    /// Data path counters by name (summed over CPUs).
    pub datapath: BTreeMap<String, u64>,
    /// Controller counters: parse errors by kind and event handling.
    pub controller: BTreeMap<String, u64>,
    /// Traffic per (group, port) as the data path counted it.
    pub traffic: Vec<TrafficView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QuerierView {
    /// "self": snoop queries; "other": another querier won the election;
    /// "none": snoop's querier is disabled and no other was heard.
    pub role: String,
    /// Source address of snoop's own queries.
    pub own_address: Ipv4Addr,
    /// The elected querier's address (own address when role is "self").
    pub querier_address: Option<Ipv4Addr>,
    /// Seconds until the other querier counts as gone.
    pub other_querier_expires_in_secs: Option<f64>,
    /// Seconds until snoop's next general query.
    pub next_query_in_secs: Option<f64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortView {
    pub ifindex: u32,
    pub name: String,
    pub router: bool,
    pub static_router: bool,
    pub fast_leave: bool,
    /// Seconds until a learned router port expires.
    pub router_expires_in_secs: Option<f64>,
    pub groups: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub group: Ipv4Addr,
    pub members: Vec<MemberView>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberView {
    pub ifindex: u32,
    pub port: String,
    /// Lowest IGMP version heard on the port for this group.
    pub version: u8,
    pub expires_in_secs: f64,
    pub last_reporter: Ipv4Addr,
    /// A leave was heard; the membership ends unless a host answers the last-member queries.
    pub leaving: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficView {
    pub group: Ipv4Addr,
    pub ifindex: u32,
    pub port: String,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
}
