//! A lab of network namespaces: one bridge namespace with a Linux bridge, and
//! host namespaces each wired to a bridge port by a veth pair. Hosts are real
//! kernel IP stacks: their sockets join groups, so their kernels send the IGMP.
//!
//! Used by the demo (`snoop-lab demo`), the integration tests and the
//! benchmarks; it is not part of the shipped `snoop`. Dropping a
//! `Lab` stops what it started and deletes its namespaces (and with them the
//! bridge, the veths and any TCX link on them) and its bpffs pins.
use std::{
    collections::HashMap,
    ffi::CString,
    fs, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use snoop::{frame_sender::FrameSender, proto::internet_checksum};

use crate::operator;

/// UDP port of the lab's group traffic.
pub const DATA_PORT: u16 = 5001;
/// nftables table of a host's data counter (and sink).
const SINK_TABLE: &str = "snoop_lab_count";
/// Bridge name inside the bridge namespace, unless [`LabOptions::bridge`] names another.
pub const BRIDGE: &str = "br0";
/// Namespace prefix of every lab, so leftovers of a killed run are found.
pub const NS_PREFIX: &str = "snooplab";

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// The bridge-side veth of this host.
    /// Its IPv6 address in a lab with IPv6 (fd99::<last octet of ip>).
    pub ipv6: Ipv6Addr,
    pub port: String,
    /// Its interface: eth0, or a VLAN interface on it (eth0.10) for a
    /// host on a trunk port.
    pub interface: String,
}

#[derive(Clone, Debug, Default)]
pub struct LabOptions {
    /// Force the hosts' IGMP version (1, 2 or 3); `None` leaves the kernel default (v3).
    pub igmp_version: Option<u8>,
    /// The kernel bridge's own snooping (for comparisons).
    pub kernel_snooping: bool,
    /// The bridge's name; default [`BRIDGE`].
    pub bridge: Option<String>,
    /// IPv6 on: hosts get link-local addresses and fd99::<10+i>/64, and
    /// their kernels speak MLD; the bridge gets a link-local address. Off,
    /// IPv6 is disabled everywhere (no neighbour discovery noise).
    pub ipv6: bool,
    /// Force the hosts' MLD version (1 or 2).
    pub mld_version: Option<u8>,
    /// A VLAN-aware bridge (`vlan_filtering 1`); ports start in VLAN 1,
    /// untagged, as the kernel puts them. Needs 802.1Q in the kernel.
    pub vlan_filtering: bool,
}

pub struct Lab {
    pub id: String,
    pub bridge_netns: String,
    /// The bridge's name in its namespace.
    pub bridge: String,
    pub hosts: Vec<Host>,
    children: Vec<Child>,
    /// Namespaces beyond the hosts' (behind a router host, say).
    extra_netns: Vec<String>,
    /// Programs other than snoop running in the lab (router daemons).
    daemons: Vec<Child>,
    /// Files written for the lab (daemon configurations).
    files: Vec<PathBuf>,
}

impl Lab {
    /// Builds a lab with `host_count` hosts named h0, h1, ...
    pub fn new(tag: &str, host_count: usize, options: &LabOptions) -> Result<Self> {
        let id = format!("{NS_PREFIX}-{tag}-{}", std::process::id());
        let bridge_netns = format!("{id}-br");
        let bridge = options.bridge.clone().unwrap_or_else(|| BRIDGE.to_owned());
        let mut lab = Lab {
            id: id.clone(),
            bridge_netns: bridge_netns.clone(),
            bridge: bridge.clone(),
            hosts: Vec::new(),
            children: Vec::new(),
            extra_netns: Vec::new(),
            daemons: Vec::new(),
            files: Vec::new(),
        };
        // From here on Drop cleans up whatever was made.
        run("ip", &["netns", "add", &bridge_netns])?;
        let snooping = if options.kernel_snooping { "1" } else { "0" };
        let mut add = vec!["link", "add", &bridge, "type", "bridge", "mcast_snooping", snooping];
        // Only when asked: a kernel without 802.1Q refuses the option at all.
        if options.vlan_filtering {
            add.extend(["vlan_filtering", "1"]);
        }
        lab.ip_br(&add)?;
        lab.ip_br(&["link", "set", &bridge, "up"])?;
        lab.ip_br(&["link", "set", "lo", "up"])?;
        if !options.ipv6 {
            quiet_ipv6(&bridge_netns)?;
        }
        for i in 0..host_count {
            lab.add_host(i, options)?;
        }
        Ok(lab)
    }

    /// Adds host h<index> on a new bridge port p<index>.
    pub fn add_host(&mut self, index: usize, options: &LabOptions) -> Result<()> {
        let name = format!("h{index}");
        let netns = format!("{}-{name}", self.id);
        let port = format!("p{index}");
        let Some(last_octet) = u8::try_from(index + 10).ok().filter(|o| *o < 255) else {
            bail!("a lab holds at most 245 hosts");
        };
        if self.hosts.iter().any(|h| h.ip == Ipv4Addr::new(10, 99, 0, last_octet)) {
            bail!("10.99.0.{last_octet} is a host's behind a port already");
        }
        let ip = Ipv4Addr::new(10, 99, 0, last_octet);
        let ipv6 = format!("fd99::{last_octet}").parse()?;
        new_host_netns(&netns, options)?;
        self.hosts.push(Host { name, netns: netns.clone(), ip, ipv6, port: port.clone(), interface: "eth0".into() });
        self.ip_br(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        let bridge = self.bridge.clone();
        self.ip_br(&["link", "set", &port, "master", &bridge, "up"])?;
        configure_host(&netns, ip, ipv6, options)
    }

    /// Puts `count` more hosts behind `host`'s port, as a downstream switch
    /// would: `host`'s eth0 goes into a bridge `sw0` of its namespace
    /// (no snooping: reports and queries pass as through a hub, so the
    /// hosts hear each other's), `host` keeps its address on `sw0`, and
    /// hosts `<host>a`, `<host>b`, ... hang off it, addressed from
    /// 10.99.0.254 down (fd99::<same> with IPv6 on). Returns their names.
    pub fn add_hosts_behind(&mut self, host: &str, count: usize, options: &LabOptions) -> Result<Vec<String>> {
        let switch = self.host(host).clone();
        let ns = |args: &[&str]| run("ip", &[&["-n", switch.netns.as_str()][..], args].concat());
        ns(&["link", "add", "sw0", "type", "bridge", "mcast_snooping", "0"])?;
        ns(&["addr", "flush", "dev", "eth0"])?;
        ns(&["link", "set", "eth0", "master", "sw0"])?;
        ns(&["addr", "add", &format!("{}/24", switch.ip), "dev", "sw0"])?;
        if options.ipv6 {
            ns(&["-6", "addr", "add", &format!("{}/64", switch.ipv6), "dev", "sw0", "nodad"])?;
        }
        ns(&["link", "set", "sw0", "up"])?;
        let switch_index = self.hosts.iter().position(|h| h.name == host).context("no such host")?;
        self.hosts[switch_index].interface = "sw0".into();
        let mut names = Vec::new();
        for k in 0..count {
            let Some(last_octet) =
                (10..=254u8).rev().find(|o| self.hosts.iter().all(|h| h.ip.octets() != [10, 99, 0, *o]))
            else {
                bail!("no address left for a host behind {host}");
            };
            let name = format!("{host}{}", char::from(b'a' + u8::try_from(k).context("too many hosts behind")?));
            let netns = format!("{}-{name}", self.id);
            let ip = Ipv4Addr::new(10, 99, 0, last_octet);
            let ipv6 = format!("fd99::{last_octet}").parse()?;
            new_host_netns(&netns, options)?;
            self.hosts.push(Host {
                name: name.clone(),
                netns: netns.clone(),
                ip,
                ipv6,
                port: switch.port.clone(),
                interface: "eth0".into(),
            });
            let leg = format!("d{name}");
            ns(&["link", "add", &leg, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
            ns(&["link", "set", &leg, "master", "sw0", "up"])?;
            configure_host(&netns, ip, ipv6, options)?;
            names.push(name);
        }
        Ok(names)
    }

    /// Makes `port` an access port of `vlan`: its only VLAN, untagged, its PVID.
    pub fn set_access_vlan(&self, port: &str, vlan: u16) -> Result<()> {
        let old: Vec<u16> = self.port_vlans(port)?;
        self.bridge_cmd(&["vlan", "add", "dev", port, "vid", &vlan.to_string(), "pvid", "untagged"])?;
        for other in old.into_iter().filter(|v| *v != vlan) {
            self.bridge_cmd(&["vlan", "del", "dev", port, "vid", &other.to_string()])?;
        }
        Ok(())
    }

    /// Makes `port` a trunk of `vlans`, all tagged, and no untagged VLAN.
    pub fn set_trunk_vlans(&self, port: &str, vlans: &[u16]) -> Result<()> {
        for vlan in self.port_vlans(port)? {
            self.bridge_cmd(&["vlan", "del", "dev", port, "vid", &vlan.to_string()])?;
        }
        for vlan in vlans {
            self.bridge_cmd(&["vlan", "add", "dev", port, "vid", &vlan.to_string()])?;
        }
        Ok(())
    }

    /// The VLANs of `port`, as `bridge vlan show` lists them.
    pub fn port_vlans(&self, port: &str) -> Result<Vec<u16>> {
        let out = self.bridge_cmd(&["-j", "vlan", "show", "dev", port])?;
        let json: serde_json::Value = serde_json::from_str(&out).context("bridge -j vlan show")?;
        let vlans = json.as_array().and_then(|ports| ports.first()).and_then(|p| p["vlans"].as_array()).cloned();
        Ok(vlans.unwrap_or_default().iter().filter_map(|v| v["vlan"].as_u64()).map(|v| v as u16).collect())
    }

    /// Runs `bridge` in the bridge's namespace.
    pub fn bridge_cmd(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.bridge_netns.as_str()];
        all.extend_from_slice(args);
        run("bridge", &all)
    }

    /// Gives trunk host `host` an interface in `vlan` (eth0.<vlan>, address
    /// 10.99.<vlan>.<host's last octet>/24, and fd99:<vlan>::<same>/64 with
    /// IPv6 on), and returns the name of a new lab host standing for it:
    /// `h<i>v<vlan>`, its joins, sends and sniffs on that interface.
    pub fn add_vlan_host(&mut self, host: &str, vlan: u16) -> Result<String> {
        let trunk = self.host(host).clone();
        let interface = format!("eth0.{vlan}");
        let octets = trunk.ip.octets();
        let ip = Ipv4Addr::new(10, 99, u8::try_from(vlan).context("lab VLANs are below 256")?, octets[3]);
        let ns = |args: &[&str]| {
            let mut all = vec!["-n", trunk.netns.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        };
        ns(&["link", "add", "link", "eth0", "name", &interface, "type", "vlan", "id", &vlan.to_string()])?;
        ns(&["addr", "add", &format!("{ip}/24"), "dev", &interface])?;
        if ns(&["-6", "addr", "show", "dev", "eth0"]).is_ok_and(|out| !out.trim().is_empty()) {
            let ip6 = format!("fd99:{vlan:x}::{}/64", octets[3]);
            ns(&["-6", "addr", "add", &ip6, "dev", &interface, "nodad"])?;
        }
        ns(&["link", "set", &interface, "up"])?;
        for sysctl in ["igmpv2_unsolicited_report_interval", "igmpv3_unsolicited_report_interval"] {
            write_sysctl(&trunk.netns, &format!("ipv4/conf/{interface}/{sysctl}"), "200")?;
        }
        let name = format!("{host}v{vlan}");
        let ipv6 = format!("fd99:{vlan:x}::{}", octets[3]).parse()?;
        self.hosts.push(Host { name: name.clone(), netns: trunk.netns, ip, ipv6, port: trunk.port, interface });
        Ok(name)
    }

    /// Adds a VLAN interface on the bridge (<bridge>.<vlan>) with `addr`,
    /// and the VLAN to the bridge device itself, tagged (so the interface
    /// hears the VLAN): the querier of that VLAN speaks from it.
    pub fn add_bridge_vlan_interface(&self, vlan: u16, addr: &str) -> Result<()> {
        let name = format!("{}.{vlan}", self.bridge);
        let bridge = self.bridge.clone();
        self.ip_br(&["link", "add", "link", &bridge, "name", &name, "type", "vlan", "id", &vlan.to_string()])?;
        self.ip_br(&["addr", "add", addr, "dev", &name])?;
        self.bridge_cmd(&["vlan", "add", "dev", &bridge, "vid", &vlan.to_string(), "self"])?;
        self.ip_br(&["link", "set", &name, "up"]).map(drop)
    }

    /// Captures what the bridge host hears on its interface in `vlan`.
    pub fn sniff_bridge_vlan(&self, vlan: u16) -> Result<Sniffer> {
        Sniffer::start(&self.bridge_netns, &format!("{}.{vlan}", self.bridge))
    }

    /// Removes host `name` and its port (its namespace goes, and the veth with it).
    pub fn remove_host(&mut self, name: &str) -> Result<()> {
        let index = self.hosts.iter().position(|h| h.name == name).with_context(|| format!("no host {name}"))?;
        let host = self.hosts.remove(index);
        run("ip", &["netns", "del", &host.netns]).map(drop)
    }

    /// Forces `host`'s IGMP version (1, 2 or 3).
    pub fn set_igmp_version(&self, host: &str, version: u8) -> Result<()> {
        write_sysctl(&self.host(host).netns, "ipv4/conf/eth0/force_igmp_version", &version.to_string())
    }

    /// Puts a network behind `host`: a new namespace `name` linked to it by a
    /// veth, `host_ip` on the host's end (`behind`), `ip` on the far end
    /// (`eth0`), routed through the host. Returns the namespace.
    pub fn add_network_behind(&mut self, host: &str, name: &str, host_ip: &str, ip: &str) -> Result<String> {
        let host_netns = self.host(host).netns.clone();
        let netns = format!("{}-{name}", self.id);
        run("ip", &["netns", "add", &netns])?;
        self.extra_netns.push(netns.clone());
        quiet_ipv6(&netns)?;
        run(
            "ip",
            &["-n", &host_netns, "link", "add", "behind", "type", "veth", "peer", "name", "eth0", "netns", &netns],
        )?;
        run("ip", &["-n", &host_netns, "addr", "add", host_ip, "dev", "behind"])?;
        run("ip", &["-n", &host_netns, "link", "set", "behind", "up"])?;
        run("ip", &["-n", &netns, "addr", "add", ip, "dev", "eth0"])?;
        run("ip", &["-n", &netns, "link", "set", "eth0", "up"])?;
        run("ip", &["-n", &netns, "link", "set", "lo", "up"])?;
        let gateway = host_ip.split('/').next().unwrap_or(host_ip);
        run("ip", &["-n", &netns, "route", "add", "default", "via", gateway])?;
        write_sysctl(&host_netns, "ipv4/ip_forward", "1")?;
        Ok(netns)
    }

    /// Adds host h<index> whose port p<index> is parked outside the bridge:
    /// its end of the veth, up, in a namespace of its own, so the host has
    /// a carrier and its joins go nowhere (a VM before it migrates here).
    /// [`Lab::attach_parked_port`] brings it in.
    pub fn add_parked_host(&mut self, index: usize, options: &LabOptions) -> Result<()> {
        let name = format!("h{index}");
        let netns = format!("{}-{name}", self.id);
        let port = format!("p{index}");
        let park = format!("{}-park", self.id);
        if !self.extra_netns.contains(&park) {
            run("ip", &["netns", "add", &park])?;
            self.extra_netns.push(park.clone());
        }
        let last_octet = u8::try_from(index + 10).context("a lab holds at most 245 hosts")?;
        let ip = Ipv4Addr::new(10, 99, 0, last_octet);
        let ipv6 = format!("fd99::{last_octet}").parse()?;
        new_host_netns(&netns, options)?;
        self.hosts.push(Host { name, netns: netns.clone(), ip, ipv6, port: port.clone(), interface: "eth0".into() });
        run("ip", &["-n", &park, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &netns])?;
        run("ip", &["-n", &park, "link", "set", &port, "up"])?;
        configure_host(&netns, ip, ipv6, options)
    }

    /// Moves a parked port ([`Lab::add_parked_host`]) into the bridge, up.
    pub fn attach_parked_port(&self, port: &str) -> Result<()> {
        let park = format!("{}-park", self.id);
        run("ip", &["-n", &park, "link", "set", port, "netns", &self.bridge_netns])?;
        let bridge = self.bridge.clone();
        self.ip_br(&["link", "set", port, "master", &bridge, "up"]).map(drop)
    }

    /// Adds `count` bridge ports with nothing behind them: veth pairs
    /// q<i>/q<i>p inside the bridge's namespace, q<i> a port, both up.
    /// Returns the ports' names.
    pub fn add_bare_ports(&mut self, count: usize) -> Result<Vec<String>> {
        let names: Vec<String> = (0..count).map(|i| format!("q{i}")).collect();
        let mut batch = String::new();
        for name in &names {
            batch.push_str(&format!(
                "link add {name} type veth peer name {name}p
"
            ));
            batch.push_str(&format!(
                "link set {name} master {} up
link set {name}p up
",
                self.bridge
            ));
        }
        let path = self.write_file("bare-ports.batch", &batch)?;
        run("ip", &["-n", &self.bridge_netns, "-batch", &path.display().to_string()])?;
        Ok(names)
    }

    /// A namespace of the lab's, `<lab>-<name>`, deleted with the lab.
    pub fn add_namespace(&mut self, name: &str) -> Result<String> {
        let netns = format!("{}-{name}", self.id);
        run("ip", &["netns", "add", &netns])?;
        self.extra_netns.push(netns.clone());
        quiet_ipv6(&netns)?;
        Ok(netns)
    }

    /// Writes a file for the lab's lifetime (a daemon's configuration).
    pub fn write_file(&mut self, name: &str, contents: &str) -> Result<PathBuf> {
        let path = std::env::temp_dir().join(format!("{}-{name}", self.id));
        fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        self.files.push(path.clone());
        Ok(path)
    }

    /// The MAC of `host`'s interface.
    pub fn host_mac(&self, host: &str) -> Result<[u8; 6]> {
        let out = run("ip", &["-n", &self.host(host).netns, "-j", "link", "show", "eth0"])?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        let text = json[0]["address"].as_str().context("no address")?;
        let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
        bytes.try_into().map_err(|_| anyhow::anyhow!("not a MAC: {text}"))
    }

    /// Runs a program (a router daemon) in `netns` for the lab's lifetime;
    /// its output goes to the lab's log.
    pub fn spawn_in(&mut self, netns: &str, program: &str, args: &[&str]) -> Result<()> {
        let log = fs::OpenOptions::new().create(true).append(true).open(self.snoop_log())?;
        let child = Command::new("ip")
            .args(["netns", "exec", netns, program])
            .args(args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        self.daemons.push(child);
        Ok(())
    }

    /// Runs FRRouting's zebra and pimd on `host` (Debian's `frr`): a PIM-SM
    /// router and IGMP querier, configured by `pimd` (pimd.conf). They run
    /// as user frr with their sockets and files in a directory of their own,
    /// for the lab's lifetime; [`Lab::frr`] asks them through vtysh.
    pub fn start_frr(&mut self, host: &str, pimd: &str) -> Result<()> {
        let netns = self.host(host).netns.clone();
        self.start_frr_in(&netns, host, pimd)
    }

    /// FRR's zebra and pimd in the bridge's namespace (the bridge host as
    /// a router), asked through [`Lab::frr`] with `name` "bridge".
    pub fn start_frr_on_bridge(&mut self, pimd: &str) -> Result<()> {
        let netns = self.bridge_netns.clone();
        self.start_frr_in(&netns, "bridge", pimd)
    }

    fn start_frr_in(&mut self, netns: &str, host: &str, pimd: &str) -> Result<()> {
        let netns = netns.to_owned();
        let dir = self.frr_dir(host);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        self.files.push(dir.clone());
        let path = |name: &str| dir.join(name).display().to_string();
        fs::write(dir.join("zebra.conf"), format!("hostname {host}\n"))?;
        fs::write(dir.join("pimd.conf"), format!("hostname {host}\n{pimd}"))?;
        run("chown", &["-R", "frr:frr", &dir.display().to_string()])?;
        let common = |daemon: &str| {
            [
                "--vty_socket".to_owned(),
                dir.display().to_string(),
                "-z".to_owned(),
                path("zserv.api"),
                "-i".to_owned(),
                path(&format!("{daemon}.pid")),
                "-f".to_owned(),
                path(&format!("{daemon}.conf")),
            ]
        };
        let zebra = common("zebra");
        self.spawn_in(&netns, "/usr/lib/frr/zebra", &zebra.iter().map(String::as_str).collect::<Vec<_>>())?;
        let api = dir.join("zserv.api");
        crate::wait_until("zebra's socket", Duration::from_secs(10), || Ok(api.exists()))?;
        let pimd = common("pimd");
        self.spawn_in(&netns, "/usr/lib/frr/pimd", &pimd.iter().map(String::as_str).collect::<Vec<_>>())?;
        let vty = dir.join("pimd.vty");
        crate::wait_until("pimd's vty", Duration::from_secs(10), || Ok(vty.exists()))
    }

    fn frr_dir(&self, host: &str) -> PathBuf {
        std::env::temp_dir().join(format!("{}-frr-{host}", self.id))
    }

    /// A vtysh command's JSON answer from the FRR daemons on `host`.
    pub fn frr(&self, host: &str, command: &str) -> Result<serde_json::Value> {
        let out = run("vtysh", &["--vty_socket", &self.frr_dir(host).display().to_string(), "-c", command])?;
        serde_json::from_str(&out).with_context(|| format!("vtysh {command}: {out}"))
    }

    /// The groups FRR's IGMP on `host` holds joins for, on any interface.
    pub fn frr_igmp_groups(&self, host: &str) -> Result<Vec<Ipv4Addr>> {
        let groups = self.frr(host, "show ip igmp groups json")?;
        let interfaces = groups.as_object().into_iter().flatten().filter_map(|(_, i)| i["groups"].as_array());
        Ok(interfaces.flatten().filter_map(|g| g["group"].as_str()?.parse().ok()).collect())
    }

    /// Makes `host` a multicast router as the Linux bridge is one: its
    /// interface (eth0, or a VLAN interface: a router of that VLAN) goes
    /// into a bridge of its own that queries (IGMP `version`, every
    /// `interval`, answers within 1 s) from the host's address, as a router
    /// port sees it. Its snooping learns the joins that reach it (`router_groups`).
    /// In a lab with IPv6 it is an MLDv2 querier too, from fe80::1 (the
    /// lowest address a querier can have: it wins every election).
    pub fn make_querier(&self, host: &str, version: u8, interval: Duration) -> Result<()> {
        let Host { netns, ip, ipv6, interface, .. } = self.host(host).clone();
        let centis = (interval.as_millis() / 10).to_string();
        let version = version.to_string();
        let ns = |args: &[&str]| run("ip", &[&["-n", netns.as_str()][..], args].concat());
        let has_ipv6 = !ns(&["-6", "addr", "show", "dev", &interface])?.trim().is_empty();
        ns(&["addr", "flush", "dev", &interface])?;
        #[rustfmt::skip]
        ns(&["link", "add", "qbr", "type", "bridge", "mcast_snooping", "1", "mcast_querier", "1",
            "mcast_query_use_ifaddr", "1", "mcast_igmp_version", &version, "mcast_mld_version", "2",
            "mcast_query_interval", &centis, "mcast_query_response_interval", "100",
            "mcast_startup_query_interval", &centis])?;
        ns(&["link", "set", &interface, "master", "qbr"])?;
        ns(&["addr", "add", &format!("{ip}/24"), "dev", "qbr"])?;
        if has_ipv6 {
            ns(&["link", "set", "qbr", "addrgenmode", "none"])?;
            ns(&["-6", "addr", "add", "fe80::1/64", "dev", "qbr", "nodad"])?;
            ns(&["-6", "addr", "add", &format!("{ipv6}/64"), "dev", "qbr", "nodad"])?;
        }
        ns(&["link", "set", "qbr", "up"])?;
        Ok(())
    }

    /// The groups the router made by [`Lab::make_querier`] on `host` has heard joins for.
    pub fn router_groups(&self, host: &str) -> Result<Vec<Ipv4Addr>> {
        let out = run("bridge", &["-n", &self.host(host).netns, "-j", "mdb", "show"])?;
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let groups = parsed
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|bridge| bridge["mdb"].as_array().cloned().unwrap_or_default())
            .filter_map(|entry| entry["grp"].as_str()?.parse().ok())
            .collect();
        Ok(groups)
    }

    /// Puts an operator's filter that drops every frame on `port`'s `hook`
    /// (see [`crate::operator`]). Returns where a TCX link is pinned:
    /// removing that file detaches it.
    pub fn add_drop_filter(&self, port: &str, hook: operator::Hook, filter: operator::Filter) -> Result<PathBuf> {
        let dir = operator::pin_dir(&self.id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let program = dir.join("drop");
        if !program.exists() {
            operator::pin_drop_program(&program)?;
        }
        let link = dir.join(format!("{port}-{hook:?}-{filter:?}"));
        let (port, target) = (port.to_owned(), link.clone());
        in_netns(&self.bridge_netns, move || operator::attach(&program, &port, hook, filter, &target))??;
        Ok(link)
    }

    /// Brings a host's interface up or down (a cable plugged or pulled).
    pub fn set_host_link(&self, host: &str, up: bool) -> Result<()> {
        run("ip", &["-n", &self.host(host).netns, "link", "set", "eth0", if up { "up" } else { "down" }]).map(drop)
    }

    /// Silences a host's IGMP and MLD: its kernel keeps its groups but no
    /// report or leave gets out (an nftables output rule drops them), its
    /// link stays up. A member that vanished without a word.
    pub fn silence_host(&self, host: &str) -> Result<()> {
        let netns = &self.host(host).netns;
        for command in [
            &["add", "table", "inet", "silence"][..],
            &["add", "chain", "inet", "silence", "out", "{ type filter hook output priority 0; }"],
            &["add", "rule", "inet", "silence", "out", "ip", "protocol", "igmp", "drop"],
            &["add", "rule", "inet", "silence", "out", "icmpv6", "type", "{ 131, 132, 143 }", "drop"],
        ] {
            run("ip", &[&["netns", "exec", netns, "nft"][..], command].concat())?;
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap_or_else(|| panic!("no host {name} in the lab"))
    }

    /// `ip` in the bridge namespace.
    pub fn ip_br(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.bridge_netns.as_str()];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Ifindex of a bridge port (in the bridge namespace).
    pub fn port_ifindex(&self, port: &str) -> Result<u32> {
        let port = port.to_owned();
        in_netns(&self.bridge_netns, move || if_index(&port))?
    }

    /// Starts `snoop run` on the lab's bridge; extra `args` are passed through.
    pub fn start_snoop(&mut self, snoop: &Path, args: &[&str]) -> Result<()> {
        let bridge = self.bridge.clone();
        self.start_snoop_command(snoop, &[&["run", "--bridge", &bridge], args].concat())
    }

    /// Starts `snoop run --bridge BRIDGE ARGS...` with a soft limit of
    /// `open_files` open files (the hard limit as it is).
    pub fn start_snoop_with_open_files(&mut self, snoop: &Path, args: &[&str], open_files: u64) -> Result<()> {
        let bridge = self.bridge.clone();
        let args = [&["run", "--bridge", &bridge], args].concat();
        self.start_snoop_with(snoop, &args, Some(open_files))
    }

    /// Starts `snoop --netns BRIDGE-NETNS ARGS...` (`switch ...`, say), which
    /// must snoop on the lab's bridge.
    pub fn start_snoop_command(&mut self, snoop: &Path, args: &[&str]) -> Result<()> {
        self.start_snoop_with(snoop, args, None)
    }

    /// Starts `WRAPPER... snoop --netns BRIDGE-NETNS run --bridge BRIDGE
    /// ARGS...`: snoop as a service manager would start it, say.
    pub fn start_snoop_wrapped(&mut self, wrapper: &[&str], snoop: &Path, args: &[&str]) -> Result<()> {
        let bridge = self.bridge.clone();
        let args = [&["run", "--bridge", &bridge], args].concat();
        self.start_snoop_with_wrapper(wrapper, snoop, &args, None)
    }

    fn start_snoop_with(&mut self, snoop: &Path, args: &[&str], open_files: Option<u64>) -> Result<()> {
        self.start_snoop_with_wrapper(&[], snoop, args, open_files)
    }

    fn start_snoop_with_wrapper(
        &mut self,
        wrapper: &[&str],
        snoop: &Path,
        args: &[&str],
        open_files: Option<u64>,
    ) -> Result<()> {
        let mut cmd = match wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut cmd = Command::new(program);
                cmd.args(wrapper_args).arg(snoop);
                cmd
            }
            None => Command::new(snoop),
        };
        if let Some(soft) = open_files {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                    libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
                    limit.rlim_cur = soft.min(limit.rlim_max);
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(["--netns", &self.bridge_netns]).args(args);
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        if std::env::var_os("SNOOP_LAB_VERBOSE").is_none() {
            // Appended, so a restarted snoop's log follows the first one's.
            let log = fs::OpenOptions::new().create(true).append(true).open(self.snoop_log())?;
            cmd.stdout(Stdio::null()).stderr(log);
        }
        let child = cmd.spawn().with_context(|| format!("starting {}", snoop.display()))?;
        self.children.push(child);
        self.wait_for_snoop(snoop, Duration::from_secs(20))
    }

    /// Starts `snoop run --bridge BRIDGE ARGS...` and returns as soon as it
    /// answers, without waiting for its first query's answers: the test
    /// acts inside snoop's start window.
    pub fn start_snoop_in_window(&mut self, snoop: &Path, args: &[&str]) -> Result<()> {
        let bridge = self.bridge.clone();
        let mut cmd = Command::new(snoop);
        cmd.args(["--netns", &self.bridge_netns, "run", "--bridge", &bridge]).args(args);
        cmd.env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()));
        let log = fs::OpenOptions::new().create(true).append(true).open(self.snoop_log())?;
        cmd.stdout(Stdio::null()).stderr(log);
        self.children.push(cmd.spawn().with_context(|| format!("starting {}", snoop.display()))?);
        crate::wait_until("snoop answering", Duration::from_secs(20), || Ok(self.snoop_show(snoop, "querier").is_ok()))
    }

    /// Where the lab's snoop processes log (removed with the lab).
    pub fn snoop_log(&self) -> PathBuf {
        std::env::temp_dir().join(format!("{}-snoop.log", self.id))
    }

    /// Process id of the most recently started snoop.
    pub fn snoop_pid(&self) -> Option<u32> {
        self.children.last().map(Child::id)
    }

    /// Waits for the most recently started snoop to exit by itself.
    pub fn wait_snoop_exit(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.children.last_mut().context("no snoop running")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.children.pop();
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("snoop still running after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until `snoop show` answers and, when snoop is the querier, until
    /// its first query has been answered (it prunes nothing before: hosts
    /// report only when queried).
    pub fn wait_for_snoop(&mut self, snoop: &Path, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(querier) = self.snoop_show(snoop, "querier") {
                // No "present": an older snoop. No "mld": MLD snooping is off.
                let ready = |q: &serde_json::Value| q["role"] != "self" || q.get("present").is_none_or(|p| p == true);
                if ready(&querier) && querier.get("mld").is_none_or(ready) {
                    return Ok(());
                }
            }
            if let Some(child) = self.children.last_mut() {
                if let Some(status) = child.try_wait()? {
                    let log = fs::read_to_string(self.snoop_log()).unwrap_or_default();
                    bail!("snoop exited early with {status}; its log:\n{log}");
                }
            }
            if Instant::now() > deadline {
                bail!("snoop did not answer within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `snoop show VIEW --json` against the lab's controller.
    pub fn snoop_show(&self, snoop: &Path, view: &str) -> Result<serde_json::Value> {
        let out = Command::new(snoop)
            .args(["--netns", &self.bridge_netns, "show", view, "--bridge", &self.bridge, "--json"])
            .output()?;
        if !out.status.success() {
            bail!("snoop show {view}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Stops the most recently started snoop: SIGTERM (clean exit) or SIGKILL.
    pub fn stop_snoop(&mut self, kill: bool) -> Result<std::process::ExitStatus> {
        let mut child = self.children.pop().context("no snoop running")?;
        let signal = if kill { libc::SIGKILL } else { libc::SIGTERM };
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, signal) };
        Ok(child.wait()?)
    }

    /// The pin directory a snoop on this lab's bridge uses.
    pub fn pin_dir(&self) -> PathBuf {
        snoop::datapath::default_pin_dir(&self.bridge_netns, &self.bridge)
    }

    /// A socket on `host` joined to `group`; dropping it leaves the group.
    pub fn join(&self, host: &str, group: Ipv4Addr) -> Result<Membership> {
        let host = self.host(host).clone();
        let socket = in_netns(&host.netns, move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            socket.join_multicast_v4(&group, &host.ip)?;
            Ok(socket)
        })??;
        Ok(Membership { _sockets: vec![socket] })
    }

    /// Joins every one of `groups` on `host` (mind the host's
    /// net.ipv4.igmp_max_memberships), 100 per socket: a socket's
    /// memberships count against net.core.optmem_max (20 KiB on Linux 6.1).
    pub fn join_many(&self, host: &str, groups: &[Ipv4Addr]) -> Result<Membership> {
        let host = self.host(host).clone();
        let groups = groups.to_vec();
        let sockets = in_netns(&host.netns, move || -> Result<Vec<UdpSocket>> {
            let mut sockets = Vec::new();
            for chunk in groups.chunks(100) {
                let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
                for group in chunk {
                    socket.join_multicast_v4(group, &host.ip).with_context(|| format!("joining {group}"))?;
                }
                sockets.push(socket);
            }
            Ok(sockets)
        })??;
        Ok(Membership { _sockets: sockets })
    }

    /// A socket on `host` joined to `group` from `source` only (INCLUDE
    /// {source}, an SSM join: MCAST_JOIN_SOURCE_GROUP), or from every
    /// source but it (EXCLUDE {source}: MCAST_JOIN_GROUP, MCAST_BLOCK_SOURCE).
    /// IPv4 or IPv6, on eth0; the host's kernel sends the IGMPv3/MLDv2
    /// records. Dropping it leaves.
    pub fn join_source(&self, host: &str, group: IpAddr, source: IpAddr, filter: SourceJoin) -> Result<Membership> {
        let netns = self.host(host).netns.clone();
        let socket = in_netns(&netns, move || -> Result<UdpSocket> {
            let (socket, level) = match group {
                IpAddr::V4(_) => (UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?, libc::IPPROTO_IP),
                IpAddr::V6(_) => {
                    (UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))?, libc::IPPROTO_IPV6)
                }
            };
            let request = GroupSourceRequest {
                interface: if_index("eth0")?,
                group: sockaddr_storage(group),
                source: sockaddr_storage(source),
            };
            let set = |option: libc::c_int, len: usize| {
                // SAFETY: `request` starts with a group_req and is a whole group_source_req.
                let rc = unsafe {
                    libc::setsockopt(
                        socket.as_raw_fd(),
                        level,
                        option,
                        (&request as *const GroupSourceRequest).cast(),
                        len as u32,
                    )
                };
                if rc == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            };
            match filter {
                SourceJoin::Include => set(MCAST_JOIN_SOURCE_GROUP, size_of::<GroupSourceRequest>())
                    .with_context(|| format!("joining ({source}, {group})"))?,
                SourceJoin::Exclude => {
                    // group_req: the interface and group, padded as in group_source_req.
                    let group_req_len = size_of::<GroupSourceRequest>() - size_of::<libc::sockaddr_storage>();
                    set(MCAST_JOIN_GROUP, group_req_len).with_context(|| format!("joining {group}"))?;
                    set(MCAST_BLOCK_SOURCE, size_of::<GroupSourceRequest>())
                        .with_context(|| format!("blocking {source} of {group}"))?;
                }
            }
            Ok(socket)
        })??;
        Ok(Membership { _sockets: vec![socket] })
    }

    /// `host`'s IPv6 address in an IPv6 lab.
    pub fn host_ipv6(&self, host: &str) -> Ipv6Addr {
        self.host(host).ipv6
    }

    /// A socket on `host` joined to the IPv6 `group` on eth0 (its kernel
    /// sends the MLD); dropping it leaves the group.
    pub fn join_v6(&self, host: &str, group: Ipv6Addr) -> Result<Membership> {
        let (netns, interface) = (self.host(host).netns.clone(), self.host(host).interface.clone());
        let socket = in_netns(&netns, move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))?;
            socket.join_multicast_v6(&group, if_index(&interface)?)?;
            Ok(socket)
        })??;
        Ok(Membership { _sockets: vec![socket] })
    }

    /// Sends `count` UDP packets to the IPv6 `group` from `host`, `interval` apart.
    pub fn send_v6(&self, host: &str, group: Ipv6Addr, count: u64, interval: Duration) -> Result<()> {
        self.sender_v6(host)?.send(group, count, interval)
    }

    /// An IPv6 UDP sender on `host`, out of its eth0.
    pub fn sender_v6(&self, host: &str) -> Result<GroupSender6> {
        let (netns, interface) = (self.host(host).netns.clone(), self.host(host).interface.clone());
        let socket = in_netns(&netns, move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0))?;
            socket.set_multicast_loop_v6(false)?;
            let ifindex = if_index(&interface)? as libc::c_int;
            // SAFETY: valid socket option pointer and length.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::IPPROTO_IPV6,
                    libc::IPV6_MULTICAST_IF,
                    (&ifindex as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error()).context("IPV6_MULTICAST_IF");
            }
            Ok(socket)
        })??;
        Ok(GroupSender6 { socket })
    }

    /// Waits until `host`'s IPv6 addresses have passed duplicate address
    /// detection (its link-local one takes a second or two).
    pub fn wait_ipv6_ready(&self, host: &str, timeout: Duration) -> Result<()> {
        let netns = self.host(host).netns.clone();
        let deadline = Instant::now() + timeout;
        loop {
            let out = run("ip", &["-n", &netns, "-6", "addr", "show", "dev", "eth0", "tentative"])?;
            if out.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{host}'s IPv6 addresses still tentative after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The bridge's link-local IPv6 address, once it has passed DAD.
    pub fn bridge_link_local(&self, timeout: Duration) -> Result<Ipv6Addr> {
        let deadline = Instant::now() + timeout;
        loop {
            let out = run(
                "ip",
                &[
                    "-n",
                    &self.bridge_netns,
                    "-6",
                    "-o",
                    "addr",
                    "show",
                    "dev",
                    &self.bridge,
                    "scope",
                    "link",
                    "-tentative",
                ],
            )?;
            if let Some(addr) = out.split_whitespace().skip_while(|w| *w != "inet6").nth(1) {
                return Ok(addr.split('/').next().unwrap_or_default().parse()?);
            }
            if Instant::now() > deadline {
                bail!("the bridge has no usable link-local address after {timeout:?}");
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts counting the group traffic that reaches `host`'s interface,
    /// joined or not (a packet socket sees what the wire delivered).
    pub fn sniff(&self, host: &str) -> Result<Sniffer> {
        Sniffer::start(&self.host(host).netns, &self.host(host).interface)
    }

    /// Starts counting the group traffic the bridge device itself receives
    /// (what reaches the bridge host's own sockets).
    pub fn sniff_bridge(&self) -> Result<Sniffer> {
        Sniffer::start(&self.bridge_netns, &self.bridge)
    }

    /// Gives the bridge device an address, so its host can join groups.
    pub fn set_bridge_address(&self, addr: Ipv4Addr) -> Result<()> {
        let bridge = self.bridge.clone();
        self.ip_br(&["addr", "add", &format!("{addr}/24"), "dev", &bridge]).map(drop)
    }

    /// A socket of the bridge host joined to `group` on the bridge device
    /// (which needs an address: [`Lab::set_bridge_address`]).
    pub fn join_on_bridge(&self, group: Ipv4Addr, addr: Ipv4Addr) -> Result<Membership> {
        let socket = in_netns(&self.bridge_netns, move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
            socket.join_multicast_v4(&group, &addr)?;
            Ok(socket)
        })??;
        Ok(Membership { _sockets: vec![socket] })
    }

    /// Sends `count` UDP packets to `group` from `host`, `interval` apart.
    pub fn send(&self, host: &str, group: Ipv4Addr, count: u64, interval: Duration) -> Result<()> {
        self.sender(host)?.send(group, count, interval)
    }

    /// A UDP sender on `host` that needs no borrow of the lab (for a thread).
    pub fn sender(&self, host: &str) -> Result<GroupSender> {
        let host = self.host(host).clone();
        let socket = in_netns(&host.netns, move || -> Result<UdpSocket> {
            let socket = UdpSocket::bind(SocketAddrV4::new(host.ip, 0))?;
            socket.set_multicast_loop_v4(false)?;
            set_multicast_if(&socket, host.ip)?;
            Ok(socket)
        })??;
        Ok(GroupSender { socket })
    }

    /// A [`Stream`] of IPv4 `group` from `host` that routers forward (TTL 16).
    pub fn routed_stream(&self, host: &str, group: Ipv4Addr) -> Result<Stream> {
        let sender = self.sender(host)?;
        sender.socket.set_multicast_ttl_v4(16)?;
        Ok(Stream::start(sender.socket, SocketAddrV4::new(group, DATA_PORT).into()))
    }

    /// A [`Stream`] of `group` (IPv4 or IPv6) from `host`, out of its interface.
    pub fn stream(&self, host: &str, group: IpAddr) -> Result<Stream> {
        Ok(match group {
            IpAddr::V4(group) => Stream::start(self.sender(host)?.socket, SocketAddrV4::new(group, DATA_PORT).into()),
            IpAddr::V6(group) => {
                Stream::start(self.sender_v6(host)?.socket, SocketAddrV6::new(group, DATA_PORT, 0, 0).into())
            }
        })
    }

    /// Sends a raw IPv4 packet (from its IP header on) out of `host`'s interface,
    /// to the multicast MAC of its destination address.
    pub fn send_raw_ip(&self, host: &str, ip_packet: &[u8]) -> Result<()> {
        self.raw_sender(host)?.send(ip_packet)
    }

    /// Counts the lab's group traffic (UDP to the data port) arriving at
    /// `host`'s interface, in an nftables ingress hook that sees every way a
    /// frame can arrive. With `drop`, the host is a traffic sink: the packets
    /// stop there, before its IP stack, so in throughput runs the hosts' own
    /// receive work does not compete with the switch for the CPUs.
    pub fn count_udp(&self, host: &str, drop: bool) -> Result<()> {
        let netns = &self.host(host).netns;
        let port = DATA_PORT.to_string();
        let mut rule = vec!["add", "rule", "netdev", SINK_TABLE, "in", "udp", "dport", &port, "counter"];
        if drop {
            rule.push("drop");
        }
        for command in [
            &["add", "table", "netdev", SINK_TABLE][..],
            &["add", "chain", "netdev", SINK_TABLE, "in", "{ type filter hook ingress device eth0 priority 0; }"],
            &rule,
        ] {
            run("ip", &[&["netns", "exec", netns, "nft"][..], command].concat())?;
        }
        Ok(())
    }

    /// Packets [`Lab::count_udp`] has counted at `host`.
    pub fn counted_udp(&self, host: &str) -> Result<u64> {
        let out = run(
            "ip",
            &["netns", "exec", &self.host(host).netns, "nft", "-j", "list", "chain", "netdev", SINK_TABLE, "in"],
        )?;
        let json: serde_json::Value = serde_json::from_str(&out)?;
        json["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|item| item["rule"]["expr"].as_array().cloned().unwrap_or_default())
            .find_map(|expr| expr["counter"]["packets"].as_u64())
            .with_context(|| format!("no nftables counter on {host}"))
    }

    /// A raw IP sender on `host` that needs no borrow of the lab (for a thread).
    pub fn raw_sender(&self, host: &str) -> Result<RawSender> {
        let host = self.host(host).clone();
        in_netns(&host.netns, move || -> Result<RawSender> {
            Ok(RawSender(FrameSender::open(if_index(&host.interface)?)?))
        })?
    }
}

/// Sends raw IPv4 packets out of one host's interface.
pub struct RawSender(FrameSender);

impl RawSender {
    /// Sends `ip_packet` in a frame to the multicast MAC of its destination.
    pub fn send(&self, ip_packet: &[u8]) -> Result<()> {
        Ok(self.0.send(&multicast_frame(ip_packet)?)?)
    }

    /// Sends a whole Ethernet frame as it is.
    pub fn send_frame(&self, frame: &[u8]) -> Result<()> {
        Ok(self.0.send(frame)?)
    }

    /// Sends `ip_packet` as fast as one thread can (sendmmsg of 64 frames,
    /// the qdisc bypassed) until `duration` has passed; returns the frames
    /// sent. A traffic generator far cheaper per packet than a UDP socket, so
    /// what is measured is mostly the switch.
    pub fn blast(&self, ip_packet: &[u8], duration: Duration) -> Result<u64> {
        let frame = multicast_frame(ip_packet)?;
        self.0.bypass_qdisc()?;
        let deadline = Instant::now() + duration;
        let mut sent = 0u64;
        while Instant::now() < deadline {
            // A full transmit path (ENOBUFS) is a frame not sent, not an error.
            sent += self.0.send_copies(&frame, 64).unwrap_or(0) as u64;
        }
        Ok(sent)
    }
}

/// `ip_packet` in an Ethernet frame to the multicast MAC of its destination.
pub fn multicast_frame(ip_packet: &[u8]) -> Result<Vec<u8>> {
    if ip_packet.first().is_some_and(|b| b >> 4 == 6) {
        if ip_packet.len() < 40 {
            bail!("an IPv6 packet needs at least 40 bytes");
        }
        let destination: [u8; 16] = ip_packet[24..40].try_into().expect("16 bytes");
        let mut frame = snoop_common::wire::ipv6_group_mac(&destination).to_vec();
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
        frame.extend_from_slice(&0x86ddu16.to_be_bytes());
        frame.extend_from_slice(ip_packet);
        return Ok(frame);
    }
    if ip_packet.len() < 20 {
        bail!("an IPv4 packet needs at least 20 bytes");
    }
    let destination: [u8; 4] = ip_packet[16..20].try_into().expect("4 bytes");
    let mut frame = snoop_common::wire::ipv4_group_mac(destination).to_vec();
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    frame.extend_from_slice(ip_packet);
    Ok(frame)
}

/// An IPv4 UDP packet (TTL 1) from `source` to `group`'s data port with
/// `payload` bytes: the lab's group traffic, for raw senders.
pub fn udp_packet(source: Ipv4Addr, group: Ipv4Addr, payload: usize) -> Vec<u8> {
    let total = 20 + 8 + payload;
    let mut packet = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 1, 17, 0, 0];
    packet[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&group.octets());
    let sum = internet_checksum(&packet);
    packet[10..12].copy_from_slice(&sum.to_be_bytes());
    packet.extend_from_slice(&DATA_PORT.to_be_bytes());
    packet.extend_from_slice(&DATA_PORT.to_be_bytes());
    packet.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    packet.extend_from_slice(&[0, 0]); // no UDP checksum
    packet.resize(total, 0x5a);
    packet
}

/// An IGMPv3 query (IP packet) from `source`, as a router on a lab host would
/// send it: general when `group` is `None`, answers within 1 s, QRV 2, QQIC 2 s.
pub fn igmp_query_packet(source: Ipv4Addr, group: Option<Ipv4Addr>) -> Vec<u8> {
    let timers = snoop::proto::QueryTimers {
        max_response: Duration::from_secs(1),
        robustness: 2,
        query_interval: Duration::from_secs(2),
    };
    snoop::proto::igmp::build_query_frame(
        snoop::proto::QuerySource { mac: [2, 0, 0, 0, 0, 0x51], address: source },
        group,
        &[],
        3,
        &timers,
        false,
    )[14..]
        .to_vec()
}

/// An IPv4 packet (TTL 1, Router Alert) holding an IGMPv3 report with one
/// MODE_IS_EXCLUDE({}) record per group: what a host sends to join them.
pub fn v3_report_packet(source: Ipv4Addr, groups: &[Ipv4Addr]) -> Vec<u8> {
    v3_records_packet(source, 2, groups)
}

/// An IGMPv3 report from `source` with one record of `record_type`
/// (RFC 3376 4.2.12: 2 MODE_IS_EXCLUDE, 3 CHANGE_TO_INCLUDE, ...) and no
/// sources per group.
pub fn v3_records_packet(source: Ipv4Addr, record_type: u8, groups: &[Ipv4Addr]) -> Vec<u8> {
    let mut igmp = vec![0x22, 0, 0, 0, 0, 0];
    igmp.extend_from_slice(&(groups.len() as u16).to_be_bytes());
    for group in groups {
        igmp.extend_from_slice(&[record_type, 0, 0, 0]);
        igmp.extend_from_slice(&group.octets());
    }
    control_packet(2, source, Ipv4Addr::new(224, 0, 0, 22), igmp)
}

/// An IPv4 packet (TTL 1, Router Alert) of `protocol` (IGMP, PIM) holding
/// `message`, whose checksum (bytes 2-3) is filled in.
pub fn control_packet(protocol: u8, source: Ipv4Addr, destination: Ipv4Addr, mut message: Vec<u8>) -> Vec<u8> {
    message[2..4].fill(0);
    let sum = internet_checksum(&message);
    message[2..4].copy_from_slice(&sum.to_be_bytes());
    let total = (24 + message.len()) as u16;
    let mut ip = vec![0x46, 0xc0, 0, 0, 0, 0, 0, 0, 1, protocol, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&source.octets());
    ip.extend_from_slice(&destination.octets());
    ip.extend_from_slice(&[0x94, 0x04, 0, 0]);
    let sum = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    ip.extend_from_slice(&message);
    ip
}

impl Drop for Lab {
    fn drop(&mut self) {
        for mut daemon in self.daemons.drain(..) {
            let _ = daemon.kill();
            let _ = daemon.wait();
        }
        for netns in &self.extra_netns {
            let _ = run("ip", &["netns", "del", netns]);
        }
        for file in &self.files {
            let _ = if file.is_dir() { fs::remove_dir_all(file) } else { fs::remove_file(file) };
        }
        for mut child in self.children.drain(..) {
            // SAFETY: signalling our own child; SIGTERM lets snoop detach cleanly.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for host in &self.hosts {
            let _ = run("ip", &["netns", "del", &host.netns]);
        }
        let _ = run("ip", &["netns", "del", &self.bridge_netns]);
        let _ = snoop::datapath::remove_pin_dir(&self.pin_dir());
        operator::remove_pins(&operator::pin_dir(&self.id));
        let _ = fs::remove_file(self.snoop_log());
    }
}

/// Deletes namespaces and pins left by labs whose process was killed.
pub fn remove_stale_labs() -> Result<usize> {
    let listing = run("ip", &["netns", "list"])?;
    let mut removed = 0;
    for line in listing.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        if is_stale_lab(name) {
            let _ = run("ip", &["netns", "del", name]);
            removed += 1;
        }
    }
    for pins in ["/sys/fs/bpf/snoop", operator::PIN_ROOT] {
        for entry in fs::read_dir(pins).into_iter().flatten().flatten() {
            if is_stale_lab(&entry.file_name().to_string_lossy()) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(removed)
}

/// A lab namespace (`PREFIX-TAG-PID-NODE`) whose owning process is gone: a
/// lab of a run still going (tests and a demo at once) is left alone.
fn is_stale_lab(name: &str) -> bool {
    if !name.starts_with(NS_PREFIX) {
        return false;
    }
    let owner = name.rsplit('-').nth(1).and_then(|pid| pid.parse::<u32>().ok());
    owner.is_none_or(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Sends group traffic to the lab's data port from one host.
/// A steady stream of group traffic, one packet every 5 ms from a socket
/// of its own, until dropped.
pub struct Stream {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Stream {
    /// Streams from `socket` (bound, its multicast interface and TTL set) to `to`.
    pub fn start(socket: UdpSocket, to: SocketAddr) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = socket.send_to(b"stream", to);
                    thread::sleep(Duration::from_millis(5));
                }
            })
        };
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

pub struct GroupSender {
    socket: UdpSocket,
}

impl GroupSender {
    /// Sends to `group` as fast as one thread can (sendmmsg, 64 per call)
    /// until `duration` has passed; returns the packets sent.
    pub fn blast(&self, group: Ipv4Addr, duration: Duration) -> Result<u64> {
        self.socket.connect(SocketAddrV4::new(group, DATA_PORT))?;
        blast_connected(&self.socket, duration)
    }

    /// Sends one packet to `group`'s data port carrying `payload`.
    pub fn send_payload(&self, group: Ipv4Addr, payload: &[u8]) -> Result<()> {
        self.socket.send_to(payload, SocketAddrV4::new(group, DATA_PORT))?;
        Ok(())
    }

    pub fn send(&self, group: Ipv4Addr, count: u64, interval: Duration) -> Result<()> {
        let payload = [0x5au8; 64];
        for _ in 0..count {
            self.socket.send_to(&payload, SocketAddrV4::new(group, DATA_PORT))?;
            if !interval.is_zero() {
                thread::sleep(interval);
            }
        }
        Ok(())
    }
}

/// Sends 64-byte packets on a connected socket as fast as one thread can
/// (sendmmsg, 64 per call) until `duration` has passed; returns the packets sent.
fn blast_connected(socket: &UdpSocket, duration: Duration) -> Result<u64> {
    let payload = [0x5au8; 64];
    let mut iov = libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() };
    let mut messages: Vec<libc::mmsghdr> = (0..64)
        .map(|_| {
            // SAFETY: an all-zero mmsghdr is valid; the iovec outlives the calls.
            let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
            m
        })
        .collect();
    let deadline = Instant::now() + duration;
    let mut sent = 0u64;
    while Instant::now() < deadline {
        // SAFETY: `messages` holds 64 initialised headers.
        let n = unsafe { libc::sendmmsg(socket.as_raw_fd(), messages.as_mut_ptr(), 64, 0) };
        if n > 0 {
            sent += n as u64;
        }
    }
    Ok(sent)
}

/// Sends IPv6 group traffic to the lab's data port from one host.
pub struct GroupSender6 {
    socket: UdpSocket,
}

impl GroupSender6 {
    pub fn send(&self, group: Ipv6Addr, count: u64, interval: Duration) -> Result<()> {
        let payload = [0x5au8; 64];
        for _ in 0..count {
            self.socket.send_to(&payload, SocketAddrV6::new(group, DATA_PORT, 0, 0))?;
            if !interval.is_zero() {
                thread::sleep(interval);
            }
        }
        Ok(())
    }

    /// As [`GroupSender::blast`], to an IPv6 group.
    pub fn blast(&self, group: Ipv6Addr, duration: Duration) -> Result<u64> {
        self.socket.connect(SocketAddrV6::new(group, DATA_PORT, 0, 0))?;
        blast_connected(&self.socket, duration)
    }
}

/// An IPv6 packet around an MLD-family ICMPv6 `message` (whose checksum
/// this fills in): hop limit 1, Router Alert in a hop-by-hop header, as a
/// host's kernel sends it.
pub fn mld_packet(source: Ipv6Addr, destination: Ipv6Addr, message: Vec<u8>) -> Vec<u8> {
    snoop::proto::mld::ip_packet(source, destination, message)
}

/// An IPv6 UDP packet (hop limit 1) from `source` to `group`'s data port
/// with `payload` bytes: IPv6 group traffic, for raw senders.
pub fn udp6_packet(source: Ipv6Addr, group: Ipv6Addr, payload: usize) -> Vec<u8> {
    let udp_len = (8 + payload) as u16;
    let mut udp = vec![0x13, 0x89];
    udp.extend_from_slice(&DATA_PORT.to_be_bytes());
    udp.extend_from_slice(&udp_len.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend(std::iter::repeat_n(0x5a, payload));
    let sum = snoop::proto::mld::upper_layer_checksum(source, group, 17, &udp);
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    let mut packet = vec![0x60, 0, 0, 0];
    packet.extend_from_slice(&udp_len.to_be_bytes());
    packet.extend_from_slice(&[17, 1]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&group.octets());
    packet.extend_from_slice(&udp);
    packet
}

/// An MLDv1 report for `group` from `source`.
pub fn mld_v1_report_packet(source: Ipv6Addr, group: Ipv6Addr) -> Vec<u8> {
    let mut message = vec![131, 0, 0, 0, 0, 0, 0, 0];
    message.extend_from_slice(&group.octets());
    mld_packet(source, group, message)
}

/// How [`Lab::join_source`] names its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceJoin {
    /// Only this source.
    Include,
    /// Every source but this one.
    Exclude,
}

// linux/in.h: protocol-independent multicast source filter options (RFC 3678).
const MCAST_JOIN_GROUP: libc::c_int = 42;
const MCAST_BLOCK_SOURCE: libc::c_int = 43;
const MCAST_JOIN_SOURCE_GROUP: libc::c_int = 46;

/// struct group_source_req (linux/in.h): the sockaddrs are 8-aligned.
#[repr(C)]
struct GroupSourceRequest {
    interface: u32,
    group: libc::sockaddr_storage,
    source: libc::sockaddr_storage,
}

fn sockaddr_storage(addr: IpAddr) -> libc::sockaddr_storage {
    // SAFETY: an all-zero sockaddr_storage is valid; the writes below stay inside it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        IpAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            let sin = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as u16;
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
        }
        IpAddr::V6(v6) => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as u16;
            sin6.sin6_addr.s6_addr = v6.octets();
        }
    }
    storage
}

/// Keeps a group joined while alive.
pub struct Membership {
    _sockets: Vec<UdpSocket>,
}

/// What a sniffer counted: UDP packets to the data port by group, and IGMP
/// queries by source address.
#[derive(Default)]
struct SniffCounts {
    data: HashMap<IpAddr, u64>,
    /// Data by (source, group).
    data_from: HashMap<(IpAddr, IpAddr), u64>,
    /// IGMP and MLD queries by source.
    queries: HashMap<IpAddr, u64>,
    /// IGMP queries by source MAC.
    query_macs: HashMap<[u8; 6], u64>,
    /// Reports and leaves (of other hosts: a host's own are outgoing).
    reports: u64,
    /// Queries by source and version (by length, RFC 3376 7.1, RFC 3810 8.1).
    query_versions: HashMap<(IpAddr, u8), u64>,
    /// MLD reports and dones (of other hosts).
    mld_reports: u64,
    /// Reports and leaves the host sent, by IGMP type.
    sent_reports: HashMap<u8, u64>,
}

/// Counts the group traffic and IGMP queries arriving at a host's eth0.
pub struct Sniffer {
    counts: Arc<Mutex<SniffCounts>>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

/// A packet socket seeing every frame in and out of an interface; reads
/// time out after `timeout` so a reader can check for a stop request.
pub fn capture_socket(netns: &str, interface: &str, timeout: Duration) -> Result<OwnedFd> {
    let interface = interface.to_owned();
    let fd = in_netns(netns, move || -> Result<OwnedFd> {
        let fd = packet_socket((libc::ETH_P_ALL as u16).to_be())?;
        bind_packet_socket(&fd, if_index(&interface)?)?;
        Ok(fd)
    })??;
    let timeout = libc::timeval { tv_sec: 0, tv_usec: timeout.as_micros().min(999_999) as libc::suseconds_t };
    // SAFETY: valid socket option pointer and length.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("SO_RCVTIMEO");
    }
    Ok(fd)
}

impl Sniffer {
    fn start(netns: &str, interface: &str) -> Result<Self> {
        let fd = capture_socket(netns, interface, Duration::from_millis(50))?;
        let counts = Arc::new(Mutex::new(SniffCounts::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (counts, stop) = (counts.clone(), stop.clone());
            thread::spawn(move || sniff_loop(fd, counts, stop))
        };
        Ok(Self { counts, stop, thread: Some(thread) })
    }

    /// Packets to `group` received so far.
    pub fn count(&self, group: impl Into<IpAddr>) -> u64 {
        self.counts.lock().expect("sniffer lock").data.get(&group.into()).copied().unwrap_or(0)
    }

    /// Packets to `group` from `source` received so far.
    pub fn count_from(&self, source: impl Into<IpAddr>, group: impl Into<IpAddr>) -> u64 {
        let counts = self.counts.lock().expect("sniffer lock");
        counts.data_from.get(&(source.into(), group.into())).copied().unwrap_or(0)
    }

    /// MLD reports and dones received so far.
    pub fn mld_reports(&self) -> u64 {
        self.counts.lock().expect("sniffer lock").mld_reports
    }

    /// IGMP reports and leaves received so far.
    pub fn reports(&self) -> u64 {
        self.counts.lock().expect("sniffer lock").reports
    }

    /// IGMP queries from `source` received so far.
    pub fn queries_from(&self, source: impl Into<IpAddr>) -> u64 {
        self.counts.lock().expect("sniffer lock").queries.get(&source.into()).copied().unwrap_or(0)
    }

    /// IGMP queries of `version` from `source` received so far.
    pub fn queries_of_version(&self, source: impl Into<IpAddr>, version: u8) -> u64 {
        let key = (source.into(), version);
        self.counts.lock().expect("sniffer lock").query_versions.get(&key).copied().unwrap_or(0)
    }

    /// Reports (or leaves) of IGMP type `igmp_type` the host sent so far.
    pub fn sent_reports(&self, igmp_type: u8) -> u64 {
        self.counts.lock().expect("sniffer lock").sent_reports.get(&igmp_type).copied().unwrap_or(0)
    }

    /// IGMP queries from the MAC `mac` received so far.
    pub fn queries_from_mac(&self, mac: [u8; 6]) -> u64 {
        self.counts.lock().expect("sniffer lock").query_macs.get(&mac).copied().unwrap_or(0)
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn sniff_loop(fd: OwnedFd, counts: Arc<Mutex<SniffCounts>>, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut addr_len = size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: valid buffers and lengths.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut addr as *mut libc::sockaddr_ll).cast(),
                &mut addr_len,
            )
        };
        if n < 0 {
            continue; // timeout: check the stop flag
        }
        let frame = &buf[..n as usize];
        if frame.len() >= 14 + 48 && frame[12..14] == [0x86, 0xdd] {
            if addr.sll_pkttype != libc::PACKET_OUTGOING {
                count_ipv6(frame, &mut counts.lock().expect("sniffer lock"));
            }
            continue;
        }
        if frame.len() < 14 + 28 || frame[12..14] != [0x08, 0x00] {
            continue;
        }
        let header_len = usize::from(frame[14] & 0x0f) * 4;
        let (protocol, l4) = (frame[14 + 9], 14 + header_len);
        if addr.sll_pkttype == libc::PACKET_OUTGOING {
            if let (2, Some(&igmp_type)) = (protocol, frame.get(l4)) {
                *counts.lock().expect("sniffer lock").sent_reports.entry(igmp_type).or_default() += 1;
            }
            continue;
        }
        let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
        let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
        let mut counts = counts.lock().expect("sniffer lock");
        match (protocol, frame.get(l4..l4 + 4)) {
            (17, Some(udp)) if u16::from_be_bytes([udp[2], udp[3]]) == DATA_PORT => {
                *counts.data.entry(dst.into()).or_default() += 1;
                *counts.data_from.entry((src.into(), dst.into())).or_default() += 1;
            }
            (2, Some(igmp)) if igmp[0] == 0x11 => {
                *counts.queries.entry(src.into()).or_default() += 1;
                let igmp_len = usize::from(u16::from_be_bytes([frame[16], frame[17]])).saturating_sub(header_len);
                let version = if igmp_len >= 12 {
                    3
                } else if igmp[1] == 0 {
                    1
                } else {
                    2
                };
                *counts.query_versions.entry((src.into(), version)).or_default() += 1;
                let mac: [u8; 6] = frame[6..12].try_into().expect("6 bytes");
                *counts.query_macs.entry(mac).or_default() += 1;
            }
            (2, Some(igmp)) if matches!(igmp[0], 0x12 | 0x16 | 0x17 | 0x22) => counts.reports += 1,
            _ => {}
        }
    }
}

/// Counts an incoming IPv6 frame: UDP to the data port by group, MLD
/// queries by source and version, MLD reports.
fn count_ipv6(frame: &[u8], counts: &mut SniffCounts) {
    let ip = &frame[14..];
    let src = IpAddr::from(<[u8; 16]>::try_from(&ip[8..24]).expect("16 bytes"));
    let dst = IpAddr::from(<[u8; 16]>::try_from(&ip[24..40]).expect("16 bytes"));
    let payload_len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    let (mut next, mut at) = (ip[6], 40);
    // Past a hop-by-hop header (MLD's Router Alert).
    if next == 0 {
        let Some(head) = ip.get(at..at + 2) else { return };
        next = head[0];
        at += (usize::from(head[1]) + 1) * 8;
    }
    let Some(l4) = ip.get(at..) else { return };
    match (next, l4) {
        (17, [_, _, port_high, port_low, ..]) if u16::from_be_bytes([*port_high, *port_low]) == DATA_PORT => {
            *counts.data.entry(dst).or_default() += 1;
            *counts.data_from.entry((src, dst)).or_default() += 1;
        }
        (58, [130, ..]) => {
            *counts.queries.entry(src).or_default() += 1;
            let version = if (payload_len + 40).saturating_sub(at) >= 28 { 2 } else { 1 };
            *counts.query_versions.entry((src, version)).or_default() += 1;
        }
        (58, [131 | 132 | 143, ..]) => counts.mld_reports += 1,
        _ => {}
    }
}

/// Runs `f` on a thread that has entered network namespace `netns`. Sockets
/// made there stay in that namespace for their whole life.
pub fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let path = format!("/run/netns/{netns}");
    let netns = netns.to_owned();
    let ns = fs::File::open(&path).with_context(|| format!("opening {path}"))?;
    thread::spawn(move || -> Result<T> {
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error()).context("setns");
        }
        Ok(f())
    })
    .join()
    .map_err(|panic| {
        let message = panic.downcast_ref::<String>().map(String::as_str).or(panic.downcast_ref::<&str>().copied());
        anyhow::anyhow!("in network namespace {netns}: {}", message.unwrap_or("panicked"))
    })?
}

/// Writes /proc/sys/net/`key` in `netns`.
pub fn write_sysctl(netns: &str, key: &str, value: &str) -> Result<()> {
    let path = format!("/proc/sys/net/{key}");
    let value = value.to_owned();
    in_netns(netns, move || fs::write(&path, value).with_context(|| format!("writing {path}")))?
}

/// IPv6 off in lab namespaces: no MLD or DAD noise in the counts.
/// A new host namespace; IPv6 off in it unless the lab has IPv6.
fn new_host_netns(netns: &str, options: &LabOptions) -> Result<()> {
    run("ip", &["netns", "add", netns])?;
    if !options.ipv6 {
        quiet_ipv6(netns)?;
    }
    Ok(())
}

/// A host's eth0 as every lab host's: its addresses, up, the forced
/// IGMP/MLD versions, and quick unsolicited reports so joins settle fast.
fn configure_host(netns: &str, ip: Ipv4Addr, ipv6: Ipv6Addr, options: &LabOptions) -> Result<()> {
    run("ip", &["-n", netns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"])?;
    run("ip", &["-n", netns, "link", "set", "eth0", "up"])?;
    run("ip", &["-n", netns, "link", "set", "lo", "up"])?;
    if let Some(version) = options.igmp_version {
        write_sysctl(netns, "ipv4/conf/eth0/force_igmp_version", &version.to_string())?;
    }
    write_sysctl(netns, "ipv4/conf/eth0/igmpv2_unsolicited_report_interval", "200")?;
    write_sysctl(netns, "ipv4/conf/eth0/igmpv3_unsolicited_report_interval", "200")?;
    if options.ipv6 {
        run("ip", &["-n", netns, "-6", "addr", "add", &format!("{ipv6}/64"), "dev", "eth0", "nodad"])?;
        if let Some(version) = options.mld_version {
            write_sysctl(netns, "ipv6/conf/eth0/force_mld_version", &version.to_string())?;
        }
        write_sysctl(netns, "ipv6/conf/eth0/mldv1_unsolicited_report_interval", "200")?;
        write_sysctl(netns, "ipv6/conf/eth0/mldv2_unsolicited_report_interval", "200")?;
    }
    Ok(())
}

fn quiet_ipv6(netns: &str) -> Result<()> {
    write_sysctl(netns, "ipv6/conf/all/disable_ipv6", "1")?;
    write_sysctl(netns, "ipv6/conf/default/disable_ipv6", "1")
}

pub fn if_index(name: &str) -> Result<u32> {
    let cname = CString::new(name)?;
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        bail!("no interface {name}");
    }
    Ok(index)
}

fn packet_socket(protocol_be: u16) -> Result<OwnedFd> {
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(protocol_be)) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("packet socket");
    }
    // SAFETY: fresh fd.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind_packet_socket(fd: &OwnedFd, ifindex: u32) -> Result<()> {
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: valid address and length.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32)
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("binding packet socket");
    }
    Ok(())
}

fn set_multicast_if(socket: &UdpSocket, addr: Ipv4Addr) -> Result<()> {
    let value = libc::in_addr { s_addr: u32::from_ne_bytes(addr.octets()) };
    // SAFETY: valid option pointer and length.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            (&value as *const libc::in_addr).cast(),
            size_of::<libc::in_addr>() as u32,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error()).context("IP_MULTICAST_IF");
    }
    Ok(())
}

/// Runs a command, returning stdout; stderr goes into the error.
pub fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program).args(args).output().with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use snoop::proto::{igmp::parse, Message, RecordType};

    #[test]
    fn v3_report_packet_parses_as_joins() {
        let groups = [Ipv4Addr::new(239, 1, 1, 1), Ipv4Addr::new(239, 2, 2, 2)];
        let packet = parse(&v3_report_packet(Ipv4Addr::new(10, 99, 0, 10), &groups)).unwrap();
        let Message::RecordReport { records, .. } = packet.message else { panic!("not a v3 report") };
        assert_eq!(records.iter().map(|r| r.group).collect::<Vec<_>>(), groups);
        assert!(records.iter().all(|r| r.record_type == RecordType::ModeIsExclude));
    }

    #[test]
    fn only_labs_of_finished_runs_are_stale() {
        let me = std::process::id();
        assert!(!is_stale_lab(&format!("{NS_PREFIX}-demo-{me}-br")), "this process's own lab");
        assert!(!is_stale_lab(&format!("{NS_PREFIX}-tput-{me}-h7")));
        // pid_max is at most 2^22: no process has this pid.
        assert!(is_stale_lab(&format!("{NS_PREFIX}-demo-99999999-br")));
        assert!(is_stale_lab(&format!("{NS_PREFIX}-garbled")));
        assert!(!is_stale_lab("production-netns"));
    }
}
