//! The MLD (v1, v2) and IPv6 PIM hello parser, and the MLD query builder.
//!
//! Input is an IPv6 packet as the data path captured it (from the IP header
//! on). As for IGMP, everything is validated before anything is returned: the
//! hop limit (1), the Router Alert option in a hop-by-hop header, a
//! link-local source (or :: for reports, RFC 3590), the ICMPv6 checksum over
//! the pseudo-header, and every record's length.
use std::{net::Ipv6Addr, time::Duration};

use snoop_common::wire::{
    is_mld_control, IPPROTO_ICMPV6, IPPROTO_PIM, IPV6_ALL_NODES, IPV6_ALL_ROUTERS, IPV6_DESTINATION_OPTIONS,
    IPV6_FRAGMENT, IPV6_HLEN, IPV6_HOP_BY_HOP, IPV6_OPTION_ROUTER_ALERT, IPV6_ROUTING, MAX_IPV6_EXTENSION_HEADERS,
    MLD_MRD_ADVERTISEMENT, MLD_MRD_SOLICITATION, MLD_MRD_TERMINATION, MLD_QUERY, MLD_V1_DONE, MLD_V1_REPORT,
    MLD_V2_REPORT, PIM_HELLO,
};

use super::{
    decode_max_response_code, decode_v3_code, encode_max_response_code, encode_v3_code, parse_group_records, Announced,
    ParseError, QuerySource, QueryTimers, S_FLAG,
};

pub type Packet = super::Packet<Ipv6Addr>;
pub type Message = super::Message<Ipv6Addr>;

/// Sources of one query in a 1500-byte frame: 1500 - IPv6 header (40) -
/// hop-by-hop (8) - query header (28), over 16.
pub const MAX_QUERY_SOURCES: usize = 89;
/// The hop-by-hop header of snoop's queries: Router Alert (MLD) and a PadN.
const HOP_BY_HOP_ROUTER_ALERT: [u8; 6] = [IPV6_OPTION_ROUTER_ALERT, 2, 0, 0, 1, 0];

/// Parses an IPv6 packet carrying MLD, router discovery or a PIM hello.
pub fn parse(ip_packet: &[u8]) -> Result<Packet, ParseError> {
    if ip_packet.len() < IPV6_HLEN || ip_packet[0] >> 4 != 6 {
        return Err(ParseError::BadIpHeader);
    }
    let payload_len = usize::from(u16::from_be_bytes([ip_packet[4], ip_packet[5]]));
    // 0 is a jumbogram (RFC 2675): never a control message.
    if payload_len == 0 {
        return Err(ParseError::BadIpHeader);
    }
    let end = IPV6_HLEN + payload_len;
    if end > ip_packet.len() {
        return Err(ParseError::Truncated);
    }
    let packet = &ip_packet[..end];
    let hop_limit = packet[7];
    let source = ipv6_at(packet, 8);
    let destination = ipv6_at(packet, 24);

    let mut next = packet[6];
    let mut at = IPV6_HLEN;
    let mut router_alert = false;
    // The data path hands over no packet with more (its walk is bounded).
    for _ in 0..MAX_IPV6_EXTENSION_HEADERS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DESTINATION_OPTIONS => {
                let head = packet.get(at..at + 2).ok_or(ParseError::BadIpHeader)?;
                let len = (usize::from(head[1]) + 1) * 8;
                let header = packet.get(at..at + len).ok_or(ParseError::BadIpHeader)?;
                // Hop-by-hop options must come first (RFC 8200 4.1).
                if next == IPV6_HOP_BY_HOP {
                    if at != IPV6_HLEN {
                        return Err(ParseError::BadIpHeader);
                    }
                    router_alert = has_mld_router_alert(&header[2..])?;
                }
                next = head[0];
                at += len;
            }
            IPV6_FRAGMENT => return Err(ParseError::Fragment),
            _ => break,
        }
    }
    let payload = &packet[at..];
    let message = match next {
        IPPROTO_ICMPV6 => {
            if payload.len() < 4 {
                return Err(ParseError::ShortMessage);
            }
            if !is_mld_control(payload[0]) {
                return Err(ParseError::NotControl);
            }
            if hop_limit != 1 {
                return Err(ParseError::BadTtl);
            }
            if !router_alert {
                return Err(ParseError::NoRouterAlert);
            }
            if upper_layer_checksum(source, destination, IPPROTO_ICMPV6, payload) != 0 {
                return Err(ParseError::BadChecksum);
            }
            let message = parse_mld(payload)?;
            // Queries and router messages only from link-local addresses
            // (RFC 3810 5.1.14); reports also from :: (sent during DAD, RFC 3590).
            let report =
                matches!(message, Message::Report { .. } | Message::Leave { .. } | Message::RecordReport { .. });
            let allowed = is_link_local(source) || report && source.is_unspecified();
            if !allowed {
                return Err(ParseError::BadSource);
            }
            message
        }
        IPPROTO_PIM => {
            if payload.len() < 4 {
                return Err(ParseError::ShortMessage);
            }
            if payload[0] != PIM_HELLO {
                return Err(ParseError::NotControl);
            }
            // PIM over IPv6 checksums the pseudo-header too (RFC 7761 4.9).
            if upper_layer_checksum(source, destination, IPPROTO_PIM, payload) != 0 {
                return Err(ParseError::BadChecksum);
            }
            Message::PimHello
        }
        _ => return Err(ParseError::NotControl),
    };
    Ok(Packet { source, destination, message })
}

/// Whether a hop-by-hop header's options hold Router Alert with value 0
/// (MLD, RFC 2711); a truncated option is a malformed header.
fn has_mld_router_alert(mut options: &[u8]) -> Result<bool, ParseError> {
    let mut found = false;
    while let Some(&kind) = options.first() {
        if kind == 0 {
            options = &options[1..]; // Pad1
            continue;
        }
        let len = usize::from(*options.get(1).ok_or(ParseError::BadIpHeader)?);
        let value = options.get(2..2 + len).ok_or(ParseError::BadIpHeader)?;
        if kind == IPV6_OPTION_ROUTER_ALERT && value == [0, 0] {
            found = true;
        }
        options = &options[2 + len..];
    }
    Ok(found)
}

fn parse_mld(msg: &[u8]) -> Result<Message, ParseError> {
    match msg[0] {
        MLD_MRD_SOLICITATION => return Ok(Message::MrdSolicitation),
        MLD_MRD_TERMINATION => return Ok(Message::MrdTermination),
        MLD_MRD_ADVERTISEMENT => {
            if msg.len() < 8 {
                return Err(ParseError::ShortMessage);
            }
            return Ok(Message::MrdAdvertisement { interval: Duration::from_secs(msg[1].into()) });
        }
        _ => {}
    }
    if msg.len() < 24 && msg[0] != MLD_V2_REPORT {
        return Err(ParseError::ShortMessage);
    }
    match msg[0] {
        MLD_QUERY => parse_query(msg),
        MLD_V1_REPORT => Ok(Message::Report { version: 1, group: ipv6_at(msg, 8) }),
        MLD_V1_DONE => Ok(Message::Leave { group: ipv6_at(msg, 8) }),
        MLD_V2_REPORT => {
            if msg.len() < 8 {
                return Err(ParseError::ShortMessage);
            }
            let count = u16::from_be_bytes([msg[6], msg[7]]);
            parse_group_records(msg, 8, count)
        }
        _ => Err(ParseError::UnknownType),
    }
}

/// Query version per RFC 3810 8.1: 24 bytes is MLDv1, 28 or more MLDv2,
/// anything between is no version's query and is ignored.
fn parse_query(msg: &[u8]) -> Result<Message, ParseError> {
    let code = u16::from_be_bytes([msg[4], msg[5]]);
    let group = ipv6_at(msg, 8);
    match msg.len() {
        24 => Ok(Message::Query {
            version: 1,
            group,
            sources: Vec::new(),
            suppress: false,
            max_response: Duration::from_millis(code.into()),
            announced: None,
        }),
        25..=27 => Err(ParseError::BadQueryLength),
        _ => {
            let count = usize::from(u16::from_be_bytes([msg[26], msg[27]]));
            let listed = msg.get(28..28 + 16 * count).ok_or(ParseError::RecordOverrun)?;
            let announced = Announced {
                robustness: msg[24] & 0x07,
                query_interval: Duration::from_secs(decode_v3_code(msg[25]).into()),
            };
            Ok(Message::Query {
                version: 2,
                group,
                sources: listed.chunks_exact(16).map(|s| ipv6_at(s, 0)).collect(),
                suppress: msg[24] & S_FLAG != 0,
                max_response: Duration::from_millis(decode_max_response_code(code).into()),
                announced: Some(announced),
            })
        }
    }
}

/// The ICMPv6/PIM checksum over the IPv6 pseudo-header and `payload` (RFC
/// 8200 8.1); 0 over a message that carries a valid one.
pub fn upper_layer_checksum(source: Ipv6Addr, destination: Ipv6Addr, next_header: u8, payload: &[u8]) -> u16 {
    let mut pseudo = Vec::with_capacity(40 + payload.len());
    pseudo.extend_from_slice(&source.octets());
    pseudo.extend_from_slice(&destination.octets());
    pseudo.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, next_header]);
    pseudo.extend_from_slice(payload);
    super::internet_checksum(&pseudo)
}

pub(super) fn ipv6_at(bytes: &[u8], at: usize) -> Ipv6Addr {
    let octets: [u8; 16] = bytes[at..at + 16].try_into().expect("16 bytes");
    Ipv6Addr::from(octets)
}

/// fe80::/10.
pub fn is_link_local(addr: Ipv6Addr) -> bool {
    addr.segments()[0] & 0xffc0 == 0xfe80
}

/// Builds a complete Ethernet frame holding an MLD query of `version`: MLDv2
/// (which v1 hosts also answer, RFC 3810 8.2.1), or the 24-byte v1 query for
/// networks with MLDv1 routers. A general query goes to ff02::1, a
/// multicast-address-specific one to the group; `sources` make it
/// multicast-address-and-source-specific (MLDv2 only).
pub fn build_query_frame(
    source: QuerySource<Ipv6Addr>,
    group: Option<Ipv6Addr>,
    sources: &[Ipv6Addr],
    version: u8,
    timers: &QueryTimers,
    suppress: bool,
) -> Vec<u8> {
    let QueryTimers { max_response, robustness, query_interval } = *timers;
    let destination = group.unwrap_or(Ipv6Addr::from(IPV6_ALL_NODES));
    let ms = u32::try_from(max_response.as_millis()).unwrap_or(u32::MAX).max(1);
    let sources = if version >= 2 && group.is_some() { &sources[..sources.len().min(MAX_QUERY_SOURCES)] } else { &[] };
    let mut mld = vec![0u8; if version >= 2 { 28 + 16 * sources.len() } else { 24 }];
    mld[0] = MLD_QUERY;
    let code = if version >= 2 { encode_max_response_code(ms) } else { u16::try_from(ms).unwrap_or(u16::MAX) };
    mld[4..6].copy_from_slice(&code.to_be_bytes());
    mld[8..24].copy_from_slice(&group.unwrap_or(Ipv6Addr::UNSPECIFIED).octets());
    if version >= 2 {
        mld[24] = robustness.min(7) | if suppress { S_FLAG } else { 0 };
        mld[25] = encode_v3_code(u32::try_from(query_interval.as_secs()).unwrap_or(u32::MAX));
        mld[26..28].copy_from_slice(&(sources.len() as u16).to_be_bytes());
        for (i, source) in sources.iter().enumerate() {
            mld[28 + 16 * i..44 + 16 * i].copy_from_slice(&source.octets());
        }
    }
    ipv6_frame(source.mac, source.address, destination, mld)
}

/// A multicast router discovery solicitation (RFC 4286 4) to ff02::2.
pub fn build_mrd_solicitation_frame(source_mac: [u8; 6], source: Ipv6Addr) -> Vec<u8> {
    ipv6_frame(source_mac, source, Ipv6Addr::from(IPV6_ALL_ROUTERS), vec![MLD_MRD_SOLICITATION, 0, 0, 0])
}

/// An Ethernet frame around an MLD-family ICMPv6 message: [`ip_packet`]
/// to the group's 33:33 MAC.
fn ipv6_frame(source_mac: [u8; 6], source: Ipv6Addr, destination: Ipv6Addr, icmp: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::with_capacity(14 + IPV6_HLEN + 8 + icmp.len());
    frame.extend_from_slice(&snoop_common::wire::ipv6_group_mac(&destination.octets()));
    frame.extend_from_slice(&source_mac);
    frame.extend_from_slice(&snoop_common::wire::ETH_P_IPV6.to_be_bytes());
    frame.extend(ip_packet(source, destination, icmp));
    frame
}

/// An IPv6 packet around an MLD-family ICMPv6 message, whose checksum it
/// fills in: hop limit 1 and a hop-by-hop header with Router Alert, as
/// hosts and routers send MLD.
pub fn ip_packet(source: Ipv6Addr, destination: Ipv6Addr, mut icmp: Vec<u8>) -> Vec<u8> {
    icmp[2..4].fill(0);
    let checksum = upper_layer_checksum(source, destination, IPPROTO_ICMPV6, &icmp);
    icmp[2..4].copy_from_slice(&checksum.to_be_bytes());
    let mut packet = Vec::with_capacity(IPV6_HLEN + 8 + icmp.len());
    packet.extend_from_slice(&[0x60, 0, 0, 0]);
    packet.extend_from_slice(&((8 + icmp.len()) as u16).to_be_bytes());
    packet.extend_from_slice(&[IPV6_HOP_BY_HOP, 1]);
    packet.extend_from_slice(&source.octets());
    packet.extend_from_slice(&destination.octets());
    packet.extend_from_slice(&[IPPROTO_ICMPV6, 0]);
    packet.extend_from_slice(&HOP_BY_HOP_ROUTER_ALERT);
    packet.extend_from_slice(&icmp);
    packet
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::proto::{GroupRecord, RecordType};

    pub const HOST: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);
    pub const GROUP: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x1234);

    /// An IPv6 packet around an ICMPv6 message, as a host's kernel sends MLD:
    /// hop limit 1, Router Alert in a hop-by-hop header, a valid checksum.
    pub fn mld_packet(source: Ipv6Addr, destination: Ipv6Addr, message: Vec<u8>) -> Vec<u8> {
        ip_packet(source, destination, message)
    }

    fn v2_report(records: &[(u8, Ipv6Addr, u16)]) -> Vec<u8> {
        let mut msg = vec![MLD_V2_REPORT, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&(records.len() as u16).to_be_bytes());
        for (kind, group, sources) in records {
            msg.extend_from_slice(&[*kind, 0]);
            msg.extend_from_slice(&sources.to_be_bytes());
            msg.extend_from_slice(&group.octets());
            for i in 0..*sources {
                msg.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i).octets());
            }
        }
        mld_packet(HOST, Ipv6Addr::from(snoop_common::wire::IPV6_MLDV2_ROUTERS), msg)
    }

    fn v1(kind: u8, group: Ipv6Addr) -> Vec<u8> {
        let mut msg = vec![kind, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&group.octets());
        mld_packet(HOST, group, msg)
    }

    #[test]
    fn v1_report_and_done() {
        let report = parse(&v1(MLD_V1_REPORT, GROUP)).unwrap();
        assert_eq!(report.message, Message::Report { version: 1, group: GROUP });
        assert_eq!(report.source, HOST);
        assert_eq!(parse(&v1(MLD_V1_DONE, GROUP)).unwrap().message, Message::Leave { group: GROUP });
    }

    #[test]
    fn v2_report_with_records_and_sources() {
        let packet = parse(&v2_report(&[(4, GROUP, 0), (1, GROUP, 2)])).unwrap();
        let Message::RecordReport { records, .. } = packet.message else { panic!("not a record report") };
        assert_eq!(records.len(), 2);
        assert_eq!(records[0], GroupRecord { record_type: RecordType::ChangeToExclude, group: GROUP, sources: vec![] });
        assert_eq!(records[1].sources.len(), 2);
    }

    #[test]
    fn reports_from_the_unspecified_address_are_accepted_queries_are_not() {
        let mut msg = vec![MLD_V1_REPORT, 0, 0, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&GROUP.octets());
        assert!(parse(&mld_packet(Ipv6Addr::UNSPECIFIED, GROUP, msg)).is_ok());
        let query = build_query_frame(
            QuerySource { mac: [2; 6], address: Ipv6Addr::UNSPECIFIED },
            None,
            &[],
            2,
            &timers(),
            false,
        );
        assert_eq!(parse(&query[14..]), Err(ParseError::BadSource));
        let global = build_query_frame(
            QuerySource { mac: [2; 6], address: "2001:db8::1".parse().unwrap() },
            None,
            &[],
            2,
            &timers(),
            false,
        );
        assert_eq!(parse(&global[14..]), Err(ParseError::BadSource));
    }

    fn timers() -> QueryTimers {
        QueryTimers { max_response: Duration::from_secs(10), robustness: 2, query_interval: Duration::from_secs(125) }
    }

    #[test]
    fn built_queries_parse_back() {
        for (version, group) in [(2, None), (2, Some(GROUP)), (1, None), (1, Some(GROUP))] {
            let frame =
                build_query_frame(QuerySource { mac: [2; 6], address: HOST }, group, &[], version, &timers(), false);
            assert_eq!(&frame[..2], &[0x33, 0x33]);
            let packet = parse(&frame[14..]).unwrap();
            let Message::Query { version: v, group: g, max_response, announced, .. } = packet.message else {
                panic!("not a query")
            };
            assert_eq!(
                (v, g, max_response),
                (version, group.unwrap_or(Ipv6Addr::UNSPECIFIED), Duration::from_secs(10))
            );
            assert_eq!(
                announced.map(|a| (a.robustness, a.query_interval.as_secs())),
                (version == 2).then_some((2, 125))
            );
            assert_eq!(packet.destination, group.unwrap_or(Ipv6Addr::from(IPV6_ALL_NODES)));
        }
        let solicitation = build_mrd_solicitation_frame([2; 6], HOST);
        assert_eq!(parse(&solicitation[14..]).unwrap().message, Message::MrdSolicitation);
    }

    #[test]
    fn max_response_codes_round_trip() {
        for ms in [0, 1, 1000, 10_000, 32_767, 32_768, 100_000, 1_000_000, 8_387_584] {
            let decoded = decode_max_response_code(encode_max_response_code(ms));
            assert!(decoded <= ms && ms - decoded <= ms / 512, "{ms} -> {decoded}");
        }
    }

    #[test]
    fn malformed_mld_is_rejected_whole() {
        let good = v2_report(&[(4, GROUP, 1)]);
        assert!(parse(&good).is_ok());
        // Truncated anywhere: the packet is shorter than its payload length.
        for cut in 1..good.len() {
            assert!(parse(&good[..cut]).is_err(), "cut at {cut}");
        }
        // Hop limit not 1.
        let mut hops = good.clone();
        hops[7] = 2;
        assert_eq!(parse(&hops), Err(ParseError::BadTtl));
        // Bad checksum.
        let mut corrupt = good.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(parse(&corrupt), Err(ParseError::BadChecksum));
        // No Router Alert: the option turned into a PadN.
        let mut no_alert = good.clone();
        no_alert[42] = 1;
        assert_eq!(parse(&no_alert), Err(ParseError::NoRouterAlert));
        // No hop-by-hop header at all.
        let mut bare = good[..40].to_vec();
        bare[6] = IPPROTO_ICMPV6;
        bare.extend_from_slice(&good[48..]);
        let len = (bare.len() - 40) as u16;
        bare[4..6].copy_from_slice(&len.to_be_bytes());
        assert_eq!(parse(&bare), Err(ParseError::NoRouterAlert));
        // A record count that lies: one more record than there is.
        let mut lying = v2_report(&[(4, GROUP, 0)]);
        lying[48 + 7] = 2;
        fix_checksum(&mut lying);
        assert_eq!(parse(&lying), Err(ParseError::RecordOverrun));
        // A source count that lies.
        let mut lying = v2_report(&[(1, GROUP, 1)]);
        lying[48 + 8 + 3] = 5;
        fix_checksum(&mut lying);
        assert_eq!(parse(&lying), Err(ParseError::RecordOverrun));
        // A fragment.
        let mut fragment = good.clone();
        fragment[6] = IPV6_FRAGMENT;
        assert_eq!(parse(&fragment), Err(ParseError::Fragment));
    }

    /// Recomputes the ICMPv6 checksum of a packet built by [`mld_packet`].
    pub fn fix_checksum(packet: &mut [u8]) {
        packet[48 + 2] = 0;
        packet[48 + 3] = 0;
        let sum = upper_layer_checksum(ipv6_at(packet, 8), ipv6_at(packet, 24), IPPROTO_ICMPV6, &packet[48..]);
        packet[48 + 2..48 + 4].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn pim_hello_over_ipv6() {
        let mut hello = vec![PIM_HELLO, 0, 0, 0, 0, 1, 0, 2, 0, 105];
        let (src, dst) = (HOST, Ipv6Addr::from(snoop_common::wire::IPV6_ALL_PIM_ROUTERS));
        let sum = upper_layer_checksum(src, dst, IPPROTO_PIM, &hello);
        hello[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut packet = vec![0x60, 0, 0, 0, 0, hello.len() as u8, IPPROTO_PIM, 1];
        packet.extend_from_slice(&src.octets());
        packet.extend_from_slice(&dst.octets());
        packet.extend_from_slice(&hello);
        assert_eq!(parse(&packet).unwrap().message, Message::PimHello);
    }

    use proptest::prelude::*;

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_reports_never_panic(
            records in proptest::collection::vec((1u8..=6, 0u16..4), 0..6),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..8),
        ) {
            let records: Vec<(u8, Ipv6Addr, u16)> = records.into_iter().map(|(t, n)| (t, GROUP, n)).collect();
            let mut packet = v2_report(&records);
            for (at, value) in flips {
                let at = at % packet.len();
                packet[at] = value;
            }
            // A mutation that keeps the checksum valid must still parse whole or fail whole.
            if let Ok(Packet { message: Message::RecordReport { records, .. }, .. }) = parse(&packet) {
                prop_assert!(records.len() <= 6);
            }
        }
    }
}
