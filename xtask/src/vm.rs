//! `cargo xtask test --kernel VERSION|PATH`: runs the integration tests in a
//! QEMU guest booting another kernel, as aya's own integration tests do.
//!
//! The guest sees this machine's root read-only over 9p (virtio), so the test
//! binaries, `snoop`, iproute2 and nftables need no copying: a tiny busybox
//! initramfs loads the 9p modules, mounts the host root with fresh /proc,
//! /sys, /dev, /tmp, /run and bpffs on it, and `switch_root`s there (so the
//! kernel's module autoloading finds the guest kernel's modules, which its
//! Debian package installed under /lib/modules). The tests' output comes back
//! on the serial console. KVM is not assumed: TCG emulation works anywhere.
//! Timing inside the guest means nothing; behaviour does.
use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{Apt, TestTotals};

/// A kernel to boot and the modules that go with it.
pub struct Kernel {
    pub image: PathBuf,
    pub version: String,
}

/// Debian packages a Debian kernel series comes in.
fn series_package(series: &str) -> Result<String> {
    match series {
        // Debian 12's stock kernel.
        "6.1" => Ok("linux-image-amd64".into()),
        // The newest of the series in the package lists (bookworm-backports builds).
        _ => {
            let pattern = format!("^linux-image-{}\\.[0-9.]+\\+deb12-amd64-unsigned$", series.replace('.', "\\."));
            let out = output(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
            let mut names: Vec<&str> = out.lines().filter_map(|l| l.split_whitespace().next()).collect();
            names.sort_by_key(|name| version_key(name));
            names.last().map(|n| n.to_string()).with_context(|| {
                format!("no Debian package for Linux {series} (looked for {pattern}; run apt-get update?)")
            })
        }
    }
}

/// Sorts "linux-image-6.12.107+deb12..." by its numbers.
fn version_key(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect()
}

/// The kernel to boot for `spec`: a series ("6.1", "6.12"), installed from
/// Debian's packages when missing, or a path to a vmlinuz whose modules are
/// in /lib/modules/VERSION.
pub fn resolve(spec: &str, apt: &mut Apt) -> Result<Kernel> {
    let path = Path::new(spec);
    if path.is_file() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let version = name.strip_prefix("vmlinuz-").with_context(|| format!("{spec}: not named vmlinuz-VERSION"))?;
        return Ok(Kernel { image: path.to_owned(), version: version.to_owned() });
    }
    if !spec.chars().all(|c| c.is_ascii_digit() || c == '.') {
        bail!("--kernel takes a series such as 6.1 or 6.12, or the path of a vmlinuz");
    }
    let find = || -> Option<Kernel> {
        let mut found: Vec<(Vec<u64>, Kernel)> = fs::read_dir("/boot")
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().to_string_lossy().into_owned();
                let version = name.strip_prefix("vmlinuz-")?.to_owned();
                let series_matches = version.strip_prefix(spec).is_some_and(|rest| rest.starts_with(['.', '-']));
                (series_matches && version.ends_with("-amd64"))
                    .then(|| (version_key(&version), Kernel { image: entry.path(), version: version.clone() }))
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found.pop().map(|(_, kernel)| kernel)
    };
    if let Some(kernel) = find() {
        return Ok(kernel);
    }
    let package = series_package(spec)?;
    println!("vm: installing {package} (Linux {spec}; this machine's own kernel is untouched)");
    apt.install(&[&package])?;
    find().with_context(|| format!("{package} is installed but /boot has no vmlinuz-{spec}.*-amd64"))
}

/// Modules to load, in order, to mount the host root over virtio 9p (nothing
/// for what the kernel has built in), decompressed where Debian compressed them.
fn root_modules(kernel: &Kernel, dir: &Path) -> Result<Vec<PathBuf>> {
    let depends = output(Command::new("modprobe").args(["--show-depends", "-S", &kernel.version, "-a"]).args([
        "virtio_pci",
        "virtio_blk",
        "9pnet_virtio",
        "9p",
    ]))
    .context("resolving the 9p modules (is kmod installed?)")?;
    let mut modules: Vec<PathBuf> = Vec::new();
    for line in depends.lines() {
        let Some(path) = line.strip_prefix("insmod ").map(|l| l.split_whitespace().next().unwrap_or_default()) else {
            continue; // "builtin NAME"
        };
        let source = PathBuf::from(path);
        let name = source.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let plain = name.trim_end_matches(".xz").trim_end_matches(".zst").to_owned();
        let target = dir.join(format!("{:02}-{plain}", modules.len()));
        if modules.iter().any(|m| m.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(&plain))) {
            continue;
        }
        let bytes = match name.rsplit('.').next() {
            Some("xz") => output_bytes(Command::new("xz").arg("-dc").arg(&source))?,
            Some("zst") => output_bytes(Command::new("zstd").arg("-dc").arg(&source))?,
            _ => fs::read(&source).with_context(|| format!("reading {}", source.display()))?,
        };
        fs::write(&target, bytes)?;
        modules.push(target);
    }
    Ok(modules)
}

/// The guest's /init: mount the host root and switch to it.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in /modules/*; do insmod "$module" || echo "snoop-vm: insmod $module failed"; done
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
    echo "snoop-vm: cannot mount the host root"; echo o > /proc/sysrq-trigger; sleep 10
fi
# The host's /tmp stays reachable under the guest's own (a workspace may be there).
mount -t tmpfs tmpfs /host/run
mkdir -p /host/run/host-tmp
mount --bind /host/tmp /host/run/host-tmp
mount -t tmpfs tmpfs /host/tmp
mount --move /proc /host/proc
mount --move /sys /host/sys
mount --move /dev /host/dev
mount -t bpf bpf /host/sys/fs/bpf
mkdir -p /host/dev/pts /host/dev/shm
mount -t devpts devpts /host/dev/pts
mount -t tmpfs tmpfs /host/dev/shm
cp /run.sh /host/tmp/snoop-vm.sh
exec switch_root /host /bin/sh /tmp/snoop-vm.sh
"#;

/// Runs the integration test `binaries` (with `args`) inside a guest booting
/// `kernel`; their output is printed and their results added to `totals`.
pub fn run_tests(
    kernel: &Kernel,
    workspace: &Path,
    snoop: &Path,
    binaries: &[PathBuf],
    args: &[String],
    totals: &mut TestTotals,
) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
    let mut commands = format!("export SNOOP_BIN={}\nstatus=0\n", quote(&snoop.display().to_string()));
    for binary in binaries {
        commands.push_str(&format!(
            "{} --test-threads 1 {} || status=1\n",
            quote(&binary.display().to_string()),
            args.join(" ")
        ));
    }
    commands.push_str("exit_with $status\n");
    match run(kernel, workspace, &commands, &mut |line| totals.add_line(line))? {
        0 => Ok(()),
        code => bail!("tests failed in the guest (Linux {}, exit {code})", kernel.version),
    }
}

/// Runs a shell command in a guest booting `kernel`; its exit code.
pub fn run_command(kernel: &Kernel, workspace: &Path, command: &str) -> Result<i32> {
    run(kernel, workspace, &format!("sh -c {}\nexit_with $?\n", quote(command)), &mut |_| {})
}

/// Boots `kernel` with the host root and runs `commands` (a shell script
/// fragment ending in `exit_with CODE`) there. Every console line is printed
/// and given to `on_line`; returns the script's exit code.
fn run(kernel: &Kernel, workspace: &Path, commands: &str, on_line: &mut dyn FnMut(&str)) -> Result<i32> {
    for program in ["qemu-system-x86_64", "busybox", "cpio"] {
        if crate::bpf_toolchain::which(program).is_none() && !Path::new("/bin").join(program).exists() {
            bail!("{program} is missing (cargo xtask test --kernel installs it)");
        }
    }
    let dir = tempdir()?;
    let root = dir.join("initramfs");
    for sub in ["bin", "modules", "proc", "sys", "dev"] {
        fs::create_dir_all(root.join(sub))?;
    }
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).context("busybox")?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    root_modules(kernel, &root.join("modules"))?;
    write_executable(&root.join("init"), INIT)?;
    write_executable(&root.join("run.sh"), &guest_script(workspace, commands))?;
    let initramfs = dir.join("initramfs.cpio");
    let cpio = Command::new("sh")
        .arg("-c")
        .arg(format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), initramfs.display()))
        .status()?;
    if !cpio.success() {
        bail!("building the initramfs failed");
    }

    println!("vm: booting {} ({}) in QEMU (TCG), 2 vCPUs", kernel.version, kernel.image.display());
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg,thread=multi", "-cpu", "max", "-m", "3072", "-smp", "2"])
        .args(["-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(&initramfs)
        .args(["-append", "console=ttyS0 panic=-1 noapic quiet loglevel=3"])
        .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let (lines, received) = mpsc::channel();
    let stdout = qemu.stdout.take().expect("piped");
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines.send(line);
        }
    });
    // Generous: TCG is slow, and a hung guest must still end the run.
    let deadline = Instant::now() + Duration::from_secs(45 * 60);
    let mut outcome = Err(anyhow::anyhow!("the guest ended without a result (Linux {})", kernel.version));
    while Instant::now() < deadline {
        let line = match received.recv_timeout(Duration::from_secs(1)) {
            Ok(line) => line.trim_end_matches('\r').to_owned(),
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        println!("{line}");
        on_line(&line);
        if let Some(code) = line.strip_prefix("snoop-vm: exit ") {
            outcome = code.trim().parse::<i32>().context("the guest's exit line");
            break;
        }
        if let Some(marker) = ["Kernel panic", "watchdog: BUG: soft lockup", "snoop-vm: cannot mount"]
            .into_iter()
            .find(|marker| line.contains(marker))
        {
            outcome = Err(anyhow::anyhow!("the guest failed: {marker}"));
            break;
        }
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let _ = fs::remove_dir_all(&dir);
    outcome
}

/// What the guest runs once it is on the host root.
fn guest_script(workspace: &Path, commands: &str) -> String {
    let mut script =
        "#!/bin/sh\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp\n".to_owned();
    // The guest's /tmp is its own: a workspace under the host's is bound back.
    if let Ok(rest) = workspace.strip_prefix("/tmp") {
        let (inside, host) =
            (quote(&workspace.display().to_string()), quote(&format!("/run/host-tmp/{}", rest.display())));
        script.push_str(&format!("mkdir -p {inside} && mount --bind {host} {inside}\n"));
    }
    script += &format!(
        "cd {}\necho \"snoop-vm: running on Linux $(uname -r)\"\n\
         modprobe -a bridge veth 8021q 2>/dev/null\n\
         export SNOOP_TIME_SCALE=5\n\
         exit_with() {{ echo \"snoop-vm: exit $1\"; echo o > /proc/sysrq-trigger; while :; do :; done; }}\n",
        quote(&workspace.display().to_string())
    );
    // What tunes the tests and snoop's log comes along.
    for (name, value) in std::env::vars() {
        if name == "RUST_LOG" || name == "RUST_BACKTRACE" || name.starts_with("SNOOP_") && name != "SNOOP_BIN" {
            script.push_str(&format!("export {name}={}\n", quote(&value)));
        }
    }
    script.push_str(commands);
    script
}

fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn write_executable(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut file = fs::File::create(path)?;
    file.write_all(text.as_bytes())?;
    file.set_permissions(fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn tempdir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("snoop-vm-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn output(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8(output_bytes(cmd)?)?)
}

fn output_bytes(cmd: &mut Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(out.stdout)
}
