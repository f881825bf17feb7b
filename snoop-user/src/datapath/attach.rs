//! Attaching the programs to a port, by one of two mechanisms, chosen once
//! for the running kernel:
//!
//! - TCX links (Linux 6.6 and later), pinned under `links/` in the pin
//!   directory so they outlive the process; a restart updates them in place.
//! - TC clsact filters over rtnetlink ([`super::tc`]) on older kernels; they
//!   outlive the process by themselves, and a restart replaces them in place.
//!
//! Either way a restart never leaves a frame without a program, and a port is
//! named by its ifindex: the TCX path (whose kernel interface aya reaches by
//! name) resolves the name at attach time and checks it did not move.
use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        tc::SchedClassifierLink,
        SchedClassifier, TcAttachType,
    },
    util::KernelVersion,
};
use log::warn;
use snoop_common::{PROG_EGRESS, PROG_INGRESS};

use super::{
    tc::{self, Hook, Tc},
    Error, Result,
};

/// How programs are attached on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// bpf_link-based TC attachment (Linux 6.6+).
    Tcx,
    /// Classic cls_bpf filters on a clsact qdisc (every kernel snoop supports).
    Clsact,
}

/// The oldest kernel snoop runs on: its programs use bpf_ktime_get_coarse_ns
/// (5.11), ring buffers (5.8) and bpf_redirect_peer (5.10), and are tested
/// on 6.1 (Debian 12), 6.12 and 6.18.
pub const MIN_KERNEL: (u32, u32) = (5, 11);

impl AttachMode {
    /// TCX where the kernel has it, else clsact; a kernel too old for the
    /// programs is a clear error here, before any verifier output.
    pub fn for_this_kernel() -> Result<(Self, String)> {
        let code =
            KernelVersion::current().map_err(|e| Error::Kernel(format!("reading the kernel version: {e}")))?.code();
        // code() is major << 16 | minor << 8 | patch.
        let (major, minor) = (code >> 16, (code >> 8) & 0xff);
        let kernel = format!("Linux {major}.{minor}");
        if (major, minor) < MIN_KERNEL {
            return Err(Error::Kernel(format!(
                "{kernel} is too old: snoop needs Linux {}.{} or newer (BPF ring buffers, bpf_redirect_peer, \
                 bpf_ktime_get_coarse_ns)",
                MIN_KERNEL.0, MIN_KERNEL.1
            )));
        }
        Ok(if (major, minor) >= (6, 6) {
            (AttachMode::Tcx, format!("attaching as TCX links ({kernel})"))
        } else {
            (AttachMode::Clsact, format!("attaching as TC clsact filters ({kernel} has no TCX links, new in 6.6)"))
        })
    }
}

enum Link {
    Tcx(PinnedLink),
    Filter(tc::Filter),
}

struct PortLinks {
    ingress: Link,
    egress: Link,
}

/// The programs' attachments to the bridge's ports.
pub(super) struct Attachments {
    mode: AttachMode,
    tc: Option<Tc>,
    pin_dir: PathBuf,
    /// The bridge's ifindex: names this snoop's clsact filters.
    owner: u32,
    ports: BTreeMap<u32, PortLinks>,
}

impl Attachments {
    pub fn new(mode: AttachMode, pin_dir: PathBuf, owner: u32) -> Result<Self> {
        let tc = match mode {
            AttachMode::Tcx => None,
            AttachMode::Clsact => Some(Tc::open().map_err(|e| Error::Kernel(format!("opening rtnetlink: {e}")))?),
        };
        Ok(Self { mode, tc, pin_dir, owner, ports: BTreeMap::new() })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn contains(&self, ifindex: u32) -> bool {
        self.ports.contains_key(&ifindex)
    }

    /// Attaches both programs to port `ifindex`, adopting (and updating in
    /// place) what a previous snoop left there.
    pub fn attach(&mut self, ingress: &mut SchedClassifier, egress: &mut SchedClassifier, ifindex: u32) -> Result<()> {
        if self.ports.contains_key(&ifindex) {
            return Ok(());
        }
        let links = match self.mode {
            AttachMode::Tcx => {
                let ingress = self.attach_tcx(ingress, ifindex, TcAttachType::Ingress)?;
                let egress = match self.attach_tcx(egress, ifindex, TcAttachType::Egress) {
                    Ok(link) => link,
                    Err(error) => {
                        let _ = ingress.unpin();
                        return Err(error);
                    }
                };
                PortLinks { ingress: Link::Tcx(ingress), egress: Link::Tcx(egress) }
            }
            AttachMode::Clsact => {
                let ingress = self.attach_filter(ingress, PROG_INGRESS, ifindex, Hook::Ingress)?;
                let egress = match self.attach_filter(egress, PROG_EGRESS, ifindex, Hook::Egress) {
                    Ok(filter) => filter,
                    Err(error) => {
                        self.remove(Link::Filter(ingress));
                        return Err(error);
                    }
                };
                PortLinks { ingress: Link::Filter(ingress), egress: Link::Filter(egress) }
            }
        };
        self.ports.insert(ifindex, links);
        Ok(())
    }

    fn attach_tcx(&self, program: &mut SchedClassifier, ifindex: u32, direction: TcAttachType) -> Result<PinnedLink> {
        let suffix = if direction == TcAttachType::Ingress { "ingress" } else { "egress" };
        let pin = self.pin_dir.join("links").join(format!("{ifindex}-{suffix}"));
        let link_error =
            |what, source: Box<dyn std::error::Error + Send + Sync>| Error::Link { what, path: pin.clone(), source };
        if let Ok(old) = PinnedLink::from_pin(&pin) {
            let old = SchedClassifierLink::try_from(FdLink::from(old))
                .map_err(|e| link_error("not a TCX link:", e.into()))?;
            let port = ifindex.to_string();
            let id = program.attach_to_link(old).map_err(|source| Error::Attach { port: port.clone(), source })?;
            // The pin already names this link; keep a handle to it.
            drop(program.take_link(id).map_err(|source| Error::Attach { port, source })?);
            return PinnedLink::from_pin(&pin).map_err(|e| link_error("reopening", e.into()));
        }
        // aya attaches TCX by name: take the port's name now, and make sure
        // it still names the same port once attached (a container renaming
        // its interfaces must never get another port's program).
        let name = interface_name(ifindex).ok_or(Error::PortGone { ifindex })?;
        let attach_error = |source| Error::Attach { port: name.clone(), source };
        let id = program.attach(&name, direction).map_err(attach_error)?;
        let link: FdLink = program
            .take_link(id)
            .map_err(attach_error)?
            .try_into()
            .map_err(|e: LinkError| link_error("not a TCX link:", e.into()))?;
        if interface_index(&name) != Some(ifindex) {
            drop(link); // detaches: the only reference
            return Err(Error::PortGone { ifindex });
        }
        link.pin(&pin).map_err(|e| link_error("pinning", e.into()))
    }

    fn attach_filter(
        &mut self,
        program: &mut SchedClassifier,
        program_name: &'static str,
        ifindex: u32,
        hook: Hook,
    ) -> Result<tc::Filter> {
        let name = tc::filter_name(self.owner, program_name);
        let tc = self.tc.as_mut().expect("clsact mode has a TC socket");
        let gone_or = |error: std::io::Error| {
            if error.raw_os_error() == Some(libc::ENODEV) {
                Error::PortGone { ifindex }
            } else {
                Error::Filter { ifindex, source: error }
            }
        };
        tc.add_clsact(ifindex).map_err(gone_or)?;
        let mine: Vec<tc::Filter> = tc
            .filters(ifindex, hook)
            .map_err(gone_or)?
            .into_iter()
            .filter(|(_, n)| *n == name)
            .map(|(f, _)| f)
            .collect();
        // More than one of ours (a crash between attach and read-back): keep the first.
        for extra in mine.iter().skip(1) {
            let _ = tc.detach(*extra);
        }
        let fd = program.fd().map_err(|source| Error::Attach { port: ifindex.to_string(), source })?;
        tc.attach(ifindex, hook, fd.as_fd().as_raw_fd(), &name, mine.first().copied()).map_err(gone_or)
    }

    /// Detaches from a port (a port already gone needs nothing).
    pub fn detach(&mut self, ifindex: u32) {
        if let Some(links) = self.ports.remove(&ifindex) {
            self.remove(links.ingress);
            self.remove(links.egress);
            if let Some(tc) = self.tc.as_mut() {
                let _ = tc.remove_clsact_if_empty(ifindex);
            }
        }
    }

    fn remove(&mut self, link: Link) {
        match link {
            // Closing the last reference to an unpinned link detaches it.
            Link::Tcx(link) => drop(link.unpin()),
            Link::Filter(filter) => {
                if let Some(tc) = self.tc.as_mut() {
                    if let Err(error) = tc.detach(filter) {
                        warn!("removing a filter from interface {}: {error}", filter.ifindex);
                    }
                }
            }
        }
    }

    /// Removes what a previous snoop attached to interfaces that are no
    /// longer ports (`current`): link pins, or filters named for this bridge.
    pub fn remove_stale(&mut self, current: &[u32]) -> Result<()> {
        match self.mode {
            AttachMode::Tcx => {
                let dir = self.pin_dir.join("links");
                let entries =
                    fs::read_dir(&dir).map_err(|source| Error::Pins { what: "reading", path: dir.clone(), source })?;
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let ifindex = name.to_string_lossy().split('-').next().and_then(|i| i.parse::<u32>().ok());
                    if ifindex.is_none_or(|i| !current.contains(&i)) {
                        let path = entry.path();
                        fs::remove_file(&path).map_err(|source| Error::Pins { what: "removing", path, source })?;
                    }
                }
            }
            AttachMode::Clsact => {
                let ours = [tc::filter_name(self.owner, PROG_INGRESS), tc::filter_name(self.owner, PROG_EGRESS)];
                let tc = self.tc.as_mut().expect("clsact mode has a TC socket");
                for ifindex in interface_indexes().into_iter().filter(|i| !current.contains(i)) {
                    let mut removed = false;
                    for hook in [Hook::Ingress, Hook::Egress] {
                        for (filter, name) in tc.filters(ifindex, hook).unwrap_or_default() {
                            if ours.contains(&name) {
                                let _ = tc.detach(filter);
                                removed = true;
                            }
                        }
                    }
                    if removed {
                        let _ = tc.remove_clsact_if_empty(ifindex);
                    }
                }
            }
        }
        Ok(())
    }

    /// At exit: with `keep`, everything stays attached (TCX pins stay, clsact
    /// filters outlive the process by themselves); else every attachment goes.
    pub fn release(mut self, keep: bool) {
        if keep {
            return;
        }
        let ports: Vec<u32> = self.ports.keys().copied().collect();
        for ifindex in ports {
            self.detach(ifindex);
        }
    }
}

fn interface_name(ifindex: u32) -> Option<String> {
    let mut buffer = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer holds IF_NAMESIZE bytes, as if_indextoname requires.
    let name = unsafe { libc::if_indextoname(ifindex, buffer.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into the buffer.
    Some(unsafe { CStr::from_ptr(buffer.as_ptr()) }.to_string_lossy().into_owned())
}

fn interface_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: a valid C string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Every interface of the current network namespace.
fn interface_indexes() -> Vec<u32> {
    // SAFETY: plain call; the list is freed below.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Vec::new();
    }
    let mut indexes = Vec::new();
    let mut at = list;
    // SAFETY: the list ends with an entry whose index is 0.
    unsafe {
        while (*at).if_index != 0 {
            indexes.push((*at).if_index);
            at = at.add(1);
        }
        libc::if_freenameindex(list);
    }
    indexes
}
