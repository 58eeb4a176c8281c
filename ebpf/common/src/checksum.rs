//! Incremental Internet checksum updates (RFC 1624, eqn. 3: `HC' = ~(~HC + ~m + m')`)
//! for XDP, which has no checksum helpers. Every value is taken exactly as it
//! lies in the packet (loaded natively, not byte-swapped): one's complement
//! sums do not care about byte order as long as old and new values agree.

/// Folds a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    // Two folds suffice for a sum of at most three 16-bit words.
    let sum = (sum & 0xffff) + (sum >> 16);
    let sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The checksum `csum` after a 16-bit word of the covered data changed from
/// `old` to `new`.
#[inline(always)]
pub fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// The checksum `csum` after a 32-bit value (an address) changed from `old` to `new`.
#[inline(always)]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let csum = replace2(csum, old as u16, new as u16);
    replace2(csum, (old >> 16) as u16, (new >> 16) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full checksum of `words` (one's complement of their one's complement sum).
    fn full(words: &[u16]) -> u16 {
        let mut sum: u32 = 0;
        for w in words {
            sum += u32::from(*w);
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn incremental_matches_full_recompute() {
        // An IPv4 header (checksum word zeroed) with addresses in words 6..10.
        let mut words: [u16; 10] = [
            0x4500, 0x0054, 0x1c46, 0x4000, 0x4001, 0, 0x0a00, 0x0001, 0x0a00, 0x0002,
        ];
        let csum = full(&words);
        let mut x: u32 = 0x1234_5678;
        for _ in 0..1000 {
            // A pseudo-random new source address (xorshift).
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let old = u32::from(words[6]) | (u32::from(words[7]) << 16);
            let updated = replace4(full(&words), old, x);
            words[6] = x as u16;
            words[7] = (x >> 16) as u16;
            assert_eq!(updated, full(&words), "after writing {x:#x}");
        }
        assert_ne!(csum, full(&words));
    }

    #[test]
    fn word_change_and_back_restores_the_checksum() {
        let csum = 0xb1e6;
        let changed = replace2(csum, 0x4001, 0x3f01);
        assert_eq!(replace2(changed, 0x3f01, 0x4001), csum);
    }
}
