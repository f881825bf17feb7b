//! snoop as a service: its configuration file.
use std::{net::Ipv4Addr, time::Duration};

use anyhow::Result;
use snoop_tests::{
    deliver,
    lab::{self, Lab},
    snoop_bin, stat, wait_for_members, LabOptions, FAST_TIMERS,
};

const G1: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 1);
const G2: Ipv4Addr = Ipv4Addr::new(239, 16, 0, 2);
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
        ("\n\n[port.p0]\nrouter = \"yes\"\n", "line 4: `port.p0.router`: true or false"),
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
