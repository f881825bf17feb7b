//! Builds the eBPF programs (snoop-ebpf) for bpfel-unknown-none so the `snoop`
//! binary can embed them.
//!
//! Two ways to get a BPF `core` library are supported, tried in this order:
//! 1. a prebuilt one, as Debian's `libstd-rust-web-dev-bpf` ships for its
//!    `rustc-web` compiler (/usr/bin/rustc): no `-Z build-std` needed;
//! 2. a nightly toolchain with `rust-src`: the usual `-Z build-std=core`.
//!
//! `cargo xtask setup` installs the first on Debian.
use std::{env, fs, path::PathBuf};

#[path = "../xtask/src/bpf_toolchain.rs"]
mod bpf_toolchain;

use bpf_toolchain::{which, BPF_TARGET as TARGET};

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    for watched in ["snoop-ebpf/src", "snoop-ebpf/Cargo.toml", "snoop-common/src", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(watched).display());
    }
    println!("cargo:rerun-if-env-changed=SNOOP_BPF_RUSTC");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").unwrap());
    let target_dir = out_dir.join("ebpf-target");

    let toolchain = bpf_toolchain::find().unwrap_or_else(|| {
        panic!(
            "\n\nsnoop: cannot build the eBPF programs: no rustc with a prebuilt core for \
             bpfel-unknown-none (Debian: /usr/bin/rustc from rustc-web plus \
             libstd-rust-web-dev-bpf) and no nightly toolchain with rust-src.\n\
             Run `cargo xtask setup` (installs Debian's rustc-web, libstd-rust-web-dev-bpf and \
             bpf-linker), or install a nightly toolchain with rust-src \
             (`rustup toolchain install nightly --component rust-src`) and \
             `cargo install bpf-linker`.\n"
        )
    });
    if which("bpf-linker").is_none() {
        panic!(
            "\n\nsnoop: bpf-linker is not on PATH. Run `cargo xtask setup`, or \
             `cargo install bpf-linker` (with LLVM's bin directory on PATH).\n"
        );
    }

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = bpf_toolchain::build_command(&toolchain, &cargo, &workspace, &target_dir);
    let status = cmd.status().expect("running cargo for the eBPF build");
    assert!(status.success(), "building snoop-ebpf failed ({status})");

    let object = target_dir.join(TARGET).join("release").join("snoop");
    fs::copy(&object, out_dir.join("snoop.bpf.o")).unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
