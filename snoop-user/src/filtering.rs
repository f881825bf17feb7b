//! Whether the kernel filters bridged traffic, which a copy made outside the
//! bridge (redirect forwarding) would skip: nftables base chains of the
//! bridge family on the hooks forwarded frames pass, legacy ebtables tables,
//! and, where br_netfilter hands bridged IPv4 or IPv6 to the IP hooks
//! (globally, or for this bridge alone), rules there (the `ip`, `ip6` and
//! `inet` families); and netdev ingress chains on ports, whose frames then
//! take the bridge path (a tc redirect runs before them). Checked at every
//! rescan, in the current network namespace. Legacy (x_tables) tables built
//! into the kernel are not seen: use `--forwarding bridge` with those.
use std::{collections::BTreeSet, fs, io, path::Path};

use netlink_sys::protocols::NETLINK_NETFILTER;

use crate::netlink::{attribute, dump, header, NLM_F_DUMP, NLM_F_REQUEST};

/// br_netfilter's calls into the IP hooks for one bridge: its own
/// `nf_call_iptables`/`nf_call_ip6tables` options (the global sysctls
/// count as well).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BridgeCalls {
    pub iptables: bool,
    pub ip6tables: bool,
}

/// Why bridged traffic may be filtered here, if it may.
pub fn bridged_traffic_filtered(bridge: BridgeCalls) -> Option<&'static str> {
    let loaded = loaded_modules();
    let nft = nf_tables_may_hold_rules(&loaded);
    let chains = |family| nft && base_chains(family, BRIDGED_HOOKS).is_ok_and(|chains| !chains.is_empty());
    if chains(NFPROTO_BRIDGE) {
        return Some("nftables rules hook bridged traffic (a bridge-family base chain)");
    }
    if loaded.iter().any(|m| m.starts_with("ebtable_")) {
        return Some("legacy ebtables tables are loaded");
    }
    // br_netfilter hands bridged IPv4 (IPv6) to the IP hooks; that matters
    // only where rules hook them: the ip (ip6) and inet families.
    if bridge.iptables || sysctl_on("bridge-nf-call-iptables") {
        if chains(NFPROTO_IPV4) || chains(NFPROTO_INET) {
            return Some("br_netfilter passes bridged IPv4 to nftables rules (nf_call_iptables)");
        }
        if loaded.iter().any(|m| m.starts_with("iptable_")) {
            return Some("br_netfilter passes bridged IPv4 to legacy iptables (nf_call_iptables)");
        }
    }
    if bridge.ip6tables || sysctl_on("bridge-nf-call-ip6tables") {
        if chains(NFPROTO_IPV6) || chains(NFPROTO_INET) {
            return Some("br_netfilter passes bridged IPv6 to nftables rules (nf_call_ip6tables)");
        }
        if loaded.iter().any(|m| m.starts_with("ip6table_")) {
            return Some("br_netfilter passes bridged IPv6 to legacy ip6tables (nf_call_ip6tables)");
        }
    }
    None
}

/// The interfaces netdev-family base chains hook, at ingress and at
/// egress. A frame a tc program redirects on entering a port would skip
/// the port's ingress chains (they run after tc); a copy handed straight to
/// a veth peer would skip the port's egress chains.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetdevChains {
    pub ingress: BTreeSet<String>,
    pub egress: BTreeSet<String>,
}

pub fn netdev_chains() -> NetdevChains {
    let mut found = NetdevChains::default();
    if !nf_tables_may_hold_rules(&loaded_modules()) {
        return found;
    }
    for chain in base_chains(NFPROTO_NETDEV, &[NF_NETDEV_INGRESS, NF_NETDEV_EGRESS]).unwrap_or_default() {
        let devices = if chain.hook == NF_NETDEV_INGRESS { &mut found.ingress } else { &mut found.egress };
        devices.extend(chain.devices);
    }
    found
}

fn sysctl_on(name: &str) -> bool {
    fs::read_to_string(Path::new("/proc/sys/net/bridge").join(name)).is_ok_and(|v| v.trim() == "1")
}

/// The hooks forwarded frames pass: prerouting, forward, postrouting (the
/// same numbers in the bridge and IPv4 families).
const BRIDGED_HOOKS: &[u32] = &[0, 2, 4];

/// Modules loaded now, by name.
fn loaded_modules() -> Vec<String> {
    fs::read_to_string("/proc/modules")
        .map(|text| text.lines().filter_map(|l| l.split_whitespace().next().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// nf_tables can hold rules unless it is a loadable module that is not
/// loaded; then asking it would load it, for nothing.
fn nf_tables_may_hold_rules(loaded: &[String]) -> bool {
    if loaded.iter().any(|m| m == "nf_tables") {
        return true;
    }
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let modules_dep = Path::new("/lib/modules").join(release.trim()).join("modules.dep");
    let loadable = fs::read_to_string(modules_dep).is_ok_and(|dep| dep.contains("/nf_tables.ko"));
    !loadable
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_NETDEV: u8 = 5;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;
const NF_NETDEV_INGRESS: u32 = 0;
const NF_NETDEV_EGRESS: u32 = 1;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_DEV: u16 = 3;
const NFTA_HOOK_DEVS: u16 = 4;

/// A base chain: it sees traffic (a regular chain only what a base chain
/// jumps to), on the devices it names (netdev family).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct BaseChain {
    hook: u32,
    devices: Vec<String>,
}

/// The base chains of `family` on one of `hooks`.
fn base_chains(family: u8, hooks: &[u32]) -> io::Result<Vec<BaseChain>> {
    // nlmsghdr + nfgenmsg (family, version, resource id).
    let mut request = header(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN, NLM_F_REQUEST | NLM_F_DUMP, 4);
    request.extend_from_slice(&[family, 0, 0, 0]);
    let mut found = Vec::new();
    // nf_tables answers an error where it has nothing for the family.
    dump(NETLINK_NETFILTER, &request, |kind, payload| {
        if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN {
            // Attributes follow the 4-byte nfgenmsg.
            found.extend(base_chain(payload.get(4..).unwrap_or_default(), hooks));
        }
    })?;
    Ok(found)
}

/// The chain whose attributes are `attributes`, if it is a base chain on one of `hooks`.
fn base_chain(attributes: &[u8], hooks: &[u32]) -> Option<BaseChain> {
    let hook = attribute(attributes, NFTA_CHAIN_HOOK)?;
    let number = u32::from_be_bytes(attribute(hook, NFTA_HOOK_HOOKNUM)?.get(..4)?.try_into().ok()?);
    if !hooks.contains(&number) {
        return None;
    }
    let name = |bytes: &[u8]| String::from_utf8_lossy(bytes.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
    // One device (NFTA_HOOK_DEV), or several (NFTA_HOOK_DEVS: a list of names).
    let mut devices: Vec<String> = attribute(hook, NFTA_HOOK_DEV).map(name).into_iter().collect();
    let mut listed = attribute(hook, NFTA_HOOK_DEVS).unwrap_or_default();
    while listed.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([listed[0], listed[1]]));
        if length < 4 || length > listed.len() {
            break;
        }
        devices.push(name(&listed[4..length]));
        listed = listed.get((length + 3) & !3..).unwrap_or_default();
    }
    Some(BaseChain { hook: number, devices })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_are_read_and_bad_lengths_end_the_walk() {
        // NFTA_CHAIN_TABLE "t" (padded), then NFTA_CHAIN_HOOK (nested) holding
        // NFTA_HOOK_HOOKNUM = 2 (forward, big-endian).
        let attributes = [8, 0, 1, 0, b't', 0, 0, 0, 12, 0, 4, 0x80, 8, 0, 1, 0, 0, 0, 0, 2];
        let hook = attribute(&attributes, NFTA_CHAIN_HOOK).expect("the hook");
        assert_eq!(attribute(hook, NFTA_HOOK_HOOKNUM), Some(&[0, 0, 0, 2][..]));
        assert_eq!(attribute(&attributes[..8], NFTA_CHAIN_HOOK), None);
        assert_eq!(attribute(&[2, 0, 4, 0], NFTA_CHAIN_HOOK), None);
        assert_eq!(attribute(&[200, 0, 4, 0, 0], NFTA_CHAIN_HOOK), None);
    }

    #[test]
    fn a_netdev_chain_names_its_devices() {
        // NFTA_CHAIN_HOOK { HOOKNUM 0 (ingress), DEVS { "p1", "p2" } }.
        let devs = [8, 0, 1, 0, b'p', b'1', 0, 0, 8, 0, 1, 0, b'p', b'2', 0, 0];
        let mut hook = vec![8, 0, 1, 0, 0, 0, 0, 0];
        hook.extend_from_slice(&[20, 0, 4, 0x80]);
        hook.extend_from_slice(&devs);
        let mut chain = vec![(hook.len() + 4) as u8, 0, 4, 0x80];
        chain.extend_from_slice(&hook);
        let found = base_chain(&chain, &[NF_NETDEV_INGRESS]).expect("a base chain");
        assert_eq!(found.devices, ["p1", "p2"]);
        assert_eq!(base_chain(&chain, &[1]), None, "another hook");
    }
}
