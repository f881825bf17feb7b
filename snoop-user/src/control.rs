//! The control protocol between `snoop run` and its clients (`snoop show`,
//! `snoop watch`, the metrics endpoint): an abstract unix socket per bridge
//! and network namespace (nothing to clean up in the file system), one
//! request line, and one JSON document back, or JSON lines for `watch`, or
//! `{"error": "..."}` for a client that is refused.
//!
//! Anyone in the network namespace can connect to an abstract socket, so the
//! controller checks the peer's credentials: root, or a member of the
//! `--control-group`, may read. (Requests that change state, when there are
//! any, are root's only.) Requests are one short line, clients are few at a
//! time, and requests arriving together share one snapshot.
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

use crate::snapshot::{Event, EventKind, Snapshot};

/// What a client asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// The whole state: groups, ports, querier, counters, traffic.
    Snapshot,
    /// The same without groups and traffic: cheap however many groups there are.
    Counters,
    /// Membership events as they happen, one JSON line each.
    Watch,
}

impl Request {
    pub const fn as_str(self) -> &'static str {
        match self {
            Request::Snapshot => "snapshot",
            Request::Counters => "counters",
            Request::Watch => "watch",
        }
    }

    /// An empty line asks for a snapshot.
    pub fn parse(line: &str) -> Option<Self> {
        match line.trim() {
            "snapshot" | "" => Some(Request::Snapshot),
            "counters" => Some(Request::Counters),
            "watch" => Some(Request::Watch),
            _ => None,
        }
    }
}

/// Longest request line the controller reads.
pub const MAX_REQUEST_BYTES: u64 = 64;

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

fn connect(bridge: &str, request: Request) -> Result<UnixStream> {
    let mut stream = match UnixStream::connect_addr(&socket_addr(bridge)?) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Err(Error::NotRunning(bridge.to_owned())),
        Err(e) => return Err(io_error("connecting to the snoop controller")(e)),
    };
    stream.write_all(format!("{}\n", request.as_str()).as_bytes()).map_err(io_error("sending the request"))?;
    Ok(stream)
}

/// The state of the controller running on `bridge` in this network
/// namespace: everything, or (`Request::Counters`) without groups and traffic.
pub fn fetch(bridge: &str, request: Request) -> Result<Snapshot> {
    let mut stream = connect(bridge, request)?;
    // Generous: a bridge with 100k groups answers with megabytes of JSON.
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(io_error("setting a timeout"))?;
    let mut body = Vec::new();
    stream.read_to_end(&mut body).map_err(io_error("reading from the snoop controller"))?;
    if let Some(refusal) = refusal(&body) {
        return Err(refusal);
    }
    serde_json::from_slice(&body).map_err(Error::BadAnswer)
}

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
    let lines = BufReader::new(connect(&bridge, Request::Watch)?).lines();
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
    pub events: broadcast::Sender<Event>,
    pub access: Access,
    pub slots: Arc<tokio::sync::Semaphore>,
}

/// Serves one client on its own task, so a slow one never stalls snooping.
pub(crate) async fn serve(stream: tokio::net::UnixStream, server: Server) {
    let admission = admitted(&stream, server.access);
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    // Read before answering, refusals too: closing with a request unread
    // would reset the connection and lose the answer. A refused peer gets
    // only a moment, so a crowd of them ties nothing up.
    let patience = if admission.is_ok() { Duration::from_secs(2) } else { Duration::from_millis(100) };
    let _ = tokio::time::timeout(patience, reader.read_line(&mut line)).await;
    if let Err(why) = admission {
        return refuse(&mut write, &why).await;
    }
    let Ok(_slot) = server.slots.clone().try_acquire_owned() else {
        return refuse(&mut write, "busy: too many clients at once").await;
    };
    match Request::parse(&line) {
        Some(Request::Watch) => stream_events(&mut write, server.events.subscribe()).await,
        Some(request) => {
            if let Some(snapshot) = ask(&server.snapshots, request == Request::Counters).await {
                let body = serde_json::to_vec(&*snapshot).expect("snapshots serialize");
                let _ = tokio::time::timeout(Duration::from_secs(30), write.write_all(&body)).await;
            }
        }
        None => {} // not a request: hang up
    }
}

/// Root, or a member of the control group, may read.
fn admitted(stream: &tokio::net::UnixStream, access: Access) -> Result<(), String> {
    let peer = stream.peer_cred().map_err(|e| format!("no peer credentials: {e}"))?;
    if peer.uid() == 0 {
        return Ok(());
    }
    let member = access.group.is_some_and(|group| {
        peer.gid() == group || peer.pid().is_some_and(|pid| supplementary_groups(pid).contains(&group))
    });
    if member {
        return Ok(());
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
