//! What a port's groups are besides what its hosts report: the groups it
//! may join ([`GroupFilter`], the managed-switch "IGMP filter/profile"), and
//! those it always has ([`StaticGroup`], like `bridge mdb add ... permanent`).
//!
//! A port with allow ranges may join only groups in them, of either family;
//! deny ranges refuse groups whatever the allow ranges say. Static groups are
//! the administrator's word: neither filters nor group limits refuse them.
use std::{collections::BTreeSet, fmt, net::IpAddr, str::FromStr};

/// An inclusive range of group addresses of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GroupRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl GroupRange {
    pub fn contains(&self, group: IpAddr) -> bool {
        self.first <= group && group <= self.last && self.first.is_ipv4() == group.is_ipv4()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}`: {why} (a range is ADDRESS, ADDRESS/PREFIX or FIRST-LAST, of multicast addresses)")]
pub struct RangeError {
    text: String,
    why: &'static str,
}

impl FromStr for GroupRange {
    type Err = RangeError;

    /// `239.1.1.1`, `239.1.0.0/16`, `239.1.1.1-239.1.1.9`, `ff3e::/16`.
    fn from_str(text: &str) -> Result<Self, RangeError> {
        let error = |why| RangeError { text: text.to_owned(), why };
        let address = |s: &str| s.trim().parse::<IpAddr>().map_err(|_| error("not an IP address"));
        let range = if let Some((first, last)) = text.split_once('-') {
            Self { first: address(first)?, last: address(last)? }
        } else if let Some((base, prefix)) = text.split_once('/') {
            let base = address(base)?;
            let (bits, first) = match base {
                IpAddr::V4(base) => (32, u128::from(u32::from(base))),
                IpAddr::V6(base) => (128, u128::from(base)),
            };
            let prefix: u32 = prefix.parse().ok().filter(|p| *p <= bits).ok_or_else(|| error("a bad prefix length"))?;
            let host_bits = bits - prefix;
            let mask = if host_bits == 0 { 0 } else { u128::MAX >> (128 - host_bits) };
            if first & mask != 0 {
                return Err(error("host bits set after the prefix"));
            }
            let last = match base {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::from((first | mask) as u32)),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::from(first | mask)),
            };
            Self { first: base, last }
        } else {
            let group = address(text)?;
            Self { first: group, last: group }
        };
        if range.first.is_ipv4() != range.last.is_ipv4() {
            return Err(error("mixes IPv4 and IPv6"));
        }
        if range.first > range.last {
            return Err(error("its first address is after its last"));
        }
        if !range.first.is_multicast() || !range.last.is_multicast() {
            return Err(error("not multicast"));
        }
        Ok(range)
    }
}

impl fmt::Display for GroupRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// One port's filter. The default admits every group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupFilter {
    pub allow: Vec<GroupRange>,
    pub deny: Vec<GroupRange>,
}

impl GroupFilter {
    pub fn admits(&self, group: IpAddr) -> bool {
        (self.allow.is_empty() || self.allow.iter().any(|r| r.contains(group)))
            && !self.deny.iter().any(|r| r.contains(group))
    }

    pub fn is_open(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }
}

impl fmt::Display for GroupFilter {
    /// "allow 239.1.0.0-239.1.255.255; deny 239.1.1.1".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |ranges: &[GroupRange]| ranges.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
        match (self.allow.is_empty(), self.deny.is_empty()) {
            (true, true) => write!(f, "any group"),
            (false, true) => write!(f, "allow {}", list(&self.allow)),
            (true, false) => write!(f, "deny {}", list(&self.deny)),
            (false, false) => write!(f, "allow {}; deny {}", list(&self.allow), list(&self.deny)),
        }
    }
}

/// A static membership: `PORT=GROUP[,source=S]...[,vlan=V]` on the command
/// line and in the control protocol. No sources: any source.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StaticGroup {
    pub port: String,
    pub group: IpAddr,
    pub sources: BTreeSet<IpAddr>,
    /// 0: untagged (a bridge without VLAN filtering).
    pub vlan: u16,
}

impl StaticGroup {
    /// The same port's membership of the same group, whatever its sources.
    pub fn same_membership(&self, other: &StaticGroup) -> bool {
        (&self.port, self.group, self.vlan) == (&other.port, other.group, other.vlan)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("`{text}`: {why} (a static group is PORT=GROUP[,source=ADDRESS]...[,vlan=ID])")]
pub struct StaticGroupError {
    text: String,
    why: String,
}

impl FromStr for StaticGroup {
    type Err = StaticGroupError;

    fn from_str(text: &str) -> Result<Self, StaticGroupError> {
        let error = |why: String| StaticGroupError { text: text.to_owned(), why };
        let (port, rest) = text.split_once('=').ok_or_else(|| error("no `=`".into()))?;
        if port.is_empty() || port.len() > 15 || port.contains([' ', '/', ',']) {
            return Err(error(format!("`{port}` is not an interface name")));
        }
        let mut parts = rest.split(',');
        let group = parts.next().unwrap_or_default();
        let group: IpAddr = group.parse().map_err(|_| error(format!("`{group}` is not an IP address")))?;
        if !group.is_multicast() {
            return Err(error(format!("{group} is not a multicast group")));
        }
        let mut entry = StaticGroup { port: port.to_owned(), group, sources: BTreeSet::new(), vlan: 0 };
        for part in parts {
            match part.split_once('=') {
                Some(("source", source)) => {
                    let source: IpAddr =
                        source.parse().map_err(|_| error(format!("`{source}` is not an IP address")))?;
                    if source.is_multicast() || source.is_unspecified() || source.is_ipv4() != group.is_ipv4() {
                        return Err(error(format!("{source} is not a unicast source of {group}'s family")));
                    }
                    entry.sources.insert(source);
                }
                Some(("vlan", vlan)) => {
                    entry.vlan = vlan
                        .parse()
                        .ok()
                        .filter(|v| (1..=4094).contains(v))
                        .ok_or_else(|| error(format!("`{vlan}` is not a VLAN ID (1-4094)")))?;
                }
                _ => return Err(error(format!("`{part}`: expected source=ADDRESS or vlan=ID"))),
            }
        }
        Ok(entry)
    }
}

impl fmt::Display for StaticGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.port, self.group)?;
        for source in &self.sources {
            write!(f, ",source={source}")?;
        }
        if self.vlan != 0 {
            write!(f, ",vlan={}", self.vlan)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(text: &str) -> GroupRange {
        text.parse().unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ranges_parse_in_three_spellings() {
        assert_eq!(range("239.1.0.0/16"), range("239.1.0.0-239.1.255.255"));
        assert_eq!(range("239.1.1.1").to_string(), "239.1.1.1");
        assert_eq!(range("ff3e::/16").last, ip("ff3e:ffff:ffff:ffff:ffff:ffff:ffff:ffff"));
        assert_eq!(range("224.0.0.0/4").last, ip("239.255.255.255"));
        for bad in ["239.1.1.1/33", "239.1.1.0/16", "10.0.0.0/8", "239.1.1.9-239.1.1.1", "239.1.1.1-ff3e::1", "x"] {
            assert!(bad.parse::<GroupRange>().is_err(), "{bad}");
        }
        let error = "10.1.1.1".parse::<GroupRange>().unwrap_err().to_string();
        assert!(error.starts_with("`10.1.1.1`: not multicast"), "{error}");
    }

    #[test]
    fn allow_narrows_both_families_and_deny_wins() {
        let filter = GroupFilter { allow: vec![range("239.1.0.0/16")], deny: vec![range("239.1.9.0/24")] };
        assert!(filter.admits(ip("239.1.2.3")));
        assert!(!filter.admits(ip("239.1.9.3")));
        assert!(!filter.admits(ip("239.2.0.1")));
        assert!(!filter.admits(ip("ff3e::1")), "an allow list names every family the port may join");
        let deny_only = GroupFilter { allow: vec![], deny: vec![range("ff3e::/16")] };
        assert!(deny_only.admits(ip("239.2.0.1")) && !deny_only.admits(ip("ff3e::8000:1")));
        assert!(GroupFilter::default().admits(ip("ff05::1")));
        assert_eq!(filter.to_string(), "allow 239.1.0.0-239.1.255.255; deny 239.1.9.0-239.1.9.255");
    }

    #[test]
    fn static_groups_read_back_as_written() {
        for text in ["eth1=239.1.1.1", "vm101=232.1.1.1,source=10.0.0.5,source=10.0.0.6,vlan=10", "p2=ff3e::8000:1"] {
            assert_eq!(text.parse::<StaticGroup>().unwrap().to_string(), text);
        }
        let bad = [
            ("eth1", "no `=`"),
            ("eth1=10.0.0.1", "not a multicast group"),
            ("eth1=239.1.1.1,source=ff3e::1", "not a unicast source"),
            ("eth1=239.1.1.1,vlan=5000", "not a VLAN ID"),
            ("eth1=239.1.1.1,from=10.0.0.1", "expected source=ADDRESS"),
            ("=239.1.1.1", "not an interface name"),
        ];
        for (text, why) in bad {
            let error = text.parse::<StaticGroup>().unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
