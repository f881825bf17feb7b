//! `snoop run`, as the Linux bridge splits its snooping: decide, project,
//! enforce. The parts, in the order a control frame meets them:
//!
//! - [`event`]: the typed [`Input`]s the daemon takes and [`Effect`]s it gives;
//! - [`state`]: the daemon as a step function ([`Daemon::step`]): the state
//!   machines of each VLAN ([`vlan`]: one context owns both families),
//!   the ports, the bridge as last seen; pure, with injected time;
//! - [`project`]: what the data path's maps must hold, projected from that
//!   state for what a step touched;
//! - [`reconcile`]: the one writer of the maps: the difference, in an order
//!   that never prunes what must be delivered;
//! - this module: the runner, the only part doing I/O: it reads the event
//!   ring, rtnetlink, the clients and the clock, hands each in as an input,
//!   writes what the projection says and carries out the effects.
pub mod event;
pub mod project;
pub mod reconcile;
pub mod state;
pub mod vlan;

#[cfg(test)]
mod memory;
#[cfg(test)]
mod scenarios;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use futures::{FutureExt as _, Stream, StreamExt as _};
use log::{debug, info, warn};
use sd_notify::NotifyState;
use snoop_common::{wire::ETH_P_8021Q, CaptureHeader, RESTORE_KERNEL_SNOOPING, VLAN_VID_MASK};
use tokio::{
    io::unix::AsyncFd,
    net::TcpListener,
    signal::unix::{signal, Signal, SignalKind},
    sync::{broadcast, mpsc},
    time::{Instant, Interval},
};

pub use event::{Effect, Input};
pub use state::Daemon;

use self::{
    event::{BridgeView, Pinned, PinnedMember, QuerySources},
    project::{project, Dirty},
    reconcile::{PortShares, Reconciler, Report, Written},
    state::BridgeId,
};
use crate::{
    bridge::{self, local_groups, local_groups_v6, Bridge, Netlink},
    control::{self, Change, ChangeRequest, SnapshotRequest},
    datapath::{self, monotonic_now_ns, Datapath},
    error_chain,
    frame_sender::{FrameSender, HostQueryTap},
    metrics,
    proto::Family as _,
    settings::{Forwarding, RunConfig},
    snapshot::{self, Event, Snapshot},
    stats::ControllerCounter,
};

/// Why `snoop run` could not start, or stopped on its own.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Bridge(#[from] bridge::Error),
    #[error(transparent)]
    Datapath(#[from] datapath::Error),
    #[error(transparent)]
    Control(#[from] control::Error),
    #[error("{what}")]
    Io { what: &'static str, source: std::io::Error },
}

/// Reads the configuration again (the file and the command line), for a reload.
pub type Reload = Box<dyn Fn() -> anyhow::Result<RunConfig> + Send>;

/// Control frames taken from the ring per turn of the loop: a flood on one
/// port cannot keep the loop from its timers, clients and the watchdog.
const RING_RECORDS_PER_TURN: usize = 256;

/// Runs until SIGINT or SIGTERM (`signals`, registered by the caller before
/// anything it must undo, so no signal meanwhile kills it half-way).
pub async fn run(config: RunConfig, reload: Option<Reload>, signals: Signals) -> Result<(), Error> {
    let (mut runner, listener, resumed) = Runner::start(config, reload).await?;
    let result = runner.serve(&listener, resumed, signals).await;
    let stopped = runner.stop(result).await;
    // The control socket, and its lock, last: no second snoop starts on
    // the bridge while this one puts things back.
    drop(listener);
    stopped
}

/// The next of `signal`'s deliveries; never, without one.
async fn recv_if_any(signal: &mut Option<Signal>) -> Option<()> {
    match signal {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

/// The signals snoop answers: SIGINT and SIGTERM stop it, SIGHUP reloads.
/// Registered, they no longer kill the process: they wait to be read.
pub struct Signals {
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    /// Debug builds only: SIGUSR2 makes the controller panic, for the tests
    /// of what a panic leaves behind (`snoop switch` must undo its bridge).
    sigusr2: Option<Signal>,
}

impl Signals {
    /// Needs a tokio runtime.
    pub fn register() -> std::io::Result<Self> {
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
            sighup: signal(SignalKind::hangup())?,
            sigusr2: if cfg!(debug_assertions) { Some(signal(SignalKind::user_defined2())?) } else { None },
        })
    }

    /// Whether a SIGINT or SIGTERM came since registration (or the last look).
    pub fn stop_requested(&mut self) -> bool {
        self.sigint.recv().now_or_never().is_some() || self.sigterm.recv().now_or_never().is_some()
    }
}

/// `snoop cleanup`: removes what a `--keep-state` exit left pinned and puts
/// back the bridge settings snoop had changed.
pub async fn cleanup(bridge: &str, pin_dir: &std::path::Path) -> Result<(), Error> {
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
            Err(error) => warn!("{}", error_chain(&error)),
        }
    }
}

/// The I/O around the daemon.
struct Runner {
    daemon: Daemon,
    reconciler: Reconciler,
    datapath: Datapath,
    netlink: Netlink,
    bridge: Bridge,
    /// Queries leave through the bridge device, which floods them to every
    /// port; on a VLAN-aware bridge through each port of their VLAN.
    sender: FrameSender,
    /// Membership events for `snoop watch` clients.
    events: broadcast::Sender<Event>,
    reload: Option<Reload>,
    /// The state machines' time zero.
    start: Instant,
    /// Ports of the bridge snoop's programs could not be attached to (as
    /// last tried), and why: they are neither snooped nor pruned.
    unattached: BTreeMap<String, String>,
}

/// What the loop waits on.
struct Inputs {
    ring: AsyncFd<RingBuf<MapData>>,
    signals: Signals,
    port_scan: Interval,
    heartbeat: Interval,
    link_changes: Option<Box<dyn Stream<Item = ()> + Unpin>>,
    /// Queries the bridge's own host sends (none: not heard).
    host_queries: Option<AsyncFd<HostQueryTap>>,
    snapshot_queue: mpsc::Receiver<SnapshotRequest>,
    change_queue: mpsc::Receiver<ChangeRequest>,
}

impl Runner {
    /// Everything before the loop. What can fail without side effects comes
    /// first; a failure after the data path is loaded leaves pinned state of
    /// a previous snoop as it was and removes this one's.
    async fn start(config: RunConfig, reload: Option<Reload>) -> Result<(Self, control::Listener, bool), Error> {
        let netlink = Netlink::open()?;
        let bridge = netlink.bridge(&config.start.bridge).await?;
        // Binding first also stops a second snoop before it touches the pinned state.
        let listener = control::bind(&bridge.name, config.start.control_group)?;
        let sender = FrameSender::open(bridge.ifindex)
            .map_err(|source| Error::Io { what: "opening a packet socket for queries", source })?;
        let kernel_snooping_on = netlink.kernel_snooping(&bridge).await?;
        let (mut datapath, resumed) = Datapath::load(&config.start.pin_dir, bridge.ifindex, config.start.map_sizes)?;
        let written = if resumed { datapath.read_written() } else { Written::default() };
        let start = Instant::now();
        let clock_base_ns = monotonic_now_ns();
        let mut restore = written.config.restore;
        let mut reconciler = Reconciler::new(written, clock_base_ns, PortShares::of(config.start.map_sizes));
        if kernel_snooping_on {
            // Remembered in the pinned state before it is changed: a snoop
            // killed meanwhile still gets it restored.
            info!("turning off {}'s own multicast snooping while snoop runs", bridge.name);
            restore |= RESTORE_KERNEL_SNOOPING;
            let remembered = reconciler.set_restore(restore, &mut datapath);
            let turned_off = match remembered {
                Ok(()) => netlink.set_kernel_snooping(&bridge, false).await.map_err(Error::from),
                Err(error) => Err(error.into()),
            };
            if let Err(error) = turned_off {
                let _ = datapath.shutdown(resumed);
                return Err(error);
            }
        }
        let id = BridgeId { name: bridge.name.clone(), ifindex: bridge.ifindex, mac: bridge.mac };
        let daemon = Daemon::new(config, id, resumed, restore);
        let runner = Self {
            daemon,
            reconciler,
            datapath,
            netlink,
            bridge,
            sender,
            events: broadcast::channel(4096).0,
            reload,
            start,
            unattached: BTreeMap::new(),
        };
        Ok((runner, listener, resumed))
    }

    /// Detaches (or, with keep-state, leaves everything pinned) and puts the
    /// bridge's settings back.
    async fn stop(self, result: Result<(), Error>) -> Result<(), Error> {
        let keep_state = self.daemon.live.keep_state && result.is_ok();
        let restore = self.reconciler.written().config.restore;
        let shutdown = self.datapath.shutdown(keep_state);
        if !keep_state && self.netlink.bridge_exists(&self.bridge).await.unwrap_or(false) {
            restore_bridge_settings(&self.netlink, &self.bridge, restore).await;
        }
        result.and(shutdown.map_err(Into::into))
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    async fn serve(&mut self, listener: &control::Listener, resumed: bool, signals: Signals) -> Result<(), Error> {
        // The first look, the memberships resumed and the bridge host's
        // groups, before anything is written: resumed state is rewritten
        // only where it differs, never dropped and written again.
        let view = self.read_bridge().await?;
        let now = self.now();
        let mut effects = self.daemon.step(now, Input::Bridge(Box::new(view)));
        if resumed {
            let pinned = pinned(self.reconciler.written());
            effects.extend(self.daemon.step(now, Input::Resume(pinned)));
        }
        effects.extend(self.daemon.step(now, self.local()));
        effects.extend(self.daemon.started(now, resumed));
        self.settle(effects).await;
        let ports: Vec<u32> = self.daemon.ports.keys().copied().collect();
        self.datapath.remove_stale_attachments(&ports)?;

        let (snapshots, snapshot_queue) = mpsc::channel::<SnapshotRequest>(64);
        let (changes, change_queue) = mpsc::channel::<ChangeRequest>(16);
        if let Some(addr) = self.daemon.start.metrics {
            let metrics_listener =
                TcpListener::bind(addr).await.map_err(|source| Error::Io { what: "listening for metrics", source })?;
            info!("serving Prometheus metrics on http://{addr}/metrics");
            let options = metrics::MetricsOptions { sources: self.daemon.start.metrics_sources };
            tokio::spawn(metrics::serve(metrics_listener, snapshots.clone(), options));
        }
        let server = control::Server {
            snapshots,
            changes,
            events: self.events.clone(),
            access: control::Access { group: self.daemon.start.control_group },
            slots: Arc::new(tokio::sync::Semaphore::new(control::MAX_CLIENTS)),
        };
        let mut inputs = self.inputs(snapshot_queue, change_queue, signals)?;
        // systemd (Type=notify): ready once the ports are attached and the
        // control socket answers; the watchdog is fed from this loop, so a
        // stuck controller is restarted.
        notify_systemd(&[NotifyState::Ready, NotifyState::Status(&format!("snooping on {}", self.bridge.name))]);
        let watchdog_limit = sd_notify::watchdog_enabled().filter(|limit| limit.as_micros() >= 2);
        let mut watchdog = watchdog_limit.map(|limit| tokio::time::interval(limit / 2));
        loop {
            let deadline = self
                .daemon
                .next_deadline()
                .map_or_else(|| Instant::now() + Duration::from_secs(3600), |at| self.start + at);
            tokio::select! {
                guard = inputs.ring.readable_mut() => {
                    let mut guard = guard.map_err(|source| Error::Io { what: "watching the event ring", source })?;
                    if self.drain(guard.get_inner_mut()).await {
                        guard.clear_ready();
                    }
                }
                _ = tokio::time::sleep_until(deadline) => self.step(Input::Timers).await,
                Some(()) = next_change(&mut inputs.link_changes) => self.rescan().await?,
                Some(guard) = host_query_ready(&inputs.host_queries) => {
                    let mut guard = guard.map_err(|source| Error::Io { what: "hearing the host's queries", source })?;
                    if self.host_queries(guard.get_inner()).await {
                        guard.clear_ready();
                    }
                }
                _ = inputs.port_scan.tick() => {
                    self.rescan().await?;
                    let retry = self.reconciler.unwritten().retry();
                    self.daemon.touch(retry);
                    if self.daemon.forwarding.redirect {
                        let since = monotonic_now_ns().saturating_sub(2 * self.daemon.start.port_scan_interval.as_nanos() as u64);
                        let senders = self.datapath.recent_senders(since);
                        self.step(Input::Senders(senders)).await;
                    }
                    self.refresh_local_groups().await;
                }
                _ = inputs.heartbeat.tick() => {
                    let report = self.reconciler.heartbeat(monotonic_now_ns(), &mut self.datapath);
                    self.absorb_report(report);
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
                    let answer = self.change(change).await;
                    let _ = reply.send(answer);
                }
                _ = inputs.signals.sighup.recv() => {
                    notify_systemd(&[NotifyState::Reloading]);
                    let config = self.read_config();
                    self.step(Input::Reloaded { config, reply: false }).await;
                    notify_systemd(&[NotifyState::Ready]);
                }
                _ = tick(&mut watchdog) => notify_systemd(&[NotifyState::Watchdog]),
                Some(()) = recv_if_any(&mut inputs.signals.sigusr2) => {
                    panic!("SIGUSR2: a debug build was asked to panic");
                }
                _ = inputs.signals.sigint.recv() => break,
                _ = inputs.signals.sigterm.recv() => break,
            }
        }
        let keeping = if self.daemon.live.keep_state { ", keeping the data path and its state pinned" } else { "" };
        info!("stopping{keeping}");
        notify_systemd(&[NotifyState::Stopping]);
        Ok(())
    }

    fn inputs(
        &mut self,
        snapshot_queue: mpsc::Receiver<SnapshotRequest>,
        change_queue: mpsc::Receiver<ChangeRequest>,
        signals: Signals,
    ) -> Result<Inputs, Error> {
        let ring = self.datapath.take_events().ok_or(datapath::Error::Object(snoop_common::MAP_EVENTS))?;
        let link_changes = match Netlink::link_changes() {
            Ok(changes) => Some(Box::new(changes) as Box<dyn Stream<Item = ()> + Unpin>),
            Err(error) => {
                let every = self.daemon.start.port_scan_interval;
                warn!("{}; ports are rescanned every {every:?} only", error_chain(&error));
                None
            }
        };
        // SAFETY: the tap owns its fd and keeps it open while registered.
        let host_queries = match self
            .sender
            .host_query_tap()
            .and_then(|tap| unsafe { AsyncFd::register(tap) }.map_err(Into::into))
        {
            Ok(tap) => Some(tap),
            Err(error) => {
                warn!("the bridge host's own queries cannot be heard ({error}): a router on it does not take part in the election");
                None
            }
        };
        Ok(Inputs {
            host_queries,
            // SAFETY: the ring owns its fd and keeps it open while registered.
            ring: unsafe { AsyncFd::register(ring) }
                .map_err(|source| Error::Io { what: "watching the event ring", source: source.into() })?,
            signals,
            port_scan: tokio::time::interval(self.daemon.start.port_scan_interval),
            heartbeat: tokio::time::interval(snoop_common::HEARTBEAT_INTERVAL),
            link_changes,
            snapshot_queue,
            change_queue,
        })
    }

    /// Hands captured control frames to the daemon, at most a turn's worth;
    /// whether the ring is empty.
    async fn drain(&mut self, ring: &mut RingBuf<MapData>) -> bool {
        for _ in 0..RING_RECORDS_PER_TURN {
            let Some(item) = ring.next() else { return true };
            let Some((header, packet)) = CaptureHeader::read(&item) else {
                self.daemon.stats.bump(ControllerCounter::EventsShort);
                continue;
            };
            let now = self.now();
            let frame = Input::Frame { ifindex: header.ifindex, vlan: header.vlan, family: header.family, packet };
            let effects = self.daemon.step(now, frame);
            drop(item);
            self.settle(effects).await;
        }
        false
    }

    /// Steps on the queries the bridge's own host sent, a bounded number a
    /// turn; whether none are left.
    async fn host_queries(&mut self, tap: &HostQueryTap) -> bool {
        let mut frame = vec![0u8; 9216];
        for _ in 0..64 {
            let (len, vlan) = match tap.recv(&mut frame) {
                Ok(Some(received)) => received,
                Ok(None) => return true,
                Err(error) => {
                    debug!("hearing the host's queries: {error}");
                    return true;
                }
            };
            let Some(packet) = frame.get(14..len) else { continue };
            let family = match u16::from_be_bytes([frame[12], frame[13]]) {
                0x86dd => snoop_common::FAMILY_IPV6,
                _ => snoop_common::FAMILY_IPV4,
            };
            self.step(Input::HostQuery { vlan, family, packet }).await;
        }
        false
    }

    /// One input: the step, the maps, the effects.
    async fn step(&mut self, input: Input<'_>) {
        let now = self.now();
        let effects = self.daemon.step(now, input);
        self.settle(effects).await;
    }

    /// Writes what the steps since the last write touched, then carries
    /// out their effects.
    async fn settle(&mut self, effects: Vec<Effect>) {
        self.write();
        self.carry_out(effects).await;
    }

    /// Projects the touched part of the state and writes the difference;
    /// again for the ports whose groups did not fit (they go unpruned).
    fn write(&mut self) {
        for _ in 0..2 {
            let scope = self.daemon.take_dirty();
            if scope.is_empty() {
                return;
            }
            let desired = project(&self.daemon, &scope, self.reconciler.unwritten(), self.now());
            let before = project::unpruned_ports(&self.daemon, self.reconciler.unwritten());
            let report = self.reconciler.apply(&desired, &mut self.datapath);
            self.absorb_report(report);
            let after = project::unpruned_ports(&self.daemon, self.reconciler.unwritten());
            let ports: BTreeSet<u32> = before.symmetric_difference(&after).copied().collect();
            if ports.is_empty() {
                return;
            }
            self.daemon.touch(Dirty { ports, ..Dirty::default() });
        }
    }

    /// Counts and tells what the reconciler met.
    fn absorb_report(&mut self, report: Report) {
        for _ in 0..report.map_full {
            self.daemon.stats.bump(ControllerCounter::MapFull);
        }
        for _ in 0..report.share_full {
            self.daemon.stats.bump(ControllerCounter::MapShareFull);
        }
        for _ in 0..report.write_errors {
            self.daemon.stats.bump(ControllerCounter::DatapathWriteErrors);
        }
        for (level, line) in report.logs {
            log::log!(level, "{line}");
        }
        for (port, unpruned) in report.unpruned {
            let name = self.daemon.port_name(port);
            if unpruned {
                warn!("port {name} gets every group: some of its memberships do not fit the maps");
            } else {
                info!("port {name}: every membership fits the maps again; pruning it as usual");
            }
        }
    }

    /// Carries out what the daemon decided.
    async fn carry_out(&mut self, effects: Vec<Effect>) -> Option<Result<String, String>> {
        let mut reply = None;
        for effect in effects {
            match effect {
                Effect::Send { vlan, frame } => {
                    if let Err(error) = self.send_in_vlan(vlan, &frame) {
                        debug!("sending in {}: {error}", self.bridge.name);
                    }
                }
                Effect::SendOnPort { ifindex, frame } => {
                    if let Err(error) = self.sender.send_on(ifindex, &frame) {
                        debug!("sending out of port {ifindex}: {error}");
                    }
                }
                Effect::Event(event) => {
                    let line = event.to_line();
                    let line = line.split_once("  ").map_or("", |(_, rest)| rest);
                    // Fields of their own in the journal (none given: the field is empty).
                    let (port, group) = (event.port.as_deref().unwrap_or(""), event.group.map(|g| g.to_string()));
                    let vlan = event.vlan.map(|v| v.to_string());
                    let kind = serde_json::to_value(event.event).ok().and_then(|v| v.as_str().map(str::to_owned));
                    info!(
                        event = kind.as_deref().unwrap_or(""),
                        port = port,
                        group = group.as_deref().unwrap_or(""),
                        vlan = vlan.as_deref().unwrap_or("");
                        "{line}"
                    );
                    // No receivers is fine: nobody is watching.
                    let _ = self.events.send(event);
                }
                Effect::Log(level, line) => log::log!(level, "{line}"),
                Effect::KernelSnoopingOff => {
                    if let Err(error) = self.netlink.set_kernel_snooping(&self.bridge, false).await {
                        warn!("{}", error_chain(&error));
                    }
                }
                Effect::Learn { port, mac, vlan } => {
                    if let Err(error) = self.netlink.learn(port, mac, vlan).await {
                        debug!("{}", error_chain(&error));
                    }
                }
                Effect::Reply(answer) => reply = Some(answer),
            }
        }
        reply
    }

    /// Sends a frame to every port of `vlan`: through the bridge device
    /// while the bridge does not filter VLANs (it floods the frame), else
    /// out of each forwarding port in the VLAN, tagged or not as the port
    /// sends that VLAN (the bridge device need not be in the VLAN).
    fn send_in_vlan(&self, vlan: u16, frame: &[u8]) -> std::io::Result<()> {
        let vlans = &self.daemon.vlans;
        if !vlans.filtering {
            return self.sender.send(frame);
        }
        let mut result = Ok(());
        for (ifindex, port) in &self.daemon.ports {
            let Some(untagged) = vlans.ports.get(ifindex).and_then(|v| v.vlans.get(&vlan)) else { continue };
            if !port.policy.forwarding {
                continue;
            }
            let sent = if *untagged {
                self.sender.send_on(*ifindex, frame)
            } else {
                self.sender.send_on(*ifindex, &tagged(frame, vlan))
            };
            if let Err(error) = sent {
                result = Err(error);
            }
        }
        result
    }

    /// Reads the bridge (a link change, a port scan, the start): attaches
    /// to its new ports, lets go of those gone, and hands the daemon what it
    /// found. Containers come and go all the time: a failure here is logged
    /// and retried at the next scan; only the bridge's deletion ends snoop.
    async fn rescan(&mut self) -> Result<(), Error> {
        let view = match self.read_bridge().await {
            Ok(view) => view,
            Err(error @ bridge::Error::BridgeGone(_)) => return Err(error.into()),
            Err(error) => {
                warn!("rescanning ports: {}; retrying", error_chain(&error));
                return Ok(());
            }
        };
        let attached: BTreeSet<u32> = view.ports.iter().map(|p| p.ifindex).collect();
        let gone: Vec<u32> = self.daemon.ports.keys().filter(|p| !attached.contains(p)).copied().collect();
        self.step(Input::Bridge(Box::new(view))).await;
        // Their map entries went with the step; now their programs.
        for ifindex in gone {
            if let Err(error) = self.datapath.detach_port(ifindex) {
                warn!("letting go of port {ifindex}: {}", error_chain(&error));
            }
        }
        Ok(())
    }

    /// The bridge as rtnetlink shows it, with its new ports attached.
    async fn read_bridge(&mut self) -> Result<BridgeView, bridge::Error> {
        let state = self.netlink.bridge_state(&self.bridge).await?;
        let vlans = self.netlink.vlan_config(&self.bridge, &state).await?;
        let mut addresses = QuerySources {
            bridge_ipv4: self.netlink.interface_ipv4(self.bridge.ifindex).await?,
            bridge_ipv6: self.netlink.interface_ipv6_link_local(self.bridge.ifindex).await?,
            ..QuerySources::default()
        };
        for (vlan, ifindex) in &vlans.interfaces {
            if let Some(addr) = self.netlink.interface_ipv4(*ifindex).await? {
                addresses.vlan_ipv4.insert(*vlan, addr);
            }
            if let Some(addr) = self.netlink.interface_ipv6_link_local(*ifindex).await? {
                addresses.vlan_ipv6.insert(*vlan, addr);
            }
        }
        let mut ports = self.netlink.ports(&self.bridge).await?;
        let netdev = match self.daemon.start.forwarding {
            Forwarding::Bridge => Default::default(),
            Forwarding::Redirect => crate::filtering::netdev_chains(),
        };
        let mut unattached = BTreeMap::new();
        ports.retain_mut(|port| {
            if !self.datapath.is_attached(port.ifindex) {
                match self.datapath.attach_port(port.ifindex) {
                    Ok(()) => {
                        if self.unattached.contains_key(&port.name) {
                            info!("port {}: attached at last", port.name);
                        }
                    }
                    Err(datapath::Error::PortGone { .. }) => {
                        debug!("port {} went away before it was attached", port.name);
                        return false;
                    }
                    Err(error) => {
                        // Said once per port (and error), tried again every scan.
                        let why = error_chain(&error);
                        if self.unattached.get(&port.name) != Some(&why) {
                            warn!("{why}; trying again at every port scan");
                        }
                        self.daemon.stats.bump(ControllerCounter::AttachFailures);
                        unattached.insert(port.name.clone(), why);
                        return false;
                    }
                }
            }
            // Now that snoop's programs are there, what runs after them.
            port.policy.filters = self.datapath.other_filters(port.ifindex).unwrap_or_else(|error| {
                debug!("port {}: reading its tc hooks: {error}", port.name);
                Default::default()
            });
            port.policy.nft_ingress = netdev.ingress.contains(&port.name);
            port.policy.nft_egress = netdev.egress.contains(&port.name);
            true
        });
        self.unattached = unattached;
        let obstacle = match self.daemon.start.forwarding {
            Forwarding::Bridge => None,
            Forwarding::Redirect => state.redirect_obstacle(),
        };
        let topology_change = state.topology_change();
        Ok(BridgeView {
            mac: state.mac,
            vlans,
            addresses,
            ports,
            kernel_snooping: state.kernel_snooping(),
            obstacle,
            topology_change,
            host_is_router: state.host_is_router(),
        })
    }

    /// The groups the bridge host's sockets joined, for redirect to copy to it.
    async fn refresh_local_groups(&mut self) {
        let local = self.local();
        self.step(local).await;
    }

    /// What the bridge's host takes: the groups it joined, the VLANs and
    /// families it routes multicast in (redirect only: the bridge path
    /// reaches it by itself).
    fn local(&self) -> Input<'static> {
        let mut routed = BTreeSet::new();
        if self.daemon.forwarding.redirect {
            for (ifindex, vlans) in self.daemon.local_interfaces() {
                let [v4, v6] = bridge::host_routes_multicast(ifindex);
                for vlan in vlans {
                    routed.extend(v4.then_some((vlan, snoop_common::FAMILY_IPV4)));
                    routed.extend(v6.then_some((vlan, snoop_common::FAMILY_IPV6)));
                }
            }
        }
        Input::Local { groups: self.local_groups(), routed }
    }

    /// The groups the bridge host's sockets joined (redirect only: the
    /// bridge path reaches them by itself), by VLAN.
    fn local_groups(&self) -> BTreeSet<(u16, IpAddr)> {
        let mut groups = BTreeSet::new();
        if !self.daemon.forwarding.redirect {
            return groups;
        }
        let link_scope = self.daemon.start.snoop_ipv6_link_scope;
        for (ifindex, vlans) in self.daemon.local_interfaces() {
            let v4 = local_groups(ifindex).into_iter().filter(|g| g.is_snoopable(false)).map(IpAddr::V4);
            let v6 = local_groups_v6(ifindex).into_iter().filter(|g| g.is_snoopable(link_scope)).map(IpAddr::V6);
            for addr in v4.chain(v6) {
                groups.extend(vlans.iter().map(|vlan| (*vlan, addr)));
            }
        }
        groups
    }

    /// A change a client asked for: what was done, or why not.
    async fn change(&mut self, change: Change) -> Result<String, String> {
        let now = self.now();
        let input = match change {
            Change::Reload => {
                notify_systemd(&[NotifyState::Reloading]);
                let config = self.read_config();
                let status = format!("snooping on {}", self.bridge.name);
                let effects = self.daemon.step(now, Input::Reloaded { config, reply: true });
                let answer = self.settle_with_reply(effects).await;
                notify_systemd(&[NotifyState::Ready, NotifyState::Status(&status)]);
                return answer;
            }
            change => Input::Change(change),
        };
        let effects = self.daemon.step(now, input);
        self.settle_with_reply(effects).await
    }

    async fn settle_with_reply(&mut self, effects: Vec<Effect>) -> Result<String, String> {
        self.write();
        self.carry_out(effects).await.unwrap_or_else(|| Err("no answer".into()))
    }

    fn read_config(&self) -> Result<Box<RunConfig>, String> {
        match &self.reload {
            Some(reload) => reload().map(Box::new).map_err(|error| format!("{error:#}")),
            None => Err(state::ChangeError::NoReload.to_string()),
        }
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
        let daemon = &self.daemon;
        let port_flags = self.reconciler.written().ports.iter().map(|(i, p)| (*i, p.flags)).collect();
        let sources = snapshot::Sources {
            bridge: &daemon.bridge.name,
            bridge_ifindex: daemon.bridge.ifindex,
            local: &daemon.local,
            maps: {
                let written = self.reconciler.written();
                let sizes = daemon.start.map_sizes;
                let fill = |map: &str, entries: usize, capacity: u32| snapshot::MapFillView {
                    map: map.to_owned(),
                    entries: entries as u64,
                    capacity: u64::from(capacity),
                };
                vec![
                    fill("memberships", written.members.len(), sizes.memberships),
                    fill("groups", written.groups.len(), sizes.groups),
                    fill("copy_lists", written.lists.len(), sizes.groups),
                    fill("sources", written.sources.values().map(|s| s.len()).sum(), snoop_common::MAX_SOURCES),
                ]
            },
            attach: match self.datapath.attach_mode() {
                datapath::AttachMode::Tcx => "tcx",
                datapath::AttachMode::Clsact => "clsact",
            },
            uptime: self.now(),
            contexts: &daemon.contexts,
            mld: daemon.start.mld,
            ports: &daemon.ports,
            port_flags,
            counters: &Counters { datapath: &self.datapath, written: self.reconciler.written() },
            stats: &daemon.stats,
            forwarding: snapshot::ForwardingView {
                mode: if daemon.forwarding.redirect { "redirect" } else { "bridge" }.into(),
                why: daemon.forwarding.why.map(str::to_owned),
                bridge_path_ports: daemon
                    .ports
                    .values()
                    .filter(|_| daemon.forwarding.redirect)
                    .filter_map(|port| Some((port.name.clone(), port.policy.bridge_path()?.to_owned())))
                    .collect(),
                unattached_ports: self.unattached.clone(),
            },
        };
        snapshot::collect(&sources, counters_only)
    }
}

/// The data path's counters, read through the slots the reconciler handed out.
struct Counters<'a> {
    datapath: &'a Datapath,
    written: &'a Written,
}

impl snapshot::Counters for Counters<'_> {
    fn datapath(&self) -> Vec<u64> {
        self.datapath.counters()
    }

    fn member_traffic(&self) -> Vec<(snoop_common::PortGroupKey, snoop_common::TrafficCounters)> {
        let slots = self.written.members.iter().map(|(key, value)| (*key, value.traffic_slot));
        slots.map(|(key, slot)| (key, self.datapath.traffic(reconcile::SlotKind::Member, slot))).collect()
    }

    fn group_traffic(&self, group: snoop_common::GroupKey) -> snoop_common::TrafficCounters {
        let slot = self.written.group_slots.get(&group).copied().unwrap_or(snoop_common::NO_SLOT);
        self.datapath.traffic(reconcile::SlotKind::Group, slot)
    }

    fn port_traffic(&self, ifindex: u32) -> snoop_common::TrafficCounters {
        let slot = self.written.ports.get(&ifindex).map_or(snoop_common::NO_SLOT, |p| p.traffic_slot);
        self.datapath.traffic(reconcile::SlotKind::Port, slot)
    }

    fn port_counters(&self, ifindex: u32) -> snoop_common::PortCounters {
        self.datapath.port_counters(ifindex)
    }
}

/// What a predecessor left pinned, as the state machines resume it:
/// memberships with their source filters, learned router ports (per VLAN
/// where it kept them so, else per port: then in every VLAN of the port).
fn pinned(written: &Written) -> Pinned {
    use snoop_common::{
        IPV4_FLAGS, IPV6_FLAGS, MEMBER_LEAVING, MEMBER_SOURCES_EXCLUDE, MEMBER_SOURCES_INCLUDE, MEMBER_STATIC,
    };
    let members = written
        .members
        .iter()
        .map(|(key, value)| {
            let source_flags = value.flags & (MEMBER_SOURCES_INCLUDE | MEMBER_SOURCES_EXCLUDE);
            let sources =
                (source_flags != 0).then(|| (source_flags, written.sources.get(key).cloned().unwrap_or_default()));
            PinnedMember {
                key: *key,
                version: value.version,
                leaving: value.flags & MEMBER_LEAVING != 0,
                permanent: value.flags & MEMBER_STATIC != 0,
                sources,
            }
        })
        .collect();
    let mut routers = Vec::new();
    for (family, router) in
        [(snoop_common::FAMILY_IPV4, IPV4_FLAGS.router), (snoop_common::FAMILY_IPV6, IPV6_FLAGS.router)]
    {
        let per_vlan: Vec<_> = written
            .vlan_ports
            .iter()
            .filter(|(_, flags)| *flags & router != 0)
            .map(|(key, _)| (family, Some(key.vlan), key.ifindex))
            .collect();
        if per_vlan.is_empty() {
            let ports = written.ports.iter().filter(|(_, port)| port.flags & router != 0);
            routers.extend(ports.map(|(ifindex, _)| (family, None, *ifindex)));
        } else {
            routers.extend(per_vlan);
        }
    }
    Pinned { members, routers }
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

/// The next burst of link changes (a container starting is one rescan).
/// The host's query socket readable (never, without one).
async fn host_query_ready(
    tap: &Option<AsyncFd<HostQueryTap>>,
) -> Option<std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, HostQueryTap>>> {
    match tap {
        Some(tap) => Some(tap.readable().await),
        None => std::future::pending().await,
    }
}

async fn next_change(changes: &mut Option<Box<dyn Stream<Item = ()> + Unpin>>) -> Option<()> {
    let changes = changes.as_mut()?;
    changes.next().await?;
    while let Some(Some(())) = changes.next().now_or_never() {}
    Some(())
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
