//! Network namespaces, as `snoop --netns NAME` uses them.
use std::{fs, io, os::fd::AsRawFd as _};

use anyhow::{Context as _, Result};

/// Enters `netns` (a name from `ip netns list`) on the calling thread, for a
/// process about to do all its work there. Unlike `ip netns exec`, this keeps
/// the host's /sys, so /sys/fs/bpf and the pinned state stay visible.
pub fn enter(netns: &str) -> Result<()> {
    let path = format!("/run/netns/{netns}");
    let ns = fs::File::open(&path).with_context(|| format!("network namespace {netns} not found ({path})"))?;
    // SAFETY: valid namespace fd.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error()).with_context(|| format!("entering network namespace {netns}"));
    }
    Ok(())
}

/// Names the network namespace in pin paths: the `--netns` name, `host` for
/// the initial namespace, else `netns-INODE`.
pub fn label(netns: Option<&str>) -> String {
    if let Some(name) = netns {
        return name.to_owned();
    }
    let inode = |path: &str| fs::metadata(path).ok().map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    // (PID 1's namespace unreadable, as in a sandboxed unit: the host's.)
    match (inode("/proc/self/ns/net"), inode("/proc/1/ns/net")) {
        (Some(own), Some(init)) if own != init => format!("netns-{own}"),
        _ => "host".into(),
    }
}
