//! Source-specific forwarding end to end: hosts whose kernels join with
//! source lists (MCAST_JOIN_SOURCE_GROUP, MCAST_BLOCK_SOURCE: IGMPv3 and
//! MLDv2 records), two real senders of one group, a real bridge, snoop's real
//! maps, and a real IGMPv3 router where one is in charge. Each test checks
//! what each receiver got from each source.
use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use snoop_tests::{
    deliver_from,
    lab::{Lab, SourceJoin},
    snoop_bin, stat, wait_for_members, wait_for_members_v6, wait_until, LabOptions, FAST_TIMERS,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
const SSM: Ipv4Addr = Ipv4Addr::new(232, 1, 2, 3);
const G6: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x4321);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

/// The filter `snoop show groups` gives `port`'s membership of `group`:
/// "include S1,..." (the sources it gets), "exclude S,..." (the ones it does
/// not), "any"; `None` when it is no member.
fn shown_filter(lab: &Lab, group: IpAddr, port: &str) -> Result<Option<String>> {
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let Some(member) = groups
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["group"] == group.to_string())
        .flat_map(|g| g["members"].as_array().cloned().unwrap_or_default())
        .find(|m| m["port"] == port)
    else {
        return Ok(None);
    };
    let listed = |forwarded: bool| -> Vec<String> {
        let sources = member["sources"].as_array().cloned().unwrap_or_default();
        let matching = sources.into_iter().filter(|s| s["forwarded"] == forwarded);
        matching.map(|s| s["address"].as_str().unwrap_or_default().to_owned()).collect()
    };
    Ok(Some(match (member["filter_mode"].as_str(), listed(false)) {
        (Some("include"), _) => format!("include {}", listed(true).join(",")),
        (_, blocked) if blocked.is_empty() => "any".into(),
        (_, blocked) => format!("exclude {}", blocked.join(",")),
    }))
}

fn wait_for_filter(lab: &Lab, group: IpAddr, port: &str, want: &str, timeout: Duration) -> Result<()> {
    wait_until(&format!("{port}'s filter of {group}: {want}"), timeout, || {
        Ok(shown_filter(lab, group, port)?.as_deref() == Some(want))
    })
}

/// h0 and h3 send G; h1 wants h0's, h2 h3's, h4 all but h3's, h5 nothing.
fn each_host_gets_exactly_its_sources(forwarding: &str) -> Result<()> {
    let mut lab = Lab::new(&format!("sources-{forwarding}"), 6, &LabOptions::default())?;
    let (s1, s2) = (IpAddr::V4(lab.host("h0").ip), IpAddr::V4(lab.host("h3").ip));
    let g = IpAddr::V4(G);
    let _h1 = lab.join_source("h1", g, s1, SourceJoin::Include)?;
    let _h2 = lab.join_source("h2", g, s2, SourceJoin::Include)?;
    let _h4 = lab.join_source("h4", g, s2, SourceJoin::Exclude)?;
    let receivers = ["h1", "h2", "h4", "h5"];
    // Control: the plain bridge floods every source to everyone.
    let flooded = deliver_from(&lab, &["h0", "h3"], g, &receivers, 50)?;
    assert_eq!(flooded, vec![vec![50, 50]; 4], "the plain bridge");

    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--forwarding", forwarding]].concat())?;
    wait_for_members(&lab, G, &["p1", "p2", "p4"], JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p2", &format!("include {s2}"), JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p4", &format!("exclude {s2}"), JOIN_TIMEOUT)?;
    let got = deliver_from(&lab, &["h0", "h3"], g, &receivers, 100)?;
    assert_eq!(got, [[100, 0], [0, 100], [100, 0], [0, 0]], "per receiver: from h0, from h3");
    assert!(stat(&lab, "datapath", "source_pruned")? > 0 || forwarding == "redirect");
    Ok(())
}

#[test]
fn each_host_gets_exactly_the_sources_it_asked_for() -> Result<()> {
    each_host_gets_exactly_its_sources("redirect")
}

#[test]
fn each_host_gets_exactly_the_sources_it_asked_for_on_the_bridge_path() -> Result<()> {
    each_host_gets_exactly_its_sources("bridge")
}

#[test]
fn a_host_that_switches_sources_gets_the_new_one_and_loses_the_old_within_the_last_member_time() -> Result<()> {
    let mut lab = Lab::new("sources-switch", 4, &LabOptions::default())?;
    let (s1, s2) = (IpAddr::V4(lab.host("h0").ip), IpAddr::V4(lab.host("h3").ip));
    let g = IpAddr::V4(G);
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let old = lab.join_source("h1", g, s1, SourceJoin::Include)?;
    wait_for_filter(&lab, g, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    assert_eq!(deliver_from(&lab, &["h0", "h3"], g, &["h1", "h2"], 50)?, [[50, 0], [0, 0]]);
    // The switch: ALLOW {S2}, then BLOCK {S1}, which snoop, the querier,
    // confirms with group-and-source-specific queries (0.4 s in all).
    let _new = lab.join_source("h1", g, s2, SourceJoin::Include)?;
    drop(old);
    let switched = Instant::now();
    wait_for_filter(&lab, g, "p1", &format!("include {s2}"), Duration::from_secs(3))?;
    let took = switched.elapsed();
    assert!(took < Duration::from_millis(1500), "the old source lasted {took:?}");
    assert_eq!(deliver_from(&lab, &["h0", "h3"], g, &["h1", "h2"], 50)?, [[0, 50], [0, 0]]);
    assert!(stat(&lab, "controller", "group_queries_sent")? >= 2, "no group-and-source-specific queries");
    Ok(())
}

#[test]
fn a_block_under_an_igmpv3_router_never_drops_a_port_that_wants_other_sources() -> Result<()> {
    // h3 is an IGMPv3 router (a Linux bridge querying every 10 s from
    // 10.99.0.13, below snoop's address), in charge. h1 wants S1 and S2 of G
    // on two sockets and closes one: its kernel sends BLOCK {S1}, the router
    // asks Q(G,{S1}), h1 stays silent. Its port must keep S2 throughout.
    let mut lab = Lab::new("sources-router", 4, &LabOptions::default())?;
    lab.make_querier("h3", 3, Duration::from_secs(10))?;
    let args = [FAST_TIMERS, &["--query-source", "10.99.0.200", "--trusted-port", "p3"]].concat();
    lab.start_snoop(&snoop_bin(), &args)?;
    wait_until("h3 elected", Duration::from_secs(12), || {
        Ok(lab.snoop_show(&snoop_bin(), "querier")?["role"] == "other")
    })?;
    let (s1, s2) = (IpAddr::V4(lab.host("h0").ip), IpAddr::V4(lab.host("h2").ip));
    let g = IpAddr::V4(G);
    let first = lab.join_source("h1", g, s1, SourceJoin::Include)?;
    let _second = lab.join_source("h1", g, s2, SourceJoin::Include)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    wait_until("h1 gets both sources", JOIN_TIMEOUT, || {
        Ok(deliver_from(&lab, &["h0", "h2"], g, &["h1"], 5)? == [[5, 5]])
    })?;
    // h1's kernel repeats its state changes for up to 2 s (robustness 2,
    // 1 s apart); a repeated ALLOW {S2} beside the BLOCK would hide the defect.
    thread::sleep(Duration::from_millis(2500));
    let sniffer = lab.sniff("h1")?;
    drop(first);
    // Well past the last-member time (0.4 s), well inside the router's interval.
    let sender = lab.sender("h2")?;
    let until = Instant::now() + Duration::from_secs(3);
    let mut sent = 0;
    while Instant::now() < until {
        sender.send(G, 1, Duration::from_millis(10))?;
        sent += 1;
        ensure!(wait_for_members(&lab, G, &["p1"], Duration::ZERO).is_ok(), "p1 was pruned of G after {sent} packets");
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(sniffer.count_from(s2, G), sent, "h1 lost some of S2");
    wait_for_filter(&lab, g, "p1", &format!("include {s2}"), Duration::from_secs(2))?;
    assert_eq!(deliver_from(&lab, &["h0", "h2"], g, &["h1"], 50)?, [[0, 50]]);
    Ok(())
}

#[test]
fn ssm_groups_forward_only_the_sources_asked_for() -> Result<()> {
    // h1 joins (S1, 232.1.2.3); h2 joins 232.1.2.3 from any source, which
    // SSM does not allow (its kernel sends EXCLUDE {}); h4 joins nothing.
    let mut lab = Lab::new("sources-ssm", 5, &LabOptions::default())?;
    let s1 = IpAddr::V4(lab.host("h0").ip);
    let ssm = IpAddr::V4(SSM);
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let _h1 = lab.join_source("h1", ssm, s1, SourceJoin::Include)?;
    let _h2 = lab.join("h2", SSM)?;
    wait_for_filter(&lab, ssm, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    wait_until("h2's any-source join ignored", JOIN_TIMEOUT, || {
        Ok(stat(&lab, "controller", "ignored_ssm_any_source_joins")? > 0)
    })?;
    let got = deliver_from(&lab, &["h0", "h3"], ssm, &["h1", "h2", "h4"], 50)?;
    assert_eq!(got, [[50, 0], [0, 0], [0, 0]], "per receiver: from h0, from h3");
    assert_eq!(shown_filter(&lab, ssm, "p2")?, None, "an any-source join made p2 a member");
    Ok(())
}

#[test]
fn mldv2_source_lists_select_ipv6_sources() -> Result<()> {
    let mut lab = Lab::new("sources-mld", 4, &LabOptions { ipv6: true, ..Default::default() })?;
    for host in ["h0", "h1", "h2", "h3"] {
        lab.wait_ipv6_ready(host, Duration::from_secs(10))?;
    }
    let s1 = IpAddr::V6(lab.host_ipv6("h0"));
    let g = IpAddr::V6(G6);
    let _h1 = lab.join_source("h1", g, s1, SourceJoin::Include)?;
    let _h2 = lab.join_source("h2", g, s1, SourceJoin::Exclude)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    wait_for_members_v6(&lab, G6, &["p1", "p2"], JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p2", &format!("exclude {s1}"), JOIN_TIMEOUT)?;
    let got = deliver_from(&lab, &["h0", "h3"], g, &["h1", "h2"], 100)?;
    assert_eq!(got, [[100, 0], [0, 100]], "per receiver: from h0, from h3");
    Ok(())
}

#[test]
fn source_filters_survive_a_restart_that_keeps_state() -> Result<()> {
    let mut lab = Lab::new("sources-restart", 4, &LabOptions::default())?;
    let s1 = IpAddr::V4(lab.host("h0").ip);
    let g = IpAddr::V4(G);
    let keep = [FAST_TIMERS, &["--keep-state"]].concat();
    lab.start_snoop(&snoop_bin(), &keep)?;
    let _h1 = lab.join_source("h1", g, s1, SourceJoin::Include)?;
    let _h2 = lab.join_source("h2", g, s1, SourceJoin::Exclude)?;
    wait_for_filter(&lab, g, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    wait_for_filter(&lab, g, "p2", &format!("exclude {s1}"), JOIN_TIMEOUT)?;
    assert!(lab.stop_snoop(false)?.success());
    // Down: the data path keeps forwarding by the pinned filters.
    assert_eq!(deliver_from(&lab, &["h0", "h3"], g, &["h1", "h2"], 50)?, [[50, 0], [0, 50]], "while down");
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert_eq!(shown_filter(&lab, g, "p1")?, Some(format!("include {s1}")), "resumed without its sources");
    assert_eq!(shown_filter(&lab, g, "p2")?, Some(format!("exclude {s1}")));
    assert_eq!(deliver_from(&lab, &["h0", "h3"], g, &["h1", "h2"], 50)?, [[50, 0], [0, 50]], "after the restart");
    Ok(())
}

/// h1a (INCLUDE {S1}) and h1b (INCLUDE {S1,S2}) are MLDv2 hosts behind p1;
/// h1b closes its S1 socket, so its kernel sends BLOCK {S1}, and the
/// querier asks Q(G,{S1}), to G's own address. That query must reach h1a,
/// whose answer keeps S1 at p1: h1a's S1 stream never stops.
fn a_block_behind_a_shared_port_leaves_the_other_hosts_sources(tag: &str, other_querier: bool) -> Result<()> {
    let options = LabOptions { ipv6: true, ..Default::default() };
    let mut lab = Lab::new(tag, 4, &options)?;
    lab.add_hosts_behind("h1", 2, &options)?;
    if other_querier {
        // An MLDv2 querier from fe80::1, below any address snoop has.
        lab.make_querier("h3", 3, Duration::from_secs(10))?;
    }
    for host in ["h0", "h2", "h1a", "h1b"] {
        lab.wait_ipv6_ready(host, Duration::from_secs(10))?;
    }
    lab.bridge_link_local(Duration::from_secs(10))?;
    // General queries 10 s apart: a source lost at p1 stays lost until the next.
    let mut args =
        vec!["--query-interval", "10s", "--query-response-interval", "1s", "--last-member-query-interval", "200ms"];
    if other_querier {
        args.extend(["--trusted-port", "p3"]);
    }
    lab.start_snoop(&snoop_bin(), &args)?;
    if other_querier {
        wait_until("h3 elected", Duration::from_secs(12), || {
            Ok(lab.snoop_show(&snoop_bin(), "querier")?["mld"]["role"] == "other")
        })?;
    }
    let (s1, s2) = (IpAddr::V6(lab.host_ipv6("h0")), IpAddr::V6(lab.host_ipv6("h2")));
    let g = IpAddr::V6(G6);
    let _h1a = lab.join_source("h1a", g, s1, SourceJoin::Include)?;
    let h1b_s1 = lab.join_source("h1b", g, s1, SourceJoin::Include)?;
    let _h1b_s2 = lab.join_source("h1b", g, s2, SourceJoin::Include)?;
    wait_for_filter(&lab, g, "p1", &format!("include {s1},{s2}"), JOIN_TIMEOUT)?;
    let (_from_s1, _from_s2) = (lab.stream("h0", g)?, lab.stream("h2", g)?);
    let sniffer = lab.sniff("h1a")?;
    wait_until("S1 at h1a", JOIN_TIMEOUT, || Ok(sniffer.count_from(s1, g) > 0))?;
    // The kernels repeat their state changes for up to 2 s; a repeated
    // ALLOW beside the BLOCK would hide the defect.
    thread::sleep(Duration::from_millis(2500));
    drop(h1b_s1);
    snoop_tests::watch_stream("S1 at h1a", Duration::from_secs(4), Duration::from_millis(500), || {
        sniffer.count_from(s1, g)
    })?;
    assert_eq!(shown_filter(&lab, g, "p1")?, Some(format!("include {s1},{s2}")), "p1 lost a source a host wants");
    Ok(())
}

#[test]
fn an_mld_source_query_from_snoop_reaches_every_host_behind_a_port() -> Result<()> {
    a_block_behind_a_shared_port_leaves_the_other_hosts_sources("mldshared", false)
}

#[test]
fn an_mld_source_query_from_another_querier_reaches_every_host_behind_a_port() -> Result<()> {
    a_block_behind_a_shared_port_leaves_the_other_hosts_sources("mldsharedq", true)
}

#[test]
fn ssm_ranges_are_configurable_and_none_joins_232_from_any_source() -> Result<()> {
    // `--ssm-range none`, the Linux bridge's behaviour: h2's any-source
    // join of 232.1.2.3 counts; h1's source-specific one still gets only S1.
    let mut lab = Lab::new("ssmrange", 5, &LabOptions::default())?;
    let (s1, ssm) = (IpAddr::V4(lab.host("h0").ip), IpAddr::V4(SSM));
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--ssm-range", "none"]].concat())?;
    let _h1 = lab.join_source("h1", ssm, s1, SourceJoin::Include)?;
    let _h2 = lab.join("h2", SSM)?;
    wait_for_filter(&lab, ssm, "p1", &format!("include {s1}"), JOIN_TIMEOUT)?;
    wait_for_filter(&lab, ssm, "p2", "any", JOIN_TIMEOUT)?;
    let got = deliver_from(&lab, &["h0", "h3"], ssm, &["h1", "h2", "h4"], 50)?;
    assert_eq!(got, [[50, 0], [50, 50], [0, 0]], "per receiver: from h0, from h3");
    assert_eq!(stat(&lab, "controller", "ignored_ssm_any_source_joins")?, 0);
    assert!(lab.stop_snoop(false)?.success());

    // A range of one's own: 239.232.0.0/16 is source-specific, 232/8 is not.
    let own = Ipv4Addr::new(239, 232, 1, 1);
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--ssm-range", "239.232.0.0/16"]].concat())?;
    let _h4 = lab.join("h4", own)?;
    wait_until("h4's any-source join ignored", JOIN_TIMEOUT, || {
        Ok(stat(&lab, "controller", "ignored_ssm_any_source_joins")? > 0)
    })?;
    wait_for_filter(&lab, ssm, "p2", "any", JOIN_TIMEOUT)?;
    let got = deliver_from(&lab, &["h0"], IpAddr::V4(own), &["h4", "h3"], 50)?;
    assert_eq!(got, [[0], [0]], "nobody asked for a source of 239.232.1.1");
    Ok(())
}
