//! The control protocol between `snoop run` and its clients (`snoop show`,
//! `snoop watch`, the metrics endpoint): an abstract unix socket per bridge
//! and network namespace (nothing to clean up in the file system), one
//! request line, and one JSON document back, or JSON lines for `watch`, or
//! `{"error": "..."}` for a client that is refused; a change (`snoop group`,
//! `snoop reload`) is answered `{"ok": "..."}` or `{"error": "..."}`.
//!
//! Anyone in the network namespace can connect to an abstract socket, so the
//! controller checks the peer's credentials: root, or a member of the
//! `--control-group`, may read; changes are root's only. Requests are one
//! short line, clients are few at a time, and requests arriving together
//! share one snapshot.
use std::{
    io::{self, BufRead as _, BufReader, Read as _, Write as _},
    os::{linux::net::SocketAddrExt as _, unix::net::UnixStream},
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
    Io { what: &'static str, source: io::Error },
    #[error("the controller's answer is not valid JSON")]
    BadAnswer(#[source] serde_json::Error),
    #[error("snoop on {0} stopped")]
    Stopped(String),
    #[error("the snoop controller refused: {0}")]
    Refused(String),
    #[error("snoop on {bridge}: {why}")]
    ChangeFailed { bridge: String, why: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io_error(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// The controller's socket for `bridge`, in the abstract namespace.
pub fn socket_name(bridge: &str) -> String {
    format!("snoop/{bridge}")
}

fn socket_addr(bridge: &str) -> Result<std::os::unix::net::SocketAddr> {
    std::os::unix::net::SocketAddr::from_abstract_name(socket_name(bridge).as_bytes())
        .map_err(io_error("naming the control socket"))
}

// ------------------------------------------------------------------ client

fn connect(bridge: &str, request: &Request) -> Result<UnixStream> {
    let mut stream = match UnixStream::connect_addr(&socket_addr(bridge)?) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Error::NotRunning(bridge.to_owned())),
        Err(e) => return Err(io_error("connecting to the snoop controller")(e)),
    };
    stream.write_all(format!("{}\n", request.to_line()).as_bytes()).map_err(io_error("sending the request"))?;
    Ok(stream)
}

/// The state of the controller running on `bridge` in this network
/// namespace: everything, or (`Request::Counters`) without groups and traffic.
pub fn fetch(bridge: &str, request: Request) -> Result<Snapshot> {
    let mut stream = connect(bridge, &request)?;
    // Generous: a bridge with 100k groups answers with megabytes of JSON.
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_error("setting a timeout"))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(io_error("reading from the snoop controller"))?;
    if let Some(refusal) = refusal(&body) {
        return Err(refusal);
    }
    serde_json::from_slice(&body).map_err(Error::BadAnswer)
}

/// Asks the controller on `bridge` for a change; what it did, or why not.
pub fn change(bridge: &str, change: Change) -> Result<String> {
    let mut stream = connect(bridge, &Request::Change(change))?;
    // A reload reads the file and may rewrite many memberships.
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(io_error("setting a timeout"))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(io_error("reading from the snoop controller"))?;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "lowercase")]
    enum Answer {
        Ok(String),
        Error(String),
    }
    match serde_json::from_slice(&body).map_err(Error::BadAnswer)? {
        Answer::Ok(done) => Ok(done),
        Answer::Error(why) if why.starts_with(REFUSAL_PREFIX) => Err(Error::Refused(why)),
        Answer::Error(why) => Err(Error::ChangeFailed { bridge: bridge.to_owned(), why }),
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
    serde_json::from_slice::<Refusal>(body).ok().map(|r| Error::Refused(r.error))
}

/// Membership events from the controller on `bridge`, as they happen; ends
/// with [`Error::Stopped`] when the controller goes away.
pub fn watch(bridge: &str) -> Result<impl Iterator<Item = Result<(String, Event)>>> {
    let bridge = bridge.to_owned();
    let lines = BufReader::new(connect(&bridge, &Request::Watch)?).lines();
    let events = lines.map(|line| {
        let line = line.map_err(io_error("reading events"))?;
        if let Some(refusal) = refusal(line.as_bytes()) {
            return Err(refusal);
        }
        let event = serde_json::from_str(&line).map_err(Error::BadAnswer)?;
        Ok((line, event))
    });
    Ok(events.chain(std::iter::once_with(move || Err(Error::Stopped(bridge)))))
}

// ------------------------------------------------------------------ server

/// Binds the controller's socket; a second snoop on the same bridge is refused here.
pub(crate) fn bind(bridge: &str) -> Result<tokio::net::UnixListener> {
    let listener = std::os::unix::net::UnixListener::bind_addr(&socket_addr(bridge)?).map_err(|e| {
        if e.kind() == io::ErrorKind::AddrInUse {
            Error::AlreadyRunning(bridge.to_owned())
        } else {
            io_error("binding the control socket")(e)
        }
    })?;
    listener.set_nonblocking(true).map_err(io_error("binding the control socket"))?;
    tokio::net::UnixListener::from_std(listener).map_err(io_error("binding the control socket"))
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
    std::fs::read_to_string(format!("/proc/{pid}/status"))
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
