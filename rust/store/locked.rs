//! Taking the store's robust mutex, and the [`Locked`] guard through which all
//! metadata in the segment is reached; the raw pointer arithmetic lives here.

use std::sync::atomic::Ordering;

use super::layout::{Client, Entry, Header, MAX_CLIENTS};
use super::Store;
use crate::alloc::{Heap, BLOCK_HEADER};
use crate::error::{Result, StoreError};

/// The store with its mutex held; all metadata access goes through here.
pub(super) struct Locked<'a> {
    pub(super) store: &'a Store,
    mutex: *mut libc::pthread_mutex_t,
}

impl Store {
    pub(super) fn lock(&self) -> Result<Locked<'_>> {
        if self.destroyed.load(Ordering::Relaxed) {
            return Err(StoreError::Destroyed);
        }
        let mutex = &self.header().mutex as *const _ as *mut libc::pthread_mutex_t;
        // SAFETY: the mutex was initialised as robust and process-shared in `init`.
        let rc = unsafe { libc::pthread_mutex_lock(mutex) };
        let mut locked = Locked { store: self, mutex };
        match rc {
            0 => Ok(locked),
            libc::EOWNERDEAD => {
                // A process died holding the lock, perhaps half-way through an
                // update: rebuild all derived metadata from the object entries.
                locked.recover();
                // SAFETY: we own the mutex in the EOWNERDEAD state.
                unsafe { libc::pthread_mutex_consistent(mutex) };
                Ok(locked)
            }
            rc => {
                std::mem::forget(locked);
                Err(StoreError::Os { op: "pthread_mutex_lock", errno: rc })
            }
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        // SAFETY: we hold the mutex (Locked is only built after a successful lock).
        unsafe { libc::pthread_mutex_unlock(self.mutex) };
    }
}

impl Locked<'_> {
    fn base(&self) -> *mut u8 {
        self.store.seg.as_ptr()
    }

    pub(super) fn header(&mut self) -> &mut Header {
        // SAFETY: the lock gives us exclusive access to the metadata.
        unsafe { &mut *(self.base() as *mut Header) }
    }

    pub(super) fn entry(&mut self, i: u32) -> &mut Entry {
        let layout = &self.store.layout;
        assert!((i as u64) < layout.max_objects, "entry index {i} out of range");
        let off = layout.entries_off as usize + i as usize * std::mem::size_of::<Entry>();
        // SAFETY: i is in range, so the entry lies inside the entries array; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut Entry) }
    }

    pub(super) fn slot(&mut self, s: u64) -> &mut u32 {
        let layout = &self.store.layout;
        debug_assert!(s < layout.index_slots);
        let off = layout.index_off as usize + s as usize * 4;
        // SAFETY: s is below index_slots, so the slot lies inside the index; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut u32) }
    }

    pub(super) fn client(&mut self, c: u32) -> &mut Client {
        assert!((c as u64) < MAX_CLIENTS, "client index {c} out of range");
        let off = self.store.layout.clients_off as usize + c as usize * std::mem::size_of::<Client>();
        // SAFETY: c is in range, so the client lies inside the clients array; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut Client) }
    }

    pub(super) fn heap(&mut self) -> Heap<'_> {
        let data = self.store.layout.data_off as usize;
        // SAFETY: the data region starts at data_off, inside the mapping.
        let base = unsafe { self.base().add(data) };
        let state = &mut self.header().alloc;
        // SAFETY: the data region starts at data_off and spans region_len bytes;
        // the lock makes it exclusively ours for the heap's lifetime.
        unsafe { Heap::new(state, base) }
    }

    pub(super) fn payload_ptr(&mut self, block: u64) -> *mut u8 {
        let data = self.store.layout.data_off as usize;
        // SAFETY: block is an allocated block of the data region; its payload follows its header.
        unsafe { self.base().add(data + (block + BLOCK_HEADER) as usize) }
    }
}
