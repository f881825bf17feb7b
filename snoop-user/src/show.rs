//! `snoop show`: asks a running controller for its state and prints it.
use std::{io::Read as _, os::unix::net::UnixStream, time::Duration};

use anyhow::{bail, Context as _, Result};

use crate::{controller::control_socket_name, snapshot::Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    Groups,
    Ports,
    Querier,
    Stats,
}

/// Fetches the state of the controller running on `bridge` in this network namespace.
pub fn fetch(bridge: &str) -> Result<Snapshot> {
    use std::os::linux::net::SocketAddrExt as _;
    let name = control_socket_name(bridge);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            bail!("snoop is not running on bridge {bridge} in this network namespace (start it with `snoop run --bridge {bridge}`)")
        }
        Err(e) => return Err(e).context("connecting to the snoop controller"),
    };
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).context("reading from the snoop controller")?;
    serde_json::from_slice(&body).context("the controller's answer is not a snapshot")
}

pub fn print(snapshot: &Snapshot, view: View, json: bool) -> Result<()> {
    if json {
        let value = match view {
            View::Groups => serde_json::to_string_pretty(&snapshot.groups)?,
            View::Ports => serde_json::to_string_pretty(&snapshot.ports)?,
            View::Querier => serde_json::to_string_pretty(&snapshot.querier)?,
            View::Stats => serde_json::to_string_pretty(&serde_json::json!({
                "datapath": snapshot.datapath,
                "controller": snapshot.controller,
                "traffic": snapshot.traffic,
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
    let mut rows: Vec<Vec<String>> = Vec::new();
    match view {
        View::Groups => {
            rows.push(["GROUP", "PORT", "VERSION", "EXPIRES", "REPORTER", "STATE", "FORWARDED"].map(String::from).to_vec());
            for group in &s.groups {
                for m in &group.members {
                    let forwarded = s
                        .traffic
                        .iter()
                        .find(|t| t.group == group.group && t.ifindex == m.ifindex)
                        .map_or(0, |t| t.forwarded_packets);
                    rows.push(vec![
                        group.group.to_string(),
                        m.port.clone(),
                        format!("v{}", m.version),
                        format!("{:.1}s", m.expires_in_secs),
                        m.last_reporter.to_string(),
                        if m.leaving { "leaving".into() } else { "member".into() },
                        format!("{forwarded} pkts"),
                    ]);
                }
            }
        }
        View::Ports => {
            rows.push(["PORT", "IFINDEX", "ROUTER", "FAST-LEAVE", "GROUPS"].map(String::from).to_vec());
            for p in &s.ports {
                let router = match (p.static_router, p.router, p.router_expires_in_secs) {
                    (true, _, _) => "static".to_string(),
                    (false, true, Some(left)) => format!("learned ({left:.0}s)"),
                    _ => "-".to_string(),
                };
                rows.push(vec![
                    p.name.clone(),
                    p.ifindex.to_string(),
                    router,
                    if p.fast_leave { "yes".into() } else { "no".into() },
                    p.groups.to_string(),
                ]);
            }
        }
        View::Querier => {
            let q = &s.querier;
            let querier = q.querier_address.map_or("-".to_string(), |a| a.to_string());
            rows.push(vec!["bridge".into(), s.bridge.clone()]);
            rows.push(vec!["role".into(), q.role.clone()]);
            rows.push(vec!["querier".into(), querier]);
            rows.push(vec!["own address".into(), q.own_address.to_string()]);
            if let Some(next) = q.next_query_in_secs {
                rows.push(vec!["next query in".into(), format!("{next:.1}s")]);
            }
            if let Some(left) = q.other_querier_expires_in_secs {
                rows.push(vec!["other querier expires in".into(), format!("{left:.1}s")]);
            }
        }
        View::Stats => {
            rows.push(vec!["COUNTER".into(), "VALUE".into()]);
            for (name, value) in s.datapath.iter().chain(s.controller.iter()) {
                rows.push(vec![name.clone(), value.to_string()]);
            }
        }
    }
    table(&rows)
}

/// Left-aligned columns separated by two spaces.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..columns).map(|c| rows.iter().filter_map(|r| r.get(c)).map(|v| v.chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row.iter().enumerate().map(|(c, v)| format!("{v:<w$}", w = widths[c])).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}
