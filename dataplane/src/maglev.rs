//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), as Cilium and Katran
//! use it: each frontend's backends become a lookup table of prime size `M`,
//! filled from per-backend permutations so that every backend holds about `M/N`
//! slots and removing or adding one backend changes few slots held by the
//! others. The datapath picks slot `hash(5-tuple) % M`, so every node sends a
//! flow to the same backend, and a flow conntrack does not hold (another node's,
//! or one evicted from a full table) mostly keeps its backend across a change.
//!
//! `M` comes from a fixed ladder (at least ten slots per backend), so it only
//! changes when the backend count crosses a step.

use sextant_ebpf_common::lb::Lb4Backend;

/// Table sizes: primes, each about twice the last.
const SIZES: [u32; 11] = [
    31, 61, 127, 251, 509, 1_021, 2_039, 4_093, 8_191, 16_381, 32_749,
];

/// Slots per backend the table size aims for, at least.
const SLOTS_PER_BACKEND: u32 = 10;

/// FNV-1a, 64 bits, from `seed`: stable across builds and agents (every node
/// must build the same table).
fn fnv64(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The table size for `n` backends.
pub fn size(n: usize) -> u32 {
    let want = u32::try_from(n)
        .unwrap_or(u32::MAX)
        .saturating_mul(SLOTS_PER_BACKEND);
    SIZES
        .iter()
        .copied()
        .find(|m| *m >= want)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// The Maglev table of `backends`: `size(n)` slots, each holding one backend.
/// One backend needs no table; none gives an empty one.
pub fn table(backends: &[Lb4Backend]) -> Vec<Lb4Backend> {
    if backends.len() <= 1 {
        return backends.to_vec();
    }
    let m = u64::from(size(backends.len()));
    // Each backend's permutation: offset + j·skip (mod m), from its address.
    let perms: Vec<(u64, u64)> = backends
        .iter()
        .map(|b| {
            let name = [b.ip.to_ne_bytes(), u32::from(b.port).to_ne_bytes()].concat();
            let offset = fnv64(0xcbf2_9ce4_8422_2325, &name) % m;
            let skip = fnv64(0x8422_2325_cbf2_9ce4, &name) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut slots: Vec<Option<usize>> = vec![None; m as usize];
    let mut next = vec![0u64; backends.len()];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in perms.iter().enumerate() {
            // m is prime and skip < m, so the permutation visits every slot.
            let mut c = (offset + next[i] * skip) % m;
            while slots[c as usize].is_some() {
                next[i] += 1;
                c = (offset + next[i] * skip) % m;
            }
            slots[c as usize] = Some(i);
            next[i] += 1;
            filled += 1;
            if filled == m {
                break 'fill;
            }
        }
    }
    slots
        .into_iter()
        .map(|s| backends[s.unwrap_or(0)])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(n: u32) -> Vec<Lb4Backend> {
        (0..n)
            .map(|i| Lb4Backend {
                ip: u32::from_ne_bytes([10, 42, (i / 250) as u8, (i % 250) as u8 + 1]),
                port: 8080u16.to_be(),
                pad: 0,
            })
            .collect()
    }

    #[test]
    fn every_backend_gets_its_share() {
        for n in [2, 3, 7, 20, 100] {
            let b = backends(n);
            let t = table(&b);
            assert_eq!(t.len() as u32, size(b.len()));
            for backend in &b {
                let held = t.iter().filter(|s| *s == backend).count();
                let fair = t.len() as f64 / f64::from(n);
                assert!(
                    (held as f64) >= fair * 0.7 && (held as f64) <= fair * 1.3,
                    "{n} backends: one holds {held} of {} slots",
                    t.len()
                );
            }
        }
    }

    #[test]
    fn removing_a_backend_moves_few_other_slots() {
        let b = backends(20);
        let before = table(&b);
        let mut fewer = b.clone();
        let gone = fewer.remove(7);
        let after = table(&fewer);
        assert_eq!(before.len(), after.len(), "same table size");
        // Slots of surviving backends that now point elsewhere.
        let moved = before
            .iter()
            .zip(&after)
            .filter(|(old, new)| **old != gone && old != new)
            .count();
        let survivors = before.iter().filter(|old| **old != gone).count();
        assert!(
            (moved as f64) < survivors as f64 * 0.1,
            "{moved} of {survivors} surviving slots moved"
        );
        assert!(after.iter().all(|s| *s != gone));
    }

    #[test]
    fn tables_are_the_same_everywhere_and_small_cases_need_none() {
        assert_eq!(table(&backends(5)), table(&backends(5)));
        assert_eq!(table(&backends(1)), backends(1));
        assert!(table(&[]).is_empty());
        assert_eq!(size(3), 31);
        assert_eq!(size(4), 61);
    }
}
