//! Each port's membership of a group: the router-side filter mode and
//! source timers of RFC 3376 6.2-6.5 (RFC 3810 7.2-7.5), read from group
//! records as the table of RFC 3376 6.4 says, settled as timers run out.
use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    time::Duration,
};

use super::{Action, Group, RemoveReason, Snooper, NEVER};
use crate::proto::{Family, RecordType};

/// Sources a port keeps per group unless configured: twice the Linux
/// bridge's fixed 32, and enough for any SSM receiver seen in practice.
pub const DEFAULT_MAX_SOURCES: usize = 64;

/// Hosts behind one port a membership tells apart (explicit host
/// tracking, as the Linux bridge's for IGMPv3/MLDv2): beyond this, further
/// hosts are counted as unknown ones, and fast leave waits for them.
pub const MAX_TRACKED_HOSTS: usize = 32;

/// A port's filter mode for a group (RFC 3376 6.2.1, RFC 3810 7.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilterMode {
    Include,
    Exclude,
}

impl FilterMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Include => "include",
            Self::Exclude => "exclude",
        }
    }
}

/// Which of a group's sources a port gets: what the data path enforces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceFilter<A> {
    /// Only these sources.
    Include(BTreeSet<A>),
    /// Every source but these; `Exclude({})` is any source.
    Exclude(BTreeSet<A>),
}

impl<A: Ord> SourceFilter<A> {
    /// Any source: an older host's join, or EXCLUDE {}.
    pub const fn any() -> Self {
        Self::Exclude(BTreeSet::new())
    }

    pub fn is_any(&self) -> bool {
        matches!(self, Self::Exclude(blocked) if blocked.is_empty())
    }

    pub fn wants(&self, source: &A) -> bool {
        match self {
            Self::Include(listed) => listed.contains(source),
            Self::Exclude(listed) => !listed.contains(source),
        }
    }

    /// The sources named: those forwarded (INCLUDE) or blocked (EXCLUDE).
    pub fn listed(&self) -> &BTreeSet<A> {
        match self {
            Self::Include(listed) | Self::Exclude(listed) => listed,
        }
    }
}

impl<A: fmt::Display> fmt::Display for SourceFilter<A> {
    /// "any source", "include S1,S2", "exclude S3".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (mode, listed) = match self {
            Self::Exclude(listed) if listed.is_empty() => return write!(f, "any source"),
            Self::Include(listed) => ("include", listed),
            Self::Exclude(listed) => ("exclude", listed),
        };
        write!(f, "{mode} ")?;
        for (i, source) in listed.iter().enumerate() {
            write!(f, "{}{source}", if i == 0 { "" } else { "," })?;
        }
        Ok(())
    }
}

/// One port's membership of one group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member<A> {
    /// When the membership ends unless refreshed: the group timer in
    /// EXCLUDE mode, the last source timer in INCLUDE mode.
    pub expires: Duration,
    pub mode: FilterMode,
    /// Source timers. INCLUDE: the sources wanted. EXCLUDE: sources asked
    /// for (timer running) and blocked ones (timer passed: not forwarded).
    pub sources: BTreeMap<A, Duration>,
    /// Lowest version heard, so an older host's presence is visible.
    pub version: u8,
    pub last_reporter: A,
    /// The hosts behind the port that want the group, each until its
    /// report runs out: fast leave prunes only when the last one leaves.
    pub hosts: BTreeMap<A, Duration>,
    /// Until then hosts may want the group that are not in `hosts` (over
    /// [`MAX_TRACKED_HOSTS`], or resumed after a restart without them).
    pub untracked_hosts_until: Duration,
    /// While set and in the future, leaves are ignored: hosts of a version
    /// that sends none are present (RFC 2236 4, IGMPv1), so a leave cannot
    /// mean they are gone.
    pub no_leave_host_until: Option<Duration>,
    /// While set and in the future a host of a version without source lists
    /// (IGMPv1/v2, MLDv1) is present: BLOCK records are ignored and TO_EX
    /// lists emptied, so the port keeps every source (RFC 3376 7.3.2, RFC 3810 8.3.2).
    pub older_host_until: Option<Duration>,
    /// A leave was heard and the last-member queries are running.
    pub leaving: bool,
    /// Static (configured): never aged, reports and leaves leave it as it is.
    pub permanent: bool,
    /// The group timer (EXCLUDE mode).
    pub(super) group_timer: Duration,
    /// The member's next timer event: its key in [`Snooper`]'s expiry index.
    pub(super) next_event: Duration,
    /// The filter last handed to the data path.
    pub(super) filter: SourceFilter<A>,
    /// What the pinned map last got (a restart resumes from it).
    pub(super) persisted: Persisted,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Persisted {
    pub(super) expires: Duration,
    pub(super) version: u8,
    pub(super) leaving: bool,
}

impl<A: Family> Member<A> {
    pub(super) fn new(version: u8, reporter: A, now: Duration) -> Self {
        Self {
            expires: now,
            mode: FilterMode::Include,
            sources: BTreeMap::new(),
            version,
            last_reporter: reporter,
            hosts: BTreeMap::new(),
            untracked_hosts_until: Duration::ZERO,
            no_leave_host_until: None,
            older_host_until: None,
            leaving: false,
            permanent: false,
            group_timer: now,
            next_event: now,
            filter: SourceFilter::any(),
            persisted: Persisted::default(),
        }
    }

    /// The sources the port gets now.
    pub fn filter(&self, now: Duration) -> SourceFilter<A> {
        match self.mode {
            FilterMode::Include => SourceFilter::Include(self.sources.keys().copied().collect()),
            FilterMode::Exclude => {
                SourceFilter::Exclude(self.sources.iter().filter(|(_, t)| **t <= now).map(|(s, _)| *s).collect())
            }
        }
    }

    /// The sources the data path gives the port: the filter as last settled.
    pub fn forwarded(&self) -> &SourceFilter<A> {
        &self.filter
    }

    /// What the pinned membership map holds of the membership: its expiry,
    /// version and leaving state as last persisted (a refresh reaches the
    /// map about once a query interval, a change of state at once).
    pub fn persisted(&self) -> (Duration, u8, bool) {
        (self.persisted.expires, self.persisted.version, self.persisted.leaving)
    }

    /// Notes what `host`'s record says of its interest in the group: it
    /// wants it until `until`, wants nothing now, or (`None`: a BLOCK) as
    /// before. Returns whether other hosts behind the port may still want it.
    pub(super) fn note_host(&mut self, host: A, wants: Option<bool>, until: Duration, now: Duration) -> bool {
        self.hosts.retain(|_, expiry| *expiry > now);
        match wants {
            Some(true) if self.hosts.len() < MAX_TRACKED_HOSTS || self.hosts.contains_key(&host) => {
                self.hosts.insert(host, until);
            }
            Some(true) => self.untracked_hosts_until = self.untracked_hosts_until.max(until),
            Some(false) => {
                self.hosts.remove(&host);
            }
            None => {}
        }
        self.untracked_hosts_until > now || self.hosts.keys().any(|other| *other != host)
    }

    /// Sources asked for: timer running.
    pub(super) fn requested(&self, now: Duration) -> BTreeSet<A> {
        self.sources.iter().filter(|(_, t)| **t > now).map(|(s, _)| *s).collect()
    }
}

/// A group record as the state machine reads it: IGMPv1/v2 and MLDv1
/// messages come as the records they stand for (RFC 3376 7.3.2).
#[derive(Clone, Copy, Debug)]
pub(super) struct HeardRecord<'a, A> {
    pub(super) kind: RecordType,
    pub(super) sources: &'a [A],
    pub(super) version: u8,
    pub(super) reporter: A,
}

impl<A: Family> Snooper<A> {
    /// One group record (or an older host's report or leave, as the record
    /// it stands for) from `port`: the router-side rules of RFC 3376 6.4
    /// (RFC 3810 7.4), per port. Queries sent for it lower the queried
    /// timers to the last-member query time (RFC 3376 6.6.1).
    pub(super) fn record(
        &mut self,
        group: Group<A>,
        port: u32,
        heard: HeardRecord<'_, A>,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        use RecordType::*;
        if !group.addr.is_snoopable(self.link_scope) {
            self.ignored.not_snoopable_groups += 1;
            return;
        }
        let HeardRecord { kind, sources, version, reporter } = heard;
        let excludes = matches!(kind, ModeIsExclude | ChangeToExclude);
        if excludes && self.is_ssm(group) {
            self.ignored.ssm_any_source_joins += 1;
            return;
        }
        let gmi = now + self.timers.group_membership_interval;
        let lmqt = now + self.timers.last_member_query_time();
        let fast_leave_port = self.ports.get(&port).is_some_and(|p| p.options.fast_leave);
        let member = self.groups.get(&group).and_then(|ports| ports.get(&port));
        // A static membership is the administrator's: hosts change nothing.
        if member.is_some_and(|m| m.permanent) {
            return;
        }
        let is_member = member.is_some();
        if !is_member {
            // No state is INCLUDE {}: only records that want something add it.
            let wants = excludes || (!sources.is_empty() && kind != BlockOldSources);
            if !wants {
                return;
            }
            if let Err(why) = self.admit(port, group.addr) {
                actions.push(Action::JoinRefused { group, port, why });
                return;
            }
            self.groups.entry(group).or_default().insert(port, Member::new(version, reporter, now));
        }
        let max_sources = self.max_sources;
        let member = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)).expect("admitted above");
        let older_host = member.older_host_until.is_some_and(|until| until > now);
        if version < A::RECORD_VERSION {
            member.older_host_until = Some(gmi);
            if A::sends_no_leaves(version) {
                member.no_leave_host_until = Some(gmi);
            }
        }
        member.version = member.version.min(version);
        member.last_reporter = reporter;
        let wants = match kind {
            BlockOldSources => None,
            ModeIsInclude | AllowNewSources | ChangeToInclude => Some(!sources.is_empty()),
            ModeIsExclude | ChangeToExclude => Some(true),
        };
        // Fast leave takes the word of the last host behind the port only.
        let fast_leave = fast_leave_port && !member.note_host(reporter, wants, gmi, now);
        // An older host is present: it wants every source (RFC 3376 7.3.2).
        let sources: BTreeSet<A> = match kind {
            BlockOldSources if older_host => return self.settle(group, port, !is_member, now, actions),
            ChangeToExclude if older_host => BTreeSet::new(),
            _ => sources.iter().copied().collect(),
        };
        let mut refused = 0;
        let mut set = |member: &mut Member<A>, source: A, timer: Duration| {
            if member.sources.len() >= max_sources && max_sources > 0 && !member.sources.contains_key(&source) {
                refused += 1;
            } else {
                member.sources.insert(source, timer);
            }
        };
        let mut query_sources = BTreeSet::new();
        let mut query_group = false;
        match (member.mode, kind) {
            (FilterMode::Include, ModeIsInclude | AllowNewSources | ChangeToInclude) => {
                if kind == ChangeToInclude {
                    query_sources = member.sources.keys().filter(|s| !sources.contains(s)).copied().collect();
                }
                sources.iter().for_each(|source| set(member, *source, gmi));
            }
            (FilterMode::Include, ModeIsExclude | ChangeToExclude) => {
                // EXCLUDE(A*B, B-A): requested ones keep their timers, new ones are blocked.
                let old = std::mem::take(&mut member.sources);
                for source in &sources {
                    set(member, *source, old.get(source).copied().unwrap_or(Duration::ZERO));
                }
                if kind == ChangeToExclude {
                    query_sources = old.keys().filter(|s| sources.contains(s)).copied().collect();
                }
                member.mode = FilterMode::Exclude;
                member.group_timer = gmi;
            }
            (FilterMode::Include, BlockOldSources) => {
                query_sources = sources.iter().filter(|s| member.sources.contains_key(s)).copied().collect();
            }
            (FilterMode::Exclude, ModeIsInclude | AllowNewSources | ChangeToInclude) => {
                if kind == ChangeToInclude {
                    query_sources = member.requested(now).into_iter().filter(|s| !sources.contains(s)).collect();
                    query_group = true;
                }
                sources.iter().for_each(|source| set(member, *source, gmi));
            }
            (FilterMode::Exclude, ModeIsExclude | ChangeToExclude) => {
                // EXCLUDE(A-Y, Y*A): new sources get the membership interval
                // (IS_EX) or the group timer (TO_EX); unnamed ones go.
                let fresh = if kind == ModeIsExclude { gmi } else { member.group_timer };
                let old = std::mem::take(&mut member.sources);
                for source in &sources {
                    set(member, *source, old.get(source).copied().unwrap_or(fresh));
                }
                if kind == ChangeToExclude {
                    query_sources = member.requested(now);
                }
                member.group_timer = gmi;
            }
            (FilterMode::Exclude, BlockOldSources) => {
                // EXCLUDE(X+(A-Y), Y): new sources get the group timer; ask about A-Y.
                let group_timer = member.group_timer;
                for source in &sources {
                    if !member.sources.contains_key(source) {
                        set(member, *source, group_timer);
                    }
                }
                let requested = member.requested(now);
                query_sources = sources.iter().filter(|s| requested.contains(s)).copied().collect();
            }
        }
        self.ignored.source_limit_refusals += refused;
        // Another querier in charge lowers the timers itself, with its
        // group(-and-source)-specific queries, at its own pace (RFC 3376
        // 6.6.1): the record alone lowers nothing, as the Linux bridge
        // waits for those queries. Fast leave acts at once all the same.
        let asks = query_group || !query_sources.is_empty();
        if !fast_leave
            && asks
            && (self.querier.other.is_some() || self.querier.is_querier() && !self.may_query(group, now))
        {
            query_group = false;
            query_sources.clear();
        }
        let member = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)).expect("admitted above");
        // A record that raises timers ends a last-member round; one that asks, starts one.
        if kind != BlockOldSources && !sources.is_empty() || excludes {
            member.leaving = false;
        }
        if query_group && member.no_leave_host_until.is_some_and(|until| until > now) {
            query_group = false;
        }
        if query_group {
            member.group_timer = if fast_leave { now } else { member.group_timer.min(lmqt) };
            member.leaving = true;
        }
        for source in &query_sources {
            if let Some(timer) = member.sources.get_mut(source) {
                // Fast leave: the one host behind the port said so; no need to ask.
                *timer = if fast_leave { Duration::ZERO } else { (*timer).min(lmqt) };
            }
        }
        // A round runs, or fast leave ended the membership: either way it left.
        let emptied = member.mode == FilterMode::Include && member.sources.values().all(|t| *t <= now);
        if !query_sources.is_empty() && (!fast_leave || emptied) {
            member.leaving = true;
        }
        // An answer ends no round: its retransmissions go on, saying
        // (with the S flag) which timers were raised (RFC 3376 6.6.3).
        self.settle(group, port, !is_member, now, actions);
        if !fast_leave && self.querier.is_querier() && (query_group || !query_sources.is_empty()) {
            self.query_now(group, query_group, query_sources, now, actions);
        }
    }

    /// After a change to `port`'s membership of `group`: a group timer run
    /// out turns EXCLUDE into INCLUDE (RFC 3376 6.5), sources past their
    /// timers go, a membership left with nothing is removed; the expiry index
    /// is brought up to date and the data path told what changed.
    pub(super) fn settle(
        &mut self,
        group: Group<A>,
        port: u32,
        new: bool,
        now: Duration,
        actions: &mut Vec<Action<A>>,
    ) {
        let Some(member) = self.groups.get_mut(&group).and_then(|ports| ports.get_mut(&port)) else { return };
        if member.mode == FilterMode::Exclude && member.group_timer <= now {
            member.mode = FilterMode::Include;
            member.sources.retain(|_, timer| *timer > now);
        }
        if member.mode == FilterMode::Include {
            member.sources.retain(|_, timer| *timer > now);
            if member.sources.is_empty() {
                if new {
                    // Refused before it began (all its sources over the limit).
                    self.forget_member(group, port);
                } else {
                    let reason = if member.leaving { RemoveReason::Left } else { RemoveReason::Expired };
                    self.remove_member(group, port, reason, actions);
                }
                return;
            }
        }
        member.expires = match member.mode {
            FilterMode::Exclude => member.group_timer,
            FilterMode::Include => member.sources.values().copied().max().unwrap_or(now),
        };
        let running = member.sources.values().copied().filter(|timer| *timer > now).min();
        let next_event = match member.mode {
            FilterMode::Exclude => running.map_or(member.group_timer, |t| t.min(member.group_timer)),
            FilterMode::Include => running.unwrap_or(member.expires),
        };
        self.expiries.remove(&(member.next_event, group, port));
        if next_event != NEVER {
            self.expiries.insert((next_event, group, port));
        }
        member.next_event = next_event;
        let filter = member.filter(now);
        let (version, expires, leaving) = (member.version, member.expires, member.leaving);
        if new {
            member.persisted = Persisted { expires, version, leaving };
            if !filter.is_any() {
                member.filter = filter.clone();
                actions.push(Action::SetSources { group, port, filter });
            }
            actions.push(Action::AddMember { group, port, version, expires });
            // After the member: the group must not be pruned for its first
            // member before that member's entry exists.
            if self.groups[&group].len() == 1 {
                actions.push(Action::RegisterGroup { group });
            }
            return;
        }
        if filter != member.filter {
            member.filter = filter.clone();
            actions.push(Action::SetSources { group, port, filter });
        }
        let persisted = member.persisted;
        // Refreshes reach the pinned map about once a query interval.
        let refresh_slack = self.timers.query_interval;
        if version != persisted.version
            || leaving != persisted.leaving
            || expires < persisted.expires
            || expires >= persisted.expires.saturating_add(refresh_slack)
        {
            member.persisted = Persisted { expires, version, leaving };
            actions.push(Action::RefreshMember { group, port, version, expires, leaving });
        }
    }

    pub(super) fn remove_member(
        &mut self,
        group: Group<A>,
        port: u32,
        reason: RemoveReason,
        actions: &mut Vec<Action<A>>,
    ) {
        if self.forget_member(group, port) {
            actions.push(Action::RemoveMember { group, port, reason });
            if !self.groups.contains_key(&group) {
                actions.push(Action::UnregisterGroup { group });
            }
        }
    }

    /// Drops a membership from the state; whether there was one.
    pub(super) fn forget_member(&mut self, group: Group<A>, port: u32) -> bool {
        let Some(ports) = self.groups.get_mut(&group) else { return false };
        let Some(member) = ports.remove(&port) else { return false };
        self.expiries.remove(&(member.next_event, group, port));
        if let Some(state) = self.ports.get_mut(&port) {
            state.groups -= 1;
        }
        if ports.is_empty() {
            self.groups.remove(&group);
            if let Some(pending) = self.pending_queries.get_mut(&group) {
                pending.stop();
            }
        }
        true
    }

    /// Settles every member whose timer ran out (RFC 3376 6.5).
    pub(super) fn poll_members(&mut self, now: Duration, actions: &mut Vec<Action<A>>) {
        while let Some(&(at, group, port)) = self.expiries.first() {
            if at > now {
                break;
            }
            // Never loop on an index entry: settling re-files the member.
            self.expiries.remove(&(at, group, port));
            let current =
                self.groups.get(&group).and_then(|ports| ports.get(&port)).is_some_and(|m| m.next_event == at);
            if current {
                self.settle(group, port, false, now, actions);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::{super::testing::*, super::*, *};

    #[test]
    fn a_block_and_another_queriers_source_query_keep_the_sources_still_wanted() {
        // The scenario: an external querier in charge; port 1 wants
        // S1 and S2, blocks S1, and the router asks Q(G,{S1}).
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 2);
        s.handle(2, 0, &query(router, Ipv4Addr::UNSPECIFIED), secs(0));
        s.handle(1, 0, &records(RecordType::AllowNewSources, G1, &[S1, S2]), secs(1));
        s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1]), secs(2));
        s.handle(2, 0, &source_query(router, G1, &[S1], false), secs(2));
        assert_eq!(filter_of(&s, G1, 1, secs(2)), include(&[S1, S2]), "S1 is asked about, not gone yet");
        s.poll(secs(30));
        assert_eq!(members(&s, G1), [1], "port 1 still wants S2 and was pruned");
        assert_eq!(filter_of(&s, G1, 1, secs(30)), include(&[S2]));
    }

    #[test]
    fn a_source_query_lowers_only_its_sources_and_not_with_the_s_flag() {
        let mut s = snooper(false);
        let router = Ipv4Addr::new(10, 0, 0, 2);
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &[S1, S2]), secs(0));
        s.handle(2, 0, &source_query(router, G1, &[S1], true), secs(1));
        s.poll(secs(10));
        assert_eq!(filter_of(&s, G1, 1, secs(10)), include(&[S1, S2]), "the S flag lowered a timer");
        s.handle(2, 0, &source_query(router, G1, &[S1], false), secs(10));
        s.poll(secs(13));
        assert_eq!(filter_of(&s, G1, 1, secs(13)), include(&[S2]));
        // Q(G) lowers the group timer, which INCLUDE mode has not.
        s.handle(2, 0, &source_query(router, G1, &[], false), secs(14));
        s.poll(secs(20));
        assert_eq!(filter_of(&s, G1, 1, secs(20)), include(&[S2]));
    }

    #[test]
    fn exclude_mode_forwards_all_but_the_blocked_sources_and_falls_back_to_include() {
        let mut s = snooper(false);
        let actions = s.handle(1, 0, &records(RecordType::ChangeToExclude, G1, &[S3]), secs(0));
        let blocked = SourceFilter::Exclude([S3].into());
        assert_eq!(actions[0], Action::SetSources { group: g(G1), port: 1, filter: blocked.clone() }, "{actions:?}");
        assert!(matches!(actions[1], Action::AddMember { .. }), "the filter goes first: {actions:?}");
        assert!(blocked.wants(&S1) && !blocked.wants(&S3));
        // ALLOW(S1) keeps S1 asked for past the group timer: EXCLUDE ends in INCLUDE {S1}.
        s.handle(1, 0, &records(RecordType::AllowNewSources, G1, &[S1]), secs(100));
        s.poll(secs(261));
        assert_eq!(filter_of(&s, G1, 1, secs(261)), include(&[S1]));
        s.poll(secs(400));
        assert!(members(&s, G1).is_empty());
    }

    #[test]
    fn an_older_host_keeps_every_source_and_ssm_takes_only_source_lists() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        s.handle(1, 0, &records(RecordType::ChangeToExclude, G1, &[S3]), secs(1));
        s.handle(1, 0, &records(RecordType::BlockOldSources, G1, &[S1]), secs(1));
        assert!(filter_of(&s, G1, 1, secs(1)).unwrap().is_any(), "a v2 host is there: any source");

        let ssm = Ipv4Addr::new(232, 1, 1, 1);
        assert!(s.handle(2, 0, &v2_report(ssm), secs(0)).is_empty());
        assert!(s.handle(2, 0, &records(RecordType::ModeIsExclude, ssm, &[]), secs(0)).is_empty());
        assert_eq!(s.ignored().ssm_any_source_joins, 2);
        s.handle(2, 0, &records(RecordType::ModeIsInclude, ssm, &[S1]), secs(0));
        assert_eq!(filter_of(&s, ssm, 2, secs(0)), include(&[S1]));
    }

    #[test]
    fn sources_over_the_limit_are_refused_and_counted() {
        let mut s = snooper(false);
        s.set_max_sources(4);
        let many: Vec<Ipv4Addr> = (0..10).map(|i| Ipv4Addr::new(10, 2, 0, i)).collect();
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &many), secs(0));
        assert_eq!(s.groups()[&g(G1)][&1].sources.len(), 4);
        assert_eq!(s.ignored().source_limit_refusals, 6);
        s.handle(1, 0, &records(RecordType::ModeIsInclude, G1, &many[..2]), secs(1));
        assert_eq!(s.ignored().source_limit_refusals, 6, "refreshing a kept source is no refusal");
    }

    #[test]
    fn report_adds_member_and_registers_group() {
        let mut s = snooper(false);
        let actions = s.handle(1, 0, &v2_report(G1), secs(1));
        assert_eq!(
            actions,
            [
                Action::AddMember { group: g(G1), port: 1, version: 2, expires: secs(261) },
                Action::RegisterGroup { group: g(G1) }
            ]
        );
        // A second port only adds a member.
        let actions = s.handle(2, 0, &v2_report(G1), secs(2));
        assert_eq!(actions, [Action::AddMember { group: g(G1), port: 2, version: 2, expires: secs(262) }]);
        assert_eq!(members(&s, G1), [1, 2]);
    }

    #[test]
    fn membership_expires_after_group_membership_interval() {
        let mut s = snooper(false);
        s.handle(1, 0, &v2_report(G1), secs(0));
        assert!(s.poll(secs(259)).is_empty());
        assert_eq!(s.next_deadline(), Some(secs(260)));
        let actions = s.poll(secs(260));
        assert_eq!(
            actions,
            [
                Action::RemoveMember { group: g(G1), port: 1, reason: RemoveReason::Expired },
                Action::UnregisterGroup { group: g(G1) }
            ]
        );
        assert!(s.groups().is_empty());
    }

    #[test]
    fn v3_to_include_empty_is_a_leave_and_fast_leave_removes_at_once() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        s.handle(3, 0, &record(RecordType::ChangeToExclude, G1, 0), secs(0));
        s.handle(1, 0, &record(RecordType::ModeIsExclude, G1, 0), secs(0));
        assert_eq!(members(&s, G1), [1, 3]);
        let actions = s.handle(3, 0, &record(RecordType::ChangeToInclude, G1, 0), secs(5));
        assert_eq!(actions, [Action::RemoveMember { group: g(G1), port: 3, reason: RemoveReason::Left }]);
        // Not querier and no fast leave: shortened to the last member query time.
        s.handle(1, 0, &record(RecordType::ChangeToInclude, G1, 0), secs(5));
        assert_eq!(s.poll(secs(7)).len(), 2); // remove + unregister
        assert!(s.groups().is_empty());
    }

    #[test]
    fn a_block_removes_only_the_blocked_sources_at_once_with_fast_leave() {
        let mut s = snooper(false);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        s.handle(3, 0, &record(RecordType::ModeIsInclude, G1, 2), secs(0));
        s.handle(3, 0, &record(RecordType::AllowNewSources, G2, 1), secs(0));
        assert_eq!(members(&s, G1), [3]);
        assert_eq!(members(&s, G2), [3]);
        let actions = s.handle(3, 0, &record(RecordType::BlockOldSources, G1, 1), secs(1));
        let kept = SourceFilter::Include([Ipv4Addr::new(10, 1, 0, 1)].into());
        assert_eq!(actions, [Action::SetSources { group: g(G1), port: 3, filter: kept }]);
        s.poll(secs(3));
        assert_eq!(members(&s, G1), [3], "the other source is still wanted");
        let actions = s.handle(3, 0, &record(RecordType::BlockOldSources, G1, 2), secs(4));
        assert!(actions.contains(&Action::RemoveMember { group: g(G1), port: 3, reason: RemoveReason::Left }));
    }

    #[test]
    fn v1_host_present_ignores_to_in() {
        let mut s = snooper(true);
        s.poll(secs(0));
        s.handle(1, 0, &pkt(H1, Message::Report { version: 1, group: G1 }), secs(0));
        // An IGMPv3 host behind the same port changes to INCLUDE {S1}: with
        // a v1 host there, as good as ignored (RFC 3376 7.3.2): no query,
        // no lowered timer, every source still forwarded.
        let actions = s.handle(1, 0, &records(RecordType::ChangeToInclude, G1, &[S1]), secs(1));
        assert!(!actions.iter().any(|a| matches!(a, Action::SendQuery { .. })), "{actions:?}");
        let later = s.poll(secs(10));
        assert!(!later.iter().any(|a| matches!(a, Action::SendQuery { group: Some(_), .. })), "{later:?}");
        assert!(!later.iter().any(|a| matches!(a, Action::RemoveMember { .. })), "{later:?}");
        assert_eq!(filter_of(&s, G1, 1, secs(10)), Some(SourceFilter::any()));
    }

    #[test]
    fn v1_host_present_ignores_leaves() {
        let mut s = snooper(false);
        s.handle(1, 0, &pkt(H1, Message::Report { version: 1, group: G1 }), secs(0));
        s.handle(1, 0, &v2_report(G1), secs(1));
        s.handle(1, 0, &pkt(H1, Message::Leave { group: G1 }), secs(2));
        assert!(s.poll(secs(10)).is_empty());
        assert_eq!(s.groups()[&g(G1)][&1].version, 1);
    }

    #[test]
    fn link_local_and_unicast_groups_are_not_tracked() {
        let mut s = snooper(false);
        assert!(s.handle(1, 0, &v2_report(Ipv4Addr::new(224, 0, 0, 251)), secs(0)).is_empty());
        assert!(s.handle(1, 0, &v2_report(Ipv4Addr::new(10, 1, 1, 1)), secs(0)).is_empty());
        assert!(s.groups().is_empty());
    }

    #[test]
    fn v1_report_joins_and_done_runs_the_last_listener_queries() {
        let mut s = mld_snooper(OWN);
        s.poll(secs(0));
        let actions = s.handle(1, 0, &from(HOST, Message::Report { version: 1, group: GROUP }), secs(1));
        assert!(actions.iter().any(|a| matches!(a, Action::AddMember { port: 1, version: 1, .. })));
        let actions = s.handle(1, 0, &from(HOST, Message::Leave { group: GROUP }), secs(2));
        assert!(actions.iter().any(|a| matches!(a, Action::RefreshMember { leaving: true, .. })));
        assert!(
            actions.contains(&Action::SendQuery { group: Some(GROUP), sources: vec![], suppress: false }),
            "{actions:?}"
        );
        let removed = s.poll(secs(4));
        assert!(removed.iter().any(|a| matches!(a, Action::RemoveMember { reason: RemoveReason::Left, .. })));
    }

    #[test]
    fn a_report_sent_during_dad_from_the_unspecified_address_joins() {
        let mut s = mld_snooper(OWN);
        let report = from(Ipv6Addr::UNSPECIFIED, Message::Report { version: 1, group: GROUP });
        assert!(!s.handle(1, 0, &report, secs(0)).is_empty());
        assert_eq!(s.groups().len(), 1);
    }

    #[test]
    fn all_nodes_and_link_scope_groups_are_flooded_unless_asked_for() {
        let mut s = mld_snooper(OWN);
        let solicited: Ipv6Addr = "ff02::1:ff00:20".parse().unwrap();
        for group in [solicited, "ff02::1".parse().unwrap(), "ff02::fb".parse().unwrap()] {
            assert!(s.handle(1, 0, &from(HOST, Message::Report { version: 1, group }), secs(0)).is_empty());
        }
        s.set_link_scope_snooped(true);
        assert!(!s.handle(1, 0, &from(HOST, Message::Report { version: 1, group: solicited }), secs(0)).is_empty());
        let all_nodes = Message::Report { version: 1, group: "ff02::1".parse().unwrap() };
        assert!(s.handle(1, 0, &from(HOST, all_nodes), secs(0)).is_empty(), "ff02::1 always floods");
    }

    // The same rules over both families.
    both_families!(a_join_lasts_while_refreshed_and_expires_without_reports, a_block_keeps_the_other_sources);

    fn a_join_lasts_while_refreshed_and_expires_without_reports<A: Sample>() {
        let mut s = machine::<A>(false);
        let group = Group::untagged(A::group(1));
        let join = packet(A::host(1), Message::Report { version: A::OLDER, group: group.addr });
        let actions = s.handle(1, 0, &join, secs(1));
        assert_eq!(
            actions,
            [
                Action::AddMember { group, port: 1, version: A::OLDER, expires: secs(261) },
                Action::RegisterGroup { group }
            ]
        );
        assert_eq!(s.groups()[&group][&1].filter(secs(1)), SourceFilter::any(), "an older host wants every source");
        // Refreshed before its interval ends, it outlives the first one.
        s.handle(1, 0, &join, secs(200));
        assert!(s.poll(secs(261)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        assert_eq!(
            s.poll(secs(460)),
            [Action::RemoveMember { group, port: 1, reason: RemoveReason::Expired }, Action::UnregisterGroup { group }]
        );
    }

    fn a_block_keeps_the_other_sources<A: Sample>() {
        let mut s = machine::<A>(false);
        let group = A::group(1);
        let (s1, s2) = (A::host(11), A::host(12));
        s.handle(1, 0, &record_of(RecordType::ModeIsInclude, group, &[s1, s2]), secs(0));
        let member = |s: &Snooper<A>, now| s.groups()[&Group::untagged(group)][&1].filter(now);
        assert_eq!(member(&s, secs(0)), SourceFilter::Include([s1, s2].into()));
        // Another querier asks about S1 after the BLOCK; nobody answers for it.
        s.handle(1, 0, &record_of(RecordType::BlockOldSources, group, &[s1]), secs(10));
        let source_query = Message::Query {
            version: A::RECORD_VERSION,
            group,
            sources: vec![s1],
            suppress: false,
            max_response: secs(1),
            announced: None,
        };
        s.handle(2, 0, &packet(A::router(1), source_query), secs(10));
        s.poll(secs(13));
        assert_eq!(member(&s, secs(13)), SourceFilter::Include([s2].into()), "S2 stays; S1 goes");
    }

    both_families!(
        a_leave_while_another_querier_is_elected_waits_for_its_query,
        a_leave_sets_no_older_host_timer,
        fast_leave_prunes_a_port_only_when_its_last_host_leaves,
        fast_leave_after_a_restart_waits_for_the_hosts_to_be_known,
    );

    /// A record of `kind` for `group` from host `n`.
    fn from_host<A: Sample>(n: u8, kind: RecordType, group: A, sources: &[A]) -> Packet<A> {
        let record = crate::proto::GroupRecord { record_type: kind, group, sources: sources.to_vec() };
        packet(A::host(n), Message::RecordReport { records: vec![record], unknown_types: 0 })
    }

    fn fast_leave_prunes_a_port_only_when_its_last_host_leaves<A: Sample>() {
        let mut s = machine::<A>(true);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        let group = A::group(1);
        // Two hosts behind p3: one any-source, one wanting S1 only.
        s.handle(3, 0, &from_host(1, RecordType::ModeIsExclude, group, &[]), secs(0));
        s.handle(3, 0, &from_host(2, RecordType::ModeIsInclude, group, &[A::host(9)]), secs(0));
        assert_eq!(s.groups()[&Group::untagged(group)][&3].hosts.len(), 2);
        // Host 1 leaves: host 2 may still want it, so ask as without fast leave.
        let actions = s.handle(3, 0, &from_host(1, RecordType::ChangeToInclude, group, &[]), secs(1));
        assert!(!actions.iter().any(|a| matches!(a, Action::RemoveMember { .. })), "{actions:?}");
        assert!(actions.iter().any(|a| matches!(a, Action::SendQuery { .. })), "{actions:?}");
        // Host 2 answers with its S1 and keeps it past the last-member time.
        s.handle(3, 0, &from_host(2, RecordType::ModeIsInclude, group, &[A::host(9)]), secs(2));
        assert!(s.poll(secs(10)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
        assert_eq!(s.groups()[&Group::untagged(group)][&3].forwarded(), &SourceFilter::Include([A::host(9)].into()));
        // Host 2, the last one, leaves: pruned at once.
        let actions = s.handle(3, 0, &from_host(2, RecordType::BlockOldSources, group, &[A::host(9)]), secs(11));
        let removed = Action::RemoveMember { group: Group::untagged(group), port: 3, reason: RemoveReason::Left };
        assert!(actions.contains(&removed), "{actions:?}");
    }

    fn fast_leave_after_a_restart_waits_for_the_hosts_to_be_known<A: Sample>() {
        let mut s = machine::<A>(false);
        s.add_port(3, PortOptions { fast_leave: true, ..TRUSTED });
        let (group, untagged) = (A::group(1), Group::untagged(A::group(1)));
        s.restore_member(untagged, 3, A::RECORD_VERSION, false, SourceFilter::any(), secs(0));
        s.handle(3, 0, &from_host(1, RecordType::ModeIsExclude, group, &[]), secs(1));
        // Others behind p3 have not reported since the restart.
        let actions = s.handle(3, 0, &from_host(1, RecordType::ChangeToInclude, group, &[]), secs(2));
        assert!(!actions.iter().any(|a| matches!(a, Action::RemoveMember { .. })), "{actions:?}");
        s.handle(3, 0, &from_host(1, RecordType::ModeIsExclude, group, &[]), secs(3));
        // A membership interval on, every host there has reported.
        s.handle(3, 0, &from_host(1, RecordType::ModeIsExclude, group, &[]), secs(261));
        let actions = s.handle(3, 0, &from_host(1, RecordType::ChangeToInclude, group, &[]), secs(262));
        assert!(actions.iter().any(|a| matches!(a, Action::RemoveMember { .. })), "{actions:?}");
    }

    fn a_leave_while_another_querier_is_elected_waits_for_its_query<A: Sample>() {
        let mut s = machine::<A>(true);
        s.poll(secs(0));
        let group = A::group(1);
        s.handle(2, 0, &query_of(A::router(1), A::UNSPECIFIED), secs(1));
        assert!(s.querier().other.is_some(), "a lower querier was elected");
        let join = packet(A::host(1), Message::Report { version: A::OLDER, group });
        s.handle(1, 0, &join, secs(2));
        // One host behind p1 leaves: the elected querier asks at its own pace.
        let actions = s.handle(1, 0, &packet(A::host(1), Message::Leave { group }), secs(3));
        assert!(actions.is_empty(), "the leave alone lowers nothing: {actions:?}");
        let member = |s: &Snooper<A>| s.groups()[&Group::untagged(group)][&1].clone();
        assert_eq!(member(&s).expires, secs(262));
        // Its group-specific query, answering within 3 s, asks twice: 6 s.
        let slow = Message::Query {
            version: A::RECORD_VERSION,
            group,
            sources: vec![],
            suppress: false,
            max_response: secs(3),
            announced: None,
        };
        s.handle(2, 0, &packet(A::router(1), slow), secs(3));
        assert_eq!(member(&s).expires, secs(9));
        // The host still behind p1 answers after 2.5 s: nothing was lost.
        s.handle(1, 0, &join, secs(5) + Duration::from_millis(500));
        assert!(s.poll(secs(10)).iter().all(|a| !matches!(a, Action::RemoveMember { .. })));
    }

    fn a_leave_sets_no_older_host_timer<A: Sample>() {
        let mut s = machine::<A>(false);
        let group = A::group(1);
        s.handle(1, 0, &record_of(RecordType::ModeIsExclude, group, &[]), secs(0));
        s.handle(1, 0, &packet(A::host(2), Message::Leave { group }), secs(1));
        let member = &s.groups()[&Group::untagged(group)][&1];
        assert_eq!((member.older_host_until, member.version), (None, A::RECORD_VERSION));
    }
}
