//! Raw netlink where the rtnetlink crate has no API (nexthop objects,
//! nf_tables chains): building a request header, splitting a reply into
//! messages and finding an attribute. Lengths are checked, never trusted.
use std::io;

use netlink_sys::{Socket, SocketAddr};

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_ACK: u16 = 4;
pub const NLM_F_DUMP: u16 = 0x300;
/// struct nlmsghdr.
pub const HEADER_LEN: usize = 16;

/// A netlink header for a message of `kind` whose payload is `payload` bytes.
pub fn header(kind: u16, flags: u16, payload: usize) -> Vec<u8> {
    let mut message = Vec::with_capacity(HEADER_LEN + payload);
    message.extend_from_slice(&u32::try_from(HEADER_LEN + payload).unwrap_or(u32::MAX).to_ne_bytes());
    message.extend_from_slice(&kind.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id
    message
}

/// A netlink socket of `protocol` (NETLINK_*), talking to the kernel.
pub fn open(protocol: isize) -> io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// Sends a dump `request` and hands each message of the answer to `each`,
/// (type, payload), until its end, or an error (which a kernel answers
/// where it has nothing to dump, say without nexthop support).
pub fn dump(protocol: isize, request: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
    let socket = open(protocol)?;
    socket.send(request, 0)?;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        for (kind, payload) in messages(&reply)? {
            match kind {
                NLMSG_DONE | NLMSG_ERROR => return Ok(()),
                _ => each(kind, payload),
            }
        }
    }
}

/// The messages in one netlink reply: (type, payload).
pub fn messages(reply: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut found = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= reply.len() {
        let length = u32::from_ne_bytes(reply[at..at + 4].try_into().expect("4 bytes")) as usize;
        let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().expect("2 bytes"));
        if length < HEADER_LEN || at + length > reply.len() {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "a malformed netlink message"));
        }
        found.push((kind, &reply[at + HEADER_LEN..at + length]));
        at += (length + 3) & !3;
    }
    Ok(found)
}

/// The payload of the attribute of `kind` in a list, if there is one.
pub fn attribute(mut attributes: &[u8], kind: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        if length < 4 || length > attributes.len() {
            return None;
        }
        // The top bits are flags (nested, byte order).
        if u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff == kind {
            return Some(&attributes[4..length]);
        }
        attributes = attributes.get((length + 3) & !3..).unwrap_or_default();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_attributes_are_split_and_bad_lengths_refused() {
        let mut reply = header(20, 0, 8);
        reply.extend_from_slice(&[8, 0, 5, 0x80, 1, 2, 3, 4]); // a nested attribute 5
        let mut second = header(NLMSG_DONE, 0, 0);
        reply.append(&mut second);
        let found = messages(&reply).unwrap();
        assert_eq!(found.iter().map(|(kind, _)| *kind).collect::<Vec<_>>(), [20, NLMSG_DONE]);
        assert_eq!(attribute(found[0].1, 5), Some(&[1, 2, 3, 4][..]));
        assert_eq!(attribute(found[0].1, 6), None);
        // An attribute longer than what is left, a message longer than the reply.
        assert_eq!(attribute(&[200, 0, 5, 0, 1, 2], 5), None);
        reply[0] = 200;
        assert!(messages(&reply).is_err());
    }
}
