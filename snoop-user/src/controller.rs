//! `snoop run`: ties the data path, the membership state machine, the querier
//! and the bridge together in one tokio task.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io,
    net::Ipv4Addr,
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use aya::maps::{MapData, RingBuf};
use futures::{FutureExt as _, StreamExt as _};
use log::{debug, info, warn};
use snoop_common::{
    CapturedFrame, Counter, CONFIG_FLOOD_UNREGISTERED, CONFIG_REDIRECT, PORT_ROUTER, RESTORE_KERNEL_SNOOPING,
};
use tokio::{
    io::{unix::AsyncFd, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{TcpListener, UnixListener, UnixStream},
    signal::unix::{signal, SignalKind},
    sync::{broadcast, mpsc, oneshot},
    time::Instant,
};

use crate::{
    bridge::{local_groups, Bridge, Netlink, Port},
    datapath::{monotonic_now_ns, CopyTarget, Datapath},
    frame_sender::FrameSender,
    igmp,
    membership::RemoveReason,
    membership::{Action, PortOptions, Snooper, Timers},
    metrics,
    snapshot::{Event, EventKind, GroupView, MemberView, PortView, QuerierView, Snapshot, TrafficView},
};

/// A request for the current state, answered by the controller loop.
pub(crate) struct SnapshotRequest {
    /// Without groups and traffic: the counters and querier only, cheap
    /// however many groups there are.
    pub counters_only: bool,
    pub reply: oneshot::Sender<std::sync::Arc<Snapshot>>,
}

/// Everything `snoop run` is told.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub bridge: String,
    pub timers: Timers,
    pub querier: bool,
    /// Source of our queries; default: the bridge's IPv4 address, else 0.0.0.0.
    pub query_source: Option<Ipv4Addr>,
    pub static_router_ports: Vec<String>,
    /// Port names with fast leave, or "all".
    pub fast_leave_ports: Vec<String>,
    /// Ports whose queries and PIM hellos count, or "all".
    pub trusted_ports: Vec<String>,
    /// Most groups one port may join (0: no limit).
    pub max_groups_per_port: usize,
    /// Control frames per second per port handed to the controller (0: no limit).
    pub control_rate_limit: u32,
    /// Flood instead of pruning when the controller is gone this long.
    pub failsafe_after: Option<Duration>,
    pub forwarding: Forwarding,
    pub flood_unregistered: bool,
    pub pin_dir: PathBuf,
    pub keep_state: bool,
    pub port_scan_interval: Duration,
    /// Serve Prometheus metrics on this address.
    pub metrics: Option<std::net::SocketAddr>,
}

/// How group traffic reaches member ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Forwarding {
    /// The sender's port copies registered groups straight to member and
    /// router ports (TC redirect); the bridge never clones them for other ports.
    Redirect,
    /// The bridge floods; each port's egress drops what it has no member for.
    Bridge,
}

/// Abstract unix socket of the controller for `bridge`: per network namespace,
/// nothing to clean up in the file system.
pub fn control_socket_name(bridge: &str) -> String {
    format!("snoop/{bridge}")
}

pub async fn run(config: RunConfig) -> Result<()> {
    // Everything that can fail without side effects comes first.
    let netlink = Netlink::open()?;
    let bridge = netlink.bridge(&config.bridge).await?;
    // Binding first also stops a second snoop before it touches the pinned state.
    let listener = bind_control_socket(&bridge.name)?;
    // Queries leave through the bridge device, which floods them to every port.
    let query_socket = FrameSender::open(bridge.ifindex).context("opening a packet socket for queries")?;
    let own_address = match config.query_source {
        Some(addr) => addr,
        None => netlink.bridge_ipv4(&bridge).await?.unwrap_or(Ipv4Addr::UNSPECIFIED),
    };
    let kernel_snooping_on = netlink.kernel_snooping(&bridge).await?;

    let (mut datapath, resumed) = Datapath::load(&config.pin_dir)?;
    if kernel_snooping_on {
        info!("turning off {}'s own multicast snooping while snoop runs", bridge.name);
        let turned_off = match datapath.add_restore_flags(RESTORE_KERNEL_SNOOPING) {
            Ok(()) => netlink.set_kernel_snooping(&bridge, false).await,
            Err(error) => Err(error),
        };
        if let Err(error) = turned_off {
            // Leave state a previous snoop pinned as it was; remove our own.
            let _ = datapath.shutdown(resumed);
            return Err(error);
        }
    }
    let start = Instant::now();
    let snooper = Snooper::new(config.timers.clone(), config.querier, own_address, Duration::ZERO);
    let mut controller = Controller {
        config,
        bridge,
        netlink,
        datapath,
        snooper,
        start,
        port_names: BTreeMap::new(),
        query_socket,
        stats: BTreeMap::new(),
        port_malformed: BTreeMap::new(),
        events: broadcast::channel(4096).0,
        redirect: false,
        local_groups: BTreeSet::new(),
    };
    let result = controller.run(listener, resumed).await;

    let keep_state = controller.config.keep_state && result.is_ok();
    let Controller { datapath, netlink, bridge, .. } = controller;
    let restore = datapath.restore_flags();
    let shutdown = datapath.shutdown(keep_state);
    if !keep_state && netlink.bridge_exists(&bridge).await.unwrap_or(false) {
        restore_bridge_settings(&netlink, &bridge, restore).await;
    }
    result.and(shutdown)
}

/// `snoop cleanup`: removes what a `--keep-state` exit left pinned and puts
/// back the bridge settings snoop had changed.
pub async fn cleanup(bridge: &str, pin_dir: &std::path::Path) -> Result<()> {
    let restore = crate::datapath::pinned_restore_flags(pin_dir)?;
    crate::datapath::remove_pin_dir(pin_dir)?;
    if restore != 0 {
        let netlink = Netlink::open()?;
        let bridge = netlink.bridge(bridge).await?;
        restore_bridge_settings(&netlink, &bridge, restore).await;
    }
    Ok(())
}

async fn restore_bridge_settings(netlink: &Netlink, bridge: &Bridge, restore: u32) {
    if restore & RESTORE_KERNEL_SNOOPING != 0 {
        match netlink.set_kernel_snooping(bridge, true).await {
            Ok(()) => info!("turned {}'s own multicast snooping back on", bridge.name),
            Err(error) => warn!("{error:#}"),
        }
    }
}

struct Controller {
    config: RunConfig,
    bridge: Bridge,
    netlink: Netlink,
    datapath: Datapath,
    snooper: Snooper,
    start: Instant,
    port_names: BTreeMap<u32, String>,
    query_socket: FrameSender,
    /// Controller-side counters (parse errors, events handled, map errors).
    stats: BTreeMap<String, u64>,
    /// Malformed control frames per port.
    port_malformed: BTreeMap<u32, u64>,
    /// Membership events for `snoop watch` clients.
    events: broadcast::Sender<Event>,
    /// Redirect mode is in effect.
    redirect: bool,
    /// Groups the bridge's own host has joined (redirect mode copies them to it).
    local_groups: BTreeSet<Ipv4Addr>,
}

impl Controller {
    async fn run(&mut self, listener: UnixListener, resumed: bool) -> Result<()> {
        if self.config.forwarding == Forwarding::Redirect {
            match self.netlink.redirect_obstacle(&self.bridge).await? {
                Some(why) => {
                    warn!("{why} on {}: forwarding through the bridge instead of redirecting", self.bridge.name)
                }
                None => self.redirect = true,
            }
        }
        let mut flags = if self.config.flood_unregistered { CONFIG_FLOOD_UNREGISTERED } else { 0 };
        if self.redirect {
            flags |= CONFIG_REDIRECT;
        }
        // Heartbeats come with every port scan; three missed ones end hand-overs.
        let handover = (self.config.port_scan_interval * 3).max(Duration::from_secs(1));
        self.datapath.configure(flags, self.config.failsafe_after, handover, self.config.control_rate_limit)?;
        self.sync_ports().await?;
        if resumed {
            self.resume_memberships();
        }
        self.refresh_local_groups();
        self.refresh_fanout(BTreeSet::new(), true);
        let ports: Vec<u32> = self.port_names.keys().copied().collect();
        self.datapath.remove_stale_link_pins(&ports)?;

        let ring = self.datapath.take_events().context("event ring already taken")?;
        // SAFETY: the ring owns its fd and keeps it open while registered.
        let mut events =
            unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("watching the event ring: {e}"))?;
        let mut sigint = signal(SignalKind::interrupt())?;
        let mut sigterm = signal(SignalKind::terminate())?;
        let mut port_scan = tokio::time::interval(self.config.port_scan_interval);
        let mut link_changes = match Netlink::link_changes() {
            Ok(changes) => Some(changes),
            Err(e) => {
                warn!("{e:#}; ports are rescanned every {:?} only", self.config.port_scan_interval);
                None
            }
        };
        let (snapshot_requests, mut snapshot_queue) = mpsc::channel::<SnapshotRequest>(64);
        if let Some(addr) = self.config.metrics {
            let metrics_listener =
                TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?;
            info!("serving Prometheus metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(metrics_listener, snapshot_requests.clone()));
        }
        info!(
            "snooping on {} ({} ports){}; querier {}",
            self.bridge.name,
            self.port_names.len(),
            if resumed { ", resumed from pinned state" } else { "" },
            if self.config.querier {
                format!("on, source {}", self.snooper.querier().own_address)
            } else {
                "off".into()
            },
        );

        loop {
            let now = self.now();
            let actions = self.snooper.poll(now);
            self.apply(actions);
            let deadline = self
                .snooper
                .next_deadline()
                .map(|at| self.start + at)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));

            tokio::select! {
                guard = events.readable_mut() => {
                    let mut guard = guard?;
                    self.drain_events(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = tokio::time::sleep_until(deadline) => {}
                Some(()) = async { link_changes.as_mut().expect("guarded").next().await }, if link_changes.is_some() => {
                    // A burst of changes (a container starting) is one rescan.
                    while let Some(Some(())) = link_changes.as_mut().and_then(|c| c.next().now_or_never()) {}
                    self.sync_ports().await?;
                }
                _ = port_scan.tick() => {
                    self.sync_ports().await?;
                    self.refresh_local_groups();
                    self.datapath.heartbeat()?;
                }
                accepted = listener.accept() => {
                    if let Ok((stream, _)) = accepted {
                        // Clients are served on their own tasks: a slow one never stalls snooping.
                        tokio::spawn(serve_client(stream, snapshot_requests.clone(), self.events.clone()));
                    }
                }
                Some(request) = snapshot_queue.recv() => {
                    let _ = request.reply.send(std::sync::Arc::new(self.snapshot(request.counters_only)));
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
            }
        }
        info!("stopping{}", if self.config.keep_state { ", keeping the data path and its state pinned" } else { "" });
        Ok(())
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn count(&mut self, name: &str) {
        match self.stats.get_mut(name) {
            Some(value) => *value += 1,
            None => {
                self.stats.insert(name.to_owned(), 1);
            }
        }
    }

    fn drain_events(&mut self, ring: &mut RingBuf<MapData>) {
        let header_len = std::mem::offset_of!(CapturedFrame, data);
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < header_len {
                drop(item);
                self.count("events_short");
                continue;
            }
            let ifindex = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
            let captured = usize::from(u16::from_ne_bytes(bytes[4..6].try_into().expect("2 bytes")));
            let data = &bytes[header_len..(header_len + captured).min(bytes.len())];
            let parsed = igmp::parse(data);
            drop(item);
            self.count("events");
            match parsed {
                Ok(packet) => {
                    debug!("port {ifindex}: {packet:?}");
                    let now = self.now();
                    let actions = self.snooper.handle(ifindex, &packet, now);
                    self.apply(actions);
                }
                Err(error) => {
                    debug!("port {ifindex}: dropped control frame: {error}");
                    self.count(&format!("dropped_{}", snake_case(&error.to_string())));
                    *self.port_malformed.entry(ifindex).or_default() += 1;
                }
            }
        }
    }

    /// Carries the state machine's decisions out. A failed map write is logged
    /// and counted: the state machine stays authoritative and the next refresh retries.
    fn apply(&mut self, actions: Vec<Action>) {
        let mut changed_groups = BTreeSet::new();
        let mut routers_changed = false;
        for action in &actions {
            match *action {
                Action::AddMember { group, .. }
                | Action::RemoveMember { group, .. }
                | Action::UnregisterGroup { group } => {
                    changed_groups.insert(group);
                }
                Action::SetRouterPort { .. } => routers_changed = true,
                _ => {}
            }
        }
        // Redirect targets first: a port that lost its membership must stop
        // getting copies before its member entry goes (without it, an
        // unregistered group's copy would be let through as flooding).
        self.refresh_fanout(changed_groups, routers_changed);
        for action in actions {
            if let Err(error) = self.apply_one(&action) {
                warn!("{action:?} failed: {error:#}");
                self.count("datapath_write_errors");
            }
        }
    }

    /// Redirect mode: rewrites where the data path copies each changed group
    /// (every group when `all`, as when router ports change).
    fn refresh_fanout(&mut self, mut groups: BTreeSet<Ipv4Addr>, all: bool) {
        if !self.redirect || (groups.is_empty() && !all) {
            return;
        }
        if all {
            groups.extend(self.snooper.groups().keys().copied());
            groups.extend(self.datapath.redirected_groups());
        }
        let now = self.now();
        let routers: Vec<u32> =
            self.snooper.ports().iter().filter(|(_, p)| p.is_router(now)).map(|(ifindex, _)| *ifindex).collect();
        if all {
            // Reports and leaves: to router ports, and up to the bridge
            // device (a multicast routing daemon on it needs them).
            let mut targets: Vec<CopyTarget> = routers.iter().map(|r| CopyTarget::Router(*r)).collect();
            targets.push(CopyTarget::BridgeDevice(self.bridge.ifindex));
            if let Err(error) = self.datapath.set_report_targets(&targets) {
                warn!("report targets: {error:#}");
                self.count("datapath_write_errors");
            }
        }
        for group in groups {
            let mut targets: Vec<CopyTarget> = Vec::new();
            if let Some(members) = self.snooper.groups().get(&group) {
                targets.extend(members.keys().map(|port| CopyTarget::Member(*port)));
                targets.extend(routers.iter().filter(|r| !members.contains_key(r)).map(|r| CopyTarget::Router(*r)));
                if self.local_groups.contains(&group) {
                    targets.push(CopyTarget::BridgeDevice(self.bridge.ifindex));
                }
            }
            if let Err(error) = self.datapath.set_group_ports(group, &targets) {
                warn!("redirect targets of {group}: {error:#}");
                self.count("datapath_write_errors");
            }
        }
    }

    /// Redirect mode bypasses the bridge, so the bridge host's own members
    /// (sockets on the bridge device) must be copied to explicitly.
    fn refresh_local_groups(&mut self) {
        if !self.redirect {
            return;
        }
        let now: BTreeSet<Ipv4Addr> =
            local_groups(&self.bridge.name).into_iter().filter(|g| crate::membership::is_snoopable(*g)).collect();
        if now != self.local_groups {
            let changed = now.symmetric_difference(&self.local_groups).copied().collect();
            self.local_groups = now;
            self.refresh_fanout(changed, false);
        }
    }

    fn apply_one(&mut self, action: &Action) -> Result<()> {
        match *action {
            Action::AddMember { group, port, version, expires } => {
                self.publish(EventKind::Join, Some(group), Some(port), format!("IGMPv{version}"));
                self.datapath.set_member(group, port, version, self.monotonic_ns(expires))
            }
            Action::RefreshMember { group, port, version, expires } => {
                self.datapath.set_member(group, port, version, self.monotonic_ns(expires))
            }
            Action::RemoveMember { group, port, reason } => {
                let kind = match reason {
                    RemoveReason::Expired => EventKind::Expire,
                    RemoveReason::Left => EventKind::Leave,
                    RemoveReason::PortRemoved => EventKind::PortRemoved,
                };
                self.publish(kind, Some(group), Some(port), String::new());
                self.datapath.remove_member(group, port)
            }
            Action::RegisterGroup { group } => self.datapath.register_group(group),
            Action::UnregisterGroup { group } => self.datapath.unregister_group(group),
            Action::SendQuery { group } => {
                let timers = self.snooper.timers();
                let max_response = match group {
                    None => timers.query_response_interval,
                    Some(_) => timers.last_member_query_interval,
                };
                let frame = igmp::build_query_frame(
                    self.bridge.mac,
                    self.snooper.querier().own_address,
                    group,
                    max_response,
                    u8::try_from(timers.robustness).unwrap_or(7),
                    timers.query_interval,
                );
                debug!("sending {} query", group.map_or("general".into(), |g| format!("{g} group-specific")));
                self.count(if group.is_some() { "group_queries_sent" } else { "general_queries_sent" });
                self.query_socket.send(&frame).context("sending a query")
            }
            Action::SetRouterPort { port, is_router } => {
                let kind = if is_router { EventKind::RouterPortLearned } else { EventKind::RouterPortExpired };
                self.publish(kind, None, Some(port), String::new());
                self.datapath.set_port_flags(port, if is_router { PORT_ROUTER } else { 0 })
            }
            Action::QuerierChanged { other_querier } => {
                match other_querier {
                    Some(addr) => self.publish(EventKind::QuerierOther, None, None, addr.to_string()),
                    None => {
                        self.publish(EventKind::QuerierSelf, None, None, self.snooper.querier().own_address.to_string())
                    }
                }
                Ok(())
            }
        }
    }

    /// Logs a membership event and sends it to `snoop watch` clients.
    fn publish(&self, kind: EventKind, group: Option<Ipv4Addr>, port: Option<u32>, detail: String) {
        let event = Event::now(kind, group, port.map(|p| self.port_name(p)), detail);
        info!("{}", event.to_line().split_once("  ").map_or("", |(_, rest)| rest));
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    fn port_name(&self, ifindex: u32) -> String {
        self.port_names.get(&ifindex).cloned().unwrap_or_else(|| format!("#{ifindex}"))
    }

    /// CLOCK_MONOTONIC (the eBPF clock) time of a state-machine time.
    fn monotonic_ns(&self, at: Duration) -> u64 {
        let remaining = at.saturating_sub(self.now());
        monotonic_now_ns().saturating_add(remaining.as_nanos() as u64)
    }

    fn port_options(&self, name: &str) -> PortOptions {
        let listed = |list: &[String]| list.iter().any(|p| p == name || p == "all");
        let static_router = self.config.static_router_ports.iter().any(|p| p == name);
        PortOptions {
            fast_leave: listed(&self.config.fast_leave_ports),
            static_router,
            // A port declared a router port is trusted to speak as one.
            trusted: static_router || listed(&self.config.trusted_ports),
            max_groups: self.config.max_groups_per_port,
        }
    }

    /// Attaches to ports that joined the bridge and lets go of ports that left.
    async fn sync_ports(&mut self) -> Result<()> {
        if !self.netlink.bridge_exists(&self.bridge).await? {
            bail!("bridge {} was deleted", self.bridge.name);
        }
        let ports = self.netlink.ports(&self.bridge).await?;
        let mut ports_changed = false;
        for Port { ifindex, name, .. } in &ports {
            if self.port_names.contains_key(ifindex) {
                continue;
            }
            self.datapath.attach_port(*ifindex, name, 0)?;
            self.port_names.insert(*ifindex, name.clone());
            let actions = self.snooper.add_port(*ifindex, self.port_options(name));
            self.publish(EventKind::PortAttached, None, Some(*ifindex), format!("ifindex {ifindex}"));
            self.apply(actions);
            ports_changed = true;
        }
        let gone: Vec<u32> =
            self.port_names.keys().copied().filter(|i| !ports.iter().any(|p| p.ifindex == *i)).collect();
        for ifindex in gone {
            let actions = self.snooper.remove_port(ifindex);
            self.apply(actions);
            self.datapath.detach_port(ifindex)?;
            info!("port {} left the bridge", self.port_name(ifindex));
            self.port_names.remove(&ifindex);
            self.port_malformed.remove(&ifindex);
            ports_changed = true;
        }
        let peer_ports = ports.iter().filter(|p| p.peer_redirect).map(|p| p.ifindex).collect();
        if self.datapath.set_peer_ports(peer_ports) {
            ports_changed = true;
        }
        if ports_changed {
            // The port count is in every group's redirect entry.
            self.refresh_fanout(BTreeSet::new(), true);
        }
        Ok(())
    }

    /// Adopts the memberships a previous snoop left in the pinned maps.
    fn resume_memberships(&mut self) {
        let now = self.now();
        let mut restored = 0;
        for (group, port, value) in self.datapath.memberships() {
            if self.port_names.contains_key(&port) {
                self.snooper.restore_member(group, port, value.version, now);
                restored += 1;
            } else {
                let _ = self.datapath.remove_member(group, port);
            }
        }
        for group in self.datapath.registered_groups() {
            if !self.snooper.groups().contains_key(&group) {
                let _ = self.datapath.unregister_group(group);
            }
        }
        for ifindex in self.datapath.port_entries() {
            if !self.port_names.contains_key(&ifindex) {
                let _ = self.datapath.detach_port(ifindex);
            }
        }
        info!("resumed {restored} memberships from the pinned maps");
    }

    fn snapshot(&self, counters_only: bool) -> Snapshot {
        let now = self.now();
        let secs_until = |at: Duration| at.saturating_sub(now).as_secs_f64();
        let querier = self.snooper.querier();
        let (role, querier_address) = match querier.other {
            Some((addr, _)) => ("other", Some(addr)),
            None if querier.enabled => ("self", Some(querier.own_address)),
            None => ("none", None),
        };
        let member_traffic = if counters_only { Vec::new() } else { self.datapath.member_traffic() };
        let mut traffic: Vec<TrafficView> = member_traffic
            .into_iter()
            .map(|(group, ifindex, c)| TrafficView {
                group,
                ifindex,
                port: self.port_name(ifindex),
                forwarded_packets: c.forwarded_packets,
                forwarded_bytes: c.forwarded_bytes,
            })
            .collect();
        traffic.sort_by_key(|t| (t.group, t.ifindex));
        // Totals per group and per port in one pass (100k groups must stay cheap).
        let mut by_group: HashMap<Ipv4Addr, (u64, u64)> = HashMap::new();
        let mut by_port: HashMap<u32, (u64, u64)> = HashMap::new();
        for t in &traffic {
            for total in [by_group.entry(t.group).or_default(), by_port.entry(t.ifindex).or_default()] {
                total.0 += t.forwarded_packets;
                total.1 += t.forwarded_bytes;
            }
        }
        let member_totals: HashMap<(Ipv4Addr, u32), (u64, u64)> =
            traffic.iter().map(|t| ((t.group, t.ifindex), (t.forwarded_packets, t.forwarded_bytes))).collect();

        let groups = self.snooper.groups();
        let ports = self
            .snooper
            .ports()
            .iter()
            .map(|(ifindex, state)| {
                let control = self.datapath.port_counters(*ifindex);
                let as_router = self.datapath.port_traffic(*ifindex);
                let (to_members, member_bytes) = by_port.get(ifindex).copied().unwrap_or_default();
                PortView {
                    ifindex: *ifindex,
                    name: self.port_name(*ifindex),
                    router: state.is_router(now),
                    static_router: state.options.static_router,
                    fast_leave: state.options.fast_leave,
                    router_expires_in_secs: state.router_until.map(secs_until),
                    groups: state.groups,
                    queries_received: control.queries,
                    reports_received: control.reports,
                    leaves_received: control.leaves,
                    other_igmp_received: control.other_igmp,
                    pim_hellos_received: control.pim_hellos,
                    malformed_dropped: self.port_malformed.get(ifindex).copied().unwrap_or(0),
                    forwarded_packets: to_members + as_router.forwarded_packets,
                    forwarded_bytes: member_bytes + as_router.forwarded_bytes,
                    pruned_packets: as_router.pruned_packets,
                    pruned_bytes: as_router.pruned_bytes,
                }
            })
            .collect();
        let mut groups: Vec<GroupView> = groups
            .iter()
            .filter(|_| !counters_only)
            .map(|(group, members)| {
                let (forwarded_packets, forwarded_bytes) = by_group.get(group).copied().unwrap_or_default();
                let spared = self.datapath.group_traffic(*group);
                GroupView {
                    group: *group,
                    members: members
                        .iter()
                        .map(|(ifindex, member)| MemberView {
                            ifindex: *ifindex,
                            port: self.port_name(*ifindex),
                            version: member.version,
                            expires_in_secs: secs_until(member.expires),
                            last_reporter: member.last_reporter,
                            leaving: member.leaving,
                            forwarded_packets: member_totals.get(&(*group, *ifindex)).map_or(0, |t| t.0),
                            forwarded_bytes: member_totals.get(&(*group, *ifindex)).map_or(0, |t| t.1),
                        })
                        .collect(),
                    forwarded_packets,
                    forwarded_bytes,
                    pruned_packets: spared.pruned_packets,
                    pruned_bytes: spared.pruned_bytes,
                }
            })
            .collect();
        groups.sort_by_key(|g| g.group);
        let datapath = Counter::ALL
            .iter()
            .zip(self.datapath.counters())
            .map(|(counter, value)| (counter.name().to_owned(), value))
            .collect();
        Snapshot {
            bridge: self.bridge.name.clone(),
            uptime_secs: now.as_secs_f64(),
            querier: QuerierView {
                role: role.into(),
                own_address: querier.own_address,
                querier_address,
                other_querier_expires_in_secs: querier.other.map(|(_, until)| secs_until(until)),
                next_query_in_secs: querier.next_general_query.filter(|_| querier.is_querier()).map(secs_until),
            },
            ports,
            groups,
            datapath,
            controller: self.controller_counters(),
            traffic,
        }
    }
}

impl Controller {
    /// The controller's own counters plus what the state machine ignored.
    fn controller_counters(&self) -> BTreeMap<String, u64> {
        let ignored = self.snooper.ignored();
        let mut counters = self.stats.clone();
        for (name, value) in [
            ("ignored_not_snoopable_groups", ignored.not_snoopable_groups),
            ("ignored_untrusted_router_messages", ignored.untrusted_router_messages),
            ("ignored_group_limit", ignored.group_limit_refusals),
            ("ignored_unknown_port", ignored.unknown_port_messages),
        ] {
            counters.insert(name.into(), value);
        }
        counters
    }
}

/// Serves one control-socket client: `snapshot` (the default) answers the
/// state as one JSON document, `counters` the same without groups and
/// traffic; `watch` streams events as JSON lines.
async fn serve_client(stream: UnixStream, snapshots: mpsc::Sender<SnapshotRequest>, events: broadcast::Sender<Event>) {
    let (read, mut write) = stream.into_split();
    let mut request = String::new();
    let mut reader = BufReader::new(read);
    let _ = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut request)).await;
    let request = request.trim();
    if request == "watch" {
        let mut receiver = events.subscribe();
        loop {
            let event = match receiver.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    Event::now(EventKind::Lost, None, None, missed.to_string())
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let mut line = serde_json::to_vec(&event).expect("events serialize");
            line.push(b'\n');
            if write.write_all(&line).await.is_err() {
                return; // the watcher went away
            }
        }
    }
    if let Some(snapshot) = request_snapshot(&snapshots, request == "counters").await {
        let body = serde_json::to_vec(&*snapshot).expect("snapshots serialize");
        let _ = tokio::time::timeout(Duration::from_secs(30), write.write_all(&body)).await;
    }
}

/// Asks the controller loop for its current state.
pub(crate) async fn request_snapshot(
    snapshots: &mpsc::Sender<SnapshotRequest>,
    counters_only: bool,
) -> Option<std::sync::Arc<Snapshot>> {
    let (reply, answer) = oneshot::channel();
    snapshots.send(SnapshotRequest { counters_only, reply }).await.ok()?;
    answer.await.ok()
}

fn snake_case(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn bind_control_socket(bridge: &str) -> Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt as _;
    let name = control_socket_name(bridge);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            anyhow::anyhow!("another snoop is already running on {bridge} in this network namespace")
        } else {
            anyhow::Error::from(e).context("binding the control socket")
        }
    })?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}
