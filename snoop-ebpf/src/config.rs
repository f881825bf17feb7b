//! The controller's settings and heartbeat, as the programs read them.
use snoop_common::DatapathConfig;

use crate::maps::SNOOP_CONFIG;

#[inline(always)]
pub fn config() -> Option<&'static DatapathConfig> {
    SNOOP_CONFIG.get(0)
}

/// The controller's heartbeat is older than the failsafe time.
#[inline(always)]
pub fn controller_gone(config: &DatapathConfig, heartbeat_age: u64) -> bool {
    config.failsafe_ns != 0 && heartbeat_age > config.failsafe_ns
}

#[inline(always)]
pub fn heartbeat_age_ns(config: &DatapathConfig) -> u64 {
    coarse_now_ns().saturating_sub(config.heartbeat_ns)
}

/// CLOCK_MONOTONIC_COARSE: a memory read, not a clock source read (this runs
/// for every redirected packet); a tick of lag is nothing next to seconds.
#[inline(always)]
pub fn coarse_now_ns() -> u64 {
    // SAFETY: plain helper call.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() }
}
