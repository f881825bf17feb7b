//! snoop as a service: its configuration file, static groups and group
//! filters, reloads, systemd.
use std::{net::Ipv4Addr, process::Output, thread, time::Duration};

use anyhow::Result;
use serde_json::Value;
use snoop_tests::{
    deliver,
    lab::{self, Lab},
    map_members, snoop_bin, stat, wait_for_members, wait_until, LabOptions, Watcher, FAST_TIMERS,
};

const G1: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 1);
const G2: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 2);
const G3: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 3);
const UNJOINED: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 99);
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

/// The file's port settings take effect, and a flag on the command line wins
/// over the same setting in the file.
#[test]
fn a_config_file_sets_port_settings_and_flags_override_it() -> Result<()> {
    let mut lab = Lab::new("config", 4, &LabOptions::default())?;
    let path = lab.write_file(
        "snoop.toml",
        "# p3 leads to a router; p1 may join one group; unjoined groups flood\n\
         unregistered = \"flood\"\n\
         max-groups-per-port = 5\n\
         \n\
         [port.p3]\n\
         router = true\n\
         \n\
         [port.p1]\n\
         max-groups = 1\n",
    )?;
    let config = path.to_str().expect("a UTF-8 path");
    let mut args = FAST_TIMERS.to_vec();
    // Overrides the file's `unregistered = "flood"`.
    args.extend(["--config", config, "--unregistered", "routers"]);
    lab.start_snoop(&snoop_bin(), &args)?;

    // One after the other: p1's one group is the first it joins.
    let _h1 = lab.join("h1", G1)?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    let _h1_again = lab.join("h1", G2)?;
    let _h2 = [lab.join("h2", G1)?, lab.join("h2", G2)?];
    wait_for_members(&lab, G1, &["p1", "p2"], JOIN_TIMEOUT)?;
    wait_for_members(&lab, G2, &["p2"], JOIN_TIMEOUT)?;
    assert!(stat(&lab, "controller", "ignored_group_limit")? >= 1, "p1's second join was not refused");

    let receivers = ["h1", "h2", "h3"];
    assert_eq!(deliver(&lab, "h0", G1, &receivers, 50)?, [50, 50, 50], "G1: members and the router port");
    assert_eq!(deliver(&lab, "h0", G2, &receivers, 50)?, [0, 50, 50], "G2: over p1's limit of 1");
    assert_eq!(deliver(&lab, "h0", UNJOINED, &receivers, 50)?, [0, 0, 50], "unjoined: router ports only");
    Ok(())
}

/// A mistake in the file stops snoop before it touches the bridge, with the
/// file's name and the line.
#[test]
fn a_bad_config_file_is_refused_naming_its_line() -> Result<()> {
    let mut lab = Lab::new("config-bad", 1, &LabOptions { kernel_snooping: true, ..Default::default() })?;
    let path = lab.write_file("bad.toml", "")?;
    for (text, expected) in [
        (
            "robustness = 2\nquery-intervall = \"10s\"\n",
            "line 2: unknown key `query-intervall` (did you mean `query-interval`?)",
        ),
        ("\n\n[port.p0]\nrouter = \"yes\"\n", "line 4: `port.p0.router`: true, false or \"never\""),
        ("forwarding = \"fast\"\n", "line 1: `forwarding`: invalid value 'fast' for '--forwarding <FORWARDING>'"),
        ("query-interval = 60s\n", "line 1: "),
    ] {
        std::fs::write(&path, text)?;
        let output = std::process::Command::new(snoop_bin())
            .args(["--netns", &lab.bridge_netns, "run", "--bridge", &lab.bridge, "--config"])
            .arg(&path)
            .output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(stderr.contains(&format!("{}: {expected}", path.display())), "{text:?}: {stderr}");
        // Nothing was attached: the bridge's own snooping is as the lab made it.
        let snooping = lab::run("ip", &["-n", &lab.bridge_netns, "-d", "link", "show", &lab.bridge])?;
        assert!(snooping.contains("mcast_snooping 1"), "{text:?}: the bridge was touched");
    }
    Ok(())
}

/// Under systemd (Type=notify, WatchdogSec=): READY=1 once snoop answers,
/// WATCHDOG=1 from its event loop at half the watchdog interval, and
/// STOPPING=1 on SIGTERM. systemd's side is a datagram socket here, as it is
/// there.
#[test]
fn systemd_hears_ready_the_watchdog_and_stopping() -> Result<()> {
    use std::os::unix::net::UnixDatagram;
    let mut lab = Lab::new("notify", 1, &LabOptions::default())?;
    // A path the lab removes, whatever happens.
    let path = lab.write_file("notify", "")?;
    std::fs::remove_file(&path)?;
    let systemd = UnixDatagram::bind(&path)?;
    systemd.set_read_timeout(Some(Duration::from_secs(10)))?;
    // Tests run one at a time (`--test-threads 1`): nothing else reads these.
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "400000");
    let started = lab.start_snoop(&snoop_bin(), FAST_TIMERS);
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    started?;
    let mut message = [0u8; 512];
    let mut next = || -> Result<String> {
        let n = systemd.recv(&mut message)?;
        Ok(String::from_utf8_lossy(&message[..n]).into_owned())
    };
    let first = next()?;
    assert!(first.starts_with("READY=1\n") && first.contains("STATUS=snooping on"), "{first:?}");
    let before = std::time::Instant::now();
    for _ in 0..3 {
        assert_eq!(next()?, "WATCHDOG=1\n");
    }
    let elapsed = before.elapsed();
    assert!(elapsed < Duration::from_millis(1200), "3 watchdog pings took {elapsed:?} (every 200 ms expected)");
    assert!(lab.stop_snoop(false)?.success());
    let last = std::iter::from_fn(|| next().ok()).find(|m| m != "WATCHDOG=1\n");
    assert_eq!(last.as_deref(), Some("STOPPING=1\n"));
    Ok(())
}

/// `snoop ARGS...` against the lab's bridge namespace.
fn snoop(lab: &Lab, args: &[&str]) -> Result<Output> {
    Ok(std::process::Command::new(snoop_bin()).args(["--netns", &lab.bridge_netns]).args(args).output()?)
}

/// Starts snoop with the fast timers and a configuration file holding
/// `text`; returns the file's path, for rewriting it.
fn start_with_config(lab: &mut Lab, text: &str) -> Result<std::path::PathBuf> {
    let path = lab.write_file("snoop.toml", text)?;
    let mut args = FAST_TIMERS.to_vec();
    args.extend(["--config", path.to_str().expect("a UTF-8 path")]);
    lab.start_snoop(&snoop_bin(), &args)?;
    Ok(path)
}

/// The membership of `group` on `port` as `snoop show groups --json` has it.
fn shown_member(lab: &Lab, group: Ipv4Addr, port: &str) -> Result<Option<Value>> {
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let group = groups.as_array().into_iter().flatten().find(|g| g["group"] == group.to_string());
    Ok(group.and_then(|g| g["members"].as_array()?.iter().find(|m| m["port"] == port).cloned()))
}

/// Static groups, from the file and added at run time: forwarded with no
/// host joined, shown static, in the map, never aged; a host's leave on the
/// port changes nothing; deleted, they go (snoop is the querier: after its
/// unanswered last-member queries).
#[test]
fn static_groups_are_forwarded_without_members_and_never_aged() -> Result<()> {
    let mut lab = Lab::new("static", 3, &LabOptions::default())?;
    start_with_config(&mut lab, &format!("[port.p1]\nstatic-groups = [\"{G1}\"]\n"))?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    let member = shown_member(&lab, G1, "p1")?.expect("shown");
    assert_eq!((&member["static"], &member["expires_in_secs"]), (&Value::Bool(true), &Value::Null), "{member}");
    let receivers = ["h1", "h2"];
    assert_eq!(deliver(&lab, "h0", G1, &receivers, 50)?, [50, 0]);

    // A host behind p1 joins and leaves; then twice the membership interval (5 s).
    let h1 = lab.join("h1", G1)?;
    thread::sleep(Duration::from_millis(500));
    drop(h1);
    thread::sleep(Duration::from_secs(10));
    assert!(map_members(&lab)?.contains(&(G1, "p1".to_owned())), "the static membership aged out of the map");
    assert_eq!(deliver(&lab, "h0", G1, &receivers, 50)?, [50, 0], "after a leave and 10 s");

    // At run time, with a source: p2 gets h0's traffic of G2.
    let h0 = lab.host("h0").ip.to_string();
    let added =
        snoop(&lab, &["group", "add", "--bridge", &lab.bridge, "--port", "p2", &G2.to_string(), "--source", &h0])?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    assert_eq!(String::from_utf8_lossy(&added.stdout).trim(), format!("p2={G2},source={h0}: static"));
    assert_eq!(deliver(&lab, "h0", G2, &receivers, 50)?, [0, 50]);
    let sources = &shown_member(&lab, G2, "p2")?.expect("shown")["sources"];
    assert_eq!(sources[0]["address"], h0.as_str(), "{sources}");

    // Mistakes are errors naming what is wrong, and change nothing.
    for (args, expected) in [
        (vec!["--port", "p9", "239.16.0.3"], "p9 is not a port of"),
        (vec!["--port", "p1", "224.0.0.1"], "the group is not snooped"),
        (vec!["--port", "p1", "232.1.1.1"], "a source-specific multicast group takes sources"),
        (vec!["--port", "p1", "10.1.1.1"], "not a multicast group"),
    ] {
        let out = snoop(&lab, &[&["group", "add", "--bridge", &lab.bridge][..], &args].concat())?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    let not_static = snoop(&lab, &["group", "del", "--bridge", &lab.bridge, "--port", "p2", &G1.to_string()])?;
    assert!(String::from_utf8_lossy(&not_static.stderr).contains("no static member"));

    // Deleted: gone once its last-member queries go unanswered.
    for (port, group) in [("p1", G1), ("p2", G2)] {
        let out = snoop(&lab, &["group", "del", "--bridge", &lab.bridge, "--port", port, &group.to_string()])?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    wait_until("static groups gone", Duration::from_secs(3), || Ok(map_members(&lab)?.is_empty()))?;
    assert_eq!(deliver(&lab, "h0", G1, &receivers, 50)?, [0, 0]);
    assert_eq!(deliver(&lab, "h0", G2, &receivers, 50)?, [0, 0]);
    Ok(())
}

/// A static router port at run time is the bridge's own knob, as with the
/// Linux bridge's snooping: `bridge link set dev P mcast_router 2`, followed
/// live (and `mcast_router 1` ends it).
#[test]
fn a_static_router_port_set_at_run_time_is_followed() -> Result<()> {
    let mut lab = Lab::new("router-live", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST_TIMERS)?;
    let receivers = ["h1", "h2"];
    assert_eq!(deliver(&lab, "h0", UNJOINED, &receivers, 50)?, [0, 0], "no router port yet");
    let router_of = |lab: &Lab| -> Result<bool> {
        let ports = lab.snoop_show(&snoop_bin(), "ports")?;
        let p2 = ports.as_array().into_iter().flatten().find(|p| p["name"] == "p2").cloned().unwrap_or_default();
        Ok(p2["router"] == true && p2["static_router"] == true)
    };
    lab::run("bridge", &["-n", &lab.bridge_netns, "link", "set", "dev", "p2", "mcast_router", "2"])?;
    wait_until("p2 a router port", Duration::from_secs(3), || router_of(&lab))?;
    assert_eq!(deliver(&lab, "h0", UNJOINED, &receivers, 50)?, [0, 50], "p2 gets every group");
    lab::run("bridge", &["-n", &lab.bridge_netns, "link", "set", "dev", "p2", "mcast_router", "1"])?;
    wait_until("p2 no router port", Duration::from_secs(3), || Ok(!router_of(&lab)?))?;
    assert_eq!(deliver(&lab, "h0", UNJOINED, &receivers, 50)?, [0, 0], "p2 is no router port again");
    Ok(())
}

/// A static group added at run time is in no file: the pinned map's entry
/// says it is static, so a keep-state restart keeps it static (never aged).
#[test]
fn a_run_time_static_group_stays_static_across_a_keep_state_restart() -> Result<()> {
    let mut lab = Lab::new("static-restart", 2, &LabOptions::default())?;
    let mut args = FAST_TIMERS.to_vec();
    args.extend(["--keep-state", "--failsafe-after", "60s"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let added = snoop(&lab, &["group", "add", "--bridge", &lab.bridge, "--port", "p1", &G1.to_string()])?;
    assert!(added.status.success(), "{}", String::from_utf8_lossy(&added.stderr));
    lab.stop_snoop(false)?;
    lab.start_snoop(&snoop_bin(), &args)?;
    let member = shown_member(&lab, G1, "p1")?.expect("resumed");
    assert_eq!(member["static"], true, "{member}");
    // Past the membership interval (5 s): still there, still forwarded.
    thread::sleep(Duration::from_secs(7));
    assert!(map_members(&lab)?.contains(&(G1, "p1".to_owned())));
    assert_eq!(deliver(&lab, "h0", G1, &["h1"], 50)?, [50]);
    Ok(())
}

/// A port's group filter: joins outside its allowed ranges, or inside a
/// denied one, are refused (nothing forwarded), counted on the port and
/// told to `snoop watch`; other ports are not filtered.
#[test]
fn a_port_filter_refuses_joins_and_says_so() -> Result<()> {
    let mut lab = Lab::new("filter", 3, &LabOptions::default())?;
    start_with_config(&mut lab, "[port.p1]\nallow = [\"239.16.0.0/24\"]\ndeny = [\"239.16.0.2\"]\n")?;
    let watcher = Watcher::start(&lab)?;
    thread::sleep(Duration::from_millis(300)); // let it subscribe
    let outside = Ipv4Addr::new(239, 17, 0, 1);
    let _h1 = [lab.join("h1", G1)?, lab.join("h1", G2)?, lab.join("h1", outside)?];
    let _h2 = lab.join("h2", G2)?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    wait_for_members(&lab, G2, &["p2"], JOIN_TIMEOUT)?;
    let refused = watcher.next_of("refused")?;
    assert_eq!(refused["port"], "p1");
    assert!(refused["detail"].as_str().unwrap_or_default().contains("filter"), "{refused}");
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p1 = ports.as_array().into_iter().flatten().find(|p| p["name"] == "p1").expect("p1 shown");
    assert!(p1["refused_by_filter"].as_u64() >= Some(2), "{p1}");
    assert_eq!(p1["group_filter"], "allow 239.16.0.0-239.16.0.255; deny 239.16.0.2");
    assert!(stat(&lab, "controller", "ignored_group_filter")? >= 2);
    assert_eq!(deliver(&lab, "h0", G1, &["h1", "h2"], 50)?, [50, 0]);
    assert_eq!(deliver(&lab, "h0", G2, &["h1", "h2"], 50)?, [0, 50], "denied on p1, not on p2");
    assert_eq!(deliver(&lab, "h0", outside, &["h1", "h2"], 50)?, [0, 0], "outside p1's allowed ranges");
    Ok(())
}

/// A reload applies the changed file (static groups, router ports, filters)
/// while a member receives a steady stream: it loses nothing. A file with a
/// mistake changes nothing and says where the mistake is; settings that
/// need a restart are named.
#[test]
fn a_reload_applies_the_changed_file_without_losing_a_packet() -> Result<()> {
    let mut lab = Lab::new("reload", 4, &LabOptions::default())?;
    let path = start_with_config(&mut lab, "[port.p1]\nfast-leave = true\n")?;
    let _h1 = lab.join("h1", G1)?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    lab.count_udp("h1", false)?;

    // 4000 packets over 2 s; two reloads in the middle of them.
    let sender = lab.sender("h0")?;
    let stream = thread::spawn(move || sender.send(G1, 4000, Duration::from_micros(500)));
    thread::sleep(Duration::from_millis(300));
    std::fs::write(
        &path,
        format!(
            "[port.p1]\nfast-leave = true\n\n[port.p2]\nstatic-groups = [\"{G2}\"]\n\n[port.p3]\nrouter = true\n\n\
             [port.h9]\nstatic-groups = [\"{G3}\"]\n"
        ),
    )?;
    let reloaded = snoop(&lab, &["reload", "--bridge", &lab.bridge])?;
    let said = String::from_utf8_lossy(&reloaded.stdout);
    assert!(reloaded.status.success(), "{}", String::from_utf8_lossy(&reloaded.stderr));
    assert!(said.contains("static groups: 2 added, 0 changed, 0 deleted"), "{said}");
    assert!(said.contains("h9 is not a port of the bridge"), "{said}");
    thread::sleep(Duration::from_millis(300));
    // SIGHUP does the same; nothing changed this time.
    // SAFETY: signalling the lab's snoop.
    unsafe { libc::kill(lab.snoop_pid().expect("running") as i32, libc::SIGHUP) };
    stream.join().expect("the sender")?;
    thread::sleep(Duration::from_millis(300));
    assert_eq!(lab.counted_udp("h1")?, 4000, "the member lost packets across the reloads");

    assert_eq!(shown_member(&lab, G2, "p2")?.map(|m| m["static"].clone()), Some(Value::Bool(true)));
    assert_eq!(deliver(&lab, "h0", G3, &["h1", "h2", "h3"], 50)?, [0, 0, 50], "p3 is a router port now");

    // A mistake: refused with its line; the configuration in force stays.
    std::fs::write(&path, "\nquery-intreval = \"5s\"\n[port.p2]\nstatic-groups = [\"239.16.0.2\"]\n")?;
    let refused = snoop(&lab, &["reload", "--bridge", &lab.bridge])?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("line 2: unknown key `query-intreval`"), "{stderr}");
    assert_eq!(deliver(&lab, "h0", G3, &["h1", "h2", "h3"], 50)?, [0, 0, 50], "p3 is still a router port");

    // A setting only a restart applies is named, the rest applied; a
    // static group of other sources is one changed.
    std::fs::write(
        &path,
        format!("control-rate-limit = 500\n[port.p2]\nstatic-groups = [\"{G2},source=10.99.0.10\"]\n"),
    )?;
    let reloaded = snoop(&lab, &["reload", "--bridge", &lab.bridge])?;
    let said = String::from_utf8_lossy(&reloaded.stdout);
    assert!(
        said.contains("static groups: 0 added, 1 changed, 1 deleted")
            && said.contains("next start: control-rate-limit"),
        "{said}"
    );
    let member = shown_member(&lab, G2, "p2")?.expect("p2 keeps G2");
    assert_eq!((&member["static"], &member["sources"][0]["address"]), (&Value::Bool(true), &Value::from("10.99.0.10")));
    std::fs::write(&path, "[port.p2]\nstatic-groups = []\n")?;
    let said = String::from_utf8(snoop(&lab, &["reload", "--bridge", &lab.bridge])?.stdout)?;
    assert!(said.contains("static groups: 0 added, 0 changed, 1 deleted"), "{said}");
    wait_until("G2 gone from p2", Duration::from_secs(3), || Ok(shown_member(&lab, G2, "p2")?.is_none()))?;
    assert_eq!(deliver(&lab, "h0", G3, &["h1", "h2", "h3"], 50)?, [0, 0, 0], "p3 is no router port now");
    Ok(())
}

/// `snoop run --bridge BRIDGE ARGS...` that should refuse to start: killed
/// after 10 s if it does start, so the test fails rather than hangs.
fn refused_start(lab: &Lab, args: &[&str]) -> Result<Output> {
    let mut command = std::process::Command::new("timeout");
    command.args(["10"]).arg(snoop_bin()).args(["--netns", &lab.bridge_netns, "run", "--bridge", &lab.bridge]);
    Ok(command.args(args).output()?)
}

/// Durations no timer can hold (NaN, infinite, negative, beyond a day)
/// are refused with the file's line, exit 2, at start; at a reload the
/// running snoop answers the error, changes nothing and keeps forwarding.
/// A failsafe within three heartbeats (3 s) is refused too (it would flap).
#[test]
fn absurd_durations_are_refused_at_start_and_at_reload_without_harm() -> Result<()> {
    let mut lab = Lab::new("durations", 3, &LabOptions::default())?;
    let bridge = lab.bridge.clone();
    for value in ["nan", "inf", "-inf", "1e20", "-5", "\"-5s\"", "\"100d\"", "0"] {
        let path = lab.write_file("bad.toml", &format!("\nquery-interval = {value}\n"))?;
        let out = refused_start(&lab, &["--config", path.to_str().expect("UTF-8")])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "query-interval = {value}: {stderr}");
        assert!(stderr.contains("line 2") && stderr.contains("query-interval"), "{value}: {stderr}");
        assert!(!stderr.contains("panicked"), "{value}: {stderr}");
    }
    let out = refused_start(&lab, &["--failsafe-after", "2s"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--failsafe-after") && stderr.contains("three heartbeats"), "{stderr}");

    let path = start_with_config(&mut lab, "[port.p1]\nfast-leave = true\n")?;
    let _h1 = lab.join("h1", G1)?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    for value in ["nan", "1e20", "-5"] {
        std::fs::write(&path, format!("[port.p1]\nfast-leave = true\n\nlast-member-query-interval = {value}\n"))?;
        let refused = snoop(&lab, &["reload", "--bridge", &bridge])?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success() && stderr.contains("line 4"), "{value}: {stderr}");
        assert_eq!(deliver(&lab, "h0", G1, &["h1", "h2"], 50)?, [50, 0], "after a reload with {value}");
    }
    assert!(lab.wait_snoop_exit(Duration::ZERO).is_err(), "snoop is gone");
    Ok(())
}

/// What `ip -j addr show dev NAME` says of an interface in the bridge
/// namespace: its master, whether it is set up, its addresses (not link-local).
fn interface(lab: &Lab, name: &str) -> Result<(Option<String>, bool, Vec<String>)> {
    let shown: Value = serde_json::from_str(&lab.ip_br(&["-j", "addr", "show", "dev", name])?)?;
    let link = &shown[0];
    let master = link["master"].as_str().map(str::to_owned);
    let up = link["flags"].as_array().is_some_and(|flags| flags.iter().any(|f| f == "UP"));
    let addresses = link["addr_info"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["scope"] != "link")
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or("?"), a["prefixlen"]))
        .collect();
    Ok((master, up, addresses))
}

/// The interface a route of the bridge namespace goes out of.
fn route_device(lab: &Lab, family: &str, prefix: &str) -> Result<Option<String>> {
    let shown: Value = serde_json::from_str(&lab.ip_br(&[family, "-j", "route", "show", prefix])?)?;
    Ok(shown[0]["dev"].as_str().map(str::to_owned))
}

/// `snoop switch` makes a snooping bridge of plain interfaces, the
/// addresses and routes configured on them moved to it (the host stays
/// reachable), and on SIGTERM puts each back as it was: no master, its
/// addresses and routes, up or down.
#[test]
fn snoop_switch_makes_a_snooping_bridge_and_puts_the_interfaces_back() -> Result<()> {
    let mut lab = Lab::new("switch", 4, &LabOptions { ipv6: true, ..Default::default() })?;
    // The lab's bridge goes: its veths are plain interfaces now, p0 leading
    // to h0 with an address and routes on it, p3 set down.
    for port in ["p0", "p1", "p2", "p3"] {
        lab.ip_br(&["link", "set", port, "nomaster"])?;
    }
    lab.ip_br(&["link", "del", &lab.bridge.clone()])?;
    lab.ip_br(&["addr", "add", "10.99.0.1/24", "dev", "p0"])?;
    lab.ip_br(&["-6", "addr", "add", "fd99::1/64", "dev", "p0", "nodad"])?;
    lab.ip_br(&["route", "add", "10.123.0.0/16", "via", "10.99.0.10"])?;
    lab.ip_br(&["-6", "route", "add", "fd12::/64", "via", "fd99::10"])?;
    lab.ip_br(&["link", "set", "p3", "down"])?;
    let before: Vec<_> = ["p0", "p1", "p2", "p3"].iter().map(|p| interface(&lab, p)).collect::<Result<_>>()?;
    assert_eq!(before[0], (None, true, vec!["10.99.0.1/24".to_owned(), "fd99::1/64".to_owned()]));
    assert_eq!(before[3], (None, false, vec![]));

    let bridge = lab.bridge.clone();
    let mut args = vec!["switch", "--bridge", &bridge, "p0", "p1", "p2", "p3", "--"];
    args.extend(FAST_TIMERS);
    lab.start_snoop_command(&snoop_bin(), &args)?;

    for port in ["p0", "p1", "p2", "p3"] {
        assert_eq!(interface(&lab, port)?.0.as_deref(), Some(bridge.as_str()), "{port} is a port of the bridge");
    }
    let (_, bridge_up, bridge_addresses) = interface(&lab, &bridge)?;
    assert!(bridge_up);
    assert_eq!(bridge_addresses, ["10.99.0.1/24", "fd99::1/64"], "p0's addresses moved to the bridge");
    assert_eq!(interface(&lab, "p0")?.2, Vec::<String>::new());
    assert_eq!(route_device(&lab, "-4", "10.123.0.0/16")?.as_deref(), Some(bridge.as_str()));
    assert_eq!(route_device(&lab, "-6", "fd12::/64")?.as_deref(), Some(bridge.as_str()));
    let details: Value = serde_json::from_str(&lab.ip_br(&["-j", "-d", "link", "show", &bridge])?)?;
    assert_eq!(details[0]["linkinfo"]["info_data"]["mcast_snooping"], 0, "the bridge's own snooping is off");
    // The host reaches h0 from the moved address.
    lab::run("ip", &["netns", "exec", &lab.bridge_netns, "ping", "-c", "1", "-W", "2", "10.99.0.10"])?;

    // And it snoops: only the member gets the group.
    let _member = lab.join("h1", G1)?;
    wait_for_members(&lab, G1, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(deliver(&lab, "h0", G1, &["h1", "h2", "h3"], 50)?, [50, 0, 0]);

    let status = lab.stop_snoop(false)?;
    let log = std::fs::read_to_string(lab.snoop_log())?;
    assert!(status.success(), "snoop switch exited with {status}; its log:\n{log}");
    let bridges: Value = serde_json::from_str(&lab.ip_br(&["-j", "link", "show", "type", "bridge"])?)?;
    assert_eq!(bridges, serde_json::json!([]), "the bridge is gone");
    for (port, was) in ["p0", "p1", "p2", "p3"].iter().zip(&before) {
        assert_eq!(&interface(&lab, port)?, was, "{port} is as it was");
        assert_eq!(snoop_tests::attached_programs(&lab, port)?, 0, "{port} has no program left");
    }
    assert_eq!(route_device(&lab, "-4", "10.123.0.0/16")?.as_deref(), Some("p0"), "the route is back on p0");
    assert_eq!(route_device(&lab, "-6", "fd12::/64")?.as_deref(), Some("p0"));
    assert!(!lab.pin_dir().exists(), "nothing pinned is left");
    Ok(())
}

/// What the bridge namespace routes through: the routes of `prefixes`
/// and the nexthop objects, as `ip -j` shows them (volatile fields out).
fn routing(lab: &Lab, prefixes: &[&str]) -> Result<Value> {
    let mut routes = Vec::new();
    for prefix in prefixes {
        let mut shown: Value = serde_json::from_str(&lab.ip_br(&["-j", "route", "show", prefix])?)?;
        for route in shown.as_array_mut().into_iter().flatten() {
            route.as_object_mut().map(|r| r.remove("flags"));
        }
        routes.push(shown);
    }
    let nexthops: Value = serde_json::from_str(&lab.ip_br(&["-j", "nexthop", "show"])?)?;
    Ok(serde_json::json!({ "routes": routes, "nexthops": nexthops }))
}

/// `snoop switch` also moves a multipath route with a hop through one of
/// its interfaces and a nexthop object out of one (and the route naming
/// it), and puts everything back even when its controller panics (a debug
/// build panics on SIGUSR2): no bridge, no program, no pin left.
#[test]
fn snoop_switch_moves_multipath_routes_and_nexthops_and_undoes_them_after_a_panic() -> Result<()> {
    let mut lab = Lab::new("switch-panic", 3, &LabOptions::default())?;
    for port in ["p0", "p1", "p2"] {
        lab.ip_br(&["link", "set", port, "nomaster"])?;
    }
    lab.ip_br(&["link", "del", &lab.bridge.clone()])?;
    lab.ip_br(&["addr", "add", "10.99.0.1/24", "dev", "p0"])?;
    lab.ip_br(&["addr", "add", "10.97.1.1/24", "dev", "p1"])?;
    lab::run("ip", &["-n", &lab.host("h1").netns, "addr", "add", "10.97.1.11/24", "dev", "eth0"])?;
    #[rustfmt::skip]
    lab.ip_br(&["route", "add", "10.123.0.0/16", "nexthop", "via", "10.99.0.10", "dev", "p0",
        "nexthop", "via", "10.97.1.11", "dev", "p1"])?;
    lab.ip_br(&["nexthop", "add", "id", "42", "via", "10.99.0.10", "dev", "p0"])?;
    lab.ip_br(&["route", "add", "10.124.0.0/16", "nhid", "42"])?;
    let prefixes = ["10.123.0.0/16", "10.124.0.0/16"];
    let before = routing(&lab, &prefixes)?;
    let interfaces_before: Vec<_> = ["p0", "p1", "p2"].iter().map(|p| interface(&lab, p)).collect::<Result<_>>()?;

    let bridge = lab.bridge.clone();
    let mut args = vec!["switch", "--bridge", &bridge, "p0", "p1", "p2", "--"];
    args.extend(FAST_TIMERS);
    lab.start_snoop_command(&snoop_bin(), &args)?;
    let during = routing(&lab, &prefixes)?;
    let hops = during["routes"][0][0]["nexthops"].as_array().cloned().unwrap_or_default();
    assert!(!hops.is_empty() && hops.iter().all(|hop| hop["dev"] == bridge), "the multipath route moved: {during}");
    assert_eq!(during["nexthops"][0]["dev"], bridge, "nexthop 42 moved: {during}");
    assert_eq!(during["routes"][1][0]["nhid"], 42, "the route naming it stays: {during}");
    lab::run("ip", &["netns", "exec", &lab.bridge_netns, "ping", "-c", "1", "-W", "2", "10.97.1.11"])?;

    // SAFETY: signalling the lab's snoop.
    unsafe { libc::kill(lab.snoop_pid().expect("running") as i32, libc::SIGUSR2) };
    let status = lab.wait_snoop_exit(Duration::from_secs(10))?;
    let log = std::fs::read_to_string(lab.snoop_log())?;
    assert!(!status.success() && log.contains("the controller panicked"), "{status}: {log}");
    let bridges: Value = serde_json::from_str(&lab.ip_br(&["-j", "link", "show", "type", "bridge"])?)?;
    assert_eq!(bridges, serde_json::json!([]), "the bridge is gone");
    for (port, was) in ["p0", "p1", "p2"].iter().zip(&interfaces_before) {
        assert_eq!(&interface(&lab, port)?, was, "{port} is as it was");
        assert_eq!(snoop_tests::attached_programs(&lab, port)?, 0, "{port} has no program left");
    }
    assert_eq!(routing(&lab, &prefixes)?, before, "routes and nexthops are as they were");
    assert!(!lab.pin_dir().exists(), "nothing pinned is left");
    Ok(())
}

/// Interfaces that cannot make a switch are refused before anything changes.
#[test]
fn snoop_switch_refuses_interfaces_it_cannot_use_and_changes_nothing() -> Result<()> {
    let lab = Lab::new("switch-bad", 2, &LabOptions::default())?;
    lab.ip_br(&["link", "set", "p1", "nomaster"])?;
    let bridge = lab.bridge.clone();
    for (args, expected) in [
        (vec!["p1", "nosuch0"], "no interface named nosuch0"),
        (vec!["p1", "p0"], &*format!("p0 is a port of {bridge} already")),
        (vec!["p1", &*bridge], &*format!("{bridge} is a bridge")),
        (vec!["p1", "p1"], "p1 is named twice"),
        (vec!["--bridge", "p0", "p1", "lo"], "an interface named p0 exists already"),
        (vec!["p1", "lo"], "lo is a loopback interface"),
        (vec!["p1", "lo", "--", "--keep-state"], "--keep-state: snoop switch deletes its bridge"),
    ] {
        let output = snoop(&lab, &[&["switch"], args.as_slice()].concat())?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert_eq!(interface(&lab, "p0")?.0.as_deref(), Some(bridge.as_str()));
    assert_eq!(interface(&lab, "p1")?.0, None);
    let bridges: Value = serde_json::from_str(&lab.ip_br(&["-j", "link", "show", "type", "bridge"])?)?;
    assert_eq!(bridges.as_array().map(Vec::len), Some(1), "no bridge was made: {bridges}");
    Ok(())
}

/// Runs systemd-networkd in the current network namespace with the
/// `.netdev`/`.network` files of the directory given, as /etc/systemd/network
/// would hold them (a mount namespace of its own: nothing of the host's
/// networkd is touched).
const NETWORKD: &str = r#"set -e
mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/network /run/systemd/netif
cp "$1"/*.netdev "$1"/*.network /run/systemd/network/
chown systemd-network:systemd-network /run/systemd/netif
# A read-only /sys, as in a container: no udev to wait for.
mount -o remount,bind,ro /sys
exec /lib/systemd/systemd-networkd
"#;

/// A network namespace and the networkd in it, gone at the end.
struct NetworkdNetns {
    name: String,
    networkd: Option<std::process::Child>,
}

impl Drop for NetworkdNetns {
    fn drop(&mut self) {
        if let Some(mut networkd) = self.networkd.take() {
            let _ = networkd.kill();
            let _ = networkd.wait();
        }
        let _ = lab::run("ip", &["netns", "del", &self.name]);
    }
}

/// The shipped systemd-networkd files, as they are, make br0 with the
/// kernel's snooping off and its ports in it (networkd itself, in a network
/// namespace of the test's), without a word of complaint about them; snoop
/// then runs on that bridge.
#[test]
fn the_shipped_networkd_files_make_a_bridge_without_the_kernels_snooping() -> Result<()> {
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/networkd");
    let mut netns =
        NetworkdNetns { name: format!("{}-networkd-{}", lab::NS_PREFIX, std::process::id()), networkd: None };
    lab::run("ip", &["netns", "add", &netns.name])?;
    for port in ["eth1", "eth2"] {
        lab::run(
            "ip",
            &["-n", &netns.name, "link", "add", port, "type", "veth", "peer", "name", &format!("{port}-peer")],
        )?;
        lab::run("ip", &["-n", &netns.name, "link", "set", &format!("{port}-peer"), "up"])?;
    }
    let log = std::env::temp_dir().join(format!("{}.log", netns.name));
    netns.networkd = Some(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns.name,
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                NETWORKD,
                "sh",
            ])
            .arg(&dist)
            .stdout(std::fs::File::create(&log)?)
            .stderr(std::fs::File::create(&log)?.try_clone()?)
            .spawn()?,
    );
    let link = |name: &str| -> Result<Value> {
        let out = lab::run("ip", &["-n", &netns.name, "-d", "-j", "link", "show", name])?;
        Ok(serde_json::from_str::<Value>(&out)?[0].clone())
    };
    wait_until("br0 made, eth1 and eth2 in it", Duration::from_secs(10), || {
        let enslaved = |port: &str| -> Result<bool> { Ok(link(port)?["master"] == "br0") };
        Ok(link("br0").is_ok() && enslaved("eth1")? && enslaved("eth2")?)
    })?;
    let br0 = link("br0")?;
    assert_eq!(br0["linkinfo"]["info_data"]["mcast_snooping"], 0, "{br0}");
    let said = std::fs::read_to_string(&log)?;
    let _ = std::fs::remove_file(&log);
    for complaint in ["Unknown", "Failed to parse", "ignoring"] {
        assert!(!said.contains(complaint), "networkd complained about the shipped files:\n{said}");
    }

    let mut snoop = std::process::Command::new(snoop_bin())
        .args(["--netns", &netns.name, "run", "--bridge", "br0"])
        .args(FAST_TIMERS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let answered = wait_until("snoop answering on networkd's bridge", Duration::from_secs(20), || {
        let out = std::process::Command::new(snoop_bin())
            .args(["--netns", &netns.name, "show", "ports", "--bridge", "br0", "--json"])
            .output()?;
        let ports: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        Ok(ports.as_array().is_some_and(|p| p.len() == 2))
    });
    // SAFETY: a signal to the snoop this test started.
    unsafe { libc::kill(snoop.id() as i32, libc::SIGTERM) };
    let status = snoop.wait()?;
    answered?;
    assert!(status.success(), "snoop exited with {status}");
    assert_eq!(link("br0")?["linkinfo"]["info_data"]["mcast_snooping"], 0, "not left as found");
    Ok(())
}
