//! `snoop-lab demo` (what `cargo xtask demo` runs): a lab in network
//! namespaces showing a Linux bridge flooding a group to everyone, then snoop
//! pruning it to members. `snoop-lab cleanup` removes labs of killed runs.
//!
//! The `snoop` under test is $SNOOP_BIN, else the `snoop` beside this binary.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use snoop::{
    control::{self, Request},
    show::{self, View},
};
use snoop_tests::lab::{self, in_netns, Lab, LabOptions, BRIDGE};

const GROUP_A: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
/// Same multicast MAC as GROUP_A (01:00:5e:01:01:01): snoop keeps them apart.
const GROUP_B: Ipv4Addr = Ipv4Addr::new(239, 129, 1, 1);
const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const PACKETS: u64 = 200;

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo(&snoop_bin()?),
        Some("cleanup") => {
            let removed = lab::remove_stale_labs()?;
            println!("removed {removed} namespaces of interrupted labs");
            Ok(())
        }
        _ => bail!("usage: snoop-lab demo|cleanup"),
    }
}

fn snoop_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SNOOP_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe().context("locating snoop-lab")?;
    Ok(me.with_file_name("snoop"))
}

fn demo(snoop: &Path) -> Result<()> {
    let stale = lab::remove_stale_labs()?;
    if stale > 0 {
        println!("removed {stale} namespaces left by an earlier, interrupted lab");
    }
    println!("Building a lab: bridge {BRIDGE} with 5 ports; h0 sends, h1..h4 receive.");
    let mut lab = Lab::new("demo", 5, &LabOptions::default())?;
    let _joins = [lab.join("h1", GROUP_A)?, lab.join("h2", GROUP_A)?, lab.join("h3", GROUP_B)?];
    println!("  h1, h2 joined {GROUP_A}; h3 joined {GROUP_B}; h4 joined nothing.\n");

    println!("1) Plain Linux bridge (multicast_snooping off): every port gets every group.");
    traffic_table(&lab)?;

    println!("\n2) snoop running on {BRIDGE} (querier on, short timers for the demo):");
    lab.start_snoop(snoop, &["--query-interval", "5s", "--query-response-interval", "1s"])?;
    // Hosts answer snoop's startup query within the response interval.
    std::thread::sleep(Duration::from_millis(1500));
    traffic_table(&lab)?;

    let snapshot = in_netns(&lab.bridge_netns, || control::fetch(BRIDGE, Request::Snapshot))??;
    println!("\n`snoop show groups`:\n{}", show::render(&snapshot, View::Groups));
    println!("`snoop show querier`:\n{}", show::render(&snapshot, View::Querier));
    lab.stop_snoop(false).context("stopping snoop")?;
    drop(lab);
    println!("Lab removed: namespaces, bridge, programs and pins are gone.");
    Ok(())
}

/// Sends each group from h0 and prints what each receiver's interface got.
fn traffic_table(lab: &Lab) -> Result<()> {
    let receivers = ["h1", "h2", "h3", "h4"];
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    for group in [GROUP_A, GROUP_B, MDNS] {
        lab.send("h0", group, PACKETS, Duration::from_micros(500))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    println!("   {:<6}{:>14}{:>14}{:>14}", "host", GROUP_A, GROUP_B, MDNS);
    for (host, sniffer) in receivers.iter().zip(&sniffers) {
        println!(
            "   {:<6}{:>14}{:>14}{:>14}",
            host,
            sniffer.count(GROUP_A),
            sniffer.count(GROUP_B),
            sniffer.count(MDNS)
        );
    }
    Ok(())
}
