//! snoop is a guest on the ports' tc hooks: the operator's own programs and
//! filters there stay in force. A host whose port drops everything it sends
//! stays cut off with snoop running (no redirect copies its frames past the
//! filter), and one whose port drops everything sent to it gets nothing
//! (no copy is handed past the filter to its veth peer), while the other
//! hosts keep getting their groups over the redirect fast path.
use std::{net::Ipv4Addr, thread, time::Duration};

use anyhow::Result;
use aya::util::KernelVersion;
use snoop_tests::{
    lab::{self, Lab},
    operator::{Filter, Hook},
    snoop_bin, stat, wait_for_members, wait_until, LabOptions, FAST_TIMERS as FAST,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

/// TCX links exist from Linux 6.6 on; before, only classic filters.
fn tcx() -> bool {
    KernelVersion::current().is_ok_and(|version| version >= KernelVersion::new(6, 6, 0))
}

/// Whether `host` can reach h0 by ping (ARP included).
fn reaches_h0(lab: &Lab, host: &str) -> Result<bool> {
    let target = lab.host("h0").ip.to_string();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.host(host).netns, "ping", "-c", "1", "-W", "1", &target])
        .output()?;
    Ok(out.status.success())
}

/// `snoop show forwarding`'s ports on the bridge path, by name.
fn bridge_path_ports(lab: &Lab) -> Result<Vec<String>> {
    let forwarding = lab.snoop_show(&snoop_bin(), "forwarding")?;
    let ports = forwarding["bridge_path_ports"].as_object().cloned().unwrap_or_default();
    Ok(ports.keys().cloned().collect())
}

#[test]
fn hosts_behind_ingress_drop_filters_stay_blocked() -> Result<()> {
    // h0 sends, h1 is a member; each of h2.. is cut off by one kind of
    // filter on its port's ingress, put there before or after snoop starts.
    let before: Vec<(&str, Filter)> = [("p2", Filter::Classic), ("p3", Filter::TcxLast)]
        .into_iter()
        .filter(|(_, f)| tcx() || *f == Filter::Classic)
        .collect();
    let after: Vec<(&str, Filter)> = [("p4", Filter::Classic), ("p5", Filter::TcxLast), ("p6", Filter::TcxFirst)]
        .into_iter()
        .filter(|(_, f)| tcx() || *f == Filter::Classic)
        .collect();
    let mut lab = Lab::new("opingress", 7, &LabOptions::default())?;
    for (port, filter) in &before {
        lab.add_drop_filter(port, Hook::Ingress, *filter)?;
    }
    // Control: the filters hold on the plain bridge.
    for (port, _) in &before {
        assert!(!reaches_h0(&lab, &port.replace('p', "h"))?, "{port}: the filter does not hold without snoop");
    }
    lab.start_snoop(&snoop_bin(), FAST)?;
    let mut links = Vec::new();
    for (port, filter) in &after {
        links.push(lab.add_drop_filter(port, Hook::Ingress, *filter)?);
    }
    let _member = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let filtered: Vec<&str> = before.iter().chain(&after).map(|(port, _)| *port).collect();
    // Ports whose filter runs after snoop's program take the bridge path:
    // on TCX, classic filters (they run after every TCX link) and links
    // put after snoop's (which goes first); with clsact filters (before
    // 6.6), the filter that was there before snoop's (which goes ahead of
    // it; tc puts the one added later ahead of snoop's). Seen at the next
    // port scan (1 s).
    let after_snoop: Vec<String> =
        if tcx() { vec!["p2", "p3", "p4", "p5"] } else { vec!["p2"] }.into_iter().map(String::from).collect();
    thread::sleep(Duration::from_millis(1500));

    let sniffer = lab.sniff("h1")?;
    for port in &filtered {
        let host = port.replace('p', "h");
        assert!(!reaches_h0(&lab, &host)?, "{host} reaches h0 through its port's drop filter");
        lab.send(&host, G, 50, Duration::from_micros(200))?;
    }
    lab.send("h0", G, 100, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    for port in &filtered {
        let host = lab.host(&port.replace('p', "h")).ip;
        assert_eq!(sniffer.count_from(host, G), 0, "{port}'s filter was bypassed");
    }
    assert_eq!(sniffer.count_from(lab.host("h0").ip, G), 100, "the member lost packets of an unfiltered sender");
    assert!(stat(&lab, "datapath", "redirected")? >= 100, "the unfiltered sender's stream was not redirected");
    assert_eq!(bridge_path_ports(&lab)?, after_snoop, "`snoop show forwarding`");

    // A filter removed: its port takes the fast path again.
    if tcx() {
        std::fs::remove_file(&links[1])?;
        wait_until("p5 off the bridge path", Duration::from_secs(5), || {
            Ok(!bridge_path_ports(&lab)?.contains(&"p5".to_owned()))
        })?;
        // (Its host's ARP entry for h0 failed meanwhile: the first ping may wait for a new one.)
        wait_until("h5 reaching h0 with its filter gone", Duration::from_secs(5), || reaches_h0(&lab, "h5"))?;
    }
    Ok(())
}

#[test]
fn hosts_behind_egress_drop_filters_get_nothing() -> Result<()> {
    let before: Vec<(&str, Filter)> = [("p2", Filter::Classic), ("p3", Filter::TcxLast)]
        .into_iter()
        .filter(|(_, f)| tcx() || *f == Filter::Classic)
        .collect();
    let after: Vec<(&str, Filter)> = [("p4", Filter::Classic), ("p5", Filter::TcxFirst)]
        .into_iter()
        .filter(|(_, f)| tcx() || *f == Filter::Classic)
        .collect();
    let mut lab = Lab::new("opegress", 6, &LabOptions::default())?;
    for (port, filter) in &before {
        lab.add_drop_filter(port, Hook::Egress, *filter)?;
    }
    lab.start_snoop(&snoop_bin(), FAST)?;
    for (port, filter) in &after {
        lab.add_drop_filter(port, Hook::Egress, *filter)?;
    }
    let filtered: Vec<&str> = before.iter().chain(&after).map(|(port, _)| *port).collect();
    let hosts: Vec<String> = filtered.iter().map(|port| port.replace('p', "h")).collect();
    let _members: Vec<_> =
        ["h1"].iter().map(|h| h.to_string()).chain(hosts.clone()).map(|h| lab.join(&h, G)).collect::<Result<_>>()?;
    let ports: Vec<&str> = ["p1"].into_iter().chain(filtered.iter().copied()).collect();
    // Their joins reach snoop (their ingress is open), so they are members;
    // the copies must still pass their ports' egress filters.
    wait_for_members(&lab, G, &ports, JOIN_TIMEOUT)?;
    thread::sleep(Duration::from_millis(1500)); // a port scan sees the filters added since
    let sniffers =
        ["h1"].iter().map(|h| h.to_string()).chain(hosts.clone()).map(|h| lab.sniff(&h)).collect::<Result<Vec<_>>>()?;
    lab.send("h0", G, 200, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    let got: Vec<u64> = sniffers.iter().map(|s| s.count(G)).collect();
    let mut want = vec![0; got.len()];
    want[0] = 200;
    assert_eq!(got, want, "h1 and the hosts behind egress drop filters ({hosts:?})");
    assert!(stat(&lab, "datapath", "redirected")? >= 200, "the stream was not redirected");
    Ok(())
}

/// The filters stay when snoop stops: it removes only its own.
#[test]
fn snoop_leaves_the_operators_filters_when_it_stops() -> Result<()> {
    let mut lab = Lab::new("opstay", 3, &LabOptions::default())?;
    lab.add_drop_filter("p2", Hook::Ingress, Filter::Classic)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    assert!(lab.stop_snoop(false)?.success());
    let out = lab::run("tc", &["-n", &lab.bridge_netns, "filter", "show", "dev", "p2", "ingress"])?;
    assert!(out.contains("bpf"), "the operator's filter is gone: {out}");
    assert!(!reaches_h0(&lab, "h2")?, "h2 reaches h0 after snoop stopped");
    Ok(())
}
