//! A group's members in join order (leader election and responses follow it), with O(1)
//! amortized removal: a removed member leaves a hole, skipped by iteration and compacted away
//! once holes outnumber members. So many members of one big group expiring together cost
//! O(members), not O(members²).

use std::collections::HashMap;

const HOLE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(crate) struct JoinOrder {
    slots: Vec<u32>,
    /// Member handle → its index in `slots`.
    positions: HashMap<u32, u32>,
    holes: usize,
    /// No member before this index.
    head: usize,
}

impl JoinOrder {
    pub fn push(&mut self, member: u32) {
        debug_assert!(member != HOLE && !self.positions.contains_key(&member));
        self.positions.insert(member, self.slots.len() as u32);
        self.slots.push(member);
    }

    pub fn remove(&mut self, member: u32) {
        let Some(index) = self.positions.remove(&member) else {
            return;
        };
        self.slots[index as usize] = HOLE;
        self.holes += 1;
        if self.holes * 2 > self.slots.len() {
            self.compact();
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len() - self.holes
    }

    /// The earliest-joined member.
    pub fn first(&mut self) -> Option<u32> {
        while self.slots.get(self.head) == Some(&HOLE) {
            self.head += 1;
        }
        self.slots.get(self.head).copied()
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.slots[self.head..]
            .iter()
            .copied()
            .filter(|&m| m != HOLE)
    }

    /// A copy, for loops that change the group while they walk it.
    pub fn to_vec(&self) -> Vec<u32> {
        self.iter().collect()
    }

    fn compact(&mut self) {
        self.slots.retain(|&m| m != HOLE);
        for (index, &member) in self.slots.iter().enumerate() {
            self.positions.insert(member, index as u32);
        }
        self.holes = 0;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_join_order_through_removals_and_compaction() {
        let mut order = JoinOrder::default();
        for m in 0..10 {
            order.push(m);
        }
        for m in [0, 3, 4, 5, 6, 7] {
            order.remove(m);
        }
        order.remove(42);
        assert_eq!(order.to_vec(), vec![1, 2, 8, 9]);
        assert_eq!(order.len(), 4);
        assert_eq!(order.first(), Some(1));
        order.push(3);
        order.remove(1);
        assert_eq!(order.first(), Some(2));
        assert_eq!(order.to_vec(), vec![2, 8, 9, 3]);
        for m in [2, 8, 9, 3] {
            order.remove(m);
        }
        assert_eq!((order.len(), order.first()), (0, None));
    }
}
