//! `snoop show mdb`: the memberships as `bridge mdb show` prints the Linux
//! bridge's multicast database, text and JSON (`bridge -j -d -s mdb show`),
//! field names and types alike, so a script, check or exporter written
//! against the kernel's output works by changing the command only. (While
//! snoop runs the kernel's own database is empty: its snooping is off.)
//!
//! What differs is said in the README: timers count snoop's own time,
//! link-scope IPv6 groups are not snooped by default, and `index` is the
//! bridge's ifindex as the kernel's.
use std::net::IpAddr;

use serde::Serialize;

use crate::{
    membership::FilterMode,
    snapshot::{GroupView, MemberView, Snapshot},
};

/// One entry of the database, as iproute2 prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MdbEntry {
    pub index: u32,
    pub dev: String,
    pub port: String,
    pub grp: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    /// "temp" (learned) or "permanent" (static).
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_list: Option<Vec<MdbSource>>,
    /// "kernel" for learned entries (as the kernel's own), "static" for
    /// static ones; none for the bridge host's own groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<&'static str>,
    pub flags: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vid: Option<u16>,
    /// Seconds left, as iproute2 formats them ("%7.2f").
    pub timer: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MdbSource {
    pub address: IpAddr,
    pub timer: String,
}

/// A router port, as iproute2 lists them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MdbRouter {
    pub port: String,
    pub timer: String,
    /// "temp" (learned) or "permanent" (static).
    #[serde(rename = "type")]
    pub kind: &'static str,
}

fn timer(secs: f64) -> String {
    format!("{:7.2}", secs.max(0.0))
}

/// The database's entries: per membership a group entry, and per source
/// a (source, group) entry as the kernel keeps them; the bridge host's own
/// groups with the bridge as their port.
pub fn entries(s: &Snapshot) -> Vec<MdbEntry> {
    let mut entries = Vec::new();
    for group in &s.groups {
        for member in &group.members {
            entries.extend(member_entries(s, group, member));
        }
    }
    for local in &s.local_groups {
        entries.push(MdbEntry {
            index: s.bridge_ifindex,
            dev: s.bridge.clone(),
            port: s.bridge.clone(),
            grp: local.group,
            src: None,
            state: "temp",
            filter_mode: None,
            source_list: None,
            protocol: None,
            flags: Vec::new(),
            vid: local.vlan,
            timer: timer(0.0),
        });
    }
    entries
}

fn member_entries(s: &Snapshot, group: &GroupView, member: &MemberView) -> Vec<MdbEntry> {
    let permanent = member.permanent;
    let include = member.filter_mode == FilterMode::Include;
    let entry = |src: Option<IpAddr>, timer_secs: f64| MdbEntry {
        index: s.bridge_ifindex,
        dev: s.bridge.clone(),
        port: member.port.clone(),
        grp: group.group,
        src,
        state: if permanent { "permanent" } else { "temp" },
        filter_mode: Some(member.filter_mode.as_str()),
        source_list: None,
        protocol: Some(if permanent { "static" } else { "kernel" }),
        flags: Vec::new(),
        vid: group.vlan,
        timer: timer(timer_secs),
    };
    // The group's own timer runs in EXCLUDE mode only; sources keep theirs.
    let group_secs = if include || permanent { 0.0 } else { member.expires_in_secs.unwrap_or(0.0) };
    let mut group_entry = entry(None, group_secs);
    if !member.sources.is_empty() {
        group_entry.source_list = Some(
            member
                .sources
                .iter()
                .map(|source| MdbSource { address: source.address, timer: timer(source.expires_in_secs) })
                .collect(),
        );
    }
    let mut entries = vec![group_entry];
    // (S, G) entries: the sources forwarded in INCLUDE mode, the blocked
    // ones in EXCLUDE mode (flagged so).
    for source in &member.sources {
        if include && source.forwarded {
            entries.push(entry(Some(source.address), 0.0));
        } else if !include && !source.forwarded {
            let mut blocked = entry(Some(source.address), 0.0);
            blocked.flags.push("blocked");
            entries.push(blocked);
        }
    }
    entries
}

/// Router ports: learned ones with their time left, static ones permanent.
pub fn routers(s: &Snapshot) -> Vec<MdbRouter> {
    s.ports
        .iter()
        .filter(|p| p.router || p.mld_router || p.static_router)
        .map(|p| {
            let left =
                [p.router_expires_in_secs, p.mld_router_expires_in_secs].into_iter().flatten().fold(0.0, f64::max);
            MdbRouter {
                port: p.name.clone(),
                timer: timer(if p.static_router { 0.0 } else { left }),
                kind: if p.static_router { "permanent" } else { "temp" },
            }
        })
        .collect()
}

/// `bridge -j -d -s mdb show`'s document.
pub fn json(s: &Snapshot) -> serde_json::Value {
    let routers = routers(s);
    let router =
        if routers.is_empty() { serde_json::json!({}) } else { serde_json::json!({ s.bridge.clone(): routers }) };
    serde_json::json!([{ "mdb": entries(s), "router": router }])
}

/// `bridge -d -s mdb show`'s lines.
pub fn text(s: &Snapshot) -> String {
    let mut out = String::new();
    for e in entries(s) {
        out.push_str(&format!("dev {} port {} grp {} ", e.dev, e.port, e.grp));
        if let Some(src) = e.src {
            out.push_str(&format!("src {src} "));
        }
        out.push_str(&format!("{} ", e.state));
        if let Some(mode) = e.filter_mode {
            out.push_str(&format!("filter_mode {mode} "));
        }
        if let Some(list) = &e.source_list {
            let listed: Vec<String> = list.iter().map(|s| format!("{}/{}", s.address, s.timer.trim())).collect();
            out.push_str(&format!("source_list {} ", listed.join(",")));
        }
        if let Some(protocol) = e.protocol {
            out.push_str(&format!("proto {protocol} "));
        }
        for flag in &e.flags {
            out.push_str(&format!("{flag} "));
        }
        if let Some(vid) = e.vid {
            out.push_str(&format!(" vid {vid}"));
        }
        out.push_str(&format!(" {}\n", e.timer));
    }
    for r in routers(s) {
        out.push_str(&format!("router ports on {}: {} {} {}\n", s.bridge, r.port, r.timer, r.kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let members = serde_json::json!([
            {"ifindex": 3, "port": "p1", "protocol": "IGMP", "version": 3, "expires_in_secs": 259.56, "static": false,
             "last_reporter": "10.99.0.11", "leaving": false, "filter_mode": "exclude", "sources": [],
             "forwarded_packets": 0, "forwarded_bytes": 0}
        ]);
        let ssm_members = serde_json::json!([
            {"ifindex": 3, "port": "p1", "protocol": "IGMP", "version": 3, "expires_in_secs": 259.5, "static": false,
             "last_reporter": "10.99.0.11", "leaving": false, "filter_mode": "include",
             "sources": [{"address": "10.99.0.10", "forwarded": true, "expires_in_secs": 259.5}],
             "forwarded_packets": 0, "forwarded_bytes": 0}
        ]);
        serde_json::from_value(serde_json::json!({
            "bridge": "br0", "bridge_ifindex": 2, "uptime_secs": 1.0,
            "querier": {"role": "self", "own_address": "0.0.0.0", "querier_address": null,
                "other_querier_expires_in_secs": null, "next_query_in_secs": null, "present": true,
                "query_version": 3, "query_interval_secs": 125.0, "robustness": 2, "ignored_routers": []},
            "ports": [],
            "groups": [
                {"group": "239.1.1.1", "members": members, "forwarded_packets": 0, "forwarded_bytes": 0,
                 "pruned_packets": 0, "pruned_bytes": 0},
                {"group": "232.1.2.3", "members": ssm_members, "forwarded_packets": 0, "forwarded_bytes": 0,
                 "pruned_packets": 0, "pruned_bytes": 0}
            ],
            "datapath": {}, "controller": {}, "traffic": []
        }))
        .expect("a snapshot")
    }

    /// The lines `bridge -d -s mdb show` printed for the same memberships
    /// on a Linux 6.18 bridge (mcast_igmp_version 3).
    #[test]
    fn the_text_is_iproute2s() {
        assert_eq!(
            text(&snapshot()),
            "dev br0 port p1 grp 239.1.1.1 temp filter_mode exclude proto kernel   259.56\n\
             dev br0 port p1 grp 232.1.2.3 temp filter_mode include source_list 10.99.0.10/259.50 proto kernel     0.00\n\
             dev br0 port p1 grp 232.1.2.3 src 10.99.0.10 temp filter_mode include proto kernel     0.00\n"
        );
        let json = json(&snapshot());
        assert_eq!(json[0]["mdb"][0]["timer"], " 259.56");
        assert_eq!(json[0]["mdb"][1]["source_list"][0]["address"], "10.99.0.10");
        assert_eq!(json[0]["router"], serde_json::json!({}));
    }
}
