//! The record in which the data path hands a control frame to the controller.
/// The record for packets up to a 1500-byte MTU's, most reports to a query.
pub const CAPTURE_LEN: usize = 2048;

/// Longer packets (reports on jumbo-frame or 64K-MTU links, one per query
/// with hundreds of records) take a record this large: any IP packet fits,
/// so no membership is lost to a report's size.
pub const LARGE_CAPTURE_LEN: usize = 65536;

/// Packets up to this long go into small ring records (most reports), so a
/// burst of reports fills the ring ten times slower than full-size records.
pub const SMALL_CAPTURE_LEN: usize = 128;

/// A control frame (IGMP or PIM) captured on a port's ingress, from its IP
/// header on. Ring records come in three sizes, `N` = [`SMALL_CAPTURE_LEN`],
/// [`CAPTURE_LEN`] or [`LARGE_CAPTURE_LEN`]; the header is the same, and
/// `captured_len` says how much of `data` is valid.
#[repr(C)]
pub struct CapturedFrame<const N: usize = CAPTURE_LEN> {
    /// Port the frame entered the bridge through.
    pub ifindex: u32,
    /// Bytes of `data` that are valid.
    pub captured_len: u16,
    /// Length of the IP packet on the wire (may exceed `captured_len`).
    pub wire_len: u16,
    pub vlan: u16,
    /// [`crate::FAMILY_IPV4`] (IGMP, PIM) or [`crate::FAMILY_IPV6`] (MLD, PIM).
    pub family: u8,
    pub _pad: [u8; 5],
    pub data: [u8; N],
}

// Powers of two: the data path bounds a copy's length with a mask, which
// every verifier tracks (see snoop-ebpf's capture).
const _: () = assert!(
    CAPTURE_LEN.is_power_of_two() && SMALL_CAPTURE_LEN.is_power_of_two() && LARGE_CAPTURE_LEN.is_power_of_two()
);
// Any IPv4 packet (total length is 16 bits) fits the large record.
const _: () = assert!(LARGE_CAPTURE_LEN > u16::MAX as usize);
const _: () = assert!(size_of::<CapturedFrame>() == 16 + CAPTURE_LEN);
const _: () = assert!(size_of::<CapturedFrame<SMALL_CAPTURE_LEN>>() == 16 + SMALL_CAPTURE_LEN);

/// The header of a ring record ([`CapturedFrame`] but its data), as the
/// controller reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureHeader {
    pub ifindex: u32,
    pub captured_len: u16,
    pub wire_len: u16,
    pub vlan: u16,
    pub family: u8,
}

impl CaptureHeader {
    /// Bytes before the data.
    pub const LEN: usize = core::mem::offset_of!(CapturedFrame, data);

    /// A record's header and its captured IP packet; None for a record too
    /// short to hold a header. The packet is cut to the record's length.
    pub fn read(record: &[u8]) -> Option<(Self, &[u8])> {
        let head = record.get(..Self::LEN)?;
        let u16_at = |at: usize| u16::from_ne_bytes([head[at], head[at + 1]]);
        let header = Self {
            ifindex: u32::from_ne_bytes([head[0], head[1], head[2], head[3]]),
            captured_len: u16_at(core::mem::offset_of!(CapturedFrame, captured_len)),
            wire_len: u16_at(core::mem::offset_of!(CapturedFrame, wire_len)),
            vlan: u16_at(core::mem::offset_of!(CapturedFrame, vlan)),
            family: head[core::mem::offset_of!(CapturedFrame, family)],
        };
        let end = (Self::LEN + usize::from(header.captured_len)).min(record.len());
        Some((header, &record[Self::LEN..end]))
    }
}
