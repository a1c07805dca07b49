//! Fingerprint → member handle, for heartbeats whose member id does not encode the member's
//! handle (ids another coordinator made, as after a migration from Kafka).
//!
//! A heartbeat found through the coordinator's maps pays two random cache lines per map (the
//! hash table's bucket and the key string it compares against) for the group and again for
//! the member. This index keys members by the same seeded 64-bit fingerprint of (group id,
//! member id) that the session wheel keeps next to each member's deadline: a lookup is one
//! probe into a flat open-addressing table (16-byte slots, load at most one half), and the
//! wheel entry the heartbeat renews anyway confirms the fingerprint. The maps stay the source
//! of truth; a miss, or a fingerprint two members share, falls back to them.

/// Most slots the index may hold: the members one coordinator may hold, at a load of at most
/// one half, rounded up to a power of two.
pub(crate) const FINGERPRINT_SLOTS_MAX: usize = 4 * super::MEMBERS_PER_SHARD_MAX;
/// Slots of a table's first allocation.
const SLOTS_MIN: usize = 64;
/// An empty slot (fingerprints are never 0: they have their low bit set).
const EMPTY: u64 = 0;
/// The handle of a fingerprint two members share: both take the map path.
const AMBIGUOUS: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    fingerprint: u64,
    member: u32,
}

/// A linear-probing table from fingerprint to member handle (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct FingerprintIndex {
    slots: Vec<Slot>,
    /// Occupied slots (ambiguous ones included).
    len: usize,
}

impl FingerprintIndex {
    /// The member with this fingerprint, if exactly one was indexed under it. O(1) expected;
    /// never allocates.
    #[inline]
    pub fn get(&self, fingerprint: u64) -> Option<u32> {
        debug_assert!(fingerprint != EMPTY);
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = home(fingerprint, mask);
        // The table is at most half full, so the probe ends at an empty slot.
        for _ in 0..self.slots.len() {
            let slot = self.slots[i];
            if slot.fingerprint == fingerprint {
                return (slot.member != AMBIGUOUS).then_some(slot.member);
            }
            if slot.fingerprint == EMPTY {
                return None;
            }
            i = (i + 1) & mask;
        }
        None
    }

    /// Indexes `member` under `fingerprint`. A fingerprint already held by another member
    /// becomes ambiguous (both members take the map path). Allocates only when the table
    /// grows (on a join or a load, never on a heartbeat).
    pub fn insert(&mut self, fingerprint: u64, member: u32) {
        debug_assert!(fingerprint != EMPTY && member != AMBIGUOUS);
        if (self.len + 1) * 2 > self.slots.len() {
            self.grow();
        }
        let mask = self.slots.len() - 1;
        let mut i = home(fingerprint, mask);
        loop {
            let slot = &mut self.slots[i];
            if slot.fingerprint == fingerprint {
                if slot.member != member {
                    slot.member = AMBIGUOUS;
                }
                return;
            }
            if slot.fingerprint == EMPTY {
                *slot = Slot {
                    fingerprint,
                    member,
                };
                self.len += 1;
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Drops `member`'s entry under `fingerprint`, if it has one. An ambiguous entry stays
    /// (the other member may still be there): it only sends lookups to the maps.
    pub fn remove(&mut self, fingerprint: u64, member: u32) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.slots.len() - 1;
        let mut i = home(fingerprint, mask);
        for _ in 0..self.slots.len() {
            let slot = self.slots[i];
            if slot.fingerprint == EMPTY {
                return;
            }
            if slot.fingerprint == fingerprint {
                if slot.member == member {
                    self.delete_at(i);
                }
                return;
            }
            i = (i + 1) & mask;
        }
    }

    /// Occupied slots.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Empties slot `hole` and shifts later entries of its probe run back over it, so every
    /// entry stays reachable from its home slot without tombstones.
    fn delete_at(&mut self, mut hole: usize) {
        let mask = self.slots.len() - 1;
        let mut j = (hole + 1) & mask;
        loop {
            let slot = self.slots[j];
            if slot.fingerprint == EMPTY {
                break;
            }
            let home = home(slot.fingerprint, mask);
            // The entry at j may fill the hole iff the hole lies on its probe path home..=j.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = slot;
                hole = j;
            }
            j = (j + 1) & mask;
        }
        self.slots[hole] = Slot::default();
        self.len -= 1;
    }

    fn grow(&mut self) {
        let capacity = (self.slots.len() * 2).max(SLOTS_MIN);
        assert!(
            capacity <= FINGERPRINT_SLOTS_MAX,
            "fingerprint index over FINGERPRINT_SLOTS_MAX"
        );
        let old = std::mem::replace(&mut self.slots, vec![Slot::default(); capacity]);
        self.len = 0;
        for slot in old.into_iter().filter(|s| s.fingerprint != EMPTY) {
            self.reinsert(slot);
        }
    }

    /// Puts an entry of the old table into the new one (ambiguous entries stay ambiguous).
    fn reinsert(&mut self, entry: Slot) {
        let mask = self.slots.len() - 1;
        let mut i = home(entry.fingerprint, mask);
        while self.slots[i].fingerprint != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
        self.len += 1;
    }
}

/// The home slot: bits above the fingerprint's always-set low bit.
#[inline]
fn home(fingerprint: u64, mask: usize) -> usize {
    (fingerprint >> 1) as usize & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_removes_and_survives_growth() {
        let mut index = FingerprintIndex::default();
        // Colliding home slots (same bits above bit 0 modulo the mask) exercise probing and
        // the backward shift.
        let fingerprints: Vec<u64> = (0..1000u64)
            .map(|i| ((i % 7) << 1 | (i << 20)) | 1)
            .collect();
        for (m, &f) in fingerprints.iter().enumerate() {
            index.insert(f, m as u32);
        }
        assert_eq!(index.len(), 1000);
        for (m, &f) in fingerprints.iter().enumerate() {
            assert_eq!(index.get(f), Some(m as u32));
        }
        for (m, &f) in fingerprints.iter().enumerate().filter(|(m, _)| m % 3 == 0) {
            index.remove(f, m as u32);
        }
        for (m, &f) in fingerprints.iter().enumerate() {
            let expected = (m % 3 != 0).then_some(m as u32);
            assert_eq!(index.get(f), expected, "member {m}");
        }
        assert_eq!(index.get(0xdead_beef_u64 << 8 | 1), None);
    }

    #[test]
    fn a_shared_fingerprint_is_ambiguous_until_rebuilt() {
        let mut index = FingerprintIndex::default();
        index.insert(0x11, 1);
        index.insert(0x11, 1);
        assert_eq!(index.get(0x11), Some(1));
        index.insert(0x11, 2);
        assert_eq!(index.get(0x11), None, "two members: the maps decide");
        index.remove(0x11, 1);
        assert_eq!(index.get(0x11), None, "stays ambiguous");
        // A removal by a member that is not the entry's leaves the entry.
        index.insert(0x23, 3);
        index.remove(0x23, 4);
        assert_eq!(index.get(0x23), Some(3));
    }
}
