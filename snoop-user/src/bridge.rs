//! What snoop needs to know about a bridge, read over rtnetlink so it works in
//! whatever network namespace snoop runs in (sysfs shows the mounter's).
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{
            AfSpecBridge, BridgeMulticastRouterType, BridgePortState, BridgeStpState, BridgeVlanInfoFlags, InfoBridge,
            InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoVlan, LinkAttribute, LinkExtentMask, LinkInfo,
            LinkMessage, State, VlanProtocol,
        },
        neighbour::{NeighbourAttribute, NeighbourFlags, NeighbourState},
        AddressFamily,
    },
    Handle, LinkBridge, LinkMessageBuilder, MulticastGroup,
};
use snoop_common::VLAN_NONE;

use crate::datapath::OtherFilters;

/// What the bridge layer reports, as callers decide on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no interface named {0} (create it with `ip link add {0} type bridge`)")]
    NoSuchInterface(String),
    #[error("{0} is not a bridge")]
    NotABridge(String),
    #[error("bridge {0} was deleted")]
    BridgeGone(String),
    #[error("{what}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{what}: the kernel did not take the setting")]
    NotTaken { what: String },
    #[error("{what}")]
    Io { what: &'static str, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn netlink_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// What the bridge decides for a port, which redirect forwarding (copying
/// past the bridge) must decide the same way.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortPolicy {
    /// Its STP/MRP state (or one set by hand) is forwarding.
    pub forwarding: bool,
    /// Isolated ports never forward to each other.
    pub isolated: bool,
    /// 802.1X: the bridge drops frames from MACs it has not authorised.
    pub locked: bool,
    /// The bridge learns MACs from frames entering here.
    pub learning: bool,
    /// The bridge's own per-port snooping settings, which snoop honours:
    /// `mcast_router 2` (always a router port) and `fastleave on`.
    pub static_router: bool,
    /// `mcast_router 0`: never a router port.
    pub never_router: bool,
    pub fast_leave: bool,
    /// What else runs on the port's tc hooks (the operator's filters),
    /// which redirect must not copy a frame past.
    pub filters: OtherFilters,
    /// nftables netdev chains hook the port's ingress (egress).
    pub nft_ingress: bool,
    pub nft_egress: bool,
}

impl Default for PortPolicy {
    fn default() -> Self {
        Self {
            forwarding: true,
            isolated: false,
            locked: false,
            learning: true,
            static_router: false,
            never_router: false,
            fast_leave: false,
            filters: OtherFilters::default(),
            nft_ingress: false,
            nft_egress: false,
        }
    }
}

impl PortPolicy {
    /// Why frames entering here must take the bridge path, if they must.
    pub fn bridge_path(&self) -> Option<&'static str> {
        if !self.forwarding {
            Some("not forwarding (STP, MRP or set by hand)")
        } else if self.locked {
            Some("locked (802.1X)")
        } else if self.isolated {
            Some("isolated")
        } else if self.filters.ingress_after > 0 {
            Some("tc programs or filters run after snoop's on its ingress")
        } else if self.nft_ingress {
            Some("an nftables netdev chain hooks its ingress")
        } else {
            None
        }
    }

    fn from_link(link: &LinkMessage) -> Self {
        let mut policy = Self::default();
        let options = link.attributes.iter().filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos),
            _ => None,
        });
        for option in options.flatten().flat_map(|info| match info {
            LinkInfo::PortData(InfoPortData::BridgePort(options)) => options.as_slice(),
            _ => &[],
        }) {
            match option {
                InfoBridgePort::State(state) => policy.forwarding = *state == BridgePortState::Forwarding,
                InfoBridgePort::Isolated(on) => policy.isolated = *on,
                InfoBridgePort::Locked(on) => policy.locked = *on,
                InfoBridgePort::Learning(on) => policy.learning = *on,
                InfoBridgePort::FastLeave(on) => policy.fast_leave = *on,
                InfoBridgePort::MulticastRouter(kind) => {
                    policy.static_router = *kind == BridgeMulticastRouterType::Permanent;
                    policy.never_router = *kind == BridgeMulticastRouterType::Disabled;
                }
                _ => {}
            }
        }
        policy
    }
}

/// A bridge port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
    pub policy: PortPolicy,
    /// An operationally up veth whose peer is in another network namespace
    /// and which has no qdisc: redirect mode may hand packets straight to the
    /// peer's ingress. (The kernel's bpf_redirect_peer needs the other
    /// namespace; it would bypass a qdisc, and it checks only that the peer is
    /// up, so a port set down must stop qualifying.)
    pub peer_redirect: bool,
}

/// The VLANs of a port (or of the bridge device itself, its `self` entries).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortVlans {
    /// VLAN id → frames of it leave untagged.
    pub vlans: BTreeMap<u16, bool>,
    /// The VLAN untagged frames entering the port belong to.
    pub pvid: Option<u16>,
}

impl PortVlans {
    /// The VLAN whose frames leave untagged: the PVID's if it egresses
    /// untagged, else the lowest such VLAN. (The egress program cannot tell
    /// several untagged VLANs apart: their frames look the same.)
    pub fn untagged_vlan(&self) -> Option<u16> {
        let untagged = |vlan: &u16| self.vlans.get(vlan) == Some(&true);
        self.pvid.filter(untagged).or_else(|| self.vlans.iter().find(|(_, u)| **u).map(|(v, _)| *v))
    }
}

/// The bridge's VLAN configuration, as its snooping follows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VlanConfig {
    /// `vlan_filtering 1`: without it the bridge forwards every frame
    /// alike, and snoop snoops as if there were no VLANs.
    pub filtering: bool,
    /// Ports' VLANs by ifindex; the bridge device's own under its ifindex.
    pub ports: BTreeMap<u32, PortVlans>,
    /// VLAN interfaces on the bridge (`ip link add link br0 name br0.10
    /// type vlan id 10`): VLAN id → ifindex. The querier of a VLAN speaks
    /// from its interface's address.
    pub interfaces: BTreeMap<u16, u32>,
}

impl VlanConfig {
    /// The VLANs some port of `ports` is in.
    pub fn vlans_of(&self, ports: impl IntoIterator<Item = u32>) -> BTreeSet<u16> {
        ports.into_iter().filter_map(|p| self.ports.get(&p)).flat_map(|v| v.vlans.keys().copied()).collect()
    }
}

/// The bridge snoop runs on.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// The bridge's link as rtnetlink shows it: its MAC and its options.
#[derive(Clone, Debug)]
pub struct BridgeState {
    pub mac: [u8; 6],
    options: Vec<InfoBridge>,
}

impl BridgeState {
    fn from_link(link: LinkMessage) -> Self {
        let mac = link_mac(&link);
        let options = link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.into_iter().find_map(|info| match info {
                LinkInfo::Data(InfoData::Bridge(options)) => Some(options),
                _ => None,
            }),
            _ => None,
        });
        Self { mac, options: options.unwrap_or_default() }
    }

    /// The kernel bridge's own multicast snooping is on.
    pub fn kernel_snooping(&self) -> bool {
        self.options.contains(&InfoBridge::MulticastSnooping(true))
    }

    /// `mcast_router 2` on the bridge device itself: its host is a
    /// multicast router, by the administrator's word.
    pub fn host_is_router(&self) -> bool {
        self.options.iter().any(|o| matches!(o, InfoBridge::MulticastRouter(BridgeMulticastRouterType::Permanent)))
    }

    /// STP's topology change flag is up.
    pub fn topology_change(&self) -> bool {
        self.options.iter().any(|o| matches!(o, InfoBridge::TopologyChange(on) if *on != 0))
    }

    /// `vlan_filtering 1`.
    pub fn vlan_filtering(&self) -> bool {
        self.options.contains(&InfoBridge::VlanFiltering(true))
    }

    /// Why redirect forwarding cannot be used on this bridge now, if it
    /// cannot: a copy made outside the bridge would skip its STP port
    /// states or filtering rules hooked into bridged traffic, or tag as it
    /// does not (checked live: any of them can be switched on at any time).
    /// VLAN filtering is no obstacle: redirect checks and tags per VLAN.
    pub fn redirect_obstacle(&self) -> Option<&'static str> {
        if self.options.iter().any(|o| matches!(o, InfoBridge::StpState(s) if *s != BridgeStpState::Disabled)) {
            return Some("STP is on");
        }
        // Redirect tags its copies 802.1Q, the bridge's default protocol.
        let ieee8021ad = self.options.iter().any(|o| matches!(o, InfoBridge::VlanProtocol(VlanProtocol::Ieee8021Ad)));
        if self.vlan_filtering() && ieee8021ad {
            return Some("VLAN filtering with 802.1ad tags is on");
        }
        let calls = crate::filtering::BridgeCalls {
            iptables: self.options.contains(&InfoBridge::NfCallIpTables(true)),
            ip6tables: self.options.contains(&InfoBridge::NfCallIp6Tables(true)),
        };
        crate::filtering::bridged_traffic_filtered(calls)
    }
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink socket in the current network namespace. Needs a tokio runtime.
    pub fn open() -> Result<Self> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|source| Error::Io { what: "opening rtnetlink", source })?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// A stream that yields whenever a link of the current network namespace
    /// is added, removed or changes (state, master, qdisc...), or an address
    /// does: ports and the bridge are rescanned at once instead of at the
    /// next periodic scan.
    pub fn link_changes() -> Result<impl futures::Stream<Item = ()> + Unpin> {
        // Addresses too: the querier speaks from the bridge's.
        let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv6Ifaddr];
        let (connection, _, messages) = rtnetlink::new_multicast_connection(&groups)
            .map_err(|source| Error::Io { what: "subscribing to rtnetlink link events", source })?;
        // The connection outlives its stream unless stopped (it would warn
        // of every event it can no longer hand on, as `snoop switch` undoes
        // its bridge after the controller has stopped).
        let connection = AbortOnDrop(tokio::spawn(connection));
        Ok(futures::StreamExt::map(messages, move |_| {
            let _ = &connection;
        }))
    }

    /// Looks the bridge up; a clear error if it is missing or not a bridge.
    pub async fn bridge(&self, name: &str) -> Result<Bridge> {
        let link = self.link_by_name(name).await?.ok_or_else(|| Error::NoSuchInterface(name.to_owned()))?;
        if !is_bridge(&link) {
            return Err(Error::NotABridge(name.to_owned()));
        }
        Ok(Bridge { name: name.to_owned(), ifindex: link.header.index, mac: link_mac(&link) })
    }

    /// The bridge's link now (its MAC and options, in one request);
    /// [`Error::BridgeGone`] if it was deleted.
    pub async fn bridge_state(&self, bridge: &Bridge) -> Result<BridgeState> {
        let mut links = self.handle.link().get().match_index(bridge.ifindex).execute();
        match links.try_next().await {
            Ok(Some(link)) if is_bridge(&link) => Ok(BridgeState::from_link(link)),
            Ok(_) => Err(Error::BridgeGone(bridge.name.clone())),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
                Err(Error::BridgeGone(bridge.name.clone()))
            }
            Err(e) => Err(netlink_error("asking rtnetlink for the bridge")(e)),
        }
    }

    /// The rtnetlink handle, for requests this module has no method for.
    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    pub(crate) async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(netlink_error("asking rtnetlink for the interface")(e)),
        }
    }

    /// Whether the bridge still exists.
    pub async fn bridge_exists(&self, bridge: &Bridge) -> Result<bool> {
        let mut links = self.handle.link().get().match_index(bridge.ifindex).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(is_bridge(&link)),
            Ok(None) => Ok(false),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(netlink_error("asking rtnetlink for the bridge")(e)),
        }
    }

    /// The bridge's ports, sorted by ifindex.
    pub async fn ports(&self, bridge: &Bridge) -> Result<Vec<Port>> {
        let mut ports = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(netlink_error("listing interfaces"))? {
            let is_port = link.attributes.contains(&LinkAttribute::Controller(bridge.ifindex));
            if !is_port {
                continue;
            }
            let name = link
                .attributes
                .iter()
                .find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            let peer_redirect = link_kind(&link) == Some(&InfoKind::Veth)
                && link.attributes.iter().any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)))
                && link.attributes.iter().any(|a| matches!(a, LinkAttribute::Qdisc(q) if q == "noqueue"))
                && link.attributes.contains(&LinkAttribute::OperState(State::Up));
            ports.push(Port { ifindex: link.header.index, name, policy: PortPolicy::from_link(&link), peer_redirect });
        }
        ports.sort();
        Ok(ports)
    }

    /// The bridge's VLAN configuration: VLAN filtering, each port's VLANs
    /// (an AF_BRIDGE link dump, as `bridge vlan show` makes) and VLAN
    /// interfaces on the bridge.
    pub async fn vlan_config(&self, bridge: &Bridge, state: &BridgeState) -> Result<VlanConfig> {
        let filtering = state.vlan_filtering();
        let mut config = VlanConfig { filtering, ..VlanConfig::default() };
        if !filtering {
            return Ok(config);
        }
        let mut links =
            self.handle.link().get().set_filter_mask(AddressFamily::Bridge, vec![LinkExtentMask::Brvlan]).execute();
        while let Some(link) = links.try_next().await.map_err(netlink_error("listing the bridge's VLANs"))? {
            let is_ours = link.header.index == bridge.ifindex
                || link.attributes.contains(&LinkAttribute::Controller(bridge.ifindex));
            if !is_ours {
                continue;
            }
            let mut vlans = PortVlans::default();
            let infos = link.attributes.iter().filter_map(|a| match a {
                LinkAttribute::AfSpecBridge(spec) => Some(spec),
                _ => None,
            });
            for info in infos.flatten() {
                if let AfSpecBridge::VlanInfo(info) = info {
                    vlans.vlans.insert(info.vid, info.flags.contains(BridgeVlanInfoFlags::Untagged));
                    if info.flags.contains(BridgeVlanInfoFlags::Pvid) {
                        vlans.pvid = Some(info.vid);
                    }
                }
            }
            config.ports.insert(link.header.index, vlans);
        }
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.map_err(netlink_error("listing interfaces"))? {
            if !link.attributes.contains(&LinkAttribute::Link(bridge.ifindex)) {
                continue;
            }
            let vlan_id = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Vlan(options)) => options.iter().find_map(|o| match o {
                        InfoVlan::Id(id) => Some(*id),
                        _ => None,
                    }),
                    _ => None,
                }),
                _ => None,
            });
            if let Some(id) = vlan_id {
                config.interfaces.entry(id).or_insert(link.header.index);
            }
        }
        Ok(config)
    }

    /// The kernel bridge's own multicast snooping setting.
    pub async fn kernel_snooping(&self, bridge: &Bridge) -> Result<bool> {
        Ok(self.bridge_state(bridge).await?.kernel_snooping())
    }

    /// Teaches the bridge that `mac` is behind `port` (in `vlan`, on a
    /// VLAN-aware bridge: it learns per VLAN), as if it had seen a frame
    /// from it there (NTF_USE: the bridge's own learning, ageing included).
    pub async fn learn(&self, port: u32, mac: [u8; 6], vlan: u16) -> Result<()> {
        let mut request = self
            .handle
            .neighbours()
            .add_bridge(port, &mac)
            .state(NeighbourState::Reachable)
            .flags(NeighbourFlags::Use | NeighbourFlags::Controller)
            .replace();
        if vlan != VLAN_NONE {
            request.message_mut().attributes.push(NeighbourAttribute::Vlan(vlan));
        }
        request.execute().await.map_err(netlink_error("teaching the bridge a MAC"))
    }

    /// Turns the kernel bridge's own snooping on or off: two snoopers on one
    /// bridge would prune each other's traffic. Bridge options change only
    /// with RTM_NEWLINK on the existing link (RTM_SETLINK ignores them, as
    /// the kernel's rtnl_setlink never looks at IFLA_INFO_DATA); the result
    /// is read back.
    pub async fn set_kernel_snooping(&self, bridge: &Bridge, on: bool) -> Result<()> {
        // By index only: a name in the message makes Linux 6.1 refuse the
        // change with EBUSY (its dev_change_name tests IFF_UP before noticing
        // the name is the same).
        let message = LinkMessageBuilder::<LinkBridge>::new_with_info_kind(InfoKind::Bridge)
            .index(bridge.ifindex)
            .append_info_data(InfoBridge::MulticastSnooping(on))
            .build();
        let what = format!("setting mcast_snooping {} on {}", u8::from(on), bridge.name);
        self.handle.link().change(message).execute().await.map_err(netlink_error(what.clone()))?;
        if self.kernel_snooping(bridge).await? != on {
            return Err(Error::NotTaken { what });
        }
        Ok(())
    }

    /// An interface's first IPv4 address.
    pub async fn interface_ipv4(&self, ifindex: u32) -> Result<Option<Ipv4Addr>> {
        let mut addresses = self.handle.address().get().set_link_index_filter(ifindex).execute();
        while let Some(message) = addresses.try_next().await.map_err(netlink_error("listing addresses"))? {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(addr)) = attribute {
                    return Ok(Some(*addr));
                }
            }
        }
        Ok(None)
    }

    /// An interface's usable link-local IPv6 address (not one still in
    /// duplicate address detection, nor one that failed it): MLD queries come from it.
    pub async fn interface_ipv6_link_local(&self, ifindex: u32) -> Result<Option<Ipv6Addr>> {
        use rtnetlink::packet_route::address::AddressFlags;
        let mut addresses = self.handle.address().get().set_link_index_filter(ifindex).execute();
        while let Some(message) = addresses.try_next().await.map_err(netlink_error("listing addresses"))? {
            let unusable = message.attributes.iter().any(|a| match a {
                AddressAttribute::Flags(flags) => {
                    flags.contains(AddressFlags::Tentative) || flags.contains(AddressFlags::Dadfailed)
                }
                _ => false,
            });
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V6(addr)) = attribute {
                    if crate::proto::mld::is_link_local(*addr) && !unusable {
                        return Ok(Some(*addr));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A task that ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether the host routes multicast of each family (IPv4, IPv6) on the
/// interface `ifindex` (a multicast routing daemon made it a VIF / MIF:
/// pimd, FRR, smcroute, igmpproxy), read from its mc_forwarding sysctls.
pub fn host_routes_multicast(ifindex: u32) -> [bool; 2] {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: a buffer of IF_NAMESIZE, as if_indextoname requires.
    if unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) }.is_null() {
        return [false; 2];
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    let on = |family: &str| {
        std::fs::read_to_string(format!("/proc/sys/net/{family}/conf/{name}/mc_forwarding"))
            .is_ok_and(|v| v.trim() == "1")
    };
    [on("ipv4"), on("ipv6")]
}

/// IPv6 groups the bridge device itself has joined, from /proc/net/igmp6:
/// "IDX NAME GROUP-HEX USERS FLAGS TIMER" per line.
pub fn local_groups_v6(bridge_ifindex: u32) -> Vec<Ipv6Addr> {
    std::fs::read_to_string("/proc/self/net/igmp6")
        .map(|text| parse_proc_igmp6(&text, bridge_ifindex))
        .unwrap_or_default()
}

fn parse_proc_igmp6(text: &str, ifindex: u32) -> Vec<Ipv6Addr> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let index: u32 = fields.next()?.parse().ok()?;
            let _name = fields.next()?;
            let group = u128::from_str_radix(fields.next()?, 16).ok()?;
            (index == ifindex).then(|| Ipv6Addr::from(group))
        })
        .collect()
}

fn link_mac(link: &LinkMessage) -> [u8; 6] {
    link.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(bytes) if bytes.len() == 6 => bytes.as_slice().try_into().ok(),
            _ => None,
        })
        .unwrap_or([0; 6])
}

pub(crate) fn is_bridge(link: &LinkMessage) -> bool {
    link_kind(link) == Some(&InfoKind::Bridge)
}

fn link_kind(link: &LinkMessage) -> Option<&InfoKind> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind),
            _ => None,
        }),
        _ => None,
    })
}

/// Groups the bridge device itself has joined (its own host's sockets), from
/// /proc/net/igmp of the current network namespace.
pub fn local_groups(bridge_ifindex: u32) -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/proc/self/net/igmp")
        .map(|text| parse_proc_igmp(&text, bridge_ifindex))
        .unwrap_or_default()
}

/// Device lines are "IDX\tNAME: COUNT QUERIER", the name padded to 10
/// characters, so a longer name runs into its colon: they are matched by
/// their index, not their name.
fn parse_proc_igmp(text: &str, ifindex: u32) -> Vec<Ipv4Addr> {
    let mut groups = Vec::new();
    let mut in_device = false;
    for line in text.lines().skip(1) {
        if !line.starts_with('\t') {
            in_device = line.split('\t').next().and_then(|idx| idx.trim().parse::<u32>().ok()) == Some(ifindex);
        } else if in_device {
            // "\t\t\t\t010000E0     1 0:00000000\t\t0": the group, little-endian hex.
            if let Some(hex) = line.split_whitespace().next() {
                if let Ok(value) = u32::from_str_radix(hex, 16) {
                    groups.push(Ipv4Addr::from(value.to_le_bytes()));
                }
            }
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_igmp() {
        let text = "Idx\tDevice    : Count Querier\tGroup    Users Timer\tReporter\n\
                    1\tlo        :     1      V3\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                    4\tbr0       :     2      V3\n\
                    \t\t\t\t010101EF     1 0:00000000\t\t0\n\
                    \t\t\t\t010000E0     1 0:00000000\t\t0\n\
                    7\tdocker_gwbridge:     2      V3\n\
                    \t\t\t\t020202EF     1 0:00000000\t\t0\n\
                    12\tbr-3f2a1b4c5d6e:     1      V3\n\
                    \t\t\t\t030303EF     1 0:00000000\t\t0\n";
        assert_eq!(parse_proc_igmp(text, 4), [Ipv4Addr::new(239, 1, 1, 1), Ipv4Addr::new(224, 0, 0, 1)]);
        assert_eq!(parse_proc_igmp(text, 7), [Ipv4Addr::new(239, 2, 2, 2)]);
        assert_eq!(parse_proc_igmp(text, 12), [Ipv4Addr::new(239, 3, 3, 3)]);
        assert!(parse_proc_igmp(text, 5).is_empty());
    }

    #[test]
    fn proc_net_igmp6() {
        let text = "1    lo              ff020000000000000000000000000001     1 0000000C 0\n\
                    4    br0             ff0e0000000000000000000000001234     1 00000004 0\n\
                    4    br0             ff020000000000000000000000000001     1 0000000C 0\n\
                    12   br-3f2a1b4c5d6e ff050000000000000000000000000002     1 00000004 0\n";
        let ff0e: Ipv6Addr = "ff0e::1234".parse().unwrap();
        assert_eq!(parse_proc_igmp6(text, 4), [ff0e, "ff02::1".parse().unwrap()]);
        assert_eq!(parse_proc_igmp6(text, 12), ["ff05::2".parse::<Ipv6Addr>().unwrap()]);
        assert!(parse_proc_igmp6(text, 5).is_empty());
    }
}
