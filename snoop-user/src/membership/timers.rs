//! The protocol's timers (RFC 3376 8, RFC 3810 9), and the one that never
//! runs out.
use std::time::Duration;

/// The timer of what never expires: a static membership's.
pub const NEVER: Duration = Duration::MAX;

/// The RFC 3376 section 8 timers. Defaults are the RFC's.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Timers {
    pub robustness: u32,
    pub query_interval: Duration,
    pub query_response_interval: Duration,
    pub group_membership_interval: Duration,
    pub other_querier_present_interval: Duration,
    pub startup_query_interval: Duration,
    pub startup_query_count: u32,
    pub last_member_query_interval: Duration,
    pub last_member_query_count: u32,
}

impl Timers {
    /// Derives the dependent timers from the three base ones as RFC 3376 8.x does.
    pub fn derived(robustness: u32, query_interval: Duration, query_response_interval: Duration) -> Self {
        Self {
            robustness,
            query_interval,
            query_response_interval,
            group_membership_interval: query_interval * robustness + query_response_interval,
            other_querier_present_interval: query_interval * robustness + query_response_interval / 2,
            startup_query_interval: query_interval / 4,
            startup_query_count: robustness,
            last_member_query_interval: Duration::from_secs(1),
            last_member_query_count: robustness,
        }
    }

    /// Time after a leave at which a port's membership ends unless a host reports.
    pub fn last_member_query_time(&self) -> Duration {
        self.last_member_query_interval * self.last_member_query_count
    }
}

impl Default for Timers {
    fn default() -> Self {
        Self::derived(2, Duration::from_secs(125), Duration::from_secs(10))
    }
}
