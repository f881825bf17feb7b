//! The lab harness ([`lab`]: namespaces, hosts, senders, sniffers, nftables
//! sinks; [`operator`]: an operator's own tc filters on its ports), used by
//! the integration tests, the benchmark and the demo, and helpers the
//! integration tests share. None of it ships in `snoop`.
pub mod lab;
pub mod operator;

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{HashMap, MapData};
use lab::Lab;
use serde_json::Value;
use snoop_common::{MemberValue, PortGroupKey, MAP_MEMBERS};

pub use lab::LabOptions;

/// The snoop binary under test: $SNOOP_BIN, else target/debug/snoop
/// (`cargo xtask test` builds it first).
pub fn snoop_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("SNOOP_BIN") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/snoop");
    assert!(path.exists(), "{} missing: run the tests with `cargo xtask test`", path.display());
    path
}

/// Fast protocol timers for lab runs: a query every 2 s answered within 1 s
/// (memberships last 5 s), last-member queries 200 ms apart.
pub const FAST_TIMERS: &[&str] =
    &["--query-interval", "2s", "--query-response-interval", "1s", "--last-member-query-interval", "200ms"];

/// Sends `n` packets of `group` from `sender` and returns what each of
/// `receivers` got at its interface.
pub fn deliver(lab: &Lab, sender: &str, group: Ipv4Addr, receivers: &[&str], n: u64) -> Result<Vec<u64>> {
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    lab.send(sender, group, n, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    Ok(sniffers.iter().map(|s| s.count(group)).collect())
}

/// Sends `n` packets to `group` (IPv4 or IPv6) from each of `senders`
/// and returns what each of `receivers` got from each sender, in order.
pub fn deliver_from(lab: &Lab, senders: &[&str], group: IpAddr, receivers: &[&str], n: u64) -> Result<Vec<Vec<u64>>> {
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    let mut sources = Vec::new();
    for sender in senders {
        match group {
            IpAddr::V4(group) => {
                lab.send(sender, group, n, Duration::from_micros(200))?;
                sources.push(IpAddr::V4(lab.host(sender).ip));
            }
            IpAddr::V6(group) => {
                lab.send_v6(sender, group, n, Duration::from_micros(200))?;
                sources.push(IpAddr::V6(lab.host_ipv6(sender)));
            }
        }
    }
    thread::sleep(Duration::from_millis(300));
    Ok(sniffers.iter().map(|s| sources.iter().map(|source| s.count_from(*source, group)).collect()).collect())
}

/// How much slower than this machine the tests run: $SNOOP_TIME_SCALE (the
/// VM runner sets it: an emulated guest is several times slower), else 1.
/// Only deadlines that measure responsiveness scale; the protocol's timers do not.
pub fn time_scale() -> u32 {
    std::env::var("SNOOP_TIME_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1)
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if condition()? {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Watches a receiver's count of a stream (`count`) for `duration`: an
/// error names when it stood still for `max_gap` (the receiver lost the
/// stream). Returns what it got.
pub fn watch_stream(what: &str, duration: Duration, max_gap: Duration, count: impl Fn() -> u64) -> Result<u64> {
    let started = Instant::now();
    let (first, mut last, mut moved_at) = (count(), count(), Instant::now());
    while started.elapsed() < duration {
        thread::sleep(Duration::from_millis(50));
        let now = count();
        if now != last {
            (last, moved_at) = (now, Instant::now());
        } else if moved_at.elapsed() >= max_gap {
            bail!("{what} got nothing for {max_gap:?}, {:?} into {duration:?}", started.elapsed());
        }
    }
    Ok(last - first)
}

/// (group, port name) pairs in the pinned membership map, the data path's truth.
pub fn map_members(lab: &Lab) -> Result<BTreeSet<(Ipv4Addr, String)>> {
    Ok(pinned_members(lab)?.into_iter().filter_map(|(key, port)| Some((key.ipv4_octets()?.into(), port))).collect())
}

/// (IPv6 group, port name) pairs in the pinned membership map.
pub fn map_members_v6(lab: &Lab) -> Result<BTreeSet<(std::net::Ipv6Addr, String)>> {
    Ok(pinned_members(lab)?.into_iter().filter_map(|(key, port)| Some((key.ipv6_octets()?.into(), port))).collect())
}

/// (group, VLAN, port name) triples in the pinned membership map: on a
/// VLAN-aware bridge, membership is per VLAN.
pub fn map_members_by_vlan(lab: &Lab) -> Result<BTreeSet<(IpAddr, u16, String)>> {
    Ok(pinned_members(lab)?
        .into_iter()
        .filter_map(|(key, port)| {
            let group = match (key.ipv4_octets(), key.ipv6_octets()) {
                (Some(v4), _) => IpAddr::from(v4),
                (_, Some(v6)) => IpAddr::from(v6),
                _ => return None,
            };
            Some((group, key.vlan, port))
        })
        .collect())
}

fn pinned_members(lab: &Lab) -> Result<Vec<(snoop_common::GroupKey, String)>> {
    let path = lab.pin_dir().join(MAP_MEMBERS);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let map: HashMap<MapData, PortGroupKey, MemberValue> =
        HashMap::try_from(aya::maps::Map::HashMap(MapData::from_pin(&path)?))?;
    let mut out = Vec::new();
    for entry in map.iter() {
        let (key, _) = entry?;
        out.push((key.group, port_name(lab, key.ifindex)?));
    }
    Ok(out)
}

fn port_name(lab: &Lab, ifindex: u32) -> Result<String> {
    for host in &lab.hosts {
        if lab.port_ifindex(&host.port).ok() == Some(ifindex) {
            return Ok(host.port.clone());
        }
    }
    Ok(format!("#{ifindex}"))
}

/// Member port names of `group` as `snoop show groups --json` reports them.
pub fn shown_members(lab: &Lab, group: impl Into<IpAddr>) -> Result<BTreeSet<String>> {
    let group = group.into();
    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let mut out = BTreeSet::new();
    for g in groups.as_array().into_iter().flatten() {
        if g["group"] == group.to_string() {
            for m in g["members"].as_array().into_iter().flatten() {
                out.insert(m["port"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    Ok(out)
}

/// Waits until snoop's map holds exactly `ports` for `group`.
pub fn wait_for_members(lab: &Lab, group: Ipv4Addr, ports: &[&str], timeout: Duration) -> Result<()> {
    let want: BTreeSet<(Ipv4Addr, String)> = ports.iter().map(|p| (group, p.to_string())).collect();
    wait_until(&format!("{group} members {ports:?}"), timeout, || {
        let have: BTreeSet<_> = map_members(lab)?.into_iter().filter(|(g, _)| *g == group).collect();
        Ok(have == want)
    })
}

/// Waits until exactly `ports` are members of the IPv6 `group` in the map.
pub fn wait_for_members_v6(lab: &Lab, group: std::net::Ipv6Addr, ports: &[&str], timeout: Duration) -> Result<()> {
    let want: BTreeSet<(std::net::Ipv6Addr, String)> = ports.iter().map(|p| (group, p.to_string())).collect();
    wait_until(&format!("{group} members {ports:?}"), timeout, || {
        let have: BTreeSet<_> = map_members_v6(lab)?.into_iter().filter(|(g, _)| *g == group).collect();
        Ok(have == want)
    })
}

/// Sends `n` packets of the IPv6 `group` from `sender` and returns what each
/// of `receivers` got at its interface.
pub fn deliver_v6(lab: &Lab, sender: &str, group: std::net::Ipv6Addr, receivers: &[&str], n: u64) -> Result<Vec<u64>> {
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    lab.send_v6(sender, group, n, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    Ok(sniffers.iter().map(|s| s.count(group)).collect())
}

/// A controller counter from `snoop show stats --json`.
pub fn stat(lab: &Lab, section: &str, name: &str) -> Result<u64> {
    let stats = lab.snoop_show(&snoop_bin(), "stats")?;
    Ok(stats[section][name].as_u64().unwrap_or(0))
}

/// Pins a new, empty BPF hash map at `path`: what a snoop with another map
/// layout would have left there.
pub fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32, max_entries: u32) -> Result<()> {
    operator::pin_object(&operator::hash_map(key_size, value_size, max_entries)?, path)
}

/// BPF programs attached to a port of the lab's bridge, however attached:
/// TCX links (where the kernel has them) and TC filters.
pub fn attached_programs(lab: &Lab, port: &str) -> Result<usize> {
    let owned_port = port.to_owned();
    let tcx = lab::in_netns(&lab.bridge_netns, move || -> usize {
        use aya::programs::{SchedClassifier, TcAttachType};
        [TcAttachType::Ingress, TcAttachType::Egress]
            .into_iter()
            // A kernel without TCX (before 6.6) has none to list.
            .filter_map(|direction| SchedClassifier::query_tcx(&owned_port, direction).ok())
            .map(|(_, programs)| programs.len())
            .sum()
    })?;
    let mut filters = 0;
    for hook in ["ingress", "egress"] {
        let out = lab::run("tc", &["-n", &lab.bridge_netns, "-j", "filter", "show", "dev", port, hook])?;
        let json: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out })?;
        // tc lists a filter's chain head too: count the entries with options.
        filters +=
            json.as_array().map_or(0, |f| f.iter().filter(|f| f["kind"] == "bpf" && f["options"].is_object()).count());
    }
    Ok(tcx + filters)
}

/// The entries of a `bridge -j -d -s mdb show` document (or snoop's), as
/// compared: timers out (they count each side's own time), link-scope
/// IPv6 groups out (the kernel tracks them; snoop floods them by default),
/// sorted.
pub fn comparable_mdb(document: &Value) -> Vec<Value> {
    let mut entries: Vec<Value> = document[0]["mdb"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| !e["grp"].as_str().unwrap_or_default().starts_with("ff02:"))
        .map(|mut e| {
            let object = e.as_object_mut().expect("an entry is an object");
            object.remove("timer");
            if let Some(list) = object.get_mut("source_list").and_then(Value::as_array_mut) {
                list.iter_mut().for_each(|s| drop(s.as_object_mut().map(|s| s.remove("timer"))));
            }
            e
        })
        .collect();
    entries.sort_by_key(|e| e.to_string());
    entries
}

/// `bridge -j -d -s mdb show` on the lab's bridge.
pub fn kernel_mdb(lab: &Lab) -> Result<Value> {
    Ok(serde_json::from_str(&lab::run("bridge", &["-n", &lab.bridge_netns, "-j", "-d", "-s", "mdb", "show"])?)?)
}

/// `snoop show mdb --json` on the lab's bridge.
pub fn snoop_mdb(lab: &Lab) -> Result<Value> {
    let out = Command::new(snoop_bin())
        .args(["--netns", &lab.bridge_netns, "show", "mdb", "--bridge", &lab.bridge, "--json"])
        .output()?;
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A process's resident memory (VmRSS), in kB.
pub fn rss_kb(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// `snoop watch --json` as a child process, killed on drop.
pub struct Watcher {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watcher {
    pub fn start(lab: &Lab) -> Result<Self> {
        let mut child = Command::new(snoop_bin())
            .args(["--netns", &lab.bridge_netns, "watch", "--bridge", &lab.bridge, "--json"])
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().context("watch stdout")?;
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Ok(Self { child, lines })
    }

    /// The next event of `kind`, skipping others.
    pub fn next_of(&self, kind: &str) -> Result<Value> {
        loop {
            let event = self.next()?;
            if event["event"] == kind {
                return Ok(event);
            }
        }
    }

    /// The next event, parsed.
    pub fn next(&self) -> Result<Value> {
        let line = self.lines.recv_timeout(Duration::from_secs(8)).context("no event within 8 s")?;
        Ok(serde_json::from_str(&line)?)
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
