//! Pod address allocation from the node's podCIDR, persisted so that no address
//! is ever handed out twice: not across agent restarts, not across crashes.
//!
//! Each allocated address is one file, `<dir>/<cidr>/<ip>`, holding the owner's
//! container id. A file is created with `O_EXCL` and synced (with its directory)
//! before the address is returned, so the file system is the lock and the record
//! at once, as the reference host-local plugin does. Allocation is next-fit from the
//! last address handed out (`last`), so a freed address is not reused at once and
//! a late packet for a deleted pod does not reach its successor.

use std::{
    fs::{self, File, OpenOptions},
    io::{ErrorKind, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use ipnet::Ipv4Net;

/// Errors of address allocation.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// Every address of the range is taken.
    #[error("no free address left in {0}")]
    Exhausted(Ipv4Net),
    /// The range has no usable host address (/31, /32).
    #[error("the pod CIDR {0} is too small for pods")]
    TooSmall(Ipv4Net),
    /// Reading or writing the allocation records failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The addresses of one pod CIDR and who holds them.
#[derive(Debug)]
pub struct Ipam {
    cidr: Ipv4Net,
    dir: PathBuf,
}

impl Ipam {
    /// Opens (creating if needed) the allocation records for `cidr` under `root`.
    pub fn open(root: &Path, cidr: Ipv4Net) -> Result<Self, IpamError> {
        let cidr = cidr.trunc();
        if cidr.prefix_len() > 30 {
            return Err(IpamError::TooSmall(cidr));
        }
        let dir = root.join(cidr.to_string().replace('/', "_"));
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        Ok(Self { cidr, dir })
    }

    /// The range addresses come from.
    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// The address held by `owner`, allocating one if it holds none (so a retried
    /// CNI ADD gets the same address).
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr, IpamError> {
        if let Some(ip) = self.address_of(owner)? {
            return Ok(ip);
        }
        let hosts: Vec<Ipv4Addr> = self.cidr.hosts().collect();
        let last = self.last();
        let start = last
            .and_then(|l| hosts.iter().position(|h| *h == l))
            .map_or(0, |i| i + 1);
        for i in 0..hosts.len() {
            let ip = hosts[(start + i) % hosts.len()];
            let path = self.dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    f.write_all(owner.as_bytes())
                        .and_then(|()| f.sync_all())
                        .map_err(io_err("writing", &path))?;
                    self.sync_dir()?;
                    // Only a hint for next-fit; losing it costs nothing.
                    let _ = fs::write(self.dir.join("last"), ip.to_string());
                    return Ok(ip);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("creating", &path)(e)),
            }
        }
        Err(IpamError::Exhausted(self.cidr))
    }

    /// Frees the address `owner` holds, returning it; `None` when it held none.
    pub fn release(&self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        let Some(ip) = self.address_of(owner)? else {
            return Ok(None);
        };
        let path = self.dir.join(ip.to_string());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing", &path)(e)),
        }
        self.sync_dir()?;
        Ok(Some(ip))
    }

    /// The address `owner` holds.
    pub fn address_of(&self, owner: &str) -> Result<Option<Ipv4Addr>, IpamError> {
        Ok(self
            .allocations()?
            .into_iter()
            .find(|(_, o)| o == owner)
            .map(|(ip, _)| ip))
    }

    /// Every allocated address with its owner.
    pub fn allocations(&self) -> Result<Vec<(Ipv4Addr, String)>, IpamError> {
        let mut out = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io_err("listing", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_err("listing", &self.dir))?;
            let Some(ip) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<Ipv4Addr>().ok())
            else {
                continue;
            };
            let path = entry.path();
            let owner = fs::read_to_string(&path).map_err(io_err("reading", &path))?;
            out.push((ip, owner.trim().to_owned()));
        }
        out.sort();
        Ok(out)
    }

    fn last(&self) -> Option<Ipv4Addr> {
        fs::read_to_string(self.dir.join("last"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn sync_dir(&self) -> Result<(), IpamError> {
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("syncing", &self.dir))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cidr(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_distinct_addresses_and_is_idempotent_per_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.42.3.0/24")).unwrap();
        let a = ipam.allocate("a").unwrap();
        let b = ipam.allocate("b").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            ipam.allocate("a").unwrap(),
            a,
            "a retried ADD keeps its address"
        );
        assert!(cidr("10.42.3.0/24").contains(&a));
        assert_ne!(a, Ipv4Addr::new(10, 42, 3, 0), "never the network address");
    }

    #[test]
    fn survives_reopening_and_never_hands_out_a_held_address() {
        let dir = tempfile::tempdir().unwrap();
        let first = Ipam::open(dir.path(), cidr("10.42.3.0/29")).unwrap();
        let held: Vec<_> = (0..3)
            .map(|i| first.allocate(&format!("c{i}")).unwrap())
            .collect();
        drop(first);
        // As after an agent restart.
        let again = Ipam::open(dir.path(), cidr("10.42.3.0/29")).unwrap();
        let next = again.allocate("c3").unwrap();
        assert!(!held.contains(&next), "{next} was already held");
        assert_eq!(again.address_of("c1").unwrap(), Some(held[1]));
        assert_eq!(again.allocations().unwrap().len(), 4);
    }

    #[test]
    fn release_frees_and_next_fit_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.42.3.0/29")).unwrap();
        let a = ipam.allocate("a").unwrap();
        assert_eq!(ipam.release("a").unwrap(), Some(a));
        assert_eq!(ipam.release("a").unwrap(), None, "a second DEL is a no-op");
        let b = ipam.allocate("b").unwrap();
        assert_ne!(a, b, "a freed address is not reused at once");
    }

    #[test]
    fn exhaustion_is_an_error_that_names_the_range() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = Ipam::open(dir.path(), cidr("10.42.3.0/30")).unwrap();
        ipam.allocate("a").unwrap();
        ipam.allocate("b").unwrap();
        let err = ipam.allocate("c").unwrap_err();
        assert_eq!(err.to_string(), "no free address left in 10.42.3.0/30");
        assert!(matches!(
            Ipam::open(dir.path(), cidr("10.42.3.0/31")),
            Err(IpamError::TooSmall(_))
        ));
    }
}
