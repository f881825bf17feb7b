//! The control protocol between `snoop run` and its clients (`snoop show`,
//! `snoop watch`, the metrics endpoint): an abstract unix socket per bridge
//! and network namespace (nothing to clean up in the file system), one
//! request line, and one JSON document back, or JSON lines for `watch`.
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
    serde_json::from_slice(&body).map_err(Error::BadAnswer)
}

/// Membership events from the controller on `bridge`, as they happen; ends
/// with [`Error::Stopped`] when the controller goes away.
pub fn watch(bridge: &str) -> Result<impl Iterator<Item = Result<(String, Event)>>> {
    let bridge = bridge.to_owned();
    let lines = BufReader::new(connect(&bridge, Request::Watch)?).lines();
    let events = lines.map(|line| {
        let line = line.map_err(io_error("reading events"))?;
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

/// Serves one client on its own task, so a slow one never stalls snooping.
pub(crate) async fn serve(stream: tokio::net::UnixStream, snapshots: Snapshots, events: broadcast::Sender<Event>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST_BYTES));
    let _ = tokio::time::timeout(Duration::from_secs(2), reader.read_line(&mut line)).await;
    match Request::parse(&line) {
        Some(Request::Watch) => stream_events(&mut write, events.subscribe()).await,
        Some(request) => {
            if let Some(snapshot) = ask(&snapshots, request == Request::Counters).await {
                let body = serde_json::to_vec(&*snapshot).expect("snapshots serialize");
                let _ = tokio::time::timeout(Duration::from_secs(30), write.write_all(&body)).await;
            }
        }
        None => {} // not a request: hang up
    }
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
