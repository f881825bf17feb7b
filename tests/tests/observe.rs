//! Observability against the lab's ground truth: counters equal what hosts
//! actually sent and received, `--json` matches the lab's state, metrics serve
//! the same numbers, and `snoop watch` streams the membership changes.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, TcpStream},
    thread,
    time::Duration,
};

use anyhow::Result;
use serde_json::Value;
use snoop_tests::{
    comparable_mdb, kernel_mdb, lab::Lab, snoop_bin, snoop_mdb, wait_for_members, wait_until, LabOptions, Watcher,
};

const G: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
use snoop_tests::FAST_TIMERS as FAST;
const METRICS: &str = "127.0.0.1:9464";

fn find<'a>(items: &'a Value, key: &str, value: &str) -> &'a Value {
    items
        .as_array()
        .and_then(|a| a.iter().find(|i| i[key] == value))
        .unwrap_or_else(|| panic!("no {key}={value} in {items}"))
}

/// `curl http://127.0.0.1:9464/metrics`, from inside the lab's bridge namespace.
fn scrape(lab: &Lab) -> Result<String> {
    snoop_tests::lab::in_netns(&lab.bridge_netns, || -> Result<String> {
        let mut stream = TcpStream::connect(METRICS)?;
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: snoop\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        anyhow::ensure!(response.starts_with("HTTP/1.1 200"), "metrics answered: {response}");
        Ok(response)
    })?
}

/// The value of `series`, written without the `bridge` label every series
/// carries (checked by [`bridge_labelled`]).
fn metric(text: &str, series: &str) -> Option<u64> {
    text.lines().find_map(|line| without_bridge(line).strip_prefix(series)?.trim().parse().ok())
}

fn without_bridge(line: &str) -> String {
    line.replace(",bridge=\"br0\"", "").replace("bridge=\"br0\",", "").replace("{bridge=\"br0\"}", "")
}

/// Every series names the bridge.
fn bridge_labelled(text: &str) -> bool {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).all(|l| l.contains("bridge=\"br0\""))
}

#[test]
fn counters_json_and_metrics_match_what_hosts_got() -> Result<()> {
    counters_match("redirect")
}

#[test]
fn counters_match_in_bridge_forwarding_too() -> Result<()> {
    counters_match("bridge")
}

fn counters_match(forwarding: &str) -> Result<()> {
    let mut lab = Lab::new(&format!("counters-{forwarding}"), 3, &LabOptions::default())?;
    let mut args = FAST.to_vec();
    args.extend(["--metrics", METRICS, "--forwarding", forwarding]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;

    let (h1, h2) = (lab.sniff("h1")?, lab.sniff("h2")?);
    lab.send("h0", G, 100, Duration::from_micros(200))?;
    thread::sleep(Duration::from_millis(300));
    assert_eq!((h1.count(G), h2.count(G)), (100, 0));

    let groups = lab.snoop_show(&snoop_bin(), "groups")?;
    let group = find(&groups, "group", "239.1.1.1");
    assert_eq!(group["forwarded_packets"], h1.count(G), "forwarded = what h1 got");
    assert_eq!(group["pruned_packets"], 100, "pruned = what h2 was spared");
    // 64-byte UDP payload in a 106-byte frame.
    assert_eq!(group["forwarded_bytes"], 100 * 106);
    assert_eq!(find(&group["members"], "port", "p1")["version"], 3);

    let ports = lab.snoop_show(&snoop_bin(), "ports")?;
    let p1 = find(&ports, "name", "p1");
    assert!(p1["reports_received"].as_u64().unwrap() >= 1);
    assert_eq!(p1["forwarded_packets"], 100);
    // Per-port pruning is seen where the bridge offers the copy: bridge forwarding.
    let p2_pruned = if forwarding == "bridge" { 100 } else { 0 };
    assert_eq!(find(&ports, "name", "p2")["pruned_packets"], p2_pruned);
    assert_eq!(find(&ports, "name", "p0")["forwarded_packets"], 0, "nothing goes back to the sender");

    let metrics = scrape(&lab)?;
    assert_eq!(metric(&metrics, "snoop_forwarded_packets_total{group=\"239.1.1.1\",port=\"p1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_group_pruned_packets_total{group=\"239.1.1.1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_port_pruned_packets_total{port=\"p2\"}"), Some(p2_pruned));
    assert_eq!(metric(&metrics, "snoop_port_forwarded_packets_total{port=\"p1\"}"), Some(100));
    assert_eq!(metric(&metrics, "snoop_group_member_ports{group=\"239.1.1.1\"}"), Some(1));
    assert_eq!(metric(&metrics, "snoop_querier_is_self"), Some(1));
    assert!(metrics.trim_end().ends_with("# EOF"));
    let body = metrics.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    assert!(bridge_labelled(body), "a series without the bridge's name:\n{body}");
    let stats = lab.snoop_show(&snoop_bin(), "stats")?;
    let redirected = stats["datapath"]["redirected"].as_u64().unwrap();
    assert_eq!(redirected, if forwarding == "redirect" { 100 } else { 0 });
    Ok(())
}

#[test]
fn watch_streams_joins_and_leaves() -> Result<()> {
    let mut lab = Lab::new("watch", 3, &LabOptions::default())?;
    lab.start_snoop(&snoop_bin(), FAST)?;
    let watcher = Watcher::start(&lab)?;
    thread::sleep(Duration::from_millis(300)); // let it subscribe
    let m1 = lab.join("h1", G)?;
    let join = watcher.next()?;
    assert_eq!(
        (join["event"].as_str(), join["group"].as_str(), join["port"].as_str()),
        (Some("join"), Some("239.1.1.1"), Some("p1"))
    );
    assert_eq!(join["detail"], "IGMPv3");

    drop(m1);
    // The leave ends the membership once the last-member queries go unanswered.
    let end = watcher.next()?;
    assert_eq!((end["event"].as_str(), end["port"].as_str()), (Some("leave"), Some("p1")));
    wait_until("membership gone", Duration::from_secs(2), || {
        Ok(lab.snoop_show(&snoop_bin(), "groups")?.as_array().is_some_and(|g| g.is_empty()))
    })?;
    Ok(())
}

/// The same hosts and joins (IPv4 any-source, a source-specific join,
/// IPv6) under the kernel's own snooping and under snoop: `bridge -j -d -s
/// mdb show` and `snoop show mdb --json` hold the same entries, field by
/// field but the timers.
#[test]
fn snoop_show_mdb_holds_what_the_kernels_mdb_holds() -> Result<()> {
    let joins = |lab: &Lab| -> Result<Vec<snoop_tests::lab::Membership>> {
        let s1 = lab.host("h0").ip;
        Ok(vec![
            lab.join("h1", G)?,
            lab.join_source(
                "h2",
                Ipv4Addr::new(232, 1, 2, 3).into(),
                s1.into(),
                snoop_tests::lab::SourceJoin::Include,
            )?,
            lab.join_v6("h3", "ff0e::1234".parse()?)?,
        ])
    };
    let options = LabOptions { ipv6: true, ..Default::default() };
    // Each lab: hosts with IPv6 ready, then the joins, then its database.
    // (snoop's also in text, while its lab stands)
    let database = |tag: &str, options: &LabOptions, snoop: bool| -> Result<(Value, String)> {
        let mut lab = Lab::new(tag, 4, options)?;
        for host in ["h0", "h1", "h2", "h3"] {
            lab.wait_ipv6_ready(host, Duration::from_secs(10))?;
        }
        if snoop {
            lab.start_snoop(&snoop_bin(), FAST)?;
        } else {
            #[rustfmt::skip]
            lab.ip_br(&["link", "set", "br0", "type", "bridge", "mcast_querier", "1", "mcast_igmp_version", "3",
                "mcast_mld_version", "2", "mcast_query_interval", "200", "mcast_query_response_interval", "100"])?;
        }
        let _joined = joins(&lab)?;
        let mut document = Value::Null;
        wait_until(&format!("{tag}: the three groups"), Duration::from_secs(10), || {
            document = if snoop { snoop_mdb(&lab)? } else { kernel_mdb(&lab)? };
            Ok(comparable_mdb(&document).len() >= 4)
        })?;
        let mut text = String::new();
        if snoop {
            let out = std::process::Command::new(snoop_bin())
                .args(["--netns", &lab.bridge_netns, "show", "mdb", "--bridge", "br0"])
                .output()?;
            text = String::from_utf8(out.stdout)?;
        }
        Ok((document, text))
    };
    let (kernel_document, _) = database("mdb-kernel", &LabOptions { kernel_snooping: true, ..options.clone() }, false)?;
    let (document, text) = database("mdb-snoop", &options, true)?;
    assert_eq!(
        comparable_mdb(&document),
        comparable_mdb(&kernel_document),
        "snoop: {document}\nkernel: {kernel_document}"
    );
    // The text form too: one line per entry, the kernel's way.
    assert!(text.contains("dev br0 port p1 grp 239.1.1.1 temp filter_mode exclude proto kernel "), "{text}");
    assert!(
        text.contains("dev br0 port p2 grp 232.1.2.3 src 10.99.0.10 temp filter_mode include proto kernel "),
        "{text}"
    );
    Ok(())
}

/// Series names and their labels in an OpenMetrics text: name → labels.
fn series(text: &str) -> std::collections::BTreeMap<String, std::collections::BTreeSet<String>> {
    let mut found: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> = Default::default();
    for line in text.lines().filter(|l| l.starts_with("snoop_")) {
        let (name, rest) = line.split_once('{').unwrap_or((line.split_whitespace().next().unwrap_or(line), ""));
        let labels = rest.split("\",").filter_map(|pair| pair.split_once('=').map(|(k, _)| k.trim().to_owned()));
        found.entry(name.to_owned()).or_default().extend(labels);
    }
    found
}

/// The README's list of metrics: `name{label,...}` lines in the block
/// after "Every series".
fn readme_metrics() -> Result<Vec<(String, std::collections::BTreeSet<String>, bool)>> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))?;
    let block = readme.split("<!-- metrics list -->").nth(1).unwrap_or_default();
    let block = block.split("```").nth(1).unwrap_or_default();
    Ok(block
        .lines()
        .filter(|l| l.starts_with("snoop_"))
        .map(|line| {
            let optional = line.contains("--metrics-sources");
            let line = line.split_whitespace().next().unwrap_or_default();
            let (name, labels) = line.split_once('{').unwrap_or((line, "}"));
            let labels = labels.trim_end_matches('}').split(',').filter(|l| !l.is_empty()).map(str::to_owned).collect();
            (name.to_owned(), labels, optional)
        })
        .collect())
}

/// 500 clients that connect and never read (or never even ask) cost
/// snoop no memory or descriptors beyond its bound, joins go on, and the
/// series served are exactly the README's, each with its labels.
#[test]
fn metrics_survive_idle_clients_and_are_the_readmes() -> Result<()> {
    let mut lab = Lab::new("metrics-clients", 3, &LabOptions { ipv6: true, ..Default::default() })?;
    let mut args = FAST.to_vec();
    args.extend(["--metrics", METRICS, "--metrics-sources"]);
    lab.start_snoop(&snoop_bin(), &args)?;
    let _m1 = lab.join("h1", G)?;
    let s1 = lab.host("h0").ip;
    let _m2 =
        lab.join_source("h2", Ipv4Addr::new(232, 1, 1, 1).into(), s1.into(), snoop_tests::lab::SourceJoin::Include)?;
    wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;
    lab.send("h0", G, 10, Duration::ZERO)?;
    thread::sleep(Duration::from_millis(300));
    let scraped = scrape(&lab)?;
    let served = series(scraped.split_once("\r\n\r\n").map_or("", |(_, body)| body));
    let listed = readme_metrics()?;
    for (name, labels) in &served {
        let entry = listed.iter().find(|(n, _, _)| n == name);
        assert!(entry.is_some(), "{name} is served but not in the README's list");
        assert_eq!(&entry.unwrap().1, labels, "{name}'s labels");
    }
    for (name, _, _) in &listed {
        assert!(served.contains_key(name), "{name} is in the README's list but not served");
    }

    let pid = lab.snoop_pid().expect("running");
    let descriptors = || std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    let (fds_before, rss_before) = (descriptors(), snoop_tests::rss_kb(pid)?);
    let clients = snoop_tests::lab::in_netns(&lab.bridge_netns, || -> Result<Vec<TcpStream>> {
        let mut clients = Vec::new();
        for i in 0..500 {
            let mut stream = TcpStream::connect(METRICS)?;
            if i % 2 == 0 {
                // Asks, and never reads the answer.
                stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: snoop\r\n\r\n")?;
            }
            clients.push(stream);
        }
        Ok(clients)
    })??;
    thread::sleep(Duration::from_secs(1));
    let (fds, rss) = (descriptors(), snoop_tests::rss_kb(pid)?);
    println!("500 idle clients: {fds_before} -> {fds} descriptors, {rss_before} -> {rss} kB");
    assert!(fds <= fds_before + 64 + 8, "descriptors grew from {fds_before} to {fds}");
    assert!(rss <= rss_before + 16 * 1024, "RSS grew from {rss_before} to {rss} kB");
    let g2 = Ipv4Addr::new(239, 1, 1, 2);
    let _m3 = lab.join("h1", g2)?;
    wait_for_members(&lab, g2, &["p1"], Duration::from_secs(3))?;
    drop(clients);
    // Once the clients' deadlines pass, scrapes are served again.
    wait_until("a scrape answered again", Duration::from_secs(12), || Ok(scrape(&lab).is_ok()))?;
    Ok(())
}

/// Runs a command as systemd runs a unit that logs to the journal: a
/// journald of its own (in this mount namespace only, writing under the
/// directory given first), the command's stdout and stderr connected to it
/// and JOURNAL_STREAM naming that connection.
const AS_A_UNIT: &str = r#"set -e
dir=$1; shift
mkdir -p /run/systemd /run/log
mount -t tmpfs tmpfs /run/systemd
mount --bind "$dir" /run/log
/lib/systemd/systemd-journald &
echo $! > "$dir/journald.pid"
while [ ! -S /run/systemd/journal/stdout ]; do sleep 0.05; done
exec systemd-cat -t snoop -- sh -c 'JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec "$@"' sh "$@"
"#;

/// The test's journal: its journald stopped and its files removed at the end.
struct Journal {
    dir: std::path::PathBuf,
}

impl Journal {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("snoop-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    /// Every record so far, as `journalctl -o json` gives them.
    fn records(&self) -> Result<Vec<Value>> {
        let out = std::process::Command::new("journalctl")
            .arg("-D")
            .arg(self.dir.join("journal"))
            .args(["-o", "json", "--no-pager"])
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("journald.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: a signal to the journald this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                thread::sleep(Duration::from_millis(200));
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Under systemd snoop writes to the journal natively: one record per line
/// (nothing doubled on stderr), its priority, the bridge, and each event's
/// port, group and kind as fields of their own to filter on.
#[test]
fn under_systemd_records_go_to_the_journal_with_fields_of_their_own() -> Result<()> {
    let journal = Journal::new()?;
    let mut lab = Lab::new("journal", 3, &LabOptions::default())?;
    let script = lab.write_file("as-a-unit.sh", AS_A_UNIT)?;
    let (script, dir) = (script.display().to_string(), journal.dir.display().to_string());
    lab.start_snoop_wrapped(&["unshare", "-m", "--propagation", "private", "sh", &script, &dir], &snoop_bin(), FAST)?;
    let _member = lab.join("h1", G)?;
    wait_for_members(&lab, G, &["p1"], Duration::from_secs(8))?;
    lab.ip_br(&["link", "set", &lab.bridge, "type", "bridge", "mcast_snooping", "1"])?;

    let is = |r: &Value, field: &str, value: &str| r[field] == value;
    let mut records = Vec::new();
    wait_until("the join and the warning in the journal", Duration::from_secs(5), || {
        records = journal.records()?;
        Ok(records.iter().any(|r| is(r, "EVENT", "join")) && records.iter().any(|r| is(r, "PRIORITY", "4")))
    })?;
    let join = records.iter().find(|r| is(r, "EVENT", "join")).unwrap();
    for (field, value) in [
        ("PORT", "p1"),
        ("GROUP", "239.1.1.1"),
        ("BRIDGE", lab.bridge.as_str()),
        // log's info is the journal's notice (5), its debug the journal's info.
        ("PRIORITY", "5"),
        ("SYSLOG_IDENTIFIER", "snoop"),
        ("_TRANSPORT", "journal"),
    ] {
        assert!(is(join, field, value), "{field} is not {value}: {join}");
    }
    assert!(join["MESSAGE"].as_str().is_some_and(|m| m.contains("239.1.1.1") && m.contains("p1")), "{join}");
    let warning = records.iter().find(|r| is(r, "PRIORITY", "4")).unwrap();
    assert!(warning["MESSAGE"].as_str().is_some_and(|m| m.contains("snooping was turned on again")), "{warning}");
    assert!(is(warning, "BRIDGE", &lab.bridge), "{warning}");
    // Nothing written twice: no line of snoop's came through its stderr.
    let doubled: Vec<&Value> = records.iter().filter(|r| is(r, "_TRANSPORT", "stdout")).collect();
    assert!(doubled.is_empty(), "lines on stderr besides the journal: {doubled:?}");
    // RUST_LOG=info: no debug records.
    let debug = |r: &Value| is(r, "PRIORITY", "6") || is(r, "PRIORITY", "7");
    assert!(
        !records.iter().any(|r| is(r, "SYSLOG_IDENTIFIER", "snoop") && debug(r)),
        "RUST_LOG=info let debug through"
    );
    drop(lab);
    Ok(())
}
