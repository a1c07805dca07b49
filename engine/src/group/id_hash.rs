//! The hasher of the coordinator's id maps (group ids, member ids, instance ids): xxh64
//! with a per-coordinator random seed. Ids come from clients, so the seed keeps collisions
//! unpredictable (as std's SipHash does), at a fraction of SipHash's cost on the
//! heartbeat path.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher, RandomState};

/// A map keyed by client-chosen ids.
pub(crate) type IdMap<V> = HashMap<Box<str>, V, IdHashBuilder>;

/// Builds [`IdHasher`]s sharing one random seed.
#[derive(Debug, Clone)]
pub(crate) struct IdHashBuilder {
    seed: u64,
}

impl Default for IdHashBuilder {
    fn default() -> IdHashBuilder {
        IdHashBuilder {
            seed: random_seed(),
        }
    }
}

/// A random 64-bit seed (from std's per-process random keys).
pub(crate) fn random_seed() -> u64 {
    RandomState::new().hash_one(0x5eed_u64)
}

impl BuildHasher for IdHashBuilder {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { state: self.seed }
    }
}

/// xxh64 over each written chunk, chained through the seed.
pub(crate) struct IdHasher {
    state: u64,
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.state = xxhash_rust::xxh64::xxh64(bytes, self.state);
    }

    fn write_u8(&mut self, byte: u8) {
        // `str`'s Hash ends with a 0xff terminator byte: mix it without a second xxh64 pass.
        self.state = (self.state ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// An empty [`IdMap`].
pub(crate) fn id_map<V>() -> IdMap<V> {
    HashMap::with_hasher(IdHashBuilder::default())
}
