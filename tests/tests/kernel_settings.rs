//! The bridge's own settings while snoop runs: the kernel's snooping must be
//! off (two snoopers prune each other's traffic) and come back as it was.
use std::{net::Ipv4Addr, thread, time::Duration};

use anyhow::{Context as _, Result};
use snoop_tests::{deliver, lab::Lab, snoop_bin, stat, time_scale, wait_for_members, wait_until, LabOptions};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
use snoop_tests::FAST_TIMERS as FAST;

/// The bridge's `mcast_snooping` as `ip -d link show` reports it.
fn kernel_snooping(lab: &Lab) -> Result<bool> {
    let link: serde_json::Value = serde_json::from_str(&lab.ip_br(&["-d", "-j", "link", "show", "br0"])?)?;
    let value = link[0]["linkinfo"]["info_data"]["mcast_snooping"].as_u64().context("no mcast_snooping in ip -d")?;
    Ok(value == 1)
}

#[test]
fn kernel_snooping_is_off_while_snoop_runs_and_restored_as_it_was() -> Result<()> {
    let mut lab = Lab::new("ksnoop", 2, &LabOptions { kernel_snooping: true, ..Default::default() })?;
    assert!(kernel_snooping(&lab)?, "the lab starts with the kernel's snooping on");
    lab.start_snoop(&snoop_bin(), FAST)?;
    assert!(!kernel_snooping(&lab)?, "kernel snooping still on while snoop runs");
    assert!(lab.stop_snoop(false)?.success());
    assert!(kernel_snooping(&lab)?, "not restored at a clean exit");

    // Across keep-state restarts the original setting is remembered.
    let keep = [FAST, &["--keep-state"]].concat();
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert!(!kernel_snooping(&lab)?);
    assert!(lab.stop_snoop(false)?.success());
    assert!(!kernel_snooping(&lab)?, "turned back on while the data path still prunes");
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert!(!kernel_snooping(&lab)?);
    lab.stop_snoop(true)?; // killed: nothing restored, the state stays pinned
    lab.start_snoop(&snoop_bin(), FAST)?;
    assert!(!kernel_snooping(&lab)?);
    assert!(lab.stop_snoop(false)?.success());
    assert!(kernel_snooping(&lab)?, "the original setting was lost across keep-state restarts");

    // `snoop cleanup` after a keep-state exit restores it too.
    lab.start_snoop(&snoop_bin(), &keep)?;
    assert!(lab.stop_snoop(false)?.success());
    let out = std::process::Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "cleanup", "--bridge", "br0"])
        .output()?;
    assert!(out.status.success(), "cleanup: {}", String::from_utf8_lossy(&out.stderr));
    assert!(kernel_snooping(&lab)?, "cleanup did not restore the kernel's snooping");
    Ok(())
}

#[test]
fn kernel_snooping_that_was_off_stays_off() -> Result<()> {
    let mut lab = Lab::new("ksnoopoff", 2, &LabOptions::default())?;
    assert!(!kernel_snooping(&lab)?);
    lab.start_snoop(&snoop_bin(), FAST)?;
    assert!(lab.stop_snoop(false)?.success());
    assert!(!kernel_snooping(&lab)?, "snoop turned on a setting that was off");
    Ok(())
}

#[test]
fn bridge_forwarding_reaches_a_static_router_port_when_kernel_snooping_was_on() -> Result<()> {
    // The kernel knows no router behind p3: were its snooping still on, it
    // would prune p3 (the reported failure: 0 of 300 packets).
    let mut lab = Lab::new("ksnooprouter", 4, &LabOptions { kernel_snooping: true, ..Default::default() })?;
    let args = ["--forwarding", "bridge", "--router-port", "p3", "--query-source", "10.99.0.1"];
    lab.start_snoop(&snoop_bin(), &[FAST, &args].concat())?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;
    // A snooping kernel floods until a querier has been heard for one
    // response interval (1 s); past it, it would prune p3.
    thread::sleep(Duration::from_millis(1500));
    let sniffers = ["h1", "h2", "h3"].map(|h| lab.sniff(h).unwrap());
    lab.send("h0", G, 300, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    assert_eq!(sniffers.map(|s| s.count(G)), [300, 0, 300]);
    Ok(())
}

/// A network manager enslaving a port, or an administrator, turns the
/// bridge's own snooping on while snoop runs: snoop turns it off again at
/// once, counts it, and still restores the value it found at start.
#[test]
fn kernel_snooping_turned_on_while_snoop_runs_is_turned_off_again() -> Result<()> {
    for (was_on, tag) in [(true, "kreon"), (false, "kreoff")] {
        let mut lab = Lab::new(tag, 3, &LabOptions { kernel_snooping: was_on, ..Default::default() })?;
        lab.start_snoop(&snoop_bin(), FAST)?;
        let _member = lab.join("h1", G)?;
        wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;
        for round in 1..=2 {
            lab.ip_br(&["link", "set", "br0", "type", "bridge", "mcast_snooping", "1"])?;
            wait_until("mcast_snooping 0 again", Duration::from_secs(time_scale().into()), || {
                Ok(!kernel_snooping(&lab)?)
            })?;
            assert_eq!(stat(&lab, "controller", "kernel_snooping_reenabled")?, round);
        }
        // Snooping went on meanwhile: the member got every packet, the other none.
        assert_eq!(deliver(&lab, "h0", G, &["h1", "h2"], 200)?, [200, 0]);
        let log = std::fs::read_to_string(lab.snoop_log())?;
        assert_eq!(log.matches("multicast snooping was turned on again").count(), 1, "told once: {log}");
        assert!(lab.stop_snoop(false)?.success());
        assert_eq!(kernel_snooping(&lab)?, was_on, "not the value found at start");
    }
    Ok(())
}
