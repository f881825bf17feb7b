//! Whether the kernel filters bridged traffic, which a copy made outside the
//! bridge (redirect forwarding) would skip: nftables base chains of the
//! bridge family on the hooks forwarded frames pass, legacy ebtables tables,
//! and, where br_netfilter hands bridged IPv4 to the IPv4 hooks, rules there.
//! Checked at every rescan, in the current network namespace. Legacy
//! (x_tables) tables built into the kernel are not seen: use
//! `--forwarding bridge` with those.
use std::{fs, io, path::Path};

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

/// Why bridged traffic may be filtered here, if it may.
pub fn bridged_traffic_filtered() -> Option<&'static str> {
    let loaded = loaded_modules();
    let nft = nf_tables_may_hold_rules(&loaded);
    if nft && base_chains(NFPROTO_BRIDGE, BRIDGED_HOOKS).unwrap_or(false) {
        return Some("nftables rules hook bridged traffic (a bridge-family base chain)");
    }
    if loaded.iter().any(|m| m.starts_with("ebtable_")) {
        return Some("legacy ebtables tables are loaded");
    }
    // br_netfilter hands bridged IPv4 to the IPv4 hooks; that matters only
    // where rules hook them.
    if br_netfilter_calls_iptables() {
        if nft && base_chains(NFPROTO_IPV4, BRIDGED_HOOKS).unwrap_or(false) {
            return Some("br_netfilter passes bridged IPv4 to nftables/iptables rules (bridge-nf-call-iptables = 1)");
        }
        if loaded.iter().any(|m| m.starts_with("iptable_")) {
            return Some("br_netfilter passes bridged IPv4 to legacy iptables (bridge-nf-call-iptables = 1)");
        }
    }
    None
}

fn br_netfilter_calls_iptables() -> bool {
    fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables").is_ok_and(|v| v.trim() == "1")
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
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_BRIDGE: u8 = 7;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;

/// Whether `family` has a base chain on one of `hooks` (a base chain sees
/// traffic; a regular chain only what a base chain jumps to).
fn base_chains(family: u8, hooks: &[u32]) -> io::Result<bool> {
    let mut socket = Socket::new(NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // nlmsghdr (16 bytes) + nfgenmsg (family, version, resource id).
    let mut request = Vec::with_capacity(20);
    request.extend_from_slice(&20u32.to_ne_bytes());
    request.extend_from_slice(&(NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETCHAIN).to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id
    request.extend_from_slice(&[family, 0, 0, 0]);
    socket.send(&request, 0)?;
    let mut found = false;
    loop {
        let (reply, _) = socket.recv_from_full()?;
        let mut at = 0;
        while at + 16 <= reply.len() {
            let length = u32::from_ne_bytes(reply[at..at + 4].try_into().expect("4 bytes")) as usize;
            let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().expect("2 bytes"));
            if length < 16 || at + length > reply.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "a malformed netlink message"));
            }
            match kind {
                // nf_tables answers an error where it has nothing for the family.
                NLMSG_DONE | NLMSG_ERROR => return Ok(found),
                k if k == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWCHAIN => {
                    // Attributes follow the 16-byte header and the 4-byte nfgenmsg.
                    let hook = attribute(reply.get(at + 20..at + length).unwrap_or_default(), NFTA_CHAIN_HOOK)
                        .and_then(|hook| attribute(hook, NFTA_HOOK_HOOKNUM))
                        .and_then(|number| Some(u32::from_be_bytes(number.get(..4)?.try_into().ok()?)));
                    found |= hook.is_some_and(|hook| hooks.contains(&hook));
                }
                _ => {}
            }
            at += (length + 3) & !3;
        }
    }
}

/// The payload of the netlink attribute of `kind` in a list, if there is one.
fn attribute(mut attributes: &[u8], kind: u16) -> Option<&[u8]> {
    while attributes.len() >= 4 {
        let length = usize::from(u16::from_ne_bytes([attributes[0], attributes[1]]));
        // The top bits are flags (nested, byte order).
        let this = u16::from_ne_bytes([attributes[2], attributes[3]]) & 0x3fff;
        if length < 4 || length > attributes.len() {
            return None;
        }
        if this == kind {
            return Some(&attributes[4..length]);
        }
        attributes = attributes.get((length + 3) & !3..).unwrap_or_default();
    }
    None
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
}
