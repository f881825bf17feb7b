//! `snoop show`: asks a running controller for its state and prints it.
use std::{io::Write as _, time::Duration};

use anyhow::Result;

use crate::{
    control::{self, Request},
    membership::FilterMode,
    snapshot::{MemberView, Snapshot},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    Groups,
    Ports,
    Querier,
    /// How group traffic is forwarded now (redirect or the bridge path) and why.
    Forwarding,
    Stats,
    /// The memberships as `bridge mdb show` prints the bridge's own
    /// database (`--json`: as `bridge -j -d -s mdb show`).
    Mdb,
}

/// What `view` needs: the querier and stats views skip groups and traffic.
fn fetch_for(bridge: &str, view: View) -> Result<Snapshot> {
    let request = match view {
        View::Querier | View::Forwarding | View::Stats => Request::Counters,
        View::Groups | View::Ports | View::Mdb => Request::Snapshot,
    };
    Ok(control::fetch(bridge, request)?)
}

/// `snoop watch`: prints membership events as they happen, until the controller stops.
pub fn watch(bridge: &str, json: bool) -> Result<()> {
    let stdout = std::io::stdout();
    for event in control::watch(bridge)? {
        let (line, event) = event?;
        let mut out = stdout.lock();
        if json {
            writeln!(out, "{line}")?;
        } else {
            writeln!(out, "{}", control::printable(&event.to_line()))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// One view, printed once or, with `refresh`, redrawn with rates until interrupted.
pub fn show(bridge: &str, view: View, json: bool, refresh: Option<Duration>) -> Result<()> {
    let Some(interval) = refresh else {
        return print(&fetch_for(bridge, view)?, view, json);
    };
    let mut previous: Option<Snapshot> = None;
    loop {
        let snapshot = fetch_for(bridge, view)?;
        if json {
            print(&snapshot, view, true)?;
        } else {
            // Clear the screen and redraw from the top.
            print!("\x1b[2J\x1b[H{} on {} (every {:?}, Ctrl-C to stop)\n\n", view_name(view), bridge, interval);
            print!("{}", render_with_rates(&snapshot, view, previous.as_ref()));
        }
        std::io::stdout().flush()?;
        previous = Some(snapshot);
        std::thread::sleep(interval);
    }
}

fn view_name(view: View) -> &'static str {
    match view {
        View::Groups => "groups",
        View::Ports => "ports",
        View::Querier => "querier",
        View::Forwarding => "forwarding",
        View::Stats => "stats",
        View::Mdb => "mdb",
    }
}

pub fn print(snapshot: &Snapshot, view: View, json: bool) -> Result<()> {
    if json {
        let value = match view {
            View::Groups => serde_json::to_string_pretty(&snapshot.groups)?,
            View::Ports => serde_json::to_string_pretty(&snapshot.ports)?,
            // The IGMP querier's fields, as ever, the MLD querier's under
            // "mld", and on a VLAN-aware bridge each VLAN's under "vlans".
            View::Querier => {
                let mut querier = serde_json::to_value(&snapshot.querier)?;
                if let (Some(mld), Some(object)) = (&snapshot.mld_querier, querier.as_object_mut()) {
                    object.insert("mld".into(), serde_json::to_value(mld)?);
                }
                if let (false, Some(object)) = (snapshot.vlans.is_empty(), querier.as_object_mut()) {
                    object.insert("vlans".into(), serde_json::to_value(&snapshot.vlans)?);
                }
                serde_json::to_string_pretty(&querier)?
            }
            View::Forwarding => serde_json::to_string_pretty(&snapshot.forwarding)?,
            // iproute2 prints it on one line; so does this, so the two compare alike.
            View::Mdb => serde_json::to_string(&crate::mdb::json(snapshot))?,
            View::Stats => serde_json::to_string_pretty(&serde_json::json!({
                "datapath": snapshot.datapath,
                "controller": snapshot.controller,
            }))?,
        };
        println!("{value}");
        return Ok(());
    }
    print!("{}", render(snapshot, view));
    Ok(())
}

/// The human-readable table for one view.
pub fn render(s: &Snapshot, view: View) -> String {
    render_with_rates(s, view, None)
}

/// One protocol's querier, its rows prefixed by the protocol.
fn querier_rows(rows: &mut Vec<Vec<String>>, protocol: &str, q: &crate::snapshot::QuerierView) {
    let mut row = |name: &str, value: String| rows.push(vec![format!("{protocol} {name}"), value]);
    row("role", q.role.clone());
    row("querier", q.querier_address.map_or("-".to_string(), |a| a.to_string()));
    row("own address", q.own_address.to_string());
    if let Some(next) = q.next_query_in_secs {
        row("next query in", format!("{next:.1}s"));
    }
    if let Some(left) = q.other_querier_expires_in_secs {
        row("other querier expires in", format!("{left:.1}s"));
    }
    let present = if q.present { "yes" } else { "no: flooding every group until one is" };
    row("querier present", present.into());
    row("query version", format!("v{}", q.query_version));
    row("query interval", format!("{}s", q.query_interval_secs));
    row("robustness", q.robustness.to_string());
    for ignored in &q.ignored_routers {
        row(
            "ignored (untrusted port)",
            format!(
                "{} {} on {}, {:.0}s ago: use --trusted-port {} if it is a router",
                ignored.heard_as, ignored.address, ignored.port, ignored.heard_secs_ago, ignored.port
            ),
        );
    }
}

/// A membership's sources: "any", "include S1,S2" (the sources it gets),
/// "exclude S3" (the ones it does not).
fn sources_column(m: &MemberView) -> String {
    let listed = |forwarded: bool| -> Vec<String> {
        m.sources.iter().filter(|s| s.forwarded == forwarded).map(|s| s.address.to_string()).collect()
    };
    match m.filter_mode {
        FilterMode::Include => format!("include {}", listed(true).join(",")),
        FilterMode::Exclude if listed(false).is_empty() => "any".into(),
        FilterMode::Exclude => format!("exclude {}", listed(false).join(",")),
    }
}

/// Packets per second between two counter readings.
fn rate(now: u64, before: Option<u64>, seconds: f64) -> String {
    match before {
        Some(before) if seconds > 0.0 => format!("{}/s", human(now.saturating_sub(before) as f64 / seconds)),
        _ => "-".into(),
    }
}

/// The table for one view; with a previous snapshot, traffic rates too.
pub fn render_with_rates(s: &Snapshot, view: View, previous: Option<&Snapshot>) -> String {
    let elapsed = previous.map_or(0.0, |p| s.uptime_secs - p.uptime_secs);
    let mut rows: Vec<Vec<String>> = Vec::new();
    match view {
        View::Groups => {
            rows.push(
                ["GROUP", "PORT", "VERSION", "SOURCES", "EXPIRES", "REPORTER", "STATE", "FORWARDED", "BYTES", "RATE"]
                    .map(String::from)
                    .to_vec(),
            );
            for group in &s.groups {
                for m in &group.members {
                    let before = previous
                        .and_then(|p| p.groups.iter().find(|g| g.group == group.group && g.vlan == group.vlan))
                        .and_then(|g| g.members.iter().find(|pm| pm.ifindex == m.ifindex))
                        .map(|pm| pm.forwarded_packets);
                    let (packets, bytes) = (m.forwarded_packets, m.forwarded_bytes);
                    rows.push(vec![
                        // The same group in two VLANs is two groups.
                        group.vlan.map_or_else(|| group.group.to_string(), |v| format!("{} vlan {v}", group.group)),
                        m.port.clone(),
                        format!("{}v{}", m.protocol, m.version),
                        sources_column(m),
                        m.expires_in_secs.map_or("never".into(), |left| format!("{left:.1}s")),
                        if m.permanent { "-".into() } else { m.last_reporter.to_string() },
                        if m.permanent {
                            "static".into()
                        } else if m.leaving {
                            "leaving".into()
                        } else {
                            "member".into()
                        },
                        human(packets as f64),
                        human_bytes(bytes),
                        rate(packets, before.or(previous.map(|_| 0)), elapsed),
                    ]);
                }
            }
        }
        View::Ports => {
            rows.push(
                [
                    "PORT",
                    "IFINDEX",
                    "ROUTER",
                    "FAST-LEAVE",
                    "GROUPS",
                    "REFUSED",
                    "REPORTS",
                    "LEAVES",
                    "QUERIES",
                    "MALFORMED",
                    "FORWARDED",
                    "PRUNED",
                    "RATE",
                    "NOTE",
                ]
                .map(String::from)
                .to_vec(),
            );
            for p in &s.ports {
                let learned = |protocol: &str, router: bool, left: Option<f64>| match (router, left) {
                    (true, Some(left)) => Some(format!("{protocol} ({left:.0}s)")),
                    _ => None,
                };
                let router = if p.static_router {
                    "static".to_string()
                } else {
                    let learned: Vec<String> = [
                        learned("IGMP", p.router, p.router_expires_in_secs),
                        learned("MLD", p.mld_router, p.mld_router_expires_in_secs),
                    ]
                    .into_iter()
                    .flatten()
                    .collect();
                    if learned.is_empty() {
                        "-".to_string()
                    } else {
                        learned.join(" ")
                    }
                };
                let before = previous
                    .and_then(|prev| prev.ports.iter().find(|q| q.ifindex == p.ifindex))
                    .map(|q| q.forwarded_packets);
                rows.push(vec![
                    p.name.clone(),
                    p.ifindex.to_string(),
                    router,
                    if p.fast_leave { "yes".into() } else { "no".into() },
                    p.groups.to_string(),
                    (p.refused_by_filter + p.refused_by_limit).to_string(),
                    p.reports_received.to_string(),
                    p.leaves_received.to_string(),
                    p.queries_received.to_string(),
                    p.malformed_dropped.to_string(),
                    human(p.forwarded_packets as f64),
                    human(p.pruned_packets as f64),
                    rate(p.forwarded_packets, before, elapsed),
                    match (p.group_filter.as_str(), p.note.as_str()) {
                        ("any group" | "", note) => note.to_owned(),
                        (filter, "") => format!("groups: {filter}"),
                        (filter, note) => format!("groups: {filter}; {note}"),
                    },
                ]);
            }
        }
        View::Querier => {
            rows.push(vec!["bridge".into(), s.bridge.clone()]);
            if s.vlans.is_empty() {
                querier_rows(&mut rows, "IGMP", &s.querier);
                if let Some(mld) = &s.mld_querier {
                    querier_rows(&mut rows, "MLD", mld);
                }
            }
            // A VLAN-aware bridge: a querier per VLAN.
            for vlan in &s.vlans {
                rows.push(vec![format!("vlan {}", vlan.vlan), vlan.ports.join(" ")]);
                querier_rows(&mut rows, &format!("vlan {} IGMP", vlan.vlan), &vlan.querier);
                if let Some(mld) = &vlan.mld_querier {
                    querier_rows(&mut rows, &format!("vlan {} MLD", vlan.vlan), mld);
                }
            }
        }
        View::Forwarding => {
            rows.push(vec!["bridge".into(), s.bridge.clone()]);
            rows.push(vec!["forwarding".into(), s.forwarding.mode.clone()]);
            if let Some(why) = &s.forwarding.why {
                rows.push(vec!["why".into(), why.clone()]);
            }
            for (port, why) in &s.forwarding.bridge_path_ports {
                rows.push(vec![format!("port {port}"), format!("bridge path: {why}")]);
            }
            for (port, why) in &s.forwarding.unattached_ports {
                rows.push(vec![format!("port {port}"), format!("not attached: {why}")]);
            }
        }
        // iproute2's lines, not a table.
        View::Mdb => return crate::mdb::text(s),
        View::Stats => {
            rows.push(vec!["SOURCE".into(), "COUNTER".into(), "VALUE".into()]);
            for (name, value) in &s.datapath {
                rows.push(vec!["datapath".into(), name.clone(), value.to_string()]);
            }
            for (name, value) in &s.controller {
                rows.push(vec!["controller".into(), name.clone(), value.to_string()]);
            }
        }
    }
    table(&rows)
}

/// 1234567 -> "1.2M"; small numbers as they are.
pub fn human(value: f64) -> String {
    const UNITS: [(f64, &str); 3] = [(1e9, "G"), (1e6, "M"), (1e3, "k")];
    for (scale, unit) in UNITS {
        if value >= scale {
            return format!("{:.1}{unit}", value / scale);
        }
    }
    format!("{value:.0}")
}

/// Bytes with SI units: "1.2 MB".
pub fn human_bytes(bytes: u64) -> String {
    let text = human(bytes as f64);
    match text.chars().last() {
        Some(unit) if unit.is_alphabetic() => format!("{} {unit}B", &text[..text.len() - 1]),
        _ => format!("{text} B"),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        // Cells come from the controller: nothing in them drives the terminal.
        let line: Vec<String> =
            row.iter().enumerate().map(|(c, v)| format!("{:<w$}", control::printable(v), w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(human(999.0), "999");
        assert_eq!(human(1234.0), "1.2k");
        assert_eq!(human(2_500_000.0), "2.5M");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
    }

    #[test]
    fn tables_align_columns() {
        let rows = vec![vec!["A".to_string(), "BB".to_string()], vec!["CCC".to_string(), "D".to_string()]];
        assert_eq!(table(&rows), "A    BB\nCCC  D\n");
    }
}
