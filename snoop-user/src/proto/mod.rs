//! Control messages in the one shape the membership state machine reads,
//! whatever the protocol: a parser turns a captured IP packet into a
//! [`Packet`], whose [`Message`] and [`GroupRecord`]s (filter mode changes
//! and source lists, as IGMPv3 and MLDv2 share them) are generic over the
//! address family ([`Family`]).
//!
//! - [`igmp`]: IGMPv1/v2/v3 and PIM hellos over IPv4, and the query builder.
//! - [`mld`]: MLDv1/v2 and PIM hellos over IPv6, and the query builder.
//!
//! Both read group records with the one [`parse_group_records`].
pub mod igmp;
pub mod mld;

use std::{
    fmt::{Debug, Display},
    hash::Hash,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use snoop_common::{
    wire::{is_snooped_ipv4, is_snooped_ipv6},
    FamilyFlags, GroupKey, SourceAddr, FAMILY_IPV4, FAMILY_IPV6, IPV4_FLAGS, IPV6_FLAGS,
};

/// An address family snoop snoops: what the state machine and the data path
/// need to know of its addresses.
pub trait Family: Copy + Ord + Hash + Debug + Display + Send + Sync + 'static {
    /// The tag in data path keys ([`GroupKey::family`]).
    const FAMILY: u8;
    /// The protocol, as versions are shown: "IGMP" (v1-v3), "MLD" (v1-v2).
    const PROTOCOL: &'static str;
    /// The version whose reports carry group records (IGMPv3, MLDv2).
    const RECORD_VERSION: u8;
    const UNSPECIFIED: Self;
    /// Bytes of an address on the wire.
    const ADDR_LEN: usize;
    /// The data path's port and config flags of this family.
    const FLAGS: FamilyFlags;

    fn is_unspecified(&self) -> bool;
    /// The address in the first [`Family::ADDR_LEN`] bytes of `bytes`.
    fn from_wire(bytes: &[u8]) -> Self;
    /// Groups snoop tracks per port; other multicast groups are always
    /// flooded. `link_scope` (IPv6 only): snoop link-scope groups too.
    fn is_snoopable(self, link_scope: bool) -> bool;
    /// Whether queries can be sent from `source`: hosts ignore MLD queries
    /// not from a link-local address (RFC 3810 5.1.14); IGMP allows 0.0.0.0
    /// (RFC 4541 2.1.1).
    fn can_query_from(source: Self) -> bool;
    /// Hosts of this version send no leaves (IGMPv1): while one is present on
    /// a port, a leave there cannot mean the group is unwanted (RFC 2236 4).
    fn sends_no_leaves(version: u8) -> bool;
    fn key(self, vlan: u16) -> GroupKey;
    fn from_key(key: &GroupKey) -> Option<Self>;
    /// The address as the data path's source keys hold it.
    fn source_key(self) -> SourceAddr;
    fn from_source_key(source: &SourceAddr) -> Self;
    fn ip(self) -> IpAddr;
    /// The address, if it is of this family.
    fn from_ip(ip: IpAddr) -> Option<Self>;
    /// Parses a captured IP packet of this family.
    fn parse(ip_packet: &[u8]) -> Result<Packet<Self>, ParseError>;
    /// Sources one query frame holds; more go in further queries (RFC 3376 4.1.8).
    const MAX_QUERY_SOURCES: usize;
    /// A complete Ethernet frame holding a query of `version` from `source`:
    /// general when `group` is `None`, group-and-source-specific with
    /// `sources` (at most [`Family::MAX_QUERY_SOURCES`]); `suppress`: the S flag.
    fn query_frame(
        source: QuerySource<Self>,
        group: Option<Self>,
        sources: &[Self],
        version: u8,
        timers: &QueryTimers,
        suppress: bool,
    ) -> Vec<u8>;
    /// A router discovery solicitation from `source` (RFC 4286).
    fn mrd_solicitation_frame(source_mac: [u8; 6], source: Self) -> Vec<u8>;
}

/// The S flag of IGMPv3 and MLDv2 queries: "Suppress Router-Side Processing".
pub const S_FLAG: u8 = 0x08;

/// Who sends a query: the bridge's MAC and the query source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuerySource<A> {
    pub mac: [u8; 6],
    pub address: A,
}

/// What a query announces: its max response time, and the querier's
/// robustness and query interval (IGMPv3 QRV/QQIC, MLDv2 QRV/QQIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryTimers {
    pub max_response: Duration,
    pub robustness: u8,
    pub query_interval: Duration,
}

impl Family for Ipv4Addr {
    const FAMILY: u8 = FAMILY_IPV4;
    const PROTOCOL: &'static str = "IGMP";
    const RECORD_VERSION: u8 = 3;
    const UNSPECIFIED: Self = Ipv4Addr::UNSPECIFIED;
    const ADDR_LEN: usize = 4;
    const FLAGS: FamilyFlags = IPV4_FLAGS;

    fn is_unspecified(&self) -> bool {
        Ipv4Addr::is_unspecified(self)
    }

    fn from_wire(bytes: &[u8]) -> Self {
        Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])
    }

    /// IPv4 multicast outside 224.0.0.0/24, which is always flooded (RFC 4541 2.1.2).
    fn is_snoopable(self, _link_scope: bool) -> bool {
        is_snooped_ipv4(self.octets())
    }

    fn can_query_from(_source: Self) -> bool {
        true
    }

    fn sends_no_leaves(version: u8) -> bool {
        version == 1
    }

    fn key(self, vlan: u16) -> GroupKey {
        GroupKey::ipv4(self.octets(), vlan)
    }

    fn from_key(key: &GroupKey) -> Option<Self> {
        key.ipv4_octets().map(Ipv4Addr::from)
    }

    fn source_key(self) -> SourceAddr {
        GroupKey::ipv4(self.octets(), 0).addr
    }

    fn from_source_key(source: &SourceAddr) -> Self {
        Self::from_wire(source)
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V4(ip) => Some(ip),
            IpAddr::V6(_) => None,
        }
    }

    fn ip(self) -> IpAddr {
        IpAddr::V4(self)
    }

    fn parse(ip_packet: &[u8]) -> Result<Packet<Self>, ParseError> {
        igmp::parse(ip_packet)
    }

    const MAX_QUERY_SOURCES: usize = igmp::MAX_QUERY_SOURCES;

    fn query_frame(
        source: QuerySource<Self>,
        group: Option<Self>,
        sources: &[Self],
        version: u8,
        timers: &QueryTimers,
        suppress: bool,
    ) -> Vec<u8> {
        igmp::build_query_frame(source, group, sources, version, timers, suppress)
    }

    fn mrd_solicitation_frame(source_mac: [u8; 6], source: Self) -> Vec<u8> {
        igmp::build_mrd_solicitation_frame(source_mac, source)
    }
}

impl Family for Ipv6Addr {
    const FAMILY: u8 = FAMILY_IPV6;
    const PROTOCOL: &'static str = "MLD";
    const RECORD_VERSION: u8 = 2;
    const UNSPECIFIED: Self = Ipv6Addr::UNSPECIFIED;
    const ADDR_LEN: usize = 16;
    const FLAGS: FamilyFlags = IPV6_FLAGS;

    fn is_unspecified(&self) -> bool {
        Ipv6Addr::is_unspecified(self)
    }

    fn from_wire(bytes: &[u8]) -> Self {
        mld::ipv6_at(bytes, 0)
    }

    /// IPv6 multicast but ff02::1 (RFC 4541 3), and outside link scope
    /// unless `link_scope`: neighbour discovery must not depend on snooping
    /// by default (see the data path's `ipv6_flooded`).
    fn is_snoopable(self, link_scope: bool) -> bool {
        is_snooped_ipv6(&self.octets(), link_scope)
    }

    fn can_query_from(source: Self) -> bool {
        mld::is_link_local(source)
    }

    /// MLDv1 hosts send dones: none is ever ignored.
    fn sends_no_leaves(_version: u8) -> bool {
        false
    }

    fn key(self, vlan: u16) -> GroupKey {
        GroupKey::ipv6(self.octets(), vlan)
    }

    fn from_key(key: &GroupKey) -> Option<Self> {
        key.ipv6_octets().map(Ipv6Addr::from)
    }

    fn source_key(self) -> SourceAddr {
        self.octets()
    }

    fn from_source_key(source: &SourceAddr) -> Self {
        Ipv6Addr::from(*source)
    }

    fn from_ip(ip: IpAddr) -> Option<Self> {
        match ip {
            IpAddr::V6(ip) => Some(ip),
            IpAddr::V4(_) => None,
        }
    }

    fn ip(self) -> IpAddr {
        IpAddr::V6(self)
    }

    fn parse(ip_packet: &[u8]) -> Result<Packet<Self>, ParseError> {
        mld::parse(ip_packet)
    }

    const MAX_QUERY_SOURCES: usize = mld::MAX_QUERY_SOURCES;

    fn query_frame(
        source: QuerySource<Self>,
        group: Option<Self>,
        sources: &[Self],
        version: u8,
        timers: &QueryTimers,
        suppress: bool,
    ) -> Vec<u8> {
        mld::build_query_frame(source, group, sources, version, timers, suppress)
    }

    fn mrd_solicitation_frame(source_mac: [u8; 6], source: Self) -> Vec<u8> {
        mld::build_mrd_solicitation_frame(source_mac, source)
    }
}

/// The group address in a data path key, whatever its family.
pub fn key_ip(key: &GroupKey) -> Option<IpAddr> {
    Ipv4Addr::from_key(key).map(Family::ip).or_else(|| Ipv6Addr::from_key(key).map(Family::ip))
}

/// The group records of an IGMPv3 or MLDv2 report (the same layout but for
/// the address length): `count` records from byte `at` of `msg`, as a
/// record report. Every record is checked to lie inside the message before
/// any is returned; one of an unknown type is skipped and counted (RFC 3376
/// 4.2.12: ignored), the rest read as usual.
pub fn parse_group_records<A: Family>(msg: &[u8], mut at: usize, count: u16) -> Result<Message<A>, ParseError> {
    let head_len = 4 + A::ADDR_LEN;
    let mut records = Vec::with_capacity(usize::from(count).min(msg.len() / head_len));
    let mut unknown_types = 0u16;
    for _ in 0..count {
        let head = msg.get(at..at + head_len).ok_or(ParseError::RecordOverrun)?;
        let record_type = RecordType::from_wire(head[0]);
        let aux_len = usize::from(head[1]) * 4;
        let source_count = usize::from(u16::from_be_bytes([head[2], head[3]]));
        let group = A::from_wire(&head[4..]);
        let sources_at = at + head_len;
        at = sources_at + source_count * A::ADDR_LEN + aux_len;
        if at > msg.len() {
            return Err(ParseError::RecordOverrun);
        }
        let Some(record_type) = record_type else {
            unknown_types = unknown_types.saturating_add(1);
            continue;
        };
        let sources = (0..source_count).map(|i| A::from_wire(&msg[sources_at + A::ADDR_LEN * i..])).collect();
        records.push(GroupRecord { record_type, group, sources });
    }
    Ok(Message::RecordReport { records, unknown_types })
}

/// Group record types (RFC 3376 4.2.12, RFC 3810 5.2.12: the same six).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RecordType {
    ModeIsInclude,
    ModeIsExclude,
    ChangeToInclude,
    ChangeToExclude,
    AllowNewSources,
    BlockOldSources,
}

impl RecordType {
    pub fn from_wire(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::ModeIsInclude,
            2 => Self::ModeIsExclude,
            3 => Self::ChangeToInclude,
            4 => Self::ChangeToExclude,
            5 => Self::AllowNewSources,
            6 => Self::BlockOldSources,
            _ => return None,
        })
    }
}

/// One group record of an IGMPv3 or MLDv2 report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRecord<A> {
    pub record_type: RecordType,
    pub group: A,
    pub sources: Vec<A>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<A> {
    /// A membership query; `group` is unspecified for a general query,
    /// `sources` name the sources of a group-and-source-specific one.
    /// `suppress`: the S flag, routers keep their timers (RFC 3376 4.1.5).
    /// `announced`: the querier's own timers, in IGMPv3 and MLDv2 queries.
    Query {
        version: u8,
        group: A,
        sources: Vec<A>,
        suppress: bool,
        max_response: Duration,
        announced: Option<Announced>,
    },
    /// A report without records (IGMPv1/v2, MLDv1).
    Report { version: u8, group: A },
    /// A leave (IGMPv2) or done (MLDv1).
    Leave { group: A },
    /// A report with group records (IGMPv3, MLDv2).
    /// `unknown_types`: records of a type this snoop does not know, skipped.
    RecordReport { records: Vec<GroupRecord<A>>, unknown_types: u16 },
    /// A PIM hello: a multicast router is behind the port.
    PimHello,
    /// Multicast router discovery (RFC 4286): a router is behind the port
    /// and advertises again within `interval`.
    MrdAdvertisement { interval: Duration },
    /// A router asks for advertisements (snoop has none to give).
    MrdSolicitation,
    /// The router that advertised is going away.
    MrdTermination,
}

/// What an IGMPv3 or MLDv2 querier announces of its own timers (QRV, QQIC);
/// zero means it said nothing (RFC 3376 4.1.6, 4.1.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Announced {
    pub robustness: u8,
    pub query_interval: Duration,
}

/// A validated control packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<A> {
    pub source: A,
    pub destination: A,
    pub message: Message<A>,
}

/// Why a captured packet was not used. Each is counted by the controller
/// under its [`ParseError::name`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, thiserror::Error)]
pub enum ParseError {
    #[error("the IP header is truncated or invalid")]
    BadIpHeader,
    #[error("the IP total length runs past the captured bytes")]
    Truncated,
    #[error("a fragment (control messages are never fragmented legitimately)")]
    Fragment,
    #[error("the message is shorter than its type requires")]
    ShortMessage,
    #[error("bad checksum")]
    BadChecksum,
    /// IGMP and MLD must be sent with TTL (hop limit) 1 (RFC 3376 4, RFC 3810 5).
    #[error("TTL (hop limit) is not 1")]
    BadTtl,
    #[error("a group record (its sources or aux data) runs past the message")]
    RecordOverrun,
    /// Flooded, not tracked (RFC 4541 2.1.1 (3)).
    #[error("a message type snoop does not interpret")]
    UnknownType,
    #[error("neither a membership message nor a PIM hello")]
    NotControl,
    /// Neither a v1/v2 (8 bytes) nor a v3 (12 or more) query: ignored (RFC 3376 7.1).
    #[error("a query of no version's length")]
    BadQueryLength,
    /// MLD must carry a hop-by-hop Router Alert (RFC 3810 5).
    #[error("no Router Alert option")]
    NoRouterAlert,
    /// MLD queries come from link-local addresses, reports also from :: (RFC 3810 5.1.14, RFC 3590).
    #[error("a source address the protocol does not allow")]
    BadSource,
}

impl ParseError {
    pub const ALL: [ParseError; 12] = [
        Self::BadIpHeader,
        Self::Truncated,
        Self::Fragment,
        Self::ShortMessage,
        Self::BadChecksum,
        Self::BadTtl,
        Self::RecordOverrun,
        Self::UnknownType,
        Self::NotControl,
        Self::BadQueryLength,
        Self::NoRouterAlert,
        Self::BadSource,
    ];

    /// A stable short name, for counters.
    pub const fn name(self) -> &'static str {
        match self {
            Self::BadIpHeader => "bad_ip_header",
            Self::Truncated => "truncated",
            Self::Fragment => "fragment",
            Self::ShortMessage => "short_message",
            Self::BadChecksum => "bad_checksum",
            Self::BadTtl => "bad_ttl",
            Self::RecordOverrun => "record_overrun",
            Self::UnknownType => "unknown_type",
            Self::NotControl => "not_control",
            Self::BadQueryLength => "bad_query_length",
            Self::NoRouterAlert => "no_router_alert",
            Self::BadSource => "bad_source",
        }
    }
}

/// RFC 1071 one's-complement sum; 0 over a message that carries a valid checksum.
pub fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = bytes.chunks_exact(2);
    for pair in &mut chunks {
        sum += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// RFC 3376 4.1.1 / RFC 3810 5.1.3 codes: below `1 << (mant_bits + 3)` the
/// value itself, above a floating-point number: a set top bit, 3 exponent
/// bits and `mant_bits` of mantissa. IGMPv3's codes and both protocols' QQIC
/// have 4 mantissa bits (8-bit codes), MLDv2's max response code 12 (16-bit).
fn decode_float_code(code: u32, mant_bits: u32) -> u32 {
    if code < 1 << (mant_bits + 3) {
        code
    } else {
        let mant = code & ((1 << mant_bits) - 1);
        let exp = (code >> mant_bits) & 0x07;
        (mant | 1 << mant_bits) << (exp + 3)
    }
}

/// Inverse of [`decode_float_code`], rounding down.
fn encode_float_code(value: u32, mant_bits: u32) -> u32 {
    if value < 1 << (mant_bits + 3) {
        return value;
    }
    for exp in 0..8u32 {
        let mant = (value >> (exp + 3)).saturating_sub(1 << mant_bits);
        if mant < 1 << mant_bits {
            return 1 << (mant_bits + 3) | exp << mant_bits | mant;
        }
    }
    (1 << (mant_bits + 4)) - 1
}

/// An 8-bit code: IGMPv3 max response code, IGMPv3 and MLDv2 QQIC.
pub fn decode_v3_code(code: u8) -> u32 {
    decode_float_code(code.into(), 4)
}

/// Inverse of [`decode_v3_code`], rounding down.
pub fn encode_v3_code(value: u32) -> u8 {
    encode_float_code(value, 4) as u8
}

/// MLDv2's 16-bit max response code (milliseconds).
pub fn decode_max_response_code(code: u16) -> u32 {
    decode_float_code(code.into(), 12)
}

/// Inverse of [`decode_max_response_code`], rounding down.
pub fn encode_max_response_code(ms: u32) -> u16 {
    encode_float_code(ms, 12) as u16
}
