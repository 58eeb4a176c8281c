//! Network namespaces owned by a test: a [`Netns`] guard, and a [`Network`] of
//! "nodes" joined by a bridge that lives in a namespace of its own, so nothing is
//! added to the host's network namespace and deleting the namespaces removes every
//! link the test made.

use std::{fs::File, net::Ipv4Addr, process::Command};

use nix::sched::CloneFlags;
use sextant_dataplane::counters::InterfaceCounters;

use crate::{Result, io_err, require_command, run, unique_name};

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `<prefix><unique>` with its loopback up.
    pub fn new(prefix: &str) -> Result<Self> {
        require_command("ip")?;
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind-mount path, for `nsenter --net=`.
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `ip <args>` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// A command that runs `program` inside the namespace. It enters only the network
    /// namespace (nsenter), keeping the host's mounts: `ip netns exec` would give the
    /// program a private sysfs without cgroups or bpffs (MACHINE.md).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace, and returns its result.
    /// In-process netlink and eBPF attach calls made by `f` act on this namespace.
    pub fn run_in<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        run_in_path(&self.path(), f)
    }
}

/// Runs `f` on a thread that has entered the namespace bound at `path`, and
/// returns its result; the caller's thread stays where it is.
pub fn run_in_path<R: Send>(path: &str, f: impl FnOnce() -> R + Send) -> Result<R> {
    let file = File::open(path).map_err(io_err(format!("opening {path}")))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| crate::Error::Io {
                what: "setns".into(),
                source: e.into(),
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run(Command::new("ip").args(["netns", "del", &self.name])) {
            tracing::warn!(netns = self.name, error = %e, "deleting network namespace");
        }
    }
}

/// Creates a veth pair with `a` in `ns_a` and `b` in `ns_b`, both up, with the
/// given addresses (CIDR notation, e.g. `10.0.0.1/24`).
pub fn veth_pair(
    ns_a: &Netns,
    a: &str,
    addr_a: &str,
    ns_b: &Netns,
    b: &str,
    addr_b: &str,
) -> Result<()> {
    // Created inside ns_a so the host namespace never holds either end.
    ns_a.ip(&[
        "link",
        "add",
        a,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "netns",
        ns_b.name(),
    ])?;
    ns_a.ip(&["addr", "add", addr_a, "dev", a])?;
    ns_b.ip(&["addr", "add", addr_b, "dev", b])?;
    ns_a.ip(&["link", "set", a, "up"])?;
    ns_b.ip(&["link", "set", b, "up"])?;
    Ok(())
}

/// A bridge `br0` in a namespace of its own that node namespaces (and, when a
/// test needs to reach nodes from outside the cluster, the host) join by veth.
/// Addresses are `<subnet>.<n>/24`; the host's is `<subnet>.254`.
pub struct Fabric {
    /// Pass-through XDP programs on the bridge's ports (see [`Fabric::join`]).
    receivers: InterfaceCounters,
    /// The namespace holding the bridge. Deleting it deletes every port, and with
    /// them the host's end of its veth.
    pub netns: Netns,
    subnet: [u8; 3],
    ports: u8,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric")
            .field("netns", &self.netns)
            .field("subnet", &self.subnet)
            .finish_non_exhaustive()
    }
}

impl Fabric {
    /// A fabric on the /24 whose first three octets are `subnet`.
    pub fn new(subnet: [u8; 3]) -> Result<Self> {
        let netns = Netns::new("sxf")?;
        netns.ip(&["link", "add", "br0", "type", "bridge"])?;
        netns.ip(&["link", "set", "br0", "up"])?;
        let receivers = InterfaceCounters::load()
            .map_err(|e| crate::Error::Failed(format!("loading the eBPF counters: {e}")))?;
        Ok(Self {
            receivers,
            netns,
            subnet,
            ports: 0,
        })
    }

    /// A fabric on a /24 under 10.200.0.0/13 that the host has no route into yet,
    /// so concurrent runs on one machine do not collide.
    pub fn new_unused() -> Result<Self> {
        let pid = std::process::id();
        for attempt in 0..64u32 {
            let n = pid.wrapping_add(attempt.wrapping_mul(7919));
            let subnet = [10, 200 + (n % 8) as u8, ((n / 8) % 256) as u8];
            let cidr = format!("{}.{}.{}.0/24", subnet[0], subnet[1], subnet[2]);
            let routes = run(Command::new("ip").args(["-4", "route", "show", "match", &cidr]))?;
            let used = routes.lines().any(|l| !l.starts_with("default"));
            if !used {
                return Self::new(subnet);
            }
        }
        Err(crate::Error::Missing(
            "no free /24 under 10.200.0.0/13 for a test fabric".into(),
        ))
    }

    /// The address of host number `n` on this fabric.
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], n)
    }

    /// Plugs `ns` in: its `eth0` gets `<subnet>.<n>/24`.
    pub fn join(&mut self, ns: &Netns, n: u8) -> Result<Ipv4Addr> {
        let addr = self.addr(n);
        let port = format!("p{}", self.ports);
        self.ports += 1;
        self.netns.ip(&[
            "link",
            "add",
            &port,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            ns.name(),
        ])?;
        self.netns.ip(&["link", "set", &port, "master", "br0"])?;
        self.netns.ip(&["link", "set", &port, "up"])?;
        // The node's uplink XDP program sends frames back out (XDP_TX); the
        // kernel hands those to the veth's peer only when the peer has an XDP
        // program too (a NIC needs none), so each port gets a pass-through one.
        let receivers = &mut self.receivers;
        self.netns
            .run_in(|| receivers.attach(&port))?
            .map_err(|e| crate::Error::Failed(format!("XDP on bridge port {port}: {e}")))?;
        wire_checksums(ns, "eth0")?;
        ns.ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        Ok(addr)
    }

    /// Plugs the host in at `<subnet>.254`, so a test reaches nodes as an outside
    /// client would. The link goes when the fabric's namespace is deleted.
    pub fn join_host(&mut self) -> Result<Ipv4Addr> {
        let addr = self.addr(254);
        let host_side = unique_name("sxh");
        let port = format!("p{}", self.ports);
        self.ports += 1;
        run(Command::new("ip").args([
            "link",
            "add",
            &host_side,
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.netns.name(),
        ]))?;
        self.netns.ip(&["link", "set", &port, "master", "br0"])?;
        self.netns.ip(&["link", "set", &port, "up"])?;
        require_command("ethtool")?;
        run(Command::new("ethtool").args(["-K", &host_side, "tx", "off"]))?;
        run(Command::new("ip").args(["addr", "add", &format!("{addr}/24"), "dev", &host_side]))?;
        run(Command::new("ip").args(["link", "set", &host_side, "up"]))?;
        Ok(addr)
    }
}

/// Makes `ifname` in `ns` send frames with their TCP/UDP checksums complete, as
/// a NIC puts them on the wire. Over a veth the kernel otherwise leaves them
/// partial (offloaded to a device that never computes them); XDP, which
/// rewrites packets without the kernel's checksum state, needs complete ones.
pub fn wire_checksums(ns: &Netns, ifname: &str) -> Result<()> {
    require_command("ethtool")?;
    run(ns.command("ethtool").args(["-K", ifname, "tx", "off"]))?;
    Ok(())
}

/// One node of a [`Network`].
#[derive(Debug)]
pub struct Node {
    /// The node's namespace; its uplink is `eth0`.
    pub netns: Netns,
    /// The node's address on the bridge.
    pub addr: Ipv4Addr,
}

/// Nodes joined by a [`Fabric`]. Addresses are `<subnet>.<i + 1>/24`.
#[derive(Debug)]
pub struct Network {
    /// The nodes, in creation order. Declared before `fabric` so they drop first.
    pub nodes: Vec<Node>,
    /// The bridge joining them.
    pub fabric: Fabric,
}

impl Network {
    /// Creates `count` nodes on the /24 whose first three octets are `subnet`.
    pub fn new(count: u8, subnet: [u8; 3]) -> Result<Self> {
        let mut fabric = Fabric::new(subnet)?;
        let mut nodes = Vec::with_capacity(usize::from(count));
        for i in 0..count {
            let netns = Netns::new("sxn")?;
            let addr = fabric.join(&netns, i + 1)?;
            nodes.push(Node { netns, addr });
        }
        Ok(Self { nodes, fabric })
    }
}
