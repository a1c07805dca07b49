//! A hashed timer wheel of deadlines keyed by small integer ids (member or group handles).
//!
//! Each id has at most one deadline. Entries live in a slab indexed by id and are linked
//! into their slot's doubly linked list, so insert, reschedule and cancel are O(1) and
//! allocation-free once the slab has room for the id (it grows only when a new id is first
//! used, i.e. when a member joins, never on a heartbeat). A slot covers `2^SLOT_SHIFT_MS`
//! milliseconds; the wheel spans `SLOTS << SLOT_SHIFT_MS` ms. A deadline further out than one
//! lap stays in its slot and is skipped (compared exactly) until its lap comes round.
//!
//! Extending a deadline (every heartbeat) only stores the new deadline: the entry stays in
//! the slot of its earlier deadline, and when expiry reaches that slot and finds it not yet
//! due, it moves it to the slot of its current deadline. So a member heartbeating every
//! 3 s against a 45 s session is relinked about once per session, not on every heartbeat:
//! a heartbeat touches one entry and no neighbours.
//!
//! What a heartbeat reads (deadline, period, whether armed, payload) is kept apart from the
//! list links it never reads: with a 16-byte payload an entry is 32 bytes, and ids `2k` and
//! `2k + 1` share one 64-byte-aligned cache line. A heartbeat reads one entry at a random
//! place, so the entry's size is the shard's footprint of randomly read memory per member
//! (48 bytes, straddling two lines one time in two, with the links inside), and a caller
//! that may find an id at either of a line's two entries reads one line for both.

/// Slots in the wheel (a power of two).
pub const SLOTS: usize = 8192;
/// Each slot covers `1 << SLOT_SHIFT_MS` milliseconds (8 ms): one lap is about 65 s, longer
/// than Kafka's default `session.timeout.ms` (45 s), so most deadlines are due on their
/// first lap.
pub const SLOT_SHIFT_MS: u32 = 3;
/// Most ids a wheel holds (the slab is indexed by id).
pub const TIMER_IDS_MAX: usize = 1 << 24;

const NIL: u32 = u32::MAX;
const SLOT_MASK: u64 = SLOTS as u64 - 1;

/// The `slot` of an entry with no deadline armed.
const UNARMED: u32 = u32::MAX;

/// What a heartbeat reads of an id.
#[derive(Debug, Clone, Copy)]
struct Entry<P> {
    deadline_ms: u64,
    /// The period of the last `schedule_in`, for `renew`.
    period_ms: u32,
    /// The slot whose list holds the entry, or `UNARMED`.
    slot: u32,
    /// The caller's data for this id, on the same cache line as its deadline.
    payload: P,
}

impl<P: Default> Entry<P> {
    fn unarmed() -> Entry<P> {
        Entry {
            deadline_ms: 0,
            period_ms: 0,
            slot: UNARMED,
            payload: P::default(),
        }
    }

    fn armed(&self) -> bool {
        self.slot != UNARMED
    }
}

/// The entries of ids `2k` and `2k + 1`, in one cache line when `P` is at most 16 bytes.
#[derive(Debug, Clone, Copy)]
#[repr(align(64))]
struct EntryPair<P>([Entry<P>; 2]);

/// Entries by id, two to a cache line (see [`EntryPair`]).
#[derive(Debug)]
struct Entries<P>(Vec<EntryPair<P>>);

impl<P: Copy + Default> Entries<P> {
    /// Ids with an entry (always even).
    fn len(&self) -> usize {
        self.0.len() * 2
    }

    /// Unarmed entries for ids up to `ids` (rounded up to a pair).
    fn resize(&mut self, ids: usize) {
        let unarmed = Entry::unarmed();
        self.0.resize(ids.div_ceil(2), EntryPair([unarmed; 2]));
    }

    #[inline]
    fn get(&self, id: usize) -> Option<&Entry<P>> {
        Some(&self.0.get(id >> 1)?.0[id & 1])
    }

    #[inline]
    fn get_mut(&mut self, id: usize) -> Option<&mut Entry<P>> {
        Some(&mut self.0.get_mut(id >> 1)?.0[id & 1])
    }
}

impl<P> std::ops::Index<usize> for Entries<P> {
    type Output = Entry<P>;

    #[inline]
    fn index(&self, id: usize) -> &Entry<P> {
        &self.0[id >> 1].0[id & 1]
    }
}

impl<P> std::ops::IndexMut<usize> for Entries<P> {
    #[inline]
    fn index_mut(&mut self, id: usize) -> &mut Entry<P> {
        &mut self.0[id >> 1].0[id & 1]
    }
}

/// An armed entry's neighbours in its slot's list (`NIL` at the ends and when unarmed).
#[derive(Debug, Clone, Copy)]
struct Links {
    prev: u32,
    next: u32,
}

const UNLINKED: Links = Links {
    prev: NIL,
    next: NIL,
};

/// A hashed timer wheel (see the module docs). Each id may carry a small `payload` stored
/// next to its deadline: a caller that looks the payload up and renews the deadline touches
/// one entry.
#[derive(Debug)]
pub struct TimerWheel<P = ()> {
    heads: Vec<u32>,
    entries: Entries<P>,
    /// By id, as `entries`; read and written only when an entry is linked or unlinked.
    links: Vec<Links>,
    /// The tick (`now_ms >> SLOT_SHIFT_MS`) from which expiry scans next.
    cursor_tick: u64,
    armed: usize,
}

impl<P: Copy + Default> TimerWheel<P> {
    /// Bytes of one id's entry: with `P` up to 16 bytes, 32 (a cache line holds two).
    pub const ENTRY_BYTES: usize = size_of::<EntryPair<P>>() / 2;

    /// An empty wheel whose clock starts at `now_ms`.
    pub fn new(now_ms: u64) -> TimerWheel<P> {
        TimerWheel {
            heads: vec![NIL; SLOTS],
            entries: Entries(Vec::new()),
            links: Vec::new(),
            cursor_tick: now_ms >> SLOT_SHIFT_MS,
            armed: 0,
        }
    }

    /// Deadlines armed.
    pub fn len(&self) -> usize {
        self.armed
    }

    /// Whether no deadline is armed.
    pub fn is_empty(&self) -> bool {
        self.armed == 0
    }

    /// Makes room for ids below `ids` (allocates; call when an id is first handed out).
    pub fn reserve_ids(&mut self, ids: usize) {
        assert!(ids <= TIMER_IDS_MAX, "timer ids over TIMER_IDS_MAX");
        if self.entries.len() < ids {
            self.entries.resize(ids);
            self.links.resize(self.entries.len(), UNLINKED);
        }
    }

    /// The deadline armed for `id`, if any.
    pub fn deadline_ms(&self, id: u32) -> Option<u64> {
        let entry = self.entries.get(id as usize)?;
        entry.armed().then_some(entry.deadline_ms)
    }

    /// Arms (or moves) `id`'s deadline. O(1); no allocation once `reserve_ids` covered `id`.
    pub fn schedule(&mut self, id: u32, deadline_ms: u64) {
        if id as usize >= self.entries.len() {
            self.reserve_ids(id as usize + 1);
        }
        let entry = &mut self.entries[id as usize];
        if entry.armed() && deadline_ms >= entry.deadline_ms {
            // An extension (the heartbeat case): expiry relinks it lazily.
            entry.deadline_ms = deadline_ms;
            return;
        }
        let slot = self.slot_of(deadline_ms);
        if self.entries[id as usize].armed() {
            self.unlink(id);
        } else {
            self.armed += 1;
        }
        self.link(id, slot, deadline_ms);
    }

    /// Arms `id` at `now_ms + period_ms` and remembers the period for [`renew`](Self::renew).
    pub fn schedule_in(&mut self, id: u32, now_ms: u64, period_ms: u32) {
        self.schedule(id, now_ms + u64::from(period_ms));
        self.entries[id as usize].period_ms = period_ms;
    }

    /// Moves an armed `id` to `now_ms` plus its period (a heartbeat): one store into one
    /// entry. Returns false if `id` is not armed.
    #[inline]
    pub fn renew(&mut self, id: u32, now_ms: u64) -> bool {
        match self.entries.get_mut(id as usize) {
            Some(entry) if entry.armed() => {
                let deadline_ms = now_ms + u64::from(entry.period_ms);
                if deadline_ms >= entry.deadline_ms {
                    entry.deadline_ms = deadline_ms;
                } else {
                    // The clock went back: relink at the earlier deadline.
                    self.schedule(id, deadline_ms);
                }
                true
            }
            _ => false,
        }
    }

    /// Sets `id`'s payload (kept until [`cancel`](Self::cancel)).
    pub fn set_payload(&mut self, id: u32, payload: P) {
        if id as usize >= self.entries.len() {
            self.reserve_ids(id as usize + 1);
        }
        self.entries[id as usize].payload = payload;
    }

    /// `id`'s payload while its deadline is armed.
    #[inline]
    pub fn armed_payload(&self, id: u32) -> Option<P> {
        let entry = self.entries.get(id as usize)?;
        entry.armed().then_some(entry.payload)
    }

    /// Disarms `id`'s deadline and clears its payload; returns whether one was armed.
    pub fn cancel(&mut self, id: u32) -> bool {
        match self.entries.get(id as usize) {
            Some(entry) if entry.armed() => {
                self.unlink(id);
                self.entries[id as usize] = Entry::unarmed();
                self.links[id as usize] = UNLINKED;
                self.armed -= 1;
                true
            }
            Some(_) => {
                self.entries[id as usize] = Entry::unarmed();
                false
            }
            _ => false,
        }
    }

    /// Disarms and appends to `expired` the ids whose deadline is at or before `now_ms`, at
    /// most `budget` of them. Returns true if more may be due (call again). Scans at most one
    /// lap of slots per call.
    pub fn expire(&mut self, now_ms: u64, budget: usize, expired: &mut Vec<u32>) -> bool {
        let target_tick = now_ms >> SLOT_SHIFT_MS;
        if target_tick.saturating_sub(self.cursor_tick) >= SLOTS as u64 {
            // One lap visits every slot: older ticks map onto the same slots.
            self.cursor_tick = target_tick - (SLOTS as u64 - 1);
        }
        let mut taken = 0;
        while self.cursor_tick <= target_tick {
            let slot = (self.cursor_tick & SLOT_MASK) as usize;
            let mut id = self.heads[slot];
            while id != NIL {
                let entry = self.entries[id as usize];
                let next = self.links[id as usize].next;
                if entry.deadline_ms <= now_ms {
                    if taken == budget {
                        return true;
                    }
                    self.unlink(id);
                    // Disarmed; period and payload stay for a re-arm.
                    self.entries[id as usize].slot = UNARMED;
                    self.links[id as usize] = UNLINKED;
                    self.armed -= 1;
                    expired.push(id);
                    taken += 1;
                } else {
                    // Extended since it was linked here: move it to its deadline's slot.
                    let due_slot = self.slot_of(entry.deadline_ms);
                    if due_slot as usize != slot {
                        self.unlink(id);
                        self.link(id, due_slot, entry.deadline_ms);
                    }
                }
                id = next;
            }
            if self.cursor_tick == target_tick {
                // Deadlines later in the current tick stay; this slot is scanned again.
                break;
            }
            self.cursor_tick += 1;
        }
        false
    }

    fn slot_of(&self, deadline_ms: u64) -> u32 {
        let tick = (deadline_ms >> SLOT_SHIFT_MS).max(self.cursor_tick);
        (tick & SLOT_MASK) as u32
    }

    fn link(&mut self, id: u32, slot: u32, deadline_ms: u64) {
        let head = self.heads[slot as usize];
        let entry = &mut self.entries[id as usize];
        entry.slot = slot;
        entry.deadline_ms = deadline_ms;
        self.links[id as usize] = Links {
            prev: NIL,
            next: head,
        };
        if head != NIL {
            self.links[head as usize].prev = id;
        }
        self.heads[slot as usize] = id;
    }

    fn unlink(&mut self, id: u32) {
        let Links { prev, next } = self.links[id as usize];
        let slot = self.entries[id as usize].slot;
        debug_assert!(slot != UNARMED);
        if prev == NIL {
            self.heads[slot as usize] = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next != NIL {
            self.links[next as usize].prev = prev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expire_all(wheel: &mut TimerWheel<u64>, now_ms: u64) -> Vec<u32> {
        let mut out = Vec::new();
        while wheel.expire(now_ms, 3, &mut out) {}
        out.sort_unstable();
        out
    }

    #[test]
    fn deadlines_fire_exactly_when_due() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(1_000);
        wheel.schedule(1, 1_005);
        wheel.schedule(2, 1_006);
        wheel.schedule(3, 50_000);
        assert!(expire_all(&mut wheel, 1_004).is_empty());
        assert_eq!(expire_all(&mut wheel, 1_005), vec![1]);
        assert_eq!(expire_all(&mut wheel, 49_999), vec![2]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(expire_all(&mut wheel, 50_000), vec![3]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn reschedule_and_cancel_take_effect() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        for id in 0..10 {
            wheel.schedule(id, 100);
        }
        wheel.schedule(4, 10_000);
        assert!(wheel.cancel(7));
        assert!(!wheel.cancel(7));
        assert_eq!(wheel.deadline_ms(4), Some(10_000));
        assert_eq!(expire_all(&mut wheel, 100), vec![0, 1, 2, 3, 5, 6, 8, 9]);
        assert_eq!(expire_all(&mut wheel, 10_000), vec![4]);
    }

    #[test]
    fn deadlines_beyond_one_lap_wait_for_their_lap() {
        let lap_ms = (SLOTS as u64) << SLOT_SHIFT_MS;
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        wheel.schedule(1, lap_ms * 3 + 7);
        assert!(expire_all(&mut wheel, lap_ms + 7).is_empty());
        assert!(expire_all(&mut wheel, lap_ms * 3 + 6).is_empty());
        assert_eq!(expire_all(&mut wheel, lap_ms * 3 + 7), vec![1]);
    }

    #[test]
    fn renew_extends_by_the_remembered_period() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        assert!(!wheel.renew(1, 10));
        wheel.schedule_in(1, 0, 1_000);
        for now in (100..=5_000).step_by(100) {
            assert!(wheel.renew(1, now));
            assert!(expire_all(&mut wheel, now).is_empty());
        }
        assert_eq!(wheel.deadline_ms(1), Some(6_000));
        assert!(expire_all(&mut wheel, 5_999).is_empty());
        assert_eq!(expire_all(&mut wheel, 6_000), vec![1]);
    }

    #[test]
    fn payloads_live_while_armed_and_go_with_cancel() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        wheel.set_payload(3, 77);
        assert_eq!(wheel.armed_payload(3), None);
        wheel.schedule_in(3, 0, 100);
        assert_eq!(wheel.armed_payload(3), Some(77));
        assert_eq!(expire_all(&mut wheel, 100), vec![3]);
        assert_eq!(wheel.armed_payload(3), None);
        wheel.schedule_in(3, 100, 100);
        assert_eq!(wheel.armed_payload(3), Some(77), "kept across expiry");
        assert!(wheel.cancel(3));
        wheel.schedule_in(3, 100, 100);
        assert_eq!(wheel.armed_payload(3), Some(0), "cleared by cancel");
    }

    #[test]
    fn entries_with_a_16_byte_payload_take_half_a_cache_line() {
        assert_eq!(TimerWheel::<(u64, u32)>::ENTRY_BYTES, 32);
        let mut wheel: TimerWheel<(u64, u32)> = TimerWheel::new(0);
        wheel.reserve_ids(3);
        assert_eq!(wheel.entries.len(), 4);
        let line = |id: usize| (&raw const wheel.entries[id]).addr() / 64;
        assert_eq!(line(0), line(1));
        assert_eq!(line(2), line(3));
        assert_ne!(line(1), line(2));
    }

    #[test]
    fn expiry_is_bounded_per_call() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        for id in 0..10 {
            wheel.schedule(id, 8);
        }
        let mut out = Vec::new();
        assert!(wheel.expire(100, 4, &mut out));
        assert_eq!(out.len(), 4);
        assert!(wheel.expire(100, 4, &mut out));
        assert!(!wheel.expire(100, 4, &mut out));
        assert_eq!(out.len(), 10);
    }

    #[test]
    fn a_long_idle_gap_jumps_at_most_one_lap() {
        let mut wheel: TimerWheel<u64> = TimerWheel::new(0);
        wheel.schedule(1, 5);
        let far = 1u64 << 40;
        assert_eq!(expire_all(&mut wheel, far), vec![1]);
        wheel.schedule(2, far - 100);
        assert_eq!(expire_all(&mut wheel, far), vec![2]);
    }
}
