//! `snoop-lab demo` (what `cargo xtask demo` runs): a lab in network
//! namespaces showing a Linux bridge flooding a group to everyone, then snoop
//! pruning it to members. `snoop-lab cleanup` removes labs of killed runs.
//! `snoop-lab impostor ADDRESS BYTES [UID]` is a hostile control server
//! for the tests (see [`impostor`]). `snoop-lab peak-rss COMMAND...` runs
//! a command and says its peak RSS (see [`peak_rss`]).
//!
//! The `snoop` under test is $SNOOP_BIN, else the `snoop` beside this binary.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use snoop::{
    control::{self, Request},
    show::{self, View},
};
use snoop_tests::lab::{self, in_netns, Lab, LabOptions, BRIDGE};

const GROUP_A: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);
/// Same multicast MAC as GROUP_A (01:00:5e:01:01:01): snoop keeps them apart.
const GROUP_B: Ipv4Addr = Ipv4Addr::new(239, 129, 1, 1);
const MDNS: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 251);
const PACKETS: u64 = 200;

fn main() -> Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("demo") => demo(&snoop_bin()?),
        Some("cleanup") => {
            let removed = lab::remove_stale_labs()?;
            println!("removed {removed} namespaces of interrupted labs");
            Ok(())
        }
        Some("impostor") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            let (Some(address), Some(bytes)) = (args.first(), args.get(1).and_then(|b| b.parse().ok())) else {
                bail!("usage: snoop-lab impostor ADDRESS BYTES [UID]");
            };
            impostor(address, bytes, args.get(2).and_then(|u| u.parse().ok()))
        }
        Some("peak-rss") => peak_rss(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => bail!("usage: snoop-lab demo|cleanup|impostor|peak-rss"),
    }
}

/// Runs `command`, then prints `peak RSS N kB` on stderr and exits as it
/// did. The tests spawn clients through this small process: a child's
/// peak RSS starts at its parent's when the parent's memory is shared into
/// it (vfork), and a test binary's is large after a few labs.
fn peak_rss(command: &[String]) -> Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let Some((program, args)) = command.split_first() else { bail!("usage: snoop-lab peak-rss COMMAND...") };
    let child =
        std::process::Command::new(program).args(args).spawn().with_context(|| format!("starting {program}"))?;
    // SAFETY: an all-zero rusage is valid.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waiting for our own child with valid out-pointers.
    if unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) } < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    eprintln!("peak RSS {} kB", usage.ru_maxrss);
    let status = std::process::ExitStatus::from_raw(status);
    std::process::exit(status.code().unwrap_or(128 + status.signal().unwrap_or(0)));
}

/// A hostile control server: listens at `address` (`@NAME`: an abstract
/// socket, else a path), as `uid` if given (bound first, then that user),
/// and answers every client with an `ok` that clears its terminal, then
/// `bytes` bytes more. Runs until killed.
fn impostor(address: &str, bytes: u64, uid: Option<u32>) -> Result<()> {
    use std::{
        io::{Read as _, Write as _},
        os::{linux::net::SocketAddrExt as _, unix::net::UnixListener},
    };
    let address = match address.strip_prefix('@') {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?,
        None => std::os::unix::net::SocketAddr::from_pathname(address)?,
    };
    // Bound, not yet listening: SO_PEERCRED names who listens.
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket: {}", std::io::Error::last_os_error());
    }
    // SAFETY: a fresh fd, owned here.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let listener = UnixListener::from(socket);
    bind_unix(&listener, &address)?;
    if let Some(uid) = uid {
        // SAFETY: plain setgid/setuid calls.
        if unsafe { libc::setgid(uid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
            bail!("becoming uid {uid}: {}", std::io::Error::last_os_error());
        }
    }
    // SAFETY: listen(2) on a bound socket this function owns.
    if unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 16) } != 0 {
        bail!("listen: {}", std::io::Error::last_os_error());
    }
    let mut answer = b"{\"ok\":\"fooled \x1b[2J\x1b[H".to_vec();
    answer.extend(std::iter::repeat_n(b'x', bytes as usize));
    answer.extend(b"\"}");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut request = [0u8; 256];
        let _ = stream.read(&mut request);
        let _ = stream.write_all(&answer);
    }
    Ok(())
}

/// bind(2) of a unix socket to an address std made.
fn bind_unix(listener: &std::os::unix::net::UnixListener, address: &std::os::unix::net::SocketAddr) -> Result<()> {
    use std::os::linux::net::SocketAddrExt as _;
    // sockaddr_un: the family, then the path (abstract: a NUL, then the name).
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut raw: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    raw.sun_family = libc::AF_UNIX as u16;
    let path: Vec<u8> = match (address.as_abstract_name(), address.as_pathname()) {
        (Some(name), _) => [&[0u8][..], name].concat(),
        (_, Some(path)) => path.as_os_str().as_encoded_bytes().to_vec(),
        _ => bail!("an unnamed address"),
    };
    for (to, from) in raw.sun_path.iter_mut().zip(&path) {
        *to = *from as libc::c_char;
    }
    let length = (size_of::<libc::sa_family_t>() + path.len()) as libc::socklen_t;
    // SAFETY: valid fd, address and length.
    let rc = unsafe {
        libc::bind(std::os::fd::AsRawFd::as_raw_fd(listener), (&raw as *const libc::sockaddr_un).cast(), length)
    };
    if rc != 0 {
        bail!("binding: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn snoop_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("SNOOP_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe().context("locating snoop-lab")?;
    Ok(me.with_file_name("snoop"))
}

fn demo(snoop: &Path) -> Result<()> {
    let stale = lab::remove_stale_labs()?;
    if stale > 0 {
        println!("removed {stale} namespaces left by an earlier, interrupted lab");
    }
    println!("Building a lab: bridge {BRIDGE} with 5 ports; h0 sends, h1..h4 receive.");
    let mut lab = Lab::new("demo", 5, &LabOptions::default())?;
    let _joins = [lab.join("h1", GROUP_A)?, lab.join("h2", GROUP_A)?, lab.join("h3", GROUP_B)?];
    println!("  h1, h2 joined {GROUP_A}; h3 joined {GROUP_B}; h4 joined nothing.\n");

    println!("1) Plain Linux bridge (multicast_snooping off): every port gets every group.");
    traffic_table(&lab)?;

    println!("\n2) snoop running on {BRIDGE} (querier on, short timers for the demo):");
    lab.start_snoop(snoop, &["--query-interval", "5s", "--query-response-interval", "1s"])?;
    // Hosts answer snoop's startup query within the response interval.
    std::thread::sleep(Duration::from_millis(1500));
    traffic_table(&lab)?;

    let snapshot = in_netns(&lab.bridge_netns, || control::fetch(BRIDGE, Request::Snapshot))??;
    println!("\n`snoop show groups`:\n{}", show::render(&snapshot, View::Groups));
    println!("`snoop show querier`:\n{}", show::render(&snapshot, View::Querier));
    lab.stop_snoop(false).context("stopping snoop")?;
    drop(lab);
    println!("Lab removed: namespaces, bridge, programs and pins are gone.");
    Ok(())
}

/// Sends each group from h0 and prints what each receiver's interface got.
fn traffic_table(lab: &Lab) -> Result<()> {
    let receivers = ["h1", "h2", "h3", "h4"];
    let sniffers = receivers.iter().map(|h| lab.sniff(h)).collect::<Result<Vec<_>>>()?;
    for group in [GROUP_A, GROUP_B, MDNS] {
        lab.send("h0", group, PACKETS, Duration::from_micros(500))?;
    }
    std::thread::sleep(Duration::from_millis(300));
    println!("   {:<6}{:>14}{:>14}{:>14}", "host", GROUP_A, GROUP_B, MDNS);
    for (host, sniffer) in receivers.iter().zip(&sniffers) {
        println!(
            "   {:<6}{:>14}{:>14}{:>14}",
            host,
            sniffer.count(GROUP_A),
            sniffer.count(GROUP_B),
            sniffer.count(MDNS)
        );
    }
    Ok(())
}
