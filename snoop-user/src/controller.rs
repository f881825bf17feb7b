//! `snoop run`: ties the data path, the membership state machine, the querier
//! and the bridge together in one tokio task.
//!
//! [`Core`] is what every address family shares (the bridge, the data path,
//! the ports, the counters); [`FamilyState`] is one family's state machine.
//! The state machine decides; [`Core::apply`] carries its [`Action`]s out.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, Result};
use aya::maps::{MapData, RingBuf};
use futures::{FutureExt as _, Stream, StreamExt as _};
use log::{debug, info, warn};
use sd_notify::NotifyState;
use snoop_common::{
    no_querier_flag, report_targets, wire::ETH_P_8021Q, CapturedFrame, GroupKey, PortGroupKey, SourceAddr, VlanFlags,
    VlanPortKey, CONFIG_CHECK_SOURCE_PORT, CONFIG_FLOOD_UNREGISTERED, CONFIG_REDIRECT, CONFIG_SNOOP_IPV6_LINK_SCOPE,
    CONFIG_VLAN_AWARE, FAMILY_IPV4, FAMILY_IPV6, IPV4_FLAGS, IPV6_FLAGS, MEMBER_LEAVING, MEMBER_SOURCES_INCLUDE,
    MEMBER_STATIC, PORT_IN_VLAN, PORT_UNPRUNED, RESTORE_KERNEL_SNOOPING, VLAN_NONE, VLAN_VID_MASK,
};
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{signal, Signal, SignalKind},
    sync::{broadcast, mpsc},
    time::{Instant, Interval},
};

use crate::{
    bridge::{self, local_groups, local_groups_v6, Bridge, Netlink, Port, PortPolicy, VlanConfig},
    control::{self, Change, ChangeRequest, SnapshotRequest},
    datapath::{self, monotonic_now_ns, CopyTarget, Datapath, OtherFilters, VlanEgress},
    frame_sender::FrameSender,
    membership::{Action, Group, Member, PortOptions, RemoveReason, Snooper, SourceFilter, StaticError, Timers, NEVER},
    metrics,
    port_groups::{GroupFilter, GroupRange, StaticGroup},
    proto::{Family, QuerySource, QueryTimers},
    snapshot::{self, Event, EventKind, PortInfo, Snapshot},
    stats::{ControllerCounter, Protocol, Stats},
};

/// Runs `$body` once for each address family's state (`$family`), with the
/// shared state as `$core`: the families' types differ, so the body is
/// written once and compiled twice.
macro_rules! each_family {
    ($self:ident, |$core:ident, $family:ident| $body:expr) => {{
        {
            let $core = &mut $self.core;
            let $family = &mut $self.igmp;
            $body;
        }
        {
            let $core = &mut $self.core;
            let $family = &mut $self.mld;
            $body;
        }
    }};
}

/// Everything `snoop run` is told.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub bridge: String,
    pub timers: Timers,
    pub querier: bool,
    /// The version of snoop's queries (an older querier heard lowers it).
    pub query_version: u8,
    /// Source of our queries; default: the bridge's IPv4 address, else 0.0.0.0.
    pub query_source: Option<Ipv4Addr>,
    /// MLD snooping; off, IPv6 group traffic floods as on a plain bridge.
    pub mld: bool,
    /// The version of snoop's MLD queries (an MLDv1 querier heard lowers it).
    pub mld_query_version: u8,
    /// Source of our MLD queries; default: the bridge's link-local address
    /// (without one, snoop sends no MLD queries).
    pub mld_query_source: Option<Ipv6Addr>,
    /// Query sources of single VLANs, by (VLAN, IPv6): they win over all else there.
    pub vlan_query_sources: BTreeMap<(u16, bool), IpAddr>,
    /// Snoop link-scope IPv6 groups (ff02::/16 but ff02::1) like any other.
    pub snoop_ipv6_link_scope: bool,
    pub static_router_ports: Vec<String>,
    /// Port names with fast leave, or "all".
    pub fast_leave_ports: Vec<String>,
    /// Ports whose queries and PIM hellos count, or "all".
    pub trusted_ports: Vec<String>,
    /// Most groups one port may join (0: no limit).
    pub max_groups_per_port: usize,
    /// Ports with limits of their own (the last one given for a port wins).
    pub port_max_groups: Vec<(String, usize)>,
    /// Group ranges ports may join (port "all": every port); none: any group.
    pub port_allow: Vec<(String, GroupRange)>,
    /// Group ranges ports may not join.
    pub port_deny: Vec<(String, GroupRange)>,
    pub static_groups: Vec<StaticGroup>,
    /// Most sources one port keeps per group (0: no limit).
    pub max_sources_per_group: usize,
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
    /// Members of this group may read the state over the control socket (root always may).
    pub control_group: Option<u32>,
    pub map_sizes: snoop_common::MapSizes,
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

/// Reads the configuration again (the file and the command line), for a reload.
pub type Reload = Box<dyn Fn() -> Result<RunConfig> + Send>;

/// Runs until SIGINT or SIGTERM (`signals`, registered by the caller before
/// anything it must undo, so no signal meanwhile kills it half-way).
pub async fn run(config: RunConfig, reload: Option<Reload>, signals: Signals) -> Result<()> {
    let (mut controller, listener, resumed) = Controller::start(config, reload).await?;
    let result = controller.serve(&listener, resumed, signals).await;
    let stopped = controller.stop(result).await;
    // The control socket, and its lock, last: no second snoop starts on
    // the bridge while this one puts things back.
    drop(listener);
    stopped
}

/// The signals snoop answers: SIGINT and SIGTERM stop it, SIGHUP reloads.
/// Registered, they no longer kill the process: they wait to be read.
pub struct Signals {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
}

impl Signals {
    /// Needs a tokio runtime.
    pub fn register() -> std::io::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            sighup: signal(SignalKind::hangup())?,
        })
    }

    /// Whether a SIGINT or SIGTERM came since registration (or the last look).
    pub fn stop_requested(&mut self) -> bool {
        use futures::FutureExt as _;
        self.sigint.recv().now_or_never().is_some() || self.sigterm.recv().now_or_never().is_some()
    }
}

/// `snoop cleanup`: removes what a `--keep-state` exit left pinned and puts
/// back the bridge settings snoop had changed.
pub async fn cleanup(bridge: &str, pin_dir: &std::path::Path) -> Result<()> {
    let restore = datapath::pinned_restore_flags(pin_dir)?;
    datapath::remove_pin_dir(pin_dir)?;
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
            Err(error) => warn!("{:#}", anyhow::Error::from(error)),
        }
    }
}

struct Controller {
    core: Core,
    igmp: FamilyState<Ipv4Addr>,
    mld: FamilyState<Ipv6Addr>,
    reload: Option<Reload>,
}

/// What every address family shares.
struct Core {
    config: RunConfig,
    bridge: Bridge,
    netlink: Netlink,
    datapath: Datapath,
    start: Instant,
    ports: BTreeMap<u32, PortInfo>,
    /// Queries leave through the bridge device, which floods them to every
    /// port; on a VLAN-aware bridge through each port of their VLAN.
    query_socket: FrameSender,
    /// The bridge's VLAN configuration, as last read...
    vlans: VlanConfig,
    /// ...and as the data path's VLAN entries and copy lists last followed it.
    followed_vlans: VlanConfig,
    /// Resuming pinned state: the state machines made before the
    /// memberships are adopted count a querier as present (never a flood
    /// at a restart).
    resuming: bool,
    /// Query sources found on the bridge: its own addresses, and those of
    /// VLAN interfaces on it by VLAN.
    addresses: QuerySources,
    stats: Stats,
    /// Membership events for `snoop watch` clients.
    events: broadcast::Sender<Event>,
    /// Redirect mode is in effect.
    redirect: bool,
    /// Writes a full map refused, retried at every port scan.
    unwritten: Unwritten,
    /// Why group traffic takes the bridge path rather than redirect, if it does.
    bridge_path_why: Option<&'static str>,
    /// MACs (per VLAN) taught to the bridge lately, and on which port.
    taught: HashMap<([u8; 6], u16), (u32, Instant)>,
    /// The `no_querier` config flags of the families with no querier
    /// present (nothing of theirs is pruned).
    absent_queriers: u32,
    /// Ports that get every group of a family because some of that
    /// family's memberships do not fit the maps.
    unpruned: BTreeMap<u8, BTreeSet<u32>>,
    /// The static groups in force: the configuration's, and those added
    /// and deleted at run time since. A port that joins the bridge gets its own.
    statics: BTreeSet<StaticGroup>,
    /// Router ports and querier presence per VLAN, for the data path.
    vlan_entries: VlanEntries,
    /// Learned router ports a keep-state predecessor left, read before
    /// anything rewrites them: (family, VLAN or every VLAN of the port, port).
    resumed_routers: Vec<(u8, Option<u16>, u32)>,
}

/// Addresses queries can speak from (see [`Core::query_source`]).
#[derive(Default)]
struct QuerySources {
    bridge_ipv4: Option<Ipv4Addr>,
    bridge_ipv6: Option<Ipv6Addr>,
    vlan_ipv4: BTreeMap<u16, Ipv4Addr>,
    vlan_ipv6: BTreeMap<u16, Ipv6Addr>,
}

/// What the data path prunes by per VLAN on a VLAN-aware bridge (its
/// `SNOOP_VLANS` and `SNOOP_VLAN_PORTS`): each family refreshes its share,
/// written together as one value per key.
#[derive(Default)]
struct VlanEntries {
    /// By family: each VLAN it follows, with its no-querier flag if no
    /// querier is present there.
    vlans: BTreeMap<u8, BTreeMap<u16, VlanFlags>>,
    /// By family: router and report flags of ports per VLAN.
    ports: BTreeMap<u8, BTreeMap<VlanPortKey, u32>>,
    /// The VLANs each port is in (PORT_IN_VLAN), as the bridge says.
    in_vlans: BTreeSet<VlanPortKey>,
    /// As the maps hold them (at start, what a predecessor left).
    written_vlans: BTreeMap<u16, VlanFlags>,
    written_ports: BTreeMap<VlanPortKey, u32>,
}

impl VlanEntries {
    fn adopt(datapath: &Datapath) -> Self {
        Self {
            written_vlans: datapath.vlan_entries().into_iter().collect(),
            written_ports: datapath.vlan_port_entries().into_iter().collect(),
            ..Self::default()
        }
    }

    /// Every followed VLAN's value: the no-querier flags of the families
    /// without a querier there (a family that does not follow it has none).
    fn wanted_vlans(&self) -> BTreeMap<u16, VlanFlags> {
        let followed: BTreeSet<u16> = self.vlans.values().flat_map(|vlans| vlans.keys()).copied().collect();
        followed
            .into_iter()
            .map(|vlan| {
                let flags = self.vlans.iter().fold(0, |flags, (family, vlans)| {
                    flags | vlans.get(&vlan).copied().unwrap_or(no_querier_flag(*family))
                });
                (vlan, flags)
            })
            .collect()
    }

    fn wanted_ports(&self) -> BTreeMap<VlanPortKey, u32> {
        let mut wanted: BTreeMap<VlanPortKey, u32> = self.in_vlans.iter().map(|key| (*key, PORT_IN_VLAN)).collect();
        for (key, flags) in self.ports.values().flatten() {
            *wanted.entry(*key).or_insert(0) |= flags;
        }
        wanted
    }

    /// Writes what changed. A failed write is logged and counted; the next
    /// refresh retries it.
    fn write(&mut self, datapath: &mut Datapath, stats: &mut Stats) {
        let mut failed = |what: &str, error: datapath::Error| {
            warn!("{what}: {:#}", anyhow::Error::from(error));
            stats.bump(ControllerCounter::DatapathWriteErrors);
        };
        let wanted = self.wanted_vlans();
        for (vlan, flags) in &wanted {
            if self.written_vlans.get(vlan) != Some(flags) {
                match datapath.set_vlan_flags(*vlan, Some(*flags)) {
                    Ok(()) => drop(self.written_vlans.insert(*vlan, *flags)),
                    Err(error) => failed(&format!("VLAN {vlan}"), error),
                }
            }
        }
        let gone: Vec<u16> = self.written_vlans.keys().filter(|v| !wanted.contains_key(v)).copied().collect();
        for vlan in gone {
            match datapath.set_vlan_flags(vlan, None) {
                Ok(()) => drop(self.written_vlans.remove(&vlan)),
                Err(error) => failed(&format!("VLAN {vlan}"), error),
            }
        }
        let wanted = self.wanted_ports();
        let keys: BTreeSet<VlanPortKey> = wanted.keys().chain(self.written_ports.keys()).copied().collect();
        for key in keys {
            let flags = wanted.get(&key).copied().unwrap_or(0);
            if self.written_ports.get(&key).copied().unwrap_or(0) == flags {
                continue;
            }
            match datapath.set_vlan_port_flags(key, flags) {
                Ok(()) if flags == 0 => drop(self.written_ports.remove(&key)),
                Ok(()) => drop(self.written_ports.insert(key, flags)),
                Err(error) => failed(&format!("port {} in VLAN {}", key.ifindex, key.vlan), error),
            }
        }
    }
}

/// What the data path could not hold: memberships and group registrations.
#[derive(Default)]
struct Unwritten {
    members: BTreeSet<PortGroupKey>,
    groups: BTreeSet<GroupKey>,
}

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.members.is_empty() && self.groups.is_empty()
    }
}

/// One address family's state machines, and the groups the bridge's own
/// host has joined, in the VLANs it hears them in (redirect mode copies
/// them to it).
struct FamilyState<A> {
    /// One state machine per VLAN, each with its own querier and election,
    /// router ports, limits and memberships, as the bridge's per-VLAN
    /// snooping contexts; [`VLAN_NONE`] alone while the bridge does not
    /// filter VLANs.
    snoopers: BTreeMap<u16, Snooper<A>>,
    /// What a VLAN's state machine starts with.
    settings: SnooperSettings,
    local_groups: BTreeSet<Group<A>>,
    /// Snooping of this family is on (MLD can be turned off).
    enabled: bool,
}

/// The configuration every state machine of a family starts with.
struct SnooperSettings {
    timers: Timers,
    querier: bool,
    query_version: u8,
    max_sources: usize,
    link_scope: bool,
}

impl<A: Family> FamilyState<A> {
    fn new(settings: SnooperSettings, enabled: bool) -> Self {
        Self { snoopers: BTreeMap::new(), settings, local_groups: BTreeSet::new(), enabled }
    }

    fn new_snooper(&self, own_address: A, now: Duration) -> Snooper<A> {
        let settings = &self.settings;
        let mut snooper = Snooper::new(settings.timers.clone(), settings.querier, own_address, now);
        snooper.set_query_version(settings.query_version);
        snooper.set_max_sources(settings.max_sources);
        snooper.set_link_scope_snooped(settings.link_scope);
        snooper
    }

    /// The ports of a group in its VLAN, and their memberships.
    fn members(&self, group: &Group<A>) -> Option<&BTreeMap<u32, Member<A>>> {
        self.snoopers.get(&group.vlan)?.groups().get(group)
    }

    fn member(&self, group: &Group<A>, port: u32) -> Option<&Member<A>> {
        self.members(group)?.get(&port)
    }

    /// A router port in some VLAN (the data path's router flag is per port).
    fn is_router(&self, port: u32, now: Duration) -> bool {
        self.snoopers.values().any(|s| s.ports().get(&port).is_some_and(|p| p.is_router(now)))
    }

    /// A querier is present in every VLAN, so pruning is safe in all.
    fn querier_present(&self, now: Duration) -> bool {
        self.snoopers.values().all(|s| s.querier_present(now))
    }

    /// The state machine whose querier the logs name: the only one on a
    /// bridge without VLANs, else the lowest VLAN's.
    fn first(&self) -> Option<&Snooper<A>> {
        self.snoopers.values().next()
    }

    /// Runs `step` on every VLAN's state machine that has `port` (all with
    /// `None`), with each one's actions.
    fn each(
        &mut self,
        port: Option<u32>,
        step: impl FnMut(&mut Snooper<A>) -> Vec<Action<A>>,
    ) -> Vec<(u16, Vec<Action<A>>)> {
        self.each_in(None, port, step)
    }

    /// [`FamilyState::each`] in one VLAN only (every VLAN with `None`).
    fn each_in(
        &mut self,
        vlan: Option<u16>,
        port: Option<u32>,
        mut step: impl FnMut(&mut Snooper<A>) -> Vec<Action<A>>,
    ) -> Vec<(u16, Vec<Action<A>>)> {
        self.snoopers
            .iter_mut()
            .filter(|(v, _)| vlan.is_none_or(|want| **v == want))
            .filter(|(_, s)| port.is_none_or(|p| s.ports().contains_key(&p)))
            .map(|(vlan, s)| (*vlan, step(s)))
            .collect()
    }
}

/// What the controller loop waits on.
struct Inputs {
    ring: AsyncFd<RingBuf<MapData>>,
    signals: Signals,
    port_scan: Interval,
    link_changes: Option<Box<dyn Stream<Item = ()> + Unpin>>,
    snapshot_queue: mpsc::Receiver<SnapshotRequest>,
    change_queue: mpsc::Receiver<ChangeRequest>,
}

impl Controller {
    /// Everything before the loop. What can fail without side effects comes
    /// first; a failure after the data path is loaded leaves pinned state of
    /// a previous snoop as it was and removes this one's.
    async fn start(config: RunConfig, reload: Option<Reload>) -> Result<(Self, control::Listener, bool)> {
        let netlink = Netlink::open()?;
        let bridge = netlink.bridge(&config.bridge).await?;
        // Binding first also stops a second snoop before it touches the pinned state.
        let listener = control::bind(&bridge.name, config.control_group)?;
        let query_socket = FrameSender::open(bridge.ifindex).context("opening a packet socket for queries")?;
        let kernel_snooping_on = netlink.kernel_snooping(&bridge).await?;

        let (mut datapath, resumed) = Datapath::load(&config.pin_dir, bridge.ifindex, config.map_sizes)?;
        if kernel_snooping_on {
            info!("turning off {}'s own multicast snooping while snoop runs", bridge.name);
            let turned_off = match datapath.add_restore_flags(RESTORE_KERNEL_SNOOPING) {
                Ok(()) => netlink.set_kernel_snooping(&bridge, false).await.map_err(anyhow::Error::from),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = turned_off {
                let _ = datapath.shutdown(resumed);
                return Err(error);
            }
        }
        let igmp_settings = SnooperSettings {
            timers: config.timers.clone(),
            querier: config.querier,
            query_version: config.query_version,
            max_sources: config.max_sources_per_group,
            link_scope: false,
        };
        let mld_settings = SnooperSettings {
            timers: config.timers.clone(),
            querier: config.querier && config.mld,
            query_version: config.mld_query_version,
            max_sources: config.max_sources_per_group,
            link_scope: config.snoop_ipv6_link_scope,
        };
        // Resumed memberships are known: never a flood at a restart.
        let mut absent_queriers = if resumed { 0 } else { IPV4_FLAGS.no_querier | IPV6_FLAGS.no_querier };
        if !config.mld {
            absent_queriers |= IPV6_FLAGS.no_querier;
        }
        let config_statics = config.static_groups.iter().cloned().collect::<BTreeSet<_>>();
        let vlan_entries = VlanEntries::adopt(&datapath);
        let resumed_routers = if resumed { pinned_router_ports(&datapath) } else { Vec::new() };
        let core = Core {
            config,
            bridge,
            netlink,
            datapath,
            start: Instant::now(),
            ports: BTreeMap::new(),
            query_socket,
            vlans: VlanConfig::default(),
            followed_vlans: VlanConfig::default(),
            resuming: resumed,
            addresses: QuerySources::default(),
            stats: Stats::default(),
            events: broadcast::channel(4096).0,
            redirect: false,
            unwritten: Unwritten::default(),
            bridge_path_why: None,
            taught: HashMap::new(),
            absent_queriers,
            unpruned: BTreeMap::new(),
            statics: config_statics.clone(),
            vlan_entries,
            resumed_routers,
        };
        let igmp = FamilyState::new(igmp_settings, true);
        let mld = FamilyState::new(mld_settings, core.config.mld);
        Ok((Self { core, igmp, mld, reload }, listener, resumed))
    }

    /// Detaches (or, with keep-state, leaves everything pinned) and puts the
    /// bridge's settings back.
    async fn stop(self, result: Result<()>) -> Result<()> {
        let keep_state = self.core.config.keep_state && result.is_ok();
        let Core { datapath, netlink, bridge, .. } = self.core;
        let restore = datapath.restore_flags();
        let shutdown = datapath.shutdown(keep_state);
        if !keep_state && netlink.bridge_exists(&bridge).await.unwrap_or(false) {
            restore_bridge_settings(&netlink, &bridge, restore).await;
        }
        result.and(shutdown.map_err(Into::into))
    }

    async fn serve(&mut self, listener: &control::Listener, resumed: bool, signals: Signals) -> Result<()> {
        self.configure().await?;
        self.refresh_bridge().await?;
        self.sync_ports().await?;
        if resumed {
            self.resume_memberships();
        }
        // Routers that speak RFC 4286 answer at once, before any query.
        each_family!(self, |core, family| core.solicit_routers(family));
        self.refresh_local_groups();
        each_family!(self, |core, family| core.refresh_fanout(family, BTreeSet::new(), true));
        let ports: Vec<u32> = self.core.ports.keys().copied().collect();
        self.core.datapath.remove_stale_attachments(&ports)?;

        let (snapshots, snapshot_queue) = mpsc::channel::<SnapshotRequest>(64);
        let (changes, change_queue) = mpsc::channel::<ChangeRequest>(16);
        if let Some(addr) = self.core.config.metrics {
            let metrics_listener =
                TcpListener::bind(addr).await.with_context(|| format!("listening for metrics on {addr}"))?;
            info!("serving Prometheus metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(metrics_listener, snapshots.clone()));
        }
        let server = control::Server {
            snapshots,
            changes,
            events: self.core.events.clone(),
            access: control::Access { group: self.core.config.control_group },
            slots: Arc::new(tokio::sync::Semaphore::new(control::MAX_CLIENTS)),
        };
        let mut inputs = self.inputs(snapshot_queue, change_queue, signals)?;
        self.log_start(resumed);
        // systemd (Type=notify): ready once the ports are attached and the
        // control socket answers; the watchdog is fed from this loop, so a
        // stuck controller is restarted.
        notify_systemd(&[NotifyState::Ready, NotifyState::Status(&format!("snooping on {}", self.core.bridge.name))]);
        let watchdog_limit = sd_notify::watchdog_enabled().filter(|limit| limit.as_micros() >= 2);
        let mut watchdog = watchdog_limit.map(|limit| tokio::time::interval(limit / 2));
        loop {
            let deadline = self.run_timers();
            tokio::select! {
                guard = inputs.ring.readable_mut() => {
                    let mut guard = guard?;
                    self.drain_events(guard.get_inner_mut());
                    guard.clear_ready();
                }
                _ = tokio::time::sleep_until(deadline) => {}
                Some(()) = next_change(&mut inputs.link_changes) => self.rescan().await?,
                _ = inputs.port_scan.tick() => {
                    self.rescan().await?;
                    each_family!(self, |core, family| core.retry_unwritten(family));
                    if self.core.redirect {
                        self.core.teach_senders().await;
                    }
                    self.refresh_local_groups();
                    self.core.datapath.heartbeat()?;
                }
                accepted = listener.listener.accept() => match accepted {
                    Ok((stream, _)) => drop(tokio::spawn(control::serve(stream, server.clone()))),
                    Err(error) => {
                        // Out of file descriptors, say: do not spin on it.
                        debug!("accepting a control client: {error}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                Some(request) = inputs.snapshot_queue.recv() => self.answer(request, &mut inputs.snapshot_queue),
                Some(ChangeRequest { change, reply }) = inputs.change_queue.recv() => {
                    let _ = reply.send(self.change(change));
                }
                _ = inputs.signals.sighup.recv() => {
                    if let Err(why) = self.change(Change::Reload) {
                        warn!("reload (SIGHUP): {why}");
                    }
                }
                _ = tick(&mut watchdog) => notify_systemd(&[NotifyState::Watchdog]),
                _ = inputs.signals.sigint.recv() => break,
                _ = inputs.signals.sigterm.recv() => break,
            }
        }
        let keeping = if self.core.config.keep_state { ", keeping the data path and its state pinned" } else { "" };
        info!("stopping{keeping}");
        notify_systemd(&[NotifyState::Stopping]);
        Ok(())
    }

    /// Chooses the forwarding (redirect where the bridge allows it) and
    /// writes the data path's policy.
    async fn configure(&mut self) -> Result<()> {
        if self.core.config.forwarding == Forwarding::Bridge {
            self.core.bridge_path_why = Some("--forwarding bridge");
        } else {
            self.core.bridge_path_why = self.core.netlink.redirect_obstacle(&self.core.bridge).await?;
            if let Some(why) = self.core.bridge_path_why {
                warn!("{why} on {}: forwarding through the bridge instead of redirecting", self.core.bridge.name);
            }
        }
        self.core.redirect = self.core.bridge_path_why.is_none();
        Ok(self.core.write_config()?)
    }

    /// Redirect forwarding must skip nothing the bridge checks: STP, 802.1ad
    /// VLAN filtering or filtering rules switched on since are seen here, live.
    async fn check_redirect(&mut self) -> Result<(), bridge::Error> {
        if self.core.config.forwarding == Forwarding::Bridge {
            return Ok(());
        }
        let why = self.core.netlink.redirect_obstacle(&self.core.bridge).await?;
        if why == self.core.bridge_path_why {
            return Ok(());
        }
        match why {
            Some(why) => warn!("{why} on {}: forwarding through the bridge from now on", self.core.bridge.name),
            None => info!("redirect forwarding on {} again", self.core.bridge.name),
        }
        self.core.bridge_path_why = why;
        self.core.redirect = why.is_none();
        if let Err(error) = self.core.write_config() {
            warn!("{:#}", anyhow::Error::from(error));
        }
        if self.core.redirect {
            // Copy lists were left alone meanwhile: write them all anew.
            self.igmp.local_groups.clear();
            self.mld.local_groups.clear();
            self.refresh_local_groups();
            each_family!(self, |core, family| core.refresh_fanout(family, BTreeSet::new(), true));
        }
        Ok(())
    }

    fn inputs(
        &mut self,
        snapshot_queue: mpsc::Receiver<SnapshotRequest>,
        change_queue: mpsc::Receiver<ChangeRequest>,
        signals: Signals,
    ) -> Result<Inputs> {
        let ring = self.core.datapath.take_events().context("event ring already taken")?;
        let link_changes = match Netlink::link_changes() {
            Ok(changes) => Some(Box::new(changes) as Box<dyn Stream<Item = ()> + Unpin>),
            Err(e) => {
                let error = anyhow::Error::from(e);
                warn!("{error:#}; ports are rescanned every {:?} only", self.core.config.port_scan_interval);
                None
            }
        };
        Ok(Inputs {
            // SAFETY: the ring owns its fd and keeps it open while registered.
            ring: unsafe { AsyncFd::register(ring) }.map_err(|e| anyhow::anyhow!("watching the event ring: {e}"))?,
            signals,
            port_scan: tokio::time::interval(self.core.config.port_scan_interval),
            link_changes,
            snapshot_queue,
            change_queue,
        })
    }

    fn log_start(&self, resumed: bool) {
        let (igmp, mld) = (self.igmp.first(), self.mld.first());
        let querier = match igmp {
            Some(igmp) if self.core.config.querier => format!("on, source {}", igmp.querier().own_address),
            _ => "off".into(),
        };
        let mld = if !self.mld.enabled {
            "off (IPv6 groups flood)".to_owned()
        } else if !self.core.config.querier {
            "on".to_owned()
        } else if let Some(mld) = mld.filter(|mld| mld.querier().is_querier()) {
            format!("on, querier source {}", mld.querier().own_address)
        } else {
            "on, no MLD queries: the bridge has no link-local IPv6 address (IPv6 groups flood until \
             another querier is heard)"
                .to_owned()
        };
        let vlans = if self.core.vlans.filtering {
            let vlans: Vec<String> = self.igmp.snoopers.keys().map(u16::to_string).collect();
            format!(", VLAN-aware: a querier per VLAN ({})", vlans.join(" "))
        } else {
            String::new()
        };
        info!(
            "snooping on {} ({} ports){}{vlans}; querier {querier}; MLD {mld}",
            self.core.bridge.name,
            self.core.ports.len(),
            if resumed { ", resumed from pinned state" } else { "" },
        );
    }

    /// Fires due timers; returns when the next one is due.
    fn run_timers(&mut self) -> Instant {
        let now = self.core.now();
        each_family!(self, |core, family| {
            let actions = family.each(None, |s| s.poll(now));
            core.apply_each(family, actions)
        });
        let deadlines = self.igmp.snoopers.values().map(|s| s.next_deadline());
        let next = deadlines.chain(self.mld.snoopers.values().map(|s| s.next_deadline())).flatten().min();
        next.map(|at| self.core.start + at).unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))
    }

    /// Hands every captured control frame to the state machine.
    fn drain_events(&mut self, ring: &mut RingBuf<MapData>) {
        let header_len = std::mem::offset_of!(CapturedFrame, data);
        while let Some(item) = ring.next() {
            let bytes: &[u8] = &item;
            if bytes.len() < header_len {
                drop(item);
                self.core.stats.bump(ControllerCounter::EventsShort);
                continue;
            }
            let ifindex = u32::from_ne_bytes(bytes[0..4].try_into().expect("4 bytes"));
            let captured = usize::from(u16::from_ne_bytes(bytes[4..6].try_into().expect("2 bytes")));
            let vlan = u16::from_ne_bytes(bytes[8..10].try_into().expect("2 bytes"));
            let packet = &bytes[header_len..(header_len + captured).min(bytes.len())];
            self.core.stats.bump(ControllerCounter::Events);
            if packet.first().is_some_and(|b| b >> 4 == 6) {
                if self.mld.enabled {
                    self.core.handle(&mut self.mld, ifindex, vlan, packet);
                }
            } else {
                self.core.handle(&mut self.igmp, ifindex, vlan, packet);
            }
            drop(item);
        }
    }

    /// Rescans the bridge's ports. Containers come and go all the time: a
    /// failure here is logged and retried at the next scan; only the bridge's
    /// deletion ends snoop.
    async fn rescan(&mut self) -> Result<()> {
        let result = match self.refresh_bridge().await {
            Ok(()) => match self.sync_ports().await {
                Ok(()) => self.check_redirect().await,
                Err(error) => Err(error),
            },
            Err(error) => Err(error),
        };
        match result {
            Err(error @ bridge::Error::BridgeGone(_)) => Err(error.into()),
            Err(error) => {
                warn!("rescanning ports: {:#}; retrying", anyhow::Error::from(error));
                Ok(())
            }
            Ok(()) => Ok(()),
        }
    }

    /// Queries speak from the bridge's MAC and (without --query-source) its
    /// addresses, or those of the VLAN's interface on it: all follow the
    /// bridge when it changes, as does its VLAN configuration.
    async fn refresh_bridge(&mut self) -> Result<(), bridge::Error> {
        let core = &mut self.core;
        let mac = core.netlink.bridge_mac(&core.bridge).await?;
        core.keep_kernel_snooping_off().await;
        if mac != core.bridge.mac {
            info!("{} has a new MAC; queries are sent from it", core.bridge.name);
            core.bridge.mac = mac;
        }
        let vlans = core.netlink.vlan_config(&core.bridge).await?;
        if vlans.filtering != core.vlans.filtering {
            if vlans.filtering {
                info!("{} filters VLANs: snooping per VLAN, a querier in each", core.bridge.name);
            } else if core.vlans != VlanConfig::default() {
                info!("{} no longer filters VLANs: snooping without them", core.bridge.name);
            }
        }
        let mut addresses = QuerySources {
            bridge_ipv4: core.netlink.bridge_ipv4(&core.bridge).await?,
            bridge_ipv6: core.netlink.bridge_ipv6_link_local(&core.bridge).await?,
            ..QuerySources::default()
        };
        for (vlan, ifindex) in &vlans.interfaces {
            if let Some(addr) = core.netlink.interface_ipv4(*ifindex).await? {
                addresses.vlan_ipv4.insert(*vlan, addr);
            }
            if let Some(addr) = core.netlink.interface_ipv6_link_local(*ifindex).await? {
                addresses.vlan_ipv6.insert(*vlan, addr);
            }
        }
        core.vlans = vlans;
        core.addresses = addresses;
        let now = core.now();
        for vlan in self.igmp.snoopers.keys().copied().collect::<Vec<_>>() {
            let own = core.query_source::<Ipv4Addr>(vlan);
            let snooper = self.igmp.snoopers.get_mut(&vlan).expect("listed");
            if own != snooper.querier().own_address {
                info!("{}: IGMP queries are sent from {own}", vlan_name(&core.bridge.name, vlan));
                let actions = snooper.set_own_address(own, now);
                core.apply(&self.igmp, vlan, actions);
            }
        }
        if self.mld.enabled {
            for vlan in self.mld.snoopers.keys().copied().collect::<Vec<_>>() {
                let own = core.query_source::<Ipv6Addr>(vlan);
                let snooper = self.mld.snoopers.get_mut(&vlan).expect("listed");
                if own != snooper.querier().own_address {
                    let name = vlan_name(&core.bridge.name, vlan);
                    if own.is_unspecified() {
                        warn!("{name}: no link-local IPv6 address: snoop sends no MLD queries");
                    } else {
                        info!("{name}: MLD queries are sent from {own}");
                    }
                    let actions = snooper.set_own_address(own, now);
                    core.apply(&self.mld, vlan, actions);
                }
            }
        }
        Ok(())
    }

    /// Attaches to ports that joined the bridge and lets go of ports that
    /// left (after [`Controller::refresh_bridge`], which finds a deleted
    /// bridge). A port that vanishes meanwhile is skipped; one that cannot be
    /// attached is counted and tried again at the next scan.
    async fn sync_ports(&mut self) -> Result<(), bridge::Error> {
        let core = &mut self.core;
        let mut ports = core.netlink.ports(&core.bridge).await?;
        for port in &mut ports {
            port.policy.filters = core.other_filters(port.ifindex);
        }
        let mut ports_changed = false;
        let mut attached = Vec::new();
        for Port { ifindex, name, policy, .. } in &mut ports {
            if let Some(info) = core.ports.get_mut(ifindex) {
                if info.policy != *policy {
                    info.policy = *policy;
                    let (flags, note) = (info.flags(), info.note(core.redirect));
                    info!("port {name}: {}", if note.is_empty() { "forwarding as usual".into() } else { note });
                    if let Err(error) = core.datapath.set_port_flags(*ifindex, flags) {
                        warn!("port {name}: {:#}", anyhow::Error::from(error));
                    }
                    let options = core.port_options(name, policy);
                    let now = core.now();
                    let actions = self.igmp.each(Some(*ifindex), |s| s.set_port_options(*ifindex, options, now));
                    core.apply_each(&self.igmp, actions);
                    let actions = self.mld.each(Some(*ifindex), |s| s.set_port_options(*ifindex, options, now));
                    core.apply_each(&self.mld, actions);
                    ports_changed = true;
                }
                continue;
            }
            let mut info = PortInfo { name: name.clone(), policy: *policy, ..PortInfo::default() };
            match core.datapath.attach_port(*ifindex, info.flags()) {
                // Now that snoop's programs are there, what runs after them.
                Ok(()) => {
                    policy.filters = core.other_filters(*ifindex);
                    if policy.filters != info.policy.filters {
                        info.policy = *policy;
                        if let Err(error) = core.datapath.set_port_flags(*ifindex, info.flags()) {
                            warn!("port {name}: {:#}", anyhow::Error::from(error));
                        }
                    }
                }
                Err(datapath::Error::PortGone { .. }) => {
                    debug!("port {name} went away before it was attached");
                    continue;
                }
                Err(error) => {
                    warn!("{:#}; trying again at the next scan", anyhow::Error::from(error));
                    core.stats.bump(ControllerCounter::AttachFailures);
                    continue;
                }
            }
            if let Some(why) = policy.bridge_path() {
                info!("port {name}: {why}: frames entering it take the bridge path");
            }
            core.ports.insert(*ifindex, info);
            core.publish(EventKind::PortAttached, None, Some(*ifindex), format!("ifindex {ifindex}"));
            attached.push(*ifindex);
            ports_changed = true;
        }
        let gone: Vec<u32> = core.ports.keys().copied().filter(|i| !ports.iter().any(|p| p.ifindex == *i)).collect();
        for ifindex in gone {
            let actions = self.igmp.each(Some(ifindex), |s| s.remove_port(ifindex));
            core.apply_each(&self.igmp, actions);
            let actions = self.mld.each(Some(ifindex), |s| s.remove_port(ifindex));
            core.apply_each(&self.mld, actions);
            if let Err(error) = core.datapath.detach_port(ifindex) {
                warn!("letting go of port {}: {:#}", core.port_name(ifindex), anyhow::Error::from(error));
            }
            info!("port {} left the bridge", core.port_name(ifindex));
            core.ports.remove(&ifindex);
            ports_changed = true;
        }
        // A copy handed to the peer skips the port's egress hook: not past
        // the operator's filters there.
        let peer_ports =
            ports.iter().filter(|p| p.peer_redirect && p.policy.filters.egress == 0).map(|p| p.ifindex).collect();
        if core.datapath.set_peer_ports(peer_ports) {
            ports_changed = true;
        }
        let (vlans_changed, mut joined) = self.follow_vlans();
        joined.extend(attached);
        for ifindex in joined {
            let Some(name) = self.core.ports.get(&ifindex).map(|p| p.name.clone()) else { continue };
            self.set_port_groups(ifindex, &name);
        }
        if vlans_changed {
            self.refresh_local_groups();
        }
        if ports_changed || vlans_changed {
            // The port count is in every group's redirect entry; port
            // policies decide who may be a copy's target.
            each_family!(self, |core, family| {
                core.refresh_report_ports(family);
                core.refresh_fanout(family, BTreeSet::new(), true)
            });
            if let Err(error) = self.core.write_config() {
                warn!("{:#}", anyhow::Error::from(error));
            }
        }
        Ok(())
    }

    /// Gives every VLAN its state machine and each one the ports in its VLAN
    /// (one for all ports while the bridge does not filter VLANs), and the
    /// data path each port's VLANs. Whether anything changed, and the ports
    /// that joined a VLAN (their filters and static groups are due there).
    fn follow_vlans(&mut self) -> (bool, BTreeSet<u32>) {
        let core = &mut self.core;
        let now = core.now();
        let mut changed = false;
        for (ifindex, vlans) in core.ports.keys().map(|i| (*i, core.vlans.ports.get(i))).collect::<Vec<_>>() {
            let (pvid, untagged) = match vlans.filter(|_| core.vlans.filtering) {
                Some(vlans) => (vlans.pvid.unwrap_or(VLAN_NONE), vlans.untagged_vlan().unwrap_or(VLAN_NONE)),
                None => (VLAN_NONE, VLAN_NONE),
            };
            if let Err(error) = core.datapath.set_port_vlans(ifindex, pvid, untagged) {
                warn!("port {}: {:#}", core.port_name(ifindex), anyhow::Error::from(error));
            }
        }
        // Copy lists tag and count per the VLAN configuration, and redirect
        // takes a tagged frame only from a port in its VLAN.
        let mut in_vlans = BTreeSet::new();
        if core.vlans.filtering {
            for ifindex in core.ports.keys() {
                in_vlans.extend(core.vlans.vlans_of([*ifindex]).into_iter().map(|v| VlanPortKey::new(v, *ifindex)));
            }
        }
        if core.vlans != core.followed_vlans || in_vlans != core.vlan_entries.in_vlans {
            core.followed_vlans = core.vlans.clone();
            core.vlan_entries.in_vlans = in_vlans;
            core.vlan_entries.write(&mut core.datapath, &mut core.stats);
            changed = true;
        }
        // VLAN → its ports.
        let mut wanted: BTreeMap<u16, BTreeSet<u32>> = BTreeMap::new();
        if core.vlans.filtering {
            for ifindex in core.ports.keys() {
                for vlan in core.vlans.vlans_of([*ifindex]) {
                    wanted.entry(vlan).or_default().insert(*ifindex);
                }
            }
        } else {
            wanted.insert(VLAN_NONE, core.ports.keys().copied().collect());
        }
        let mut joined = BTreeSet::new();
        each_family!(self, |core, family| { changed |= core.follow_vlans(family, &wanted, now, &mut joined) });
        if changed {
            each_family!(self, |core, family| core.refresh_presence(family));
        }
        (changed, joined)
    }

    /// Adopts the memberships and learned router ports a previous snoop left
    /// in the pinned maps.
    fn resume_memberships(&mut self) {
        let core = &mut self.core;
        let now = core.now();
        self.igmp.snoopers.values_mut().for_each(|s| s.resume_querier_presence(now));
        self.mld.snoopers.values_mut().for_each(|s| s.resume_querier_presence(now));
        for (family, vlan, port) in std::mem::take(&mut core.resumed_routers) {
            if family == FAMILY_IPV4 {
                let actions = self.igmp.each_in(vlan, Some(port), |s| s.restore_router_port(port, now));
                core.apply_each(&self.igmp, actions);
            } else {
                let actions = self.mld.each_in(vlan, Some(port), |s| s.restore_router_port(port, now));
                core.apply_each(&self.mld, actions);
            }
        }
        let mut restored = 0;
        let mut statics = Vec::new();
        for (key @ PortGroupKey { group, ifindex }, value) in core.datapath.memberships() {
            let leaving = value.flags & MEMBER_LEAVING != 0;
            if value.flags & MEMBER_STATIC != 0 {
                statics.push(key);
            }
            let known_port = core.ports.contains_key(&ifindex);
            let sources = core.datapath.member_sources(&key);
            // A membership of a VLAN the port is no longer in is not adopted.
            let adopted = match group.family {
                FAMILY_IPV4 => Group::<Ipv4Addr>::from_key(&group).filter(|_| known_port).and_then(|group| {
                    let snooper = self.igmp.snoopers.get_mut(&group.vlan)?;
                    let filter = pinned_filter(sources);
                    snooper
                        .ports()
                        .contains_key(&ifindex)
                        .then(|| snooper.restore_member(group, ifindex, value.version, leaving, filter, now))
                }),
                FAMILY_IPV6 => {
                    Group::<Ipv6Addr>::from_key(&group).filter(|_| known_port && self.mld.enabled).and_then(|group| {
                        let snooper = self.mld.snoopers.get_mut(&group.vlan)?;
                        let filter = pinned_filter(sources);
                        snooper
                            .ports()
                            .contains_key(&ifindex)
                            .then(|| snooper.restore_member(group, ifindex, value.version, leaving, filter, now))
                    })
                }
                _ => None,
            };
            match adopted {
                Some(()) => restored += 1,
                None => drop(core.datapath.remove_member(key)),
            }
        }
        for key in core.datapath.registered_groups() {
            let known = match key.family {
                FAMILY_IPV4 => Group::<Ipv4Addr>::from_key(&key).is_some_and(|g| self.igmp.members(&g).is_some()),
                FAMILY_IPV6 => Group::<Ipv6Addr>::from_key(&key).is_some_and(|g| self.mld.members(&g).is_some()),
                _ => false,
            };
            if !known {
                let _ = core.datapath.unregister_group(key);
            }
        }
        for ifindex in core.datapath.port_entries() {
            if !core.ports.contains_key(&ifindex) {
                let _ = core.datapath.detach_port(ifindex);
            }
        }
        // Static ones stay static, those added at run time too (the
        // configuration's own win where both name a membership).
        for PortGroupKey { group, ifindex } in statics {
            let Some(name) = core.ports.get(&ifindex).map(|p| p.name.clone()) else { continue };
            let pinned = match group.family {
                FAMILY_IPV4 => pinned_static(&self.igmp, &group, ifindex, now),
                _ => pinned_static(&self.mld, &group, ifindex, now),
            };
            let Some((group, sources, vlan)) = pinned else { continue };
            let entry = StaticGroup { port: name, group, sources, vlan };
            if !core.statics.iter().any(|other| other.same_membership(&entry)) {
                core.statics.insert(entry);
            }
        }
        let ports: Vec<(u32, String)> = core.ports.iter().map(|(i, p)| (*i, p.name.clone())).collect();
        for (ifindex, name) in ports {
            self.set_port_groups(ifindex, &name);
        }
        info!("resumed {restored} memberships from the pinned maps");
        self.core.resuming = false;
    }

    /// A port's group filter and static groups, from the configuration and
    /// the static groups added since: when it is attached, and at a reload.
    fn set_port_groups(&mut self, ifindex: u32, name: &str) {
        let filter = self.core.port_filter(name);
        let actions = self.igmp.each(Some(ifindex), |s| s.set_port_filter(ifindex, filter.clone()));
        self.core.apply_each(&self.igmp, actions);
        let actions = self.mld.each(Some(ifindex), |s| s.set_port_filter(ifindex, filter.clone()));
        self.core.apply_each(&self.mld, actions);
        let statics: Vec<StaticGroup> = self.core.statics.iter().filter(|s| s.port == name).cloned().collect();
        for entry in statics {
            if let Err(why) = self.set_static(&entry, true) {
                warn!("static group {entry}: {why}");
            }
        }
    }

    /// Adds or deletes one static membership in the state machine.
    fn set_static(&mut self, entry: &StaticGroup, add: bool) -> Result<(), String> {
        let ifindex = self
            .core
            .ports
            .iter()
            .find(|(_, port)| port.name == entry.port)
            .map(|(ifindex, _)| *ifindex)
            .ok_or_else(|| format!("{} is not a port of {}", entry.port, self.core.bridge.name))?;
        let vlan = if !self.core.vlans.filtering {
            if entry.vlan != VLAN_NONE {
                return Err(format!(
                    "{} does not filter VLANs: a static group there takes no vlan",
                    self.core.bridge.name
                ));
            }
            VLAN_NONE
        } else {
            let port_vlans = self.core.vlans.ports.get(&ifindex).cloned().unwrap_or_default();
            // No VLAN given: the port's own (its PVID).
            let vlan = if entry.vlan == VLAN_NONE { port_vlans.pvid.unwrap_or(VLAN_NONE) } else { entry.vlan };
            if !port_vlans.vlans.contains_key(&vlan) {
                return Err(match vlan {
                    VLAN_NONE => format!("{} has no PVID: name the VLAN (vlan N)", entry.port),
                    vlan => format!("{} is not in VLAN {vlan}", entry.port),
                });
            }
            vlan
        };
        let result = match entry.group {
            IpAddr::V4(_) => self.core.set_static(&mut self.igmp, entry, vlan, ifindex, add),
            IpAddr::V6(_) if self.mld.enabled => self.core.set_static(&mut self.mld, entry, vlan, ifindex, add),
            IpAddr::V6(_) => return Err("MLD snooping is off (--no-mld): IPv6 groups flood".into()),
        };
        result.map_err(|error| error.to_string())
    }

    /// A change a client asked for: what was done, or why not.
    fn change(&mut self, change: Change) -> Result<String, String> {
        match change {
            Change::GroupAdd(entry) => {
                self.set_static(&entry, true)?;
                self.core.statics.retain(|other| !other.same_membership(&entry));
                self.core.statics.insert(entry.clone());
                info!("static group added: {entry}");
                Ok(format!("{entry}: static"))
            }
            Change::GroupDel(entry) => {
                self.set_static(&entry, false)?;
                self.core.statics.retain(|other| !other.same_membership(&entry));
                info!("static group deleted: {entry}");
                Ok(format!("{entry}: no longer static"))
            }
            Change::Reload => {
                notify_systemd(&[NotifyState::Reloading]);
                let result = self.reload();
                let status = format!("snooping on {}", self.core.bridge.name);
                notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
                match &result {
                    Ok(done) => info!("reloaded: {done}"),
                    Err(why) => warn!("reload refused, the configuration in force is unchanged: {why}"),
                }
                result
            }
        }
    }

    /// Reads the configuration again and applies what can change while
    /// snoop runs: port settings, filters, static groups, the unregistered
    /// policy. Memberships, the data path and its maps stay as they are, so
    /// no packet is lost; settings that need them rebuilt (timers, map sizes,
    /// forwarding, ...) are named and wait for a restart.
    fn reload(&mut self) -> Result<String, String> {
        let reload = self.reload.as_ref().ok_or("this snoop was not started from a command line to read again")?;
        let new = reload().map_err(|error| format!("{error:#}"))?;
        let old = self.core.config.clone();
        let mut waiting = Vec::new();
        macro_rules! needs_restart {
            ($($field:ident: $option:literal),* $(,)?) => {
                $(if new.$field != old.$field { waiting.push($option); })*
            };
        }
        needs_restart!(
            bridge: "bridge", timers: "the timers", querier: "no-querier", query_version: "query-version",
            query_source: "query-source", mld: "no-mld", mld_query_version: "mld-query-version",
            mld_query_source: "mld-query-source", vlan_query_sources: "vlan-query-source",
            snoop_ipv6_link_scope: "snoop-ipv6-link-scope",
            max_sources_per_group: "max-sources-per-group", control_rate_limit: "control-rate-limit",
            failsafe_after: "failsafe-after", forwarding: "forwarding", pin_dir: "pin-dir",
            port_scan_interval: "port-scan-interval", metrics: "metrics", control_group: "control-group",
            map_sizes: "max-memberships/max-groups",
        );
        let (old_statics, new_statics): (BTreeSet<StaticGroup>, BTreeSet<StaticGroup>) =
            (old.static_groups.iter().cloned().collect(), new.static_groups.iter().cloned().collect());
        let config = &mut self.core.config;
        config.static_router_ports = new.static_router_ports;
        config.fast_leave_ports = new.fast_leave_ports;
        config.trusted_ports = new.trusted_ports;
        config.max_groups_per_port = new.max_groups_per_port;
        config.port_max_groups = new.port_max_groups;
        config.port_allow = new.port_allow;
        config.port_deny = new.port_deny;
        config.static_groups = new.static_groups;
        config.flood_unregistered = new.flood_unregistered;
        config.keep_state = new.keep_state;
        // Static groups the file no longer has go; those it gained come.
        let mut failed = Vec::new();
        for gone in old_statics.difference(&new_statics) {
            if new_statics.iter().any(|entry| entry.same_membership(gone)) {
                continue; // its sources changed: set anew below
            }
            self.core.statics.retain(|other| !other.same_membership(gone));
            if let Err(why) = self.set_static(gone, false) {
                debug!("static group {gone}: {why}");
            }
        }
        for added in new_statics.difference(&old_statics) {
            self.core.statics.retain(|other| !other.same_membership(added));
            self.core.statics.insert(added.clone());
        }
        let ports: Vec<(u32, String, PortPolicy)> =
            self.core.ports.iter().map(|(ifindex, port)| (*ifindex, port.name.clone(), port.policy)).collect();
        for (ifindex, name, policy) in &ports {
            let options = self.core.port_options(name, policy);
            let now = self.core.now();
            let actions = self.igmp.each(Some(*ifindex), |s| s.set_port_options(*ifindex, options, now));
            self.core.apply_each(&self.igmp, actions);
            let actions = self.mld.each(Some(*ifindex), |s| s.set_port_options(*ifindex, options, now));
            self.core.apply_each(&self.mld, actions);
            self.set_port_groups(*ifindex, name);
        }
        for added in new_statics.difference(&old_statics) {
            if !ports.iter().any(|(_, name, _)| *name == added.port) {
                failed.push(format!("static group {added}: {} is not a port of the bridge (yet)", added.port));
            }
        }
        if let Err(error) = self.core.write_config() {
            warn!("{:#}", anyhow::Error::from(error));
        }
        // A static group whose sources changed is one changed, not one added and one deleted.
        let in_other = |entry: &&StaticGroup, others: &BTreeSet<StaticGroup>| {
            others.iter().any(|other| other.same_membership(entry))
        };
        let (changed, added): (Vec<_>, Vec<_>) =
            new_statics.difference(&old_statics).partition(|entry| in_other(entry, &old_statics));
        let deleted = old_statics.difference(&new_statics).filter(|entry| !in_other(entry, &new_statics)).count();
        let mut done = format!("static groups: {} added, {} changed, {deleted} deleted", added.len(), changed.len());
        if !waiting.is_empty() {
            done += &format!("; changed but applied only at the next start: {}", waiting.join(", "));
        }
        for note in failed {
            done += &format!("; {note}");
        }
        Ok(done)
    }

    /// Redirect mode bypasses the bridge, so the bridge host's own members
    /// (sockets on the bridge device) must be copied to explicitly.
    fn refresh_local_groups(&mut self) {
        if !self.core.redirect {
            return;
        }
        // Sockets on the bridge device hear the VLANs leaving it untagged;
        // on a VLAN interface on it (br0.10), its VLAN.
        let mut interfaces: Vec<(u32, Vec<u16>)> = Vec::new();
        let bridge = self.core.bridge.ifindex;
        let vlans = &self.core.vlans;
        if vlans.filtering {
            let untagged = vlans.ports.get(&bridge).map(|v| v.vlans.iter().filter(|(_, u)| **u).map(|(v, _)| *v));
            interfaces.push((bridge, untagged.into_iter().flatten().collect()));
            interfaces.extend(vlans.interfaces.iter().map(|(vlan, ifindex)| (*ifindex, vec![*vlan])));
        } else {
            interfaces.push((bridge, vec![VLAN_NONE]));
        }
        let link_scope = self.mld.settings.link_scope;
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for (ifindex, in_vlans) in interfaces {
            for addr in local_groups(ifindex).into_iter().filter(|g| g.is_snoopable(false)) {
                v4.extend(in_vlans.iter().map(|vlan| Group { vlan: *vlan, addr }));
            }
            for addr in local_groups_v6(ifindex).into_iter().filter(|g| g.is_snoopable(link_scope)) {
                v6.extend(in_vlans.iter().map(|vlan| Group { vlan: *vlan, addr }));
            }
        }
        self.core.update_local_groups(&mut self.igmp, v4);
        self.core.update_local_groups(&mut self.mld, v6);
    }

    /// Answers a snapshot request, and every one queued behind it with the
    /// same snapshot: a crowd of clients costs one snapshot, not one each.
    fn answer(&self, first: SnapshotRequest, queue: &mut mpsc::Receiver<SnapshotRequest>) {
        let mut requests = vec![first];
        while let Ok(request) = queue.try_recv() {
            requests.push(request);
        }
        // A full snapshot answers a counters request too.
        let counters_only = requests.iter().all(|r| r.counters_only);
        let snapshot = Arc::new(self.snapshot(counters_only));
        for request in requests {
            let _ = request.reply.send(snapshot.clone());
        }
    }

    fn snapshot(&self, counters_only: bool) -> Snapshot {
        let sources = snapshot::Sources {
            bridge: &self.core.bridge.name,
            uptime: self.core.now(),
            igmp: &self.igmp.snoopers,
            mld: self.mld.enabled.then_some(&self.mld.snoopers),
            datapath: &self.core.datapath,
            ports: &self.core.ports,
            stats: &self.core.stats,
            forwarding: snapshot::ForwardingView {
                mode: if self.core.redirect { "redirect" } else { "bridge" }.into(),
                why: self.core.bridge_path_why.map(str::to_owned),
                bridge_path_ports: self
                    .core
                    .ports
                    .values()
                    .filter(|_| self.core.redirect)
                    .filter_map(|port| Some((port.name.clone(), port.policy.bridge_path()?.to_owned())))
                    .collect(),
            },
        };
        snapshot::collect(&sources, counters_only)
    }
}

/// The next burst of link changes (a container starting is one rescan).
async fn next_change(changes: &mut Option<Box<dyn Stream<Item = ()> + Unpin>>) -> Option<()> {
    let changes = changes.as_mut()?;
    changes.next().await?;
    while let Some(Some(())) = changes.next().now_or_never() {}
    Some(())
}

impl Core {
    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Hands one captured packet of family `A` to its state machine.
    fn handle<A: Family>(&mut self, family: &mut FamilyState<A>, ifindex: u32, vlan: u16, packet: &[u8]) {
        match A::parse(packet) {
            Ok(packet) => {
                debug!("port {ifindex}: {packet:?}");
                let now = self.now();
                // Heard in a VLAN the port is not in (the bridge drops such
                // frames itself): nobody's membership.
                let Some(snooper) = family.snoopers.get_mut(&vlan).filter(|s| s.ports().contains_key(&ifindex)) else {
                    self.stats.bump(ControllerCounter::OutsideVlan);
                    return;
                };
                let actions = snooper.handle(ifindex, vlan, &packet, now);
                self.apply(family, vlan, actions);
            }
            Err(error) => {
                debug!("port {ifindex}: dropped {} frame: {error}", A::PROTOCOL);
                self.stats.bump(ControllerCounter::Dropped(Protocol::of::<A>(), error));
                if let Some(port) = self.ports.get_mut(&ifindex) {
                    port.malformed += 1;
                }
            }
        }
    }

    fn update_local_groups<A: Family>(&mut self, family: &mut FamilyState<A>, now: BTreeSet<Group<A>>) {
        if now != family.local_groups {
            let changed = now.symmetric_difference(&family.local_groups).copied().collect();
            family.local_groups = now;
            self.refresh_fanout(family, changed, false);
        }
    }

    /// [`Core::apply`] for the actions of several VLANs' state machines.
    fn apply_each<A: Family>(&mut self, family: &FamilyState<A>, batches: Vec<(u16, Vec<Action<A>>)>) {
        for (vlan, actions) in batches {
            self.apply(family, vlan, actions);
        }
    }

    /// Carries out the decisions of `vlan`'s state machine. A failed map
    /// write is logged and counted: the state machine stays authoritative
    /// and the next refresh retries.
    fn apply<A: Family>(&mut self, family: &FamilyState<A>, vlan: u16, actions: Vec<Action<A>>) {
        if actions.is_empty() {
            return;
        }
        let mut changed_groups = BTreeSet::new();
        let mut routers_changed = false;
        for action in &actions {
            match *action {
                Action::AddMember { group, .. }
                | Action::SetSources { group, .. }
                | Action::RemoveMember { group, .. }
                | Action::UnregisterGroup { group } => {
                    changed_groups.insert(group);
                }
                Action::SetRouterPort { .. } => routers_changed = true,
                _ => {}
            }
        }
        if routers_changed {
            self.refresh_report_ports(family);
        }
        // Redirect targets first: a port that lost its membership must stop
        // getting copies before its member entry goes (without it, an
        // unregistered group's copy would be let through as flooding).
        self.refresh_fanout(family, changed_groups, routers_changed);
        for action in actions {
            if let Err(error) = self.apply_one(family, vlan, &action) {
                warn!("{action:?} failed: {error:#}");
                self.stats.bump(ControllerCounter::DatapathWriteErrors);
            }
        }
        self.refresh_unpruned(family);
    }

    /// Writes the data path's policy: flags from the configuration, redirect
    /// (or not), and whether some port's frames must take the bridge path.
    fn write_config(&mut self) -> Result<(), datapath::Error> {
        let mut flags = if self.config.flood_unregistered { CONFIG_FLOOD_UNREGISTERED } else { 0 };
        flags |= self.absent_queriers;
        if self.config.snoop_ipv6_link_scope {
            flags |= CONFIG_SNOOP_IPV6_LINK_SCOPE;
        }
        if self.vlans.filtering {
            flags |= CONFIG_VLAN_AWARE;
        }
        if self.redirect {
            flags |= CONFIG_REDIRECT;
        }
        if self.ports.values().any(|p| p.policy.bridge_path().is_some()) {
            flags |= CONFIG_CHECK_SOURCE_PORT;
        }
        // Heartbeats come with every port scan; three missed ones end hand-overs.
        let handover = (self.config.port_scan_interval * 3).max(Duration::from_secs(1));
        self.datapath.configure(flags, self.config.failsafe_after, handover, self.config.control_rate_limit)
    }

    /// The bridge's own snooping stays off while snoop runs (two snoopers
    /// prune each other's traffic), whoever turns it on again: a network
    /// manager enslaving a port, networkd or ifupdown2 applying their
    /// settings, an administrator. Turned off again at once (the link
    /// change is an rtnetlink event), counted, and told once; the value
    /// found at start is what a clean exit restores.
    async fn keep_kernel_snooping_off(&mut self) {
        match self.netlink.kernel_snooping(&self.bridge).await {
            Ok(false) => return,
            Ok(true) => {}
            Err(error) => {
                return debug!("reading {}'s mcast_snooping: {:#}", self.bridge.name, anyhow::Error::from(error))
            }
        }
        self.stats.bump(ControllerCounter::KernelSnoopingReenabled);
        let name = &self.bridge.name;
        if self.stats.get(ControllerCounter::KernelSnoopingReenabled) == 1 {
            warn!(
                "{name}'s own multicast snooping was turned on again (by a network manager or by hand): turning it \
                 off, as two snoopers prune each other's traffic. To keep it off: NetworkManager \
                 `bridge.multicast-snooping no`, systemd-networkd `MulticastSnooping=false`, ifupdown2 \
                 `bridge-mcsnoop 0` (this is told once; kernel_snooping_reenabled counts each time)"
            );
        }
        if let Err(error) = self.netlink.set_kernel_snooping(&self.bridge, false).await {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    /// Teaches the bridge the MACs of hosts whose frames the fast path
    /// consumed (so it never learned them itself): without it, unicast to a
    /// host that only sends multicast floods to every port. At most every 10
    /// s per host and port, well inside the bridge's ageing time.
    async fn teach_senders(&mut self) {
        let since = monotonic_now_ns().saturating_sub(2 * self.config.port_scan_interval.as_nanos() as u64);
        let now = Instant::now();
        self.taught.retain(|_, (_, at)| now.duration_since(*at) < Duration::from_secs(10));
        for (mac, port, vlan) in self.datapath.recent_senders(since) {
            let Some(info) = self.ports.get(&port) else { continue };
            // The bridge learns nothing on such ports; neither may snoop teach it.
            let taught = self.taught.get(&(mac, vlan)).is_some_and(|(p, _)| *p == port);
            if !info.policy.learning || info.policy.locked || taught {
                continue;
            }
            match self.netlink.learn(port, mac, vlan).await {
                Ok(()) => drop(self.taught.insert((mac, vlan), (port, now))),
                Err(error) => debug!("{:#}", anyhow::Error::from(error)),
            }
        }
    }

    /// Writes a membership; one a full map cannot hold is remembered (its
    /// port gets every group meanwhile) and retried.
    fn write_member(&mut self, member: PortGroupKey, version: u8, expires: Duration, leaving: bool) -> Result<()> {
        let flags = if leaving { MEMBER_LEAVING } else { 0 } | if expires == NEVER { MEMBER_STATIC } else { 0 };
        match self.datapath.set_member(member, version, self.monotonic_ns(expires), flags) {
            Err(datapath::Error::MapFull { map }) => {
                self.map_full(map);
                self.unwritten.members.insert(member);
                Ok(())
            }
            result => {
                self.unwritten.members.remove(&member);
                Ok(result?)
            }
        }
    }

    /// Registers a group; one a full map cannot hold is remembered (its
    /// member ports get every group meanwhile) and retried.
    fn write_group(&mut self, group: GroupKey) -> Result<()> {
        match self.datapath.register_group(group) {
            Err(datapath::Error::MapFull { map }) => {
                self.map_full(map);
                self.unwritten.groups.insert(group);
                Ok(())
            }
            result => {
                self.unwritten.groups.remove(&group);
                Ok(result?)
            }
        }
    }

    fn map_full(&mut self, map: &str) {
        if self.unwritten.is_empty() {
            warn!(
                "{map} is full: ports whose memberships do not fit get every group until they do \
                 (raise --max-memberships / --max-groups)"
            );
        }
        self.stats.bump(ControllerCounter::MapFull);
    }

    /// Retries the writes a full map refused (at every port scan).
    fn retry_unwritten<A: Family>(&mut self, family: &FamilyState<A>) {
        if self.unwritten.is_empty() {
            return;
        }
        for member in std::mem::take(&mut self.unwritten.members) {
            let current =
                Group::<A>::from_key(&member.group).and_then(|group| family.member(&group, member.ifindex).cloned());
            if let Some(current) = current {
                if let Err(error) = self.write_member(member, current.version, current.expires, current.leaving) {
                    warn!("retrying a membership: {error:#}");
                }
            }
        }
        for group in std::mem::take(&mut self.unwritten.groups) {
            if Group::<A>::from_key(&group).is_some_and(|g| family.members(&g).is_some()) {
                if let Err(error) = self.write_group(group) {
                    warn!("retrying a group: {error:#}");
                }
            }
        }
        self.refresh_unpruned(family);
    }

    /// Until a router port is known, reports go to the trusted ports too: an
    /// upstream router or IGMP proxy there hears a join at once, not at its
    /// next query (which may be minutes away).
    fn refresh_report_ports<A: Family>(&mut self, family: &FamilyState<A>) {
        self.refresh_vlan_entries(family);
        let now = self.now();
        // Per VLAN: a VLAN without a router port sends its reports to its trusted ports.
        let mut wanting = BTreeSet::new();
        for snooper in family.snoopers.values() {
            let states = snooper.ports();
            if !states.values().any(|p| p.is_router(now)) {
                wanting.extend(states.iter().filter(|(_, p)| p.options.trusted).map(|(ifindex, _)| *ifindex));
            }
        }
        let flag = A::FLAGS.gets_reports;
        let changed: Vec<(u32, u32)> = self
            .ports
            .iter_mut()
            .filter_map(|(ifindex, info)| {
                let wanted = wanting.contains(ifindex);
                (info.gets_reports & flag != 0 && !wanted || info.gets_reports & flag == 0 && wanted).then(|| {
                    info.gets_reports ^= flag;
                    (*ifindex, info.flags())
                })
            })
            .collect();
        for (ifindex, flags) in changed {
            if let Err(error) = self.datapath.set_port_flags(ifindex, flags) {
                warn!("port {}: {:#}", self.port_name(ifindex), anyhow::Error::from(error));
            }
        }
    }

    /// On a VLAN-aware bridge: `family`'s share of what the data path
    /// prunes by per VLAN, querier presence, router ports and the ports
    /// that get reports (trusted ones, in a VLAN with no router port).
    fn refresh_vlan_entries<A: Family>(&mut self, family: &FamilyState<A>) {
        let now = self.now();
        let flags = A::FLAGS;
        let mut vlans = BTreeMap::new();
        let mut ports = BTreeMap::new();
        if self.vlans.filtering {
            for (vlan, snooper) in &family.snoopers {
                let present = family.enabled && snooper.querier_present(now);
                vlans.insert(*vlan, if present { 0 } else { flags.no_querier });
                let states = snooper.ports();
                let has_router = states.values().any(|p| p.is_router(now));
                for (ifindex, port) in states {
                    let port_flags = if port.is_router(now) {
                        flags.router
                    } else if !has_router && port.options.trusted {
                        flags.gets_reports
                    } else {
                        0
                    };
                    if port_flags != 0 {
                        ports.insert(VlanPortKey::new(*vlan, *ifindex), port_flags);
                    }
                }
            }
        }
        self.vlan_entries.vlans.insert(A::FAMILY, vlans);
        self.vlan_entries.ports.insert(A::FAMILY, ports);
        self.vlan_entries.write(&mut self.datapath, &mut self.stats);
    }

    /// Ports with a membership the maps could not hold get every group
    /// (PORT_UNPRUNED), and lose that as soon as everything fits.
    fn refresh_unpruned<A: Family>(&mut self, family: &FamilyState<A>) {
        let of_family = self.unwritten.members.iter().filter(|m| m.group.family == A::FAMILY);
        let mut unpruned: BTreeSet<u32> = of_family.map(|m| m.ifindex).collect();
        for group in self.unwritten.groups.iter().filter_map(Group::<A>::from_key) {
            unpruned.extend(family.members(&group).into_iter().flat_map(|members| members.keys()));
        }
        self.unpruned.insert(A::FAMILY, unpruned);
        let unpruned: BTreeSet<u32> = self.unpruned.values().flatten().copied().collect();
        let changed: Vec<(u32, u32)> = self
            .ports
            .iter_mut()
            .filter(|(ifindex, info)| info.unpruned != unpruned.contains(ifindex))
            .map(|(ifindex, info)| {
                info.unpruned = !info.unpruned;
                (*ifindex, info.flags())
            })
            .collect();
        for (ifindex, flags) in changed {
            let name = self.port_name(ifindex);
            if flags & PORT_UNPRUNED != 0 {
                warn!("port {name} gets every group: some of its memberships do not fit the maps");
            } else {
                info!("port {name}: every membership fits the maps again; pruning it as usual");
            }
            if let Err(error) = self.datapath.set_port_flags(ifindex, flags) {
                warn!("port {name}: {:#}", anyhow::Error::from(error));
            }
        }
    }

    /// Nothing of a family is pruned where no querier is present: a VLAN
    /// without one has memberships nobody asks about. The config flag says
    /// whether some VLAN lacks one (redirect, and a bridge without VLANs,
    /// go by it); on a VLAN-aware bridge pruning goes by each VLAN's entry.
    fn refresh_presence<A: Family>(&mut self, family: &FamilyState<A>) {
        self.refresh_vlan_entries(family);
        if !family.enabled {
            return;
        }
        let present = family.querier_present(self.now());
        let was_present = self.absent_queriers & A::FLAGS.no_querier == 0;
        if present == was_present {
            return;
        }
        let protocol = A::PROTOCOL;
        if present {
            self.absent_queriers &= !A::FLAGS.no_querier;
            info!(
                "an {protocol} querier is present{}: pruning",
                if self.vlans.filtering { " in every VLAN" } else { "" }
            );
        } else {
            self.absent_queriers |= A::FLAGS.no_querier;
            let absent: Vec<String> = family
                .snoopers
                .iter()
                .filter(|(_, s)| !s.querier_present(self.now()))
                .map(|(vlan, _)| vlan.to_string())
                .collect();
            let vlans = if self.vlans.filtering { format!(" in VLAN {}", absent.join(" ")) } else { String::new() };
            warn!(
                "no {protocol} querier is present{vlans}: flooding every {protocol} group, as a plain bridge, \
                 until one is heard (hosts report only when queried)"
            );
        }
        if let Err(error) = self.write_config() {
            warn!("{:#}", anyhow::Error::from(error));
        }
    }

    /// The address `vlan`'s queries speak from: `--vlan-query-source` for
    /// it, else the VLAN's interface on the bridge, else `--query-source` /
    /// `--mld-query-source`, else the bridge's own (for IPv4 only in the
    /// VLAN of its untagged frames: an IPv6 link-local address is valid on
    /// any link), else none (0.0.0.0, as RFC 4541 2.1.1 allows a snooping
    /// switch; MLD needs a link-local source and sends nothing).
    fn query_source<A: Family>(&self, vlan: u16) -> A {
        let bridge_pvid = self.vlans.ports.get(&self.bridge.ifindex).and_then(|v| v.pvid);
        let bridges_own = !self.vlans.filtering || bridge_pvid == Some(vlan);
        let for_vlan = self.config.vlan_query_sources.get(&(vlan, A::FAMILY == FAMILY_IPV6)).copied();
        let ip = if A::FAMILY == FAMILY_IPV4 {
            let found = self.addresses.vlan_ipv4.get(&vlan).copied().map(IpAddr::V4);
            let configured = self.config.query_source.map(IpAddr::V4);
            let bridge = self.addresses.bridge_ipv4.filter(|_| bridges_own).map(IpAddr::V4);
            [for_vlan, found, configured, bridge].into_iter().flatten().next().unwrap_or(Ipv4Addr::UNSPECIFIED.into())
        } else {
            let found = self.addresses.vlan_ipv6.get(&vlan).copied().map(IpAddr::V6);
            let configured = self.config.mld_query_source.map(IpAddr::V6);
            let bridge = self.addresses.bridge_ipv6.map(IpAddr::V6);
            [for_vlan, found, configured, bridge].into_iter().flatten().next().unwrap_or(Ipv6Addr::UNSPECIFIED.into())
        };
        A::from_ip(ip).expect("an address of the family")
    }

    /// Gives each VLAN of `wanted` a state machine with its ports, ends
    /// those of VLANs gone; adds to `joined` the ports that joined one.
    /// Whether anything changed.
    fn follow_vlans<A: Family>(
        &mut self,
        family: &mut FamilyState<A>,
        wanted: &BTreeMap<u16, BTreeSet<u32>>,
        now: Duration,
        joined: &mut BTreeSet<u32>,
    ) -> bool {
        let mut changed = false;
        let gone: Vec<u16> = family.snoopers.keys().filter(|v| !wanted.contains_key(v)).copied().collect();
        for vlan in gone {
            let snooper = family.snoopers.get_mut(&vlan).expect("listed");
            let ports: Vec<u32> = snooper.ports().keys().copied().collect();
            let actions = ports.into_iter().flat_map(|port| snooper.remove_port(port)).collect();
            self.apply(family, vlan, actions);
            family.snoopers.remove(&vlan);
            if vlan != VLAN_NONE && family.enabled {
                info!(
                    "{}: no port is in it any more: its {} querier stops",
                    vlan_name(&self.bridge.name, vlan),
                    A::PROTOCOL
                );
            }
            changed = true;
        }
        for (vlan, ports) in wanted {
            if !family.snoopers.contains_key(vlan) {
                let own = self.query_source::<A>(*vlan);
                let mut snooper = family.new_snooper(own, now);
                if self.resuming {
                    snooper.resume_querier_presence(now);
                }
                family.snoopers.insert(*vlan, snooper);
                changed = true;
            }
            let options: Vec<(u32, PortOptions)> = ports
                .iter()
                .filter_map(|port| {
                    self.ports.get(port).map(|info| (*port, self.port_options(&info.name, &info.policy)))
                })
                .collect();
            let snooper = family.snoopers.get_mut(vlan).expect("inserted");
            let leaving: Vec<u32> = snooper.ports().keys().filter(|p| !ports.contains(p)).copied().collect();
            let mut actions = Vec::new();
            for port in leaving {
                actions.extend(snooper.remove_port(port));
                changed = true;
            }
            for (port, options) in options {
                if !snooper.ports().contains_key(&port) {
                    actions.extend(snooper.add_port(port, options));
                    joined.insert(port);
                    changed = true;
                }
            }
            self.apply(family, *vlan, actions);
        }
        changed
    }

    fn apply_one<A: Family>(&mut self, family: &FamilyState<A>, vlan: u16, action: &Action<A>) -> Result<()> {
        match *action {
            Action::AddMember { group, port, version, expires } => {
                let detail = if expires == NEVER { "static".to_owned() } else { format!("{}v{version}", A::PROTOCOL) };
                self.publish_in(vlan, EventKind::Join, Some(group.addr.ip()), Some(port), detail);
                self.write_member(member_key(group, port), version, expires, false)?;
            }
            Action::RefreshMember { group, port, version, expires, leaving } => {
                self.write_member(member_key(group, port), version, expires, leaving)?;
            }
            Action::SetSources { group, port, ref filter } => {
                self.publish_in(vlan, EventKind::Sources, Some(group.addr.ip()), Some(port), filter.to_string());
                let include = matches!(filter, SourceFilter::Include(_));
                let listed = filter.listed().iter().map(|source| source.source_key()).collect();
                if let Err(error) = self.datapath.set_member_sources(member_key(group, port), include, listed) {
                    if let datapath::Error::MapFull { map } = error {
                        self.map_full(map);
                        warn!(
                            "{group} on port {}: its sources do not fit {map}: it gets every source",
                            self.port_name(port)
                        );
                    } else {
                        return Err(error.into());
                    }
                }
            }
            Action::RemoveMember { group, port, reason } => {
                let (kind, detail) = match reason {
                    RemoveReason::Expired => (EventKind::Expire, ""),
                    RemoveReason::Left => (EventKind::Leave, ""),
                    RemoveReason::PortRemoved => (EventKind::PortRemoved, ""),
                    RemoveReason::Filtered => (EventKind::Leave, "the port's group filter no longer allows it"),
                    RemoveReason::StaticDeleted => (EventKind::Leave, "static membership deleted"),
                };
                self.publish_in(vlan, kind, Some(group.addr.ip()), Some(port), detail.to_owned());
                self.unwritten.members.remove(&member_key(group, port));
                self.datapath.remove_member(member_key(group, port))?;
            }
            Action::RegisterGroup { group } => self.write_group(group.key())?,
            Action::UnregisterGroup { group } => {
                self.unwritten.groups.remove(&group.key());
                self.datapath.unregister_group(group.key())?;
            }
            Action::SendQuery { group, ref sources } => self.send_query(family, vlan, group, sources)?,
            Action::SetRouterPort { port, is_router } => {
                let kind = if is_router { EventKind::RouterPortLearned } else { EventKind::RouterPortExpired };
                self.publish_in(vlan, kind, None, Some(port), String::new());
                // Some other VLAN may still have a router there.
                let is_router = family.is_router(port, self.now());
                if let Some(info) = self.ports.get_mut(&port) {
                    if is_router {
                        info.routers |= A::FLAGS.router;
                    } else {
                        info.routers &= !A::FLAGS.router;
                    }
                    let flags = info.flags();
                    self.datapath.set_port_flags(port, flags)?;
                }
            }
            Action::QuerierChanged { other_querier: Some(addr) } => {
                self.publish_in(vlan, EventKind::QuerierOther, None, None, addr.to_string())
            }
            Action::QuerierChanged { other_querier: None } => {
                let own = family.snoopers.get(&vlan).map(|s| s.querier().own_address.to_string()).unwrap_or_default();
                self.publish_in(vlan, EventKind::QuerierSelf, None, None, own)
            }
            Action::QuerierPresence { .. } => self.refresh_presence(family),
            Action::QueryVersionChanged { version } => warn!(
                "an {protocol}v{version} querier was heard: snoop's queries are {protocol}v{version} from now on, \
                 so its routers can read the reports (--query-version {version} says so from the start)",
                protocol = A::PROTOCOL
            ),
            Action::JoinRefused { group, port, why } => {
                debug!("port {}: join of {group} {}", self.port_name(port), why.describe());
                self.publish_in(vlan, EventKind::Refused, Some(group.addr.ip()), Some(port), why.describe().to_owned());
            }
            Action::UntrustedRouterHeard { port, source, sign } => {
                let name = self.port_name(port);
                warn!(
                    "port {name}: {} ({source}) was heard and ignored, as the port is not trusted: \
                     reports do not reach it. If a router is behind {name}, run snoop with \
                     --trusted-port {name} (or --router-port {name})",
                    sign.describe()
                );
            }
        }
        Ok(())
    }

    /// Sends a router discovery solicitation (RFC 4286), unless snoop has no
    /// address to send it from.
    fn solicit_routers<A: Family>(&mut self, family: &FamilyState<A>) {
        if !family.enabled {
            return;
        }
        for (vlan, snooper) in &family.snoopers {
            let own = snooper.querier().own_address;
            if own.is_unspecified() || !A::can_query_from(own) {
                continue;
            }
            let frame = A::mrd_solicitation_frame(self.bridge.mac, own);
            if let Err(error) = self.send_in_vlan(*vlan, &frame) {
                debug!("sending a router solicitation: {error:#}");
            }
        }
    }

    /// Sends a frame to every port of `vlan`: through the bridge device
    /// while the bridge does not filter VLANs (it floods the frame), else
    /// out of each forwarding port in the VLAN, tagged or not as the port
    /// sends that VLAN (the bridge device need not be in the VLAN).
    fn send_in_vlan(&self, vlan: u16, frame: &[u8]) -> std::io::Result<()> {
        if !self.vlans.filtering {
            return self.query_socket.send(frame);
        }
        let mut result = Ok(());
        for (ifindex, info) in &self.ports {
            let Some(untagged) = self.vlans.ports.get(ifindex).and_then(|v| v.vlans.get(&vlan)) else { continue };
            if !info.policy.forwarding {
                continue;
            }
            let sent = if *untagged {
                self.query_socket.send_on(*ifindex, frame)
            } else {
                self.query_socket.send_on(*ifindex, &tagged(frame, vlan))
            };
            if let Err(error) = sent {
                result = Err(error);
            }
        }
        result
    }

    fn send_query<A: Family>(
        &mut self,
        family: &FamilyState<A>,
        vlan: u16,
        group: Option<A>,
        sources: &[A],
    ) -> Result<()> {
        let Some(snooper) = family.snoopers.get(&vlan) else { return Ok(()) };
        let timers = snooper.timers();
        let query = QueryTimers {
            max_response: if group.is_some() {
                timers.last_member_query_interval
            } else {
                timers.query_response_interval
            },
            robustness: u8::try_from(timers.robustness).unwrap_or(7),
            query_interval: timers.query_interval,
        };
        let querier = snooper.querier();
        if !A::can_query_from(querier.own_address) {
            return Ok(());
        }
        let source = QuerySource { mac: self.bridge.mac, address: querier.own_address };
        let frame = A::query_frame(source, group, sources, querier.version, &query);
        let kind = match group {
            None => "general".into(),
            Some(group) if sources.is_empty() => format!("{group} group-specific"),
            Some(group) => format!("{group} group-and-source-specific ({} sources)", sources.len()),
        };
        debug!("sending {} {kind} query in {}", A::PROTOCOL, vlan_name(&self.bridge.name, vlan));
        let protocol = Protocol::of::<A>();
        self.stats.bump(if group.is_some() {
            ControllerCounter::GroupQueriesSent(protocol)
        } else {
            ControllerCounter::GeneralQueriesSent(protocol)
        });
        self.send_in_vlan(vlan, &frame).context("sending a query")
    }

    /// Redirect mode: rewrites where the data path copies each changed group
    /// (every group when `all`, as when router ports change). On a
    /// VLAN-aware bridge each list is its VLAN's, with that VLAN's router
    /// ports and tagging.
    fn refresh_fanout<A: Family>(&mut self, family: &FamilyState<A>, mut groups: BTreeSet<Group<A>>, all: bool) {
        if !self.redirect || (groups.is_empty() && !all) {
            return;
        }
        if all {
            groups.extend(family.snoopers.values().flat_map(|s| s.groups().keys().copied()));
            groups.extend(self.datapath.redirected_groups().iter().filter_map(Group::from_key));
        }
        let now = self.now();
        // A port the bridge would not forward to gets no copy either.
        let forwarding_ports: BTreeSet<u32> =
            self.ports.iter().filter(|(_, p)| p.policy.forwarding).map(|(ifindex, _)| *ifindex).collect();
        let forwarding = |port: &u32| forwarding_ports.contains(port);
        // Per VLAN: its router ports, and how copies leave in it (only the
        // changed groups' VLANs, but for a rewrite of all: a join costs no
        // walk over every VLAN of a trunk).
        let mut vlans: BTreeSet<u16> = groups.iter().map(|g| g.vlan).collect();
        if all {
            vlans.extend(family.snoopers.keys());
        }
        let mut scopes: BTreeMap<u16, (Vec<u32>, Option<VlanEgress>)> = BTreeMap::new();
        for vlan in vlans {
            let routers = family.snoopers.get(&vlan).map_or_else(Vec::new, |snooper| {
                let ports = snooper.ports().iter().filter(|(i, p)| p.is_router(now) && forwarding(i));
                ports.map(|(ifindex, _)| *ifindex).collect()
            });
            scopes.insert(vlan, (routers, self.vlan_egress(vlan)));
        }
        // A target outside the list's VLAN is none of its ports.
        let in_scope = |targets: &mut Vec<CopyTarget>, egress: &Option<VlanEgress>| {
            if let Some(egress) = egress {
                targets.retain(|t| egress.tagged.contains_key(&t.ifindex()));
            }
        };
        if all {
            // Reports and leaves: to router ports (trusted ones while none
            // is known), and up to the bridge device (a multicast routing
            // daemon on it needs them).
            for (vlan, snooper) in &family.snoopers {
                let (routers, egress) = &scopes[vlan];
                let report_ports: Vec<u32> = if routers.is_empty() {
                    let trusted = snooper.ports().iter().filter(|(i, p)| p.options.trusted && forwarding(i));
                    trusted.map(|(ifindex, _)| *ifindex).collect()
                } else {
                    routers.clone()
                };
                let mut targets: Vec<CopyTarget> = report_ports.iter().map(|r| CopyTarget::Router(*r)).collect();
                targets.push(CopyTarget::BridgeDevice(self.bridge.ifindex));
                in_scope(&mut targets, egress);
                let key = report_targets(A::FAMILY, *vlan);
                if let Err(error) = self.datapath.set_report_targets(key, &targets, egress.as_ref()) {
                    warn!("report targets: {:#}", anyhow::Error::from(error));
                    self.stats.bump(ControllerCounter::DatapathWriteErrors);
                }
            }
            // Those of VLANs gone.
            let stale = self
                .datapath
                .report_target_keys()
                .into_iter()
                .filter(|key| key.addr == A::FLAGS.report_targets.addr && !family.snoopers.contains_key(&key.vlan));
            for key in stale.collect::<Vec<_>>() {
                let _ = self.datapath.set_report_targets(key, &[], None);
            }
        }
        for group in groups {
            let (routers, egress) = &scopes[&group.vlan];
            let mut targets: Vec<CopyTarget> = Vec::new();
            let mut by_source = Vec::new();
            if let Some(members) = family.members(&group) {
                // Each member's filter once: every named source asks them all.
                let filters: Vec<(u32, SourceFilter<A>)> =
                    members.iter().filter(|(p, _)| forwarding(p)).map(|(p, m)| (*p, m.filter(now))).collect();
                // Who gets `source` (None: a source no member names).
                let copies_of = |source: Option<&A>| {
                    let wants =
                        |f: &SourceFilter<A>| source.map_or(!matches!(f, SourceFilter::Include(_)), |s| f.wants(s));
                    let wanting: BTreeSet<u32> = filters.iter().filter(|(_, f)| wants(f)).map(|(p, _)| *p).collect();
                    let mut targets: Vec<CopyTarget> = wanting.iter().map(|port| CopyTarget::Member(*port)).collect();
                    // A router port gets every source, member or not.
                    targets.extend(routers.iter().filter(|r| !wanting.contains(r)).map(|r| CopyTarget::Router(*r)));
                    if family.local_groups.contains(&group) {
                        targets.push(CopyTarget::BridgeDevice(self.bridge.ifindex));
                    }
                    in_scope(&mut targets, egress);
                    targets
                };
                targets = copies_of(None);
                let named: BTreeSet<A> = filters.iter().flat_map(|(_, f)| f.listed().iter().copied()).collect();
                for source in &named {
                    let copies = copies_of(Some(source));
                    if copies != targets {
                        by_source.push((source.source_key(), copies));
                    }
                }
            }
            match self.datapath.set_group_ports(group.key(), &targets, &by_source, egress.as_ref()) {
                Ok(()) => {}
                // No room for the list: the group takes the bridge path, where
                // the egress programs (and PORT_UNPRUNED) deliver it. A stale
                // list must not stay behind to miss a new member.
                Err(datapath::Error::MapFull { map }) => {
                    self.map_full(map);
                    let _ = self.datapath.set_group_ports(group.key(), &[], &[], None);
                }
                Err(error) => {
                    warn!("redirect targets of {group}: {:#}", anyhow::Error::from(error));
                    self.stats.bump(ControllerCounter::DatapathWriteErrors);
                }
            }
        }
    }

    /// How redirect copies leave in `vlan`: None while the bridge does not
    /// filter VLANs (frames keep whatever tags they came with).
    fn vlan_egress(&self, vlan: u16) -> Option<VlanEgress> {
        if !self.vlans.filtering {
            return None;
        }
        let mut egress = VlanEgress::default();
        for (ifindex, port) in &self.vlans.ports {
            let attached = self.ports.contains_key(ifindex);
            if !attached && *ifindex != self.bridge.ifindex {
                continue;
            }
            if let Some(untagged) = port.vlans.get(&vlan) {
                egress.tagged.insert(*ifindex, !untagged);
                egress.ports += u32::from(attached);
                egress.bridge_path |= attached && *untagged && port.untagged_vlan() != Some(vlan);
            }
        }
        Some(egress)
    }

    /// Logs a membership event and sends it to `snoop watch` clients.
    fn publish(&self, kind: EventKind, group: Option<IpAddr>, port: Option<u32>, detail: String) {
        self.publish_in(VLAN_NONE, kind, group, port, detail)
    }

    /// [`Core::publish`] of an event in `vlan`.
    fn publish_in(&self, vlan: u16, kind: EventKind, group: Option<IpAddr>, port: Option<u32>, detail: String) {
        let mut event = Event::now(kind, group, port.map(|p| self.port_name(p)), detail);
        event.vlan = (vlan != VLAN_NONE).then_some(vlan);
        info!("{}", event.to_line().split_once("  ").map_or("", |(_, rest)| rest));
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    /// What else runs on an attached port's tc hooks; none for a port not
    /// attached yet, or one that cannot be asked (logged).
    fn other_filters(&mut self, ifindex: u32) -> OtherFilters {
        if !self.ports.contains_key(&ifindex) && !self.datapath.is_attached(ifindex) {
            return OtherFilters::default();
        }
        self.datapath.other_filters(ifindex).unwrap_or_else(|error| {
            debug!("port {}: reading its tc hooks: {error}", self.port_name(ifindex));
            OtherFilters::default()
        })
    }

    fn port_name(&self, ifindex: u32) -> String {
        self.ports.get(&ifindex).map_or_else(|| format!("#{ifindex}"), |p| p.name.clone())
    }

    /// CLOCK_MONOTONIC (the eBPF clock) time of a state-machine time.
    fn monotonic_ns(&self, at: Duration) -> u64 {
        let remaining = at.saturating_sub(self.now());
        monotonic_now_ns().saturating_add(u64::try_from(remaining.as_nanos()).unwrap_or(u64::MAX))
    }

    /// A port's group filter: its own ranges and those given for `all`.
    fn port_filter(&self, name: &str) -> GroupFilter {
        let pick = |ranges: &[(String, GroupRange)]| {
            ranges.iter().filter(|(port, _)| port == name || port == "all").map(|(_, range)| *range).collect()
        };
        GroupFilter { allow: pick(&self.config.port_allow), deny: pick(&self.config.port_deny) }
    }

    /// Makes `ifindex` a static member of the entry's group, or ends that.
    fn set_static<A: Family>(
        &mut self,
        family: &mut FamilyState<A>,
        entry: &StaticGroup,
        vlan: u16,
        ifindex: u32,
        add: bool,
    ) -> Result<(), StaticError> {
        let addr = A::from_ip(entry.group).ok_or(StaticError::NotSnoopable)?;
        let group = Group { vlan, addr };
        let sources = entry.sources.iter().filter_map(|source| A::from_ip(*source)).collect();
        let now = self.now();
        let snooper = family.snoopers.get_mut(&vlan).ok_or(StaticError::UnknownPort)?;
        let actions = if add {
            snooper.add_static(group, ifindex, &sources, now)?
        } else {
            snooper.remove_static(group, ifindex, now)?
        };
        self.apply(family, vlan, actions);
        Ok(())
    }

    /// A port's options: snoop's own (`--router-port`, ...) and the bridge's
    /// per-port snooping settings (`mcast_router 2`, `fastleave on`).
    fn port_options(&self, name: &str, policy: &PortPolicy) -> PortOptions {
        let listed = |list: &[String]| list.iter().any(|p| p == name || p == "all");
        let static_router = self.config.static_router_ports.iter().any(|p| p == name) || policy.static_router;
        PortOptions {
            fast_leave: listed(&self.config.fast_leave_ports) || policy.fast_leave,
            static_router,
            // A port declared a router port is trusted to speak as one.
            trusted: static_router || listed(&self.config.trusted_ports),
            // The last one given wins: the command line's come after the file's.
            max_groups: self
                .config
                .port_max_groups
                .iter()
                .rev()
                .find(|(port, _)| port == name)
                .map_or(self.config.max_groups_per_port, |(_, limit)| *limit),
        }
    }
}

/// Tells systemd, when it started snoop with a notify socket.
fn notify_systemd(state: &[NotifyState]) {
    if let Err(error) = sd_notify::notify(state) {
        warn!("telling systemd {state:?}: {error}");
    }
}

/// The next tick of an interval that may not exist (then never).
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => drop(interval.tick().await),
        None => std::future::pending().await,
    }
}

/// How logs name a VLAN of the bridge (or the bridge, without VLANs).
fn vlan_name(bridge: &str, vlan: u16) -> String {
    if vlan == VLAN_NONE {
        bridge.to_owned()
    } else {
        format!("{bridge} vlan {vlan}")
    }
}

/// `frame` with an 802.1Q tag for `vlan` after its MAC addresses.
fn tagged(frame: &[u8], vlan: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(frame.len() + 4);
    out.extend_from_slice(&frame[..12]);
    out.extend_from_slice(&ETH_P_8021Q.to_be_bytes());
    out.extend_from_slice(&(vlan & VLAN_VID_MASK).to_be_bytes());
    out.extend_from_slice(&frame[12..]);
    out
}

fn member_key<A: Family>(group: Group<A>, port: u32) -> PortGroupKey {
    PortGroupKey { group: group.key(), ifindex: port }
}

/// Learned router ports a keep-state predecessor left, by family: per VLAN
/// where it kept them so, else per port (then in every VLAN of the port).
fn pinned_router_ports(datapath: &Datapath) -> Vec<(u8, Option<u16>, u32)> {
    let in_vlans = datapath.vlan_port_entries();
    let mut routers = Vec::new();
    for (family, router) in [(FAMILY_IPV4, IPV4_FLAGS.router), (FAMILY_IPV6, IPV6_FLAGS.router)] {
        let per_vlan: Vec<_> = in_vlans
            .iter()
            .filter(|(_, flags)| flags & router != 0)
            .map(|(key, _)| (family, Some(key.vlan), key.ifindex))
            .collect();
        if per_vlan.is_empty() {
            routers.extend(datapath.router_port_entries(router).into_iter().map(|port| (family, None, port)));
        } else {
            routers.extend(per_vlan);
        }
    }
    routers
}

/// A pinned static membership as the state machine resumed it: its group,
/// its sources (none: any source) and VLAN.
fn pinned_static<A: Family>(
    family: &FamilyState<A>,
    key: &GroupKey,
    port: u32,
    now: Duration,
) -> Option<(IpAddr, BTreeSet<IpAddr>, u16)> {
    let group = Group::<A>::from_key(key)?;
    let member = family.member(&group, port)?;
    let sources = match member.filter(now) {
        SourceFilter::Include(listed) => listed.iter().map(|source| source.ip()).collect(),
        SourceFilter::Exclude(_) => BTreeSet::new(),
    };
    Some((group.addr.ip(), sources, group.vlan))
}

/// The source filter a restarted snoop finds in the maps for a membership.
fn pinned_filter<A: Family>(sources: Option<&(u8, BTreeSet<SourceAddr>)>) -> SourceFilter<A> {
    match sources {
        Some((flags, listed)) => {
            let listed = listed.iter().map(A::from_source_key).collect();
            if *flags == MEMBER_SOURCES_INCLUDE {
                SourceFilter::Include(listed)
            } else {
                SourceFilter::Exclude(listed)
            }
        }
        None => SourceFilter::any(),
    }
}
