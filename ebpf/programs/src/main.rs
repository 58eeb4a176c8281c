//! Sextant's kernel-side programs. Entry points only parse and dispatch; the work
//! lives in one module per concern.
#![no_std]
#![no_main]

mod conntrack;
mod counters;
mod fib;
mod flows;
mod lb;
mod metrics;
mod nat;
mod nodeport;
mod nodeport_xdp;
mod packet;
mod policy;
mod routing;
mod snat;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// TC (ingress or egress): counts the packet on its interface, then lets it pass.
#[classifier]
pub fn count_tc(ctx: TcContext) -> i32 {
    counters::count_tc(&ctx);
    TC_ACT_OK
}

/// TC ingress on the host side of a pod's veth: every packet leaving the pod.
#[classifier]
pub fn from_pod(ctx: TcContext) -> i32 {
    routing::from_pod(&ctx)
}

/// TC egress on the host side of a pod's veth: every packet the host stack hands
/// to the pod.
#[classifier]
pub fn to_pod(ctx: TcContext) -> i32 {
    routing::to_pod(&ctx)
}

/// TC ingress on the node's uplink: NodePort and external-IP flows from outside.
#[classifier]
pub fn from_uplink(ctx: TcContext) -> i32 {
    nodeport::from_uplink(&ctx)
}

/// TC egress on the node's uplink: replies of NodePort flows served elsewhere.
#[classifier]
pub fn to_uplink(ctx: TcContext) -> i32 {
    nodeport::to_uplink(&ctx)
}

/// XDP on the node's uplink: NodePort and external-IP flows served by another
/// node's backend, rewritten and sent back out without the host stack.
#[xdp]
pub fn uplink_xdp(ctx: XdpContext) -> u32 {
    nodeport_xdp::from_uplink(&ctx)
}

/// XDP: counts the packet on its interface, then lets it pass.
#[xdp]
pub fn count_xdp(ctx: XdpContext) -> u32 {
    counters::count_xdp(&ctx);
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Program license; GPL unlocks the helpers the datapath needs.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
