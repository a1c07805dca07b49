//! Group id → offsets partition mapping.
//!
//! A group's state lives in exactly one partition of `__consumer_offsets`, and the broker that
//! leads that partition is the group's coordinator. To keep a broker's coordinator placement
//! identical to the system it replaces, Coffer reproduces two mappings bit for bit:
//!
//! * **Kafka** ([`kafka_partition_for_group`]): `Utils.abs(groupId.hashCode()) % partitions`,
//!   as in Kafka's `GroupCoordinatorService.partitionFor` (and the older Scala
//!   `GroupMetadataManager.partitionFor`). `hashCode` is Java's `String.hashCode` over UTF-16
//!   code units ([`java_string_hash_code`]) and `Utils.abs` maps `Integer.MIN_VALUE` to 0
//!   (`(n == Integer.MIN_VALUE) ? 0 : Math.abs(n)`), not to itself as `Math.abs` does and not
//!   to `n & 0x7fffffff` as `Utils.toPositive` does.
//! * **Redpanda** ([`redpanda_partition_for_group`]): Redpanda's `coordinator_ntp_mapper`
//!   (`src/v/kafka/server/coordinator_ntp_mapper.h`) hashes the group id's bytes with
//!   XXH64, seed 0 (`incremental_xxhash64`, `src/v/hashing/xx.h`) and maps the digest with
//!   Google's jump consistent hash (`src/v/hashing/jump_consistent_hash.h`) onto the
//!   group topic's partition count (`group_topic_partitions`, default 16).
//!
//! [`GroupPartitioner`] selects between them; the default is Kafka's mapping.

/// Kafka's default `offsets.topic.num.partitions`.
pub const KAFKA_DEFAULT_PARTITIONS: u32 = 50;

/// Redpanda's default `group_topic_partitions`.
pub const REDPANDA_DEFAULT_PARTITIONS: u32 = 16;

/// Java's `String.hashCode`: `s[0]*31^(n-1) + s[1]*31^(n-2) + ... + s[n-1]` in wrapping
/// `i32` arithmetic, where `s[i]` are the string's UTF-16 code units (a character outside the
/// Basic Multilingual Plane counts as its two surrogate code units). Does not allocate.
///
/// ```
/// use coffer::routing::java_string_hash_code;
///
/// assert_eq!(java_string_hash_code(""), 0);
/// assert_eq!(java_string_hash_code("a"), 97);
/// assert_eq!(java_string_hash_code("ab"), 97 * 31 + 98);
/// // U+1F600 is the surrogate pair 0xD83D 0xDE00.
/// assert_eq!(java_string_hash_code("😀"), 0xD83D * 31 + 0xDE00);
/// // Wraps like Java's int arithmetic.
/// assert_eq!(java_string_hash_code("my-group"), -1_906_497_762);
/// ```
#[must_use]
pub fn java_string_hash_code(s: &str) -> i32 {
    s.encode_utf16().fold(0_i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    })
}

/// Kafka's `Utils.abs`: `Math.abs`, except that `Integer.MIN_VALUE` (which has no positive
/// counterpart) maps to 0.
#[must_use]
const fn kafka_utils_abs(n: i32) -> u32 {
    if n == i32::MIN { 0 } else { n.unsigned_abs() }
}

/// Kafka's group → offsets partition mapping: `Utils.abs(groupId.hashCode()) % partitions`.
///
/// # Panics
///
/// If `partitions` is 0.
///
/// ```
/// use coffer::routing::kafka_partition_for_group;
///
/// // "ab".hashCode() = 97*31 + 98 = 3105, and 3105 % 50 = 5.
/// assert_eq!(kafka_partition_for_group("ab", 50), 5);
/// // "my-group".hashCode() = -1906497762: Utils.abs gives 1906497762, % 50 = 12.
/// assert_eq!(kafka_partition_for_group("my-group", 50), 12);
/// ```
#[must_use]
pub fn kafka_partition_for_group(group_id: &str, partitions: u32) -> u32 {
    assert!(partitions > 0, "partition count must be positive");
    kafka_utils_abs(java_string_hash_code(group_id)) % partitions
}

/// Jump consistent hash (Lamping & Veach, "A Fast, Minimal Memory, Consistent Hash
/// Algorithm", 2014): maps `key` to a bucket in `0..buckets` such that growing `buckets` from
/// `n` to `n + 1` moves only about `1/(n+1)` of the keys, all of them into the new bucket `n`.
///
/// Same arithmetic as the paper's reference code (and Redpanda's copy of it): a 64-bit LCG
/// with multiplier 2862933555777941757, and `double` division.
///
/// # Panics
///
/// If `buckets` is 0.
///
/// ```
/// use coffer::routing::jump_consistent_hash;
///
/// assert_eq!(jump_consistent_hash(0, 1000), 0);
/// // Vectors generated from the paper's reference C++ code.
/// assert_eq!(jump_consistent_hash(1, 7), 6);
/// assert_eq!(jump_consistent_hash(0xdead_beef, 17), 16);
/// ```
#[must_use]
pub fn jump_consistent_hash(mut key: u64, buckets: u32) -> u32 {
    assert!(buckets > 0, "bucket count must be positive");
    const SCALE: f64 = (1_u64 << 31) as f64;
    let buckets = i64::from(buckets);
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        // (key >> 33) + 1 < 2^31 + 1 is exact in f64; the float → int cast truncates like C++.
        j = ((b + 1) as f64 * (SCALE / ((key >> 33) + 1) as f64)) as i64;
    }
    // 0 <= b < buckets <= u32::MAX.
    u32::try_from(b).expect("bucket fits in u32")
}

/// Redpanda's group → partition mapping:
/// `jump_consistent_hash(XXH64(group_id's UTF-8 bytes, seed 0), partitions)`.
///
/// # Panics
///
/// If `partitions` is 0.
///
/// ```
/// use coffer::routing::{jump_consistent_hash, redpanda_partition_for_group};
///
/// let digest = xxhash_rust::xxh64::xxh64(b"my-group", 0);
/// assert_eq!(
///     redpanda_partition_for_group("my-group", 16),
///     jump_consistent_hash(digest, 16),
/// );
/// ```
#[must_use]
pub fn redpanda_partition_for_group(group_id: &str, partitions: u32) -> u32 {
    jump_consistent_hash(
        xxhash_rust::xxh64::xxh64(group_id.as_bytes(), 0),
        partitions,
    )
}

/// Which group → partition mapping a broker keeps.
///
/// ```
/// use coffer::routing::GroupPartitioner;
///
/// let p = GroupPartitioner::default();
/// assert_eq!(p, GroupPartitioner::Kafka);
/// assert_eq!(p.partition_for("ab", 50), 5);
/// assert!(GroupPartitioner::Redpanda.partition_for("ab", 16) < 16);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum GroupPartitioner {
    /// Apache Kafka: `Utils.abs(groupId.hashCode()) % partitions`
    /// ([`kafka_partition_for_group`]).
    #[default]
    Kafka,
    /// Redpanda: `jump_consistent_hash(xxhash64(group_id), partitions)`
    /// ([`redpanda_partition_for_group`]).
    Redpanda,
}

impl GroupPartitioner {
    /// The offsets partition (in `0..partitions`) that owns `group_id`.
    ///
    /// # Panics
    ///
    /// If `partitions` is 0.
    #[must_use]
    pub fn partition_for(&self, group_id: &str, partitions: u32) -> u32 {
        match self {
            Self::Kafka => kafka_partition_for_group(group_id, partitions),
            Self::Redpanda => redpanda_partition_for_group(group_id, partitions),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn java_hash_hand_computed() {
        // "a"   = 97
        // "ab"  = 97*31 + 98 = 3007 + 98 = 3105
        // "abc" = 3105*31 + 99 = 96255 + 99 = 96354
        assert_eq!(java_string_hash_code(""), 0);
        assert_eq!(java_string_hash_code("a"), 97);
        assert_eq!(java_string_hash_code("ab"), 3105);
        assert_eq!(java_string_hash_code("abc"), 96354);
        // Checked with jshell: "console-consumer-1".hashCode() and "my-group".hashCode().
        assert_eq!(java_string_hash_code("console-consumer-1"), 35_782_224);
        assert_eq!(java_string_hash_code("my-group"), -1_906_497_762);
    }

    #[test]
    fn java_hash_non_ascii() {
        // "é" is U+00E9, one UTF-16 unit: 0xE9 = 233 (its two UTF-8 bytes must not be used).
        assert_eq!(java_string_hash_code("é"), 233);
        // "😀" (U+1F600) is the surrogate pair 0xD83D = 55357, 0xDE00 = 56832:
        // 55357*31 + 56832 = 1716067 + 56832 = 1772899.
        assert_eq!(java_string_hash_code("😀"), 1_772_899);
        // Checked with jshell.
        assert_eq!(java_string_hash_code("消费者组"), 871_131_088);
        assert_eq!(java_string_hash_code("group-😀"), 508_083_057);
    }

    #[test]
    fn kafka_partition_hand_computed() {
        assert_eq!(kafka_partition_for_group("", 50), 0);
        assert_eq!(kafka_partition_for_group("a", 50), 47); // 97 % 50
        assert_eq!(kafka_partition_for_group("ab", 50), 5); // 3105 % 50
        assert_eq!(kafka_partition_for_group("abc", 50), 4); // 96354 % 50
        assert_eq!(kafka_partition_for_group("console-consumer-1", 50), 24);
        assert_eq!(kafka_partition_for_group("é", 50), 33); // 233 % 50
        assert_eq!(kafka_partition_for_group("😀", 50), 49); // 1772899 % 50
        assert_eq!(kafka_partition_for_group("消费者组", 50), 38);
        assert_eq!(kafka_partition_for_group("group-😀", 50), 7);
        assert_eq!(kafka_partition_for_group("a", 1), 0);
    }

    #[test]
    fn kafka_negative_hash_uses_abs_not_mask() {
        // -1906497762: Utils.abs → 1906497762, % 50 = 12. The mask form
        // (h & 0x7fffffff = h + 2^31 = 241_985_886) would give 36 instead.
        assert_eq!(kafka_partition_for_group("my-group", 50), 12);
        assert_eq!(kafka_partition_for_group("my-group", 16), 2);
    }

    #[test]
    fn kafka_min_value_hash_maps_to_partition_zero() {
        // Found by a meet-in-the-middle search over "coffer-" + 7 chars of [a-z0-9], confirmed
        // with jshell: "coffer-evocrsz".hashCode() == -2147483648 == Integer.MIN_VALUE.
        let id = "coffer-evocrsz";
        assert_eq!(java_string_hash_code(id), i32::MIN);
        // Utils.abs(MIN_VALUE) = 0 and 0 % n = 0 for every n. (A wrapping abs would give
        // MIN_VALUE % 50 = -48, and an unsigned abs 2147483648 % 50 = 48.)
        for n in [1, 7, 16, 50, 1000] {
            assert_eq!(kafka_partition_for_group(id, n), 0);
        }
        // The well-known one, "polygenelubricants", is also Integer.MIN_VALUE.
        assert_eq!(java_string_hash_code("polygenelubricants"), i32::MIN);
        assert_eq!(kafka_partition_for_group("polygenelubricants", 50), 0);
    }

    #[test]
    fn jump_hash_reference_vectors() {
        // Generated from the paper's reference C++ code; published in dgryski/go-jump's
        // jump_test.go. Entry i is the bucket for `buckets = i + 1`.
        let cases: [(u64, &[u32]); 4] = [
            (0, &[0; 20]),
            (
                1,
                &[0, 0, 0, 0, 0, 0, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 17, 17],
            ),
            (
                0xdead_beef,
                &[0, 1, 2, 3, 3, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 16, 16, 16],
            ),
            (
                0x0ddc_0ffe_ebad_f00d,
                &[0, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 15, 15, 15, 15],
            ),
        ];
        for (key, expected) in cases {
            for (i, &want) in expected.iter().enumerate() {
                let buckets = u32::try_from(i + 1).unwrap();
                assert_eq!(
                    jump_consistent_hash(key, buckets),
                    want,
                    "key {key:#x} n {buckets}"
                );
            }
        }
    }

    #[test]
    fn jump_hash_in_range() {
        for key in (0..10_000_u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)) {
            for n in [1, 2, 3, 16, 50, 1000, u32::MAX] {
                assert!(jump_consistent_hash(key, n) < n);
            }
        }
    }

    #[test]
    fn jump_hash_monotonic() {
        // Growing n → n + 1 either keeps a key in place or moves it to the new bucket n.
        for key in (0..2_000_u64).map(|i| xxhash_rust::xxh64::xxh64(&i.to_le_bytes(), 0)) {
            let mut prev = jump_consistent_hash(key, 1);
            assert_eq!(prev, 0);
            for n in 1..200 {
                let next = jump_consistent_hash(key, n + 1);
                assert!(
                    next == prev || next == n,
                    "key {key:#x}: {prev} -> {next} at n={n}"
                );
                prev = next;
            }
        }
    }

    #[test]
    fn jump_hash_roughly_uniform() {
        const KEYS: u32 = 160_000;
        const BUCKETS: u32 = 16;
        let mut counts = [0_u32; BUCKETS as usize];
        for i in 0..KEYS {
            let key = xxhash_rust::xxh64::xxh64(&i.to_le_bytes(), 0);
            counts[jump_consistent_hash(key, BUCKETS) as usize] += 1;
        }
        let expected = KEYS / BUCKETS; // 10_000; sd = sqrt(10000 * 15/16) ≈ 97
        for (bucket, &c) in counts.iter().enumerate() {
            assert!(c.abs_diff(expected) < 600, "bucket {bucket}: {c}");
        }
    }

    #[test]
    fn kafka_roughly_uniform() {
        let mut counts = [0_u32; 50];
        for i in 0..100_000 {
            counts[kafka_partition_for_group(&format!("group-{i}"), 50) as usize] += 1;
        }
        // Java's hash over sequential ids is not random, but must not collapse onto a few
        // partitions.
        for (p, &c) in counts.iter().enumerate() {
            assert!((1_000..3_000).contains(&c), "partition {p}: {c}");
        }
    }

    #[test]
    fn xxh64_seed_zero_vectors() {
        // XXH64 reference values with seed 0, as Redpanda's incremental_xxhash64 uses.
        assert_eq!(xxhash_rust::xxh64::xxh64(b"", 0), 0xEF46_DB37_51D8_E999);
        assert_eq!(xxhash_rust::xxh64::xxh64(b"a", 0), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(xxhash_rust::xxh64::xxh64(b"abc", 0), 0x44BC_2CF5_AD77_0999);
    }

    #[test]
    fn redpanda_mapping_composition() {
        for id in ["", "a", "my-group", "消费者组", "group-😀"] {
            let digest = xxhash_rust::xxh64::xxh64(id.as_bytes(), 0);
            assert_eq!(
                redpanda_partition_for_group(id, REDPANDA_DEFAULT_PARTITIONS),
                jump_consistent_hash(digest, REDPANDA_DEFAULT_PARTITIONS)
            );
        }
        assert_eq!(redpanda_partition_for_group("anything", 1), 0);
    }

    #[test]
    fn partitioner_dispatch_and_default() {
        assert_eq!(GroupPartitioner::default(), GroupPartitioner::Kafka);
        assert_eq!(
            GroupPartitioner::Kafka.partition_for("coffer-evocrsz", KAFKA_DEFAULT_PARTITIONS),
            0
        );
        assert_eq!(
            GroupPartitioner::Redpanda.partition_for("my-group", 16),
            redpanda_partition_for_group("my-group", 16)
        );
    }

    #[test]
    #[should_panic(expected = "partition count must be positive")]
    fn zero_partitions_panics() {
        let _ = kafka_partition_for_group("a", 0);
    }

    proptest! {
        #[test]
        fn partition_in_range(id in any::<String>(), n in 1_u32..=10_000) {
            prop_assert!(GroupPartitioner::Kafka.partition_for(&id, n) < n);
            prop_assert!(GroupPartitioner::Redpanda.partition_for(&id, n) < n);
        }

        #[test]
        fn java_hash_matches_polynomial(id in any::<String>()) {
            // Independent formulation: sum of unit * 31^(len-1-i), mod 2^32.
            let units: Vec<u16> = id.encode_utf16().collect();
            let mut sum = 0_u32;
            let mut pow = 1_u32;
            for &u in units.iter().rev() {
                sum = sum.wrapping_add(u32::from(u).wrapping_mul(pow));
                pow = pow.wrapping_mul(31);
            }
            prop_assert_eq!(java_string_hash_code(&id), sum.cast_signed());
        }
    }
}
