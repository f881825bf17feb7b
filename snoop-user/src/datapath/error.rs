//! What can go wrong in the data path, as callers decide on it: a full map
//! keeps a group flooded, a port that cannot be attached is retried, a pinned
//! state of another layout ends the start with the way out.
use std::{io, path::PathBuf};

use aya::{maps::MapError, programs::ProgramError, sys::SyscallError};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("mounting bpffs at /sys/fs/bpf (is this kernel built with BPF syscall support?)")]
    Bpffs(#[source] io::Error),
    #[error("{what} {}", path.display())]
    Pins { what: &'static str, path: PathBuf, source: io::Error },
    /// A component of the pin directory's path another user could swap.
    #[error("refusing the pin directory: {} {why}", path.display())]
    UnsafePinDir { path: PathBuf, why: String },
    #[error(
        "the memberships kept in {} are from a snoop with another map layout ({map}: key {} B, value {} B, {} \
         entries; this snoop: {} B, {} B, {}). Remove them with `snoop cleanup --bridge BRIDGE` (hosts report \
         their groups again at the next query) and start snoop again",
        pin_dir.display(), pinned[0], pinned[1], pinned[2], ours[0], ours[1], ours[2]
    )]
    LayoutMismatch { pin_dir: PathBuf, map: &'static str, pinned: [u32; 3], ours: [u32; 3] },
    #[error(
        "loading the eBPF programs (pinned state in {}; if it is from another snoop version, remove that directory)",
        pin_dir.display()
    )]
    Load { pin_dir: PathBuf, source: Box<aya::EbpfError> },
    #[error("{what} {program}")]
    Program { what: &'static str, program: &'static str, source: ProgramError },
    /// The kernel refused a program: its verifier's last lines, not a page of them.
    #[error(
        "this kernel's verifier refused {program} ({error}); its last words: {last_lines} (the whole log: \
         RUST_LOG=debug)"
    )]
    Verifier { program: &'static str, error: io::Error, last_lines: String },
    /// This kernel cannot run snoop, or a probe of it failed.
    #[error("{0}")]
    Kernel(String),
    /// The port vanished (or was renamed) while snoop attached to it.
    #[error("interface {ifindex} is gone")]
    PortGone { ifindex: u32 },
    #[error("attaching a TC filter to interface {ifindex}")]
    Filter { ifindex: u32, source: io::Error },
    #[error("{0} is missing from the eBPF object, or of another kind")]
    Object(&'static str),
    /// No room for one more entry (the kernel said E2BIG or ENOMEM).
    #[error("{map} is full")]
    MapFull { map: &'static str },
    #[error("{op} {map}")]
    Map { op: &'static str, map: &'static str, source: MapError },
    #[error("attaching to {port}")]
    Attach { port: String, source: ProgramError },
    #[error("{what} {}", path.display())]
    Link { what: &'static str, path: PathBuf, source: Box<dyn std::error::Error + Send + Sync> },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A map write failed: full, or something else.
    pub(crate) fn map(op: &'static str, map: &'static str, source: MapError) -> Self {
        let full = matches!(
            &source,
            MapError::SyscallError(SyscallError { io_error, .. })
                if matches!(io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOMEM))
        );
        if full {
            Error::MapFull { map }
        } else {
            Error::Map { op, map, source }
        }
    }
}
