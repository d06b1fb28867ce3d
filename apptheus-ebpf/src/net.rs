//! Network bytes and packets per container, from cgroup_skb programs that the agent attaches to
//! each container's cgroup v2 directory. Counted for the socket's cgroup, so only sockets
//! created inside a monitored cgroup itself count. `len` is the skb length from the network
//! header on (IP headers included); a GSO skb counts once.
use aya_ebpf::{helpers::bpf_skb_cgroup_id, macros::cgroup_skb, programs::SkBuffContext};

use crate::maps::{add, counters};

/// Verdict that lets the packet through: these programs only count.
const PASS: i32 = 1;

#[cgroup_skb(ingress)]
pub fn cgroup_skb_ingress(ctx: SkBuffContext) -> i32 {
    count(&ctx, true);
    PASS
}

#[cgroup_skb(egress)]
pub fn cgroup_skb_egress(ctx: SkBuffContext) -> i32 {
    count(&ctx, false);
    PASS
}

#[inline(always)]
fn count(ctx: &SkBuffContext, ingress: bool) {
    let cgroup_id = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    let Some(c) = counters(cgroup_id) else {
        return;
    };
    let len = u64::from(ctx.len());
    unsafe {
        if ingress {
            add(&raw mut (*c).rx_bytes, len);
            add(&raw mut (*c).rx_packets, 1);
        } else {
            add(&raw mut (*c).tx_bytes, len);
            add(&raw mut (*c).tx_packets, 1);
        }
    }
}
