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
//!
//! snoop is a guest on the port's hooks: its programs go first (a TCX link
//! before all others; a clsact filter ahead of the filters there) and hand
//! on every frame they do not drop, and [`Attachments::others`] tells the
//! controller what else runs there, so that redirect never copies a frame
//! past the operator's own programs and filters.
use std::{
    collections::BTreeMap,
    ffi::{CStr, CString},
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    programs::{
        links::{FdLink, LinkError, LinkOrder, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
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

/// What else runs on a port's tc hooks beside snoop's own programs: the
/// operator's filters, another program's TCX links.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct OtherFilters {
    /// Programs and filters a frame entering the port meets after snoop's
    /// program: a copy redirect made would skip them, so the port's frames
    /// take the bridge path.
    pub ingress_after: u32,
    /// Programs and filters on its egress hook: a copy handed straight to
    /// the port's veth peer would skip them, so its copies go through its
    /// transmit path.
    pub egress: u32,
}

/// The programs' attachments to the bridge's ports.
pub(super) struct Attachments {
    mode: AttachMode,
    /// Classic filters: snoop's own on kernels without TCX, and everyone's,
    /// to see what else runs on a port.
    tc: Tc,
    pin_dir: PathBuf,
    /// The bridge's ifindex: names this snoop's clsact filters.
    owner: u32,
    ports: BTreeMap<u32, PortLinks>,
}

impl Attachments {
    pub fn new(mode: AttachMode, pin_dir: PathBuf, owner: u32) -> Result<Self> {
        let tc = Tc::open().map_err(|e| Error::Kernel(format!("opening rtnetlink: {e}")))?;
        Ok(Self { mode, tc, pin_dir, owner, ports: BTreeMap::new() })
    }

    pub fn mode(&self) -> AttachMode {
        self.mode
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
        // First: every frame meets snoop's program before the others, which
        // it hands each one on to.
        let first = TcAttachOptions::TcxOrder(LinkOrder::first());
        let id = program.attach_with_options(&name, direction, first).map_err(attach_error)?;
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
        let tc = &mut self.tc;
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
            if self.mode == AttachMode::Clsact {
                let _ = self.tc.remove_clsact_if_empty(ifindex);
            }
        }
    }

    fn remove(&mut self, link: Link) {
        match link {
            // Closing the last reference to an unpinned link detaches it.
            Link::Tcx(link) => drop(link.unpin()),
            Link::Filter(filter) => {
                if let Err(error) = self.tc.detach(filter) {
                    warn!("removing a filter from interface {}: {error}", filter.ifindex);
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
                let tc = &mut self.tc;
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

    /// What else runs on port `ifindex`'s hooks (`programs`: the ids of
    /// snoop's loaded ingress and egress programs, as TCX lists them).
    pub fn others(&mut self, ifindex: u32, programs: [u32; 2]) -> std::io::Result<OtherFilters> {
        let Some(links) = self.ports.get(&ifindex) else { return Ok(OtherFilters::default()) };
        // Classic filters of anyone but this snoop.
        let mut classic = [0u32; 2];
        for (count, hook, ours) in [(0, Hook::Ingress, &links.ingress), (1, Hook::Egress, &links.egress)] {
            let ours = match ours {
                Link::Filter(filter) => Some((filter.priority, filter.handle)),
                Link::Tcx(_) => None,
            };
            let mut after_ours = ours.is_none();
            for (priority, handle) in self.tc.all_filters(ifindex, hook)? {
                if Some((priority, handle)) == ours {
                    after_ours = true;
                } else if hook == Hook::Egress || after_ours {
                    classic[count] += 1;
                }
            }
        }
        if self.mode == AttachMode::Clsact {
            return Ok(OtherFilters { ingress_after: classic[0], egress: classic[1] });
        }
        // TCX links run in their listed order, all before classic filters.
        let ingress = tcx_programs(ifindex, BPF_TCX_INGRESS)?;
        let after = ingress.iter().position(|id| *id == programs[0]).map_or(ingress.len(), |at| ingress.len() - at - 1);
        let egress = tcx_programs(ifindex, BPF_TCX_EGRESS)?.iter().filter(|id| **id != programs[1]).count();
        Ok(OtherFilters { ingress_after: classic[0] + after as u32, egress: classic[1] + egress as u32 })
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

const BPF_PROG_QUERY: libc::c_long = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
/// More TCX programs than one hook of a port plausibly has: the list is cut there.
const MAX_TCX_PROGRAMS: usize = 64;

/// The ids of the programs on one TCX hook of an interface, in the order
/// they run (BPF_PROG_QUERY by ifindex).
fn tcx_programs(ifindex: u32, attach_type: u32) -> std::io::Result<Vec<u32>> {
    // union bpf_attr's query: target_ifindex, attach_type, query_flags,
    // attach_flags, prog_ids (u64), count, a hole, then fields left 0.
    #[repr(C)]
    struct Query {
        target_ifindex: u32,
        attach_type: u32,
        query_flags: u32,
        attach_flags: u32,
        prog_ids: u64,
        count: u32,
        _hole: u32,
        rest: [u64; 4],
    }
    let mut ids = [0u32; MAX_TCX_PROGRAMS];
    let mut query = Query {
        target_ifindex: ifindex,
        attach_type,
        query_flags: 0,
        attach_flags: 0,
        prog_ids: ids.as_mut_ptr() as u64,
        count: MAX_TCX_PROGRAMS as u32,
        _hole: 0,
        rest: [0; 4],
    };
    // SAFETY: a bpf(2) call with a query attribute the kernel reads and
    // writes within its size, and an id buffer of `count` entries.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut query as *mut Query, size_of::<Query>()) };
    if rc != 0 {
        let error = std::io::Error::last_os_error();
        // ENOSPC: more than the buffer holds (it is filled).
        if error.raw_os_error() != Some(libc::ENOSPC) {
            return Err(error);
        }
    }
    Ok(ids[..(query.count as usize).min(MAX_TCX_PROGRAMS)].to_vec())
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
