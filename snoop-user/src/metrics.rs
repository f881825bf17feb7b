//! Prometheus metrics (`snoop run --metrics ADDR`), rendered with the
//! prometheus-client crate from the same snapshot `snoop show` gets, so the two
//! always agree.
use std::time::Duration;

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
};

use crate::{control, snapshot::Snapshot};

type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

/// A group's labels: its address, and its VLAN on a VLAN-aware bridge.
fn group_labels(group: std::net::IpAddr, vlan: Option<u16>, more: &[(&str, String)]) -> Labels {
    let mut l = labels(&[("group", group.to_string())]);
    if let Some(vlan) = vlan {
        l.push(("vlan".into(), vlan.to_string()));
    }
    l.extend(labels(more));
    l
}

/// The OpenMetrics text for one snapshot.
pub fn render(s: &Snapshot) -> String {
    let mut registry = Registry::with_prefix("snoop");

    let member_ports = Family::<Labels, Gauge>::default();
    let membership = Family::<Labels, Gauge>::default();
    let membership_sources = Family::<Labels, Gauge>::default();
    for group in &s.groups {
        member_ports.get_or_create(&group_labels(group.group, group.vlan, &[])).set(group.members.len() as i64);
        for m in &group.members {
            let l = group_labels(
                group.group,
                group.vlan,
                &[("port", m.port.clone()), ("protocol", m.protocol.clone()), ("version", m.version.to_string())],
            );
            membership.get_or_create(&l).set(1);
            for source in &m.sources {
                let l = group_labels(
                    group.group,
                    group.vlan,
                    &[
                        ("port", m.port.clone()),
                        ("source", source.address.to_string()),
                        ("mode", m.filter_mode.as_str().to_owned()),
                    ],
                );
                membership_sources.get_or_create(&l).set(i64::from(source.forwarded));
            }
        }
    }
    registry.register("group_member_ports", "Ports with members of the group", member_ports);
    registry.register("membership", "1 for each (group, port) with a member", membership);
    registry.register(
        "membership_source",
        "Each source a (group, port) membership names: 1 forwarded, 0 blocked (mode: its filter mode)",
        membership_sources,
    );

    let forwarded_packets = Family::<Labels, Counter>::default();
    let forwarded_bytes = Family::<Labels, Counter>::default();
    for t in &s.traffic {
        let l = group_labels(t.group, t.vlan, &[("port", t.port.clone())]);
        forwarded_packets.get_or_create(&l).inc_by(t.forwarded_packets);
        forwarded_bytes.get_or_create(&l).inc_by(t.forwarded_bytes);
    }
    registry.register("forwarded_packets", "Group packets sent to a member port", forwarded_packets);
    registry.register("forwarded_bytes", "Group bytes sent to a member port", forwarded_bytes);
    let group_pruned_packets = Family::<Labels, Counter>::default();
    let group_pruned_bytes = Family::<Labels, Counter>::default();
    for g in &s.groups {
        let l = group_labels(g.group, g.vlan, &[]);
        group_pruned_packets.get_or_create(&l).inc_by(g.pruned_packets);
        group_pruned_bytes.get_or_create(&l).inc_by(g.pruned_bytes);
    }
    registry.register(
        "group_pruned_packets",
        "Group packets held back from ports without members",
        group_pruned_packets,
    );
    registry.register("group_pruned_bytes", "Group bytes held back from ports without members", group_pruned_bytes);
    let port_forwarded_packets = Family::<Labels, Counter>::default();
    let port_pruned_packets = Family::<Labels, Counter>::default();
    for p in &s.ports {
        let l = labels(&[("port", p.name.clone())]);
        port_forwarded_packets.get_or_create(&l).inc_by(p.forwarded_packets);
        port_pruned_packets.get_or_create(&l).inc_by(p.pruned_packets);
    }
    registry.register("port_forwarded_packets", "Group packets sent out of a port, all groups", port_forwarded_packets);
    registry.register("port_pruned_packets", "Group packets held back from a port, all groups", port_pruned_packets);

    let control = Family::<Labels, Counter>::default();
    let router = Family::<Labels, Gauge>::default();
    let mld_router = Family::<Labels, Gauge>::default();
    for p in &s.ports {
        for (kind, value) in [
            ("query", p.queries_received),
            ("report", p.reports_received),
            ("leave", p.leaves_received),
            ("other_igmp", p.other_igmp_received),
            ("pim_hello", p.pim_hellos_received),
            ("malformed", p.malformed_dropped),
        ] {
            control.get_or_create(&labels(&[("port", p.name.clone()), ("type", kind.into())])).inc_by(value);
        }
        router.get_or_create(&labels(&[("port", p.name.clone())])).set(i64::from(p.router));
        mld_router.get_or_create(&labels(&[("port", p.name.clone())])).set(i64::from(p.mld_router));
    }
    registry.register("port_control_frames", "Control frames received on a port, by type", control);
    registry.register("port_is_router", "1 if the port is an IPv4 (IGMP) router port", router);
    registry.register("port_is_mld_router", "1 if the port is an IPv6 (MLD) router port", mld_router);
    let refused = Family::<Labels, Counter>::default();
    for p in &s.ports {
        for (reason, value) in [("filter", p.refused_by_filter), ("limit", p.refused_by_limit)] {
            refused.get_or_create(&labels(&[("port", p.name.clone()), ("reason", reason.into())])).inc_by(value);
        }
    }
    registry.register("port_refused_joins", "Joins a port's group filter or group limit refused", refused);

    let is_querier = Gauge::<i64>::default();
    is_querier.set(i64::from(s.querier.role == "self"));
    registry.register("querier_is_self", "1 while snoop is the IGMP querier", is_querier);
    if let Some(mld) = &s.mld_querier {
        let is_querier = Gauge::<i64>::default();
        is_querier.set(i64::from(mld.role == "self"));
        registry.register("mld_querier_is_self", "1 while snoop is the MLD querier", is_querier);
    }

    let datapath = Family::<Labels, Counter>::default();
    for (name, value) in &s.datapath {
        datapath.get_or_create(&labels(&[("counter", name.clone())])).inc_by(*value);
    }
    registry.register("datapath_events", "Data path counters", datapath);
    let controller = Family::<Labels, Counter>::default();
    for (name, value) in &s.controller {
        controller.get_or_create(&labels(&[("counter", name.clone())])).inc_by(*value);
    }
    registry.register("controller_events", "Controller counters (parse drops, queries sent)", controller);

    let mut out = String::new();
    encode(&mut out, &registry).expect("writing to a String");
    out
}

/// Answers `GET /metrics` on `listener`; anything else gets a 404.
pub(crate) async fn serve(listener: TcpListener, snapshots: control::Snapshots) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        tokio::spawn(answer(stream, snapshots.clone()));
    }
}

async fn answer(mut stream: TcpStream, snapshots: control::Snapshots) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head (bounded in size and time).
    let read = tokio::time::timeout(Duration::from_secs(2), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    });
    if read.await.is_err() {
        return;
    }
    let response = if head.starts_with(b"GET /metrics ") {
        match control::ask(&snapshots, false).await {
            Some(snapshot) => {
                http("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", &render(&snapshot))
            }
            None => http("503 Service Unavailable", "text/plain", "snoop is shutting down\n"),
        }
    } else {
        http("404 Not Found", "text/plain", "see /metrics\n")
    };
    let _ = stream.write_all(response.as_bytes()).await;
}

fn http(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
