//! Prometheus metrics (`snoop run --metrics ADDR`), rendered with the
//! prometheus-client crate from the same snapshot `snoop show` gets, so the two
//! always agree, and served with hyper. Every series carries the bridge's
//! name (`bridge`): several bridges per host, and fleets of hosts scraped
//! into one Prometheus, stay apart.
use std::{
    borrow::Cow,
    convert::Infallible,
    sync::Arc,
    time::{Duration, Instant},
};

use http_body_util::Full;
use hyper::{body::Bytes, header, server::conn::http1, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::{control, snapshot::Snapshot};

/// Clients served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 64;
/// A client has this long to send its request, and the whole exchange
/// this long to end (a client that never reads cannot hold a connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Scrapes within this long of the last rendering get that one.
const RENDERED_FRESH_FOR: Duration = Duration::from_secs(1);

/// What the metrics show beyond the defaults.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetricsOptions {
    /// A series per source of each membership (`--metrics-sources`): one
    /// per source per port, which a host can make many of.
    pub sources: bool,
}

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
pub fn render(s: &Snapshot, options: MetricsOptions) -> String {
    let bridge = [(Cow::Borrowed("bridge"), Cow::Owned(s.bridge.clone()))];
    let mut registry = Registry::with_prefix_and_labels("snoop", bridge.into_iter());

    let build = Family::<Labels, Gauge>::default();
    let info = &s.build;
    build
        .get_or_create(&labels(&[
            ("version", info.version.clone()),
            ("kernel", info.kernel.clone()),
            ("attach", info.attach.clone()),
        ]))
        .set(1);
    registry.register("build_info", "1, labelled with snoop's version, the kernel and how it attaches", build);

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
            for source in m.sources.iter().filter(|_| options.sources) {
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
    // Per family and VLAN: whether a querier is present (nothing is pruned
    // while none is), and who it is.
    let present = Family::<Labels, Gauge>::default();
    let role = Family::<Labels, Gauge>::default();
    let mut queriers = vec![(None, "ipv4", Some(&s.querier)), (None, "ipv6", s.mld_querier.as_ref())];
    if !s.vlans.is_empty() {
        queriers = s
            .vlans
            .iter()
            .flat_map(|v| [(Some(v.vlan), "ipv4", Some(&v.querier)), (Some(v.vlan), "ipv6", v.mld_querier.as_ref())])
            .collect();
    }
    for (vlan, family, querier) in queriers {
        let Some(querier) = querier else { continue };
        let mut l = labels(&[("family", family.to_owned())]);
        if let Some(vlan) = vlan {
            l.push(("vlan".into(), vlan.to_string()));
        }
        present.get_or_create(&l).set(i64::from(querier.present));
        l.push(("role".into(), querier.role.clone()));
        role.get_or_create(&l).set(1);
    }
    registry.register("querier_present", "1 while a querier is present (per family and VLAN)", present);
    registry.register("querier_role", "1 for the querier's role: self, other or none", role);
    let entries = Family::<Labels, Gauge>::default();
    let capacity = Family::<Labels, Gauge>::default();
    for fill in &s.maps {
        let l = labels(&[("map", fill.map.clone())]);
        entries.get_or_create(&l).set(i64::try_from(fill.entries).unwrap_or(i64::MAX));
        capacity.get_or_create(&l).set(i64::try_from(fill.capacity).unwrap_or(i64::MAX));
    }
    registry.register("map_entries", "Entries in a data path map", entries);
    registry.register("map_capacity", "Entries a data path map holds at most", capacity);
    let unattached = Gauge::<i64>::default();
    unattached.set(s.forwarding.unattached_ports.len() as i64);
    registry.register("ports_unattached", "Ports snoop's programs could not be attached to", unattached);

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

/// Serves `GET /metrics` (and HEAD) on `listener`; anything else gets a
/// 404. At most [`MAX_CONNECTIONS`] clients at once, each with a deadline;
/// the rendering runs off the controller's thread, at most once a second.
pub(crate) async fn serve(listener: TcpListener, snapshots: control::Snapshots, options: MetricsOptions) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let rendered = Arc::new(tokio::sync::Mutex::new(None::<(Instant, Bytes)>));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                // Out of file descriptors, say: do not spin on it.
                log::debug!("accepting a metrics client: {error}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        // Over the bound: closed at once (dropped).
        let Ok(slot) = slots.clone().try_acquire_owned() else { continue };
        let (snapshots, rendered) = (snapshots.clone(), rendered.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |request| answer(request, snapshots.clone(), rendered.clone(), options));
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(REQUEST_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(EXCHANGE_TIMEOUT, connection).await;
        });
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    snapshots: control::Snapshots,
    rendered: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
    options: MetricsOptions,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let plain = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
        response
    };
    if request.uri().path() != "/metrics" {
        return Ok(plain(StatusCode::NOT_FOUND, "see /metrics\n"));
    }
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "GET or HEAD\n"));
    }
    let mut cached = rendered.lock().await;
    let text = match cached.as_ref() {
        Some((at, text)) if at.elapsed() < RENDERED_FRESH_FOR => text.clone(),
        _ => {
            let Some(snapshot) = control::ask(&snapshots, false).await else {
                return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "snoop is shutting down\n"));
            };
            let rendering = tokio::task::spawn_blocking(move || render(&snapshot, options));
            let Ok(text) = rendering.await else {
                return Ok(plain(StatusCode::INTERNAL_SERVER_ERROR, "rendering failed\n"));
            };
            let text = Bytes::from(text);
            *cached = Some((Instant::now(), text.clone()));
            text
        }
    };
    drop(cached);
    // (hyper sends the headers alone for a HEAD.)
    let mut response = Response::new(Full::new(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The series the README lists (a lab test checks them against the served ones).
    fn listed() -> BTreeSet<String> {
        let readme = include_str!("../../README.md");
        let block =
            readme.split("<!-- metrics list -->").nth(1).and_then(|b| b.split("```").nth(1)).unwrap_or_default();
        block
            .lines()
            .filter_map(|l| Some(l.split(['{', ' ']).next()?.to_owned()))
            .filter(|n| n.starts_with("snoop_"))
            .collect()
    }

    /// The snoop_* names an expression text uses.
    fn used(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for (at, _) in text.match_indices("snoop_") {
            let name: String = text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            names.insert(name);
        }
        names
    }

    /// The dashboard and the alert rules name only series snoop serves
    /// (and Prometheus's own `up`).
    #[test]
    fn the_dashboard_and_the_alerts_name_only_served_series() {
        let listed = listed();
        assert!(listed.len() > 10, "the README's list: {listed:?}");
        for (file, text) in [
            ("grafana-dashboard.json", include_str!("../../dist/grafana-dashboard.json")),
            ("prometheus-alerts.yml", include_str!("../../dist/prometheus-alerts.yml")),
        ] {
            let used = used(text);
            assert!(!used.is_empty(), "{file} names no series");
            let unknown: Vec<&String> = used.iter().filter(|n| !listed.contains(*n)).collect();
            assert!(unknown.is_empty(), "{file} names series snoop does not serve: {unknown:?}");
        }
    }
}
