//! The bpffs directory that holds a bridge's pinned maps and links, so a
//! restarted snoop adopts them without a gap in forwarding.
use std::{
    fs, io,
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapInfo};
use snoop_common::{DatapathConfig, MapSizes, MAPS, MAP_CONFIG, MAP_GROUPS, MAP_MEMBERS};

use super::{Error, Result};

const BPF_FS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The default pin directory: one per (network namespace, bridge), so bridges
/// of the same name in different namespaces never share state.
pub fn default_pin_dir(netns: &str, bridge: &str) -> PathBuf {
    Path::new(BPF_FS).join("snoop").join(netns).join(bridge)
}

/// Makes sure `pin_dir` is root's alone: each component of its path that
/// exists is a directory owned by root and no symbolic link (whoever could
/// put one there could hand snoop maps of their own, or have a cleanup
/// remove something else). With `create`, missing ones are made, mode 0700.
pub(super) fn secure_pin_dir(pin_dir: &Path, create: bool) -> Result<()> {
    let mut path = PathBuf::new();
    for component in pin_dir.components() {
        path.push(component);
        let unsafe_dir = |why: String| Error::UnsafePinDir { path: path.clone(), why };
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => return Err(unsafe_dir("is a symbolic link".into())),
            Ok(meta) if !meta.is_dir() => return Err(unsafe_dir("is not a directory".into())),
            Ok(meta) if meta.uid() != 0 => return Err(unsafe_dir(format!("is owned by uid {}, not root", meta.uid()))),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => fs::DirBuilder::new()
                .mode(0o700)
                .create(&path)
                .map_err(|source| Error::Pins { what: "creating", path: path.clone(), source })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(source) => return Err(Error::Pins { what: "reading", path, source }),
        }
    }
    Ok(())
}

/// Removes a pin directory (maps and link pins, which detaches the programs),
/// and its parents up to /sys/fs/bpf if that leaves them empty. Never
/// through a symbolic link, nor a directory root does not own.
pub fn remove_pin_dir(pin_dir: &Path) -> Result<()> {
    secure_pin_dir(pin_dir, false)?;
    match fs::remove_dir_all(pin_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(Error::Pins { what: "removing", path: pin_dir.to_owned(), source }),
    }
    for parent in pin_dir.ancestors().skip(1).take_while(|p| p.starts_with(BPF_FS) && *p != Path::new(BPF_FS)) {
        if fs::remove_dir(parent).is_err() {
            break; // not empty: another bridge's state lives there
        }
    }
    Ok(())
}

/// The `RESTORE_*` flags in a pin directory's config map (0 without one).
pub fn pinned_restore_flags(pin_dir: &Path) -> Result<u32> {
    let path = pin_dir.join(MAP_CONFIG);
    if !path.exists() {
        return Ok(0);
    }
    let map = MapData::from_pin(&path).map_err(|e| Error::map("opening", MAP_CONFIG, e))?;
    let config: Array<MapData, DatapathConfig> =
        Array::try_from(aya::maps::Map::Array(map)).map_err(|e| Error::map("opening", MAP_CONFIG, e))?;
    Ok(config.get(&0, 0).map_or(0, |c| c.restore))
}

/// Pinned maps left by a snoop with another map layout (or sizes) would be adopted as
/// they are and fail verification. The memberships are the state a restart
/// keeps: those are never dropped silently, that is a clear error. Every
/// other map is rewritten by the controller at start (or holds counters), so
/// it is unpinned and made anew; the old programs keep theirs until replaced.
pub(super) fn drop_pins_of_another_layout(pin_dir: &Path, sizes: MapSizes) -> Result<()> {
    for spec in MAPS.map(|spec| sizes.apply(spec)) {
        let path = pin_dir.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = MapInfo::from_pin(&path).map_err(|e| Error::map("reading", spec.name, e))?;
        let pinned = [info.key_size(), info.value_size(), info.max_entries()];
        let ours = [spec.key_size, spec.value_size, spec.max_entries];
        // (Of another kind with the same sizes: no map snoop pinned.)
        let same_kind = info.map_type().is_ok_and(|kind| kind as u32 == spec.kind as u32);
        if pinned == ours && same_kind {
            continue;
        }
        if spec.name == MAP_MEMBERS || spec.name == MAP_GROUPS {
            return Err(Error::LayoutMismatch { pin_dir: pin_dir.to_owned(), map: spec.name, pinned, ours });
        }
        log::info!("{}: pinned by a snoop with another map layout; made anew", spec.name);
        fs::remove_file(&path).map_err(|source| Error::Pins { what: "removing", path, source })?;
    }
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there, root's alone
/// (mode 0700, as systemd mounts it).
pub(super) fn ensure_bpffs() -> Result<()> {
    let path = std::ffi::CString::new(BPF_FS).expect("no NUL");
    // SAFETY: an all-zero statfs is valid as an out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statfs(path.as_ptr(), &mut stat) };
    if rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    fs::create_dir_all(BPF_FS).map_err(Error::Bpffs)?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    let options = std::ffi::CString::new("mode=0700").expect("no NUL");
    // SAFETY: valid C strings; the data argument is a C string of options.
    let rc = unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, options.as_ptr().cast()) };
    if rc != 0 {
        return Err(Error::Bpffs(io::Error::last_os_error()));
    }
    Ok(())
}
