//! The control protocol between `snoop run` and its clients (`snoop show`,
//! `snoop watch`, `snoop group`, `snoop reload`): a unix socket per bridge
//! and network namespace, one request line, and one JSON document back, or
//! JSON lines for `watch`, or `{"error": "..."}` for a client that is
//! refused; a change is answered `{"ok": "..."}` or `{"error": "..."}`.
//!
//! The socket lives in the file system, where only root can make it:
//! `/run/snoop/net<INODE>/<BRIDGE>.sock` (the network namespace's inode, so
//! `snoop --netns` and `ip netns exec` find the same one), mode 0600, or
//! 0660 with the `--control-group` as its group. No other user can take its
//! name first, nor connect without being allowed; the controller checks
//! each peer's credentials as well (root, or a member of the control group,
//! may read; changes are root's only), and a client talks only to a server
//! that is root, reading a bounded answer and printing no control
//! characters from it. A lock file next to the socket keeps a second
//! snoop on the same bridge from starting.
use std::{
    fs,
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::{
        fd::AsRawFd as _,
        unix::{
            fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _},
            net::UnixStream,
        },
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    sync::{broadcast, mpsc, oneshot},
};

use crate::{
    port_groups::StaticGroup,
    snapshot::{Event, EventKind, Snapshot},
};

/// What a client asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The whole state: groups, ports, querier, counters, traffic.
    Snapshot,
    /// The same without groups and traffic: cheap however many groups there are.
    Counters,
    /// Membership events as they happen, one JSON line each.
    Watch,
    /// A change to the running snoop (root only).
    Change(Change),
}

/// What a client may change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Make a port a static member of a group (`snoop group add`).
    GroupAdd(StaticGroup),
    /// End a static membership (`snoop group del`; its sources are not compared).
    GroupDel(StaticGroup),
    /// Read the configuration again and apply what changed (`snoop reload`).
    Reload,
}

impl Request {
    pub fn to_line(&self) -> String {
        match self {
            Request::Snapshot => "snapshot".into(),
            Request::Counters => "counters".into(),
            Request::Watch => "watch".into(),
            Request::Change(Change::GroupAdd(entry)) => format!("group-add {entry}"),
            Request::Change(Change::GroupDel(entry)) => format!("group-del {entry}"),
            Request::Change(Change::Reload) => "reload".into(),
        }
    }

    /// An empty line asks for a snapshot.
    pub fn parse(line: &str) -> Option<Self> {
        let line = line.trim();
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match (word, rest) {
            ("snapshot" | "", "") => Some(Request::Snapshot),
            ("counters", "") => Some(Request::Counters),
            ("watch", "") => Some(Request::Watch),
            ("reload", "") => Some(Request::Change(Change::Reload)),
            ("group-add", entry) => Some(Request::Change(Change::GroupAdd(entry.parse().ok()?))),
            ("group-del", entry) => Some(Request::Change(Change::GroupDel(entry.parse().ok()?))),
            _ => None,
        }
    }
}

/// Longest request line the controller reads (a static group with sources
/// of IPv6 addresses is the longest).
pub const MAX_REQUEST_BYTES: u64 = 1024;

/// Most clients served at once; more are told the controller is busy.
pub const MAX_CLIENTS: usize = 128;

/// Who may use the control socket besides root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access {
    /// Members of this group (primary or supplementary) may read.
    pub group: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("snoop is not running on bridge {0} in this network namespace (start it with `snoop run --bridge {0}`)")]
    NotRunning(String),
    #[error("another snoop is already running on {0} in this network namespace")]
    AlreadyRunning(String),
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("the controller's answer is not valid JSON")]
    BadAnswer(#[source] serde_json::Error),
    #[error("the controller's answer is longer than {0} bytes")]
    AnswerTooLong(u64),
    #[error("snoop on {0} stopped")]
    Stopped(String),
    #[error("the snoop controller refused: {0}")]
    Refused(String),
    #[error("snoop on {bridge}: {why}")]
    ChangeFailed { bridge: String, why: String },
    #[error(
        "{} is served by uid {uid}, not root: not snoop. Not talking to it (remove it, and find who made it)",
        path.display()
    )]
    NotRoot { path: PathBuf, uid: u32 },
    #[error("{}: {why}; refusing to use it", path.display())]
    UnsafePath { path: PathBuf, why: &'static str },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Where every bridge's control socket lives.
pub const RUN_DIR: &str = "/run/snoop";

/// The controller's socket for `bridge` in the current network namespace.
pub fn socket_path(bridge: &str) -> Result<PathBuf> {
    Ok(namespace_dir()?.join(format!("{bridge}.sock")))
}

/// The directory of the current network namespace's sockets.
fn namespace_dir() -> Result<PathBuf> {
    let inode = fs::metadata("/proc/thread-self/ns/net").map_err(io_error("reading this network namespace"))?.ino();
    Ok(Path::new(RUN_DIR).join(format!("net{inode}")))
}

/// Longest answer to a change (`snoop group`, `snoop reload`) and longest
/// `watch` line or refusal a client reads.
pub const MAX_LINE_BYTES: u64 = 64 * 1024;

/// Longest state answer a client reads (100,000 groups take about 30 MB).
pub const MAX_SNAPSHOT_BYTES: u64 = 256 * 1024 * 1024;

/// `text` as a terminal may print it: control characters (escape
/// sequences, carriage returns) become U+FFFD.
pub fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() && c != '\n' && c != '\t' { '\u{fffd}' } else { c }).collect()
}

// ------------------------------------------------------------------ client

fn connect(bridge: &str, request: &Request) -> Result<UnixStream> {
    let path = socket_path(bridge)?;
    let mut stream = match UnixStream::connect(&path) {
        Ok(stream) => stream,
        Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::NotFound) => {
            return Err(Error::NotRunning(bridge.to_owned()))
        }
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            return Err(Error::Refused(format!(
                "{REFUSAL_PREFIX}{}: only root, and members of the group `snoop run --control-group` names, may \
                 use it",
                path.display()
            )))
        }
        Err(e) => return Err(io_error("connecting to the snoop controller")(e)),
    };
    // Not a byte to a server that is not root: only root can make the
    // socket, but a client trusts no file system it did not check.
    let uid = peer_uid(&stream).map_err(io_error("reading the controller's credentials"))?;
    if uid != 0 {
        return Err(Error::NotRoot { path, uid });
    }
    stream.write_all(format!("{}\n", request.to_line()).as_bytes()).map_err(io_error("sending the request"))?;
    Ok(stream)
}

/// The uid of the process at the other end of a unix stream socket (as
/// it was when it listened).
fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    // SAFETY: an all-zero ucred is valid as an out-parameter.
    let mut credentials: libc::ucred = unsafe { std::mem::zeroed() };
    let mut length = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid fd, out-pointer and length.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut length,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(credentials.uid)
}

/// Everything the controller answers, up to `limit` bytes.
fn read_answer(stream: impl io::Read, limit: u64) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    stream.take(limit + 1).read_to_end(&mut body).map_err(io_error("reading from the snoop controller"))?;
    if body.len() as u64 > limit {
        return Err(Error::AnswerTooLong(limit));
    }
    Ok(body)
}

/// The state of the controller running on `bridge` in this network
/// namespace: everything, or (`Request::Counters`) without groups and traffic.
pub fn fetch(bridge: &str, request: Request) -> Result<Snapshot> {
    let stream = connect(bridge, &request)?;
    // Generous: a bridge with 100k groups answers with megabytes of JSON.
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_error("setting a timeout"))?;
    let mut answer = BufReader::new(stream.take(MAX_SNAPSHOT_BYTES));
    // A refusal is one short line; the state, parsed as it arrives (a
    // malformed answer ends the read where it goes wrong).
    let head = answer.fill_buf().map_err(io_error("reading from the snoop controller"))?;
    if head.starts_with(b"{\"error\"") {
        let body = read_answer(answer, MAX_LINE_BYTES)?;
        return Err(refusal(&body).unwrap_or(Error::AnswerTooLong(MAX_LINE_BYTES)));
    }
    serde_json::from_reader(answer).map_err(Error::BadAnswer)
}

/// Asks the controller on `bridge` for a change; what it did, or why not.
pub fn change(bridge: &str, change: Change) -> Result<String> {
    let stream = connect(bridge, &Request::Change(change))?;
    // A reload reads the file and may rewrite many memberships.
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io_error("setting a timeout"))?;
    let body = read_answer(stream, MAX_LINE_BYTES)?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Answer {
        Ok(String),
        Error(String),
    }
    match serde_json::from_slice(&body).map_err(Error::BadAnswer)? {
        Answer::Ok(done) => Ok(printable(&done)),
        Answer::Error(why) if why.starts_with(REFUSAL_PREFIX) => Err(Error::Refused(printable(&why))),
        Answer::Error(why) => Err(Error::ChangeFailed { bridge: bridge.to_owned(), why: printable(&why) }),
    }
}

/// How refusals of the client itself (not of what it asked) begin.
const REFUSAL_PREFIX: &str = "refused: ";

/// The controller's `{"error": "..."}` answer, if that is what `body` is.
fn refusal(body: &[u8]) -> Option<Error> {
    #[derive(serde::Deserialize)]
    struct Refusal {
        error: String,
    }
    serde_json::from_slice::<Refusal>(body).ok().map(|r| Error::Refused(printable(&r.error)))
}

/// Membership events from the controller on `bridge`, as they happen; ends
/// with [`Error::Stopped`] when the controller goes away.
pub fn watch(bridge: &str) -> Result<impl Iterator<Item = Result<(String, Event)>>> {
    let bridge = bridge.to_owned();
    let mut reader = BufReader::new(connect(&bridge, &Request::Watch)?);
    let events = std::iter::from_fn(move || {
        let mut line = Vec::new();
        match (&mut reader).take(MAX_LINE_BYTES).read_until(b'\n', &mut line) {
            Ok(0) => return None,
            Ok(_) if !line.ends_with(b"\n") && line.len() as u64 == MAX_LINE_BYTES => {
                return Some(Err(Error::AnswerTooLong(MAX_LINE_BYTES)))
            }
            Ok(_) => {}
            Err(error) => return Some(Err(io_error("reading events")(error))),
        }
        if let Some(refusal) = refusal(&line) {
            return Some(Err(refusal));
        }
        let event = serde_json::from_slice(&line).map_err(Error::BadAnswer);
        Some(event.map(|event| (printable(String::from_utf8_lossy(&line).trim_end()), event)))
    });
    Ok(events.chain(std::iter::once_with(move || Err(Error::Stopped(bridge)))))
}

// ------------------------------------------------------------------ server

/// The controller's socket, bound; it is removed (with its lock) when this
/// is dropped.
pub(crate) struct Listener {
    pub listener: tokio::net::UnixListener,
    path: PathBuf,
    lock_path: PathBuf,
    /// Held while snoop runs: the lock that keeps a second one out.
    _lock: fs::File,
}

impl Drop for Listener {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        let _ = fs::remove_file(&self.lock_path);
        // The namespace's directory, then /run/snoop, if nothing else is there.
        if let Some(dir) = self.path.parent() {
            let _ = fs::remove_dir(dir);
        }
        let _ = fs::remove_dir(RUN_DIR);
    }
}

/// Binds the controller's socket for `bridge`, readable by root and, with
/// `group`, by that group's members; a second snoop on the same bridge is
/// refused here, before it touches anything.
pub(crate) fn bind(bridge: &str, group: Option<u32>) -> Result<Listener> {
    let path = socket_path(bridge)?;
    let dir = path.parent().expect("a socket path has a directory").to_owned();
    private_dir(Path::new(RUN_DIR))?;
    private_dir(&dir)?;
    let lock_path = dir.join(format!("{bridge}.lock"));
    let lock = lock(&lock_path).map_err(|e| match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) => Error::AlreadyRunning(bridge.to_owned()),
        _ => io_error(format!("locking {}", lock_path.display()))(e),
    })?;
    // The lock is ours: a socket there is a dead snoop's.
    match fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            return Err(io_error(format!("removing a stale {}", path.display()))(e))
        }
        _ => {}
    }
    let listener =
        std::os::unix::net::UnixListener::bind(&path).map_err(io_error(format!("binding {}", path.display())))?;
    // Until here only root could connect (no write permission for others).
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    if let Some(group) = group {
        std::os::unix::fs::chown(&path, Some(0), Some(group))
            .map_err(io_error("giving the control socket its group"))?;
    }
    fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        .map_err(io_error("setting the control socket's mode"))?;
    listener.set_nonblocking(true).map_err(io_error("binding the control socket"))?;
    let listener = tokio::net::UnixListener::from_std(listener).map_err(io_error("binding the control socket"))?;
    Ok(Listener { listener, path, lock_path, _lock: lock })
}

/// Makes `dir` (mode 0755, root's) unless it is there; one that is there
/// must be a directory of root's that nobody else may write to, reached
/// through no symlink.
fn private_dir(dir: &Path) -> Result<()> {
    let unsafe_path = |why| Error::UnsafePath { path: dir.to_owned(), why };
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_error(format!("creating {}", dir.display()))(e)),
    }
    let meta = fs::symlink_metadata(dir).map_err(io_error(format!("reading {}", dir.display())))?;
    if meta.file_type().is_symlink() {
        return Err(unsafe_path("a symlink"));
    }
    if !meta.is_dir() {
        return Err(unsafe_path("not a directory"));
    }
    if meta.uid() != 0 {
        return Err(unsafe_path("not owned by root"));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(unsafe_path("writable by others than root"));
    }
    Ok(())
}

/// Takes the exclusive lock at `path`, made if missing; EWOULDBLOCK when
/// another process holds it. A lock file removed by its last holder while
/// this one waited is no lock: taken again on the file there now.
fn lock(path: &Path) -> io::Result<fs::File> {
    loop {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?;
        // SAFETY: flock on an fd this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let same = fs::symlink_metadata(path).is_ok_and(|there| there.ino() == file.metadata().map_or(0, |m| m.ino()));
        if same {
            return Ok(file);
        }
    }
}

/// A request for the current state, answered by the controller loop.
pub(crate) struct SnapshotRequest {
    pub counters_only: bool,
    pub reply: oneshot::Sender<Arc<Snapshot>>,
}

/// Where the controller loop takes snapshot requests.
pub(crate) type Snapshots = mpsc::Sender<SnapshotRequest>;

/// A change for the controller loop to make; it answers what it did or why not.
pub(crate) struct ChangeRequest {
    pub change: Change,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// Asks the controller loop for its current state; `None` once it stopped.
pub(crate) async fn ask(snapshots: &Snapshots, counters_only: bool) -> Option<Arc<Snapshot>> {
    let (reply, answer) = oneshot::channel();
    snapshots.send(SnapshotRequest { counters_only, reply }).await.ok()?;
    answer.await.ok()
}

/// What serving a client needs.
#[derive(Clone)]
pub(crate) struct Server {
    pub snapshots: Snapshots,
    pub changes: mpsc::Sender<ChangeRequest>,
    pub events: broadcast::Sender<Event>,
    pub access: Access,
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// Serves one client on its own task, so a slow one never stalls snooping.
pub(crate) async fn serve(stream: tokio::net::UnixStream, server: Server) {
    let role = admitted(&stream, server.access);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    // Read before answering, refusals too: closing with a request unread
    // would reset the connection and lose the answer. A refused peer gets
    // only a moment, so a crowd of them ties nothing up.
    let patience = if role.is_ok() { Duration::from_secs(2) } else { Duration::from_millis(100) };
    let _ = tokio::time::timeout(patience, reader.read_line(&mut line)).await;
    let role = match role {
        Ok(role) => role,
        Err(why) => return refuse(&mut write, &why).await,
    };
    let Ok(_slot) = server.slots.clone().try_acquire_owned() else {
        return refuse(&mut write, "busy: too many clients at once").await;
    };
    match Request::parse(&line) {
        Some(Request::Watch) => stream_events(&mut write, server.events.subscribe()).await,
        Some(Request::Change(_)) if role != Role::Root => {
            refuse(&mut write, &format!("{REFUSAL_PREFIX}only root may change snoop's state")).await
        }
        Some(Request::Change(change)) => {
            let (reply, answer) = oneshot::channel();
            if server.changes.send(ChangeRequest { change, reply }).await.is_err() {
                return;
            }
            let body = match answer.await {
                Ok(Ok(done)) => serde_json::json!({ "ok": done }),
                Ok(Err(why)) => serde_json::json!({ "error": why }),
                Err(_) => return, // stopped meanwhile
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), write.write_all(body.to_string().as_bytes())).await;
        }
        Some(request) => {
            if let Some(snapshot) = ask(&server.snapshots, request == Request::Counters).await {
                let body = serde_json::to_vec(&*snapshot).expect("snapshots serialize");
                let _ = tokio::time::timeout(Duration::from_secs(30), write.write_all(&body)).await;
            }
        }
        None => {} // not a request: hang up
    }
}

/// What a client may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Read and change.
    Root,
    /// Read only: a member of the control group.
    Reader,
}

/// Root, or a member of the control group, may read; root may change.
fn admitted(stream: &tokio::net::UnixStream, access: Access) -> Result<Role, String> {
    let peer = stream.peer_cred().map_err(|e| format!("no peer credentials: {e}"))?;
    if peer.uid() == 0 {
        return Ok(Role::Root);
    }
    let member = access.group.is_some_and(|group| {
        peer.gid() == group || peer.pid().is_some_and(|pid| supplementary_groups(pid).contains(&group))
    });
    if member {
        return Ok(Role::Reader);
    }
    Err(format!(
        "uid {} may not read this snoop's state: root may, and members of the group `snoop run --control-group` names",
        peer.uid()
    ))
}

/// A process's supplementary groups, from /proc.
fn supplementary_groups(pid: i32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            let groups = status.lines().find_map(|l| l.strip_prefix("Groups:"))?;
            Some(groups.split_whitespace().filter_map(|g| g.parse().ok()).collect())
        })
        .unwrap_or_default()
}

async fn refuse(write: &mut tokio::net::unix::OwnedWriteHalf, why: &str) {
    let mut body = serde_json::to_vec(&serde_json::json!({ "error": why })).expect("serializes");
    body.push(b'\n');
    let _ = tokio::time::timeout(Duration::from_secs(1), write.write_all(&body)).await;
}

async fn stream_events(write: &mut tokio::net::unix::OwnedWriteHalf, mut events: broadcast::Receiver<Event>) {
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                Event::now(EventKind::Lost, None, None, missed.to_string())
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let mut line = serde_json::to_vec(&event).expect("events serialize");
        line.push(b'\n');
        if write.write_all(&line).await.is_err() {
            return; // the watcher went away
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_up_to_their_limit_only() {
        // A hostile server's 100 MB answer: the client stops past the limit.
        let endless = io::repeat(b'x').take(100 << 20);
        assert!(matches!(read_answer(endless, MAX_LINE_BYTES), Err(Error::AnswerTooLong(MAX_LINE_BYTES))));
        assert_eq!(read_answer(&b"{\"ok\":\"done\"}"[..], MAX_LINE_BYTES).unwrap(), b"{\"ok\":\"done\"}");
    }

    #[test]
    fn what_a_client_prints_drives_no_terminal() {
        assert_eq!(printable("p1\x1b[2J\r\x07 ok\n"), "p1\u{fffd}[2J\u{fffd}\u{fffd} ok\n");
        assert_eq!(printable("239.1.1.1 vlan 10"), "239.1.1.1 vlan 10");
    }

    #[test]
    fn one_lock_holder_at_a_time() {
        let dir = std::env::temp_dir().join(format!("snoop-lock-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("br0.lock");
        let held = lock(&path).unwrap();
        assert_eq!(lock(&path).unwrap_err().raw_os_error(), Some(libc::EWOULDBLOCK));
        drop(held);
        assert!(lock(&path).is_ok(), "a released lock is free");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_socket_directory_must_be_roots_and_no_symlink() {
        let base = std::env::temp_dir().join(format!("snoop-dirs-{}", std::process::id()));
        fs::create_dir_all(&base).unwrap();
        let made = base.join("made");
        private_dir(&made).unwrap();
        assert_eq!(fs::metadata(&made).unwrap().mode() & 0o777, 0o755);
        private_dir(&made).unwrap();
        let link = base.join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(matches!(private_dir(&link), Err(Error::UnsafePath { why: "a symlink", .. })));
        let open = base.join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(private_dir(&open), Err(Error::UnsafePath { why: "writable by others than root", .. })));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            assert!(matches!(private_dir(&theirs), Err(Error::UnsafePath { why: "not owned by root", .. })));
        }
        fs::remove_dir_all(base).unwrap();
    }
}
