//! One VLAN's snooping context, owning both families' state machines, as the
//! bridge's per-VLAN multicast context does (the whole bridge, as VLAN 0,
//! while it does not filter VLANs). What is done to a VLAN is done here to
//! both families; what a family's machine decides comes back as [`Actions`].
use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use crate::{
    membership::{Action, Group, PortOptions, Snooper},
    port_groups::GroupFilter,
    proto::{Family, Packet, ParseError},
    stats::Protocol,
};

/// Both families' state machines of one VLAN.
#[derive(Clone, Debug)]
pub struct VlanContext {
    pub igmp: Snooper<Ipv4Addr>,
    /// None while MLD snooping is off (IPv6 groups flood).
    pub mld: Option<Snooper<Ipv6Addr>>,
}

/// What both machines of a context decided.
#[derive(Debug, Default)]
pub struct Actions {
    pub igmp: Vec<Action<Ipv4Addr>>,
    pub mld: Vec<Action<Ipv6Addr>>,
}

/// A family the daemon snoops: where its machine is in a context.
pub trait Snooped: Family {
    fn of(context: &VlanContext) -> Option<&Snooper<Self>>;
    fn of_mut(context: &mut VlanContext) -> Option<&mut Snooper<Self>>;
    /// Its share of [`Actions`].
    fn actions(actions: Vec<Action<Self>>) -> Actions;
}

impl Snooped for Ipv4Addr {
    fn of(context: &VlanContext) -> Option<&Snooper<Self>> {
        Some(&context.igmp)
    }
    fn of_mut(context: &mut VlanContext) -> Option<&mut Snooper<Self>> {
        Some(&mut context.igmp)
    }
    fn actions(igmp: Vec<Action<Self>>) -> Actions {
        Actions { igmp, mld: Vec::new() }
    }
}

impl Snooped for Ipv6Addr {
    fn of(context: &VlanContext) -> Option<&Snooper<Self>> {
        context.mld.as_ref()
    }
    fn of_mut(context: &mut VlanContext) -> Option<&mut Snooper<Self>> {
        context.mld.as_mut()
    }
    fn actions(mld: Vec<Action<Self>>) -> Actions {
        Actions { igmp: Vec::new(), mld }
    }
}

/// `$step` (an expression of the machine `$s`) on both families' machines.
macro_rules! both {
    ($context:expr, |$s:ident| $step:expr) => {{
        let context = $context;
        let $s = &mut context.igmp;
        let igmp = $step;
        let mld = match context.mld.as_mut() {
            Some($s) => $step,
            None => Vec::new(),
        };
        Actions { igmp, mld }
    }};
}

impl VlanContext {
    pub fn add_port(&mut self, port: u32, options: PortOptions) -> Actions {
        both!(self, |s| s.add_port(port, options))
    }

    pub fn set_port_options(&mut self, port: u32, options: PortOptions, now: Duration) -> Actions {
        both!(self, |s| s.set_port_options(port, options, now))
    }

    pub fn set_port_filter(&mut self, port: u32, filter: &GroupFilter) -> Actions {
        both!(self, |s| s.set_port_filter(port, filter.clone()))
    }

    pub fn remove_port(&mut self, port: u32) -> Actions {
        both!(self, |s| s.remove_port(port))
    }

    pub fn port_down(&mut self, port: u32, now: Duration) -> Actions {
        both!(self, |s| s.port_down(port, now))
    }

    pub fn poll(&mut self, now: Duration) -> Actions {
        both!(self, |s| s.poll(now))
    }

    pub fn resume_querier_presence(&mut self, now: Duration) {
        both!(self, |s| {
            s.resume_querier_presence(now);
            Vec::new()
        });
    }

    /// The groups `port` holds here: IPv4 and IPv6.
    pub fn port_groups(&self, port: u32) -> (usize, usize) {
        (self.igmp.port_group_count(port), self.mld.as_ref().map_or(0, |mld| mld.port_group_count(port)))
    }

    /// Tells both machines how many groups `port` holds beyond them, of
    /// `total` in every VLAN and family.
    pub fn set_groups_elsewhere(&mut self, port: u32, total: usize) {
        let (igmp, mld) = self.port_groups(port);
        self.igmp.set_groups_elsewhere(port, total - igmp);
        if let Some(snooper) = self.mld.as_mut() {
            snooper.set_groups_elsewhere(port, total - mld);
        }
    }

    pub fn has_port(&self, port: u32) -> bool {
        self.igmp.ports().contains_key(&port)
    }

    /// The earliest time a machine has something to do.
    pub fn next_deadline(&self) -> Option<Duration> {
        self.igmp.next_deadline().into_iter().chain(self.mld.as_ref().and_then(Snooper::next_deadline)).min()
    }

    /// Hands an IP packet of `family` heard from `from` to its machine: its
    /// actions, or why it was dropped. `Ok(None)`: IPv6 while MLD snooping
    /// is off.
    pub fn handle(
        &mut self,
        from: HeardFrom,
        vlan: u16,
        family: u8,
        packet: &[u8],
        now: Duration,
    ) -> Result<Option<Actions>, (Protocol, ParseError)> {
        match family {
            snoop_common::FAMILY_IPV6 => self.parsed::<Ipv6Addr>(packet, |s, p| from.hand(s, vlan, p, now)),
            _ => self.parsed::<Ipv4Addr>(packet, |s, p| from.hand(s, vlan, p, now)),
        }
    }

    /// `packet` parsed for `A`'s machine and handed to it by `step`.
    fn parsed<A: Snooped>(
        &mut self,
        packet: &[u8],
        step: impl FnOnce(&mut Snooper<A>, &Packet<A>) -> Vec<Action<A>>,
    ) -> Result<Option<Actions>, (Protocol, ParseError)> {
        let Some(snooper) = A::of_mut(self) else { return Ok(None) };
        let packet: Packet<A> = A::parse(packet).map_err(|error| (Protocol::of::<A>(), error))?;
        log::debug!("{packet:?}");
        Ok(Some(A::actions(step(snooper, &packet))))
    }

    /// A querier is present for `A` here (MLD off: never).
    pub fn querier_present<A: Snooped>(&self, now: Duration) -> bool {
        A::of(self).is_some_and(|s| s.querier_present(now))
    }

    /// Whether `port` is a router port of `A` here.
    pub fn is_router<A: Snooped>(&self, port: u32, now: Duration) -> bool {
        A::of(self).and_then(|s| s.ports().get(&port)).is_some_and(|p| p.is_router(now))
    }

    /// The ports of `group`'s members here.
    pub fn members<A: Snooped>(&self, group: &Group<A>) -> impl Iterator<Item = u32> + '_ {
        A::of(self).and_then(|s| s.groups().get(group)).into_iter().flat_map(|members| members.keys().copied())
    }
}

/// Who sent a control packet: a host behind a port, or the bridge's own
/// host (whose queries only count: a router running on it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeardFrom {
    Port(u32),
    BridgeHost,
}

impl HeardFrom {
    fn hand<A: Family>(self, snooper: &mut Snooper<A>, vlan: u16, packet: &Packet<A>, now: Duration) -> Vec<Action<A>> {
        match self {
            HeardFrom::Port(port) => snooper.handle(port, vlan, packet, now),
            HeardFrom::BridgeHost => snooper.host_query(vlan, packet, now),
        }
    }
}
