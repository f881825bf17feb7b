//! Observability against the lab's ground truth: counters equal what hosts
//! actually sent and received, `--json` matches the lab's state, metrics serve
//! the same numbers, and `snoop watch` streams the membership changes.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    thread,
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;
use snoop_tests::{lab::Lab, snoop_bin, wait_for_members, wait_until, LabOptions, Watcher};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
use snoop_tests::FAST_TIMERS as FAST;
const METRICS: &str = "127.0.0.1:9464";

fn find<'a>(items: &'a Value, key: &str, value: &str) -> &'a Value {
    items
        .as_array()
        .and_then(|a| a.iter().find(|i| i[key] == value))
        .unwrap_or_else(|| panic!("no {key}={value} in {items}"))
}

/// `curl http://127.0.0.1:9464/metrics`, from inside the lab's bridge namespace.
fn scrape(lab: &Lab) -> Result<String> {
    snoop_tests::lab::in_netns(&lab.bridge_netns, || -> Result<String> {
        let mut stream = TcpStream::connect(METRICS)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: snoop\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "metrics answered: {response}");
        Ok(response)
    })?
}

fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[test]
fn counters_json_and_metrics_match_what_hosts_got() -> Result<()> {
    counters_match("redirect")
}

#[test]
fn counters_match_in_bridge_forwarding_too() -> Result<()> {
    counters_match("bridge")
}

fn counters_match(forwarding: &str) -> Result<()> {
    let mut lab = Lab::new(&format!("counters-{forwarding}"), 3, &LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.extend(["--metrics", METRICS, "--forwarding", forwarding]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;

    let (h1, h2) = (lab.sniff("h1")?, lab.sniff("h2")?);
    lab.send("h0", G, 100, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    assert_eq!((h1.count(G), h2.count(G)), (100, 0));

    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let group = find(&groups, "group", "239.1.1.1");
    assert_eq!(group["forwarded_packets"], h1.count(G), "forwarded = what h1 got");
    assert_eq!(group["pruned_packets"], 100, "pruned = what h2 was spared");
    // 64-byte UDP payload in a 106-byte frame.
    assert_eq!(group["forwarded_bytes"], 100 * 106);
    assert_eq!(find(&group["members"], "port", "p1")["version"], 3);

    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p1 = find(&ports, "name", "p1");
    assert!(p1["reports_received"].as_u64().unwrap() >= 1);
    assert_eq!(p1["forwarded_packets"], 100);
    // Per-port pruning is seen where the bridge offers the copy: bridge forwarding.
    let p2_pruned = if forwarding == "bridge" { 100 } else { 0 };
    assert_eq!(find(&ports, "name", "p2")["pruned_packets"], p2_pruned);
    assert_eq!(find(&ports, "name", "p0")["forwarded_packets"], 0, "nothing goes back to the sender");

    let metrics = scrape(&lab)?;
    assert_eq!(metric(&metrics, "snoop_forwarded_packets_total{group=\"239.1.1.1\",port=\"p1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_group_pruned_packets_total{group=\"239.1.1.1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_port_pruned_packets_total{port=\"p2\"}"), Some(p2_pruned));
    assert_eq!(metric(&metrics, "snoop_port_forwarded_packets_total{port=\"p1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_group_member_ports{group=\"239.1.1.1\"}"), Some(1));
    assert_eq!(metric(&metrics, "snoop_querier_is_self"), Some(1));
    assert!(metrics.trim_end().ends_with("# EOF"));
    let stats = lab.snoop_show(&snoop_bin(), "stats")?;
    let redirected = stats["datapath"]["redirected"].as_u64().unwrap();
    assert_eq!(redirected, if forwarding == "redirect" { 100 } else { 0 });
    Ok(())
}

#[test]
fn watch_streams_joins_and_leaves() -> Result<()> {
    let mut lab = Lab::new("watch", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let watcher = Watcher::start(&lab)?;
    thread::sleep(Duration::from_millis(300)); // let it subscribe
    let m1 = lab.join("h1", G)?;
    let join = watcher.next()?;
    assert_eq!(
        (join["event"].as_str(), join["group"].as_str(), join["port"].as_str()),
        (Some("join"), Some("239.1.1.1"), Some("p1"))
    );
    assert_eq!(join["detail"], "IGMPv3");

    drop(m1);
    // The leave ends the membership once the last-member queries go unanswered.
    let end = watcher.next()?;
    assert_eq!((end["event"].as_str(), end["port"].as_str()), (Some("leave"), Some("p1")));
    wait_until("membership gone", Duration::from_secs(2), || {
        Ok(lab.snoop_show(&snoop_bin(), "groups")?.as_array().is_some_and(|g| g.is_empty()))
    })?;
    Ok(())
}
