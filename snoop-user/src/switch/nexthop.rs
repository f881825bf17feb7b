//! Nexthop objects (`ip nexthop`), which the rtnetlink crate does not
//! speak: read and replaced over a netlink socket of their own. A route
//! that names one (`nhid N`) goes out of the nexthop's interface, so moving
//! an interface into the bridge moves its nexthops with it.
use std::io;

use netlink_sys::protocols::NETLINK_ROUTE;

use crate::netlink::{attribute, dump, header, messages, open, NLMSG_ERROR, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST};

const RTM_NEWNEXTHOP: u16 = 104;
const RTM_GETNEXTHOP: u16 = 106;
const NHA_ID: u16 = 1;
const NHA_OIF: u16 = 5;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;
/// The only nexthop flag a request may carry (the kernel's dumps add others).
const RTNH_F_ONLINK: u32 = 4;
/// struct nhmsg: family, scope, protocol, reserved, flags (u32).
const NHMSG_LEN: usize = 8;

/// One nexthop object as the kernel dumped it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nexthop {
    pub id: u32,
    /// Its interface (none for a group or a blackhole).
    pub oif: Option<u32>,
    header: [u8; NHMSG_LEN],
    attributes: Vec<u8>,
}

/// The nexthop objects that go out of one of `ifindexes`.
pub fn through(ifindexes: &[u32]) -> io::Result<Vec<Nexthop>> {
    let mut request = header(RTM_GETNEXTHOP, NLM_F_REQUEST | NLM_F_DUMP, NHMSG_LEN);
    request.extend_from_slice(&[0; NHMSG_LEN]);
    let mut found = Vec::new();
    // No nexthop support in this kernel: an error, nothing to move.
    dump(NETLINK_ROUTE, &request, |kind, payload| {
        if kind != RTM_NEWNEXTHOP || payload.len() < NHMSG_LEN {
            return;
        }
        let (head, attributes) = payload.split_at(NHMSG_LEN);
        let value =
            |kind| attribute(attributes, kind).and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
        let (Some(id), oif) = (value(NHA_ID), value(NHA_OIF)) else { return };
        if oif.is_some_and(|oif| ifindexes.contains(&oif)) {
            let header = head.try_into().expect("NHMSG_LEN bytes");
            found.push(Nexthop { id, oif, header, attributes: attributes.to_vec() });
        }
    })?;
    Ok(found)
}

/// Replaces `nexthop` with the same one out of `oif` (or makes it anew, as
/// it was, if it is gone).
pub fn set_oif(nexthop: &Nexthop, oif: u32) -> io::Result<()> {
    let socket = open(NETLINK_ROUTE)?;
    socket.send(&nexthop.request(oif), 0)?;
    let (reply, _) = socket.recv_from_full()?;
    for (kind, payload) in messages(&reply)? {
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes(payload.get(..4).unwrap_or(&[0; 4]).try_into().expect("4 bytes"));
            return if code == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(-code)) };
        }
    }
    Ok(())
}

impl Nexthop {
    /// The RTM_NEWNEXTHOP request that makes this nexthop go out of `oif`:
    /// its attributes as dumped but the interface, its flags but those only
    /// the kernel sets.
    fn request(&self, oif: u32) -> Vec<u8> {
        let mut attributes = Vec::with_capacity(self.attributes.len());
        let mut rest = self.attributes.as_slice();
        while rest.len() >= 4 {
            let length = usize::from(u16::from_ne_bytes([rest[0], rest[1]]));
            if length < 4 || length > rest.len() {
                break;
            }
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
            if kind == NHA_OIF {
                attributes.extend_from_slice(&rest[..4]);
                attributes.extend_from_slice(&oif.to_ne_bytes());
            } else {
                attributes.extend_from_slice(&rest[..length]);
            }
            attributes.resize((attributes.len() + 3) & !3, 0);
            rest = rest.get((length + 3) & !3..).unwrap_or_default();
        }
        let mut head = self.header;
        // The scope the kernel shows, and the reserved byte, must be 0 in a request.
        head[1] = 0;
        head[3] = 0;
        let flags = u32::from_ne_bytes(head[4..8].try_into().expect("4 bytes")) & RTNH_F_ONLINK;
        head[4..8].copy_from_slice(&flags.to_ne_bytes());
        let flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE | NLM_F_CREATE;
        let mut request = header(RTM_NEWNEXTHOP, flags, NHMSG_LEN + attributes.len());
        request.extend_from_slice(&head);
        request.extend_from_slice(&attributes);
        request
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interface_is_rewritten_and_everything_else_kept() {
        // NHA_ID 10, NHA_GATEWAY 10.99.0.10, NHA_OIF 3; flags: onlink and dead.
        let mut attributes = vec![8, 0, 1, 0];
        attributes.extend_from_slice(&10u32.to_ne_bytes());
        attributes.extend_from_slice(&[8, 0, 6, 0, 10, 99, 0, 10, 8, 0, 5, 0]);
        attributes.extend_from_slice(&3u32.to_ne_bytes());
        let mut header = [2, 0xfd, 4, 0, 0, 0, 0, 0];
        header[4..].copy_from_slice(&(RTNH_F_ONLINK | 1).to_ne_bytes());
        let nexthop = Nexthop { id: 10, oif: Some(3), header, attributes };
        let request = nexthop.request(7);
        let messages = messages(&request).unwrap();
        assert_eq!(messages.len(), 1);
        let (kind, payload) = messages[0];
        assert_eq!(kind, RTM_NEWNEXTHOP);
        let (head, attributes) = payload.split_at(NHMSG_LEN);
        assert_eq!(u32::from_ne_bytes(head[4..].try_into().unwrap()), RTNH_F_ONLINK, "dead is the kernel's");
        assert_eq!(head[..4], [2, 0, 4, 0], "the family and protocol kept, the scope the kernel's");
        assert_eq!(attribute(attributes, NHA_OIF), Some(&7u32.to_ne_bytes()[..]));
        assert_eq!(attribute(attributes, NHA_ID), Some(&10u32.to_ne_bytes()[..]));
        assert_eq!(attribute(attributes, 6), Some(&[10, 99, 0, 10][..]));
    }
}
