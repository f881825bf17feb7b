//! Fuzzing the state machine with proptest: random messages on random ports
//! at increasing times. It must never panic and its invariants must hold.
use std::net::Ipv4Addr;

use proptest::prelude::*;

use super::*;
use crate::proto::Packet;
use crate::proto::RecordType;

type Message = crate::proto::Message<Ipv4Addr>;

fn message() -> impl Strategy<Value = Message> {
    let group = (0u8..4).prop_map(|i| Ipv4Addr::new(239, 0, 0, i));
    let record = (0usize..6, group.clone(), 0u8..3).prop_map(|(t, group, source_count)| crate::proto::GroupRecord {
        record_type: [
            RecordType::ModeIsInclude,
            RecordType::ModeIsExclude,
            RecordType::ChangeToInclude,
            RecordType::ChangeToExclude,
            RecordType::AllowNewSources,
            RecordType::BlockOldSources,
        ][t],
        group,
        sources: (0..source_count).map(|i| Ipv4Addr::new(10, 1, 0, i)).collect(),
    });
    prop_oneof![
        (1u8..=2, group.clone()).prop_map(|(version, group)| Message::Report { version, group }),
        group.clone().prop_map(|group| Message::Leave { group }),
        proptest::collection::vec(record, 0..4).prop_map(|records| Message::RecordReport { records, unknown_types: 0 }),
        (prop_oneof![Just(Ipv4Addr::UNSPECIFIED), group], 0u64..3).prop_map(|(group, s)| Message::Query {
            sources: vec![],
            suppress: false,
            version: 3,
            group,
            max_response: Duration::from_secs(s),
            announced: None,
        }),
        Just(Message::PimHello),
        (0u64..30).prop_map(|s| Message::MrdAdvertisement { interval: Duration::from_secs(s) }),
        Just(Message::MrdTermination),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn random_traffic_keeps_invariants(
        steps in proptest::collection::vec((0u32..5, any::<[u8; 4]>(), message(), 0u64..40_000), 1..200),
    ) {
        let timers = Timers::derived(2, Duration::from_secs(10), Duration::from_secs(2));
        let mut s = Snooper::new(timers, true, Ipv4Addr::new(10, 0, 0, 5), Duration::ZERO);
        for port in 0..4 {
            s.add_port(port, PortOptions { fast_leave: port == 1, trusted: port != 2, max_groups: 3, ..Default::default() });
        }
        let mut now = Duration::ZERO;
        for (port, source, message, advance_ms) in steps {
            now += Duration::from_millis(advance_ms);
            s.poll(now);
            let packet = Packet { source: Ipv4Addr::from(source), destination: Ipv4Addr::UNSPECIFIED, message };
            s.handle(port, 0, &packet, now);
            // No group without member ports; no port over its limit;
            // after a poll nothing is overdue.
            prop_assert!(s.groups().values().all(|ports| !ports.is_empty()));
            prop_assert!((0..4).all(|p| s.port_group_count(p) <= 3));
            s.poll(now);
            prop_assert!(s.next_deadline().is_none_or(|d| d > now));
            prop_assert!(s.groups().values().all(|ports| ports.keys().all(|p| *p < 4)));
            let members: usize = s.groups().values().map(|ports| ports.len()).sum();
            prop_assert_eq!(members, s.expiries.len(), "the expiry index matches the members");
            for p in 0..4 {
                let counted = s.groups().values().filter(|ports| ports.contains_key(&p)).count();
                prop_assert_eq!(s.port_group_count(p), counted, "the per-port group count is exact");
            }
        }
    }
}
