//! `snoop switch IF...`: a snooping switch made of plain interfaces, for a
//! lab with no managed one. It makes a bridge of them, moves what the
//! administrator configured on them (addresses, routes) to the bridge so the
//! host stays reachable through them, and on the way out puts each
//! interface back as it was: no master, its addresses and routes, up or down.
use std::net::IpAddr;

use futures::TryStreamExt as _;
use log::{info, warn};

use crate::bridge::Netlink;
use rtnetlink::{
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage},
        link::{InfoBridge, LinkAttribute, LinkFlags},
        route::{RouteAttribute, RouteMessage, RouteProtocol},
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
    /// Routes added by hand (protocol boot or static) through this interface alone.
    routes: Vec<RouteMessage>,
}

/// A bridge made of interfaces, and how to undo it.
pub struct Switch {
    netlink: Netlink,
    bridge: String,
    /// Set once the bridge exists: only a bridge this made is deleted.
    bridge_ifindex: Option<u32>,
    interfaces: Vec<Interface>,
}

impl Switch {
    /// Checks that `interfaces` can make a bridge named `bridge`, and reads
    /// what moves; changes nothing. Needs a tokio runtime.
    pub async fn plan(bridge: &str, interfaces: &[String]) -> Result<Self> {
        let netlink = Netlink::open()?;
        if netlink.link_by_name(bridge).await?.is_some() {
            return Err(Error::NameTaken(bridge.to_owned()));
        }
        let mut switch = Self { netlink, bridge: bridge.to_owned(), bridge_ifindex: None, interfaces: Vec::new() };
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
                routes: switch.moving_routes(ifindex).await?,
            });
        }
        Ok(switch)
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
        for interface in &self.interfaces {
            for route in &interface.routes {
                ignore(self.handle().route().del(route.clone()).execute().await, &[libc::ESRCH, libc::ENOENT])
                    .map_err(netlink_error(format!("moving a route of {}", interface.name)))?;
            }
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
            for route in &interface.routes {
                self.add_route(route, interface.ifindex, Some(bridge_ifindex))
                    .await
                    .map_err(netlink_error(format!("moving a route of {} to {}", interface.name, self.bridge)))?;
            }
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
            // Its ports are released, its addresses and routes go with it.
            if let Err(error) = ignore(self.handle().link().del(bridge_ifindex).execute().await, &[libc::ENODEV]) {
                failures.push(format!("deleting {}: {error}", self.bridge));
            }
        }
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
            for route in &interface.routes {
                if let Err(error) = ignore(self.add_route(route, interface.ifindex, None).await, &[libc::EEXIST]) {
                    failures.push(format!("a route of {}: {error}", interface.name));
                }
            }
            if !interface.up {
                let down = LinkUnspec::new_with_index(interface.ifindex).down().build();
                if let Err(error) = self.handle().link().set(down).execute().await {
                    failures.push(format!("setting {} down: {error}", interface.name));
                }
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

    async fn moving_routes(&self, ifindex: u32) -> Result<Vec<RouteMessage>> {
        let mut moving = Vec::new();
        let requests = [
            RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        ];
        for request in requests {
            let mut routes = self.handle().route().get(request).execute();
            while let Some(route) = routes.try_next().await.map_err(netlink_error("listing routes"))? {
                let by_hand = matches!(route.header.protocol, RouteProtocol::Boot | RouteProtocol::Static);
                if by_hand && route.attributes.contains(&RouteAttribute::Oif(ifindex)) {
                    moving.push(route);
                }
            }
        }
        Ok(moving)
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

    /// Adds a saved route through its interface, or through `bridge` instead.
    async fn add_route(&self, route: &RouteMessage, ifindex: u32, bridge: Option<u32>) -> Result<(), rtnetlink::Error> {
        let mut message = route.clone();
        message.attributes.retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
        if let Some(bridge) = bridge {
            for attribute in &mut message.attributes {
                if *attribute == RouteAttribute::Oif(ifindex) {
                    *attribute = RouteAttribute::Oif(bridge);
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
