//! Faults, storms and hostile hosts: malformed frames, spoofed queriers, a
//! report storm, a dead controller, a deleted bridge. Membership of the
//! legitimate hosts must survive all of them.
use std::{
    net::Ipv4Addr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Result;
use snoop::proto::{igmp, internet_checksum};
use snoop_common::{MAP_GROUP_PORTS, MAP_MEMBERS};
use snoop_tests::{
    attached_programs,
    lab::{self, v3_records_packet, v3_report_packet, Lab},
    map_members, pin_hash_map, rss_kb, shown_members, snoop_bin, stat, time_scale, wait_for_members, wait_until,
    LabOptions,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
use snoop_tests::FAST_TIMERS as FAST;
const JOIN_TIMEOUT: Duration = Duration::from_secs(8);

fn received(lab: &Lab, receivers: &[&str], n: u64) -> Result<Vec<u64>> {
    snoop_tests::deliver(lab, "h0", G, receivers, n)
}

/// An IPv4 packet from `src` with a correct header checksum; `total_len`
/// may lie about the length.
fn ip(src: Ipv4Addr, dst: [u8; 4], ttl: u8, payload: &[u8], total_len: Option<u16>) -> Vec<u8> {
    let total = total_len.unwrap_or(20 + payload.len() as u16);
    let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, ttl, 2, 0, 0];
    p[2..4].copy_from_slice(&total.to_be_bytes());
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst);
    let sum = internet_checksum(&p);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn with_checksum(mut m: Vec<u8>) -> Vec<u8> {
    let sum = internet_checksum(&m);
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    m
}

#[test]
fn malformed_battery_is_counted_and_changes_no_membership() -> Result<()> {
    let mut lab = Lab::new("battery", 4, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let before = map_members(&lab)?;
    let src = lab.host("h3").ip;
    let v2 = |group: [u8; 4]| with_checksum(vec![0x16, 0, 0, 0, group[0], group[1], group[2], group[3]]);
    // A v3 report message to 224.0.0.22, checksummed.
    let v3 = |message: Vec<u8>| ip(src, [224, 0, 0, 22], 1, &with_checksum(message), None);

    let mut bad_sum = v2([239, 5, 5, 5]);
    bad_sum[2] ^= 0xff;
    // (frame, the controller counter it must land in)
    let battery: Vec<(Vec<u8>, &str)> = vec![
        // IP header cut short: IHL says 60 bytes, 24 arrive.
        (
            vec![0x4f, 0, 0, 60, 0, 0, 0, 0, 1, 2, 0, 0, 10, 99, 0, 13, 239, 5, 5, 5, 0, 0, 0, 0],
            "dropped_bad_ip_header",
        ),
        // IP total length beyond the frame.
        (ip(src, [239, 5, 5, 5], 1, &v2([239, 5, 5, 5]), Some(200)), "dropped_truncated"),
        // IGMP shorter than any message.
        (ip(src, [239, 5, 5, 5], 1, &[0x16, 0, 0xe9], None), "dropped_short_message"),
        (ip(src, [239, 5, 5, 5], 1, &bad_sum, None), "dropped_bad_checksum"),
        // v3: five records announced, one present.
        (v3(vec![0x22, 0, 0, 0, 0, 0, 0, 5, 2, 0, 0, 0, 239, 6, 6, 6]), "dropped_record_overrun"),
        // v3: a source count running past the packet.
        (v3(vec![0x22, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 40, 239, 7, 7, 7]), "dropped_record_overrun"),
        // v3: record type 9.
        (v3(vec![0x22, 0, 0, 0, 0, 0, 0, 1, 9, 0, 0, 0, 239, 7, 7, 7]), "dropped_unknown_record_type"),
        (ip(src, [239, 5, 5, 5], 1, &with_checksum(vec![0x99, 0, 0, 0, 239, 5, 5, 5]), None), "dropped_unknown_type"),
        // Routed (TTL 64): not from this link.
        (ip(src, [239, 5, 5, 5], 64, &v2([239, 5, 5, 5]), None), "dropped_bad_ttl"),
        // Well-formed reports for groups that are not snooped.
        (ip(src, [10, 1, 1, 1], 1, &v2([10, 1, 1, 1]), None), "ignored_not_snoopable_groups"),
        (ip(src, [224, 0, 0, 251], 1, &v2([224, 0, 0, 251]), None), "ignored_not_snoopable_groups"),
    ];
    let sender = lab.raw_sender("h3")?;
    for (frame, _) in &battery {
        sender.send(frame)?;
    }
    let mut expected = std::collections::BTreeMap::<&str, u64>::new();
    for (_, counter) in &battery {
        *expected.entry(counter).or_default() += 1;
    }
    wait_until("every frame counted", Duration::from_secs(3), || {
        for (counter, n) in &expected {
            if stat(&lab, "controller", counter)? != *n {
                return Ok(false);
            }
        }
        Ok(true)
    })?;
    // Everything captured is processed (a host's own report may be in flight).
    wait_until("captured = processed", Duration::from_secs(2), || {
        let stats = lab.snoop_show(&snoop_bin(), "stats")?;
        Ok(stats["controller"]["events"] == stats["datapath"]["control_frames_captured"])
    })?;
    assert_eq!(map_members(&lab)?, before, "malformed frames changed membership");
    for group in [[239, 5, 5, 5], [239, 6, 6, 6], [239, 7, 7, 7], [10, 1, 1, 1]] {
        assert!(shown_members(&lab, Ipv4Addr::from(group))?.is_empty());
    }

    // A huge but valid source list (350 sources, 1.4 kB) is a join.
    let mut big = vec![0x22, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0x01, 0x5e, 239, 8, 8, 8];
    for i in 0..350u16 {
        big.extend_from_slice(&[10, 2, (i >> 8) as u8, i as u8]);
    }
    sender.send(&ip(src, [224, 0, 0, 22], 1, &with_checksum(big), None))?;
    wait_for_members(&lab, Ipv4Addr::new(239, 8, 8, 8), &["p3"], Duration::from_secs(3))?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn untrusted_host_cannot_hijack_the_querier_or_become_a_router() -> Result<()> {
    let mut lab = Lab::new("untrusted", 4, &LabOptions::default())?;
    let own = Ipv4Addr::new(10, 99, 0, 200);
    let mut args = FAST.to_vec();
    // Only p1 may be a router or the querier: h3 on p3 may not.
    args.extend(["--query-source", "10.99.0.200", "--trusted-port", "p1"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let sniffer = lab.sniff("h2")?;

    // h3 spoofs a querier with a lower address, and a PIM hello.
    let spoof = lab::igmp_query_packet(Ipv4Addr::new(10, 99, 0, 1), None);
    let mut pim = vec![0x20, 0, 0, 0, 0, 1, 0, 2, 0, 105];
    let sum = internet_checksum(&pim);
    pim[2..4].copy_from_slice(&sum.to_be_bytes());
    let mut hello = ip(lab.host("h3").ip, [224, 0, 0, 13], 1, &pim, None);
    hello[9] = igmp::IPPROTO_PIM;
    hello[10] = 0;
    hello[11] = 0;
    let sum = internet_checksum(&hello[..20]);
    hello[10..12].copy_from_slice(&sum.to_be_bytes());
    for _ in 0..6 {
        lab.send_raw_ip("h3", &spoof)?;
        lab.send_raw_ip("h3", &hello)?;
        thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(lab.snoop_show(&snoop_bin(), "querier")?["role"], "self");
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p3 = ports.as_array().unwrap().iter().find(|p| p["name"] == "p3").unwrap().clone();
    assert_eq!(p3["router"], false);
    assert!(stat(&lab, "controller", "ignored_untrusted_router_messages")? >= 12);
    assert!(sniffer.queries_from(own) >= 1, "snoop stopped querying");
    // Still pruned: h3 does not attract the group.
    let sniff_h3 = lab.sniff("h3")?;
    assert_eq!(received(&lab, &["h1"], 50)?, [50]);
    assert_eq!(sniff_h3.count(G), 0);
    Ok(())
}

#[test]
fn report_storm_keeps_members_and_the_controller_responsive() -> Result<()> {
    // SNOOP_STORM_SECS=30 for the full-length run; CI runs a short one.
    let storm_secs: u64 = std::env::var("SNOOP_STORM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let mut lab = Lab::new("storm", 5, &LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.extend(["--max-groups-per-port", "256", "--control-rate-limit", "1000"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;

    let stop = Arc::new(AtomicBool::new(false));
    let stormers: Vec<_> = ["h2", "h3", "h4"]
        .iter()
        .map(|h| {
            let sender = lab.raw_sender(h)?;
            let src = lab.host(h).ip;
            let stop = stop.clone();
            Ok(thread::spawn(move || -> u64 {
                let mut sent = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A new group every report: 239.200.x.y.
                    let group = Ipv4Addr::new(239, 200, (sent >> 8) as u8, sent as u8);
                    if sender.send(&v3_report_packet(src, &[group])).is_ok() {
                        sent += 1;
                    }
                }
                sent
            }))
        })
        .collect::<Result<_>>()?;

    let start = Instant::now();
    let h1 = lab.sniff("h1")?;
    let data = lab.sender("h0")?;
    let mut slowest_show = Duration::ZERO;
    let mut data_sent = 0;
    while start.elapsed() < Duration::from_secs(storm_secs) {
        data.send(G, 100, Duration::from_micros(500))?;
        data_sent += 100;
        let asked = Instant::now();
        lab.snoop_show(&snoop_bin(), "querier")?;
        slowest_show = slowest_show.max(asked.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    let reports: u64 = stormers.into_iter().map(|t| t.join().expect("storm thread")).sum();
    thread::sleep(Duration::from_millis(300));
    let rate = reports as f64 / start.elapsed().as_secs_f64();
    println!("storm: {reports} reports in {:?} ({rate:.0}/s); slowest `snoop show`: {slowest_show:?}", start.elapsed());

    assert_eq!(h1.count(G), data_sent, "the legitimate member lost traffic during the storm");
    assert!(slowest_show < Duration::from_secs(1) * time_scale(), "snoop show took {slowest_show:?}");
    assert!(stat(&lab, "datapath", "control_frames_rate_limited")? > 0, "the rate limit never engaged");
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    for port in ports.as_array().unwrap() {
        assert!(port["groups"].as_u64().unwrap() <= 256, "{} exceeds the group limit", port["name"]);
    }
    let rss = rss_kb(lab.snoop_pid().expect("running"))?;
    println!("controller RSS after the storm: {rss} kB");
    assert!(rss < 64 * 1024, "controller RSS {rss} kB");
    assert!(map_members(&lab)?.contains(&(G, "p1".into())));
    Ok(())
}

#[test]
fn a_host_flooding_over_limit_joins_and_leaves_starves_nothing() -> Result<()> {
    // h2 sends, as fast as the data path lets it through (its control rate
    // limit), IGMPv3 reports of 180 records: joins of groups over its limit
    // of 100, and leaves (TO_IN {}) of the 100 it holds. Meanwhile a join
    // on p3 is forwarded within 2 s, `snoop show` answers within 1 s, the
    // watchdog is fed, the failsafe never fires, and snoop asks about each
    // group at most once per last-member interval.
    use std::os::unix::net::UnixDatagram;
    let storm_secs: u64 = std::env::var("SNOOP_STORM_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let mut lab = Lab::new("starve", 4, &LabOptions::default())?;
    let path = lab.write_file("notify", "")?;
    std::fs::remove_file(&path)?;
    let systemd = UnixDatagram::bind(&path)?;
    systemd.set_read_timeout(Some(Duration::from_millis(100)))?;
    std::env::set_var("NOTIFY_SOCKET", &path);
    std::env::set_var("WATCHDOG_USEC", "1000000");
    let args = [FAST, &["--max-groups-per-port", "100", "--control-rate-limit", "200"]].concat();
    let started = lab.start_snoop(&snoop_bin(), &args);
    std::env::remove_var("NOTIFY_SOCKET");
    std::env::remove_var("WATCHDOG_USEC");
    started?;
    let stop = Arc::new(AtomicBool::new(false));
    let pings = {
        let stop = stop.clone();
        thread::spawn(move || -> Duration {
            let (mut message, mut last, mut longest) = ([0u8; 512], Instant::now(), Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                if matches!(systemd.recv(&mut message), Ok(n) if message[..n].starts_with(b"WATCHDOG=1")) {
                    longest = longest.max(last.elapsed());
                    last = Instant::now();
                }
            }
            longest.max(last.elapsed())
        })
    };
    let held: Vec<Ipv4Addr> = (0..100u8).map(|i| Ipv4Addr::new(239, 201, 0, i)).collect();
    let stormer = {
        let (sender, source, stop) = (lab.raw_sender("h2")?, lab.host("h2").ip, stop.clone());
        sender.send(&v3_records_packet(source, 2, &held))?;
        let over: Vec<Ipv4Addr> = (0..180u8).map(|i| Ipv4Addr::new(239, 202, 0, i)).collect();
        let frames = [
            v3_records_packet(source, 2, &over),
            v3_records_packet(source, 3, &held[..90]),
            v3_records_packet(source, 2, &held),
        ];
        thread::spawn(move || -> u64 {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if sender.send(&frames[(sent % 3) as usize]).is_ok() {
                    sent += 1;
                }
            }
            sent
        })
    };
    let queries_before = stat(&lab, "controller", "group_queries_sent")?;
    let start = Instant::now();
    let mut slowest_show = Duration::ZERO;
    let mut joined = None;
    while start.elapsed() < Duration::from_secs(storm_secs) {
        if joined.is_none() && start.elapsed() > Duration::from_secs(storm_secs / 2) {
            let membership = lab.join("h3", G)?;
            let asked = Instant::now();
            wait_until("h3's join under the storm", Duration::from_secs(2) * time_scale(), || {
                Ok(received(&lab, &["h3"], 5)? == [5])
            })?;
            println!("join to first packet under the storm: {:?}", asked.elapsed());
            joined = Some(membership);
        }
        let asked = Instant::now();
        lab.snoop_show(&snoop_bin(), "querier")?;
        slowest_show = slowest_show.max(asked.elapsed());
        thread::sleep(Duration::from_millis(100));
    }
    let elapsed = start.elapsed();
    stop.store(true, Ordering::Relaxed);
    let frames = stormer.join().expect("the storm thread");
    let longest_silence = pings.join().expect("the watchdog thread");
    let queries = stat(&lab, "controller", "group_queries_sent")? - queries_before;
    println!("{frames} frames in {elapsed:?}; {queries} group queries; slowest show {slowest_show:?}; watchdog gap {longest_silence:?}");
    assert!(slowest_show < Duration::from_secs(1) * time_scale(), "snoop show took {slowest_show:?}");
    assert!(
        longest_silence < Duration::from_millis(1500) * time_scale(),
        "the watchdog went {longest_silence:?} unfed"
    );
    assert_eq!(stat(&lab, "datapath", "failsafe_flooded")?, 0, "the failsafe fired");
    // One query per held group per last-member interval (200 ms), at most.
    let bound = 100 * (elapsed.as_millis() as u64 / 200 + 2);
    assert!(queries <= bound, "{queries} group-specific queries in {elapsed:?} (at most {bound})");
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p2 = ports.as_array().into_iter().flatten().find(|p| p["name"] == "p2").expect("p2");
    assert!(p2["groups"].as_u64().unwrap_or_default() <= 100, "p2 over its limit: {p2}");
    assert!(shown_members(&lab, G)?.contains("p3"));
    Ok(())
}

#[test]
fn data_path_keeps_last_state_then_floods_when_the_controller_is_gone() -> Result<()> {
    let mut lab = Lab::new("failsafe", 3, &LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.extend(["--keep-state", "--failsafe-after", "3s"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;

    // kill -9: no cleanup at all. Within the failsafe time the last state keeps pruning.
    lab.stop_snoop(true)?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    thread::sleep(Duration::from_secs(3));
    // Past it: flooding, as a plain bridge would.
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 50]);
    assert!(map_members(&lab)?.contains(&(G, "p1".into())), "the pinned state survived");

    // A new controller adopts the state and pruning resumes.
    lab.start_snoop(&snoop_bin(), &args)?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn with_the_controller_gone_a_port_set_down_still_gets_nothing() -> Result<()> {
    let mut lab = Lab::new("deadport", 4, &LabOptions::default())?;
    let _m1 = lab.join("h1", G)?;
    let _m2 = lab.join("h2", G)?;
    // p2 has a qdisc, so p1 is the port whose copies go straight to its peer.
    lab::run("tc", &["-n", &lab.bridge_netns, "qdisc", "add", "dev", "p2", "root", "pfifo"])?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--failsafe-after", "60s"]].concat())?;
    wait_for_members(&lab, G, &["p1", "p2"], JOIN_TIMEOUT)?;
    assert_eq!(received(&lab, &["h1", "h2", "h3"], 50)?, [50, 50, 0]);

    lab.stop_snoop(true)?; // kill -9
                           // Nobody sees the port go down; redirects end 3 s (three heartbeats)
                           // after the last heartbeat, and the bridge sends nothing to a down port.
    lab.ip_br(&["link", "set", "p1", "down"])?;
    thread::sleep(Duration::from_millis(3500));
    assert_eq!(received(&lab, &["h1", "h2", "h3"], 50)?, [0, 50, 0]);
    Ok(())
}

#[test]
fn after_a_keep_state_stop_the_bridge_decides_again_once_the_lists_are_stale() -> Result<()> {
    // snoop stops with --keep-state: its programs and lists stay, its
    // heartbeat stops. The operator then isolates h0's and h1's ports (the
    // bridge forwards nothing between two isolated ports). Once the copy
    // lists are stale (three missed heartbeats, 3 s) the bridge path decides, so h1
    // gets none of h0's next stream, and h2 (no member) none either.
    let mut lab = Lab::new("stalelists", 3, &LabOptions::default())?;
    let _m1 = lab.join("h1", G)?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--keep-state", "--failsafe-after", "60s"]].concat())?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    assert!(lab.stop_snoop(false)?.success());
    for port in ["p0", "p1"] {
        lab::run("bridge", &["-n", &lab.bridge_netns, "link", "set", "dev", port, "isolated", "on"])?;
    }
    thread::sleep(Duration::from_millis(3500));
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [0, 0], "redirect outlived the controller");
    // The bridge path still prunes and still forwards where the bridge would.
    lab::run("bridge", &["-n", &lab.bridge_netns, "link", "set", "dev", "p1", "isolated", "off"])?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn a_pin_directory_reached_through_a_symlink_or_not_roots_is_refused() -> Result<()> {
    let lab = Lab::new("pinsafe", 2, &LabOptions::default())?;
    // The lab's pin directory is /sys/fs/bpf/snoop/<its namespace>/br0;
    // its parent is the lab's own, so swapping it disturbs nothing else.
    let pins = lab.pin_dir();
    let parent = pins.parent().expect("a parent").to_owned();
    std::fs::create_dir_all(parent.parent().expect("/sys/fs/bpf/snoop"))?;
    let elsewhere = std::path::PathBuf::from(format!("/sys/fs/bpf/{}-elsewhere", lab.id));
    std::fs::create_dir_all(&elsewhere)?;
    std::os::unix::fs::symlink(&elsewhere, &parent)?;
    // Whatever happens, neither is left behind.
    struct Removed<'a>(&'a Path, &'a Path);
    impl Drop for Removed<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(self.0).or_else(|_| std::fs::remove_dir(self.0));
            let _ = std::fs::remove_dir_all(self.1);
        }
    }
    let _removed = Removed(&parent, &elsewhere);
    let start = || {
        std::process::Command::new("timeout")
            .arg("10")
            .arg(snoop_bin())
            .args(["--netns", &lab.bridge_netns, "run", "--bridge", "br0"])
            .output()
    };
    let out = start()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("refusing the pin directory") && stderr.contains("symbolic link"), "{stderr}");
    assert_eq!(std::fs::read_dir(&elsewhere)?.count(), 0, "snoop wrote through the link");
    // Nor is a cleanup taken through it.
    let out = std::process::Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "cleanup", "--bridge", "br0"])
        .output()?;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("symbolic link"));
    std::fs::remove_file(&parent)?;
    std::fs::remove_dir(&elsewhere)?;

    // A directory someone else owns.
    std::fs::create_dir_all(&parent)?;
    std::os::unix::fs::chown(&parent, Some(65534), Some(65534))?;
    let out = start()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("owned by uid 65534, not root"), "{stderr}");
    assert!(!pins.exists(), "snoop made its pins in it");
    std::fs::remove_dir(&parent)?;
    Ok(())
}

#[test]
fn three_hundred_ports_are_attached_under_a_low_open_file_limit() -> Result<()> {
    // Each port holds two link descriptors (TCX): with the soft limit at
    // 256, as a unit could leave it, ports past about a hundred would stay
    // unattached unless snoop raises it to the hard limit.
    let mut lab = Lab::new("manyports", 3, &LabOptions::default())?;
    let bare = lab.add_bare_ports(300)?;
    lab.start_snoop_with_open_files(&snoop_bin(), FAST, 256)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let forwarding = lab.snoop_show(&snoop_bin(), "forwarding")?;
    assert_eq!(forwarding["unattached_ports"], serde_json::json!({}), "{forwarding}");
    assert_eq!(stat(&lab, "controller", "attach_failures")?, 0);
    for port in [&bare[0], &bare[150], &bare[299]] {
        assert_eq!(attached_programs(&lab, port)?, 2, "{port} has snoop's programs");
    }
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn pins_of_another_map_layout_are_made_anew_or_refused_clearly() -> Result<()> {
    let mut lab = Lab::new("layout", 3, &LabOptions::default())?;
    let pins = lab.pin_dir();
    std::fs::create_dir_all(&pins)?;
    // A copy list of another layout: the controller rewrites those, so it is made anew.
    pin_hash_map(&pins.join(MAP_GROUP_PORTS), 20, 144, 1024)?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    assert!(lab.stop_snoop(false)?.success());

    // Memberships of another layout are state: refused, with the way out, and kept.
    std::fs::create_dir_all(&pins)?;
    pin_hash_map(&pins.join(MAP_MEMBERS), 24, 8, 1024)?;
    let out = std::process::Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "run", "--bridge", "br0"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another map layout") && stderr.contains("snoop cleanup"), "stderr: {stderr}");
    assert!(pins.join(MAP_MEMBERS).exists());
    std::fs::remove_dir_all(&pins)?;
    Ok(())
}

#[test]
fn deleted_bridge_is_a_clear_error_and_cleans_up() -> Result<()> {
    let mut lab = Lab::new("bridgegone", 2, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    lab.ip_br(&["link", "del", "br0"])?;
    let status = lab.wait_snoop_exit(Duration::from_secs(5))?;
    assert_eq!(status.code(), Some(1));
    let log = std::fs::read_to_string(lab.snoop_log())?;
    assert!(log.contains("snoop: bridge br0 was deleted"), "log: {log}");
    assert!(!lab.pin_dir().exists(), "pins left behind");
    Ok(())
}

#[test]
fn second_snoop_on_the_same_bridge_is_refused_and_changes_nothing() -> Result<()> {
    let mut lab = Lab::new("second", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let out = std::process::Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "run", "--bridge", "br0"])
        .output()?;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("another snoop is already running on br0"), "stderr: {stderr}");
    // The first one still owns its state and prunes.
    assert!(lab.pin_dir().exists());
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0]);
    Ok(())
}

#[test]
fn a_port_that_left_while_snoop_was_down_is_let_go_at_the_next_start() -> Result<()> {
    let mut lab = Lab::new("leftwhiledown", 3, &LabOptions::default())?;
    let keep = [FAST, &["--keep-state"]].concat();
    lab.start_snoop(&snoop_bin(), &keep)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    lab.stop_snoop(true)?; // killed: everything stays attached
    assert_eq!(attached_programs(&lab, "p1")?, 2, "ingress and egress stay attached while snoop is down");
    lab.ip_br(&["link", "set", "p1", "nomaster"])?;
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert_eq!(attached_programs(&lab, "p1")?, 0, "programs left on an interface that is no longer a port");
    assert_eq!(attached_programs(&lab, "p2")?, 2);
    wait_for_members(&lab, G, &[], Duration::from_secs(2))?;
    assert!(lab.stop_snoop(false)?.success());
    Ok(())
}

/// `snoop show querier` in the lab's bridge namespace as `uid`/`gid` with
/// supplementary `groups`: its exit status and stderr.
fn show_as(lab: &Lab, uid: u32, gid: u32, groups: &str) -> Result<(bool, String)> {
    let snoop = snoop_bin();
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.bridge_netns, "setpriv"])
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg(if groups.is_empty() { "--clear-groups".to_owned() } else { format!("--groups={groups}") })
        .arg(&snoop)
        .args(["show", "querier", "--bridge", "br0", "--json"])
        .output()?;
    Ok((out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()))
}

#[test]
fn the_control_socket_answers_root_and_the_control_group_only() -> Result<()> {
    const NOBODY: u32 = 65534;
    let adm = 4; // Debian's adm group
    let mut lab = Lab::new("ctlcreds", 2, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--control-group", "adm"]].concat())?;
    assert_eq!(lab.snoop_show(&snoop_bin(), "querier")?["role"], "self", "root is served");
    let (served, stderr) = show_as(&lab, NOBODY, NOBODY, "")?;
    assert!(!served, "an unprivileged client was served");
    assert!(stderr.contains("refused") && stderr.contains("--control-group"), "stderr: {stderr}");
    let (served, stderr) = show_as(&lab, NOBODY, NOBODY, &adm.to_string())?;
    assert!(served, "a member of the control group was refused: {stderr}");
    let (served, _) = show_as(&lab, NOBODY, adm, "")?;
    assert!(served, "a client whose primary group is the control group was refused");
    lab.stop_snoop(false)?;

    // Without --control-group only root is served.
    lab.start_snoop(&snoop_bin(), FAST)?;
    let (served, _) = show_as(&lab, NOBODY, adm, &adm.to_string())?;
    assert!(!served);
    // An unknown group is a clear error at start.
    let out = std::process::Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "run", "--bridge", "br0", "--control-group", "no-such-group"])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("no-such-group"), "stderr: {stderr}");
    Ok(())
}

#[test]
fn clients_streaming_garbage_or_hogging_connections_cost_the_controller_nothing() -> Result<()> {
    use std::io::Write as _;
    let mut lab = Lab::new("ctlabuse", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let pid = lab.snoop_pid().expect("running");
    let before = rss_kb(pid)?;

    let abuse = lab::in_netns(&lab.bridge_netns, || -> Result<(usize, usize)> {
        let addr = std::os::unix::net::SocketAddr::from_pathname(snoop::control::socket_path("br0")?)?;
        // 300 clients each streaming 1 MiB of request without a newline.
        let garbage = vec![b'x'; 64 * 1024];
        let mut cut_off = 0;
        for _ in 0..300 {
            let mut stream = std::os::unix::net::UnixStream::connect_addr(&addr)?;
            stream.set_write_timeout(Some(Duration::from_secs(3)))?;
            if (0..16).any(|_| stream.write_all(&garbage).is_err()) {
                cut_off += 1;
            }
        }
        // And 200 that connect and say nothing, held open.
        let idle: Vec<_> =
            (0..200).map(|_| std::os::unix::net::UnixStream::connect_addr(&addr)).collect::<Result<_, _>>()?;
        thread::sleep(Duration::from_millis(500));
        Ok((cut_off, idle.len()))
    })??;
    println!("garbage clients cut off: {} of 300; idle clients: {}", abuse.0, abuse.1);
    assert_eq!(abuse.0, 300, "the controller read a request of megabytes");
    // Idle clients time out: snoop answers again within the request timeout.
    wait_until("snoop show answering", Duration::from_secs(5) * time_scale(), || {
        Ok(lab.snoop_show(&snoop_bin(), "querier").is_ok())
    })?;
    let after = rss_kb(pid)?;
    println!("controller RSS: {before} kB before, {after} kB after");
    assert!(after < before + 4 * 1024, "RSS grew from {before} kB to {after} kB");
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0], "snooping went on");
    Ok(())
}

/// `snoop --netns ... ARGS` as root: whether it succeeded, its output
/// (stdout and stderr) and its peak RSS in kB.
fn snoop_client(lab: &Lab, args: &[&str]) -> Result<(bool, String, i64)> {
    // Through snoop-lab, which says the client's own peak RSS (this test
    // process's would count in one it spawned itself).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_snoop-lab"))
        .arg("peak-rss")
        .arg(snoop_bin())
        .args(["--netns", &lab.bridge_netns])
        .args(args)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let (stderr, peak) = stderr.trim_end().rsplit_once('\n').unwrap_or(("", stderr.trim_end()));
    let rss_kb = peak
        .strip_prefix("peak RSS ")
        .and_then(|rest| rest.strip_suffix(" kB")?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no peak RSS from snoop-lab: {peak}"))?;
    let output = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    Ok((out.status.success(), output, rss_kb))
}

/// Anyone can bind a name in the abstract namespace first, which is where
/// snoop's control socket used to be: now it is a file only root can make,
/// and clients talk to root only, read a bounded answer and print no
/// terminal escapes from it.
#[test]
fn the_control_socket_cannot_be_squatted_nor_impersonated() -> Result<()> {
    const NOBODY: &str = "65534";
    let impostor = env!("CARGO_BIN_EXE_snoop-lab");
    let mut lab = Lab::new("ctlsquat", 3, &LabOptions::default())?;
    let netns = lab.bridge_netns.clone();
    // An unprivileged process took the old name, with a 100 MB lie to tell.
    let squat = ["--reuid=65534", "--regid=65534", "--clear-groups", impostor, "impostor", "@snoop/br0", "100000000"];
    lab.spawn_in(&netns, "setpriv", &squat)?;
    wait_until("the squatter bound", Duration::from_secs(5), || {
        Ok(lab::run("ip", &["netns", "exec", &netns, "cat", "/proc/net/unix"])?.contains("@snoop/br0"))
    })?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    assert_eq!(received(&lab, &["h1", "h2"], 50)?, [50, 0], "snoop serves beside the squatter");
    let (ok, output, _) = snoop_client(&lab, &["reload", "--bridge", "br0"])?;
    assert!(!output.contains("fooled"), "root's reload talked to the squatter: {output}");
    assert!(output.contains("started from a command line") || ok, "snoop did not answer the reload: {output}");
    let path = lab::in_netns(&netns, || snoop::control::socket_path("br0"))??;
    let mode = lab::run("stat", &["-c", "%a %U %G", path.to_str().unwrap()])?;
    assert_eq!(mode.trim(), "600 root root", "{}", path.display());
    let dir = lab::run("stat", &["-c", "%a %U", path.parent().unwrap().to_str().unwrap()])?;
    assert_eq!(dir.trim(), "755 root");
    assert!(lab.stop_snoop(false)?.success());
    assert!(!path.exists(), "the socket outlived snoop");

    // A server at the real path that is not root is not talked to (bound
    // by root, listening as nobody: SO_PEERCRED names the listener).
    let path_arg = path.to_str().unwrap().to_owned();
    std::fs::create_dir_all(path.parent().unwrap())?;
    lab.spawn_in(&netns, impostor, &["impostor", &path_arg, "100000000", NOBODY])?;
    wait_until("the impostor listening", Duration::from_secs(5), || Ok(path.exists()))?;
    thread::sleep(Duration::from_millis(200));
    let (ok, output, _) = snoop_client(&lab, &["show", "groups", "--bridge", "br0"])?;
    assert!(!ok && output.contains("not root"), "a non-root server was believed: {output}");
    std::fs::remove_file(&path)?;
    // Root's own hostile server: a 100 MB answer with terminal escapes
    // neither grows the client nor reaches its terminal.
    lab.spawn_in(&netns, impostor, &["impostor", &path_arg, "100000000"])?;
    wait_until("the root impostor listening", Duration::from_secs(5), || Ok(path.exists()))?;
    thread::sleep(Duration::from_millis(200));
    for args in
        [&["reload", "--bridge", "br0"][..], &["show", "groups", "--bridge", "br0"], &["watch", "--bridge", "br0"]]
    {
        let (ok, output, rss_kb) = snoop_client(&lab, args)?;
        println!("{args:?}: peak RSS {rss_kb} kB: {}", output.lines().next().unwrap_or_default());
        assert!(!ok, "{args:?} took the impostor's answer: {output}");
        assert!(!output.contains('\x1b'), "{args:?} printed a terminal escape");
        assert!(rss_kb < 64 * 1024, "{args:?} grew to {rss_kb} kB reading a 100 MB answer");
    }
    std::fs::remove_file(&path)?;
    Ok(())
}

#[test]
fn a_full_membership_map_never_blackholes_a_member() -> Result<()> {
    let mut lab = Lab::new("mapfull", 7, &LabOptions::default())?;
    // Bridge forwarding: the egress programs decide from the membership map.
    lab.start_snoop(&snoop_bin(), &[FAST, &["--forwarding", "bridge", "--max-memberships", "3"]].concat())?;
    let members: Vec<_> = ["h1", "h2", "h3", "h4", "h5"].iter().map(|h| lab.join(h, G)).collect::<Result<_>>()?;
    wait_until("five members known", JOIN_TIMEOUT, || Ok(shown_members(&lab, G)?.len() == 5))?;
    assert_eq!(map_members(&lab)?.len(), 3, "the map holds three");
    let receivers = ["h1", "h2", "h3", "h4", "h5", "h6"];
    assert_eq!(received(&lab, &receivers, 50)?, [50, 50, 50, 50, 50, 0], "every member gets the group");
    assert!(stat(&lab, "controller", "map_full")? >= 2);
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let unpruned: Vec<&str> =
        ports.as_array().unwrap().iter().filter(|p| p["unpruned"] == true).filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(unpruned.len(), 2, "the two ports whose memberships did not fit are shown: {unpruned:?}");

    // Two members leave: the writes are retried and fit; pruning is exact again.
    drop(members);
    let _m4 = lab.join("h4", G)?;
    let _m5 = lab.join("h5", G)?;
    wait_for_members(&lab, G, &["p4", "p5"], Duration::from_secs(8))?;
    wait_until("no port left unpruned", Duration::from_secs(3), || {
        let ports = lab.snoop_show(&snoop_bin(), "ports")?;
        Ok(ports.as_array().unwrap().iter().all(|p| p["unpruned"] == false))
    })?;
    assert_eq!(received(&lab, &receivers, 50)?, [0, 0, 0, 50, 50, 0]);
    Ok(())
}

#[test]
fn a_full_group_map_never_blackholes_a_group() -> Result<()> {
    const G2: Ipv4Addr = Ipv4Addr::new(239, 2, 2, 2);
    let mut lab = Lab::new("groupsfull", 4, &LabOptions::default())?;
    // Groups nobody registered go to router ports only: an unregistered group is dropped.
    let args = ["--max-groups", "1", "--unregistered", "routers"];
    lab.start_snoop(&snoop_bin(), &[FAST, &args[..]].concat())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;
    let _m2 = lab.join("h2", G2)?;
    wait_until("h2's membership known", JOIN_TIMEOUT, || Ok(shown_members(&lab, G2)?.len() == 1))?;
    let sniffers = ["h1", "h2", "h3"].map(|h| lab.sniff(h).unwrap());
    lab.send("h0", G2, 50, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    assert_eq!(sniffers[1].count(G2), 50, "the member of a group that did not fit got nothing");
    assert_eq!(sniffers[2].count(G2), 0);
    assert!(stat(&lab, "controller", "map_full")? >= 1);
    Ok(())
}

#[test]
fn ports_churning_while_joins_flow_never_end_snoop_or_cost_a_member_a_packet() -> Result<()> {
    let churn_secs: u64 = std::env::var("SNOOP_CHURN_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(8);
    let mut lab = Lab::new("churn", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), &[FAST, &["--port-scan-interval", "100ms"]].concat())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], JOIN_TIMEOUT)?;

    // Ports appear, are renamed and vanish, in batches, as containers do.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (netns, stop) = (lab.bridge_netns.clone(), stop.clone());
        thread::spawn(move || -> Result<u64> {
            let batch = std::env::temp_dir().join(format!("{netns}.batch"));
            let mut rounds = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut commands = String::new();
                for i in 0..20 {
                    commands.push_str(&format!(
                        "link add c{i} type veth peer name d{i}\nlink set c{i} master br0\nlink set c{i} up\n"
                    ));
                }
                for i in 0..20 {
                    if i % 2 == 0 {
                        commands.push_str(&format!("link set c{i} down\nlink set c{i} name r{i}\nlink del r{i}\n"));
                    } else {
                        commands.push_str(&format!("link del c{i}\n"));
                    }
                }
                std::fs::write(&batch, commands)?;
                // -force: go on past an error (a name not yet free, say).
                let _ = lab::run("ip", &["-n", &netns, "-force", "-batch", &batch.display().to_string()]);
                rounds += 1;
            }
            let _ = std::fs::remove_file(&batch);
            Ok(rounds)
        })
    };
    // Joins keep flowing on another port meanwhile.
    let joiner = {
        let stop = stop.clone();
        let lab_h2 = lab.host("h2").clone();
        thread::spawn(move || -> Result<()> {
            while !stop.load(Ordering::Relaxed) {
                let (netns, ip) = (lab_h2.netns.clone(), lab_h2.ip);
                let socket = lab::in_netns(&netns, move || -> Result<std::net::UdpSocket> {
                    let socket = std::net::UdpSocket::bind("0.0.0.0:0")?;
                    socket.join_multicast_v4(&Ipv4Addr::new(239, 9, 0, 1), &ip)?;
                    Ok(socket)
                })??;
                thread::sleep(Duration::from_millis(300));
                drop(socket);
            }
            Ok(())
        })
    };
    let h1 = lab.sniff("h1")?;
    let sender = lab.sender("h0")?;
    let mut sent = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(churn_secs) {
        sender.send(G, 100, Duration::from_millis(1))?;
        sent += 100;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = churn.join().expect("churn thread")?;
    joiner.join().expect("joiner thread")?;
    thread::sleep(Duration::from_millis(300));
    println!("{rounds} rounds of 20 ports added, renamed and deleted; {sent} packets sent");
    assert!(lab.snoop_pid().is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists()), "snoop ended");
    assert!(lab.snoop_show(&snoop_bin(), "querier").is_ok(), "snoop stopped answering");
    assert_eq!(h1.count(G), sent, "the member lost packets while ports churned");
    assert!(map_members(&lab)?.contains(&(G, "p1".into())));
    // Every port that is left has its programs, and only the lab's ports are left.
    for port in ["p0", "p1", "p2"] {
        assert_eq!(attached_programs(&lab, port)?, 2, "{port}");
    }
    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    assert_eq!(ports.as_array().map(Vec::len), Some(3), "ports snoop still lists: {ports}");
    Ok(())
}
