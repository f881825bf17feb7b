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
        set_option(&self.fd, libc::SOL_PACKET, PACKET_QDISC_BYPASS, &1 as &libc::c_int)
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

/// The queries the bridge's own host sends on the bridge device (a
/// multicast router running on it: FRR's pimd, igmpproxy), which no port's
/// program sees. Read from the sender's own socket, which never hears its
/// own frames back (the kernel skips a frame's sending socket), so snoop's
/// queries are not taken for the host's.
pub struct HostQueryTap {
    fd: OwnedFd,
}

impl FrameSender {
    /// Starts hearing the host's outgoing IGMP and MLD queries on the
    /// interface; nothing else reaches the socket (a classic BPF filter).
    pub fn host_query_tap(&self) -> io::Result<HostQueryTap> {
        let fd = self.fd.try_clone()?;
        let program = host_query_filter();
        let filter = libc::sock_fprog { len: program.len() as u16, filter: program.as_ptr() as *mut _ };
        set_option(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &filter)?;
        set_option(&fd, libc::SOL_PACKET, libc::PACKET_AUXDATA, &1 as &libc::c_int)?;
        // Bound to every protocol on the interface only now, filter in place.
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = (libc::ETH_P_ALL as u16).to_be();
        addr.sll_ifindex = self.ifindex as i32;
        // SAFETY: addr is a valid sockaddr_ll for its length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(HostQueryTap { fd })
    }
}

impl AsRawFd for HostQueryTap {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl HostQueryTap {
    /// The next frame waiting, if any: its length in `frame`, and its VLAN
    /// when it was sent tagged (the tag rides beside the frame).
    pub fn recv(&self, frame: &mut [u8]) -> io::Result<Option<(usize, Option<u16>)>> {
        let mut iov = libc::iovec { iov_base: frame.as_mut_ptr().cast(), iov_len: frame.len() };
        let mut control = [0u64; 8];
        // SAFETY: an all-zero msghdr is valid; the buffers outlive the call.
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = size_of_val(&control);
        // SAFETY: recvmsg into the buffers described by `message`.
        let received = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut message, libc::MSG_DONTWAIT) };
        if received < 0 {
            let error = io::Error::last_os_error();
            return match error.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                _ => Err(error),
            };
        }
        let mut vlan = None;
        // SAFETY: walking the control messages recvmsg wrote, as CMSG_* do.
        unsafe {
            let mut header = libc::CMSG_FIRSTHDR(&message);
            while !header.is_null() {
                if (*header).cmsg_level == libc::SOL_PACKET && (*header).cmsg_type == libc::PACKET_AUXDATA {
                    let aux = libc::CMSG_DATA(header).cast::<libc::tpacket_auxdata>().read_unaligned();
                    if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                        vlan = Some(aux.tp_vlan_tci & 0x0fff);
                    }
                }
                header = libc::CMSG_NXTHDR(&message, header);
            }
        }
        Ok(Some((received as usize, vlan)))
    }
}

/// setsockopt(2) of `value` (what it points to must outlive the call only).
fn set_option<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for its size for the call.
    let rc =
        unsafe { libc::setsockopt(fd.as_raw_fd(), level, name, (value as *const T).cast(), size_of::<T>() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Classic BPF: outgoing frames only, IPv4 IGMP queries (type 0x11) and
/// MLD queries (ICMPv6 130 behind the hop-by-hop header with the router
/// alert every MLD message carries).
fn host_query_filter() -> [libc::sock_filter; 20] {
    const LD: u16 = libc::BPF_LD as u16;
    const LDX: u16 = libc::BPF_LDX as u16;
    const ABS: u16 = libc::BPF_ABS as u16;
    const IND: u16 = libc::BPF_IND as u16;
    const MSH: u16 = libc::BPF_MSH as u16;
    const W: u16 = libc::BPF_W as u16;
    const H: u16 = libc::BPF_H as u16;
    const B: u16 = libc::BPF_B as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    const PACKET_OUTGOING: u32 = 4;
    let op = |code: u16, jt: u8, jf: u8, k: u32| libc::sock_filter { code, jt, jf, k };
    // Jumps count the instructions skipped; 18 accepts, 19 drops.
    [
        op(LD | W | ABS, 0, 0, (libc::SKF_AD_OFF + libc::SKF_AD_PKTTYPE) as u32), // 0
        op(JEQ, 0, 17, PACKET_OUTGOING),                                          // 1
        op(LD | H | ABS, 0, 0, 12),                                               // 2: ethertype
        op(JEQ, 0, 5, 0x0800),                                                    // 3 → 9 if not IPv4
        op(LD | B | ABS, 0, 0, 23),                                               // 4: IP protocol
        op(JEQ, 0, 13, 2),                                                        // 5: IGMP
        op(LDX | B | MSH, 0, 0, 14),                                              // 6: X = IP header length
        op(LD | B | IND, 0, 0, 14),                                               // 7: IGMP type
        op(JEQ, 9, 10, 0x11),                                                     // 8: a query
        op(JEQ, 0, 9, 0x86dd),                                                    // 9: IPv6
        op(LD | B | ABS, 0, 0, 20),                                               // 10: next header
        op(JEQ, 0, 7, 0),                                                         // 11: hop-by-hop
        op(LD | B | ABS, 0, 0, 54),                                               // 12: its next header
        op(JEQ, 0, 5, 58),                                                        // 13: ICMPv6
        op(LD | B | ABS, 0, 0, 55),                                               // 14: its length
        op(JEQ, 0, 3, 0),                                                         // 15: 8 bytes
        op(LD | B | ABS, 0, 0, 62),                                               // 16: ICMPv6 type
        op(JEQ, 0, 1, 130),                                                       // 17: an MLD query
        op(RET, 0, 0, 0xffff),                                                    // 18: accept
        op(RET, 0, 0, 0),                                                         // 19: drop
    ]
}
