//! Finding a compiler that can build the eBPF crate. Shared by `cargo xtask
//! setup` and snoop-user's build script (included there with `#[path]`).
use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

pub const BPF_TARGET: &str = "bpfel-unknown-none";
/// Debian's rustc-web compiler, whose sysroot can hold a prebuilt BPF core.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";

pub enum BpfToolchain {
    /// A rustc whose sysroot has a prebuilt `core` for the BPF target.
    PrebuiltCore { rustc: PathBuf },
    /// A rustup nightly with rust-src, for `-Z build-std=core`.
    NightlyBuildStd,
}

/// The first usable way to build for the BPF target, if any.
pub fn find() -> Option<BpfToolchain> {
    let rustc: PathBuf = env::var_os("SNOOP_BPF_RUSTC").map_or_else(|| DEBIAN_RUSTC.into(), PathBuf::from);
    if rustc.exists() && has_prebuilt_bpf_core(&rustc) {
        return Some(BpfToolchain::PrebuiltCore { rustc });
    }
    nightly_has_rust_src().then_some(BpfToolchain::NightlyBuildStd)
}

fn has_prebuilt_bpf_core(rustc: &Path) -> bool {
    let Some(sysroot) = output(Command::new(rustc).args(["--print", "sysroot"])) else {
        return false;
    };
    let lib = Path::new(sysroot.trim()).join("lib/rustlib").join(BPF_TARGET).join("lib");
    fs::read_dir(lib)
        .is_ok_and(|entries| entries.flatten().any(|e| e.file_name().to_string_lossy().starts_with("libcore-")))
}

fn nightly_has_rust_src() -> bool {
    output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))
        .is_some_and(|sysroot| Path::new(sysroot.trim()).join("lib/rustlib/src/rust/library/core").exists())
}

/// `cargo build` of the eBPF crate with `toolchain`, into `target_dir`.
pub fn build_command(
    toolchain: &BpfToolchain,
    cargo: &std::ffi::OsStr,
    workspace: &Path,
    target_dir: &Path,
) -> Command {
    let mut cmd = match toolchain {
        BpfToolchain::PrebuiltCore { rustc } => {
            let mut cmd = Command::new(cargo);
            cmd.env("RUSTC", rustc);
            cmd
        }
        BpfToolchain::NightlyBuildStd => {
            let mut cmd = Command::new("rustup");
            cmd.args(["run", "nightly", "cargo"]);
            cmd.env_remove("RUSTC");
            cmd
        }
    };
    cmd.current_dir(workspace)
        .args(["build", "--release", "--package", "snoop-ebpf", "--target", BPF_TARGET])
        .arg("--target-dir")
        .arg(target_dir)
        // aya-ebpf uses #![feature]; the prebuilt core is a stable compiler's.
        .env("RUSTC_BOOTSTRAP", "1");
    if matches!(toolchain, BpfToolchain::NightlyBuildStd) {
        cmd.args(["-Z", "build-std=core"]);
    }
    // Settings of an outer (host) build must not leak into the BPF build.
    for var in [
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// A program on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?).map(|dir| dir.join(program)).find(|path| path.is_file())
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}
