//! The kernel's `jhash ip saddr mod N seed S` (nft_hash's jhash expression), recomputed so the
//! tracer can say which endpoint a given client lands on. nft_jhash hashes the source-address
//! register (the 4 or 16 address bytes as they sit in the packet, network byte order) with Bob
//! Jenkins' lookup3 hash in the variant of the Linux `jhash()` helper (initial value
//! `0xdeadbeef + length + seed`), then maps the 32-bit hash onto `0..N` with
//! `reciprocal_scale`, a multiply-and-shift instead of a modulo. Whole 12-byte blocks are read
//! as CPU-order words: this follows little-endian hosts (x86_64, arm64); a big-endian host
//! hashes IPv6 addresses differently (IPv4 addresses fit in the byte-wise tail and are the same
//! everywhere).

use std::net::IpAddr;

/// lookup3's arbitrary initial value.
const INITVAL: u32 = 0xdead_beef;

/// lookup3's `mix`: reversibly scrambles three words after each 12-byte block.
fn mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    for (r1, r2, r3) in [(4, 6, 8), (16, 19, 4)] {
        *a = a.wrapping_sub(*c) ^ c.rotate_left(r1);
        *c = c.wrapping_add(*b);
        *b = b.wrapping_sub(*a) ^ a.rotate_left(r2);
        *a = a.wrapping_add(*c);
        *c = c.wrapping_sub(*b) ^ b.rotate_left(r3);
        *b = b.wrapping_add(*a);
    }
}

/// lookup3's `final`: avalanches the last block into `c`.
fn final_mix(a: &mut u32, b: &mut u32, c: &mut u32) {
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(14));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(11));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(25));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(16));
    *a = (*a ^ *c).wrapping_sub(c.rotate_left(4));
    *b = (*b ^ *a).wrapping_sub(a.rotate_left(14));
    *c = (*c ^ *b).wrapping_sub(b.rotate_left(24));
}

/// Little-endian word from up to four bytes (missing high bytes are zero), which is both how
/// lookup3 folds the tail byte by byte and how a little-endian CPU loads a full word.
fn word(bytes: &[u8]) -> u32 {
    bytes
        .iter()
        .enumerate()
        .fold(0, |w, (i, &byte)| w | u32::from(byte) << (8 * i))
}

/// `jhash(key, key.len(), seed)`.
pub(super) fn jhash(key: &[u8], seed: u32) -> u32 {
    // The kernel takes the length as u32; keys here are at most 16 bytes.
    let len = u32::try_from(key.len()).unwrap_or(u32::MAX);
    let init = INITVAL.wrapping_add(len).wrapping_add(seed);
    let (mut a, mut b, mut c) = (init, init, init);
    let mut rest = key;
    // Strictly more than 12: a key of exactly 12 bytes goes through the tail and `final`.
    while rest.len() > 12 {
        a = a.wrapping_add(word(&rest[0..4]));
        b = b.wrapping_add(word(&rest[4..8]));
        c = c.wrapping_add(word(&rest[8..12]));
        mix(&mut a, &mut b, &mut c);
        rest = &rest[12..];
    }
    if rest.is_empty() {
        // Nothing left to add: lookup3 returns `c` without the final mix.
        return c;
    }
    // Zero padding adds nothing, so a padded block folds the 1..=12 tail bytes exactly.
    let mut tail = [0u8; 12];
    tail[..rest.len()].copy_from_slice(rest);
    a = a.wrapping_add(word(&tail[0..4]));
    b = b.wrapping_add(word(&tail[4..8]));
    c = c.wrapping_add(word(&tail[8..12]));
    final_mix(&mut a, &mut b, &mut c);
    c
}

/// Maps a uniform 32-bit value onto `0..n`: the high word of `val * n`.
pub(super) fn reciprocal_scale(val: u32, n: u32) -> u32 {
    // The product of two u32s fits in u64 and its high word is below `n`.
    ((u64::from(val) * u64::from(n)) >> 32) as u32
}

/// What `jhash ip saddr mod n seed seed` evaluates to for `addr` (offset 0).
pub(super) fn jhash_addr(addr: IpAddr, n: u32, seed: u32) -> u32 {
    let h = match addr {
        IpAddr::V4(a) => jhash(&a.octets(), seed),
        IpAddr::V6(a) => jhash(&a.octets(), seed),
    };
    reciprocal_scale(h, n)
}

#[cfg(test)]
mod tests {
    use super::{jhash, jhash_addr, reciprocal_scale};

    #[test]
    fn empty_key_is_the_initial_value() {
        // No bytes: no mixing at all, the result is 0xdeadbeef + 0 + seed.
        assert_eq!(jhash(&[], 0), 0xdead_beef);
        assert_eq!(jhash(&[], 1), 0xdead_bef0);
        assert_eq!(jhash(&[], 0xdead_beef), 0xbd5b_7dde);
    }

    #[test]
    fn matches_lookup3_reference_values() {
        // The self-test values published with lookup3 (`hashlittle`, which the Linux helper
        // equals on little-endian hosts): 30 bytes exercise two full blocks and a 6-byte tail.
        let key = b"Four score and seven years ago";
        assert_eq!(jhash(key, 0), 0x1777_0551);
        assert_eq!(jhash(key, 1), 0xcd62_8161);
    }

    #[test]
    fn tail_bytes_are_little_endian_words() {
        // One byte and the same byte padded with zeros as a 4-byte word hash alike except for
        // the length folded into the initial value: so compensate through the seed.
        assert_eq!(jhash(&[7], 3), jhash(&[7, 0, 0, 0], 0));
        assert_ne!(jhash(&[7], 0), jhash(&[0, 7], 0));
    }

    #[test]
    fn reciprocal_scale_stays_below_n() {
        for n in [1u32, 2, 3, 7, 1000, u32::MAX] {
            for val in [0u32, 1, 0x7fff_ffff, 0x8000_0000, 0xdead_beef, u32::MAX] {
                assert!(reciprocal_scale(val, n) < n, "{val} mod {n}");
            }
        }
        assert_eq!(reciprocal_scale(u32::MAX, 3), 2);
        assert_eq!(reciprocal_scale(0x8000_0000, 2), 1);
        assert_eq!(reciprocal_scale(0x7fff_ffff, 2), 0);
    }

    #[test]
    fn address_hash_is_deterministic() {
        let a = "203.0.113.2".parse().unwrap();
        assert_eq!(jhash_addr(a, 5, 42), jhash_addr(a, 5, 42));
        let b: std::net::IpAddr = "fd00::1".parse().unwrap();
        assert!(jhash_addr(b, 5, 42) < 5);
    }
}
