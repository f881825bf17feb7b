//! End-to-end snooping in a lab of network namespaces: a real bridge, real
//! veth ports, real kernel IGMP hosts, snoop's real maps. Each test checks what
//! each receiver's interface actually got and what the membership map holds.
use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use snoop_tests::{
    lab::{self, Lab},
    map_members, shown_members, snoop_bin, stat, wait_for_members, wait_until, LabOptions,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const G_SAME_MAC: Ipv4Addr = Ipv4Addr::new(239, 129, 1, 1);
const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const SETTLE: Duration = Duration::from_millis(300);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

use snoop_tests::FAST_TIMERS as FAST;

fn lab(tag: &str, hosts: usize, options: LabOptions) -> Result<Lab> {
    Lab::new(tag, hosts, &options)
}

/// Sends `n` packets to each group from h0 and returns what each receiver got.
fn blast(lab: &Lab, receivers: &[&str], groups: &[Ipv4Addr], n: u64) -> Result<Vec<Vec<u64>>> {
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    for group in groups {
        lab.send("h0", *group, n, Duration::from_micros(200))?;
    }
    thread::sleep(SETTLE);
    Ok(sniffers.iter().map(|s| groups.iter().map(|g| s.count(*g)).collect()).collect())
}

#[test]
fn only_members_receive_the_group() -> Result<()> {
    let mut lab = lab("members", 5, LabOptions::default())?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    let receivers = ["h1", "h2", "h3", "h4"];

    // Control: the plain bridge floods, so the counts below can fail.
    assert_eq!(blast(&lab, &receivers, &[G], 100)?, vec![vec![100]; 4]);

    lab.start_snoop(&snoop_bin(), FAST)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    assert_eq!(blast(&lab, &receivers, &[G], 100)?, [[100], [100], [0], [0]]);
    assert_eq!(shown_members(&lab, G)?, ["p1", "p2"].map(String::from).into());
    // The sender's own port has no member either.
    assert!(!map_members(&lab)?.iter().any(|(_, port)| port == "p0"));
    assert!(stat(&lab, "datapath", "data_pruned")? >= 200);
    Ok(())
}

fn member_leaves(igmp_version: u8) -> Result<()> {
    let options = LabOptions { igmp_version: Some(igmp_version), ..Default::default() };
    let mut lab = lab(&format!("leave{igmp_version}"), 3, options)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;

    // Closing the socket makes the kernel send a v2 leave / v3 TO_IN{}.
    drop(m1);
    let left = Instant::now();
    wait_for_members(&lab, G, &["p2"], Duration::from_secs(3))?;
    // Last member query time is 2 x 200 ms; allow for the hosts' send delay.
    assert!(left.elapsed() < Duration::from_millis(1500), "leave took {:?}", left.elapsed());
    assert_eq!(blast(&lab, &["h1", "h2"], &[G], 100)?, [[0], [100]]);
    assert!(stat(&lab, "controller", "group_queries_sent")? >= 1);
    Ok(())
}

#[test]
fn v2_leave_stops_traffic_within_last_member_time() -> Result<()> {
    member_leaves(2)
}

#[test]
fn v3_to_include_empty_stops_traffic_within_last_member_time() -> Result<()> {
    member_leaves(3)
}

#[test]
fn silent_member_is_aged_out() -> Result<()> {
    let mut lab = lab("silent", 3, LabOptions::default())?;
    // Group membership interval: 2 x 2 s + 1 s = 5 s.
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;

    // h1 vanishes without a word: no report or leave of its gets out, its
    // link stays up (a pulled cable ends the membership at once, below).
    lab.silence_host("h1")?;
    let pulled = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    assert!(map_members(&lab)?.contains(&(G, "p1".into())), "removed before the membership interval");
    wait_for_members(&lab, G, &["p2"], Duration::from_secs(8))?;
    let aged = pulled.elapsed();
    assert!(aged >= Duration::from_secs(2), "aged out after only {aged:?}");
    assert_eq!(blast(&lab, &["h2"], &[G], 50)?, [[50]]);
    Ok(())
}

#[test]
fn snoops_queries_keep_members_alive_without_a_router() -> Result<()> {
    let mut lab = lab("querier", 3, LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let sniffer = lab.sniff("h2")?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    // Three membership intervals: only answers to snoop's queries keep h1 in.
    for _ in 0..3 {
        thread::sleep(Duration::from_secs(5));
        assert!(map_members(&lab)?.contains(&(G, "p1".into())), "member lost although it answers queries");
    }
    assert!(
        sniffer.queries_from(Ipv4Addr::UNSPECIFIED) >= 6,
        "hosts got {} queries",
        sniffer.queries_from(Ipv4Addr::UNSPECIFIED)
    );
    assert_eq!(blast(&lab, &["h1", "h2"], &[G], 50)?, [[50], [0]]);
    Ok(())
}

#[test]
fn without_querier_members_expire() -> Result<()> {
    // The counterpart of the test above: with no querier anywhere, nothing
    // refreshes h1 after its join reports, so it expires (5 s interval).
    let mut lab = lab("noquerier", 3, LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.push("--no-querier");
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    wait_for_members(&lab, G, &[], Duration::from_secs(8))?;
    Ok(())
}

#[test]
fn lower_ip_querier_silences_snoop_until_it_goes_quiet() -> Result<()> {
    let mut lab = lab("election", 4, LabOptions::default())?;
    let own = Ipv4Addr::new(10, 99, 0, 200);
    let other = lab.host("h3").ip; // 10.99.0.13 < 10.99.0.200
    let mut args = FAST.to_vec();
    args.extend(["--query-source", "10.99.0.200", "--other-querier-present-interval", "3s", "--trusted-port", "p3"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let sniffer = lab.sniff("h1")?;
    wait_until("snoop's own queries", Duration::from_secs(5), || Ok(sniffer.queries_from(own) >= 1))?;

    // h3 queries every 500 ms for 4 s from a lower address.
    let query = lab::igmp_query_packet(other, None);
    lab.send_raw_ip("h3", &query)?;
    wait_until("election lost", Duration::from_secs(2), || {
        Ok(lab.snoop_show(&snoop_bin(), "querier")?["role"] == "other")
    })?;
    let querier = lab.snoop_show(&snoop_bin(), "querier")?;
    assert_eq!(querier["querier_address"], other.to_string());
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p3 = ports.as_array().unwrap().iter().find(|p| p["name"] == "p3").unwrap().clone();
    assert_eq!(p3["router"], true, "the querier's port is a router port");

    let own_before = sniffer.queries_from(own);
    for _ in 0..8 {
        lab.send_raw_ip("h3", &query)?;
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(sniffer.queries_from(own), own_before, "snoop kept querying after losing the election");

    // h3 goes quiet: after the other-querier-present interval snoop takes over.
    wait_until("snoop querier again", Duration::from_secs(6), || Ok(sniffer.queries_from(own) > own_before))?;
    assert_eq!(lab.snoop_show(&snoop_bin(), "querier")?["role"], "self");
    Ok(())
}

#[test]
fn link_local_floods_and_same_mac_groups_stay_apart() -> Result<()> {
    let mut lab = lab("linklocal", 4, LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G_SAME_MAC)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    wait_for_members(&lab, G_SAME_MAC, &["p2"], JOIN_TIMEOUT)?;
    let got = blast(&lab, &["h1", "h2", "h3"], &[G, G_SAME_MAC, MDNS], 100)?;
    assert_eq!(got, [[100, 0, 100], [0, 100, 100], [0, 0, 100]]);
    Ok(())
}

#[test]
fn controller_restart_keeps_members_receiving() -> Result<()> {
    let mut lab = lab("restart", 4, LabOptions::default())?;
    let mut args = FAST.to_vec();
    // A restart in an emulated VM takes longer than these timers' 5 s
    // failsafe, which would then flood (tested on its own elsewhere).
    args.extend(["--keep-state", "--failsafe-after", "60s"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;

    for kill in [false, true] {
        let sniffers = ["h1", "h2", "h3"].map(|h| lab.sniff(h).unwrap());
        // 1500 packets over about 3 s; snoop is stopped and restarted meanwhile.
        let sent = 1500;
        let sender = lab.sender("h0")?;
        let sending = thread::spawn(move || sender.send(G, sent, Duration::from_millis(2)));
        thread::sleep(Duration::from_millis(800));
        lab.stop_snoop(kill)?;
        lab.start_snoop(&snoop_bin(), &args)?;
        sending.join().expect("sender thread")?;
        thread::sleep(SETTLE);
        let got = sniffers.map(|s| s.count(G));
        assert_eq!(got, [sent, sent, 0], "restart (kill: {kill}) lost or leaked packets");
        // The new controller adopted the memberships.
        assert_eq!(shown_members(&lab, G)?, ["p1", "p2"].map(String::from).into());
    }
    Ok(())
}

#[test]
fn clean_exit_leaves_nothing_behind() -> Result<()> {
    let mut lab = lab("cleanexit", 3, LabOptions { kernel_snooping: true, ..Default::default() })?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert!(lab.pin_dir().exists());
    let status = lab.stop_snoop(false)?;
    assert!(status.success(), "snoop exited with {status}");
    assert!(!lab.pin_dir().exists(), "pins left in {}", lab.pin_dir().display());
    for port in ["p0", "p1", "p2"] {
        assert_eq!(snoop_tests::attached_programs(&lab, port)?, 0, "programs still attached to {port}");
        let qdiscs = lab::run("tc", &["-n", &lab.bridge_netns, "qdisc", "show", "dev", port])?;
        assert!(!qdiscs.contains("clsact"), "a qdisc was left on {port}");
    }
    let bridge = lab.ip_br(&["-d", "-j", "link", "show", "br0"])?;
    assert!(bridge.contains("\"mcast_snooping\":1"), "kernel snooping not restored: {bridge}");
    // And the plain bridge floods again.
    assert_eq!(blast(&lab, &["h1", "h2"], &[G], 20)?, [[20], [20]]);
    Ok(())
}

#[test]
fn ports_added_and_removed_while_running() -> Result<()> {
    let mut lab = lab("hotplug", 3, LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;

    lab.add_host(3, &LabOptions::default())?;
    let _m3 = lab.join("h3", G)?;
    wait_for_members(&lab, G, &["p1", "p3"], JOIN_TIMEOUT)?;
    assert_eq!(blast(&lab, &["h1", "h2", "h3"], &[G], 50)?, [[50], [0], [50]]);

    lab.ip_br(&["link", "set", "p1", "nomaster"])?;
    wait_for_members(&lab, G, &["p3"], Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn router_ports_get_all_groups_and_reports_hosts_get_none() -> Result<()> {
    let mut lab = lab("routers", 4, LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.extend(["--router-port", "p3", "--unregistered", "routers"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let (host_side, router_side) = (lab.sniff("h2")?, lab.sniff("h3")?);
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    thread::sleep(Duration::from_secs(1));
    // h1's reports reach the router port only (so no host suppresses its own).
    assert_eq!(host_side.reports(), 0, "a host port got reports");
    assert!(router_side.reports() >= 1, "the router port got no reports");

    // G (joined) reaches its member and the router; UNJOINED only the router.
    const UNJOINED: Ipv4Addr = Ipv4Addr::new(239, 3, 3, 3);
    let got = blast(&lab, &["h1", "h2", "h3"], &[G, UNJOINED], 50)?;
    assert_eq!(got, [[50, 0], [0, 0], [50, 50]]);
    assert!(stat(&lab, "datapath", "unregistered_dropped")? >= 100);
    Ok(())
}

/// Fast leave on p1, and a long last-member round (3 s): only fast leave
/// can remove p1 quickly.
const FAST_LEAVE_ON_P1: &[&str] = &[
    "--query-interval",
    "2s",
    "--query-response-interval",
    "1s",
    "--last-member-query-interval",
    "3s",
    "--fast-leave",
    "p1",
];

#[test]
fn fast_leave_removes_at_once_without_queries() -> Result<()> {
    let mut lab = lab("fastleave", 3, LabOptions { igmp_version: Some(2), ..Default::default() })?;
    lab.start_snoop(&snoop_bin(), FAST_LEAVE_ON_P1)?;
    let m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    drop(m1);
    wait_for_members(&lab, G, &["p2"], Duration::from_millis(1000))?;
    assert_eq!(stat(&lab, "controller", "group_queries_sent")?, 0);
    Ok(())
}

#[test]
fn fast_leave_keeps_a_port_while_another_host_behind_it_wants_the_group() -> Result<()> {
    // h1a and h1b (IGMPv3 hosts) share p1 behind a downstream switch;
    // fast leave is on for p1. h1a leaves: h1b must keep its stream; then
    // h1b, the last one, leaves and p1 goes at once.
    let mut lab = lab("fastshared", 3, LabOptions::default())?;
    lab.add_hosts_behind("h1", 2, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST_LEAVE_ON_P1)?;
    let stayer = lab.sniff("h1b")?;
    let leaver = lab.join("h1a", G)?;
    let stayer_membership = lab.join("h1b", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    thread::sleep(Duration::from_secs(1)); // both hosts' reports are in
    let _stream = lab.stream("h0", G.into())?;
    wait_until("the stream at h1b", JOIN_TIMEOUT, || Ok(stayer.count(G) > 0))?;
    drop(leaver);
    snoop_tests::watch_stream("h1b after h1a left", Duration::from_secs(4), Duration::from_millis(500), || {
        stayer.count(G)
    })?;
    assert!(shown_members(&lab, G)?.contains("p1"), "p1 was pruned while h1b wants G");
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let members = groups.as_array().into_iter().flatten().filter(|g| g["group"] == G.to_string());
    let p1 = members.flat_map(|g| g["members"].as_array().cloned().unwrap_or_default()).find(|m| m["port"] == "p1");
    let hosts = p1.map(|m| m["hosts"].clone()).unwrap_or_default();
    assert_eq!(hosts, serde_json::json!([lab.host("h1b").ip]), "the hosts known behind p1");
    drop(stayer_membership);
    wait_for_members(&lab, G, &[], Duration::from_millis(1000))?;
    Ok(())
}

#[test]
fn a_host_that_joined_elsewhere_gets_its_stream_within_a_second_of_its_port_joining() -> Result<()> {
    // h2 joined G before its port is in the bridge (a VM migrating here,
    // which does not report again). With the usual timers the next general
    // query is half a minute away; snoop asks a port that appears at once.
    let mut lab = lab("portappears", 2, LabOptions::default())?;
    lab.add_parked_host(2, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &["--last-member-query-interval", "200ms"])?;
    // h1 is a member: G is pruned, not flooded as an unregistered group.
    let _h1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let _member = lab.join("h2", G)?;
    let sniffer = lab.sniff("h2")?;
    let _stream = lab.stream("h0", G.into())?;
    thread::sleep(Duration::from_secs(1)); // h2's own reports have gone by, unheard
    let attached = Instant::now();
    lab.attach_parked_port("p2")?;
    wait_until("the stream at h2", Duration::from_secs(5), || Ok(sniffer.count(G) > 0))?;
    let took = attached.elapsed();
    println!("port attached to first packet: {took:?}");
    assert!(took < Duration::from_secs(1), "h2 waited {took:?} for its stream");
    // Down, its memberships go; up again, it is asked again.
    lab.ip_br(&["link", "set", "p2", "down"])?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    lab.ip_br(&["link", "set", "p2", "up"])?;
    wait_for_members(&lab, G, &["p1", "p2"], Duration::from_secs(2))?;
    Ok(())
}

/// `tc -s` packets through `port`'s root qdisc, or its tx counter with none.
fn port_sent(lab: &Lab, port: &str) -> Result<u64> {
    let qdisc: serde_json::Value = serde_json::from_str(&lab::run(
        "tc",
        &["-n", &lab.bridge_netns, "-s", "-j", "qdisc", "show", "dev", port, "root"],
    )?)?;
    qdisc[0]["packets"].as_u64().ok_or_else(|| anyhow::anyhow!("no packet count for {port}'s qdisc"))
}

fn port_tx_packets(lab: &Lab, port: &str) -> Result<u64> {
    let link: serde_json::Value = serde_json::from_str(&lab.ip_br(&["-s", "-j", "link", "show", port])?)?;
    link[0]["stats64"]["tx"]["packets"].as_u64().ok_or_else(|| anyhow::anyhow!("no tx counter for {port}"))
}

#[test]
fn fast_path_hands_one_copy_to_a_veth_peer_but_never_skips_a_qdisc() -> Result<()> {
    let mut lab = lab("peer", 4, LabOptions::default())?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--port-scan-interval", "200ms"]].concat())?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;

    // Both ports are plain veths: one copy goes straight into its host,
    // past the port's transmit path (its tx counter does not move).
    let before = [port_tx_packets(&lab, "p1")?, port_tx_packets(&lab, "p2")?];
    assert_eq!(blast(&lab, &["h1", "h2", "h3"], &[G], 100)?, [[100], [100], [0]]);
    let moved = [port_tx_packets(&lab, "p1")? - before[0], port_tx_packets(&lab, "p2")? - before[1]];
    assert!(moved.iter().any(|m| *m < 100), "no copy skipped a port's transmit path: {moved:?}");
    assert!(stat(&lab, "datapath", "redirected")? >= 100);

    // A qdisc on a port (shaping, say) must see every packet for that port.
    for port in ["p1", "p2"] {
        lab::run("tc", &["-n", &lab.bridge_netns, "qdisc", "add", "dev", port, "root", "pfifo"])?;
    }
    thread::sleep(Duration::from_secs(1)); // a few port scans
    assert_eq!(blast(&lab, &["h1", "h2", "h3"], &[G], 100)?, [[100], [100], [0]]);
    for port in ["p1", "p2"] {
        let sent = port_sent(&lab, port)?;
        assert!(sent >= 100, "{port}'s qdisc saw {sent} packets, its host got 100");
    }
    Ok(())
}

/// As the kernel bridge does: a port whose link goes down has its groups
/// forgotten at once, not at the membership interval; plugged back in, it
/// is asked at once.
#[test]
fn a_pulled_cable_ends_the_ports_memberships_at_once() -> Result<()> {
    let mut lab = lab("cable", 3, LabOptions::default())?;
    // Group membership interval: 5 s; a query every 2 s.
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    lab.set_host_link("h1", false)?;
    wait_for_members(&lab, G, &["p2"], Duration::from_secs(1))?;
    lab.set_host_link("h1", true)?;
    wait_for_members(&lab, G, &["p1", "p2"], Duration::from_secs(2))?;
    Ok(())
}

#[test]
fn a_port_set_down_gets_nothing_and_is_noticed_without_waiting_for_a_scan() -> Result<()> {
    let mut lab = lab("portdown", 4, LabOptions::default())?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    // p2 has a qdisc, so p1 is the port whose copies go straight to its peer.
    lab::run("tc", &["-n", &lab.bridge_netns, "qdisc", "add", "dev", "p2", "root", "pfifo"])?;
    // Scans far apart: only rtnetlink link events can make snoop notice in time.
    lab.start_snoop(&snoop_bin(), &[FAST, &["--port-scan-interval", "60s"]].concat())?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    assert_eq!(blast(&lab, &["h1", "h2", "h3"], &[G], 100)?, [[100], [100], [0]]);

    lab.ip_br(&["link", "set", "p1", "down"])?;
    thread::sleep(SETTLE);
    assert_eq!(blast(&lab, &["h1", "h2", "h3"], &[G], 100)?, [[0], [100], [0]]);

    lab.ip_br(&["link", "set", "p1", "up"])?;
    wait_until("p1 forwarding again", Duration::from_secs(5), || Ok(blast(&lab, &["h1"], &[G], 10)? == [[10]]))?;
    Ok(())
}

#[test]
fn the_controller_runs_at_its_nice_value() -> Result<()> {
    let nice_of = |lab: &Lab| -> Result<i64> {
        let pid = lab.snoop_pid().ok_or_else(|| anyhow::anyhow!("snoop is not running"))?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // Field 19 is the nice value; the command name (field 2) ends with ')'.
        let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
        Ok(after_name.split_whitespace().nth(16).unwrap_or_default().parse()?)
    };
    let mut lab = lab("nice", 2, LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    assert_eq!(nice_of(&lab)?, -5, "the default");
    lab.stop_snoop(false)?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--nice", "0"]].concat())?;
    assert_eq!(nice_of(&lab)?, 0, "--nice 0 leaves the priority alone");
    Ok(())
}

#[test]
fn the_bridge_hosts_own_members_get_the_group_whatever_the_bridges_name() -> Result<()> {
    // Docker-style names are 10 or more characters long, where /proc/net/igmp
    // glues the name to its colon.
    for bridge in ["br0", "br-3f2a1b4c5d6e", "docker_gwbridge"] {
        let options = LabOptions { bridge: Some(bridge.into()), ..Default::default() };
        let mut lab = lab("localmember", 3, options)?;
        let own = Ipv4Addr::new(10, 99, 0, 1);
        lab.set_bridge_address(own)?;
        lab.start_snoop(&snoop_bin(), FAST)?;
        let _m1 = lab.join("h1", G)?;
        let _local = lab.join_on_bridge(G, own)?;
        wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
        // The bridge's own groups are read every port scan (1 s).
        thread::sleep(Duration::from_millis(1500));
        let bridge_host = lab.sniff_bridge()?;
        assert_eq!(blast(&lab, &["h1", "h2"], &[G], 100)?, [[100], [0]], "{bridge}");
        assert_eq!(bridge_host.count(G), 100, "the bridge host's own member of {G} on {bridge}");
    }
    Ok(())
}

#[test]
fn queries_follow_the_bridges_address_and_mac() -> Result<()> {
    let mut lab = lab("querysource", 3, LabOptions::default())?;
    let (first, second) = (Ipv4Addr::new(10, 99, 0, 1), Ipv4Addr::new(10, 99, 0, 2));
    lab.set_bridge_address(first)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let sniffer = lab.sniff("h1")?;
    wait_until("queries from the bridge's address", JOIN_TIMEOUT, || Ok(sniffer.queries_from(first) >= 1))?;

    // Readdressed, and a new MAC: the next queries carry both.
    let mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    lab.ip_br(&["addr", "flush", "dev", "br0"])?;
    lab.ip_br(&["addr", "add", &format!("{second}/24"), "dev", "br0"])?;
    lab.ip_br(&["link", "set", "br0", "address", "02:00:5e:10:20:30"])?;
    // Query interval 2 s: two queries' time at most.
    wait_until("queries from the new address and MAC", Duration::from_secs(5), || {
        Ok(sniffer.queries_from(second) >= 1 && sniffer.queries_from_mac(mac) >= 1)
    })?;
    assert_eq!(lab.snoop_show(&snoop_bin(), "querier")?["own_address"], second.to_string());
    // Without an address the querier speaks from 0.0.0.0, as many switches do.
    lab.ip_br(&["addr", "flush", "dev", "br0"])?;
    wait_until(
        "queries from 0.0.0.0",
        Duration::from_secs(5),
        || Ok(sniffer.queries_from(Ipv4Addr::UNSPECIFIED) >= 1),
    )?;
    Ok(())
}

#[test]
fn a_leave_under_way_at_a_restart_is_finished_not_forgotten() -> Result<()> {
    let mut lab = lab("leaverestart", 3, LabOptions::default())?;
    // A long membership interval (21 s) and a last-member round of 2 x 500 ms:
    // a leave forgotten at the restart would keep h1 fed for 21 s.
    let args = [
        "--query-interval",
        "10s",
        "--query-response-interval",
        "1s",
        "--last-member-query-interval",
        "500ms",
        "--keep-state",
    ];
    lab.start_snoop(&snoop_bin(), &args)?;
    let m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    drop(m1);
    wait_until("p1 leaving", Duration::from_secs(2), || {
        let groups = lab.snoop_show(&snoop_bin(), "groups")?;
        Ok(groups[0]["members"].as_array().is_some_and(|m| m.iter().any(|m| m["port"] == "p1" && m["leaving"] == true)))
    })?;
    // The host repeats its leave twice, 200 ms apart: once those are over the
    // new controller hears no more of it, and must remember it was under way.
    thread::sleep(Duration::from_millis(500));
    lab.stop_snoop(false)?;
    lab.start_snoop(&snoop_bin(), &args)?;
    wait_for_members(&lab, G, &["p2"], Duration::from_secs(3))?;
    assert_eq!(blast(&lab, &["h1", "h2"], &[G], 50)?, [[0], [50]]);
    Ok(())
}
