//! snoop beside real multicast routers and queriers: FRRouting's pimd and
//! igmpproxy behind a port (with no options at all, as a new user starts
//! snoop), Linux bridges querying in IGMPv2 or with long intervals, routers
//! on ports --trusted-port leaves out, no querier at all, router discovery, keep-state restarts,
//! and frames that are not what their IP address says. Each test checks what
//! the receivers got and what the router on the other side heard.
use std::{
    fs,
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use snoop_tests::{
    lab::{self, in_netns, Lab, Stream, DATA_PORT},
    map_members, snoop_bin, wait_for_members, wait_until, LabOptions,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
const UNJOINED: Ipv4Addr = Ipv4Addr::new(239, 9, 9, 9);
const SETTLE: Duration = Duration::from_millis(300);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);
/// snoop's own address in these labs: above every host's (10.99.0.1x).
const SNOOP_ADDRESS: &str = "10.99.0.200";

/// Fast timers: query every 2 s, answers within 1 s, last-member round 0.4 s.
use snoop_tests::FAST_TIMERS as FAST;

fn args(extra: &[&'static str]) -> Vec<&'static str> {
    [FAST, extra].concat()
}

/// Sends `n` packets of `group` from h0 and returns what each receiver got.
fn deliver(lab: &Lab, group: Ipv4Addr, receivers: &[&str], n: u64) -> Result<Vec<u64>> {
    snoop_tests::deliver(lab, "h0", group, receivers, n)
}

fn querier(lab: &Lab) -> Result<serde_json::Value> {
    lab.snoop_show(&snoop_bin(), "querier")
}

fn port_view(lab: &Lab, name: &str) -> Result<serde_json::Value> {
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    ports.as_array().into_iter().flatten().find(|p| p["name"] == name).cloned().context("no such port")
}

fn wait_present(lab: &Lab, timeout: Duration) -> Result<()> {
    // (No such field: a snoop from before it was shown, for comparisons.)
    wait_until("a querier present", timeout, || Ok(querier(lab)?.get("present").is_none_or(|p| p == true)))
}

/// A source of `group` traffic in `netns` that routers forward (TTL 16),
/// sending every 5 ms until dropped.
fn routed_source(netns: &str, source: Ipv4Addr, group: Ipv4Addr) -> Result<Stream> {
    let socket = in_netns(netns, move || -> Result<UdpSocket> {
        let socket = UdpSocket::bind(SocketAddrV4::new(source, 0))?;
        socket.set_multicast_ttl_v4(16)?;
        Ok(socket)
    })??;
    Ok(Stream::start(socket, SocketAddrV4::new(group, DATA_PORT).into()))
}

/// igmpproxy's configuration on h3: upstream towards a source network
/// (10.98.0.0/24, behind it), downstream into the bridge.
const IGMPPROXY: &str = "quickleave\n\
                         phyint behind upstream ratelimit 0 threshold 1\n    altnet 10.98.0.0/24\n\
                         phyint eth0 downstream ratelimit 0 threshold 1\n";

/// A lab whose h3 routes with igmpproxy from a source network behind it;
/// returns the source's network namespace and igmpproxy's arguments (to
/// start it when the test wants).
fn igmpproxy_lab(tag: &str) -> Result<(Lab, String, Vec<String>)> {
    let mut lab = Lab::new(tag, 4, &LabOptions::default())?;
    let source_netns = lab.add_network_behind("h3", "src", "10.98.0.1/24", "10.98.0.2/24")?;
    let config = lab.write_file("igmpproxy.conf", IGMPPROXY)?;
    Ok((lab, source_netns, vec!["-d".into(), config.display().to_string()]))
}

/// h1 joins G and gets the routed stream, h2 gets none of it.
fn routed_to_the_member_only(lab: &Lab) -> Result<(lab::Membership, [lab::Sniffer; 2])> {
    let sniffers = [lab.sniff("h1")?, lab.sniff("h2")?];
    let joined_at = Instant::now();
    let membership = lab.join("h1", G)?;
    wait_until("the routed stream at h1", Duration::from_secs(3), || Ok(sniffers[0].count(G) > 0))?;
    eprintln!("join to first routed packet: {:?}", joined_at.elapsed());
    thread::sleep(Duration::from_millis(500));
    assert_eq!(sniffers[1].count(G), 0, "h2 never joined");
    Ok((membership, sniffers))
}

/// h1 leaves G: its membership ends within `timeout`, and the stream stops at h1.
fn left_and_stopped(lab: &Lab, membership: lab::Membership, h1: &lab::Sniffer, timeout: Duration) -> Result<()> {
    drop(membership);
    wait_for_members(lab, G, &[], timeout)?;
    thread::sleep(SETTLE);
    let after_leave = h1.count(G);
    thread::sleep(Duration::from_millis(500));
    assert_eq!(h1.count(G), after_leave, "h1 still gets the stream after it left");
    Ok(())
}

#[test]
fn igmpproxy_behind_a_trusted_port_hears_joins_at_once_and_forwards_to_members_only() -> Result<()> {
    // h3 is a router: igmpproxy (Debian's) with its upstream towards a source
    // network and its downstream into the bridge, already running when snoop
    // starts. Until snoop hears it query (igmpproxy's next query is 31 s or
    // more away), only the trust of p3 can bring it the joins.
    let (mut lab, source_netns, igmpproxy) = igmpproxy_lab("igmpproxy")?;
    let h3 = lab.host("h3").netns.clone();
    lab.spawn_in(&h3, "igmpproxy", &igmpproxy.iter().map(String::as_str).collect::<Vec<_>>())?;
    let _source = routed_source(&source_netns, Ipv4Addr::new(10, 98, 0, 2), G)?;
    thread::sleep(Duration::from_secs(1)); // igmpproxy's startup query goes by
    lab.start_snoop(&snoop_bin(), &args(&["--trusted-port", "p3"]))?;
    // Until a first query has been answered snoop floods, as a plain bridge:
    // h2 would get the stream then. (On a slow guest igmpproxy's startup
    // query can come after snoop started, with its 10 s to answer.)
    wait_present(&lab, Duration::from_secs(12))?;

    let before = lab.sniff("h1")?;
    thread::sleep(Duration::from_millis(500));
    assert_eq!(before.count(G), 0, "the router forwards nothing before a join");

    let (membership, sniffers) = routed_to_the_member_only(&lab)?;

    left_and_stopped(&lab, membership, &sniffers[0], JOIN_TIMEOUT)?;
    assert_eq!(sniffers[1].count(G), 0);
    Ok(())
}

/// A lab of 4 whose h3 is a Linux bridge querying in IGMPv`version` every
/// `interval` (from 10.99.0.13, below snoop's address), and snoop trusting
/// `trusted` only.
fn beside_a_querier(tag: &str, version: u8, interval: Duration, trusted: &'static str) -> Result<Lab> {
    let mut lab = Lab::new(tag, 4, &LabOptions::default())?;
    lab.make_querier("h3", version, interval)?;
    lab.start_snoop(&snoop_bin(), &args(&["--query-source", SNOOP_ADDRESS, "--trusted-port", trusted]))?;
    Ok(lab)
}

#[test]
fn an_igmpv2_querier_is_elected_spoken_to_in_v2_and_hears_every_join() -> Result<()> {
    // h3 is a Linux bridge querying in IGMPv2 from 10.99.0.13, below snoop's address.
    let lab = beside_a_querier("v2querier", 2, Duration::from_secs(2), "p3")?;
    wait_until("the v2 querier elected", Duration::from_secs(6), || {
        let q = querier(&lab)?;
        Ok(q["role"] == "other" && q["querier_address"] == "10.99.0.13")
    })?;
    wait_present(&lab, Duration::from_secs(3))?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    wait_until("the router heard h1's join", Duration::from_secs(4), || Ok(lab.router_groups("h3")?.contains(&G)))?;
    assert_eq!(deliver(&lab, G, &["h1", "h2", "h3"], 50)?, [50, 0, 50], "member and router port only");

    // The router stops querying (it lost an election elsewhere, say): snoop
    // takes over, in v2, which its hosts keep answering in.
    let sniffer = lab.sniff("h1")?;
    lab::run("ip", &["-n", &lab.host("h3").netns, "link", "set", "qbr", "type", "bridge", "mcast_querier", "0"])?;
    let own: Ipv4Addr = SNOOP_ADDRESS.parse()?;
    wait_until("snoop querying", Duration::from_secs(8), || Ok(sniffer.queries_from(own) >= 2))?;
    assert_eq!(sniffer.queries_of_version(own, 3), 0, "snoop queried in v3 with a v2 router about");
    assert!(sniffer.queries_of_version(own, 2) >= 2);
    Ok(())
}

#[test]
fn query_version_2_has_hosts_report_in_v2() -> Result<()> {
    // Where a v2-only router lost the election to snoop it stays silent, so
    // only the option can keep the hosts in v2 (RFC 3376 7.3.1).
    let mut lab = Lab::new("queryv2", 3, &LabOptions::default())?;
    let sniffer = lab.sniff("h1")?;
    let own: Ipv4Addr = SNOOP_ADDRESS.parse()?;
    lab.start_snoop(&snoop_bin(), &args(&["--query-source", SNOOP_ADDRESS, "--query-version", "2"]))?;
    let _m1 = lab.join("h1", G)?;
    wait_until("two v2 queries", Duration::from_secs(6), || Ok(sniffer.queries_of_version(own, 2) >= 2))?;
    assert_eq!(sniffer.queries_of_version(own, 3), 0, "a v3 query went out");
    wait_until("h1 answering in v2", Duration::from_secs(4), || Ok(sniffer.sent_reports(0x16) >= 1))?;
    assert_eq!(querier(&lab)?["query_version"], 2);
    Ok(())
}

#[test]
fn a_querier_with_a_long_interval_keeps_members_and_snoop_quiet() -> Result<()> {
    // h3 queries (IGMPv3, announcing its 8 s interval) below snoop's
    // address. snoop's own timers (2 s interval: members last 5 s, the other
    // querier 4.5 s) would expire both between its queries.
    let lab = beside_a_querier("longquery", 3, Duration::from_secs(8), "p3")?;
    wait_until("h3 elected", Duration::from_secs(10), || Ok(querier(&lab)?["role"] == "other"))?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let own: Ipv4Addr = SNOOP_ADDRESS.parse()?;
    let sniffer = lab.sniff("h2")?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(18) {
        assert_eq!(querier(&lab)?["role"], "other", "snoop took over between the querier's queries");
        assert!(map_members(&lab)?.contains(&(G, "p1".into())), "h1's membership expired");
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(sniffer.queries_from(own), 0, "snoop queried while the other querier was present");
    assert_eq!(deliver(&lab, G, &["h1", "h2"], 50)?, [50, 0]);
    assert_eq!(querier(&lab)?["query_interval_secs"], 8.0, "the interval in force is the querier's");
    Ok(())
}

#[test]
fn a_router_on_an_untrusted_port_is_named_in_the_log_and_in_show() -> Result<()> {
    // Only p1 may be a router or the querier: h3's querier on p3 may not.
    let lab = beside_a_querier("untrusted", 2, Duration::from_secs(2), "p1")?;
    wait_until("the router shown as ignored", Duration::from_secs(6), || {
        Ok(port_view(&lab, "p3")?["note"].as_str().unwrap_or_default().contains("ignored: untrusted"))
    })?;
    let q = querier(&lab)?;
    assert_eq!(q["role"], "self", "an untrusted querier won");
    let ignored = q["ignored_routers"].as_array().context("ignored_routers")?;
    assert!(ignored.iter().any(|r| r["port"] == "p3" && r["address"] == "10.99.0.13"), "{q}");
    let log = fs::read_to_string(lab.snoop_log())?;
    assert!(log.contains("--trusted-port p3"), "the log does not say what to do:\n{log}");
    assert_eq!(log.matches("was heard and ignored").count(), 1, "warned more than once:\n{log}");
    Ok(())
}

#[test]
fn without_a_querier_everything_floods_until_one_is_heard() -> Result<()> {
    let mut lab = Lab::new("noquerier", 4, &LabOptions::default())?;
    // (Groups nobody joined go to router ports only, as by default.)
    let no_querier = args(&["--no-querier", "--trusted-port", "p3", "--unregistered", "routers"]);
    lab.start_snoop(&snoop_bin(), &no_querier)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    // Nobody queries, so h1's membership lapses (5 s): it must still get the group.
    wait_for_members(&lab, G, &[], Duration::from_secs(8))?;
    assert_eq!(deliver(&lab, G, &["h1", "h2"], 50)?, [50, 50], "no querier: a plain bridge");
    assert_eq!(querier(&lab)?["present"], false);
    // A querier appears: once its first query is answered, snoop prunes.
    lab.make_querier("h3", 3, Duration::from_secs(2))?;
    wait_present(&lab, Duration::from_secs(6))?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(deliver(&lab, G, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn unregistered_groups_go_to_router_ports_only_once_a_querier_is_present() -> Result<()> {
    // The Linux bridge's default: flooded while no querier is present, then
    // to router ports only. p3 is a static router port.
    let mut lab = Lab::new("unregistered", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &args(&["--router-port", "p3"]))?;
    assert_eq!(deliver(&lab, UNJOINED, &["h1", "h2", "h3"], 50)?, [0, 0, 50]);
    // And back to flooding with the option.
    lab.stop_snoop(false)?;
    lab.start_snoop(&snoop_bin(), &args(&["--router-port", "p3", "--unregistered", "flood"]))?;
    assert_eq!(deliver(&lab, UNJOINED, &["h1", "h2", "h3"], 50)?, [50, 50, 50]);
    Ok(())
}

/// An IGMP message (RFC 4286 router discovery) from `source` to 224.0.0.106.
fn mrd_packet(source: Ipv4Addr, message: &[u8]) -> Vec<u8> {
    lab::control_packet(2, source, Ipv4Addr::new(224, 0, 0, 106), message.to_vec())
}

#[test]
fn router_discovery_advertisements_make_router_ports_and_terminations_end_them() -> Result<()> {
    let mut lab = Lab::new("mrd", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &args(&["--trusted-port", "p3"]))?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let router = lab.host("h3").ip;
    // Advertisement: interval 20 s, query interval 125 s, robustness 2.
    lab.send_raw_ip("h3", &mrd_packet(router, &[0x30, 20, 0, 0, 0, 125, 0, 2]))?;
    wait_until("p3 a router port", Duration::from_secs(2), || Ok(port_view(&lab, "p3")?["router"] == true))?;
    assert_eq!(deliver(&lab, G, &["h1", "h2", "h3"], 50)?, [50, 0, 50]);
    lab.send_raw_ip("h3", &mrd_packet(router, &[0x32, 0, 0, 0]))?;
    wait_until("p3 no longer a router port", Duration::from_secs(2), || Ok(port_view(&lab, "p3")?["router"] == false))?;
    assert_eq!(deliver(&lab, G, &["h1", "h2", "h3"], 50)?, [50, 0, 0]);
    Ok(())
}

#[test]
fn a_keep_state_restart_keeps_learned_router_ports() -> Result<()> {
    let mut lab = Lab::new("restartrouter", 4, &LabOptions::default())?;
    let keep = args(&["--trusted-port", "p3", "--keep-state"]);
    lab.start_snoop(&snoop_bin(), &keep)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    // One PIM hello: p3 is a router port for the other-querier-present interval.
    let hello = vec![0x20, 0, 0, 0, 0, 1, 0, 2, 0, 105];
    let packet = lab::control_packet(103, lab.host("h3").ip, Ipv4Addr::new(224, 0, 0, 13), hello);
    lab.send_raw_ip("h3", &packet)?;
    wait_until("p3 a router port", Duration::from_secs(2), || Ok(port_view(&lab, "p3")?["router"] == true))?;
    lab.stop_snoop(false)?;
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert_eq!(port_view(&lab, "p3")?["router"], true, "the restart forgot the router port");
    assert_eq!(deliver(&lab, G, &["h1", "h2", "h3"], 50)?, [50, 0, 50]);
    Ok(())
}

#[test]
fn a_multicast_ip_to_a_unicast_mac_goes_where_the_mac_says() -> Result<()> {
    let mut lab = Lab::new("unicastmac", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let h2_mac = lab.host_mac("h2")?;
    let h0_mac = lab.host_mac("h0")?;
    // h2 speaks once so the bridge knows where its MAC is.
    lab.send("h2", UNJOINED, 1, Duration::ZERO)?;
    let mut frame = h2_mac.to_vec();
    frame.extend_from_slice(&h0_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&lab::udp_packet(lab.host("h0").ip, G, 64));
    let sniffers = [lab.sniff("h1")?, lab.sniff("h2")?];
    let sender = lab.raw_sender("h0")?;
    for _ in 0..50 {
        sender.send_frame(&frame)?;
    }
    thread::sleep(SETTLE);
    assert_eq!([sniffers[0].count(G), sniffers[1].count(G)], [0, 50], "forwarded as its MAC says");
    Ok(())
}

#[test]
fn a_jumbo_report_loses_no_membership() -> Result<()> {
    // h1 sits on a 9000-byte MTU link and joins 1000 groups: its answer to
    // a general query is one report of about 8 KB, larger than a 1500-byte
    // capture. Every group must outlive the membership interval.
    let mut lab = Lab::new("jumbo", 2, &LabOptions::default())?;
    lab.ip_br(&["link", "set", "p1", "mtu", "9000"])?;
    lab::run("ip", &["-n", &lab.host("h1").netns, "link", "set", "eth0", "mtu", "9000"])?;
    lab::write_sysctl(&lab.host("h1").netns, "ipv4/igmp_max_memberships", "2000")?;
    lab.start_snoop(&snoop_bin(), &args(&["--max-groups-per-port", "2000"]))?;
    let groups: Vec<Ipv4Addr> = (0..1000u16).map(|i| Ipv4Addr::new(239, 2, (i >> 8) as u8, i as u8)).collect();
    let _memberships = lab.join_many("h1", &groups)?;
    wait_until("1000 memberships", JOIN_TIMEOUT, || Ok(map_members(&lab)?.len() == 1000))?;
    // Three membership intervals (5 s) of queries answered by jumbo reports.
    thread::sleep(Duration::from_secs(15));
    assert_eq!(map_members(&lab)?.len(), 1000, "memberships lost to a report's size");
    let stats = lab.snoop_show(&snoop_bin(), "stats")?;
    assert_eq!(stats["datapath"]["control_frames_truncated"], 0);
    Ok(())
}

/// FRR's pimd on h3: an IGMPv3 querier and PIM-SM router (its own RP),
/// routing a stream from a network behind it, with a membership interval
/// of 5 s (a query every 2 s, answered within 1 s).
const FRR_PIMD: &str = "interface eth0\n ip pim\n ip igmp\n ip igmp query-max-response-time 10\n \
                        ip igmp query-interval 2\ninterface behind\n ip pim\nip pim rp 10.99.0.13 224.0.0.0/4\n";

/// Waits until `port` is a router port in `snoop show ports`.
fn wait_router_port(lab: &Lab, port: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{port} a router port"), timeout, || Ok(port_view(lab, port)?["router"] == true))
}

#[test]
fn with_no_options_a_routed_stream_outlives_the_routers_membership_interval() -> Result<()> {
    // snoop as a new user starts it, beside a real router: no --trusted-port.
    let mut lab = Lab::new("frr", 4, &LabOptions::default())?;
    let source_netns = lab.add_network_behind("h3", "src", "10.98.0.1/24", "10.98.0.2/24")?;
    lab.start_frr("h3", FRR_PIMD)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    wait_router_port(&lab, "p3", Duration::from_secs(6))?;
    // (Until the router's first query is answered nothing is pruned.)
    wait_present(&lab, Duration::from_secs(5))?;
    let _source = routed_source(&source_netns, Ipv4Addr::new(10, 98, 0, 2), G)?;
    let sniffers = [lab.sniff("h1")?, lab.sniff("h2")?];
    let membership = lab.join("h1", G)?;
    wait_until("the routed stream at h1", Duration::from_secs(5), || Ok(sniffers[0].count(G) > 0))?;
    // Three of the router's membership intervals: every query's answers
    // reach it, so it keeps the join and the stream keeps coming.
    for second in 1..=15 {
        let before = sniffers[0].count(G);
        thread::sleep(Duration::from_secs(1));
        assert!(sniffers[0].count(G) > before + 50, "the stream stopped after {second} s");
        assert!(lab.frr_igmp_groups("h3")?.contains(&G), "the router lost the join after {second} s");
    }
    assert_eq!(sniffers[1].count(G), 0, "h2 never joined");
    // The leave stops it at h1.
    left_and_stopped(&lab, membership, &sniffers[0], JOIN_TIMEOUT)?;
    Ok(())
}

#[test]
fn with_no_options_igmpproxy_is_learned_from_its_query_and_hears_the_joins() -> Result<()> {
    let (mut lab, source_netns, igmpproxy) = igmpproxy_lab("proxynoopt")?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    // igmpproxy's startup query makes p3 a router port: no option needed.
    let h3 = lab.host("h3").netns.clone();
    lab.spawn_in(&h3, "igmpproxy", &igmpproxy.iter().map(String::as_str).collect::<Vec<_>>())?;
    wait_router_port(&lab, "p3", Duration::from_secs(5))?;
    let _source = routed_source(&source_netns, Ipv4Addr::new(10, 98, 0, 2), G)?;
    let (membership, sniffers) = routed_to_the_member_only(&lab)?;
    // The proxy is the querier: its group-specific queries, answered
    // within its 10 s, end the membership after two unanswered (the
    // elected querier's timing, not snoop's own last-member time).
    left_and_stopped(&lab, membership, &sniffers[0], Duration::from_secs(25))?;
    Ok(())
}

#[test]
fn in_the_start_window_no_host_hears_another_report_so_a_leaver_still_says_so() -> Result<()> {
    // h3 is an IGMPv2 querier (a Linux bridge querying every 20 s from
    // 10.99.0.13), its startup query gone by when snoop starts with no
    // options. h1 and h2 are IGMPv2 hosts that join within 2 s of the
    // start, h2 after h1. A v2 host that hears another's report for its
    // group is no longer the reporter and sends no leave (RFC 2236 3): had
    // snoop let h2's report reach h1, h1's leave would never come and its
    // port would keep the stream a whole membership interval.
    let mut lab = Lab::new("startwin", 5, &LabOptions { igmp_version: Some(2), ..Default::default() })?;
    lab.make_querier("h3", 2, Duration::from_secs(20))?;
    thread::sleep(Duration::from_millis(500));
    lab.start_snoop_in_window(&snoop_bin(), &[])?;
    let sniffers = [lab.sniff("h1")?, lab.sniff("h2")?, lab.sniff("h4")?];
    let h1 = lab.join("h1", G)?;
    thread::sleep(Duration::from_millis(600));
    let _h2 = lab.join("h2", G)?;
    let _stream = lab.stream("h0", G.into())?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    assert_eq!(sniffers[0].reports(), 0, "h1 heard another host's report");
    // Data floods until snoop has heard what hosts want; once h4 (no
    // member) stops getting G, pruning runs, and h1 leaves.
    wait_until("G pruned at h4", Duration::from_secs(30), || {
        let before = sniffers[2].count(G);
        thread::sleep(Duration::from_millis(300));
        Ok(sniffers[2].count(G) == before)
    })?;
    drop(h1);
    let left = Instant::now();
    // snoop is the querier until h3's next query: two group-specific
    // queries 1 s apart, then p1 goes.
    wait_for_members(&lab, G, &["p2"], Duration::from_secs(6))?;
    eprintln!("leave to prune: {:?}", left.elapsed());
    thread::sleep(SETTLE);
    let after_leave = sniffers[0].count(G);
    snoop_tests::watch_stream("h2", Duration::from_secs(1), Duration::from_millis(300), || sniffers[1].count(G))?;
    assert_eq!(sniffers[0].count(G), after_leave, "h1 still gets the stream after it left");
    Ok(())
}

/// FRR's pimd on h3 as [`FRR_PIMD`], querying every 20 s, whose
/// group-specific queries give hosts 3 s to answer (twice: 6 s).
const FRR_PIMD_SLOW_LAST_MEMBER: &str = "interface eth0\n ip pim\n ip igmp\n ip igmp query-interval 20\n \
                                         ip igmp last-member-query-interval 30\ninterface behind\n ip pim\n\
                                         ip pim rp 10.99.0.13 224.0.0.0/4\n";

#[test]
fn a_leave_behind_a_shared_port_waits_for_the_elected_routers_own_queries() -> Result<()> {
    // h1a and h1b sit behind p1 (a downstream switch). FRR's pimd on h3 is
    // the querier; its last-member queries give 3 s to answer, longer than
    // snoop's own last-member time (2 s by default). When h1a leaves, p1
    // must stay until FRR's queries have had their answer from h1b.
    let mut lab = Lab::new("frrlmq", 4, &LabOptions::default())?;
    lab.add_hosts_behind("h1", 2, &LabOptions::default())?;
    let source_netns = lab.add_network_behind("h3", "src", "10.98.0.1/24", "10.98.0.2/24")?;
    lab.start_frr("h3", FRR_PIMD_SLOW_LAST_MEMBER)?;
    lab.start_snoop(&snoop_bin(), &["--trusted-port", "p3"])?;
    wait_router_port(&lab, "p3", Duration::from_secs(10))?;
    wait_present(&lab, Duration::from_secs(15))?;
    let _source = routed_source(&source_netns, Ipv4Addr::new(10, 98, 0, 2), G)?;
    let stayer = lab.sniff("h1b")?;
    let _h1b = lab.join("h1b", G)?;
    wait_until("the routed stream at h1b", Duration::from_secs(10), || Ok(stayer.count(G) > 0))?;
    for round in 1..=2 {
        let h1a = lab.join("h1a", G)?;
        thread::sleep(Duration::from_secs(1));
        drop(h1a);
        thread::sleep(Duration::from_millis(300));
        // snoop follows FRR's timing (3 s a query), not its own 2 s in all.
        let p1 = port_member(&lab, G, "p1")?.context("p1 pruned at once")?;
        let left = p1["expires_in_secs"].as_f64().unwrap_or_default();
        assert!(left > 2.5, "round {round}: p1 lowered to {left:.1} s, below FRR's last-member time");
        snoop_tests::watch_stream(
            &format!("h1b in round {round}"),
            Duration::from_secs(8),
            Duration::from_millis(500),
            || stayer.count(G),
        )?;
    }
    Ok(())
}

/// `port`'s membership of `group` in `snoop show groups`.
fn port_member(lab: &Lab, group: Ipv4Addr, port: &str) -> Result<Option<serde_json::Value>> {
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    Ok(groups
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["group"] == group.to_string())
        .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
        .find(|m| m["port"] == port))
}

/// FRR's pimd on the bridge device itself, routing to a network behind
/// another interface of the bridge's host (up0, towards `remote`), its own
/// rendezvous point.
const FRR_PIMD_ON_THE_BRIDGE: &str = "interface br0\n ip pim\n ip igmp\ninterface up0\n ip pim\n ip igmp\n\
                                      ip pim rp 10.99.0.1 224.0.0.0/4\n";

#[test]
fn a_bridge_host_that_routes_multicast_gets_every_group() -> Result<()> {
    // h1 sends G; h2 on p2 joined it, so snoop copies G to p2 straight from
    // p1. The bridge's host routes G on (FRR pimd) to a receiver behind
    // up0: it must get G too, or the remote receiver starves.
    let mut lab = Lab::new("hostrouter", 3, &LabOptions::default())?;
    lab.set_bridge_address(Ipv4Addr::new(10, 99, 0, 1))?;
    let remote = lab.add_namespace("remote")?;
    lab.ip_br(&["link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", &remote])?;
    lab.ip_br(&["addr", "add", "10.96.0.1/24", "dev", "up0"])?;
    lab.ip_br(&["link", "set", "up0", "up"])?;
    lab::run("ip", &["-n", &remote, "addr", "add", "10.96.0.2/24", "dev", "eth0"])?;
    lab::run("ip", &["-n", &remote, "link", "set", "eth0", "up"])?;
    lab::run("ip", &["-n", &remote, "link", "set", "lo", "up"])?;
    lab::run("ip", &["-n", &remote, "route", "add", "default", "via", "10.96.0.1"])?;
    lab.start_frr_on_bridge(FRR_PIMD_ON_THE_BRIDGE)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _h2 = lab.join("h2", G)?;
    wait_for_members(&lab, G, &["p2"], JOIN_TIMEOUT)?;
    // The remote receiver joins over up0.
    let socket = in_netns(&remote, || -> Result<UdpSocket> {
        let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, DATA_PORT))?;
        socket.join_multicast_v4(&G, &Ipv4Addr::new(10, 96, 0, 2))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    })??;
    wait_until("pimd heard the remote join", Duration::from_secs(10), || {
        Ok(lab.frr_igmp_groups("bridge")?.contains(&G))
    })?;
    let _stream = lab.routed_stream("h1", G)?;
    // What arrived since the last look.
    let received = || {
        let mut buffer = [0u8; 128];
        std::iter::from_fn(|| socket.recv(&mut buffer).ok()).count()
    };
    wait_until("the routed stream at the remote receiver", Duration::from_secs(10), || Ok(received() > 0))?;
    for second in 1..=5 {
        thread::sleep(Duration::from_secs(1));
        assert!(received() > 50, "the remote receiver lost the stream after {second} s");
    }
    let h2 = lab.sniff("h2")?;
    thread::sleep(Duration::from_millis(300));
    assert!(h2.count(G) > 0, "h2 still gets G");
    Ok(())
}

/// FRR's pimd as an IGMP querier on the bridge device, querying every 2 s.
const FRR_QUERIER_ON_THE_BRIDGE: &str =
    "interface br0\n ip pim\n ip igmp\n ip igmp query-max-response-time 10\n ip igmp query-interval 2\n";

#[test]
fn the_bridge_hosts_own_router_takes_part_in_the_querier_election() -> Result<()> {
    // pimd on the bridge device queries from the bridge's address, as snoop
    // does with no options: its queries leave through the bridge, past
    // every port's program. snoop must hear them and stand down, as the
    // kernel bridge does for its host's router, not query beside it.
    let mut lab = Lab::new("hostquerier", 3, &LabOptions::default())?;
    let bridge_address = Ipv4Addr::new(10, 99, 0, 1);
    lab.set_bridge_address(bridge_address)?;
    lab.start_frr_on_bridge(FRR_QUERIER_ON_THE_BRIDGE)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    wait_until("the host's router elected", Duration::from_secs(8), || {
        let q = querier(&lab)?;
        Ok(q["role"] == "other" && q["querier_address"] == bridge_address.to_string())
    })?;
    let sniffer = lab.sniff("h1")?;
    let sent = snoop_tests::stat(&lab, "controller", "general_queries_sent")?;
    thread::sleep(Duration::from_secs(5));
    assert_eq!(snoop_tests::stat(&lab, "controller", "general_queries_sent")?, sent, "snoop queried beside pimd");
    assert!(sniffer.queries_from(bridge_address) >= 2, "pimd's queries reach the hosts");
    assert_eq!(querier(&lab)?["role"], "other");
    // Memberships are kept by pimd's queries: h1 gets G, h2 nothing.
    let _h1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    thread::sleep(Duration::from_secs(6)); // past a membership interval (5 s)
    assert_eq!(deliver(&lab, G, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}
