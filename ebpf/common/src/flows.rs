//! Flow events (RingBuf `SX_FLOWS_V1`): one per new connection into or out of a
//! pod and per dropped packet, read by the agent for metrics and the Observe stream.

/// Name of the ring buffer of [`FlowEvent`]s.
pub const FLOWS_MAP: &str = "SX_FLOWS_V1";
/// Its size in bytes (a power of two, a multiple of the page size).
pub const FLOWS_BYTES: u32 = 256 * 1024;

/// The packet went on.
pub const VERDICT_FORWARDED: u8 = 1;
/// The packet was dropped; see [`FlowEvent::reason`].
pub const VERDICT_DROPPED: u8 = 2;

/// No reason (forwarded).
pub const REASON_NONE: u8 = 0;
/// A service frontend without ready backends.
pub const REASON_NO_BACKEND: u8 = 1;
/// No network policy rule allows it; [`FlowEvent::policy`] names a policy that
/// selects the pod.
pub const REASON_POLICY_DENIED: u8 = 2;

/// Seen leaving a pod ([`FlowEvent::direction`]).
pub const DIRECTION_EGRESS: u8 = 0;
/// Seen entering a pod from the host stack (another node, the host, outside).
pub const DIRECTION_INGRESS: u8 = 1;

/// The flow was sent to a service frontend; `vip`/`vport` hold it.
pub const FLAG_SERVICE: u8 = 1;

/// One flow event, addresses and ports in packet byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    /// Source address.
    pub saddr: u32,
    /// Destination address (the backend, after DNAT).
    pub daddr: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// [`VERDICT_FORWARDED`] or [`VERDICT_DROPPED`].
    pub verdict: u8,
    /// Why it was dropped.
    pub reason: u8,
    /// [`FLAG_SERVICE`].
    pub flags: u8,
    /// The service frontend's address, when [`FLAG_SERVICE`].
    pub vip: u32,
    /// The service frontend's port.
    pub vport: u16,
    /// [`DIRECTION_EGRESS`] or [`DIRECTION_INGRESS`].
    pub direction: u8,
    /// Zero.
    pub pad: u8,
    /// Interface the packet came in on.
    pub ifindex: u32,
    /// Id of the NetworkPolicy that allowed or denied it; 0 when none decided.
    pub policy: u32,
    /// `bpf_ktime_get_ns` when it was seen.
    pub time_ns: u64,
}

impl FlowEvent {
    /// Decodes an event as the kernel wrote it (native byte order, this layout);
    /// `None` when `b` is too short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        let u16_at = |o: usize| Some(u16::from_ne_bytes(b.get(o..o + 2)?.try_into().ok()?));
        let u32_at = |o: usize| Some(u32::from_ne_bytes(b.get(o..o + 4)?.try_into().ok()?));
        let u64_at = |o: usize| Some(u64::from_ne_bytes(b.get(o..o + 8)?.try_into().ok()?));
        Some(Self {
            saddr: u32_at(0)?,
            daddr: u32_at(4)?,
            sport: u16_at(8)?,
            dport: u16_at(10)?,
            proto: *b.get(12)?,
            verdict: *b.get(13)?,
            reason: *b.get(14)?,
            flags: *b.get(15)?,
            vip: u32_at(16)?,
            vport: u16_at(20)?,
            direction: *b.get(22)?,
            pad: 0,
            ifindex: u32_at(24)?,
            policy: u32_at(28)?,
            time_ns: u64_at(32)?,
        })
    }
}

// SAFETY: `repr(C)`, explicit padding, no implicit padding (pinned below).
#[cfg(feature = "user")]
#[allow(unsafe_code)]
unsafe impl aya::Pod for FlowEvent {}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn flow_event_layout() {
        assert_eq!(size_of::<FlowEvent>(), 40);
        assert_eq!(offset_of!(FlowEvent, proto), 12);
        assert_eq!(offset_of!(FlowEvent, vip), 16);
        assert_eq!(offset_of!(FlowEvent, ifindex), 24);
        assert_eq!(offset_of!(FlowEvent, time_ns), 32);
    }

    #[test]
    fn decodes_what_the_layout_holds() {
        let e = FlowEvent {
            saddr: 1,
            daddr: 2,
            sport: 3,
            dport: 4,
            proto: 6,
            verdict: VERDICT_DROPPED,
            reason: REASON_NO_BACKEND,
            flags: FLAG_SERVICE,
            vip: 5,
            vport: 6,
            direction: DIRECTION_INGRESS,
            pad: 0,
            ifindex: 7,
            policy: 9,
            time_ns: 8,
        };
        // The bytes as the kernel writes them: the struct's memory, field by field.
        let mut b = [0u8; 40];
        b[0..4].copy_from_slice(&1u32.to_ne_bytes());
        b[4..8].copy_from_slice(&2u32.to_ne_bytes());
        b[8..10].copy_from_slice(&3u16.to_ne_bytes());
        b[10..12].copy_from_slice(&4u16.to_ne_bytes());
        b[12..16].copy_from_slice(&[6, VERDICT_DROPPED, REASON_NO_BACKEND, FLAG_SERVICE]);
        b[16..20].copy_from_slice(&5u32.to_ne_bytes());
        b[20..22].copy_from_slice(&6u16.to_ne_bytes());
        b[22] = DIRECTION_INGRESS;
        b[24..28].copy_from_slice(&7u32.to_ne_bytes());
        b[28..32].copy_from_slice(&9u32.to_ne_bytes());
        b[32..40].copy_from_slice(&8u64.to_ne_bytes());
        assert_eq!(FlowEvent::from_bytes(&b), Some(e));
        assert_eq!(FlowEvent::from_bytes(&b[..39]), None);
    }
}
