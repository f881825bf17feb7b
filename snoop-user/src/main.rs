use std::{
    collections::BTreeMap,
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, CommandFactory as _, Parser, Subcommand, ValueEnum};
use futures::FutureExt as _;
use snoop::{
    control::{self, Change},
    daemon, datapath,
    membership::Timers,
    netns,
    port_groups::{GroupRange, StaticGroup},
    settings::{self, Forwarding, Live, RunConfig, Start},
    show::{self, View},
};

/// IGMP snooping for Linux bridges, on eBPF: group traffic goes only to ports
/// with members and to router ports.
#[derive(Parser, Debug)]
#[command(name = "snoop", version)]
struct Cli {
    /// Work in this network namespace (a name from `ip netns list`). Use this
    /// rather than `ip netns exec`, which hides /sys/fs/bpf and so the pinned state.
    #[arg(long, global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[allow(clippy::large_enum_variant)] // parsed once per process
enum Command {
    /// Snoop on a bridge in the foreground until SIGINT/SIGTERM.
    // Given twice, the later wins: flags override the config file's settings.
    #[command(args_override_self = true)]
    Run(RunArgs),
    /// Make a snooping switch of interfaces, for a lab with no managed one:
    /// a new bridge with them as its ports (what was configured on them by
    /// hand, addresses and routes, moves to it), snooped in the foreground.
    /// On SIGINT/SIGTERM the bridge goes and each interface is put back as
    /// it was: its addresses, its routes, up or down.
    Switch(SwitchArgs),
    /// Show the state of the snoop running on a bridge.
    Show {
        #[arg(value_enum)]
        view: View,
        #[arg(long, default_value = "br0")]
        bridge: String,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Redraw every INTERVAL with traffic rates (e.g. 1s) until interrupted.
        #[arg(long, value_name = "INTERVAL", value_parser = duration, num_args = 0..=1, default_missing_value = "1s")]
        watch: Option<Duration>,
    },
    /// Stream membership events (joins, leaves, expiries, querier and router
    /// port changes) from the snoop running on a bridge, one line each.
    Watch {
        #[arg(long, default_value = "br0")]
        bridge: String,
        /// JSON lines instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Add or delete a static group membership on the snoop running on a
    /// bridge (root only): a port that always gets a group, like `bridge mdb
    /// add ... permanent`. Lasts until deleted or snoop stops; put lasting
    /// ones in the configuration file (`static-groups` of a `[port.NAME]`).
    Group {
        #[command(subcommand)]
        action: GroupAction,
    },
    /// Make the snoop running on a bridge read its configuration file (and
    /// command line) again and apply what changed, without losing a
    /// membership or a packet (as SIGHUP does; this also says what it did).
    Reload {
        #[arg(long, default_value = "br0")]
        bridge: String,
    },
    /// Print a shell's completions for snoop (bash, zsh, fish, ...).
    Completions { shell: clap_complete::Shell },
    /// Write snoop's man pages (snoop.8, snoop-run.8, ...) into DIR.
    #[command(hide = true)]
    Manpages { dir: PathBuf },
    /// Remove the pinned state a `snoop run --keep-state` left behind
    /// (detaches the programs, restores the bridge's own snooping).
    Cleanup {
        #[arg(long)]
        bridge: String,
        #[arg(long)]
        pin_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum GroupAction {
    /// The port gets the group (of these sources only, with --source) from now on.
    Add(GroupArgs),
    /// The port's static membership ends (while snoop is the querier, hosts
    /// that still want the group keep it by answering its queries).
    Del(GroupArgs),
}

#[derive(Args, Debug)]
struct SwitchArgs {
    /// The new bridge's name.
    #[arg(long, default_value = "snoop0")]
    bridge: String,
    /// The interfaces to make its ports: none a port of anything yet.
    #[arg(required = true, num_args = 2.., value_name = "INTERFACE")]
    interfaces: Vec<String>,
    /// Options of `snoop run`, after `--` (`-- --config lab.toml --fast-leave all`).
    #[arg(last = true, value_name = "RUN-OPTION")]
    run_options: Vec<OsString>,
}

#[derive(Args, Debug)]
struct GroupArgs {
    #[arg(long, default_value = "br0")]
    bridge: String,
    /// The bridge port.
    #[arg(long)]
    port: String,
    /// The group address (IPv4 or IPv6).
    group: IpAddr,
    /// Only this source (repeatable); a source-specific (SSM) group needs one.
    #[arg(long, value_name = "ADDRESS")]
    source: Vec<IpAddr>,
    /// The VLAN, on a VLAN-filtering bridge.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=4094))]
    vlan: Option<u16>,
}

impl GroupArgs {
    /// The static group, checked as the configuration's are.
    fn entry(&self) -> Result<StaticGroup> {
        let mut text = format!("{}={}", self.port, self.group);
        for source in &self.source {
            text += &format!(",source={source}");
        }
        if let Some(vlan) = self.vlan {
            text += &format!(",vlan={vlan}");
        }
        Ok(text.parse()?)
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Read settings from this TOML file: its keys are these options' long
    /// names, and `[port.NAME]` tables hold a port's `router`, `trusted`,
    /// `fast-leave` and `max-groups`. Flags given here override it.
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// The bridge to snoop on.
    #[arg(long)]
    bridge: String,
    /// Robustness variable (RFC 3376 8.1).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=7))]
    robustness: u32,
    /// Interval between general queries.
    #[arg(long, default_value = "125s", value_parser = duration)]
    query_interval: Duration,
    /// Max response time advertised in general queries.
    #[arg(long, default_value = "10s", value_parser = duration)]
    query_response_interval: Duration,
    /// Default: robustness x query interval + query response interval.
    #[arg(long, value_parser = duration)]
    group_membership_interval: Option<Duration>,
    /// Default: robustness x query interval + query response interval / 2.
    #[arg(long, value_parser = duration)]
    other_querier_present_interval: Option<Duration>,
    /// Default: query interval / 4.
    #[arg(long, value_parser = duration)]
    startup_query_interval: Option<Duration>,
    /// Default: robustness.
    #[arg(long)]
    startup_query_count: Option<u32>,
    #[arg(long, default_value = "1s", value_parser = duration)]
    last_member_query_interval: Duration,
    /// Default: robustness.
    #[arg(long)]
    last_member_query_count: Option<u32>,
    /// Version of snoop's queries: 3, or 2 where IGMPv2 routers are
    /// (RFC 3376 7.3.1). An older querier heard lowers it automatically.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=3))]
    query_version: u8,
    /// Never send queries (a router or another switch is the querier).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    no_querier: bool,
    /// Source address of snoop's queries. Default: the bridge's IPv4 address,
    /// else 0.0.0.0 (which loses every querier election).
    #[arg(long)]
    query_source: Option<Ipv4Addr>,
    /// Leave IPv6 alone: no MLD snooping, IPv6 group traffic floods as on a
    /// plain bridge.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    no_mld: bool,
    /// The MLD version of snoop's queries: 2 (MLDv2, default), or 1 where
    /// routers speak MLDv1 only. An MLDv1 querier heard lowers it automatically.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    mld_query_version: u8,
    /// Source address of snoop's MLD queries: a link-local address. Default:
    /// the bridge's own; with none, snoop sends no MLD queries (hosts ignore
    /// queries from other addresses).
    #[arg(long, value_parser = parse_link_local)]
    mld_query_source: Option<Ipv6Addr>,
    /// Source address of snoop's queries in one VLAN of a VLAN-aware bridge,
    /// VLAN=ADDRESS: IPv4 for IGMP, link-local IPv6 for MLD (repeatable).
    /// Default: the address of the VLAN's interface on the bridge (br0.10),
    /// else --query-source / --mld-query-source, else the bridge's own (for
    /// IPv4 only in its untagged VLAN), else 0.0.0.0 (no MLD queries).
    #[arg(long, value_name = "VLAN=ADDRESS", value_parser = parse_vlan_query_source)]
    vlan_query_source: Vec<(u16, IpAddr)>,
    /// Snoop link-scope IPv6 groups (ff02::/16, but ff02::1) like any other,
    /// as RFC 4541 allows. Off by default: neighbour discovery, DHCPv6 and
    /// mDNS then never depend on snooping having heard every host's reports.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    snoop_ipv6_link_scope: bool,
    /// A port that always gets all group traffic and reports (repeatable).
    #[arg(long, value_name = "PORT")]
    router_port: Vec<String>,
    /// Remove a port's membership on a leave without a last-member query
    /// (repeatable; `all` for every port). Only for ports with one host behind them.
    #[arg(long, value_name = "PORT")]
    fast_leave: Vec<String>,
    /// The only ports whose queries and PIM hellos are believed: they may
    /// become router ports and win the querier election, and get the
    /// reports while no router port is known (repeatable; `all` for every
    /// port). Without it every port's are, as the Linux bridge and managed
    /// switches learn routers. With it, other ports' queries are ignored, so
    /// a host there cannot hijack the querier or attract all traffic.
    /// `--router-port` ports are trusted too.
    #[arg(long, value_name = "PORT")]
    trusted_port: Vec<String>,
    /// A port that is never a router port, whatever it sends (the bridge's
    /// `mcast_router 0`; `router = "never"` in a port's table; repeatable).
    #[arg(long, value_name = "PORT")]
    never_router_port: Vec<String>,
    /// Most groups one port may join, in all its VLANs and both families
    /// together; further joins are refused and counted (0: no limit).
    #[arg(long, default_value_t = 1024)]
    max_groups_per_port: usize,
    /// One port's own group limit, instead of --max-groups-per-port (repeatable).
    #[arg(long, value_name = "PORT=N", value_parser = port_limit)]
    port_max_groups: Vec<(String, usize)>,
    /// Groups a port may join: with any given, only those (of either
    /// family); other joins are refused and counted (repeatable; PORT `all`
    /// for every port). RANGE: 239.1.0.0/16, 239.1.1.1-239.1.1.9, ff3e::/16.
    #[arg(long, value_name = "PORT=RANGE", value_parser = port_range)]
    port_allow: Vec<(String, GroupRange)>,
    /// Groups a port may not join, whatever --port-allow says (repeatable).
    #[arg(long, value_name = "PORT=RANGE", value_parser = port_range)]
    port_deny: Vec<(String, GroupRange)>,
    /// A static membership: the port always gets the group, never aged out,
    /// whatever its hosts report (repeatable). No source: any source.
    #[arg(long, value_name = "PORT=GROUP[,source=S]...", value_parser = static_group)]
    static_group: Vec<StaticGroup>,
    /// Most sources one port keeps per group (IGMPv3/MLDv2 source lists);
    /// further sources are refused and counted (0: no limit).
    #[arg(long, default_value_t = snoop::membership::DEFAULT_MAX_SOURCES)]
    max_sources_per_group: usize,
    /// A source-specific multicast range (repeatable, at most 4): any-source
    /// joins of its groups are ignored and sources nobody asked for are not
    /// forwarded (RFC 4607). Default: 232.0.0.0/8 and ff3x::/32; `none`:
    /// no range, as the Linux bridge (any-source joins of 232.x work).
    #[arg(long, value_name = "PREFIX|none", value_parser = settings::parse_ssm_range)]
    ssm_range: Vec<Option<snoop_common::SsmRange>>,
    /// IGMP/MLD/PIM frames per second per port handed to the controller;
    /// the excess is counted and still forwarded (0: no limit). A frame
    /// counts the ring space it takes: 1 up to 128 bytes, 16 up to 2 KiB,
    /// 512 beyond (a jumbo report).
    #[arg(long, default_value_t = 1000)]
    control_rate_limit: u32,
    /// With no controller heartbeat for this long (snoop killed, or stopped
    /// with --keep-state), the data path floods instead of pruning.
    /// Default: the group membership interval, when every membership would
    /// have expired anyway. `never` keeps pruning on the last state.
    #[arg(long, value_name = "DURATION|never")]
    failsafe_after: Option<String>,
    /// How group traffic reaches member ports: `redirect` copies it from the
    /// sender's port straight to member and router ports; `bridge` lets the
    /// bridge flood and drops it at ports without members. Redirect falls back
    /// to bridge when the bridge runs STP (or 802.1ad VLAN filtering).
    #[arg(long, value_enum, default_value_t = Forwarding::Redirect)]
    forwarding: Forwarding,
    /// What to do with groups nobody joined.
    #[arg(long, value_enum, default_value_t = Unregistered::Routers)]
    unregistered: Unregistered,
    /// Where the maps and links are pinned. Default: /sys/fs/bpf/snoop/NETNS/BRIDGE.
    #[arg(long)]
    pin_dir: Option<PathBuf>,
    /// On exit leave the programs attached and the state pinned: forwarding
    /// continues and the next `snoop run` resumes without a gap.
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set, value_name = "BOOL")]
    keep_state: bool,
    /// Entries of the membership map: (group, port) pairs the data path can
    /// hold. A membership that does not fit is still delivered (its port gets
    /// every group until it fits) and counted.
    #[arg(long, default_value_t = snoop_common::MAX_MEMBERSHIPS,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_memberships: u32,
    /// Entries of the group map and of the redirect copy lists.
    #[arg(long, default_value_t = snoop_common::MAX_GROUPS,
          value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    max_groups: u32,
    /// Members of this group (a name or a gid) may use `snoop show` and
    /// `snoop watch`; root always may, nobody else. Changes (`snoop group`,
    /// `snoop reload`) are root's only.
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Add a metrics series per source of each membership (one per source
    /// per port: a host naming many sources makes many series).
    #[arg(long)]
    metrics_sources: bool,
    /// How often to rescan the bridge's ports (every rtnetlink link change
    /// triggers a rescan too; this catches anything an event could miss).
    #[arg(long, default_value = "1s", value_parser = duration)]
    port_scan_interval: Duration,
    /// The controller's nice value (-20..19). A join waits for the controller
    /// to be scheduled; on a busy machine a slightly raised priority lets it
    /// preempt at once (0: leave the priority as it is).
    #[arg(long, default_value_t = -5, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Unregistered {
    /// Flood to every port.
    Flood,
    /// Send only to router ports, as the Linux bridge does once a querier is
    /// present (RFC 4541 2.1.2 allows both). While no querier is, every
    /// group floods whatever this says.
    Routers,
}

/// The longest duration any option takes: a day (a query interval can be
/// at most 31744 s on the wire, RFC 3376 4.1.7). Longer ones, like NaN,
/// infinite or negative ones, would overflow the timers.
const MAX_DURATION: Duration = Duration::from_secs(86_400);

fn duration(text: &str) -> Result<Duration, String> {
    let seconds = || text.trim().parse::<f64>().ok().and_then(|s| Duration::try_from_secs_f64(s).ok());
    match humantime::parse_duration(text).ok().or_else(seconds) {
        Some(d) if d.is_zero() => Err("must be more than zero".into()),
        Some(d) if d > MAX_DURATION => Err(format!("`{text}` is longer than a day")),
        Some(d) => Ok(d),
        None => Err(format!("`{text}` is not a duration (examples: 125s, 500ms, 2m)")),
    }
}

fn main() {
    let argv = match with_config_file(std::env::args_os().collect()) {
        Ok(argv) => argv,
        Err(error) => {
            eprintln!("snoop: {error:#}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(argv);
    if !(logging_to_journald() && log_to_journal(&cli)) {
        let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
        logger.format_timestamp_millis();
        logger.init();
    }
    if let Err(error) = real_main(cli) {
        eprintln!("snoop: {error:#}");
        std::process::exit(1);
    }
}

fn real_main(cli: Cli) -> Result<()> {
    if let Some(name) = &cli.netns {
        netns::enter(name)?;
    }
    match cli.command {
        Command::Run(args) => {
            require_root()?;
            // Before the runtime starts: threads inherit the calling thread's nice value.
            set_nice(args.nice);
            raise_open_file_limit();
            let config = run_config(args, cli.netns.as_deref()).unwrap_or_else(|error| usage_error(&error));
            let reload = reloader(std::env::args_os().collect(), cli.netns);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let signals = daemon::Signals::register()?;
                daemon::run(config, Some(reload), signals).await.map_err(anyhow::Error::from)
            })
        }
        Command::Switch(SwitchArgs { bridge, interfaces, run_options }) => {
            require_root()?;
            // `snoop run` of the bridge to be, its own `--bridge` last: it wins over a file's.
            let mut argv: Vec<OsString> = ["snoop", "run"].map(OsString::from).into();
            argv.extend(run_options);
            argv.extend(["--bridge", &bridge].map(OsString::from));
            let args = run_args(argv.clone()).unwrap_or_else(|error| match error.downcast::<clap::Error>() {
                Ok(error) => error.exit(),
                Err(error) => usage_error(&error),
            });
            if args.keep_state {
                bail!("--keep-state: snoop switch deletes its bridge on the way out, so there is no state to keep");
            }
            set_nice(args.nice);
            raise_open_file_limit();
            let config = run_config(args, cli.netns.as_deref()).unwrap_or_else(|error| usage_error(&error));
            let reload = reloader(argv, cli.netns);
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                // First: a SIGINT from here on waits for the interfaces to be put back.
                let mut signals = daemon::Signals::register()?;
                let mut switch = snoop::switch::Switch::plan(&bridge, &interfaces).await?;
                switch.build().await?;
                let pin_dir = config.start.pin_dir.clone();
                let result = match signals.stop_requested() {
                    true => Ok(()),
                    // A controller that panics must not leave the interfaces
                    // in a bridge, nor its programs on them.
                    false => match std::panic::AssertUnwindSafe(daemon::run(config, Some(reload), signals))
                        .catch_unwind()
                        .await
                    {
                        Ok(result) => result.map_err(anyhow::Error::from),
                        Err(panic) => {
                            if let Err(error) = daemon::cleanup(&bridge, &pin_dir).await {
                                log::warn!("{}", snoop::error_chain(&error));
                            }
                            Err(anyhow::anyhow!("the controller panicked: {}", panic_text(&*panic)))
                        }
                    },
                };
                let restored = switch.restore().await;
                result.and(restored.map_err(Into::into))
            })
        }
        Command::Group { action } => {
            let (args, change) = match action {
                GroupAction::Add(args) => (args, Change::GroupAdd as fn(StaticGroup) -> Change),
                GroupAction::Del(args) => (args, Change::GroupDel as fn(StaticGroup) -> Change),
            };
            println!("{}", control::change(&args.bridge, change(args.entry()?))?);
            Ok(())
        }
        Command::Reload { bridge } => {
            println!("{}", control::change(&bridge, Change::Reload)?);
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "snoop", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => write_man_pages(&dir),
        Command::Show { view, bridge, json, watch } => show::show(&bridge, view, json, watch),
        Command::Watch { bridge, json } => show::watch(&bridge, json),
        Command::Cleanup { bridge, pin_dir } => {
            require_root()?;
            let pin_dir =
                pin_dir.unwrap_or_else(|| datapath::default_pin_dir(&netns::label(cli.netns.as_deref()), &bridge));
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(daemon::cleanup(&bridge, &pin_dir))?;
            println!("removed {}", pin_dir.display());
            Ok(())
        }
    }
}

/// `--ssm-range`s: none given, the defaults; `none`, no range at all.
fn ssm_ranges(given: &[Option<snoop_common::SsmRange>]) -> Result<Vec<snoop_common::SsmRange>> {
    if given.is_empty() {
        return Ok(settings::DEFAULT_SSM_RANGES.to_vec());
    }
    let ranges: Vec<_> = given.iter().flatten().copied().collect();
    if given.contains(&None) && !ranges.is_empty() {
        bail!("--ssm-range none goes alone");
    }
    if ranges.len() > snoop_common::MAX_SSM_RANGES as usize {
        bail!("--ssm-range: at most {} ranges", snoop_common::MAX_SSM_RANGES);
    }
    Ok(ranges)
}

/// What a panic said.
fn panic_text(panic: &(dyn std::any::Any + Send)) -> &str {
    panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str)).unwrap_or("?")
}

/// Options that do not go together: said as clap says a bad option, exit 2.
fn usage_error(error: &anyhow::Error) -> ! {
    eprintln!("snoop: {error:#}");
    std::process::exit(2)
}

/// The options of a `snoop run` command line, its config file's included.
fn run_args(argv: Vec<OsString>) -> Result<RunArgs> {
    let cli = Cli::try_parse_from(with_config_file(argv)?)?;
    let Command::Run(args) = cli.command else { bail!("not a run command") };
    Ok(args)
}

/// A reload reads the file and the same command line again, so the
/// command line's flags still override the file's.
fn reloader(argv: Vec<OsString>, netns: Option<String>) -> daemon::Reload {
    Box::new(move || run_config(run_args(argv.clone())?, netns.as_deref()))
}

fn run_config(args: RunArgs, netns: Option<&str>) -> Result<RunConfig> {
    let mut timers = Timers::derived(args.robustness, args.query_interval, args.query_response_interval);
    if args.query_response_interval >= args.query_interval {
        bail!("--query-response-interval must be shorter than --query-interval");
    }
    if let Some(v) = args.group_membership_interval {
        timers.group_membership_interval = v;
    }
    if let Some(v) = args.other_querier_present_interval {
        timers.other_querier_present_interval = v;
    }
    if let Some(v) = args.startup_query_interval {
        timers.startup_query_interval = v;
    }
    if let Some(v) = args.startup_query_count {
        timers.startup_query_count = v.max(1);
    }
    timers.last_member_query_interval = args.last_member_query_interval;
    if let Some(v) = args.last_member_query_count {
        timers.last_member_query_count = v.max(1);
    }
    let pin_dir = args.pin_dir.unwrap_or_else(|| datapath::default_pin_dir(&netns::label(netns), &args.bridge));
    // The heartbeat comes every second: a failsafe within three of them
    // would flood and prune by turns.
    let shortest_failsafe = 3 * snoop_common::HEARTBEAT_INTERVAL;
    let failsafe_after = match args.failsafe_after.as_deref() {
        None => Some(timers.group_membership_interval.max(shortest_failsafe)),
        Some("never") => None,
        Some(text) => match duration(text).map_err(|e| anyhow::anyhow!("--failsafe-after: {e}"))? {
            failsafe if failsafe < shortest_failsafe => {
                anyhow::bail!(
                    "--failsafe-after ({failsafe:?}) must be at least {shortest_failsafe:?}: three heartbeats"
                )
            }
            failsafe => Some(failsafe),
        },
    };
    let start = Start {
        bridge: args.bridge,
        timers,
        querier: !args.no_querier,
        query_version: args.query_version,
        query_source: args.query_source,
        mld: !args.no_mld,
        mld_query_version: args.mld_query_version,
        mld_query_source: args.mld_query_source,
        vlan_query_sources: vlan_query_sources(args.vlan_query_source)?,
        snoop_ipv6_link_scope: args.snoop_ipv6_link_scope,
        max_sources_per_group: args.max_sources_per_group,
        ssm_ranges: ssm_ranges(&args.ssm_range)?,
        control_rate_limit: args.control_rate_limit,
        failsafe_after,
        forwarding: args.forwarding,
        pin_dir,
        port_scan_interval: args.port_scan_interval,
        metrics: args.metrics,
        metrics_sources: args.metrics_sources,
        control_group: args.control_group.as_deref().map(group_id).transpose()?,
        map_sizes: snoop_common::MapSizes { memberships: args.max_memberships, groups: args.max_groups },
    };
    let live = Live {
        static_router_ports: args.router_port,
        never_router_ports: args.never_router_port,
        fast_leave_ports: args.fast_leave,
        trusted_ports: args.trusted_port,
        max_groups_per_port: args.max_groups_per_port,
        port_max_groups: args.port_max_groups,
        port_allow: args.port_allow,
        port_deny: args.port_deny,
        static_groups: args.static_group,
        flood_unregistered: args.unregistered == Unregistered::Flood,
        keep_state: args.keep_state,
    };
    Ok(RunConfig { start, live })
}

/// Each VLAN's configured query sources, one per family.
fn vlan_query_sources(given: Vec<(u16, IpAddr)>) -> Result<BTreeMap<(u16, bool), IpAddr>> {
    let mut sources = BTreeMap::new();
    for (vlan, addr) in given {
        if let Some(other) = sources.insert((vlan, addr.is_ipv6()), addr) {
            anyhow::bail!("--vlan-query-source: VLAN {vlan} is given two sources, {other} and {addr}");
        }
    }
    Ok(sources)
}

/// snoop.8 and one page per command (snoop-run.8, ...), section 8: it is
/// an administrator's command.
fn write_man_pages(dir: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let top = Cli::command().name("snoop");
    let mut pages = vec![("snoop".to_owned(), top.clone())];
    for command in top.get_subcommands().filter(|c| !c.is_hide_set()) {
        let name = format!("snoop-{}", command.get_name());
        pages.push((name.clone(), command.clone().name(name)));
    }
    for (name, command) in pages {
        let mut page = Vec::new();
        clap_mangen::Man::new(command).section("8").render(&mut page)?;
        let path = dir.join(format!("{name}.8"));
        std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// A group's gid, from its name or number.
fn group_id(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group)?;
    // SAFETY: getgrnam with a valid C string; the result is read at once.
    let entry = unsafe { libc::getgrnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("--control-group: no group named {group}");
    }
    // SAFETY: a non-null result of getgrnam.
    Ok(unsafe { (*entry).gr_gid })
}

/// systemd connects stderr to journald and says so in JOURNAL_STREAM
/// (`DEVICE:INODE` of that stream), which children may inherit: compare.
/// Under systemd, records go to the journal natively: their priority, and
/// fields of their own (BRIDGE= on every record; PORT=, GROUP=, VLAN=,
/// EVENT= on membership events), filtered as RUST_LOG says. False if the
/// journal cannot be reached (then stderr, as elsewhere).
fn log_to_journal(cli: &Cli) -> bool {
    let bridge = match &cli.command {
        Command::Run(args) => Some(args.bridge.clone()),
        Command::Switch(args) => Some(args.bridge.clone()),
        _ => None,
    };
    let Ok(journal) = systemd_journal_logger::JournalLog::new() else { return false };
    let journal = journal.with_extra_fields(bridge.map(|b| ("BRIDGE", b)));
    let filter = match std::env::var_os("RUST_LOG") {
        Some(_) => env_filter::Builder::from_env("RUST_LOG").build(),
        None => env_filter::Builder::new().filter_level(log::LevelFilter::Info).build(),
    };
    log::set_max_level(filter.filter());
    log::set_boxed_logger(Box::new(FilteredJournal { filter, journal })).is_ok()
}

/// The journal, as RUST_LOG filters.
struct FilteredJournal {
    filter: env_filter::Filter,
    journal: systemd_journal_logger::JournalLog,
}

impl log::Log for FilteredJournal {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.filter.matches(record) {
            self.journal.log(record);
        }
    }

    fn flush(&self) {}
}

fn logging_to_journald() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else { return false };
    stream.to_str() == Some(&format!("{}:{}", stderr.dev(), stderr.ino()))
}

/// Raises the soft limit on open files to the hard one: each port holds
/// two link descriptors (TCX), and the usual soft limit (1024 under
/// systemd) would leave ports past about 490 unattached.
fn raise_open_file_limit() {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid out-pointer and value.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 || limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
            log::warn!("could not raise the open file limit: {}", std::io::Error::last_os_error());
        } else {
            log::debug!("open file limit raised from {} to {}", limit.rlim_cur, limit.rlim_max);
        }
    }
}

fn set_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: plain setpriority(2) on the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        log::warn!("could not set nice {nice}: {}", std::io::Error::last_os_error());
    }
}

fn require_root() -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("snoop needs root (CAP_BPF, CAP_NET_ADMIN and CAP_NET_RAW); run it with sudo");
    }
    Ok(())
}

/// `--mld-query-source`: hosts accept MLD queries from link-local addresses only.
fn parse_link_local(text: &str) -> Result<Ipv6Addr, String> {
    let addr: Ipv6Addr = text.parse().map_err(|e| format!("{e}"))?;
    if !snoop::proto::mld::is_link_local(addr) {
        return Err(format!("{addr} is not a link-local address (fe80::/10): hosts ignore MLD queries from it"));
    }
    Ok(addr)
}

/// `--vlan-query-source VLAN=ADDRESS`.
fn parse_vlan_query_source(text: &str) -> Result<(u16, IpAddr), String> {
    let (vlan, addr) = text.split_once('=').ok_or_else(|| format!("`{text}` is not VLAN=ADDRESS"))?;
    let vlan = vlan
        .parse()
        .ok()
        .filter(|v| (1..=4094).contains(v))
        .ok_or_else(|| format!("`{vlan}` is not a VLAN id (1-4094)"))?;
    let addr = match addr.parse::<IpAddr>().map_err(|e| format!("`{addr}`: {e}"))? {
        IpAddr::V4(addr) if addr.is_multicast() || addr.is_broadcast() => {
            return Err(format!("{addr} cannot be the source of a query"))
        }
        IpAddr::V4(addr) => IpAddr::V4(addr),
        IpAddr::V6(_) => IpAddr::V6(parse_link_local(addr)?),
    };
    Ok((vlan, addr))
}

/// `--port-max-groups PORT=N`.
fn port_limit(text: &str) -> Result<(String, usize), String> {
    let (port, limit) = text.split_once('=').ok_or_else(|| format!("`{text}` is not PORT=N"))?;
    let limit = limit.parse().map_err(|_| format!("`{limit}` is not a number of groups (0: no limit)"))?;
    if port.is_empty() {
        return Err(format!("`{text}` names no port"));
    }
    Ok((port.to_owned(), limit))
}

/// `--port-allow PORT=RANGE`, `--port-deny PORT=RANGE`.
fn port_range(text: &str) -> Result<(String, GroupRange), String> {
    let (port, range) = text.split_once('=').ok_or_else(|| format!("`{text}` is not PORT=RANGE"))?;
    if port.is_empty() {
        return Err(format!("`{text}` names no port"));
    }
    Ok((port.to_owned(), range.parse().map_err(|e| format!("{e}"))?))
}

/// `--static-group PORT=GROUP[,source=S]...[,vlan=V]`.
fn static_group(text: &str) -> Result<StaticGroup, String> {
    text.parse().map_err(|e| format!("{e}"))
}

/// `snoop run --config FILE ...` with the file's settings put in as flags
/// right after `run`, so the command line's own flags come later and win.
/// Each setting is checked alone first, so an error names its line.
fn with_config_file(mut argv: Vec<OsString>) -> Result<Vec<OsString>> {
    // The subcommand: the first word that is not --netns or its value.
    let mut index = 1;
    while let Some(word) = argv.get(index).and_then(|w| w.to_str()) {
        match word {
            "--netns" => index += 2,
            w if w.starts_with("--netns=") => index += 1,
            _ => break,
        }
    }
    if argv.get(index).and_then(|w| w.to_str()) != Some("run") {
        return Ok(argv);
    }
    let run = index;
    let mut path = None;
    let mut words = argv[run + 1..].iter().map(|w| w.to_string_lossy());
    while let Some(word) = words.next() {
        if let Some(value) = word.strip_prefix("--config=") {
            path = Some(value.to_owned());
        } else if word == "--config" || word == "-c" {
            path = words.next().map(|w| w.into_owned());
        } else if word == "--" {
            break;
        }
    }
    let Some(path) = path else { return Ok(argv) };
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading the config file {path}"))?;
    let command = Cli::command();
    let options: Vec<snoop::config::OptionSpec> = command
        .find_subcommand("run")
        .expect("snoop has a run command")
        .get_arguments()
        .filter_map(|arg| {
            Some(snoop::config::OptionSpec {
                name: arg.get_long()?.to_owned(),
                // A switch (`--keep-state`, `--keep-state=false`) takes `true` or `false` in the file.
                takes_value: arg.get_action().takes_values() && arg.get_num_args().is_none_or(|n| n.min_values() > 0),
                repeatable: matches!(arg.get_action(), clap::ArgAction::Append),
            })
        })
        .collect();
    let file = snoop::config::file_args(&text, &options).with_context(|| path.clone())?;
    for setting in &file.args {
        let bridge = if setting.key == "bridge" { vec![] } else { vec!["--bridge", "-"] };
        let alone = ["snoop", "run"].into_iter().chain(bridge).chain(setting.args.iter().map(String::as_str));
        if let Err(error) = Cli::command().try_get_matches_from(alone) {
            let message = error.to_string();
            let message = message.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
            let error = snoop::config::ConfigError::BadValue { line: setting.line, key: setting.key.clone(), message };
            return Err(anyhow::Error::new(error).context(path));
        }
    }
    let inserted = file.args.into_iter().flat_map(|setting| setting.args).map(OsString::from);
    argv.splice(run + 1..run + 1, inserted);
    Ok(argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../dist/snoop.toml");

    #[test]
    fn durations_no_timer_can_hold_are_refused_not_panicked_on() {
        for text in ["nan", "NaN", "inf", "-inf", "1e20", "-5", "-5s", "100d", "0", "0s", "", "soon"] {
            assert!(duration(text).is_err(), "{text:?} was taken");
        }
        assert_eq!(duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(duration("125s"), Ok(Duration::from_secs(125)));
        assert_eq!(duration("24h"), Ok(MAX_DURATION));
    }

    /// The shipped example names every option of `snoop run`, and nothing else.
    #[test]
    fn the_example_config_documents_every_option() {
        let command = Cli::command();
        let run = command.find_subcommand("run").expect("a run command");
        let options: Vec<&str> = run.get_arguments().filter_map(|a| a.get_long()).collect();
        let keys: Vec<&str> = EXAMPLE
            .lines()
            .map(|line| line.trim_start_matches('#').trim())
            .filter_map(|line| line.split_once(" = ").map(|(key, _)| key))
            .filter(|key| !key.contains(' '))
            .collect();
        for option in options.iter().filter(|o| !["config", "help", "version"].contains(o)) {
            assert!(keys.contains(option), "dist/snoop.toml does not mention `{option}`");
        }
        let port_keys: Vec<&str> = snoop::config::PORT_KEYS.iter().map(|(key, _, _)| *key).collect();
        for key in keys {
            assert!(options.contains(&key) || port_keys.contains(&key), "dist/snoop.toml: `{key}` is no option");
        }
    }

    /// With every line uncommented, the example is a valid configuration.
    #[test]
    fn the_example_config_is_valid_uncommented() {
        let dir = std::env::temp_dir().join(format!("snoop-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snoop.toml");
        let uncommented: String = EXAMPLE
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.contains(" = ") || rest.starts_with('[') => rest,
                _ => line,
            })
            // Two switches that contradict the rest of the file.
            .filter(|line| !line.starts_with("no-querier") && !line.starts_with("no-mld"))
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(&path, uncommented).unwrap();
        let argv = ["snoop", "run", "--config", path.to_str().unwrap(), "--robustness", "3"].map(OsString::from);
        let expanded = with_config_file(argv.to_vec()).unwrap();
        let Cli { command: Command::Run(args), .. } = Cli::try_parse_from(expanded).unwrap() else { panic!("run") };
        assert_eq!(args.bridge, "br0");
        assert_eq!(args.robustness, 3, "the command line overrides the file");
        assert_eq!(args.query_interval, Duration::from_secs(125));
        assert_eq!(args.router_port, ["eth0", "eth0"]);
        assert_eq!(args.port_max_groups, [("eth3".to_owned(), 16), ("vm101".to_owned(), 64)]);
        assert_eq!(args.vlan_query_source.len(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn vlan_query_sources_are_checked() {
        assert_eq!(parse_vlan_query_source("10=192.0.2.1"), Ok((10, "192.0.2.1".parse().unwrap())));
        assert_eq!(parse_vlan_query_source("4094=fe80::1"), Ok((4094, "fe80::1".parse().unwrap())));
        for (bad, says) in [
            ("10", "is not VLAN=ADDRESS"),
            ("0=192.0.2.1", "is not a VLAN id (1-4094)"),
            ("4095=192.0.2.1", "is not a VLAN id"),
            ("10=2001:db8::1", "is not a link-local address"),
            ("10=239.1.1.1", "cannot be the source of a query"),
            ("10=nowhere", "`nowhere`"),
        ] {
            let error = parse_vlan_query_source(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
        let twice = vec![(10, "192.0.2.1".parse().unwrap()), (10, "192.0.2.2".parse().unwrap())];
        let error = vlan_query_sources(twice).unwrap_err().to_string();
        assert!(error.contains("VLAN 10 is given two sources"), "{error}");
        let both_families = vec![(10, "192.0.2.1".parse().unwrap()), (10, "fe80::1".parse().unwrap())];
        assert_eq!(vlan_query_sources(both_families).unwrap().len(), 2);
    }

    /// A switch the file sets on, the command line can set off.
    #[test]
    fn the_command_line_turns_off_a_switch_the_file_turns_on() {
        let dir = std::env::temp_dir().join(format!("snoop-config-switch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("snoop.toml");
        std::fs::write(&path, "bridge = \"br0\"\nkeep-state = true\nno-mld = true\n").unwrap();
        let argv = ["snoop", "run", "-c", path.to_str().unwrap(), "--keep-state=false"].map(OsString::from);
        let args = run_args(argv.to_vec()).unwrap();
        assert!(!args.keep_state, "--keep-state=false overrides the file");
        assert!(args.no_mld, "the file's other switch holds");
        let argv = ["snoop", "run", "--bridge", "br0", "--no-querier"].map(OsString::from);
        assert!(run_args(argv.to_vec()).unwrap().no_querier, "a switch alone is on");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_bad_value_in_the_file_names_its_line() {
        let dir = std::env::temp_dir().join(format!("snoop-config-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "bridge = \"br0\"\n\nrobustness = 9\n").unwrap();
        let argv = ["snoop", "run", "-c", path.to_str().unwrap()].map(OsString::from);
        let error = format!("{:#}", with_config_file(argv.to_vec()).unwrap_err());
        assert!(error.contains("bad.toml: line 3: `robustness`: invalid value '9'"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
