//! Sending complete Ethernet frames out of one interface (AF_PACKET): the
//! querier's queries, and the labs' hand-made IGMP.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub struct FrameSender {
    fd: OwnedFd,
    ifindex: u32,
}

impl FrameSender {
    /// A send-only packet socket (protocol 0: it receives nothing) for the
    /// interface `ifindex` of the current network namespace. Needs CAP_NET_RAW.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by socket(2).
        Ok(Self { fd: unsafe { OwnedFd::from_raw_fd(fd) }, ifindex })
    }

    /// Sends `frame` (from its Ethernet header on) to its destination MAC.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        if frame.len() < 14 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a frame needs an Ethernet header"));
        }
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: frame and addr are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}
