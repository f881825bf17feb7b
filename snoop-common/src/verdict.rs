//! What the programs return, as both ways of attaching them (TCX links and
//! classic clsact filters in direct-action mode) read it.

/// Hand the frame on to whatever comes next on the hook: the next TCX
/// program, then the classic tc filters, then the stack (`TC_ACT_UNSPEC`,
/// which TCX reads as `TCX_NEXT` and cls_bpf as "try the next filter").
/// Never `TC_ACT_OK`: TCX reads that as `TCX_PASS`, which ends the chain and
/// skips every program and filter after snoop's (the operator's own).
pub const VERDICT_NEXT: i32 = -1;

/// Drop the frame (`TC_ACT_SHOT`, `TCX_DROP`): pruned, or consumed once its
/// copies were made.
pub const VERDICT_DROP: i32 = 2;

/// The frame went on to a veth peer's ingress (`TC_ACT_REDIRECT`, the
/// result of `bpf_redirect_peer`).
pub const VERDICT_REDIRECT: i32 = 7;
