//! Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable Software Network
//! Load Balancer", NSDI 2016, §3.4): a lookup table of M slots, each naming a backend, in which
//! every backend holds ⌊M/K⌋ or ⌈M/K⌉ slots and adding or removing one backend moves few slots
//! between the others. A backend is identified by its bytes (`10.0.1.7/8080`, `[fd00::1]/8080`)
//! and prefers the slots in the order of its own permutation `offset + j·skip mod M`, offset and
//! skip coming from two fixed hashes of its name; the backends take turns, each claiming its
//! next preferred slot that is still empty, until the table is full. The turns go in name
//! order, not in the caller's order, because whoever's turn comes first wins a slot two backends
//! prefer: that way the table is a function of the set of names alone, so the same backend keeps
//! its slots whatever position it has in the list. The hashes (FNV-1a 64 finished by murmur3's
//! `fmix64`) are written out here rather than taken from std, whose algorithm is unspecified,
//! because tables built by different nodes and different builds must agree slot for slot.

/// Table sizes [`table_size`] chooses from. They are primes, so every skip in `1..M` is coprime
/// to M and each backend's preference order visits every slot.
pub const SIZES: [u32; 3] = [251, 1021, 65537];

/// The table size for `backends` backends: the smallest of [`SIZES`] that gives each backend at
/// least 100 slots, or the largest (65537) when none does.
///
/// A backend's share is ⌊M/K⌋ or ⌈M/K⌉ slots, at most one slot from M/K, so with 100 slots per
/// backend every share is within 1 % of even. Above 655 backends (65537 / 100) that is no
/// longer guaranteed: a backend may be more than 1 % of its share away from it.
///
/// Two tables of different sizes have nothing in common, so a list whose size changes (from 2
/// to 3 backends, from 10 to 11) moves almost every slot; a caller that wants minimal
/// disruption across those steps keeps the size it had (any size ≥ 100·K balances as well).
pub fn table_size(backends: usize) -> u32 {
    let wanted = backends.saturating_mul(100);
    SIZES
        .iter()
        .copied()
        .find(|&size| size as usize >= wanted)
        .unwrap_or(SIZES[SIZES.len() - 1])
}

/// The Maglev lookup table of `size` slots over `backends`: slot → index into `backends`.
///
/// Empty when there are no backends or `size` is 0. The table depends only on the set of
/// names: reordering `backends` changes the indices, never which name a slot holds. A name
/// given more than once is one backend, and its first occurrence holds its slots (the later ones
/// get none), so duplicates neither win extra slots nor shift anyone else's. With more distinct
/// backends than slots, each slot goes to one of them and the others get none.
///
/// `size` should be prime ([`SIZES`], [`table_size`]), as in the paper. Any other size still
/// gives a full, balanced table: a skip that shares a factor with `size` would visit only some
/// slots, so it is moved up to the next coprime one, which spreads the permutations less evenly
/// and so moves more slots when backends change.
///
/// Removing one backend moves its own slots and, on average, a few others: 0.3–0.5 % of M at
/// 65537 slots for 11 to 50 backends, 0.5–2.5 % at 1021 slots for 3 to 10 (measured; the
/// paper's reason for M ≫ K). Two backends whose skips are equal (about 1/(M−1) per pair) walk
/// the same cycle of slots in lockstep, and a change then cascades along it: up to 39 % of a
/// 1021-slot table (3 backends) has been seen to move.
///
/// The table takes 4 bytes per slot; building it costs O(M log M) steps on average and no
/// allocation per slot.
///
/// # Panics
///
/// If `backends` has `u32::MAX` entries or more (indices are `u32`, and `u32::MAX` marks an
/// empty slot while the table is filled).
pub fn table<B: AsRef<[u8]>>(backends: &[B], size: u32) -> Vec<u32> {
    if backends.is_empty() || size == 0 {
        return Vec::new();
    }
    assert!(
        backends.len() < EMPTY as usize,
        "maglev::table: {} backends do not fit u32 indices",
        backends.len()
    );
    let name = |i: usize| backends[i].as_ref();

    // Name order, ties by position, then one entry per name: the first occurrence.
    let mut order: Vec<usize> = (0..backends.len()).collect();
    order.sort_unstable_by(|&a, &b| name(a).cmp(name(b)).then(a.cmp(&b)));
    order.dedup_by(|later, earlier| name(*later) == name(*earlier));

    let mut turns: Vec<Turn> = order
        .iter()
        .map(|&i| {
            let (offset, skip) = preference(name(i), size);
            Turn {
                // `i < EMPTY` was asserted above.
                index: i as u32,
                next: offset,
                skip,
            }
        })
        .collect();

    let mut slots = vec![EMPTY; size as usize];
    let mut filled = 0usize;
    'fill: loop {
        for turn in &mut turns {
            // Terminates: the preference order visits every slot and one is still empty.
            let mut slot = turn.next;
            while slots[slot as usize] != EMPTY {
                slot = step(slot, turn.skip, size);
            }
            slots[slot as usize] = turn.index;
            turn.next = step(slot, turn.skip, size);
            filled += 1;
            if filled == slots.len() {
                break 'fill;
            }
        }
    }
    slots
}

/// Marks an empty slot while the table is filled.
const EMPTY: u32 = u32::MAX;

/// One backend's place in the fill: its index in the caller's list, the next slot of its
/// preference order to try, and the step of that order.
struct Turn {
    index: u32,
    next: u32,
    skip: u32,
}

/// `(slot + skip) mod size`, with `slot < size` and `skip < size` (in u64: their sum may
/// overflow u32 when `size` is close to `u32::MAX`).
fn step(slot: u32, skip: u32, size: u32) -> u32 {
    let next = u64::from(slot) + u64::from(skip);
    let size = u64::from(size);
    // < size, so it fits u32.
    (if next >= size { next - size } else { next }) as u32
}

/// A backend's preference order over `size` slots, as `(offset, skip)`: slot j of the order is
/// `offset + j·skip mod size`. The paper's formulas, with the skip moved to the next value
/// coprime to `size` when it is not (never for a prime size), so the order visits every slot.
fn preference(name: &[u8], size: u32) -> (u32, u32) {
    let m = u64::from(size);
    // Both < size, so they fit u32.
    let offset = (hash(OFFSET_SEED, name) % m) as u32;
    let mut skip = if size == 1 {
        1
    } else {
        (hash(SKIP_SEED, name) % (m - 1) + 1) as u32
    };
    // Ends at size - 1 at the latest, which is coprime to size.
    while gcd(skip, size) != 1 {
        skip += 1;
    }
    (offset, skip)
}

fn gcd(mut a: u32, mut b: u32) -> u32 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// FNV-1a 64's offset basis, the seed of the offset hash.
const OFFSET_SEED: u64 = 0xcbf2_9ce4_8422_2325;
/// The seed of the skip hash: the offset basis xor the 64-bit golden ratio, so a name's offset
/// and skip come from two different hashes.
const SKIP_SEED: u64 = 0xcbf2_9ce4_8422_2325 ^ 0x9e37_79b9_7f4a_7c15;

/// FNV-1a 64 from `seed` instead of the offset basis, then murmur3's 64-bit finalizer. FNV's
/// multiply carries each bit only upwards, so names that differ in one character (two
/// addresses of one subnet) hash to values that differ in few bits, and close hashes would give
/// close offsets and skips; the finalizer makes every input bit reach every output bit.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::collections::BTreeSet;

    use expect_test::expect;
    use proptest::prelude::*;

    /// Backend names as kube-nft's callers write them, `address/port`, `n` of them.
    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.{}.{}.{}/8080", i / 65536, (i / 256) % 256, i % 256))
            .collect()
    }

    /// How many slots each backend holds.
    fn counts(slots: &[u32], backends: usize) -> Vec<usize> {
        let mut counts = vec![0; backends];
        for &s in slots {
            counts[s as usize] += 1;
        }
        counts
    }

    /// The table as names, to compare tables whose index spaces differ.
    fn by_name<'a>(slots: &[u32], backends: &'a [String]) -> Vec<&'a str> {
        slots
            .iter()
            .map(|&s| backends[s as usize].as_str())
            .collect()
    }

    fn assert_balanced(backends: usize, size: u32) {
        let slots = table(&names(backends), size);
        assert_eq!(slots.len(), size as usize);
        let m = size as usize;
        let (floor, ceil) = (m / backends, m.div_ceil(backends));
        let even = f64::from(size) / backends as f64;
        for (i, &c) in counts(&slots, backends).iter().enumerate() {
            assert!(
                c == floor || c == ceil,
                "K={backends} M={size}: backend {i} has {c} slots, not {floor} or {ceil}"
            );
            if m >= 100 * backends {
                assert!(
                    (c as f64 - even).abs() <= 0.01 * even,
                    "K={backends} M={size}: backend {i} has {c} slots, more than 1 % from {even}"
                );
            }
        }
    }

    #[test]
    fn table_size_gives_100_slots_per_backend_up_to_655() {
        assert_eq!(table_size(0), 251);
        assert_eq!(table_size(1), 251);
        assert_eq!(table_size(2), 251);
        assert_eq!(table_size(3), 1021);
        assert_eq!(table_size(10), 1021);
        assert_eq!(table_size(11), 65537);
        assert_eq!(table_size(655), 65537);
        assert_eq!(table_size(656), 65537);
        assert_eq!(table_size(usize::MAX), 65537);
        for k in 1..=655 {
            assert!(table_size(k) as usize >= 100 * k, "K={k}");
        }
    }

    #[test]
    fn every_backend_holds_floor_or_ceil_of_its_share() {
        let mut ks: BTreeSet<usize> = [1, 2, 3, 10, 11, 100, 654, 655].into();
        ks.extend((1..=655).step_by(37));
        for k in ks {
            assert_balanced(k, table_size(k));
        }
    }

    #[test]
    fn largest_table_is_balanced_and_fast() {
        let backends = names(655);
        let start = std::time::Instant::now();
        let slots = table(&backends, 65537);
        let elapsed = start.elapsed();
        eprintln!("maglev::table: 655 backends × 65537 slots in {elapsed:?}");
        assert_eq!(slots.len(), 65537);
        assert_balanced(655, 65537);
    }

    #[test]
    fn empty_inputs_give_an_empty_table() {
        assert_eq!(table::<&str>(&[], 251), Vec::<u32>::new());
        assert_eq!(table(&["10.0.1.7/8080"], 0), Vec::<u32>::new());
        assert_eq!(table::<&str>(&[], 0), Vec::<u32>::new());
    }

    #[test]
    fn one_backend_holds_every_slot() {
        assert_eq!(table(&["10.0.1.7/8080"], 251), vec![0; 251]);
        assert_eq!(table(&["10.0.1.7/8080"], 1), vec![0]);
        assert_eq!(table(&[""], 2), vec![0; 2]);
    }

    #[test]
    fn more_backends_than_slots_fill_each_slot_once() {
        let backends = names(10);
        let slots = table(&backends, 7);
        assert_eq!(slots.len(), 7);
        assert_eq!(slots.iter().collect::<BTreeSet<_>>().len(), 7, "{slots:?}");
        assert_eq!(table(&backends, 1).len(), 1);
    }

    #[test]
    fn sizes_that_are_not_prime_still_fill_and_balance() {
        for size in [1, 2, 4, 100, 256, 1000, 1024, 4096] {
            for k in [1, 2, 3, 7, 10] {
                assert_balanced(k, size);
            }
        }
    }

    #[test]
    fn duplicates_hold_no_slots_and_change_nothing() {
        let backends = names(5);
        let mut doubled = backends.clone();
        doubled.insert(1, backends[3].clone());
        doubled.push(backends[0].clone());
        let slots = table(&doubled, 251);
        assert_eq!(
            by_name(&slots, &doubled),
            by_name(&table(&backends, 251), &backends)
        );
        // The first occurrence of each name holds its slots, never the later copies at 4
        // ("…3" again) and 6 ("…0" again).
        let holders: BTreeSet<u32> = slots.iter().copied().collect();
        assert_eq!(holders, [0, 1, 2, 3, 5].into());
    }

    #[test]
    fn the_table_is_pinned() {
        // A change of hash, seeds or fill order shows here: every node and every build must
        // compute the same table.
        let backends = [
            "10.0.1.7/8080",
            "10.0.1.8/8080",
            "10.0.2.7/8080",
            "[fd00::1]/8080",
        ];
        let slots = table(&backends, 251);
        expect!["[0, 2, 1, 2, 0, 3, 2, 3, 2, 3, 0, 1, 1, 0, 0, 3, 3, 0, 3, 2]"]
            .assert_eq(&format!("{:?}", &slots[..20]));
        expect!["0xefd01f60ba992926 0xc04478379c8ed031 0x1af5d7a52e41174e"].assert_eq(&format!(
            "{:#018x} {:#018x} {:#018x}",
            hash(OFFSET_SEED, b""),
            hash(OFFSET_SEED, b"10.0.1.7/8080"),
            hash(SKIP_SEED, b"10.0.1.7/8080"),
        ));
    }

    /// Distinct `address/port` names, IPv4 and IPv6 mixed, as the callers write them.
    fn distinct_names(k: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Vec<String>> {
        let name = prop_oneof![
            (any::<[u8; 4]>(), 1u16..)
                .prop_map(|(a, p)| format!("{}/{p}", std::net::Ipv4Addr::from(a))),
            (any::<[u8; 16]>(), 1u16..)
                .prop_map(|(a, p)| format!("[{}]/{p}", std::net::Ipv6Addr::from(a))),
        ];
        prop::collection::btree_set(name, k).prop_map(|set| set.into_iter().collect())
    }

    /// What removing `backends[gone]` does to the table of `backends` at `size`: the slots
    /// that changed backend though their backend stayed, and every slot that changed.
    fn disruption(backends: &[String], gone: usize, size: u32) -> (usize, usize) {
        let rest: Vec<String> = [&backends[..gone], &backends[gone + 1..]].concat();
        let before = by_name(&table(backends, size), backends);
        let after = by_name(&table(&rest, size), &rest);
        let changed = before.iter().zip(&after).filter(|(b, a)| b != a);
        let others = changed
            .clone()
            .filter(|(b, _)| **b != backends[gone])
            .count();
        (others, changed.count())
    }

    /// The slots of `backends`' table held by backends whose skip equals another one's. Two
    /// such backends walk the same cycle of slots in lockstep, one a fixed number of steps
    /// behind the other, so which of them wins each slot of the cycle depends on every earlier
    /// race between them, and one change cascades along the whole cycle. The chance is about
    /// 1/(M−1) per pair: 4 % of the 10-backend sets at M = 1021, 2 % of the 50-backend sets
    /// at M = 65537. The slots it moved stayed under these backends' own slots in every set
    /// measured (up to 39 % of M with 3 backends at 1021, 5 % with 20 at 65537).
    fn lockstep_slots(backends: &[String], size: u32) -> usize {
        let skips: Vec<u32> = backends
            .iter()
            .map(|b| preference(b.as_bytes(), size).1)
            .collect();
        let held = counts(&table(backends, size), backends.len());
        (0..backends.len())
            .filter(|&i| skips.iter().filter(|&&s| s == skips[i]).count() > 1)
            .map(|i| held[i])
            .sum()
    }

    /// The share of the table, beyond lockstep cascades, that removing one backend may move
    /// between the others. Measured over random sets without a lockstep pair (K from 3 to 10
    /// at M = 1021, 400 000 sets; K from 11 to 50 at M = 65537, 50 000 sets): mean 0.5–2.4 %
    /// of M at 1021 and 0.26–0.45 % at 65537, 99th percentile under 4 % and 0.6 %, worst
    /// 12.1 % and 2.5 %. The paper's advice holds: the larger M is against K, the less moves.
    /// The bounds keep a margin over the worst seen, so the property test does not flake.
    fn moved_bound(size: u32) -> f64 {
        if size >= 65537 {
            0.04
        } else {
            0.15
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn removing_or_adding_one_backend_moves_few_others(
            backends in distinct_names(2..=50),
            gone in any::<prop::sample::Index>(),
        ) {
            // One size for both tables: a change of size reshuffles everything.
            let k = backends.len();
            let size = table_size(k);
            let m = f64::from(size);
            let gone = gone.index(k);
            let (others, changed) = disruption(&backends, gone, size);
            let allowed = moved_bound(size) * m + lockstep_slots(&backends, size) as f64;
            // Removing backends[gone]: its own slots move, and few of the others'.
            prop_assert!(
                others as f64 <= allowed,
                "K={k} M={size}: removing one moved {others} other slots, allowed {allowed}"
            );
            // Adding it to the others (the same two tables read the other way): the slots it
            // takes, at most ⌈M/K⌉, and the same few of the others'.
            prop_assert!(
                changed as f64 <= (m / k as f64).ceil() + allowed,
                "K={k} M={size}: adding one changed {changed} slots, 1/K is {}", m / k as f64
            );
        }

        #[test]
        fn the_order_of_backends_does_not_matter(
            (backends, shuffled) in distinct_names(1..=30)
                .prop_map(|mut names| {
                    // A duplicate too: whichever copy comes first holds the slots.
                    names.push(names[0].clone());
                    names
                })
                .prop_flat_map(|names| (Just(names.clone()), Just(names).prop_shuffle())),
            size in prop::sample::select(vec![251u32, 1021, 65537, 1000]),
        ) {
            prop_assert_eq!(
                by_name(&table(&backends, size), &backends),
                by_name(&table(&shuffled, size), &shuffled)
            );
        }
    }

    #[test]
    fn removing_one_backend_moves_little_on_average() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        // The measured means (see `moved_bound`) with a margin; a fixed sample, so a change of
        // hash that makes the permutations less independent shows here first.
        let mut runner = TestRunner::deterministic();
        for (k, sets, bound) in [
            (3usize, 200u32, 0.015),
            (6, 200, 0.03),
            (10, 200, 0.04),
            (11, 20, 0.01),
            (25, 20, 0.01),
            (50, 20, 0.01),
        ] {
            let size = table_size(k);
            let mut sum = 0.0;
            for set in 0..sets {
                let backends = distinct_names(k..=k)
                    .new_tree(&mut runner)
                    .expect("names")
                    .current();
                let (others, _) = disruption(&backends, set as usize % k, size);
                sum += others as f64 / f64::from(size);
            }
            let mean = sum / f64::from(sets);
            eprintln!("K={k} M={size}: removing one moves {mean:.4} of M between the others");
            assert!(mean <= bound, "K={k} M={size}: mean {mean} > {bound}");
        }
    }
}
