//! The LRU list of sealed objects (a doubly linked list through the entries,
//! oldest at the head) and eviction from it.

use super::layout::{FLAG_PINNED, NIL};
use super::locked::Locked;
use crate::error::{Result, StoreError};

impl Locked<'_> {
    pub(super) fn lru_unlink(&mut self, e: u32) {
        let (prev, next) = {
            let en = self.entry(e);
            (en.lru_prev, en.lru_next)
        };
        if prev == NIL {
            self.header().lru_head = next;
        } else {
            self.entry(prev).lru_next = next;
        }
        if next == NIL {
            self.header().lru_tail = prev;
        } else {
            self.entry(next).lru_prev = prev;
        }
    }

    pub(super) fn lru_push_back(&mut self, e: u32) {
        let tail = self.header().lru_tail;
        let tick = {
            let h = self.header();
            h.tick += 1;
            h.tick
        };
        {
            let en = self.entry(e);
            en.lru_prev = tail;
            en.lru_next = NIL;
            en.last_used = tick;
        }
        if tail == NIL {
            self.header().lru_head = e;
        } else {
            self.entry(tail).lru_next = e;
        }
        self.header().lru_tail = e;
    }

    pub(super) fn make_room(&mut self, need: u64, size: u64) -> Result<u64> {
        let full = |t: &mut Self| {
            let capacity = t.header().capacity;
            let free = t.heap().free_bytes();
            let evictable = t.evictable_bytes();
            let region = t.heap().region_len();
            StoreError::Full { requested: size, capacity, unevictable: region - free - evictable }
        };
        // Refuse at once, without evicting anything, when even a store emptied of
        // every evictable object could not hold the request. Only then is it worth
        // scanning the whole table for unsealed objects of dead creators.
        if self.heap().free_bytes() + self.evictable_bytes() < need {
            // Readers that died may be all that holds objects in place.
            let given_back = self.reap_dead_clients_only();
            if self.reclaim_dead() > 0 || given_back > 0 {
                if let Some(b) = self.heap().alloc(need) {
                    return Ok(b);
                }
            }
            if self.heap().free_bytes() + self.evictable_bytes() < need {
                return Err(full(self));
            }
        }
        while self.evict_one().is_some() {
            if let Some(b) = self.heap().alloc(need) {
                return Ok(b);
            }
        }
        Err(full(self))
    }

    pub(super) fn evictable_bytes(&mut self) -> u64 {
        let mut total = 0;
        let mut cur = self.header().lru_head;
        while cur != NIL {
            let en = self.entry(cur);
            if en.flags & FLAG_PINNED == 0 && en.readers == 0 {
                total += en.block_size;
            }
            cur = en.lru_next;
        }
        total
    }

    /// Evicts the least recently used evictable object; returns its block size.
    pub(super) fn evict_one(&mut self) -> Option<u64> {
        let mut cur = self.header().lru_head;
        while cur != NIL {
            let (evictable, next, size, block_size, id) = {
                let en = self.entry(cur);
                (
                    en.flags & FLAG_PINNED == 0 && en.readers == 0,
                    en.lru_next,
                    en.size,
                    en.block_size,
                    en.id().to_vec(),
                )
            };
            if evictable {
                let (slot, _) = self.find(&id).expect("an LRU entry is indexed");
                self.remove(slot, cur);
                let h = self.header();
                h.num_evicted += 1;
                h.evicted_bytes += size;
                return Some(block_size);
            }
            cur = next;
        }
        None
    }
}
