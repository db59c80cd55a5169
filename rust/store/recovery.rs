//! Rebuilding the derived metadata (index, free list, LRU list, counters and the
//! allocator) from the entries alone, after a process died holding the lock; and
//! the full consistency check used by tests.

use super::layout::{
    FLAG_DELETE_PENDING, FLAG_PINNED, MAX_CLIENTS, MAX_ID_LEN, NIL, STATE_FREE, STATE_SEALED,
};
use super::locked::Locked;
use crate::alloc::{block_size_for, BLOCK_HEADER};

impl Locked<'_> {
    /// Rebuilds the index, entry free list, LRU list and counters from the
    /// entries alone (the allocator is rebuilt separately).
    pub(super) fn rebuild_tables(&mut self) {
        let max = self.store.layout.max_objects as u32;
        let slots = self.store.layout.index_slots;
        for s in 0..slots {
            *self.slot(s) = NIL;
        }
        {
            let h = self.header();
            h.free_entry = NIL;
            h.lru_head = NIL;
            h.lru_tail = NIL;
            h.num_objects = 0;
            h.num_sealed = 0;
            h.num_pinned = 0;
            h.object_bytes = 0;
        }
        let mut sealed = Vec::new();
        for e in (0..max).rev() {
            let (state, flags, size, last_used) = {
                let en = self.entry(e);
                (en.state, en.flags, en.size, en.last_used)
            };
            if state == STATE_FREE {
                let head = self.header().free_entry;
                self.entry(e).lru_next = head;
                self.header().free_entry = e;
                continue;
            }
            if flags & FLAG_DELETE_PENDING != 0 {
                continue;
            }
            self.index_insert(e);
            let h = self.header();
            h.num_objects += 1;
            h.object_bytes += size;
            h.num_pinned += (flags & FLAG_PINNED != 0) as u64;
            if state == STATE_SEALED {
                h.num_sealed += 1;
                sealed.push((last_used, e));
            }
        }
        sealed.sort_unstable();
        for (last_used, e) in sealed {
            self.lru_push_back(e);
            self.entry(e).last_used = last_used;
        }
    }

    pub(super) fn recover(&mut self) {
        self.header().num_recoveries += 1;
        let max = self.store.layout.max_objects as u32;
        let region = self.heap().region_len();
        let mut live: Vec<(u64, u64, u32)> = Vec::new();
        for e in 0..max {
            let en = self.entry(e);
            if en.state == STATE_FREE {
                continue;
            }
            let sane = en.state <= STATE_SEALED
                && en.id_len as usize >= 1
                && en.id_len as usize <= MAX_ID_LEN
                && en.block.is_multiple_of(BLOCK_HEADER)
                && en.block_size >= block_size_for(en.size)
                && en.block.checked_add(en.block_size).is_some_and(|end| end <= region);
            if sane {
                live.push((en.block, en.block_size, e));
            } else {
                en.state = STATE_FREE;
            }
        }
        live.sort_unstable();
        let mut blocks = Vec::with_capacity(live.len());
        let mut end = 0;
        for (block, size, e) in live {
            if block < end {
                self.entry(e).state = STATE_FREE;
                continue;
            }
            end = block + size;
            blocks.push((block, size));
        }
        self.heap().rebuild(&blocks);
        self.rebuild_tables();
        // Pending deletes whose readers are all gone can go now.
        for e in 0..max {
            let en = self.entry(e);
            if en.state != STATE_FREE && en.flags & FLAG_DELETE_PENDING != 0 && en.readers == 0 {
                self.free_entry(e);
            }
        }
    }

    pub(super) fn verify(&mut self) -> std::result::Result<(), String> {
        let allocated = self.heap().verify()?;
        let max = self.store.layout.max_objects as u32;
        let mut live = Vec::new();
        let (mut objects, mut sealed, mut pinned, mut bytes) = (0, 0, 0, 0);
        for e in 0..max {
            let en = self.entry(e);
            if en.state == STATE_FREE {
                continue;
            }
            live.push((en.block, en.block_size));
            if en.flags & FLAG_DELETE_PENDING != 0 {
                if en.readers == 0 {
                    return Err(format!("entry {e} is pending deletion without readers"));
                }
                continue;
            }
            objects += 1;
            bytes += en.size;
            sealed += (en.state == STATE_SEALED) as u64;
            pinned += (en.flags & FLAG_PINNED != 0) as u64;
            let id = en.id().to_vec();
            match self.find(&id) {
                Some((_, found)) if found == e => {}
                _ => return Err(format!("entry {e} is not reachable through the index")),
            }
        }
        live.sort_unstable();
        if live != allocated {
            return Err(format!("allocated blocks {allocated:?} != live entries {live:?}"));
        }
        let h = self.header();
        if (h.num_objects, h.num_sealed, h.num_pinned, h.object_bytes) != (objects, sealed, pinned, bytes) {
            return Err("counters disagree with the table".into());
        }
        let mut in_lru = 0;
        let (mut cur, mut prev) = (h.lru_head, NIL);
        while cur != NIL {
            let en = self.entry(cur);
            if en.state != STATE_SEALED || en.lru_prev != prev {
                return Err(format!("LRU list is corrupt at entry {cur}"));
            }
            in_lru += 1;
            prev = cur;
            cur = en.lru_next;
        }
        if in_lru != sealed || self.header().lru_tail != prev {
            return Err(format!("LRU holds {in_lru} of {sealed} sealed objects"));
        }
        // No object has fewer readers than the ledgers record for it.
        let mut recorded = std::collections::HashMap::<(u32, u64), u64>::new();
        for c in 0..MAX_CLIENTS as u32 {
            let cl = self.client(c);
            if cl.pid == 0 {
                continue;
            }
            let held = cl.records.iter().filter(|r| r.count > 0).count();
            if held != cl.held as usize {
                return Err(format!("client {c} says it holds {} records, has {held}", cl.held));
            }
            for rec in cl.records.iter().filter(|r| r.count > 0) {
                *recorded.entry((rec.entry, rec.generation)).or_default() += rec.count as u64;
            }
        }
        // Records of an older generation belong to dead processes whose objects were reclaimed.
        for ((e, generation), count) in recorded {
            let en = self.entry(e);
            if en.state != STATE_FREE && en.generation == generation && (en.readers as u64) < count {
                return Err(format!("entry {e} has {} readers, its ledgers record {count}", en.readers));
            }
        }
        Ok(())
    }
}
