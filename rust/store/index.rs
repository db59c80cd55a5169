//! The hash index from object ids to table entries: open addressing with
//! linear probing over `index_slots` (a power of two) slots, `NIL` when empty.

use super::layout::NIL;
use super::locked::Locked;

pub(super) fn fnv1a(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

impl Locked<'_> {
    /// The index slot and entry of object `id`, if it is in the table.
    pub(super) fn find(&mut self, id: &[u8]) -> Option<(u64, u32)> {
        let mask = self.store.layout.index_slots - 1;
        let hash = fnv1a(id);
        let mut s = hash & mask;
        loop {
            let e = *self.slot(s);
            if e == NIL {
                return None;
            }
            let en = self.entry(e);
            if en.hash == hash && en.id() == id {
                return Some((s, e));
            }
            s = (s + 1) & mask;
        }
    }

    pub(super) fn index_insert(&mut self, e: u32) {
        let mask = self.store.layout.index_slots - 1;
        let mut s = self.entry(e).hash & mask;
        while *self.slot(s) != NIL {
            s = (s + 1) & mask;
        }
        *self.slot(s) = e;
    }

    /// Backward-shift deletion keeps linear probing free of tombstones.
    pub(super) fn index_remove(&mut self, slot: u64) {
        let mask = self.store.layout.index_slots - 1;
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & mask;
            let e = *self.slot(j);
            if e == NIL {
                break;
            }
            let home = self.entry(e).hash & mask;
            // Move e into the hole unless its home lies cyclically in (hole, j].
            let stays = if hole <= j { hole < home && home <= j } else { hole < home || home <= j };
            if !stays {
                *self.slot(hole) = e;
                hole = j;
            }
        }
        *self.slot(hole) = NIL;
    }
}
