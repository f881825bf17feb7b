//! Redirect forwarding copies group traffic past the bridge: it must still do
//! only what the bridge would. Each test sets one of the bridge's own
//! policies and checks what every receiver got, in the default (redirect)
//! forwarding.
use std::{net::Ipv4Addr, thread, time::Duration};

use anyhow::Result;
use snoop::frame_sender::FrameSender;
use snoop_tests::{
    lab::{self, Lab},
    snoop_bin, stat, wait_for_members, wait_until, LabOptions,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
/// The fast timers, and port scans every 200 ms (policies are rescanned).
fn fast() -> Vec<&'static str> {
    [snoop_tests::FAST_TIMERS, &["--port-scan-interval", "200ms"]].concat()
}
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

/// Sends `n` packets of G from `sender` and returns what each receiver got.
fn deliver(lab: &Lab, sender: &str, receivers: &[&str], n: u64) -> Result<Vec<u64>> {
    snoop_tests::deliver(lab, sender, G, receivers, n)
}

fn bridge_link(lab: &Lab, args: &[&str]) -> Result<()> {
    lab::run("bridge", &[&["-n", lab.bridge_netns.as_str(), "link", "set", "dev"][..], args].concat()).map(drop)
}

/// How snoop says it forwards now: "redirect" or "bridge", and why.
fn forwarding(lab: &Lab) -> Result<(String, String)> {
    let querier = lab.snoop_show(&snoop_bin(), "forwarding")?;
    Ok((
        querier["mode"].as_str().unwrap_or_default().to_owned(),
        querier["why"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[test]
fn copies_never_go_from_one_isolated_port_to_another() -> Result<()> {
    let mut lab = Lab::new("isolated", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _members = [lab.join("h2", G)?, lab.join("h3", G)?];
    wait_for_members(&lab, G, &["p2", "p3"], JOIN_TIMEOUT)?;
    bridge_link(&lab, &["p0", "isolated", "on"])?;
    bridge_link(&lab, &["p2", "isolated", "on"])?;
    thread::sleep(Duration::from_millis(500)); // a rescan
                                               // h0 (isolated) reaches h3 but never h2 (isolated too), as the bridge decides.
    assert_eq!(deliver(&lab, "h0", &["h1", "h2", "h3"], 50)?, [0, 0, 50]);
    // A member on an isolated port still gets the group from anyone else.
    assert_eq!(deliver(&lab, "h1", &["h2", "h3"], 50)?, [50, 50]);
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p0 = ports.as_array().unwrap().iter().find(|p| p["name"] == "p0").unwrap().clone();
    assert!(p0["note"].as_str().unwrap_or_default().contains("isolated"), "show ports says why: {p0}");
    Ok(())
}

#[test]
fn a_port_that_is_not_forwarding_gets_nothing_and_sends_nothing() -> Result<()> {
    let mut lab = Lab::new("portstate", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _members = [lab.join("h1", G)?, lab.join("h2", G)?];
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [50, 50]);
    // Disabled by hand (STP, MRP or a management agent do the like; without
    // STP the bridge itself puts a port set to blocking back to forwarding):
    // the bridge neither delivers to it nor forwards what enters it.
    bridge_link(&lab, &["p2", "state", "0"])?;
    thread::sleep(Duration::from_millis(500));
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [50, 0]);
    assert_eq!(deliver(&lab, "h2", &["h1", "h3"], 50)?, [0, 0]);
    bridge_link(&lab, &["p2", "state", "3"])?;
    wait_until("p2 forwarding again", Duration::from_secs(3), || Ok(deliver(&lab, "h0", &["h2"], 10)? == [10]))?;
    Ok(())
}

#[test]
fn bridge_family_filtering_is_honoured_live() -> Result<()> {
    let mut lab = Lab::new("nftbridge", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(forwarding(&lab)?.0, "redirect");
    let nft =
        |args: &[&str]| lab::run("ip", &[&["netns", "exec", lab.bridge_netns.as_str(), "nft"][..], args].concat());
    nft(&["add", "table", "bridge", "snooptest"])?;
    nft(&["add", "chain", "bridge", "snooptest", "passing", "{ type filter hook forward priority 0; }"])?;
    nft(&["add", "rule", "bridge", "snooptest", "passing", "ip", "daddr", "239.1.1.1", "drop"])?;
    wait_until("forwarding through the bridge", Duration::from_secs(3), || Ok(forwarding(&lab)?.0 == "bridge"))?;
    assert!(forwarding(&lab)?.1.contains("nftables"), "says why: {:?}", forwarding(&lab)?);
    // The bridge's rule drops the group: nobody gets it, as without snoop.
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [0, 0]);
    nft(&["delete", "table", "bridge", "snooptest"])?;
    wait_until("redirecting again", Duration::from_secs(3), || Ok(forwarding(&lab)?.0 == "redirect"))?;
    let redirected = stat(&lab, "datapath", "redirected")?;
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [50, 0]);
    assert_eq!(stat(&lab, "datapath", "redirected")? - redirected, 50);
    Ok(())
}

#[test]
fn stp_switched_on_while_running_ends_redirect_and_off_resumes_it() -> Result<()> {
    let mut lab = Lab::new("stplive", 3, &LabOptions::default())?;
    lab.ip_br(&["link", "set", "br0", "type", "bridge", "forward_delay", "200"])?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(forwarding(&lab)?.0, "redirect");
    lab.ip_br(&["link", "set", "br0", "type", "bridge", "stp_state", "1"])?;
    wait_until("forwarding through the bridge", Duration::from_secs(3), || Ok(forwarding(&lab)?.0 == "bridge"))?;
    assert!(forwarding(&lab)?.1.contains("STP"));
    // Ports listen and learn for 2 x 2 s, then forward.
    wait_until(
        "ports forwarding under STP",
        Duration::from_secs(10),
        || Ok(deliver(&lab, "h0", &["h1"], 10)? == [10]),
    )?;
    let redirected = stat(&lab, "datapath", "redirected")?;
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [50, 0]);
    assert_eq!(stat(&lab, "datapath", "redirected")?, redirected, "a copy skipped STP");
    lab.ip_br(&["link", "set", "br0", "type", "bridge", "stp_state", "0"])?;
    wait_until("redirecting again", Duration::from_secs(3), || Ok(forwarding(&lab)?.0 == "redirect"))?;
    Ok(())
}

#[test]
fn the_bridge_learns_senders_whose_frames_the_fast_path_consumes() -> Result<()> {
    let mut lab = Lab::new("learning", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    // h0 only ever sends group traffic, which the fast path consumes.
    let before = stat(&lab, "datapath", "redirected")?;
    lab.send("h0", G, 20, Duration::from_millis(10))?;
    assert!(stat(&lab, "datapath", "redirected")? >= before + 20, "the fast path carried h0's traffic");
    thread::sleep(Duration::from_millis(500)); // a port scan

    // h2 answers h0 with unicast: a bridge that knows h0's MAC sends it to p0
    // only; one that does not floods it to every port.
    let (h0_mac, h2_mac) = (lab.host_mac("h0")?, lab.host_mac("h2")?);
    let mut frame = h0_mac.to_vec();
    frame.extend_from_slice(&h2_mac);
    frame.extend_from_slice(&[0x08, 0x00]);
    frame.extend_from_slice(&lab::udp_packet(lab.host("h2").ip, lab.host("h0").ip, 32));
    let sniffers = ["h0", "h1", "h3"].map(|h| lab.sniff(h).unwrap());
    let netns = lab.host("h2").netns.clone();
    lab::in_netns(&netns, move || -> Result<()> {
        let sender = FrameSender::open(nix_index("eth0")?)?;
        for _ in 0..10 {
            sender.send(&frame)?;
        }
        Ok(())
    })??;
    thread::sleep(Duration::from_millis(300));
    let h0 = lab.host("h0").ip;
    let got = sniffers.map(|s| s.count(h0));
    assert_eq!(got, [10, 0, 0], "unicast to a multicast-only sender was flooded (h0, h1, h3 got {got:?})");
    Ok(())
}

fn nix_index(name: &str) -> Result<u32> {
    let name = std::ffi::CString::new(name)?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    anyhow::ensure!(index != 0, "no interface {name:?}");
    Ok(index)
}

/// `nft -f -` in the bridge's namespace with `ruleset`.
fn nft(lab: &Lab, ruleset: &str) -> Result<()> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.bridge_netns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().expect("a pipe").write_all(ruleset.as_bytes())?;
    anyhow::ensure!(child.wait()?.success(), "nft refused:\n{ruleset}");
    Ok(())
}

fn sysctl(lab: &Lab, name: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/bridge/{name}");
    lab::run("ip", &["netns", "exec", &lab.bridge_netns, "sh", "-c", &format!("echo {value} > {path}")]).map(drop)
}

/// With `ruleset` in place (after `setup`), a rule the kernel runs on
/// bridged frames drops the group on its way from h0 to the member h1:
/// snoop must leave those frames to the bridge, which drops them; with
/// the ruleset gone, redirect takes over again.
fn a_rule_on_bridged_frames_is_honoured(
    tag: &str,
    setup: impl Fn(&Lab) -> Result<()>,
    ruleset: &str,
    table: &str,
) -> Result<()> {
    let mut lab = Lab::new(tag, 3, &LabOptions::default())?;
    setup(&lab)?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [50, 0], "before the rule");
    nft(&lab, ruleset)?;
    thread::sleep(Duration::from_millis(600)); // a rescan
    assert_eq!(deliver(&lab, "h0", &["h1", "h2"], 50)?, [0, 0], "the rule was skipped");
    nft(&lab, &format!("delete table {table}\n"))?;
    wait_until("redirecting again", Duration::from_secs(3), || {
        let redirected = stat(&lab, "datapath", "redirected")?;
        Ok(deliver(&lab, "h0", &["h1", "h2"], 10)? == [10, 0] && stat(&lab, "datapath", "redirected")? > redirected)
    })?;
    Ok(())
}

/// An nftables table of `family` whose forward chain drops G.
fn dropping_forward(family: &str) -> String {
    format!("table {family} snooptest {{\n chain forward {{\n  type filter hook forward priority 0; ip daddr 239.1.1.1 drop;\n }}\n}}\n")
}

#[test]
fn an_inet_table_is_honoured_where_br_netfilter_calls_it() -> Result<()> {
    // Debian's `table inet filter`, firewalld: bridged IPv4 reaches it
    // through br_netfilter (bridge-nf-call-iptables, on by default).
    let setup = |lab: &Lab| sysctl(lab, "bridge-nf-call-iptables", "1");
    a_rule_on_bridged_frames_is_honoured("nftinet", setup, &dropping_forward("inet"), "inet snooptest")
}

#[test]
fn the_bridges_own_nf_call_iptables_is_honoured() -> Result<()> {
    // The global sysctl off, the bridge's own option on.
    let setup = |lab: &Lab| {
        sysctl(lab, "bridge-nf-call-iptables", "0")?;
        lab.ip_br(&["link", "set", "br0", "type", "bridge", "nf_call_iptables", "1"]).map(drop)
    };
    a_rule_on_bridged_frames_is_honoured("nfcallbr", setup, &dropping_forward("ip"), "ip snooptest")
}

#[test]
fn a_netdev_ingress_chain_on_the_senders_port_is_honoured() -> Result<()> {
    let ruleset = "table netdev snooptest {\n chain ingress {\n  type filter hook ingress device p0 priority 0; \
                   ip daddr 239.1.1.1 drop;\n }\n}\n";
    a_rule_on_bridged_frames_is_honoured("nftnetdev", |_| Ok(()), ruleset, "netdev snooptest")
}

#[test]
fn an_ip6_table_is_honoured_where_br_netfilter_calls_it() -> Result<()> {
    let g6: std::net::Ipv6Addr = "ff0e::4242".parse()?;
    let mut lab = Lab::new("nftip6", 3, &LabOptions { ipv6: true, ..Default::default() })?;
    for host in ["h0", "h1", "h2"] {
        lab.wait_ipv6_ready(host, Duration::from_secs(10))?;
    }
    sysctl(&lab, "bridge-nf-call-ip6tables", "1")?;
    lab.start_snoop(&snoop_bin(), &fast())?;
    let _m1 = lab.join_v6("h1", g6)?;
    snoop_tests::wait_for_members_v6(&lab, g6, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(snoop_tests::deliver_v6(&lab, "h0", g6, &["h1", "h2"], 50)?, [50, 0], "before the rule");
    nft(
        &lab,
        "table ip6 snooptest {\n chain forward {\n  type filter hook forward priority 0; ip6 daddr ff0e::4242 drop;\n }\n}\n",
    )?;
    thread::sleep(Duration::from_millis(600));
    assert_eq!(snoop_tests::deliver_v6(&lab, "h0", g6, &["h1", "h2"], 50)?, [0, 0], "the rule was skipped");
    assert!(forwarding(&lab)?.1.contains("IPv6"), "says why: {:?}", forwarding(&lab)?);
    Ok(())
}
