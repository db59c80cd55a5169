//! What the shared segment holds and where: the constants of the format, the
//! `#[repr(C)]` structs that live in it and their offsets, computed once.
//!
//! Segment layout: `[Header | entries | hash index | reader ledgers | data region]`.

use std::sync::atomic::AtomicU64;

use super::CreateOptions;
use crate::alloc::{AllocState, BLOCK_HEADER};
use crate::error::{Result, StoreError};

pub(super) const MAGIC: u64 = 0x6169_6f72_6179_5354; // "aiorayST"
pub(super) const VERSION: u64 = 2;
pub(super) const NIL: u32 = u32::MAX;
const PAGE: u64 = 4096;
/// Longest object id, in bytes.
pub const MAX_ID_LEN: usize = 32;

pub(super) const STATE_FREE: u32 = 0;
pub(super) const STATE_CREATED: u32 = 1;
pub(super) const STATE_SEALED: u32 = 2;
pub(super) const FLAG_PINNED: u32 = 1;
pub(super) const FLAG_DELETE_PENDING: u32 = 2;
/// Processes of a node that may hold reader references at once (each one's references are tracked).
pub(super) const MAX_CLIENTS: u64 = 128;
/// Distinct objects one process's ledger tracks (a power of two, kept at most 3/4 full);
/// references beyond it are counted but cannot be given back if the process dies.
pub(super) const LEDGER_RECORDS: u64 = 512;

#[repr(C)]
pub(super) struct Header {
    pub(super) magic: u64,
    pub(super) version: u64,
    pub(super) ready: AtomicU64,
    pub(super) capacity: u64,
    pub(super) max_objects: u64,
    pub(super) index_slots: u64,
    pub(super) entries_off: u64,
    pub(super) index_off: u64,
    pub(super) data_off: u64,
    pub(super) segment_len: u64,
    pub(super) mutex: libc::pthread_mutex_t,
    pub(super) tick: u64,
    pub(super) num_objects: u64,
    pub(super) num_sealed: u64,
    pub(super) num_pinned: u64,
    pub(super) object_bytes: u64,
    pub(super) num_evicted: u64,
    pub(super) evicted_bytes: u64,
    pub(super) num_reclaimed: u64,
    pub(super) num_recoveries: u64,
    pub(super) clients_off: u64,
    pub(super) reaped_readers: u64,
    pub(super) lru_head: u32,
    pub(super) lru_tail: u32,
    pub(super) free_entry: u32,
    _pad: u32,
    pub(super) alloc: AllocState,
}

#[repr(C)]
pub(super) struct Entry {
    pub(super) state: u32,
    pub(super) flags: u32,
    pub(super) readers: u32,
    pub(super) id_len: u32,
    pub(super) id: [u8; MAX_ID_LEN],
    pub(super) hash: u64,
    pub(super) generation: u64,
    pub(super) creator_pid: i32,
    pub(super) lru_prev: u32,
    /// LRU successor; for a free entry, the next free entry.
    pub(super) lru_next: u32,
    _pad: u32,
    pub(super) block: u64,
    pub(super) block_size: u64,
    pub(super) size: u64,
    pub(super) last_used: u64,
}

impl Entry {
    pub(super) fn id(&self) -> &[u8] {
        &self.id[..self.id_len as usize]
    }
}

/// One reader reference count a client holds on one object (empty when `count` is 0).
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Record {
    pub(super) entry: u32,
    pub(super) count: u32,
    pub(super) generation: u64,
}

/// A process's ledger of the reader references it holds (free when `pid` is 0).
#[repr(C)]
pub(super) struct Client {
    pub(super) pid: i32,
    _pad: u32,
    /// The process's start time (clock ticks since boot), so a reused pid is not taken for it.
    pub(super) start_time: u64,
    /// Records in use.
    pub(super) held: u32,
    /// References the full ledger could not record.
    pub(super) untracked: u32,
    pub(super) records: [Record; LEDGER_RECORDS as usize],
}

/// Where the tables lie in the segment: computed once, when the store is created
/// (or read back from the header when it is attached), and kept in the `Store`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Layout {
    pub(super) max_objects: u64,
    pub(super) index_slots: u64,
    pub(super) entries_off: u64,
    pub(super) index_off: u64,
    pub(super) clients_off: u64,
    pub(super) data_off: u64,
    pub(super) segment_len: u64,
}

impl Layout {
    /// The layout of a new store of `capacity` payload bytes.
    pub(super) fn new(capacity: u64, opts: CreateOptions) -> Result<Self> {
        if capacity == 0 || capacity > 1 << 46 {
            return Err(StoreError::InvalidArgument(format!("capacity {capacity} must be 1 byte to 64 TiB")));
        }
        let max_objects = opts.max_objects.unwrap_or((capacity / 65536).clamp(4096, 1 << 20));
        if max_objects == 0 || max_objects >= NIL as u64 {
            return Err(StoreError::InvalidArgument(format!("max_objects {max_objects} out of range")));
        }
        let index_slots = (max_objects * 2).next_power_of_two();
        let entries_off = round_up(std::mem::size_of::<Header>() as u64, PAGE);
        let index_off = entries_off + max_objects * std::mem::size_of::<Entry>() as u64;
        let clients_off = round_up(index_off + index_slots * 4, 64);
        let data_off = round_up(clients_off + MAX_CLIENTS * std::mem::size_of::<Client>() as u64, PAGE);
        let segment_len = data_off + round_up(data_len(capacity), PAGE);
        Ok(Layout { max_objects, index_slots, entries_off, index_off, clients_off, data_off, segment_len })
    }

    /// The layout an initialised store's header records.
    pub(super) fn of(header: &Header) -> Self {
        Layout {
            max_objects: header.max_objects,
            index_slots: header.index_slots,
            entries_off: header.entries_off,
            index_off: header.index_off,
            clients_off: header.clients_off,
            data_off: header.data_off,
            segment_len: header.segment_len,
        }
    }
}

/// Length of the data region the heap is formatted with: one header of slack, so an
/// object of exactly `capacity` bytes fits an empty store.
pub(super) fn data_len(capacity: u64) -> u64 {
    round_up(capacity, BLOCK_HEADER) + BLOCK_HEADER
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}
