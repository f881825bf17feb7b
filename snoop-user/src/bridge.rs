//! What snoop needs to know about a bridge, read over rtnetlink so it works in
//! whatever network namespace snoop runs in (sysfs shows the mounter's).
use std::net::{IpAddr, Ipv4Addr};

use anyhow::{bail, Context as _, Result};
use futures::TryStreamExt as _;
use rtnetlink::{
    packet_route::{
        address::AddressAttribute,
        link::{InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo, LinkMessage},
    },
    Handle, LinkBridge, LinkMessageBuilder,
};

/// A bridge port.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Port {
    pub ifindex: u32,
    pub name: String,
}

/// The bridge snoop runs on.
#[derive(Clone, Debug)]
pub struct Bridge {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens an rtnetlink socket in the current network namespace. Needs a tokio runtime.
    pub fn open() -> Result<Self> {
        let (connection, handle, _) = rtnetlink::new_connection().context("opening rtnetlink")?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Looks the bridge up; a clear error if it is missing or not a bridge.
    pub async fn bridge(&self, name: &str) -> Result<Bridge> {
        let link = self
            .link_by_name(name)
            .await?
            .with_context(|| format!("no interface named {name} (create it with `ip link add {name} type bridge`)"))?;
        if !is_bridge(&link) {
            bail!("{name} is not a bridge");
        }
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => bytes.as_slice().try_into().ok(),
                _ => None,
            })
            .unwrap_or([0; 6]);
        Ok(Bridge { name: name.to_owned(), ifindex: link.header.index, mac })
    }

    async fn link_by_name(&self, name: &str) -> Result<Option<LinkMessage>> {
        let mut links = self.handle.link().get().match_name(name.to_owned()).execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            // ENODEV: no such interface.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(e).context("asking rtnetlink for the interface"),
        }
    }

    /// Whether the bridge still exists.
    pub async fn bridge_exists(&self, bridge: &Bridge) -> Result<bool> {
        let mut links = self.handle.link().get().match_index(bridge.ifindex).execute();
        match links.try_next().await {
            Ok(Some(link)) => Ok(is_bridge(&link)),
            Ok(None) => Ok(false),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(false),
            Err(e) => Err(e).context("asking rtnetlink for the bridge"),
        }
    }

    /// The bridge's ports, sorted by ifindex.
    pub async fn ports(&self, bridge: &Bridge) -> Result<Vec<Port>> {
        let mut ports = Vec::new();
        let mut links = self.handle.link().get().execute();
        while let Some(link) = links.try_next().await.context("listing interfaces")? {
            let is_port = link.attributes.iter().any(|a| *a == LinkAttribute::Controller(bridge.ifindex));
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
            ports.push(Port { ifindex: link.header.index, name });
        }
        ports.sort();
        Ok(ports)
    }

    /// The kernel bridge's own multicast snooping setting.
    pub async fn kernel_snooping(&self, bridge: &Bridge) -> Result<bool> {
        let link = self
            .link_by_name(&bridge.name)
            .await?
            .with_context(|| format!("bridge {} disappeared", bridge.name))?;
        let enabled = link.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|info| match info {
                LinkInfo::Data(InfoData::Bridge(opts)) => opts.iter().find_map(|o| match o {
                    InfoBridge::MulticastSnooping(on) => Some(*on),
                    _ => None,
                }),
                _ => None,
            }),
            _ => None,
        });
        Ok(enabled.unwrap_or(false))
    }

    /// Turns the kernel bridge's own snooping on or off: two snoopers on one
    /// bridge would prune each other's traffic.
    pub async fn set_kernel_snooping(&self, bridge: &Bridge, on: bool) -> Result<()> {
        let message = LinkMessageBuilder::<LinkBridge>::new(&bridge.name)
            .index(bridge.ifindex)
            .append_info_data(InfoBridge::MulticastSnooping(on))
            .build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .with_context(|| format!("setting mcast_snooping {} on {}", u8::from(on), bridge.name))
    }

    /// The bridge's first IPv4 address, used as the querier source by default.
    pub async fn bridge_ipv4(&self, bridge: &Bridge) -> Result<Option<Ipv4Addr>> {
        let mut addresses = self.handle.address().get().set_link_index_filter(bridge.ifindex).execute();
        while let Some(message) = addresses.try_next().await.context("listing addresses")? {
            for attribute in &message.attributes {
                if let AddressAttribute::Address(IpAddr::V4(addr)) = attribute {
                    return Ok(Some(*addr));
                }
            }
        }
        Ok(None)
    }
}

fn is_bridge(link: &LinkMessage) -> bool {
    link.attributes.iter().any(|a| match a {
        LinkAttribute::LinkInfo(infos) => infos.iter().any(|i| *i == LinkInfo::Kind(InfoKind::Bridge)),
        _ => false,
    })
}
