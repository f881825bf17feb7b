//! `snoop switch IF...`: a snooping switch made of plain interfaces, for a
//! lab with no managed one. It makes a bridge of them, moves what the
//! administrator configured on them (addresses, routes, multipath routes
//! and nexthop objects through them) to the bridge so the host stays
//! reachable through them, and on the way out puts each interface back as
//! it was: no master, its addresses and routes, up or down.
mod nexthop;

use std::net::IpAddr;

use futures::TryStreamExt as _;
use log::{info, warn};

use crate::bridge::Netlink;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{InfoBridge, LinkAttribute, LinkFlags},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol},
    },
    Handle, LinkBridge, LinkUnspec, RouteMessageBuilder,
};

/// Why the interfaces cannot become a switch, or could not all be put back.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no interface named {0}")]
    NoSuchInterface(String),
    #[error("{interface} is a port of {master} already: snoop switch takes interfaces that are no one's port")]
    AlreadyAPort { interface: String, master: String },
    #[error("{0} is a bridge: `snoop run --bridge {0}` snoops on it as it is")]
    IsABridge(String),
    #[error("{0} is a loopback interface")]
    Loopback(String),
    #[error("{0} is named twice")]
    NamedTwice(String),
    #[error("an interface named {0} exists already: name the new bridge with --bridge")]
    NameTaken(String),
    #[error("{what}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error(transparent)]
    Bridge(#[from] crate::bridge::Error),
    #[error("not put back as it was: {}", .0.join("; "))]
    NotRestored(Vec<String>),
    #[error("listing nexthop objects")]
    Nexthops { source: std::io::Error },
    #[error("moving nexthop {id} to {bridge}")]
    Nexthop { id: u32, bridge: String, source: std::io::Error },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn netlink_error(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// The errno of a netlink error reply, if it is one.
fn errno(error: &rtnetlink::Error) -> Option<i32> {
    match error {
        rtnetlink::Error::NetlinkError(message) => Some(-message.raw_code()),
        _ => None,
    }
}

/// One interface as it was before it became a port, and what moves from it.
struct Interface {
    name: String,
    ifindex: u32,
    up: bool,
    /// Addresses configured by hand (no lifetime), but IPv6 link-local ones,
    /// which every interface has of its own.
    addresses: Vec<AddressMessage>,
}

/// A bridge made of interfaces, and how to undo it.
pub struct Switch {
    netlink: Netlink,
    bridge: String,
    /// Set once the bridge exists: only a bridge this made is deleted.
    bridge_ifindex: Option<u32>,
    interfaces: Vec<Interface>,
    /// Routes added by hand (protocol boot or static) through the
    /// interfaces: out of one, or with one among a multipath route's hops.
    routes: Vec<RouteMessage>,
    /// Nexthop objects out of the interfaces (routes naming them follow).
    nexthops: Vec<nexthop::Nexthop>,
    /// Routes added by hand that name one of those nexthops: deleted with
    /// them when the bridge goes, made again after them.
    nexthop_routes: Vec<RouteMessage>,
}

impl Switch {
    /// Checks that `interfaces` can make a bridge named `bridge`, and reads
    /// what moves; changes nothing. Needs a tokio runtime.
    pub async fn plan(bridge: &str, interfaces: &[String]) -> Result<Self> {
        let netlink = Netlink::open()?;
        if netlink.link_by_name(bridge).await?.is_some() {
            return Err(Error::NameTaken(bridge.to_owned()));
        }
        let mut switch = Self {
            netlink,
            bridge: bridge.to_owned(),
            bridge_ifindex: None,
            interfaces: Vec::new(),
            routes: Vec::new(),
            nexthops: Vec::new(),
            nexthop_routes: Vec::new(),
        };
        for name in interfaces {
            if switch.interfaces.iter().any(|i| &i.name == name) {
                return Err(Error::NamedTwice(name.clone()));
            }
            let link = switch.netlink.link_by_name(name).await?.ok_or_else(|| Error::NoSuchInterface(name.clone()))?;
            if link.header.flags.contains(LinkFlags::Loopback) {
                return Err(Error::Loopback(name.clone()));
            }
            if crate::bridge::is_bridge(&link) {
                return Err(Error::IsABridge(name.clone()));
            }
            if let Some(master) = link.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(index) => Some(*index),
                _ => None,
            }) {
                let master = link_name(switch.handle(), master).await.unwrap_or_else(|| format!("ifindex {master}"));
                return Err(Error::AlreadyAPort { interface: name.clone(), master });
            }
            let ifindex = link.header.index;
            switch.interfaces.push(Interface {
                name: name.clone(),
                ifindex,
                up: link.header.flags.contains(LinkFlags::Up),
                addresses: switch.moving_addresses(ifindex).await?,
            });
        }
        switch.nexthops = nexthop::through(&switch.ifindexes()).map_err(|source| Error::Nexthops { source })?;
        (switch.routes, switch.nexthop_routes) = switch.moving_routes().await?;
        Ok(switch)
    }

    fn ifindexes(&self) -> Vec<u32> {
        self.interfaces.iter().map(|i| i.ifindex).collect()
    }

    /// Makes the bridge: its own multicast snooping off (snoop's replaces
    /// it), the interfaces its ports, up, their addresses and routes on it.
    /// On an error, what was done is undone.
    pub async fn build(&mut self) -> Result<()> {
        let built = self.try_build().await;
        if built.is_err() {
            if let Err(error) = self.restore().await {
                warn!("{error}");
            }
        }
        built
    }

    async fn try_build(&mut self) -> Result<()> {
        let bridge = LinkBridge::new(&self.bridge).append_info_data(InfoBridge::MulticastSnooping(false)).build();
        let what = format!("creating the bridge {}", self.bridge);
        self.handle().link().add(bridge).execute().await.map_err(netlink_error(what))?;
        let bridge = self
            .netlink
            .link_by_name(&self.bridge)
            .await?
            .ok_or_else(|| Error::NoSuchInterface(self.bridge.clone()))?;
        let bridge_ifindex = bridge.header.index;
        self.bridge_ifindex = Some(bridge_ifindex);
        for route in &self.routes {
            ignore(self.handle().route().del(route.clone()).execute().await, &[libc::ESRCH, libc::ENOENT])
                .map_err(netlink_error(format!("moving the route {}", route_text(route))))?;
        }
        for interface in &self.interfaces {
            for address in &interface.addresses {
                ignore(self.handle().address().del(address.clone()).execute().await, &[libc::EADDRNOTAVAIL])
                    .map_err(netlink_error(format!("moving an address of {}", interface.name)))?;
            }
            let port = LinkUnspec::new_with_index(interface.ifindex).controller(bridge_ifindex).up().build();
            self.handle()
                .link()
                .set(port)
                .execute()
                .await
                .map_err(netlink_error(format!("making {} a port of {}", interface.name, self.bridge)))?;
        }
        for interface in &self.interfaces {
            for address in &interface.addresses {
                self.add_address(address, Some(bridge_ifindex))
                    .await
                    .map_err(netlink_error(format!("moving an address of {} to {}", interface.name, self.bridge)))?;
            }
        }
        // Their gateways are reachable through the bridge now.
        for nexthop in &self.nexthops {
            nexthop::set_oif(nexthop, bridge_ifindex).map_err(|source| Error::Nexthop {
                id: nexthop.id,
                bridge: self.bridge.clone(),
                source,
            })?;
        }
        for route in &self.routes {
            self.add_route(route, Some(bridge_ifindex)).await.map_err(netlink_error(format!(
                "moving the route {} to {}",
                route_text(route),
                self.bridge
            )))?;
        }
        let ports: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
        info!("made {} of {}", self.bridge, ports.join(", "));
        Ok(())
    }

    /// Deletes the bridge and puts every interface back as it was. Carries
    /// on past a failure (an interface deleted meanwhile, say) and names
    /// each at the end.
    pub async fn restore(&mut self) -> Result<()> {
        let mut failures = Vec::new();
        if let Some(bridge_ifindex) = self.bridge_ifindex.take() {
            // Its ports are released; its addresses, routes and nexthops
            // (and the routes naming them) go with it.
            if let Err(error) = ignore(self.handle().link().del(bridge_ifindex).execute().await, &[libc::ENODEV]) {
                failures.push(format!("deleting {}: {error}", self.bridge));
            }
        }
        let mut back = Vec::new();
        for interface in &self.interfaces {
            match link_name(self.handle(), interface.ifindex).await {
                Some(name) if name == interface.name => {}
                _ => {
                    failures.push(format!("{} is gone", interface.name));
                    continue;
                }
            }
            // Routes need their interface up and their gateway's address there.
            let port = LinkUnspec::new_with_index(interface.ifindex).nocontroller().up().build();
            if let Err(error) = self.handle().link().set(port).execute().await {
                failures.push(format!("releasing {}: {error}", interface.name));
            }
            for address in &interface.addresses {
                if let Err(error) = ignore(self.add_address(address, None).await, &[libc::EEXIST]) {
                    failures.push(format!("{} on {}: {error}", address_text(address), interface.name));
                }
            }
            back.push(interface.ifindex);
        }
        // Made again as they were (or replaced, if never moved).
        for nexthop in self.nexthops.iter().filter(|n| n.oif.is_some_and(|oif| back.contains(&oif))) {
            if let Err(error) = nexthop::set_oif(nexthop, nexthop.oif.unwrap_or_default()) {
                failures.push(format!("nexthop {}: {error}", nexthop.id));
            }
        }
        for route in self.nexthop_routes.iter().chain(&self.routes) {
            if let Err(error) = ignore(self.add_route(route, None).await, &[libc::EEXIST]) {
                failures.push(format!("the route {}: {error}", route_text(route)));
            }
        }
        for interface in self.interfaces.iter().filter(|i| !i.up && back.contains(&i.ifindex)) {
            let down = LinkUnspec::new_with_index(interface.ifindex).down().build();
            if let Err(error) = self.handle().link().set(down).execute().await {
                failures.push(format!("setting {} down: {error}", interface.name));
            }
        }
        if failures.is_empty() {
            let names: Vec<&str> = self.interfaces.iter().map(|i| i.name.as_str()).collect();
            info!("put {} back as they were", names.join(", "));
            Ok(())
        } else {
            Err(Error::NotRestored(failures))
        }
    }

    fn handle(&self) -> &Handle {
        self.netlink.handle()
    }

    async fn moving_addresses(&self, ifindex: u32) -> Result<Vec<AddressMessage>> {
        let mut moving = Vec::new();
        let mut addresses = self.handle().address().get().set_link_index_filter(ifindex).execute();
        while let Some(address) = addresses.try_next().await.map_err(netlink_error("listing addresses"))? {
            let permanent = address.header.flags.contains(AddressHeaderFlags::Permanent)
                || address
                    .attributes
                    .iter()
                    .any(|a| matches!(a, AddressAttribute::Flags(f) if f.contains(AddressFlags::Permanent)));
            let link_local = address.attributes.iter().any(
                |a| matches!(a, AddressAttribute::Address(IpAddr::V6(ip)) if crate::proto::mld::is_link_local(*ip)),
            );
            if permanent && !link_local {
                moving.push(address);
            }
        }
        Ok(moving)
    }

    /// The routes added by hand through the interfaces (out of one, or
    /// with a multipath hop through one), and those naming a nexthop
    /// object that goes out of one (the kernel shows those with the
    /// nexthop's interface; they follow the nexthop, not moved themselves).
    async fn moving_routes(&self) -> Result<(Vec<RouteMessage>, Vec<RouteMessage>)> {
        let ifindexes = self.ifindexes();
        let nexthop_ids: Vec<u32> = self.nexthops.iter().map(|n| n.id).collect();
        let (mut moving, mut following) = (Vec::new(), Vec::new());
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for request in requests {
            let mut routes = self.handle().route().get(request).execute();
            while let Some(route) = routes.try_next().await.map_err(netlink_error("listing routes"))? {
                if !matches!(route.header.protocol, RouteProtocol::Boot | RouteProtocol::Static) {
                    continue;
                }
                let nexthop = route.attributes.iter().find_map(|a| match a {
                    RouteAttribute::NhId(id) => Some(*id),
                    _ => None,
                });
                let through = route.attributes.iter().any(|a| match a {
                    RouteAttribute::Oif(ifindex) => ifindexes.contains(ifindex),
                    RouteAttribute::MultiPath(hops) => hops.iter().any(|hop| ifindexes.contains(&hop.interface_index)),
                    _ => false,
                });
                match nexthop {
                    Some(id) if nexthop_ids.contains(&id) => following.push(route),
                    Some(_) => {}
                    None if through => moving.push(route),
                    None => {}
                }
            }
        }
        Ok((moving, following))
    }

    /// Adds a saved address to its interface, or to `bridge` instead.
    async fn add_address(&self, address: &AddressMessage, bridge: Option<u32>) -> Result<(), rtnetlink::Error> {
        let mut message = address.clone();
        // The kernel's lifetimes and the label (named after the interface) stay behind.
        message.attributes.retain(|a| !matches!(a, AddressAttribute::CacheInfo(_) | AddressAttribute::Label(_)));
        if let Some(bridge) = bridge {
            message.header.index = bridge;
        }
        let ip = address_ip(address).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let mut request = self.handle().address().add(message.header.index, ip, message.header.prefix_len);
        *request.message_mut() = message;
        request.execute().await
    }

    /// Adds a saved route as it was, or through `bridge` instead of the
    /// switched interfaces (its own output interface, its hops').
    async fn add_route(&self, route: &RouteMessage, bridge: Option<u32>) -> Result<(), rtnetlink::Error> {
        let mut message = route.clone();
        message.attributes.retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
        // A route naming a nexthop object takes its way from it alone (the
        // kernel shows the nexthop's interface and gateway on it too).
        if message.attributes.iter().any(|a| matches!(a, RouteAttribute::NhId(_))) {
            message.attributes.retain(|a| !matches!(a, RouteAttribute::Oif(_) | RouteAttribute::Gateway(_)));
        }
        if let Some(bridge) = bridge {
            let ifindexes = self.ifindexes();
            for attribute in &mut message.attributes {
                match attribute {
                    RouteAttribute::Oif(ifindex) if ifindexes.contains(ifindex) => *ifindex = bridge,
                    RouteAttribute::MultiPath(hops) => {
                        for hop in hops.iter_mut().filter(|hop| ifindexes.contains(&hop.interface_index)) {
                            hop.interface_index = bridge;
                        }
                    }
                    _ => {}
                }
            }
        }
        self.handle().route().add(message).execute().await
    }
}

/// Success, or an error with one of `harmless` errnos (already done).
fn ignore(result: Result<(), rtnetlink::Error>, harmless: &[i32]) -> Result<(), rtnetlink::Error> {
    match result {
        Err(error) if errno(&error).is_some_and(|e| harmless.contains(&e)) => Ok(()),
        other => other,
    }
}

fn address_ip(address: &AddressMessage) -> Option<IpAddr> {
    // IPv4 puts the interface's own address in Local (Address is the peer's on point-to-point links).
    let local = address.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    local.or_else(|| {
        address.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(ip) => Some(*ip),
            _ => None,
        })
    })
}

/// A route as the log names it: its destination.
fn route_text(route: &RouteMessage) -> String {
    let destination = route.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(ip.to_string()),
        RouteAttribute::Destination(RouteAddress::Inet6(ip)) => Some(ip.to_string()),
        _ => None,
    });
    format!("{}/{}", destination.unwrap_or_else(|| "default".into()), route.header.destination_prefix_length)
}

fn address_text(address: &AddressMessage) -> String {
    match address_ip(address) {
        Some(ip) => format!("{ip}/{}", address.header.prefix_len),
        None => "an address".to_owned(),
    }
}

async fn link_name(handle: &Handle, ifindex: u32) -> Option<String> {
    let link = handle.link().get().match_index(ifindex).execute().try_next().await.ok()??;
    link.attributes.into_iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name),
        _ => None,
    })
}
