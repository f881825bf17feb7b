//! The IGMP (v1, v2, v3) and PIM hello parser, and the IGMP query builder.
//!
//! Input is an IPv4 packet as the data path captured it (from the IP header on).
//! Everything is validated before anything is returned, so a malformed report
//! never changes membership halfway.
use std::{net::Ipv4Addr, time::Duration};

use etherparse::Ipv4HeaderSlice;

use super::{
    decode_v3_code, encode_v3_code, internet_checksum, parse_group_records, Announced, ParseError, QuerySource,
    QueryTimers, S_FLAG,
};

use snoop_common::wire::{
    IGMP_MRD_ADVERTISEMENT as TYPE_MRD_ADVERTISEMENT, IGMP_MRD_SOLICITATION as TYPE_MRD_SOLICITATION,
    IGMP_MRD_TERMINATION as TYPE_MRD_TERMINATION, IGMP_QUERY as TYPE_QUERY, IGMP_V1_REPORT as TYPE_V1_REPORT,
    IGMP_V2_LEAVE as TYPE_V2_LEAVE, IGMP_V2_REPORT as TYPE_V2_REPORT, IGMP_V3_REPORT as TYPE_V3_REPORT,
    IPV4_ALL_ROUTERS, IPV4_ALL_SYSTEMS, PIM_HELLO,
};
pub use snoop_common::wire::{IPPROTO_IGMP, IPPROTO_PIM};

/// 224.0.0.1, the destination of general queries.
pub const ALL_SYSTEMS: Ipv4Addr =
    Ipv4Addr::new(IPV4_ALL_SYSTEMS[0], IPV4_ALL_SYSTEMS[1], IPV4_ALL_SYSTEMS[2], IPV4_ALL_SYSTEMS[3]);
/// Sources of one query in a 1500-byte frame: 1500 - IP header with
/// Router Alert (24) - query header (12), over 4.
pub const MAX_QUERY_SOURCES: usize = 366;
/// IPv4 Router Alert option (RFC 2113), carried by queries snoop sends.
const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

pub type Packet = super::Packet<Ipv4Addr>;
pub type Message = super::Message<Ipv4Addr>;
pub type GroupRecord = super::GroupRecord<Ipv4Addr>;

/// Parses an IPv4 packet carrying IGMP or a PIM hello.
pub fn parse(ip_packet: &[u8]) -> Result<Packet, ParseError> {
    let header = Ipv4HeaderSlice::from_slice(ip_packet).map_err(|_| ParseError::BadIpHeader)?;
    let header_len = header.slice().len();
    let total_len = usize::from(header.total_len());
    if total_len < header_len {
        return Err(ParseError::BadIpHeader);
    }
    if total_len > ip_packet.len() {
        return Err(ParseError::Truncated);
    }
    if header.more_fragments() || header.fragments_offset().value() != 0 {
        return Err(ParseError::Fragment);
    }
    let payload = &ip_packet[header_len..total_len];
    let source = header.source_addr();
    let destination = header.destination_addr();
    let message = match header.protocol().0 {
        IPPROTO_IGMP => {
            if header.ttl() != 1 {
                return Err(ParseError::BadTtl);
            }
            parse_igmp(payload)?
        }
        IPPROTO_PIM => parse_pim(payload)?,
        _ => return Err(ParseError::NotControl),
    };
    Ok(Packet { source, destination, message })
}

fn parse_igmp(msg: &[u8]) -> Result<Message, ParseError> {
    // Router discovery solicitations and terminations are 4 bytes, the rest 8 or more.
    let min_len = if matches!(msg.first(), Some(&(TYPE_MRD_SOLICITATION | TYPE_MRD_TERMINATION))) { 4 } else { 8 };
    if msg.len() < min_len {
        return Err(ParseError::ShortMessage);
    }
    if internet_checksum(msg) != 0 {
        return Err(ParseError::BadChecksum);
    }
    match msg[0] {
        TYPE_MRD_ADVERTISEMENT => {
            return Ok(Message::MrdAdvertisement { interval: Duration::from_secs(msg[1].into()) })
        }
        TYPE_MRD_SOLICITATION => return Ok(Message::MrdSolicitation),
        TYPE_MRD_TERMINATION => return Ok(Message::MrdTermination),
        _ => {}
    }
    let group = ipv4_at(msg, 4);
    match msg[0] {
        TYPE_QUERY => parse_query(msg, group),
        TYPE_V1_REPORT => Ok(Message::Report { version: 1, group }),
        TYPE_V2_REPORT => Ok(Message::Report { version: 2, group }),
        TYPE_V2_LEAVE => Ok(Message::Leave { group }),
        TYPE_V3_REPORT => parse_v3_report(msg),
        _ => Err(ParseError::UnknownType),
    }
}

/// Query version per RFC 3376 7.1: by length, then by max response code;
/// 9 to 11 bytes is no version's query and is ignored.
fn parse_query(msg: &[u8], group: Ipv4Addr) -> Result<Message, ParseError> {
    let code = msg[1];
    let (version, max_response, announced) = match msg.len() {
        8 if code == 0 => (1, Duration::from_secs(10), None),
        8 => (2, Duration::from_millis(100 * u64::from(code)), None),
        9..=11 => return Err(ParseError::BadQueryLength),
        _ => {
            let announced = Announced {
                robustness: msg[8] & 0x07,
                query_interval: Duration::from_secs(decode_v3_code(msg[9]).into()),
            };
            (3, Duration::from_millis(100 * u64::from(decode_v3_code(code))), Some(announced))
        }
    };
    let (sources, suppress) = if version == 3 {
        let count = usize::from(u16::from_be_bytes([msg[10], msg[11]]));
        let listed = msg.get(12..12 + 4 * count).ok_or(ParseError::RecordOverrun)?;
        (listed.chunks_exact(4).map(|s| ipv4_at(s, 0)).collect(), msg[8] & S_FLAG != 0)
    } else {
        (Vec::new(), false)
    };
    Ok(Message::Query { version, group, sources, suppress, max_response, announced })
}

fn parse_v3_report(msg: &[u8]) -> Result<Message, ParseError> {
    let record_count = u16::from_be_bytes([msg[6], msg[7]]);
    parse_group_records(msg, 8, record_count)
}

fn parse_pim(msg: &[u8]) -> Result<Message, ParseError> {
    if msg.len() < 4 {
        return Err(ParseError::ShortMessage);
    }
    if msg[0] != PIM_HELLO {
        return Err(ParseError::NotControl);
    }
    if internet_checksum(msg) != 0 {
        return Err(ParseError::BadChecksum);
    }
    Ok(Message::PimHello)
}

fn ipv4_at(bytes: &[u8], at: usize) -> Ipv4Addr {
    Ipv4Addr::new(bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3])
}

/// Builds a complete Ethernet frame holding a query of `version`: IGMPv3
/// (which v2 and v1 hosts also answer, RFC 3376 7.2.1), or the 8-byte v2 or
/// v1 query for networks with older routers (RFC 3376 7.3.1).
///
/// A general query goes to 224.0.0.1; a group-specific one to the group, with
/// the S flag clear so routers lower their timers as we do. `sources` make
/// it group-and-source-specific (IGMPv3 only: older queries cannot say so
/// and ask for the whole group).
pub fn build_query_frame(
    source: QuerySource<Ipv4Addr>,
    group: Option<Ipv4Addr>,
    sources: &[Ipv4Addr],
    version: u8,
    timers: &QueryTimers,
    suppress: bool,
) -> Vec<u8> {
    let QueryTimers { max_response, robustness, query_interval } = *timers;
    let group_addr = group.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let destination = group.unwrap_or(ALL_SYSTEMS);
    let tenths = u32::try_from(max_response.as_millis() / 100).unwrap_or(u32::MAX).max(1);
    // A frame holds at most this many (RFC 3376 4.1.8: the rest in another query).
    let sources = if version >= 3 && group.is_some() { &sources[..sources.len().min(MAX_QUERY_SOURCES)] } else { &[] };

    let mut igmp = vec![0u8; if version >= 3 { 12 + 4 * sources.len() } else { 8 }];
    igmp[0] = TYPE_QUERY;
    igmp[1] = match version {
        1 => 0,
        2 => u8::try_from(tenths).unwrap_or(u8::MAX),
        _ => encode_v3_code(tenths),
    };
    igmp[4..8].copy_from_slice(&group_addr.octets());
    if version >= 3 {
        igmp[8] = robustness.min(7) | if suppress { S_FLAG } else { 0 };
        igmp[9] = encode_v3_code(u32::try_from(query_interval.as_secs()).unwrap_or(u32::MAX));
        igmp[10..12].copy_from_slice(&(sources.len() as u16).to_be_bytes());
        for (i, source) in sources.iter().enumerate() {
            igmp[12 + 4 * i..16 + 4 * i].copy_from_slice(&source.octets());
        }
    }
    let checksum = internet_checksum(&igmp);
    igmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    ipv4_frame(source.mac, source.address, destination, &igmp)
}

/// A multicast router discovery solicitation (RFC 4286 4): routers that
/// speak MRD answer with an advertisement at once.
pub fn build_mrd_solicitation_frame(source_mac: [u8; 6], source: Ipv4Addr) -> Vec<u8> {
    let mut igmp = [TYPE_MRD_SOLICITATION, 0, 0, 0];
    let checksum = internet_checksum(&igmp);
    igmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    ipv4_frame(source_mac, source, Ipv4Addr::from(IPV4_ALL_ROUTERS), &igmp)
}

/// An Ethernet frame around an IGMP message: TTL 1, Router Alert, the
/// group's multicast MAC.
fn ipv4_frame(source_mac: [u8; 6], source: Ipv4Addr, destination: Ipv4Addr, igmp: &[u8]) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(
        igmp.len() as u16,
        1,
        etherparse::IpNumber::IGMP,
        source.octets(),
        destination.octets(),
    )
    .expect("an IGMP message fits an IPv4 packet");
    ip.options = ROUTER_ALERT[..].try_into().expect("4-byte option");
    ip.set_payload_len(igmp.len()).expect("a short payload");
    ip.header_checksum = ip.calc_header_checksum();

    let destination_mac = snoop_common::wire::ipv4_group_mac(destination.octets());
    let mut frame = Vec::with_capacity(14 + ip.header_len() + igmp.len());
    frame.extend_from_slice(&destination_mac);
    frame.extend_from_slice(&source_mac);
    frame.extend_from_slice(&0x0800u16.to_be_bytes());
    ip.write(&mut frame).expect("writing to a Vec");
    frame.extend_from_slice(igmp);
    frame
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::RecordType;

    /// An IPv4 packet around `payload`, as a host's kernel would send it.
    pub fn ip_packet(protocol: u8, ttl: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut ip =
            etherparse::Ipv4Header::new(payload.len() as u16, ttl, etherparse::IpNumber(protocol), src, dst).unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut out = ip.to_bytes().to_vec();
        out.extend_from_slice(payload);
        out
    }

    pub fn with_checksum(mut msg: Vec<u8>) -> Vec<u8> {
        msg[2] = 0;
        msg[3] = 0;
        let sum = internet_checksum(&msg);
        msg[2..4].copy_from_slice(&sum.to_be_bytes());
        msg
    }

    pub fn igmp(msg: Vec<u8>) -> Vec<u8> {
        ip_packet(IPPROTO_IGMP, 1, [10, 0, 0, 2], [224, 0, 0, 22], &with_checksum(msg))
    }

    pub fn v3_report(records: &[(u8, [u8; 4], u16)]) -> Vec<u8> {
        let mut msg = vec![TYPE_V3_REPORT, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&(records.len() as u16).to_be_bytes());
        for (kind, group, sources) in records {
            msg.extend_from_slice(&[*kind, 0]);
            msg.extend_from_slice(&sources.to_be_bytes());
            msg.extend_from_slice(group);
            for i in 0..*sources {
                msg.extend_from_slice(&[10, 1, (i >> 8) as u8, i as u8]);
            }
        }
        igmp(msg)
    }

    #[test]
    fn v2_report_and_leave() {
        let report = parse(&igmp(vec![0x16, 0, 0, 0, 239, 1, 1, 1])).unwrap();
        assert_eq!(report.message, Message::Report { version: 2, group: Ipv4Addr::new(239, 1, 1, 1) });
        assert_eq!(report.source, Ipv4Addr::new(10, 0, 0, 2));
        let leave = parse(&igmp(vec![0x17, 0, 0, 0, 239, 1, 1, 1])).unwrap();
        assert_eq!(leave.message, Message::Leave { group: Ipv4Addr::new(239, 1, 1, 1) });
        let v1 = parse(&igmp(vec![0x12, 0, 0, 0, 239, 2, 2, 2])).unwrap();
        assert_eq!(v1.message, Message::Report { version: 1, group: Ipv4Addr::new(239, 2, 2, 2) });
    }

    #[test]
    fn v3_report_all_record_types() {
        let records: Vec<_> = (1..=6).map(|t| (t, [239, 1, 1, t], u16::from(t % 2))).collect();
        let Message::RecordReport { records: parsed, .. } = parse(&v3_report(&records)).unwrap().message else {
            panic!("not a v3 report")
        };
        let kinds: Vec<_> = parsed.iter().map(|r| r.record_type).collect();
        assert_eq!(
            kinds,
            [
                RecordType::ModeIsInclude,
                RecordType::ModeIsExclude,
                RecordType::ChangeToInclude,
                RecordType::ChangeToExclude,
                RecordType::AllowNewSources,
                RecordType::BlockOldSources
            ]
        );
        assert_eq!(parsed[0].sources, [Ipv4Addr::new(10, 1, 0, 0)]);
        assert!(parsed[1].sources.is_empty());
        assert_eq!(parsed[5].group, Ipv4Addr::new(239, 1, 1, 6));
    }

    #[test]
    fn queries_by_version() {
        let v2 = parse(&igmp(vec![0x11, 100, 0, 0, 0, 0, 0, 0])).unwrap();
        assert_eq!(
            v2.message,
            Message::Query {
                sources: vec![],
                suppress: false,
                version: 2,
                group: Ipv4Addr::UNSPECIFIED,
                max_response: Duration::from_secs(10),
                announced: None
            }
        );
        let v1 = parse(&igmp(vec![0x11, 0, 0, 0, 0, 0, 0, 0])).unwrap();
        assert!(matches!(v1.message, Message::Query { version: 1, .. }));
        // QRV 2, QQIC 0x8c = (0xc | 0x10) << 3 = 224 s.
        let v3 = parse(&igmp(vec![0x11, 10, 0, 0, 239, 1, 1, 1, 2, 0x8c, 0, 0])).unwrap();
        assert_eq!(
            v3.message,
            Message::Query {
                sources: vec![],
                suppress: false,
                version: 3,
                group: Ipv4Addr::new(239, 1, 1, 1),
                max_response: Duration::from_secs(1),
                announced: Some(Announced { robustness: 2, query_interval: Duration::from_secs(224) })
            }
        );
        // 9 to 11 bytes: no version's query (RFC 3376 7.1).
        for len in 9..12 {
            let mut msg = vec![0x11, 100, 0, 0, 0, 0, 0, 0];
            msg.resize(len, 0);
            assert_eq!(parse(&igmp(msg)), Err(ParseError::BadQueryLength), "{len} bytes");
        }
    }

    #[test]
    fn router_discovery_messages() {
        // Advertisement: interval 20 s, query interval 125, robustness 2.
        let ad = parse(&igmp(vec![0x30, 20, 0, 0, 0, 125, 0, 2])).unwrap();
        assert_eq!(ad.message, Message::MrdAdvertisement { interval: Duration::from_secs(20) });
        assert_eq!(parse(&igmp(vec![0x31, 0, 0, 0])).unwrap().message, Message::MrdSolicitation);
        assert_eq!(parse(&igmp(vec![0x32, 0, 0, 0])).unwrap().message, Message::MrdTermination);
        assert_eq!(parse(&igmp(vec![0x30, 20, 0, 0])), Err(ParseError::ShortMessage));
        assert_eq!(parse(&igmp(vec![0x16, 0, 0, 0])), Err(ParseError::ShortMessage));
    }

    #[test]
    fn built_query_parses_back() {
        let timers = QueryTimers {
            max_response: Duration::from_secs(10),
            robustness: 2,
            query_interval: Duration::from_secs(125),
        };
        for version in [1, 2, 3] {
            // v1 has no group-specific queries (a v1 querier ignores leaves).
            let groups = if version == 1 { vec![None] } else { vec![None, Some(Ipv4Addr::new(239, 9, 9, 9))] };
            for group in groups {
                let frame = build_query_frame(
                    QuerySource { mac: [2, 0, 0, 0, 0, 1], address: Ipv4Addr::UNSPECIFIED },
                    group,
                    &[],
                    version,
                    &timers,
                    false,
                );
                let parsed = parse(&frame[14..]).unwrap();
                let max_response = if version == 1 { Duration::from_secs(10) } else { timers.max_response };
                let announced =
                    (version == 3).then_some(Announced { robustness: 2, query_interval: Duration::from_secs(125) });
                assert_eq!(
                    parsed.message,
                    Message::Query {
                        sources: vec![],
                        suppress: false,
                        version,
                        group: group.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        max_response,
                        announced
                    },
                    "v{version} {group:?}"
                );
                assert_eq!(parsed.destination, group.unwrap_or(ALL_SYSTEMS));
                assert_eq!(&frame[..3], &[0x01, 0x00, 0x5e]);
            }
        }
        // A v2 max response time is one byte of tenths: 25.5 s at most.
        let long = QueryTimers { max_response: Duration::from_secs(60), ..timers };
        let frame = build_query_frame(
            QuerySource { mac: [2, 0, 0, 0, 0, 1], address: Ipv4Addr::UNSPECIFIED },
            None,
            &[],
            2,
            &long,
            false,
        );
        assert!(
            matches!(parse(&frame[14..]).unwrap().message, Message::Query { version: 2, max_response, .. } if max_response == Duration::from_millis(25_500))
        );
    }

    #[test]
    fn v3_code_round_trips() {
        for tenths in [1, 10, 100, 127, 128, 1000, 1250, 31744] {
            let decoded = decode_v3_code(encode_v3_code(tenths));
            assert!(decoded <= tenths && decoded * 100 >= tenths * 93, "{tenths} -> {decoded}");
        }
    }

    #[test]
    fn malformed_input_is_rejected_not_panicking() {
        let good = v3_report(&[(2, [239, 1, 1, 1], 0), (4, [239, 1, 1, 2], 3)]);
        // Every truncation is an error, never a panic or a partial result.
        for len in 0..good.len() {
            assert!(parse(&good[..len]).is_err(), "accepted {len} bytes");
        }
        let mut bad_sum = good.clone();
        let last = bad_sum.len() - 1;
        bad_sum[last] ^= 0xff;
        assert_eq!(parse(&bad_sum), Err(ParseError::BadChecksum));

        // A record count larger than the records present.
        let mut msg = vec![0x22, 0, 0, 0, 0, 0, 0, 5, 2, 0, 0, 0, 239, 1, 1, 1];
        msg = with_checksum(msg);
        assert_eq!(
            parse(&ip_packet(IPPROTO_IGMP, 1, [10, 0, 0, 2], [224, 0, 0, 22], &msg)),
            Err(ParseError::RecordOverrun)
        );
        // A source count that runs past the message.
        let msg = with_checksum(vec![0x22, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0xff, 0xff, 239, 1, 1, 1]);
        assert_eq!(
            parse(&ip_packet(IPPROTO_IGMP, 1, [10, 0, 0, 2], [224, 0, 0, 22], &msg)),
            Err(ParseError::RecordOverrun)
        );
        let ttl64 = ip_packet(
            IPPROTO_IGMP,
            64,
            [10, 0, 0, 2],
            [239, 1, 1, 1],
            &with_checksum(vec![0x16, 0, 0, 0, 239, 1, 1, 1]),
        );
        assert_eq!(parse(&ttl64), Err(ParseError::BadTtl));
        assert_eq!(parse(&igmp(vec![0x99, 0, 0, 0, 0, 0, 0, 0])), Err(ParseError::UnknownType));
        // A record of an unknown type is skipped (RFC 3376 4.2.12), the
        // others read: here a type 9, then IS_EX 239.2.2.2.
        let report = vec![0x22, 0, 0, 0, 0, 0, 0, 2, 9, 0, 0, 1, 239, 1, 1, 1, 10, 0, 0, 9, 2, 0, 0, 0, 239, 2, 2, 2];
        let Message::RecordReport { records, unknown_types } = parse(&igmp(report)).unwrap().message else {
            panic!("not a record report")
        };
        assert_eq!(unknown_types, 1);
        assert_eq!(records.iter().map(|r| r.group).collect::<Vec<_>>(), [Ipv4Addr::new(239, 2, 2, 2)]);
        assert_eq!(parse(&[0x45; 10]), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn pim_hello() {
        let hello = ip_packet(
            IPPROTO_PIM,
            1,
            [10, 0, 0, 1],
            [224, 0, 0, 13],
            &with_checksum(vec![0x20, 0, 0, 0, 0, 1, 0, 2, 0, 105]),
        );
        assert_eq!(parse(&hello).unwrap().message, Message::PimHello);
    }
}

/// Fuzzing the parser with proptest: arbitrary bytes and mutated valid
/// reports. It must never panic, and what it accepts must be self-consistent.
#[cfg(test)]
mod fuzz {
    use proptest::prelude::*;

    use super::{tests::v3_report, *};
    use crate::proto::Packet;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_reports_never_panic(
            records in proptest::collection::vec((1u8..=6, any::<[u8; 4]>(), 0u16..40), 0..30),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
            cut in any::<usize>(),
        ) {
            let mut packet = v3_report(&records);
            for (at, value) in flips {
                let len = packet.len();
                packet[at % len] ^= value;
            }
            packet.truncate(cut % (packet.len() + 1));
            if let Ok(Packet { message: Message::RecordReport { records, .. }, .. }) = parse(&packet) {
                // Every accepted record fit inside the packet.
                let bytes: usize = records.iter().map(|r| 8 + 4 * r.sources.len()).sum();
                prop_assert!(bytes + 8 <= packet.len());
            }
        }
    }
}
