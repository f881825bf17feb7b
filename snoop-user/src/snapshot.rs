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
    /// Traffic per (group, member port) as the data path counted it.
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
    /// Control frames that entered through the port, counted by the data path.
    pub queries_received: u64,
    pub reports_received: u64,
    pub leaves_received: u64,
    pub other_igmp_received: u64,
    pub pim_hellos_received: u64,
    /// Control frames from this port the controller dropped as malformed.
    pub malformed_dropped: u64,
    /// Group traffic sent out of this port (to members and as a router
    /// port) and held back from it, all groups.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupView {
    pub group: Ipv4Addr,
    pub members: Vec<MemberView>,
    /// Group traffic sent to member ports, and held back from ports without
    /// members (router ports' copies are counted per port).
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
    pub pruned_packets: u64,
    pub pruned_bytes: u64,
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
    /// Group traffic sent to this port.
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
}

/// Traffic sent to one member port for one group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrafficView {
    pub group: Ipv4Addr,
    pub ifindex: u32,
    pub port: String,
    pub forwarded_packets: u64,
    pub forwarded_bytes: u64,
}

/// One line of `snoop watch`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC time with milliseconds.
    pub time: String,
    pub event: EventKind,
    pub group: Option<Ipv4Addr>,
    pub port: Option<String>,
    /// Free text: IGMP version of a join, reason of a removal, querier address.
    pub detail: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A port got its first member of a group.
    Join,
    /// A port's membership ended on a leave (fast leave, or unanswered last-member queries).
    Leave,
    /// A port's membership timed out: no report within the membership interval.
    Expire,
    /// A port's memberships ended because the port left the bridge.
    PortRemoved,
    PortAttached,
    RouterPortLearned,
    RouterPortExpired,
    /// Another querier won the election (detail: its address).
    QuerierOther,
    /// snoop is the querier.
    QuerierSelf,
    /// The watcher fell behind and missed events (detail: how many).
    Lost,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Join => "join",
            Self::Leave => "leave",
            Self::Expire => "expire",
            Self::PortRemoved => "port-removed",
            Self::PortAttached => "port-attached",
            Self::RouterPortLearned => "router-port-learned",
            Self::RouterPortExpired => "router-port-expired",
            Self::QuerierOther => "querier-other",
            Self::QuerierSelf => "querier-self",
            Self::Lost => "lost",
        }
    }
}

impl Event {
    pub fn now(event: EventKind, group: Option<Ipv4Addr>, port: Option<String>, detail: String) -> Self {
        let time = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
        Self { time, event, group, port, detail }
    }

    /// The one-line text form.
    pub fn to_line(&self) -> String {
        let group = self.group.map_or("-".to_string(), |g| g.to_string());
        let line = format!(
            "{}  {:<20} {:<15} {:<8} {}",
            self.time,
            self.event.as_str(),
            group,
            self.port.as_deref().unwrap_or("-"),
            self.detail
        );
        line.trim_end().to_owned()
    }
}
