//! Project tasks: `cargo xtask setup | demo | lint | test | bench | soak | vm | package`.
//!
//! `demo` and `test` run `setup` first, so on a fresh Debian 12 machine they
//! are the only two commands a newcomer needs.
mod bpf_toolchain;
mod package;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

/// LLVM that bpf-linker links against (Debian package llvm-22-dev).
const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing snoop needs (idempotent).
    Setup,
    /// Build snoop and run its demo lab (the main job).
    Demo,
    /// Benchmark snoop against the kernel bridge's snooping and flooding (needs root).
    Bench {
        /// The short smoke version (CI runs it).
        #[arg(long)]
        quick: bool,
        /// Only these figures, e.g. `1,2` (default: all).
        #[arg(long)]
        only: Option<String>,
        /// Run it in a QEMU guest booting this kernel (as for `test
        /// --kernel`): a functional check only, emulated timing means nothing.
        #[arg(long, value_name = "VERSION|PATH")]
        kernel: Option<String>,
    },
    /// cargo fmt --check and clippy with warnings denied (the workspace [lints]).
    Lint,
    /// snoop under churn for a while, with a checker of every delivered packet
    /// (joins, leaves, ports added and removed, restarts, report storms).
    Soak {
        /// How long (CI runs a short one).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Repeats a run's sequence of events.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Run a shell command in a QEMU guest booting another kernel, with this
    /// machine's root (read-only) as its root: for looking into a kernel.
    Vm {
        /// As for `test --kernel`.
        #[arg(long, value_name = "VERSION|PATH")]
        kernel: String,
        /// The command, e.g. `ip -d link show`.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Build the Debian package (target/debian/snoop_VERSION_ARCH.deb): the
    /// binary, the systemd unit, the example configuration, man pages and
    /// shell completions.
    Package {
        /// Then install it on this machine, run the installed binary's demo
        /// and purge it, checking nothing is left (needs root).
        #[arg(long)]
        install_test: bool,
    },
    /// Run the unit and integration tests (needs root: the tests build netns labs).
    Test {
        /// Run the integration tests in a QEMU guest booting this kernel
        /// instead: a Debian series (6.1: Debian 12's own; 6.12) installed
        /// from the package registry when missing, or the path of a vmlinuz.
        #[arg(long, value_name = "VERSION|PATH")]
        kernel: Option<String>,
        /// Only the smoke set: core pruning, leave, querier, restart, clean
        /// exit, kernel settings and the eBPF verdicts (what CI runs in the VM).
        #[arg(long)]
        smoke: bool,
        /// Passed to the test binaries, e.g. a test name filter.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // bpf-linker lands in cargo's bin directory, and ip/tc/bridge in sbin
    // directories: a minimal PATH may lack either.
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for dir in [cargo_home_bin(""), "/usr/sbin".into(), "/sbin".into()] {
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    std::env::set_var("PATH", std::env::join_paths(dirs)?);
    match cli.task {
        Task::Setup => setup(),
        Task::Lint => {
            setup()?;
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            // The shipped alert rules: valid, and firing when they should.
            if bpf_toolchain::which("promtool").is_none() {
                Apt::default().install(&["prometheus"])?;
            }
            let dist = workspace().join("dist");
            run(Command::new("promtool").args(["check", "rules", "prometheus-alerts.yml"]).current_dir(&dist))?;
            run(Command::new("promtool").args(["test", "rules", "prometheus-alerts.test.yml"]).current_dir(&dist))?;
            // Clippy cannot build for the BPF target here (its compiler is not
            // the one with the prebuilt core): the eBPF crate gets rustc's
            // lints, denied.
            let toolchain = bpf_toolchain::find().context("no BPF toolchain after setup")?;
            let target_dir = workspace().join("target/ebpf-lint");
            let mut build =
                bpf_toolchain::build_command(&toolchain, cargo_bin().as_os_str(), &workspace(), &target_dir);
            run(build.env("RUSTFLAGS", "-D warnings"))
        }
        Task::Demo => {
            setup()?;
            require_root("the demo builds network namespaces, a bridge and BPF programs")?;
            cargo(&["build", "--release", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--release", "--package", "snoop-tests", "--bin", "snoop-lab"])?;
            let target = workspace().join("target/release");
            run(Command::new(target.join("snoop-lab")).arg("demo").env("SNOOP_BIN", target.join("snoop")))
        }
        Task::Bench { quick, only, kernel } => {
            setup()?;
            require_root("the benchmarks build network namespaces, bridges and BPF programs")?;
            cargo(&["build", "--release", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--release", "--package", "snoop-tests", "--bin", "snoop-bench"])?;
            let target = workspace().join("target/release");
            let mut args: Vec<String> = Vec::new();
            if quick {
                args.push("--quick".into());
            }
            if let Some(only) = only {
                args.extend(["--only".into(), only]);
            }
            if let Some(spec) = kernel {
                let kernel = vm_kernel(&spec)?;
                println!("bench: in an emulated guest: a functional check of the benchmark; its figures mean nothing");
                let command = format!(
                    "SNOOP_BIN={} {} {}",
                    target.join("snoop").display(),
                    target.join("snoop-bench").display(),
                    args.join(" ")
                );
                let code = vm::run_command(&kernel, &workspace(), &command)?;
                if code != 0 {
                    bail!("the benchmark failed in the guest ({code})");
                }
                return Ok(());
            }
            run(Command::new(target.join("snoop-bench")).args(&args).env("SNOOP_BIN", target.join("snoop")))
        }
        Task::Soak { minutes, seed } => {
            setup()?;
            require_root("the soak builds network namespaces, bridges and BPF programs")?;
            cargo(&["build", "--release", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--release", "--package", "snoop-tests", "--bin", "snoop-soak"])?;
            let target = workspace().join("target/release");
            let mut soak = Command::new(target.join("snoop-soak"));
            soak.args(["--minutes", &minutes.to_string()]).env("SNOOP_BIN", target.join("snoop"));
            if let Some(seed) = seed {
                soak.args(["--seed", &seed.to_string()]);
            }
            run(&mut soak)
        }
        Task::Vm { kernel, command } => {
            setup()?;
            require_root("booting a guest with this machine's root")?;
            let kernel = vm_kernel(&kernel)?;
            let code = vm::run_command(&kernel, &workspace(), &command.join(" "))?;
            if code != 0 {
                bail!("the command exited with {code} in the guest");
            }
            Ok(())
        }
        Task::Package { install_test } => {
            setup()?;
            if bpf_toolchain::which("dpkg-deb").is_none() {
                Apt::default().install(&["dpkg"])?;
            }
            let deb = package::build()?;
            if install_test {
                require_root("installing the package")?;
                package::install_test(&deb)?;
            }
            Ok(())
        }
        Task::Test { kernel, smoke, mut args } => {
            setup()?;
            require_root("the integration tests build network namespaces, bridges and BPF programs")?;
            cargo(&["build", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--package", "snoop-tests", "--bin", "snoop-lab"])?;
            let snoop = workspace().join("target/debug/snoop");
            run(Command::new(workspace().join("target/debug/snoop-lab")).arg("cleanup"))?;
            if smoke {
                args.extend(SMOKE_TESTS.iter().map(|t| t.to_string()));
            }
            let mut totals = TestTotals::default();
            let result = match kernel {
                Some(spec) => test_in_vm(&spec, &snoop, &args, &mut totals),
                None if !host_filters_vlans() => {
                    // The VLAN tests need 802.1Q, which this kernel lacks: they
                    // run in a guest booting Debian 12's kernel, the rest here.
                    let vlan_args: Vec<String> = if args.is_empty() {
                        vec![VLAN_TESTS.to_owned()]
                    } else {
                        args.iter().filter(|a| a.contains(VLAN_TESTS)).cloned().collect()
                    };
                    let host_args: Vec<String> = args.iter().filter(|a| !a.contains(VLAN_TESTS)).cloned().collect();
                    let mut result = Ok(());
                    if args.is_empty() || !host_args.is_empty() {
                        let skip = ["--skip".to_owned(), VLAN_TESTS.to_owned()];
                        result = run_host_tests(&snoop, &[host_args, skip.to_vec()].concat(), &mut totals);
                    }
                    if !vlan_args.is_empty() {
                        println!("tests: this kernel has no 802.1Q; the VLAN tests run in a {VLAN_KERNEL} guest");
                        result = result.and(test_in_vm(VLAN_KERNEL, &snoop, &vlan_args, &mut totals));
                    }
                    result
                }
                None => run_host_tests(&snoop, &args, &mut totals),
            };
            println!("tests: {} passed, {} failed", totals.passed, totals.failed);
            result
        }
    }
}

/// The name filter of the tests that need a VLAN-aware bridge (802.1Q).
const VLAN_TESTS: &str = "vlan_";
/// The kernel they boot where this one lacks 802.1Q: Debian 12's own.
const VLAN_KERNEL: &str = "6.1";

/// The integration tests on this machine's kernel.
fn run_host_tests(snoop: &Path, args: &[String], totals: &mut TestTotals) -> Result<()> {
    // One test at a time: the labs' timers are short, and two cores are
    // not enough to run several labs side by side without jitter.
    let mut test = Command::new(cargo_bin());
    test.current_dir(workspace())
        .args(["test", "--workspace", "--exclude", "snoop-ebpf", "--", "--test-threads", "1"])
        .args(args)
        .env("SNOOP_BIN", snoop);
    run_tests(&mut test, totals)
}

/// Whether this kernel makes VLAN-filtering bridges (in a throwaway
/// network namespace).
fn host_filters_vlans() -> bool {
    const PROBE: &str = "snoop-vlan-probe";
    let ip = |args: &[&str]| Command::new("ip").args(args).output().is_ok_and(|o| o.status.success());
    let _ = ip(&["netns", "del", PROBE]);
    if !ip(&["netns", "add", PROBE]) {
        return false;
    }
    let filters = ip(&["-n", PROBE, "link", "add", "probe0", "type", "bridge", "vlan_filtering", "1"]);
    let _ = ip(&["netns", "del", PROBE]);
    filters
}

/// The tests CI also runs in a VM on Debian 12's kernel (name filters).
const SMOKE_TESTS: &[&str] = &[
    "only_members_receive_the_group",
    "v3_to_include_empty_stops_traffic_within_last_member_time",
    "snoops_queries_keep_members_alive_without_a_router",
    "controller_restart_keeps_members_receiving",
    "clean_exit_leaves_nothing_behind",
    "kernel_snooping_is_off_while_snoop_runs_and_restored_as_it_was",
    // A real router on the other side; reports in the largest ring records.
    "igmpproxy_behind_a_trusted_port",
    "a_jumbo_report_loses_no_membership",
    // Every eBPF verdict test (the programs as this kernel's verifier and
    // helpers treat them).
    "egress_",
    "ingress_",
    "control_frames_over_a_ports_rate",
    "ipv6_group_traffic_and_mld",
    "source_specific_members_get_only_the_sources_they_want",
    // MLD end to end: the IPv6 header walk as this kernel's verifier sees it.
    "only_mldv2_members_get_an_ipv6_group",
    // The operator's filters beside clsact filters (no TCX before 6.6).
    "hosts_behind_",
];

/// The kernel for `spec`, with what booting it in QEMU needs installed.
fn vm_kernel(spec: &str) -> Result<vm::Kernel> {
    let mut apt = Apt::default();
    for (program, package) in [
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("busybox", "busybox-static"),
        ("cpio", "cpio"),
        ("modprobe", "kmod"),
    ] {
        if bpf_toolchain::which(program).is_none() {
            apt.install(&[package])?;
        }
    }
    vm::resolve(spec, &mut apt)
}

/// Builds the integration test binaries and runs them in a guest booting `spec`.
fn test_in_vm(spec: &str, snoop: &Path, args: &[String], totals: &mut TestTotals) -> Result<()> {
    let kernel = vm_kernel(spec)?;
    let out = Command::new(cargo_bin())
        .current_dir(workspace())
        .args(["test", "--no-run", "--package", "snoop-tests", "--tests", "--message-format=json"])
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    // Integration test binaries: compiler artifacts of kind "test" with an executable.
    let binaries: Vec<PathBuf> = String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["kind"][0] == "test")
        .filter_map(|m| m["executable"].as_str().map(PathBuf::from))
        .collect();
    if binaries.is_empty() {
        bail!("no integration test binaries were built");
    }
    vm::run_tests(&kernel, &workspace(), snoop, &binaries, args, totals)
}

/// Installs, where missing: a compiler with a BPF core, bpf-linker, iproute2,
/// nftables (the labs count and sink group traffic at hosts with it),
/// igmpproxy and FRRouting (multicast routers the tests put behind a port),
/// ping (IPv6 neighbour discovery through snoop, in the tests) and
/// systemd's journald (where snoop logs under systemd).
fn setup() -> Result<()> {
    let mut apt = Apt::default();
    if bpf_toolchain::find().is_none() {
        println!("setup: no compiler for the BPF target; installing Debian's rustc-web with its prebuilt BPF core");
        apt.install(&["rustc-web", "libstd-rust-web-dev-bpf"])?;
        if bpf_toolchain::find().is_none() {
            bail!("rustc-web is installed but {} still has no BPF core", bpf_toolchain::DEBIAN_RUSTC);
        }
    }
    match bpf_toolchain::find() {
        Some(bpf_toolchain::BpfToolchain::PrebuiltCore { rustc }) => {
            println!("setup: eBPF builds with {} and its prebuilt BPF core", rustc.display())
        }
        Some(bpf_toolchain::BpfToolchain::NightlyBuildStd) => {
            println!("setup: eBPF builds with nightly and -Z build-std=core")
        }
        None => unreachable!("checked above"),
    }
    if bpf_toolchain::which("bpf-linker").is_none() {
        println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (builds against LLVM 22, about a minute)");
        apt.install(&["llvm-22-dev", "libpolly-22-dev", "zlib1g-dev", "libzstd-dev"])?;
        let path = format!("{LLVM_BIN}:{}", std::env::var("PATH").unwrap_or_default());
        run(Command::new(cargo_bin())
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("PATH", path))?;
    }
    if bpf_toolchain::which("ip").is_none() || bpf_toolchain::which("tc").is_none() {
        apt.install(&["iproute2"])?;
    }
    if bpf_toolchain::which("nft").is_none() {
        apt.install(&["nftables"])?;
    }
    if bpf_toolchain::which("igmpproxy").is_none() {
        // A real multicast router on the other side of snoop, in the tests.
        apt.install(&["igmpproxy"])?;
    }
    if !Path::new("/usr/lib/frr/pimd").exists() {
        // FRRouting's pimd: a PIM-SM router and IGMP querier, in the tests.
        apt.install(&["frr"])?;
    }
    if bpf_toolchain::which("ping").is_none() {
        apt.install(&["iputils-ping"])?;
    }
    if !Path::new("/lib/systemd/systemd-journald").exists() || bpf_toolchain::which("journalctl").is_none() {
        // A journald of the test's own hears snoop log as a unit would.
        apt.install(&["systemd"])?;
    }
    Ok(())
}

/// apt-get, with one `update` before the first install.
#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    fn install(&mut self, packages: &[&str]) -> Result<()> {
        if bpf_toolchain::which("apt-get").is_none() {
            bail!(
                "missing packages {packages:?} and no apt-get: install a nightly Rust toolchain \
                 with rust-src and `cargo install bpf-linker` instead"
            );
        }
        require_root(&format!("installing {}", packages.join(" ")))?;
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-q"]))?;
            self.updated = true;
        }
        run(Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"))
    }
}

fn require_root(why: &str) -> Result<()> {
    let uid = String::from_utf8(Command::new("id").arg("-u").output()?.stdout)?;
    if uid.trim() != "0" {
        bail!("{why} needs root: run this command as root (e.g. with sudo -E)");
    }
    Ok(())
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is in the workspace").to_path_buf()
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO").map_or_else(|| "cargo".into(), PathBuf::from)
}

fn cargo_home_bin(program: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo"));
    home.join("bin").join(program)
}

fn cargo(args: &[&str]) -> Result<()> {
    run(Command::new(cargo_bin()).current_dir(workspace()).args(args))
}

/// Passed and failed tests over every test binary (cargo prints one result line each).
#[derive(Default)]
struct TestTotals {
    passed: u64,
    failed: u64,
}

impl TestTotals {
    /// Counts a libtest "test result: ..." line; other lines are ignored.
    fn add_line(&mut self, line: &str) {
        let Some(result) = line.strip_prefix("test result: ") else { return };
        for part in result.split([';', '.']) {
            let mut words = part.split_whitespace();
            match (words.next().and_then(|n| n.parse::<u64>().ok()), words.next()) {
                (Some(n), Some("passed")) => self.passed += n,
                (Some(n), Some("failed")) => self.failed += n,
                _ => {}
            }
        }
    }
}

/// Runs cargo test, passing its output through and counting the results.
fn run_tests(cmd: &mut Command, totals: &mut TestTotals) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("running {cmd:?}"))?;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        totals.add_line(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("tests failed ({status})");
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}
