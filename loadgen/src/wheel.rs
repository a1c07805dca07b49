//! A hashed timing wheel for the consumers' heartbeat timers: arming is an append to a
//! slot's vector and firing walks slots in order. With a binary heap of 640,000 timers
//! (heartbeat-flood at `--scale 100`) the heap's `pop` was the generator's largest cost.
//!
//! Timers fire at their exact due time (the slot containing "now" is scanned entry by
//! entry); the slots only bound how far ahead a timer may be armed. One beyond that horizon
//! waits in a small overflow list until it fits.

/// Most slots of one wheel.
pub const SLOTS_MAX: u64 = 8192;
/// Narrowest slot, in ns.
const SLOT_NS_MIN: u64 = 1_000_000;
/// Slots [`Wheel::next_due_ns`] looks ahead for the next timer, so an idle thread sleeps
/// through empty slots instead of waking once per slot.
pub const LOOKAHEAD_SLOTS: u64 = 64;

/// One armed timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timer {
    pub due_ns: u64,
    pub local: u32,
    pub incarnation: u32,
}

pub struct Wheel {
    slot_ns: u64,
    slots: Vec<Vec<Timer>>,
    /// The first slot not yet walked past (absolute slot number).
    next_slot: u64,
    /// Timers armed beyond the slots' reach.
    overflow: Vec<Timer>,
    len: usize,
}

impl Wheel {
    /// A wheel whose timers are mostly armed at most `horizon_ns` ahead.
    pub fn new(horizon_ns: u64) -> Wheel {
        let slot_ns = (horizon_ns / (SLOTS_MAX - 2)).max(SLOT_NS_MIN);
        let count = (horizon_ns / slot_ns + 2).min(SLOTS_MAX);
        Wheel {
            slot_ns,
            slots: (0..count).map(|_| Vec::new()).collect(),
            next_slot: 0,
            overflow: Vec::new(),
            len: 0,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    fn count(&self) -> u64 {
        self.slots.len() as u64
    }

    pub fn arm(&mut self, timer: Timer) {
        self.len += 1;
        self.place(timer);
    }

    fn place(&mut self, timer: Timer) {
        // A timer already due goes to the slot walked next, so it fires on the next walk.
        let slot = (timer.due_ns / self.slot_ns).max(self.next_slot);
        if slot - self.next_slot >= self.count() - 1 {
            self.overflow.push(timer);
            return;
        }
        let index = (slot % self.count()) as usize;
        self.slots[index].push(timer);
    }

    /// Moves every timer due by `now_ns` into `out`.
    pub fn take_due(&mut self, now_ns: u64, out: &mut Vec<Timer>) {
        let now_slot = now_ns / self.slot_ns;
        let before = out.len();
        let count = self.count();
        while self.next_slot <= now_slot {
            let index = (self.next_slot % count) as usize;
            let slot = &mut self.slots[index];
            if self.next_slot < now_slot {
                out.append(slot);
                self.next_slot += 1;
                continue;
            }
            // The current slot: only what is due; the rest stays.
            let mut i = 0;
            while i < slot.len() {
                if slot[i].due_ns <= now_ns {
                    out.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            break;
        }
        self.len -= out.len() - before;
        if !self.overflow.is_empty() {
            let far = std::mem::take(&mut self.overflow);
            for timer in far {
                self.place(timer);
            }
        }
    }

    /// When the next timer may be due: the earliest in the current slot, else the start of
    /// the first non-empty slot among the next [`LOOKAHEAD_SLOTS`] (or the end of those);
    /// `None` when nothing is armed. Never later than the earliest timer.
    pub fn next_due_ns(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let count = self.count();
        let current = &self.slots[(self.next_slot % count) as usize];
        if let Some(earliest) = current.iter().map(|t| t.due_ns).min() {
            return Some(earliest);
        }
        let ahead = LOOKAHEAD_SLOTS.min(count - 1);
        let first_busy = (1..=ahead)
            .find(|k| !self.slots[((self.next_slot + k) % count) as usize].is_empty())
            .unwrap_or(ahead);
        // Overflow timers are beyond every slot, so they never come earlier than this.
        Some((self.next_slot + first_busy) * self.slot_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(due_ns: u64, local: u32) -> Timer {
        Timer {
            due_ns,
            local,
            incarnation: 0,
        }
    }

    #[test]
    fn timers_fire_at_their_due_time_not_before() {
        let mut wheel = Wheel::new(500_000_000);
        let mut out = Vec::new();
        wheel.arm(timer(2_500_000, 1));
        wheel.arm(timer(2_100_000, 2));
        wheel.arm(timer(400_000_000, 3));
        wheel.take_due(2_200_000, &mut out);
        assert_eq!(out, vec![timer(2_100_000, 2)]);
        assert_eq!(wheel.next_due_ns(), Some(2_500_000));
        out.clear();
        wheel.take_due(2_500_000, &mut out);
        assert_eq!(out, vec![timer(2_500_000, 1)]);
        // Nothing in the next 64 slots: sleep through them.
        assert_eq!(wheel.next_due_ns(), Some((2 + 64) * 1_000_000));
        wheel.arm(timer(2_500_000, 1));
        out.clear();
        wheel.take_due(399_999_999, &mut out);
        assert_eq!(out, vec![timer(2_500_000, 1)]);
        out.clear();
        wheel.take_due(400_000_000, &mut out);
        assert_eq!(out, vec![timer(400_000_000, 3)]);
        assert_eq!(wheel.len(), 0);
        assert_eq!(wheel.next_due_ns(), None);
    }

    #[test]
    fn past_and_far_timers_are_kept() {
        let mut wheel = Wheel::new(100_000_000);
        let mut out = Vec::new();
        wheel.take_due(50_000_000, &mut out);
        // Already due when armed: fires on the next walk.
        wheel.arm(timer(10, 1));
        // Beyond the horizon: held in the overflow until it fits, then fires on time.
        wheel.arm(timer(900_000_000, 2));
        wheel.take_due(50_000_001, &mut out);
        assert_eq!(out, vec![timer(10, 1)]);
        out.clear();
        for now in (100_000_000..=900_000_000).step_by(50_000_000) {
            wheel.take_due(now - 1, &mut out);
            assert!(out.is_empty(), "fired early at {now}");
        }
        wheel.take_due(900_000_000, &mut out);
        assert_eq!(out, vec![timer(900_000_000, 2)]);
    }
}
