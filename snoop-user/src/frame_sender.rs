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

    /// Frames skip the interface's qdisc (PACKET_QDISC_BYPASS): a traffic
    /// generator's frames go straight to the driver.
    pub fn bypass_qdisc(&self) -> io::Result<()> {
        const PACKET_QDISC_BYPASS: libc::c_int = 20;
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with a valid int option value.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                PACKET_QDISC_BYPASS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `frame` (from its Ethernet header on) to its destination MAC.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.send_on(self.ifindex, frame)
    }

    /// Sends `frame` out of another interface, `ifindex`.
    pub fn send_on(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        let mut addr = self.destination(frame)?;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: frame and addr are valid for the given lengths.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Sends `frame` `copies` times (at most 64) in one sendmmsg call;
    /// returns how many went out.
    pub fn send_copies(&self, frame: &[u8], copies: usize) -> io::Result<usize> {
        let mut addr = self.destination(frame)?;
        let mut iov = libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() };
        // SAFETY: an all-zero mmsghdr is valid; the pointers outlive the call.
        let mut messages: [libc::mmsghdr; 64] = unsafe { std::mem::zeroed() };
        for m in &mut messages {
            m.msg_hdr.msg_name = (&mut addr as *mut libc::sockaddr_ll).cast();
            m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_ll>() as u32;
            m.msg_hdr.msg_iov = &mut iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `messages` holds `copies.min(64)` initialised headers.
        let sent = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), messages.as_mut_ptr(), copies.min(64) as u32, 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(sent as usize)
    }

    fn destination(&self, frame: &[u8]) -> io::Result<libc::sockaddr_ll> {
        if frame.len() < 14 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "a frame needs an Ethernet header"));
        }
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        Ok(addr)
    }
}
