//! The life of one object under the lock: create, seal, get, release and remove,
//! and the free list of table entries.

use super::index::fnv1a;
use super::layout::{
    FLAG_DELETE_PENDING, FLAG_PINNED, MAX_ID_LEN, NIL, STATE_CREATED, STATE_FREE, STATE_SEALED,
};
use super::ledger::pid_alive;
use super::locked::Locked;
use super::ObjectRef;
use crate::alloc::block_size_for;
use crate::error::{Result, StoreError};

impl Locked<'_> {
    pub(super) fn alloc_entry(&mut self) -> Option<u32> {
        let e = self.header().free_entry;
        if e == NIL {
            return None;
        }
        self.header().free_entry = self.entry(e).lru_next;
        Some(e)
    }

    pub(super) fn create(&mut self, id: &[u8], size: u64) -> Result<ObjectRef> {
        if let Some((slot, e)) = self.find(id) {
            let en = self.entry(e);
            if en.state == STATE_CREATED && !pid_alive(en.creator_pid) {
                en.readers = 0;
                self.remove(slot, e);
                self.header().num_reclaimed += 1;
            } else {
                return Err(StoreError::Exists(id.to_vec()));
            }
        }
        let need = block_size_for(size);
        let block = match self.heap().alloc(need) {
            Some(b) => b,
            None => self.make_room(need, size)?,
        };
        let e = match self.alloc_entry() {
            Some(e) => e,
            None => {
                if self.evict_one().is_some() || self.reclaim_dead() > 0 {
                    self.alloc_entry().expect("an eviction frees an entry")
                } else {
                    self.heap().free(block);
                    return Err(StoreError::TableFull { max_objects: self.store.layout.max_objects });
                }
            }
        };
        let block_size = self.heap().block_size(block);
        let pid = self.store.pid;
        let en = self.entry(e);
        en.id = [0; MAX_ID_LEN];
        en.id[..id.len()].copy_from_slice(id);
        en.id_len = id.len() as u32;
        en.hash = fnv1a(id);
        en.flags = 0;
        en.readers = 1;
        en.creator_pid = pid;
        en.block = block;
        en.block_size = block_size;
        en.size = size;
        en.lru_prev = NIL;
        en.lru_next = NIL;
        // The state is written last, so recovery never sees a half-filled live entry.
        en.state = STATE_CREATED;
        let generation = en.generation;
        self.index_insert(e);
        self.ledger_add(e, generation);
        let h = self.header();
        h.num_objects += 1;
        h.object_bytes += size;
        Ok(ObjectRef { ptr: self.payload_ptr(block), len: size as usize, entry: e, generation })
    }

    /// Takes the object out of the index (and LRU); frees it now or, while it
    /// has readers, when the last one releases it.
    pub(super) fn remove(&mut self, slot: u64, e: u32) {
        self.index_remove(slot);
        let (state, flags, readers, size) = {
            let en = self.entry(e);
            (en.state, en.flags, en.readers, en.size)
        };
        if state == STATE_SEALED {
            self.lru_unlink(e);
        }
        let h = self.header();
        h.num_objects -= 1;
        h.object_bytes -= size;
        h.num_sealed -= (state == STATE_SEALED) as u64;
        h.num_pinned -= (flags & FLAG_PINNED != 0) as u64;
        let en = self.entry(e);
        en.flags = (en.flags & !FLAG_PINNED) | FLAG_DELETE_PENDING;
        if readers == 0 {
            self.free_entry(e);
        }
    }

    pub(super) fn free_entry(&mut self, e: u32) {
        let block = self.entry(e).block;
        self.heap().free(block);
        let head = self.header().free_entry;
        let en = self.entry(e);
        en.state = STATE_FREE;
        en.flags = 0;
        en.readers = 0;
        en.generation += 1;
        en.lru_next = head;
        self.header().free_entry = e;
    }

    pub(super) fn seal(&mut self, id: &[u8]) -> Result<()> {
        let (_, e) = self.find(id).ok_or_else(|| StoreError::NotFound(id.to_vec()))?;
        if self.entry(e).state != STATE_CREATED {
            return Err(StoreError::AlreadySealed(id.to_vec()));
        }
        self.entry(e).state = STATE_SEALED;
        self.lru_push_back(e);
        self.header().num_sealed += 1;
        Ok(())
    }

    pub(super) fn get(&mut self, id: &[u8]) -> Option<ObjectRef> {
        let (_, e) = self.find(id)?;
        if self.entry(e).state != STATE_SEALED {
            return None;
        }
        self.lru_unlink(e);
        self.lru_push_back(e);
        let en = self.entry(e);
        en.readers += 1;
        let (block, len, generation) = (en.block, en.size as usize, en.generation);
        self.ledger_add(e, generation);
        Some(ObjectRef { ptr: self.payload_ptr(block), len, entry: e, generation })
    }

    pub(super) fn release(&mut self, e: u32, generation: u64) {
        if e as u64 >= self.store.layout.max_objects {
            return;
        }
        let en = self.entry(e);
        if en.generation != generation || en.state == STATE_FREE || en.readers == 0 {
            return;
        }
        en.readers -= 1;
        let now_unread = en.readers == 0 && en.flags & FLAG_DELETE_PENDING != 0;
        self.ledger_remove(e, generation);
        if now_unread {
            self.free_entry(e);
        }
    }
}
