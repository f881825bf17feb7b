//! What the state machine's tests share: addresses, packets, machines.
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use super::*;
use crate::proto::Announced;

pub(super) fn g(addr: Ipv4Addr) -> Group<Ipv4Addr> {
    Group::untagged(addr)
}

pub(super) const G1: Ipv4Addr = Ipv4Addr::new(239, 1, 1, 1);

pub(super) const G2: Ipv4Addr = Ipv4Addr::new(239, 129, 1, 1);

pub(super) const H1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);

pub(super) fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

pub(super) fn pkt(source: Ipv4Addr, message: Message<Ipv4Addr>) -> Packet<Ipv4Addr> {
    Packet { source, destination: Ipv4Addr::UNSPECIFIED, message }
}

pub(super) fn v2_report(group: Ipv4Addr) -> Packet<Ipv4Addr> {
    pkt(H1, Message::Report { version: 2, group })
}

pub(super) fn record(record_type: RecordType, group: Ipv4Addr, source_count: u8) -> Packet<Ipv4Addr> {
    let sources = (0..source_count).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect();
    pkt(
        H1,
        Message::RecordReport {
            records: vec![crate::proto::GroupRecord { record_type, group, sources }],
            unknown_types: 0,
        },
    )
}

pub(super) fn query(source: Ipv4Addr, group: Ipv4Addr) -> Packet<Ipv4Addr> {
    pkt(
        source,
        Message::Query { version: 3, group, sources: vec![], suppress: false, max_response: secs(10), announced: None },
    )
}

pub(super) const TRUSTED: PortOptions = PortOptions {
    fast_leave: false,
    static_router: false,
    trusted: true,
    never_router: false,
    upstream: false,
    max_groups: 0,
};

/// Querier off unless a test needs it, two trusted ports.
pub(super) fn snooper(querier: bool) -> Snooper<Ipv4Addr> {
    let mut s = Snooper::new(Timers::default(), querier, Ipv4Addr::new(10, 0, 0, 1), secs(0));
    s.add_port(1, TRUSTED);
    s.add_port(2, TRUSTED);
    s
}

pub(super) const S1: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);

pub(super) const S2: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 1);

pub(super) const S3: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 2);

pub(super) fn records(record_type: RecordType, group: Ipv4Addr, sources: &[Ipv4Addr]) -> Packet<Ipv4Addr> {
    let record = crate::proto::GroupRecord { record_type, group, sources: sources.to_vec() };
    pkt(H1, Message::RecordReport { records: vec![record], unknown_types: 0 })
}

pub(super) fn source_query(
    source: Ipv4Addr,
    group: Ipv4Addr,
    sources: &[Ipv4Addr],
    suppress: bool,
) -> Packet<Ipv4Addr> {
    let sources = sources.to_vec();
    pkt(source, Message::Query { version: 3, group, sources, suppress, max_response: secs(1), announced: None })
}

pub(super) fn filter_of(
    s: &Snooper<Ipv4Addr>,
    group: Ipv4Addr,
    port: u32,
    now: Duration,
) -> Option<SourceFilter<Ipv4Addr>> {
    Some(s.groups().get(&g(group))?.get(&port)?.filter(now))
}

pub(super) fn include(sources: &[Ipv4Addr]) -> Option<SourceFilter<Ipv4Addr>> {
    Some(SourceFilter::Include(sources.iter().copied().collect()))
}

pub(super) fn members(s: &Snooper<Ipv4Addr>, group: Ipv4Addr) -> Vec<u32> {
    s.group_ports(g(group)).into_iter().collect()
}

pub(super) fn v2_query(source: Ipv4Addr) -> Packet<Ipv4Addr> {
    pkt(
        source,
        Message::Query {
            sources: vec![],
            suppress: false,
            version: 2,
            group: Ipv4Addr::UNSPECIFIED,
            max_response: secs(10),
            announced: None,
        },
    )
}

pub(super) fn v3_query_announcing(source: Ipv4Addr, robustness: u8, interval: u64) -> Packet<Ipv4Addr> {
    let announced = Some(Announced { robustness, query_interval: secs(interval) });
    pkt(
        source,
        Message::Query {
            sources: vec![],
            suppress: false,
            version: 3,
            group: Ipv4Addr::UNSPECIFIED,
            max_response: secs(10),
            announced,
        },
    )
}

pub(super) const OWN: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x10);
pub(super) const HOST: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x20);
pub(super) const GROUP: Ipv6Addr = Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0, 0x1234);

/// An MLD state machine querying from `own`, with two trusted ports.
pub(super) fn mld_snooper(own: Ipv6Addr) -> Snooper<Ipv6Addr> {
    let mut s = Snooper::new(Timers::default(), true, own, secs(0));
    s.add_port(1, TRUSTED);
    s.add_port(2, TRUSTED);
    s
}

pub(super) fn from(source: Ipv6Addr, message: Message<Ipv6Addr>) -> Packet<Ipv6Addr> {
    Packet { source, destination: Ipv6Addr::UNSPECIFIED, message }
}

/// Addresses and versions for tests written once for both families: each
/// runs as IGMP and as MLD (see [`both_families`]).
pub(super) trait Sample: Family {
    /// The older version's single-group report (IGMPv2, MLDv1).
    const OLDER: u8;
    /// A snoopable group.
    fn group(n: u8) -> Self;
    /// One of many groups.
    fn nth_group(n: u32) -> Self;
    /// A source, or a host's address.
    fn host(n: u8) -> Self;
    /// snoop's own query source; `router(n)` is below it for n < 5, above for n > 5.
    fn own() -> Self {
        Self::router(5)
    }
    fn router(n: u8) -> Self;
}

impl Sample for Ipv4Addr {
    const OLDER: u8 = 2;
    fn group(n: u8) -> Self {
        Ipv4Addr::new(239, 1, 1, n)
    }
    fn nth_group(n: u32) -> Self {
        let [_, b, c, d] = n.to_be_bytes();
        Ipv4Addr::new(239, b, c, d)
    }
    fn host(n: u8) -> Self {
        Ipv4Addr::new(10, 1, 0, n)
    }
    fn router(n: u8) -> Self {
        Ipv4Addr::new(10, 0, 0, n)
    }
}

impl Sample for Ipv6Addr {
    const OLDER: u8 = 1;
    fn group(n: u8) -> Self {
        Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0, 0x1234, n.into())
    }
    fn nth_group(n: u32) -> Self {
        Ipv6Addr::new(0xff0e, 0, 0, 0, 0, 0x1235, (n >> 16) as u16, n as u16)
    }
    fn host(n: u8) -> Self {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x10, n.into())
    }
    fn router(n: u8) -> Self {
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, n.into())
    }
}

/// The actions but the querier's presence (tests of other things).
pub(super) fn but_presence<A: Family>(actions: Vec<Action<A>>) -> Vec<Action<A>> {
    actions.into_iter().filter(|a| !matches!(a, Action::QuerierPresence { .. })).collect()
}

/// A machine of family `A` querying (or not) from [`Sample::own`], with
/// two trusted ports.
pub(super) fn machine<A: Sample>(querier: bool) -> Snooper<A> {
    let mut s = Snooper::new(Timers::default(), querier, A::own(), secs(0));
    s.add_port(1, TRUSTED);
    s.add_port(2, TRUSTED);
    s
}

/// A packet of family `A` from `source`.
pub(super) fn packet<A: Sample>(source: A, message: Message<A>) -> Packet<A> {
    Packet { source, destination: A::UNSPECIFIED, message }
}

/// One group record from host 1.
pub(super) fn record_of<A: Sample>(record_type: RecordType, group: A, sources: &[A]) -> Packet<A> {
    let record = crate::proto::GroupRecord { record_type, group, sources: sources.to_vec() };
    packet(A::host(1), Message::RecordReport { records: vec![record], unknown_types: 0 })
}

/// A general query (group unspecified) or a group-specific one from `source`.
pub(super) fn query_of<A: Sample>(source: A, group: A) -> Packet<A> {
    let query = Message::Query {
        version: A::RECORD_VERSION,
        group,
        sources: vec![],
        suppress: false,
        max_response: secs(10),
        announced: None,
    };
    packet(source, query)
}

/// `#[test]`s running a test written once for any [`Sample`] family as
/// IGMP (`NAME::igmp`) and as MLD (`NAME::mld`).
macro_rules! both_families {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            #[test]
            fn igmp() {
                super::$test::<std::net::Ipv4Addr>()
            }
            #[test]
            fn mld() {
                super::$test::<std::net::Ipv6Addr>()
            }
        }
    )*};
}
pub(super) use both_families;
