//! MLD snooping end to end: IPv6 hosts whose kernels speak MLDv2 (or MLDv1)
//! and neighbour discovery, a real bridge, snoop's real maps. Each test checks
//! what each receiver's interface got and what the maps hold.
use std::{
    net::Ipv6Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use snoop::proto::{mld, QuerySource, QueryTimers};
use snoop_tests::{
    deliver_v6,
    lab::{self, Lab},
    map_members_v6, shown_members, snoop_bin, stat, wait_for_members_v6, wait_until, LabOptions, FAST_TIMERS,
};

/// A global-scope group: snooped.
const G: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x1234);
const G2: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x5678);
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

fn ipv6_lab(tag: &str, hosts: usize, mld_version: Option<u8>) -> Result<Lab> {
    let lab = Lab::new(tag, hosts, &LabOptions { ipv6: true, mld_version, ..Default::default() })?;
    for host in lab.hosts.iter().map(|h| h.name.clone()).collect::<Vec<_>>() {
        lab.wait_ipv6_ready(&host, Duration::from_secs(10))?;
    }
    Ok(lab)
}

fn only_members_get_the_group(mld_version: Option<u8>) -> Result<()> {
    let tag = format!("mld-members{}", mld_version.unwrap_or(2));
    let mut lab = ipv6_lab(&tag, 4, mld_version)?;
    let _m1 = lab.join_v6("h1", G)?;
    let receivers = ["h1", "h2", "h3"];
    // Control: the plain bridge floods, so the counts below can fail.
    assert_eq!(deliver_v6(&lab, "h0", G, &receivers, 100)?, [100, 100, 100]);

    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    wait_for_members_v6(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(deliver_v6(&lab, "h0", G, &receivers, 100)?, [100, 0, 0]);
    // ff02::1 always reaches everyone.
    assert_eq!(deliver_v6(&lab, "h0", ALL_NODES, &receivers, 100)?, [100, 100, 100]);
    assert_eq!(shown_members(&lab, G)?, ["p1".to_owned()].into());
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let member = &groups.as_array().unwrap().iter().find(|g| g["group"] == G.to_string()).unwrap()["members"][0];
    assert_eq!(
        (member["protocol"].as_str(), member["version"].as_u64()),
        (Some("MLD"), Some(mld_version.unwrap_or(2).into()))
    );
    assert!(stat(&lab, "datapath", "mld_seen")? > 0);
    assert!(stat(&lab, "datapath", "data_pruned")? >= 200);
    Ok(())
}

#[test]
fn only_mldv2_members_get_an_ipv6_group_and_all_nodes_reaches_everyone() -> Result<()> {
    only_members_get_the_group(None)
}

#[test]
fn only_mldv1_members_get_an_ipv6_group() -> Result<()> {
    only_members_get_the_group(Some(1))
}

fn a_done_prunes_the_port(mld_version: Option<u8>) -> Result<()> {
    let tag = format!("mld-done{}", mld_version.unwrap_or(2));
    let mut lab = ipv6_lab(&tag, 3, mld_version)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let m1 = lab.join_v6("h1", G)?;
    let _m2 = lab.join_v6("h2", G)?;
    wait_for_members_v6(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    // Closing the socket makes the kernel send an MLDv1 done / MLDv2 TO_IN{}.
    drop(m1);
    let left = Instant::now();
    wait_for_members_v6(&lab, G, &["p2"], Duration::from_secs(3))?;
    assert!(left.elapsed() < Duration::from_millis(1500), "the done took {:?}", left.elapsed());
    assert_eq!(deliver_v6(&lab, "h0", G, &["h1", "h2"], 100)?, [0, 100]);
    assert!(stat(&lab, "controller", "mld_group_queries_sent")? >= 1);
    Ok(())
}

#[test]
fn an_mldv2_leave_prunes_the_port_within_the_last_listener_time() -> Result<()> {
    a_done_prunes_the_port(None)
}

#[test]
fn an_mldv1_done_prunes_the_port_within_the_last_listener_time() -> Result<()> {
    a_done_prunes_the_port(Some(1))
}

#[test]
fn a_listener_that_stops_answering_queries_ages_out() -> Result<()> {
    let mut lab = ipv6_lab("mld-aging", 3, None)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    // A report with no socket behind it: h1's kernel never answers a query for G2.
    let h1 = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    lab.raw_sender("h1")?.send(&lab::mld_v1_report_packet(h1, G2))?;
    wait_for_members_v6(&lab, G2, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(deliver_v6(&lab, "h0", G2, &["h1", "h2"], 50)?, [50, 0]);
    // Membership interval with the fast timers: 2 x 2 s + 1 s.
    wait_for_members_v6(&lab, G2, &[], Duration::from_secs(8))?;
    assert_eq!(deliver_v6(&lab, "h0", G2, &["h1", "h2"], 50)?, [0, 0]);
    Ok(())
}

/// `ping -6` from one host to another succeeds.
fn ping6(lab: &Lab, from: &str, to: Ipv6Addr) -> Result<()> {
    lab::run(
        "ip",
        &["netns", "exec", &lab.host(from).netns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "2", &to.to_string()],
    )
    .map(drop)
}

fn flush_neighbours(lab: &Lab, host: &str) -> Result<()> {
    lab::run("ip", &["-n", &lab.host(host).netns, "-6", "neigh", "flush", "all"]).map(drop)
}

/// A duplicate of `address` added on `host` fails duplicate address
/// detection: the owner heard the neighbour solicitation and answered.
fn duplicate_is_detected(lab: &Lab, host: &str, address: Ipv6Addr) -> Result<()> {
    let netns = lab.host(host).netns.clone();
    lab::run("ip", &["-n", &netns, "-6", "addr", "add", &format!("{address}/64"), "dev", "eth0"])?;
    wait_until(&format!("DAD to fail for {address} on {host}"), Duration::from_secs(6), || {
        Ok(lab::run("ip", &["-n", &netns, "-6", "addr", "show", "dev", "eth0", "dadfailed"])?
            .contains(&address.to_string()))
    })
}

#[test]
fn neighbour_discovery_and_dad_work_with_snoop_running() -> Result<()> {
    let mut lab = ipv6_lab("mld-nd", 3, None)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    flush_neighbours(&lab, "h0")?;
    ping6(&lab, "h0", lab.host_ipv6("h2"))?;
    duplicate_is_detected(&lab, "h1", lab.host_ipv6("h2"))?;
    // Link-scope groups are flooded, not tracked.
    assert!(map_members_v6(&lab)?.iter().all(|(group, _)| group.segments()[0] != 0xff02));
    Ok(())
}

#[test]
fn snooping_link_scope_groups_keeps_neighbour_discovery_and_dad_working() -> Result<()> {
    let mut lab = ipv6_lab("mld-ndsnoop", 4, None)?;
    let mut args = FAST_TIMERS.to_vec();
    args.push("--snoop-ipv6-link-scope");
    lab.start_snoop(&snoop_bin(), &args)?;
    // h2's solicited-node group is learned from its answer to snoop's queries.
    let h2 = lab.host_ipv6("h2");
    let s = h2.segments();
    let solicited = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | (s[6] & 0xff), s[7]);
    wait_until("h2's solicited-node group", JOIN_TIMEOUT, || {
        Ok(map_members_v6(&lab)?.contains(&(solicited, "p2".to_owned())))
    })?;
    // Neighbour solicitations reach the owner only: the one h0 sends for h2
    // is held back from the other ports, and h2 still answers it.
    let before = stat(&lab, "datapath", "data_pruned")?;
    flush_neighbours(&lab, "h0")?;
    ping6(&lab, "h0", h2)?;
    ensure!(stat(&lab, "datapath", "data_pruned")? > before, "the solicitation was not pruned anywhere");
    // DAD: the tentative address's solicitation (from ::) reaches its owner.
    duplicate_is_detected(&lab, "h1", h2)?;
    // ff02::1 still reaches everyone.
    assert_eq!(deliver_v6(&lab, "h0", ALL_NODES, &["h1", "h2", "h3"], 50)?, [50, 50, 50]);
    Ok(())
}

fn query_timers() -> QueryTimers {
    QueryTimers { max_response: Duration::from_secs(1), robustness: 2, query_interval: Duration::from_secs(2) }
}

#[test]
fn the_mld_querier_speaks_from_the_bridges_link_local_address_and_yields_to_a_lower_one() -> Result<()> {
    let mut lab = ipv6_lab("mld-querier", 3, None)?;
    let own = lab.bridge_link_local(Duration::from_secs(10))?;
    let mut args = FAST_TIMERS.to_vec();
    args.extend(["--trusted-port", "p1"]);
    let h0 = lab.sniff("h0")?;
    lab.start_snoop(&snoop_bin(), &args)?;
    wait_until("MLDv2 queries from the bridge", Duration::from_secs(5), || Ok(h0.queries_of_version(own, 2) >= 2))?;
    let querier = lab.snoop_show(&snoop_bin(), "querier")?;
    assert_eq!(
        (querier["mld"]["role"].as_str(), querier["mld"]["own_address"].as_str()),
        (Some("self"), Some(&*own.to_string()))
    );

    // A router with a lower address on the trusted port wins the election.
    let router = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
    assert!(router < own);
    let frame = mld::build_query_frame(
        QuerySource { mac: lab.host_mac("h1")?, address: router },
        None,
        &[],
        2,
        &query_timers(),
        false,
    );
    let sender = lab.raw_sender("h1")?;
    let stop = Instant::now() + Duration::from_secs(6);
    let querying = thread::spawn(move || -> Result<()> {
        while Instant::now() < stop {
            sender.send_frame(&frame)?;
            thread::sleep(Duration::from_millis(500));
        }
        Ok(())
    });
    wait_until("the router to be elected", Duration::from_secs(3), || {
        let q = lab.snoop_show(&snoop_bin(), "querier")?;
        Ok(q["mld"]["role"] == "other" && q["mld"]["querier_address"] == router.to_string())
    })?;
    let ours = h0.queries_from(own);
    thread::sleep(Duration::from_secs(3));
    assert_eq!(h0.queries_from(own), ours, "snoop kept querying after losing the election");
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p1 = ports.as_array().unwrap().iter().find(|p| p["name"] == "p1").unwrap().clone();
    assert_eq!(
        (p1["mld_router"].as_bool(), p1["router"].as_bool()),
        (Some(true), Some(false)),
        "an MLD router port only"
    );
    querying.join().expect("the query thread")?;
    Ok(())
}

#[test]
fn malformed_mld_is_dropped_whole_and_counted() -> Result<()> {
    let mut lab = ipv6_lab("mld-malformed", 2, None)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let source = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99);
    let good = lab::mld_v1_report_packet(source, G);
    let mut bad_checksum = good.clone();
    *bad_checksum.last_mut().unwrap() ^= 1;
    let mut hop_limit = good.clone();
    hop_limit[7] = 2;
    let mut no_router_alert = good.clone();
    no_router_alert[42] = 1; // the option becomes a PadN
    let mut truncated = good.clone();
    truncated.truncate(good.len() - 4);
    // An MLDv2 report announcing two records and carrying one.
    let mut lying = vec![143, 0, 0, 0, 0, 0, 0, 2, 2, 0, 0, 0];
    lying.extend_from_slice(&G.octets());
    let lying = lab::mld_packet(source, "ff02::16".parse()?, lying);
    let mut global_query = mld::build_query_frame(
        QuerySource { mac: [2, 0, 0, 0, 0, 0x99], address: "fd99::99".parse()? },
        None,
        &[],
        2,
        &query_timers(),
        false,
    );
    let global_query = global_query.split_off(14);
    let sender = lab.raw_sender("h1")?;
    for packet in [&bad_checksum, &hop_limit, &no_router_alert, &truncated, &lying, &global_query] {
        sender.send(packet)?;
    }
    for counter in ["bad_checksum", "bad_ttl", "no_router_alert", "truncated", "record_overrun", "bad_source"] {
        let name = format!("mld_dropped_{counter}");
        wait_until(&name, Duration::from_secs(3), || Ok(stat(&lab, "controller", &name)? == 1))?;
    }
    assert!(map_members_v6(&lab)?.is_empty(), "a malformed report joined");
    // The same report, well formed, joins: the battery above can fail.
    sender.send(&good)?;
    wait_for_members_v6(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    Ok(())
}

#[test]
fn no_mld_leaves_ipv6_flooding_as_a_plain_bridge() -> Result<()> {
    let mut lab = ipv6_lab("mld-off", 3, None)?;
    let mut args = FAST_TIMERS.to_vec();
    args.push("--no-mld");
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join_v6("h1", G)?;
    thread::sleep(Duration::from_secs(2));
    assert!(map_members_v6(&lab)?.is_empty());
    assert_eq!(deliver_v6(&lab, "h0", G, &["h1", "h2"], 50)?, [50, 50]);
    assert!(lab.snoop_show(&snoop_bin(), "querier")?.get("mld").is_none());
    Ok(())
}

#[test]
fn with_no_link_local_address_snoop_floods_ipv6_again_once_the_other_querier_stops() -> Result<()> {
    // The bridge has no link-local address: snoop cannot send MLD queries.
    // h3 is an MLDv2 querier (a Linux bridge, from fe80::1, every 2 s)
    // until it stops; from then on nobody asks the hosts to report, so
    // IPv6 groups must flood again once the other-querier interval is
    // over, not stay pruned while their memberships age out.
    let mut lab = ipv6_lab("mld-nolinklocal", 4, None)?;
    let bridge = lab.bridge.clone();
    lab.ip_br(&["link", "set", &bridge, "addrgenmode", "none"])?;
    lab.ip_br(&["-6", "addr", "flush", "dev", &bridge, "scope", "link"])?;
    lab.make_querier("h3", 3, Duration::from_secs(2))?;
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--trusted-port", "p3"]].concat())?;
    wait_until("h3 elected", Duration::from_secs(6), || {
        Ok(lab.snoop_show(&snoop_bin(), "querier")?["mld"]["role"] == "other")
    })?;
    let _member = lab.join_v6("h1", G)?;
    wait_for_members_v6(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let (h1, h2) = (lab.sniff("h1")?, lab.sniff("h2")?);
    let _stream = lab.stream("h0", G.into())?;
    wait_until("G pruned at h2", Duration::from_secs(5), || {
        let before = h2.count(G);
        thread::sleep(Duration::from_millis(300));
        Ok(h1.count(G) > 0 && h2.count(G) == before)
    })?;
    lab::run("ip", &["-n", &lab.host("h3").netns, "link", "set", "qbr", "type", "bridge", "mcast_querier", "0"])?;
    let pruned_at_h2 = h2.count(G);
    // Two membership intervals: h1 never loses G, and G floods again.
    snoop_tests::watch_stream("h1", Duration::from_secs(10), Duration::from_secs(1), || h1.count(G))?;
    assert!(h2.count(G) > pruned_at_h2 + 100, "G stayed pruned with no querier present");
    assert_eq!(lab.snoop_show(&snoop_bin(), "querier")?["mld"]["present"], false);
    Ok(())
}
