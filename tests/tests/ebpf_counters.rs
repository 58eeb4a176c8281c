//! The eBPF build-and-load pipeline end to end: two network namespaces joined by a
//! veth pair, the XDP and TC counting programs attached on both ends, ping and UDP
//! sent across, the kernel's counters read back, then the programs detached.

use std::{
    net::UdpSocket,
    process::Command,
    sync::{Arc, Mutex},
    time::Duration,
};

use sextant_dataplane::{InterfaceCounters, counters::AttachedXdpMode};
use sextant_tests::{
    netns::{Netns, veth_pair},
    require_command, run,
};

/// Collects aya-log lines so the test can assert the debug path works.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<String>>>);

impl log::Log for Captured {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }
    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(record.args().to_string());
    }
    fn flush(&self) {}
}

const ICMP_FRAME: u64 = 14 + 20 + 64; // Ethernet + IPv4 + ping's default 64-byte ICMP
const UDP_PAYLOAD: usize = 200;
const UDP_FRAME: u64 = 14 + 20 + 8 + UDP_PAYLOAD as u64;

#[test]
fn xdp_and_tc_count_ping_and_udp_across_a_veth_pair() {
    require_command("ping").expect("ping");
    require_command("bpftool").expect("bpftool");
    let a = Netns::new("sxa").expect("netns a");
    let b = Netns::new("sxb").expect("netns b");
    veth_pair(&a, "veth-a", "10.201.0.1/24", &b, "veth-b", "10.201.0.2/24").expect("veth pair");

    let log = Captured::default();
    let mut counters_a = a
        .run_in(|| {
            let mut c = InterfaceCounters::load_with_debug_log(Box::new(log.clone()))?;
            c.attach("veth-a").map(|mode| (c, mode))
        })
        .expect("enter a")
        .expect("load and attach in a");
    let mut counters_b = b
        .run_in(|| {
            let mut c = InterfaceCounters::load()?;
            c.attach("veth-b").map(|mode| (c, mode))
        })
        .expect("enter b")
        .expect("load and attach in b");
    // veth has native XDP: the driver mode must have been taken, not the fallback.
    assert_eq!(counters_a.1, AttachedXdpMode::Driver);
    assert_eq!(counters_b.1, AttachedXdpMode::Driver);

    // The kernel holds one XDP link and one TCX link for each side's programs.
    let ids_b = counters_b.0.program_ids().expect("program ids");
    assert_eq!(links_of(ids_b.xdp, "xdp"), 1, "XDP link of veth-b");
    assert_eq!(links_of(ids_b.tc, "tcx"), 1, "TCX link of veth-b");
    let link = b.ip(&["-d", "link", "show", "veth-b"]).expect("ip link");
    assert!(
        link.contains(&format!("prog/xdp id {} name count_xdp", ids_b.xdp)),
        "{link}"
    );

    // 3 pings a → b.
    run(a
        .command("ping")
        .args(["-c", "3", "-i", "0.2", "-W", "2", "10.201.0.2"]))
    .expect("ping a → b");

    // 5 UDP datagrams a → b, each received.
    let receiver = b
        .run_in(|| UdpSocket::bind("10.201.0.2:9999"))
        .expect("enter b")
        .expect("bind receiver");
    receiver
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let sender = a
        .run_in(|| UdpSocket::bind("10.201.0.1:0"))
        .expect("enter a")
        .expect("bind sender");
    let mut buf = [0u8; 2048];
    for i in 0..5u8 {
        sender
            .send_to(&[i; UDP_PAYLOAD], "10.201.0.2:9999")
            .expect("send");
        let (n, _) = receiver.recv_from(&mut buf).expect("datagram lost");
        assert_eq!(n, UDP_PAYLOAD);
        assert_eq!(buf[0], i);
    }

    let (ca, cb) = (&mut counters_a.0, &mut counters_b.0);
    let sa = ca.stats("veth-a").expect("stats a");
    let sb = cb.stats("veth-b").expect("stats b");
    eprintln!("veth-a: {sa:?}\nveth-b: {sb:?}");

    // b received (XDP) at least the 3 echo requests and 5 datagrams; a sent (TC
    // egress) at least as much. ARP and IPv6 neighbour traffic may add a few more.
    let sent_min_bytes = 3 * ICMP_FRAME + 5 * UDP_FRAME;
    assert!(sb.xdp_packets >= 8, "{sb:?}");
    assert!(sb.xdp_bytes >= sent_min_bytes, "{sb:?}");
    assert!(sa.tc_packets >= 8, "{sa:?}");
    assert!(sa.tc_bytes >= sent_min_bytes, "{sa:?}");
    // The 3 echo replies go the other way.
    assert!(
        sb.tc_packets >= 3 && sb.tc_bytes >= 3 * ICMP_FRAME,
        "{sb:?}"
    );
    assert!(
        sa.xdp_packets >= 3 && sa.xdp_bytes >= 3 * ICMP_FRAME,
        "{sa:?}"
    );
    // Nothing like a runaway counter: only a handful of background packets exist.
    assert!(sb.xdp_packets < 8 + 40, "{sb:?}");

    // aya-log: a was loaded with debug logging on, b was not.
    ca.flush_log();
    let lines = log.0.lock().unwrap().clone();
    assert!(
        lines.iter().any(|l| l.starts_with("xdp: ifindex")),
        "no XDP debug line in {lines:?}"
    );
    assert!(
        lines.iter().any(|l| l.starts_with("tc: ifindex")),
        "no TC debug line in {lines:?}"
    );

    // Detach: both programs leave the interface.
    a.run_in(|| ca.detach("veth-a"))
        .expect("enter a")
        .expect("detach a");
    b.run_in(|| cb.detach("veth-b"))
        .expect("enter b")
        .expect("detach b");
    for ids in [ids_b, ca.program_ids().expect("program ids")] {
        assert_eq!(links_of(ids.xdp, "xdp"), 0, "XDP link left after detach");
        assert_eq!(links_of(ids.tc, "tcx"), 0, "TCX link left after detach");
    }
    let link = b.ip(&["-d", "link", "show", "veth-b"]).expect("ip link");
    assert!(!link.contains("prog/xdp"), "{link}");
    assert!(
        cb.stats("veth-b").is_err(),
        "stats of a detached interface must be an error"
    );
    assert_eq!(ca.attached().count(), 0);
}

#[test]
fn attaching_to_a_missing_interface_is_a_clear_error() {
    let ns = Netns::new("sxm").expect("netns");
    let err = ns
        .run_in(|| InterfaceCounters::load().and_then(|mut c| c.attach("no-such-if0")))
        .expect("enter")
        .expect_err("attach must fail");
    assert_eq!(err.to_string(), "interface \"no-such-if0\" not found");
}

/// How many kernel links of `kind` point at program `prog_id` (bpftool reports
/// TCX links by number, 11, in Debian 12's version).
fn links_of(prog_id: u32, kind: &str) -> usize {
    let out = run(Command::new("bpftool").args(["-j", "link", "show"])).expect("bpftool link show");
    let links: Vec<serde_json::Value> = serde_json::from_str(&out).expect("bpftool JSON");
    links
        .iter()
        .filter(|l| l["prog_id"] == prog_id)
        .filter(|l| match kind {
            "tcx" => l["type"] == "tcx" || l["type"] == 11,
            other => l["type"] == other,
        })
        .count()
}
