//! TC clsact filters over rtnetlink, by interface index: how the programs are
//! attached on kernels without TCX links (before Linux 6.6).
//!
//! A filter carries a name the kernel only stores (`tc filter show` prints
//! it); snoop's name says which bridge's snoop put it there, so a restart
//! finds and replaces its own filters in place (atomically: no frame sees no
//! program) and never touches anyone else's.
use std::{io, os::fd::RawFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption},
    AddressFamily, RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Which hook of the clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

impl Hook {
    fn parent(self) -> TcHandle {
        let minor = match self {
            Hook::Ingress => TcHandle::MIN_INGRESS,
            Hook::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle { major: u16::MAX, minor }
    }
}

/// One filter of ours: where it sits, to replace or delete it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub ifindex: u32,
    pub hook: Hook,
    pub priority: u16,
    pub handle: u32,
}

const ETH_P_ALL: u16 = 0x0003;

/// A filter's name: the bridge it belongs to and the program it runs.
pub fn filter_name(bridge_ifindex: u32, program: &str) -> String {
    format!("snoop@{bridge_ifindex}:{program}")
}

/// A synchronous rtnetlink socket for TC requests.
pub struct Tc {
    socket: Socket,
    sequence: u32,
}

impl Tc {
    pub fn open() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self { socket, sequence: 0 })
    }

    /// Adds the clsact qdisc to the interface unless it has one.
    pub fn add_clsact(&mut self, ifindex: u32) -> io::Result<()> {
        let message = qdisc_message(ifindex);
        match self.request(RouteNetlinkMessage::NewQueueDiscipline(message), NLM_F_CREATE | NLM_F_EXCL) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes the clsact qdisc if no filter is left on it (ours are gone; a
    /// clsact without filters does nothing, so nobody else loses anything).
    pub fn remove_clsact_if_empty(&mut self, ifindex: u32) -> io::Result<()> {
        for hook in [Hook::Ingress, Hook::Egress] {
            if !self.filters(ifindex, hook)?.is_empty() {
                return Ok(());
            }
        }
        match self.request(RouteNetlinkMessage::DelQueueDiscipline(qdisc_message(ifindex)), 0) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The BPF filters on one hook of an interface, with their names.
    pub fn filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<(Filter, String)>> {
        let mut message = TcMessage::with_index(ifindex as i32);
        message.header.parent = hook.parent();
        let replies = match self.request(RouteNetlinkMessage::GetTrafficFilter(message), NLM_F_DUMP) {
            // No clsact qdisc, or the interface is gone: no filters.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => Vec::new(),
            other => other?,
        };
        let mut filters = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewTrafficFilter(message) = reply else { continue };
            let name = message.attributes.iter().find_map(|a| match a {
                TcAttribute::Options(options) => options.iter().find_map(|o| match o {
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => Some(name.clone()),
                    _ => None,
                }),
                _ => None,
            });
            // The chain's head entry (handle 0) names no program.
            if let (Some(name), true) = (name, u32::from(message.header.handle) != 0) {
                let priority = (message.header.info >> 16) as u16;
                let filter = Filter { ifindex, hook, priority, handle: message.header.handle.into() };
                filters.push((filter, name));
            }
        }
        Ok(filters)
    }

    /// Every filter on one hook of an interface, whoever put it there and of
    /// whatever kind, as (priority, handle) in the order they run.
    pub fn all_filters(&mut self, ifindex: u32, hook: Hook) -> io::Result<Vec<(u16, u32)>> {
        let mut message = TcMessage::with_index(ifindex as i32);
        message.header.parent = hook.parent();
        let replies = match self.request(RouteNetlinkMessage::GetTrafficFilter(message), NLM_F_DUMP) {
            // No clsact (or ingress) qdisc, or the interface is gone: no filters.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => Vec::new(),
            other => other?,
        };
        let mut filters: Vec<(u16, u32)> = replies
            .into_iter()
            .filter_map(|reply| match reply {
                // Each chain's head entry (handle 0) is no filter.
                RouteNetlinkMessage::NewTrafficFilter(m) if u32::from(m.header.handle) != 0 => {
                    Some(((m.header.info >> 16) as u16, u32::from(m.header.handle)))
                }
                _ => None,
            })
            .collect();
        filters.sort_unstable();
        Ok(filters)
    }

    /// Attaches program `fd` as filter `name`: in place of `existing` (an
    /// atomic replace), else as a new filter ahead of any other.
    pub fn attach(
        &mut self,
        ifindex: u32,
        hook: Hook,
        fd: RawFd,
        name: &str,
        existing: Option<Filter>,
    ) -> io::Result<Filter> {
        let (priority, handle, flags) = match existing {
            Some(filter) => (filter.priority, filter.handle, NLM_F_CREATE),
            // Priority 0: the kernel puts it ahead of the existing filters.
            None => (0, 1, NLM_F_CREATE | NLM_F_EXCL),
        };
        let mut message = TcMessage::with_index(ifindex as i32);
        message.header.parent = hook.parent();
        message.header.handle = handle.into();
        message.header.info = (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("bpf".into()));
        message.attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(fd as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_owned())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
        self.request(RouteNetlinkMessage::NewTrafficFilter(message), flags)?;
        if existing.is_some() {
            return Ok(Filter { ifindex, hook, priority, handle });
        }
        // Read back where the kernel put it.
        self.filters(ifindex, hook)?
            .into_iter()
            .find(|(_, n)| n == name)
            .map(|(filter, _)| filter)
            .ok_or_else(|| io::Error::other("the new filter is not listed"))
    }

    /// Removes one filter; a filter (or interface) already gone is fine.
    pub fn detach(&mut self, filter: Filter) -> io::Result<()> {
        let mut message = TcMessage::with_index(filter.ifindex as i32);
        message.header.parent = filter.hook.parent();
        message.header.handle = filter.handle.into();
        message.header.info = (u32::from(filter.priority) << 16) | u32::from(ETH_P_ALL.to_be());
        message.attributes.push(TcAttribute::Kind("bpf".into()));
        match self.request(RouteNetlinkMessage::DelTrafficFilter(message), 0) {
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::EINVAL | libc::ENODEV)) => Ok(()),
            other => other.map(drop),
        }
    }

    /// Sends one request and collects the replies until its ACK or the end of its dump.
    fn request(&mut self, payload: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut message = NetlinkMessage::new(header, NetlinkPayload::from(payload));
        message.finalize();
        let mut buffer = vec![0; message.buffer_len()];
        message.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut replies = Vec::new();
        loop {
            let (bytes, _) = self.socket.recv_from_full()?;
            let mut at = 0;
            while at < bytes.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&bytes[at..])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "a zero-length netlink message"));
                }
                at += length;
                if reply.header.sequence_number != self.sequence {
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies), // the ACK
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    _ => {}
                }
            }
        }
    }
}

fn qdisc_message(ifindex: u32) -> TcMessage {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header = TcHeader {
        family: AddressFamily::Unspec,
        index: ifindex as i32,
        handle: TcHandle { major: 0xffff, minor: 0 },
        parent: TcHandle::CLSACT,
        info: 0,
    };
    message.attributes.push(TcAttribute::Kind("clsact".into()));
    message
}
