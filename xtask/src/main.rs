//! Project tasks: `cargo xtask setup | demo | lint | test | bench`.
//!
//! `demo` and `test` run `setup` first, so on a fresh Debian 12 machine they
//! are the only two commands a newcomer needs.
mod bpf_toolchain;

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
    },
    /// cargo fmt --check and clippy with warnings denied (the workspace [lints]).
    Lint,
    /// Run the unit and integration tests (needs root: the tests build netns labs).
    Test {
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
        Task::Bench { quick, only } => {
            setup()?;
            require_root("the benchmarks build network namespaces, bridges and BPF programs")?;
            cargo(&["build", "--release", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--release", "--package", "snoop-tests", "--bin", "snoop-bench"])?;
            let target = workspace().join("target/release");
            let mut bench = Command::new(target.join("snoop-bench"));
            bench.env("SNOOP_BIN", target.join("snoop"));
            if quick {
                bench.arg("--quick");
            }
            if let Some(only) = only {
                bench.args(["--only", &only]);
            }
            run(&mut bench)
        }
        Task::Test { args } => {
            setup()?;
            require_root("the integration tests build network namespaces, bridges and BPF programs")?;
            cargo(&["build", "--package", "snoop-user", "--bin", "snoop"])?;
            cargo(&["build", "--package", "snoop-tests", "--bin", "snoop-lab"])?;
            let snoop = workspace().join("target/debug/snoop");
            run(Command::new(workspace().join("target/debug/snoop-lab")).arg("cleanup"))?;
            // One test at a time: the labs' timers are short, and two cores are
            // not enough to run several labs side by side without jitter.
            let mut test = Command::new(cargo_bin());
            test.current_dir(workspace())
                .args(["test", "--workspace", "--exclude", "snoop-ebpf", "--", "--test-threads", "1"])
                .args(&args)
                .env("SNOOP_BIN", &snoop);
            run_tests(&mut test)
        }
    }
}

/// Installs, where missing: a compiler with a BPF core, bpf-linker, iproute2,
/// nftables (the labs count and sink group traffic at hosts with it).
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

/// Runs cargo test, passing its output through, and closes with one line
/// totalling every test binary's result (cargo prints one per binary).
fn run_tests(cmd: &mut Command) -> Result<()> {
    use std::io::{BufRead as _, BufReader};
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().with_context(|| format!("running {cmd:?}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line?;
        println!("{line}");
        if let Some(result) = line.strip_prefix("test result: ") {
            for part in result.split([';', '.']) {
                let mut words = part.split_whitespace();
                match (words.next().and_then(|n| n.parse::<u64>().ok()), words.next()) {
                    (Some(n), Some("passed")) => passed += n,
                    (Some(n), Some("failed")) => failed += n,
                    _ => {}
                }
            }
        }
    }
    let status = child.wait()?;
    println!("tests: {passed} passed, {failed} failed");
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
