//! Every map of the data path, declared from snoop-common's types and sizes
//! (a test checks the built object against `snoop_common::MAPS`).
use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use snoop_common::{
    DatapathConfig, GroupKey, GroupPorts, GroupValue, MemberValue, PortCounters, PortGroupKey, PortValue, SenderSlot,
    SourceGroupKey, SourceKey, SsmRange, TrafficCounters, VlanFlags, VlanPortKey, COUNTER_COUNT, EVENT_RING_BYTES,
    MAX_GROUPS, MAX_MEMBERSHIPS, MAX_PORTS, MAX_SOURCES, MAX_SOURCE_GROUPS, MAX_SSM_RANGES, MAX_TRAFFIC_SLOTS,
    MAX_VLANS, MAX_VLAN_PORTS, SENDER_SLOTS,
};

// All pinned: a restarted controller (and the programs it replaces) keep
// forwarding from the same maps.
#[map]
pub static SNOOP_MEMBERS: HashMap<PortGroupKey, MemberValue> = HashMap::pinned(MAX_MEMBERSHIPS, BPF_F_NO_PREALLOC);
#[map]
pub static SNOOP_GROUPS: HashMap<GroupKey, GroupValue> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);
#[map]
pub static SNOOP_PORTS: HashMap<u32, PortValue> = HashMap::pinned(MAX_PORTS, 0);
#[map]
pub static SNOOP_CONFIG: Array<DatapathConfig> = Array::pinned(1, 0);
#[map]
pub static SNOOP_COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTER_COUNT, 0);
#[map]
pub static SNOOP_MEMBER_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_TRAFFIC_SLOTS, 0);
#[map]
pub static SNOOP_GROUP_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_TRAFFIC_SLOTS, 0);
#[map]
pub static SNOOP_PORT_TRAFFIC: PerCpuArray<TrafficCounters> = PerCpuArray::pinned(MAX_PORTS, 0);
#[map]
pub static SNOOP_GROUP_PORTS: HashMap<GroupKey, GroupPorts> = HashMap::pinned(MAX_GROUPS, BPF_F_NO_PREALLOC);
#[map]
pub static SNOOP_PORT_COUNTERS: PerCpuHashMap<u32, PortCounters> = PerCpuHashMap::pinned(MAX_PORTS, 0);
// Reports that arrive while the controller restarts wait here.
#[map]
pub static SNOOP_EVENTS: RingBuf = RingBuf::pinned(EVENT_RING_BYTES, 0);
#[map]
pub static SNOOP_SENDERS: PerCpuArray<SenderSlot> = PerCpuArray::pinned(SENDER_SLOTS, 0);
// Source-specific forwarding: consulted only for groups whose entries say so.
#[map]
pub static SNOOP_SOURCES: HashMap<SourceKey, u32> = HashMap::pinned(MAX_SOURCES, BPF_F_NO_PREALLOC);
#[map]
pub static SNOOP_SOURCE_GROUP_PORTS: HashMap<SourceGroupKey, GroupPorts> =
    HashMap::pinned(MAX_SOURCE_GROUPS, BPF_F_NO_PREALLOC);
// VLAN-aware bridges: router ports and querier presence per VLAN.
#[map]
pub static SNOOP_VLAN_PORTS: HashMap<VlanPortKey, u32> = HashMap::pinned(MAX_VLAN_PORTS, BPF_F_NO_PREALLOC);
#[map]
pub static SNOOP_VLANS: HashMap<u16, VlanFlags> = HashMap::pinned(MAX_VLANS, 0);
// The source-specific multicast ranges (`--ssm-range`).
#[map]
pub static SNOOP_SSM_RANGES: Array<SsmRange> = Array::pinned(MAX_SSM_RANGES, 0);
