//! What an operator puts on a port's tc hooks beside snoop: a program that
//! drops every frame, attached as a classic cls_bpf filter (iproute2's
//! `tc filter ... bpf da object-pinned`) or as a TCX link placed before or
//! after the programs already there. Tests use it to check snoop leaves the
//! operator's filters in force. This kernel has no gact or matchall, so
//! the program is two instructions loaded here (no compiler needed).
use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use aya::programs::{
    links::{FdLink, LinkOrder},
    tc::TcAttachOptions,
    SchedClassifier, TcAttachType,
};

/// Where labs pin their operators' programs and links, one directory each.
pub const PIN_ROOT: &str = "/sys/fs/bpf/snoop-lab";

/// Which hook of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn word(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }
}

/// How the operator's filter is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// A classic filter on a clsact qdisc, with tc's default priority.
    Classic,
    /// A TCX link before every program on the hook.
    TcxFirst,
    /// A TCX link after every program on the hook (tc's and aya's default).
    TcxLast,
}

/// Loads the drop program (`r0 = TC_ACT_SHOT; exit`) and pins it at `path`.
pub fn pin_drop_program(path: &Path) -> Result<()> {
    // struct bpf_insn: code, registers, offset, immediate (little-endian).
    let instructions: [u64; 2] = [0x0000_0002_0000_00b7, 0x0000_0000_0000_0095];
    let license = CString::new("GPL")?;
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns,
    // license, then fields left 0 (log, version, flags, name, ...).
    let mut load = [0u8; 128];
    load[0..4].copy_from_slice(&3u32.to_ne_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    load[4..8].copy_from_slice(&2u32.to_ne_bytes());
    load[8..16].copy_from_slice(&(instructions.as_ptr() as u64).to_ne_bytes());
    load[16..24].copy_from_slice(&(license.as_ptr() as u64).to_ne_bytes());
    let program = bpf_object(BPF_PROG_LOAD, &mut load).context("loading the drop program")?;
    pin_object(&program, path)
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_OBJ_PIN: libc::c_long = 6;

/// Pins a BPF object (map, program, link) at `path`.
pub(crate) fn pin_object(object: &OwnedFd, path: &Path) -> Result<()> {
    let path_c = CString::new(path.as_os_str().as_encoded_bytes())?;
    // union bpf_attr for BPF_OBJ_PIN: pathname pointer, then the fd.
    let mut pin = [0u8; 16];
    pin[0..8].copy_from_slice(&(path_c.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(object.as_raw_fd() as u32).to_ne_bytes());
    bpf(BPF_OBJ_PIN, &mut pin).with_context(|| format!("pinning {}", path.display()))?;
    Ok(())
}

/// Makes a BPF hash map (BPF_F_NO_PREALLOC, as snoop's are).
pub(crate) fn hash_map(key_size: u32, value_size: u32, max_entries: u32) -> Result<OwnedFd> {
    const BPF_MAP_TYPE_HASH: u32 = 1;
    const BPF_F_NO_PREALLOC: u32 = 1;
    // union bpf_attr for BPF_MAP_CREATE: type, key size, value size, entries, flags.
    let mut create = [0u8; 128];
    for (i, value) in [BPF_MAP_TYPE_HASH, key_size, value_size, max_entries, BPF_F_NO_PREALLOC].iter().enumerate() {
        create[i * 4..i * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    }
    bpf_object(BPF_MAP_CREATE, &mut create).context("BPF_MAP_CREATE")
}

/// bpf(2) with an attribute buffer.
fn bpf(command: libc::c_long, attr: &mut [u8]) -> io::Result<libc::c_long> {
    // SAFETY: a bpf(2) call whose attribute buffer is as long as its size
    // says; pointers in it outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, command, attr.as_mut_ptr(), attr.len()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// bpf(2) for a command that makes an object: its new fd.
fn bpf_object(command: libc::c_long, attr: &mut [u8]) -> io::Result<OwnedFd> {
    let fd = bpf(command, attr)?;
    // SAFETY: a fresh fd the kernel returned, owned here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Attaches the program pinned at `program` to `port`'s `hook` as `filter`,
/// in the current network namespace. A TCX link is pinned at `link` so it
/// outlives this call (removing the pin, or the port, detaches it).
pub fn attach(program: &Path, port: &str, hook: Hook, filter: Filter, link: &Path) -> Result<()> {
    if filter == Filter::Classic {
        let program = program.to_str().context("a pin path")?;
        crate::lab::run("tc", &["qdisc", "replace", "dev", port, "clsact"])?;
        crate::lab::run("tc", &["filter", "add", "dev", port, hook.word(), "bpf", "da", "object-pinned", program])?;
        return Ok(());
    }
    let mut classifier = SchedClassifier::from_pin(program).context("opening the drop program")?;
    let order = if filter == Filter::TcxFirst { LinkOrder::first() } else { LinkOrder::last() };
    let attach_type = if hook == Hook::Ingress { TcAttachType::Ingress } else { TcAttachType::Egress };
    let id = classifier.attach_with_options(port, attach_type, TcAttachOptions::TcxOrder(order))?;
    let fd_link: FdLink = classifier.take_link(id)?.try_into()?;
    fd_link.pin(link).with_context(|| format!("pinning {}", link.display()))?;
    Ok(())
}

/// A lab's directory of pins, named as its namespaces are (`LAB-ops`), so
/// one a killed run left is found as theirs are.
pub fn pin_dir(lab_id: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(format!("{lab_id}-ops"))
}

/// Removes a lab's pins (its programs and TCX links: those detach).
pub fn remove_pins(dir: &Path) {
    let _ = fs::remove_dir_all(dir);
}
