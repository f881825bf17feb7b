//! VLAN-aware snooping on a bridge with `vlan_filtering 1`: trunk and
//! access ports, hosts whose kernels report in their VLAN, per-VLAN queriers.
//! The host kernel may lack 802.1Q: `cargo xtask test` then runs these in a
//! guest (see xtask's VLAN_TESTS).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    thread,
    time::Duration,
};

use anyhow::Result;
use snoop_tests::{
    comparable_mdb, kernel_mdb, lab::Lab, map_members_by_vlan, snoop_bin, snoop_mdb, stat, wait_until, LabOptions,
    FAST_TIMERS,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 2, 3);
const G6: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x77);
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// h0 on a trunk of VLANs 10 and 20 (its interfaces h0v10, h0v20), h1 and
/// h3 access ports of VLAN 10, h2 and h4 of VLAN 20; the bridge has a VLAN
/// interface in each VLAN, from which that VLAN's queries come.
fn vlan_lab(tag: &str, ipv6: bool) -> Result<Lab> {
    let mut lab = Lab::new(tag, 5, &LabOptions { vlan_filtering: true, ipv6, ..Default::default() })?;
    lab.set_trunk_vlans("p0", &[10, 20])?;
    lab.set_access_vlan("p1", 10)?;
    lab.set_access_vlan("p2", 20)?;
    lab.set_access_vlan("p3", 10)?;
    lab.set_access_vlan("p4", 20)?;
    lab.add_vlan_host("h0", 10)?;
    lab.add_vlan_host("h0", 20)?;
    lab.add_bridge_vlan_interface(10, "10.99.10.1/24")?;
    lab.add_bridge_vlan_interface(20, "10.99.20.1/24")?;
    if ipv6 {
        for host in ["h0", "h1", "h2", "h3"] {
            lab.wait_ipv6_ready(host, Duration::from_secs(10))?;
        }
    }
    Ok(lab)
}

/// Waits until the map holds exactly `want` (group, VLAN, port) for `group`.
fn wait_for_vlan_members(lab: &Lab, group: IpAddr, want: &[(u16, &str)]) -> Result<()> {
    let want: BTreeSet<(IpAddr, u16, String)> = want.iter().map(|(v, p)| (group, *v, p.to_string())).collect();
    let waited = wait_until(&format!("{group} members {want:?}"), JOIN_TIMEOUT, || {
        let have: BTreeSet<_> = map_members_by_vlan(lab)?.into_iter().filter(|(g, _, _)| *g == group).collect();
        Ok(have == want)
    });
    if waited.is_err() {
        let log = std::fs::read_to_string(lab.snoop_log()).unwrap_or_default();
        eprintln!("map: {:?}\nsnoop's log:\n{log}", map_members_by_vlan(lab)?);
        eprintln!("stats: {}", lab.snoop_show(&snoop_bin(), "stats").map(|s| s.to_string()).unwrap_or_default());
        eprintln!("ports: {}", lab.snoop_show(&snoop_bin(), "ports").map(|s| s.to_string()).unwrap_or_default());
        eprintln!("querier: {}", lab.snoop_show(&snoop_bin(), "querier").map(|s| s.to_string()).unwrap_or_default());
        eprintln!("vlans: {}", lab.bridge_cmd(&["vlan", "show"]).unwrap_or_default());
    }
    waited
}

/// Sends `n` packets of `group` from each sender; what each receiver got
/// from each, in order.
fn deliver(lab: &Lab, senders: &[&str], group: Ipv4Addr, receivers: &[&str], n: u64) -> Result<Vec<Vec<u64>>> {
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    for sender in senders {
        lab.send(sender, group, n, Duration::from_micros(200))?;
    }
    thread::sleep(Duration::from_millis(300));
    Ok(sniffers
        .iter()
        .map(|s| senders.iter().map(|sender| s.count_from(lab.host(sender).ip, group)).collect())
        .collect())
}

#[test]
fn vlan_members_get_only_their_vlans_stream_and_queries_go_out_per_vlan() -> Result<()> {
    let mut lab = vlan_lab("vlan-members", false)?;
    // The trunk host joins in VLAN 10 only; h4 joins in VLAN 20. h1 sends
    // in VLAN 10, h2 in VLAN 20.
    let _trunk = lab.join("h0v10", G)?;
    let _h4 = lab.join("h4", G)?;
    let receivers = ["h0v10", "h0v20", "h3", "h4"];
    // Control: the bridge alone floods each VLAN's stream within its VLAN.
    assert_eq!(deliver(&lab, &["h1", "h2"], G, &receivers, 50)?, [vec![50, 0], vec![0, 50], vec![50, 0], vec![0, 50]]);

    let sniffers: Vec<_> = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<_>>()?;
    // VLAN 20's query source is configured; VLAN 10's is its interface's.
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--vlan-query-source", "20=10.99.20.5"]].concat())?;
    wait_for_vlan_members(&lab, G.into(), &[(10, "p0"), (20, "p4")])?;
    // The same group in two VLANs: each VLAN's members get its stream only.
    // Without per-VLAN keys p0's VLAN 10 membership would let VLAN 20's
    // stream out of p0 too.
    assert_eq!(deliver(&lab, &["h1", "h2"], G, &receivers, 50)?, [vec![50, 0], vec![0, 0], vec![0, 0], vec![0, 50]]);
    // Each VLAN's queries come from its own source, tagged on the trunk
    // (else h0's VLAN interfaces would not get them), untagged on access
    // ports, never into another VLAN.
    let vlan10_querier = Ipv4Addr::new(10, 99, 10, 1);
    let vlan20_querier = Ipv4Addr::new(10, 99, 20, 5);
    let queries: Vec<(u64, u64)> =
        sniffers.iter().map(|s| (s.queries_from(vlan10_querier), s.queries_from(vlan20_querier))).collect();
    for (host, (in10, in20)) in receivers.iter().zip(&queries) {
        let in_vlan_10 = matches!(*host, "h0v10" | "h3");
        assert!((*in10 > 0) == in_vlan_10 && (*in20 > 0) != in_vlan_10, "{host} heard queries {in10} + {in20}");
    }
    let shown = lab.snoop_show(&snoop_bin(), "groups")?;
    let vlans: BTreeSet<u64> = shown
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["group"] == G.to_string())
        .filter_map(|g| g["vlan"].as_u64())
        .collect();
    assert_eq!(vlans, [10, 20].into());
    let querier = lab.snoop_show(&snoop_bin(), "querier")?;
    let sources: BTreeSet<(u64, String)> = querier["vlans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| (v["vlan"].as_u64().unwrap_or(0), v["querier"]["own_address"].as_str().unwrap_or("").to_owned()))
        .collect();
    assert_eq!(sources, [(10, "10.99.10.1".to_owned()), (20, "10.99.20.5".to_owned())].into());
    assert!(stat(&lab, "datapath", "data_pruned")? > 0);
    // Copied by redirect, not left to the bridge.
    assert!(stat(&lab, "datapath", "redirected")? >= 100);
    Ok(())
}

/// Redirect on a VLAN-aware bridge: each copy tagged as its port's VLAN
/// egress policy says (a trunk sender's tagged frames reach access members
/// untagged, an access sender's reach the trunk tagged), the bridge host's
/// member on its VLAN interface gets its copy, and a frame tagged with a
/// VLAN its entry port is not in goes nowhere, as on the bridge path.
#[test]
fn vlan_redirect_tags_each_copy_as_its_port_says() -> Result<()> {
    let mut lab = vlan_lab("vlan-redirect", false)?;
    // h1's access port is in VLAN 10 only: what it sends tagged 20 must
    // not get into VLAN 20.
    lab.add_vlan_host("h1", 20)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let _trunk = lab.join("h0v20", G)?;
    let _h3 = lab.join("h3", G)?;
    let _h4 = lab.join("h4", G)?;
    let _local = lab.join_on_bridge(G, Ipv4Addr::new(10, 99, 10, 1))?;
    wait_for_vlan_members(&lab, G.into(), &[(10, "p3"), (20, "p0"), (20, "p4")])?;
    // The bridge host's own groups are read every port scan (1 s).
    thread::sleep(Duration::from_millis(2500));
    let redirected = stat(&lab, "datapath", "redirected")?;
    let receivers = ["h0v10", "h0v20", "h3", "h4"];
    let local = lab.sniff_bridge_vlan(10)?;
    let got = deliver(&lab, &["h0v10", "h0v20", "h2", "h1v20"], G, &receivers, 50)?;
    // Senders: the trunk in 10 and 20, h2 (access 20), h1 tagging 20.
    assert_eq!(got, [vec![0, 0, 0, 0], vec![0, 0, 50, 0], vec![50, 0, 0, 0], vec![0, 50, 50, 0]]);
    assert_eq!(local.count_from(lab.host("h0v10").ip, G), 50, "the bridge host's member in VLAN 10");
    assert_eq!(local.count_from(lab.host("h2").ip, G), 0);
    // Three streams redirected (h1's tagged one took the bridge path, which dropped it).
    let copied = stat(&lab, "datapath", "redirected")? - redirected;
    assert!((150..160).contains(&copied), "{copied} packets redirected");
    Ok(())
}

#[test]
fn vlan_a_port_moved_to_another_vlan_is_followed_ipv6() -> Result<()> {
    let mut lab = vlan_lab("vlan-move", true)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let _h1 = lab.join_v6("h1", G6)?;
    wait_for_vlan_members(&lab, G6.into(), &[(10, "p1")])?;
    let got = |sender: &str| -> Result<Vec<u64>> {
        let receivers = ["h1", "h3"];
        let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
        lab.send_v6(sender, G6, 50, Duration::from_micros(200))?;
        thread::sleep(Duration::from_millis(300));
        Ok(sniffers.iter().map(|s| s.count(G6)).collect())
    };
    // From the trunk in VLAN 10: to h1, not to h3 (VLAN 10, no member).
    assert_eq!(got("h0v10")?, [50, 0]);
    // p1 moves to VLAN 20: its VLAN 10 membership goes, h1 answers VLAN
    // 20's queries, and VLAN 20's stream reaches it.
    lab.set_access_vlan("p1", 20)?;
    wait_for_vlan_members(&lab, G6.into(), &[(20, "p1")])?;
    assert_eq!(got("h0v20")?, [50, 0]);
    assert_eq!(got("h0v10")?, [0, 0]);
    // VLAN filtering off: one membership for the whole bridge again.
    lab.ip_br(&["link", "set", "br0", "type", "bridge", "vlan_filtering", "0"])?;
    wait_for_vlan_members(&lab, G6.into(), &[(0, "p1")])?;
    let querier = lab.snoop_show(&snoop_bin(), "querier")?;
    assert!(querier.get("vlans").is_none(), "{querier}");
    Ok(())
}

/// Whether `show querier` has a querier present in `vlan`.
fn vlan_present(lab: &Lab, vlan: u64) -> Result<bool> {
    let querier = lab.snoop_show(&snoop_bin(), "querier")?;
    let vlans = querier["vlans"].as_array().cloned().unwrap_or_default();
    Ok(vlans.iter().any(|v| v["vlan"] == vlan && v["querier"]["present"] == true))
}

/// The VLANs `show ports` has `port` as a router port of.
fn router_vlans(lab: &Lab, port: &str) -> Result<Vec<u64>> {
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let port = ports.as_array().into_iter().flatten().find(|p| p["name"] == port).cloned().unwrap_or_default();
    Ok(port["router_vlans"].as_array().into_iter().flatten().filter_map(|v| v.as_u64()).collect())
}

#[test]
fn vlan_a_querier_and_a_router_count_in_their_own_vlan_only() -> Result<()> {
    // snoop does not query. VLAN 10's querier and router is a Linux bridge
    // behind the trunk's VLAN 10 interface; VLAN 20 has none at first.
    let mut lab = vlan_lab("vlan-router", false)?;
    lab.make_querier("h0v10", 3, Duration::from_secs(2))?;
    let options = ["--no-querier", "--trusted-port", "p0", "--trusted-port", "p4", "--unregistered", "routers"];
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &options].concat())?;
    wait_until("VLAN 10's querier present", JOIN_TIMEOUT, || vlan_present(&lab, 10))?;
    assert!(!vlan_present(&lab, 20)?);
    // VLAN 10 prunes (G, joined by nobody there, goes to its router only);
    // VLAN 20, without a querier, floods. A flag per family would flood
    // VLAN 10 too while VLAN 20 has no querier.
    let receivers = ["h0v20", "h3", "h4"];
    assert_eq!(deliver(&lab, &["h1", "h2"], G, &receivers, 50)?, [vec![0, 50], vec![0, 0], vec![0, 50]]);

    // A router and querier appears in VLAN 20, behind p4: there G goes to
    // p4 only. p0 is VLAN 10's router port, not VLAN 20's: neither VLAN
    // 20's stream nor its reports go out of it.
    lab.make_querier("h4", 3, Duration::from_secs(2))?;
    wait_until("VLAN 20's querier present", JOIN_TIMEOUT, || vlan_present(&lab, 20))?;
    assert_eq!(router_vlans(&lab, "p0")?, [10]);
    assert_eq!(router_vlans(&lab, "p4")?, [20]);
    let trunk_in_20 = lab.sniff("h0v20")?;
    let _h2 = lab.join("h2", Ipv4Addr::new(239, 1, 2, 20))?;
    let _h3 = lab.join("h3", Ipv4Addr::new(239, 1, 2, 10))?;
    wait_until("h3's join heard by VLAN 10's router", JOIN_TIMEOUT, || {
        Ok(lab.router_groups("h0v10")?.contains(&Ipv4Addr::new(239, 1, 2, 10)))
    })?;
    wait_until("h2's join heard by VLAN 20's router", JOIN_TIMEOUT, || {
        Ok(lab.router_groups("h4")?.contains(&Ipv4Addr::new(239, 1, 2, 20)))
    })?;
    assert_eq!(trunk_in_20.reports(), 0, "VLAN 20's reports went to VLAN 10's router port");
    assert_eq!(deliver(&lab, &["h1", "h2"], G, &receivers, 50)?, [vec![0, 0], vec![0, 0], vec![0, 50]]);
    Ok(())
}

/// The same joins in two VLANs (h1 in 10, h4 in 20, the trunk host in 20)
/// under the kernel's own snooping and under snoop: `snoop show mdb
/// --json` holds the kernel's entries, with the kernel's `vid`.
#[test]
fn vlan_show_mdb_holds_what_the_kernels_mdb_holds() -> Result<()> {
    let joins = |lab: &Lab| -> Result<Vec<snoop_tests::lab::Membership>> {
        Ok(vec![lab.join("h1", G)?, lab.join("h4", G)?, lab.join("h0v20", G)?])
    };
    let kernel_document = {
        let lab = vlan_lab("vlan-mdb-kernel", false)?;
        // IGMPv3, as snoop's hosts report: the kernel shows filter modes then.
        #[rustfmt::skip]
        lab.ip_br(&["link", "set", &lab.bridge, "type", "bridge", "mcast_snooping", "1", "mcast_igmp_version", "3"])?;
        let _joined = joins(&lab)?;
        let mut document = serde_json::Value::Null;
        wait_until("the kernel's mdb has the three entries", JOIN_TIMEOUT, || {
            document = kernel_mdb(&lab)?;
            Ok(comparable_mdb(&document).len() >= 3)
        })?;
        document
    };
    let mut lab = vlan_lab("vlan-mdb-snoop", false)?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let _joined = joins(&lab)?;
    wait_for_vlan_members(&lab, G.into(), &[(10, "p1"), (20, "p4"), (20, "p0")])?;
    let document = snoop_mdb(&lab)?;
    assert_eq!(
        comparable_mdb(&document),
        comparable_mdb(&kernel_document),
        "snoop: {document}\nkernel: {kernel_document}"
    );
    let vids: BTreeSet<u64> = comparable_mdb(&document).iter().filter_map(|e| e["vid"].as_u64()).collect();
    assert_eq!(vids, BTreeSet::from([10, 20]));
    Ok(())
}

/// A trunk host joining in 40 VLANs may not multiply its port's group
/// limit (30 here) by them; other ports keep their joins, source filters
/// and pruning.
#[test]
fn vlan_a_trunk_port_keeps_to_one_group_limit_across_its_vlans() -> Result<()> {
    const SSM: Ipv4Addr = Ipv4Addr::new(232, 1, 2, 3);
    let mut lab = vlan_lab("vlan-limit", false)?;
    let many: Vec<u16> = (101..=140).collect();
    lab.set_trunk_vlans("p0", &[&[10, 20][..], &many].concat())?;
    let mut trunk_hosts = Vec::new();
    for vlan in &many {
        trunk_hosts.push(lab.add_vlan_host("h0", *vlan)?);
    }
    lab.start_snoop(&snoop_bin(), &[FAST_TIMERS, &["--max-groups-per-port", "30"]].concat())?;
    let _trunk: Vec<_> = trunk_hosts.iter().map(|h| lab.join(h, G)).collect::<Result<_>>()?;
    let on_trunk = |lab: &Lab| -> Result<usize> {
        Ok(map_members_by_vlan(lab)?.into_iter().filter(|(_, _, port)| port == "p0").count())
    };
    wait_until("30 of the trunk's 40 joins", JOIN_TIMEOUT, || Ok(on_trunk(&lab)? == 30))?;
    // Other ports: an any-source join and a source-specific one in VLAN 10.
    let _h1 = lab.join("h1", G)?;
    let source = lab.host("h3").ip;
    let _h1_ssm = lab.join_source("h1", SSM.into(), source.into(), snoop_tests::lab::SourceJoin::Include)?;
    wait_until("h1's joins", JOIN_TIMEOUT, || {
        let members = map_members_by_vlan(&lab)?;
        Ok(members.contains(&(G.into(), 10, "p1".into())) && members.contains(&(SSM.into(), 10, "p1".into())))
    })?;
    thread::sleep(Duration::from_secs(1)); // the trunk's reports, repeated
    assert_eq!(on_trunk(&lab)?, 30, "the limit held");
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let ssm = groups.as_array().into_iter().flatten().find(|g| g["group"] == SSM.to_string()).cloned();
    let h1_ssm = ssm.as_ref().and_then(|g| g["members"].as_array()?.iter().find(|m| m["port"] == "p1").cloned());
    assert_eq!(h1_ssm.as_ref().map(|m| m["filter_mode"].clone()), Some("include".into()), "{groups}");
    // In VLAN 10: h1 gets G from h3 (the trunk did not join there), and
    // the SSM group from h3, its source; VLAN 20 gets nothing.
    assert_eq!(deliver(&lab, &["h3"], G, &["h1", "h0v10", "h4"], 50)?, [vec![50], vec![0], vec![0]]);
    assert_eq!(deliver(&lab, &["h3"], SSM, &["h1", "h0v10", "h4"], 50)?, [vec![50], vec![0], vec![0]]);
    let refused = stat(&lab, "controller", "ignored_group_limit")?;
    assert!(refused >= 10, "{refused} joins refused");
    Ok(())
}
