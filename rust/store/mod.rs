//! The object store: object table, hash index, LRU list and allocator, all
//! inside one shared segment and guarded by a robust process-shared mutex, so a
//! create, seal or get is a few hundred nanoseconds in any process of the node.
//!
//! Segment layout: `[Header | entries | hash index | reader ledgers | data region]`.
//!
//! Every process that reads or creates objects claims a *client* slot whose ledger
//! records the reader references it holds; when it dies without releasing them,
//! [`Store::reap_dead_clients`] gives them back, so its objects can be freed and evicted.
//!
//! This module holds the public API; the metadata code works on a `Locked` store
//! (the mutex held) and is split by concern:
//! - `layout`: the structs in the segment, the constants of the format and the offsets;
//! - `locked`: taking the lock, and the accessors of everything in the segment;
//! - `objects`: create, seal, get, release and delete of one object;
//! - `index`: the hash index from ids to entries;
//! - `lru`: the LRU list and eviction;
//! - `ledger`: the clients' ledgers of reader references, and reaping dead processes;
//! - `recovery`: rebuilding the metadata after a crash under the lock, and `verify`.

mod index;
mod layout;
mod ledger;
mod locked;
mod lru;
mod objects;
mod recovery;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub use self::layout::MAX_ID_LEN;
use self::layout::{data_len, Header, Layout, FLAG_PINNED, MAGIC, NIL, STATE_SEALED, VERSION};
use self::ledger::process_start_time;
use crate::error::{Result, StoreError};
use crate::segment::Segment;

/// A snapshot of the store's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of payload the store was created to hold.
    pub capacity: u64,
    /// Bytes taken by allocated blocks (payload rounded up plus headers).
    pub used_bytes: u64,
    /// Sum of the payload sizes of all objects.
    pub object_bytes: u64,
    /// Objects in the table (created or sealed).
    pub num_objects: u64,
    /// Sealed objects.
    pub num_sealed: u64,
    /// Pinned objects.
    pub num_pinned: u64,
    /// Objects evicted since the store was created.
    pub num_evicted: u64,
    /// Bytes evicted since the store was created.
    pub evicted_bytes: u64,
    /// Unsealed objects of dead creators reclaimed.
    pub num_reclaimed: u64,
    /// Sealed, unpinned objects nobody reads: what eviction could free.
    pub evictable_bytes: u64,
    /// Size of the object table.
    pub max_objects: u64,
    /// Times the lock was found abandoned by a dead process and the metadata rebuilt.
    pub num_recoveries: u64,
    /// Reader references of dead processes given back.
    pub reaped_readers: u64,
}

/// A writable object handed out by [`Store::create_object`]; it holds a reader
/// reference (so the memory cannot be reused under the writer) until released.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef {
    /// First payload byte.
    pub ptr: *mut u8,
    /// Payload length.
    pub len: usize,
    /// Table slot, for [`Store::release`].
    pub entry: u32,
    /// Generation of the slot, for [`Store::release`].
    pub generation: u64,
}

// SAFETY: the pointer is into the shared mapping, which the `Store` keeps
// mapped; which thread uses it does not matter.
unsafe impl Send for ObjectRef {}

/// Options of [`Store::create`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateOptions {
    /// Size of the object table; by default one entry per 64 KiB of capacity (4,096 to 1,048,576).
    pub max_objects: Option<u64>,
    /// Fault in every page now instead of on first use.
    pub populate: bool,
}

/// One node's shared-memory object store, as mapped by this process.
pub struct Store {
    seg: Segment,
    /// Where the tables lie in `seg`.
    layout: Layout,
    pid: i32,
    start_time: u64,
    /// This process's client slot, NIL until its first create or get.
    client: AtomicU32,
    creator: bool,
    destroyed: AtomicBool,
}

fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(StoreError::InvalidId { len: id.len() });
    }
    Ok(())
}

impl Store {
    fn new(seg: Segment, layout: Layout, creator: bool) -> Self {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        Store {
            seg,
            layout,
            pid,
            start_time: process_start_time(pid),
            client: AtomicU32::new(NIL),
            creator,
            destroyed: AtomicBool::new(false),
        }
    }

    /// Creates a store of `capacity` payload bytes in a new segment `name`.
    pub fn create(name: &str, capacity: u64, opts: CreateOptions) -> Result<Self> {
        let layout = Layout::new(capacity, opts)?;
        let seg = Segment::create(name, layout.segment_len as usize)?;
        Self::init(seg, layout, capacity, opts)
    }

    /// A store in anonymous shared memory (shared with children forked later); for tests and benchmarks.
    pub fn anonymous(capacity: u64, opts: CreateOptions) -> Result<Self> {
        let layout = Layout::new(capacity, opts)?;
        Self::init(Segment::anonymous(layout.segment_len as usize)?, layout, capacity, opts)
    }

    /// Maps the existing store `name`.
    pub fn attach(name: &str) -> Result<Self> {
        let seg = Segment::open(name)?;
        if seg.len() < std::mem::size_of::<Header>() {
            return Err(StoreError::BadSegment(format!("{name} is too small")));
        }
        // SAFETY: the segment is at least a header long and page aligned.
        let header = unsafe { &*(seg.as_ptr() as *const Header) };
        if header.ready.load(Ordering::Acquire) != 1 || header.magic != MAGIC || header.version != VERSION {
            return Err(StoreError::BadSegment(format!(
                "{name} has no initialised store of version {VERSION}"
            )));
        }
        if header.segment_len != seg.len() as u64 {
            return Err(StoreError::BadSegment(format!("{name} has the wrong length")));
        }
        let layout = Layout::of(header);
        Ok(Store::new(seg, layout, false))
    }

    fn init(seg: Segment, layout: Layout, capacity: u64, opts: CreateOptions) -> Result<Self> {
        if opts.populate {
            seg.populate(0, seg.len())?;
        }
        // SAFETY: the new segment is zero-filled, page aligned and large enough
        // for the header; no other process can use it before `ready` is set.
        let header = unsafe { &mut *(seg.as_ptr() as *mut Header) };
        header.magic = MAGIC;
        header.version = VERSION;
        header.capacity = capacity;
        header.max_objects = layout.max_objects;
        header.index_slots = layout.index_slots;
        header.entries_off = layout.entries_off;
        header.index_off = layout.index_off;
        header.clients_off = layout.clients_off;
        header.data_off = layout.data_off;
        header.segment_len = seg.len() as u64;
        // SAFETY: attr and the header's mutex are valid memory; the mutex is
        // initialised once, before any other process can see the store.
        unsafe {
            let mut attr: libc::pthread_mutexattr_t = std::mem::zeroed();
            libc::pthread_mutexattr_init(&mut attr);
            libc::pthread_mutexattr_setpshared(&mut attr, libc::PTHREAD_PROCESS_SHARED);
            libc::pthread_mutexattr_setrobust(&mut attr, libc::PTHREAD_MUTEX_ROBUST);
            let rc = libc::pthread_mutex_init(&mut header.mutex, &attr);
            libc::pthread_mutexattr_destroy(&mut attr);
            if rc != 0 {
                return Err(StoreError::Os { op: "pthread_mutex_init", errno: rc });
            }
        }
        let store = Store::new(seg, layout, true);
        {
            let mut t = store.lock()?;
            t.heap().format(data_len(capacity));
            t.rebuild_tables();
        }
        store.header().ready.store(1, Ordering::Release);
        Ok(store)
    }

    fn header(&self) -> &Header {
        // SAFETY: the segment starts with an initialised header (checked at attach).
        unsafe { &*(self.seg.as_ptr() as *const Header) }
    }

    /// Creates an unsealed object of `size` bytes, evicting LRU objects if needed.
    /// The returned reference counts as a reader until [`Store::release`].
    pub fn create_object(&self, id: &[u8], size: u64) -> Result<ObjectRef> {
        check_id(id)?;
        let mut t = self.lock()?;
        t.create(id, size)
    }

    /// Seals an object: it becomes immutable and visible to `get`.
    pub fn seal(&self, id: &[u8]) -> Result<()> {
        check_id(id)?;
        self.lock()?.seal(id)
    }

    /// A reader reference to a sealed object, or `None` when absent or unsealed.
    pub fn get(&self, id: &[u8]) -> Result<Option<ObjectRef>> {
        check_id(id)?;
        Ok(self.lock()?.get(id))
    }

    /// Drops a reader reference obtained from `create_object` or `get`.
    pub fn release(&self, entry: u32, generation: u64) -> Result<()> {
        self.lock()?.release(entry, generation);
        Ok(())
    }

    /// Whether a sealed object `id` is present.
    pub fn contains(&self, id: &[u8]) -> Result<bool> {
        check_id(id)?;
        let mut t = self.lock()?;
        Ok(t.find(id).map(|(_, e)| t.entry(e).state == STATE_SEALED).unwrap_or(false))
    }

    /// Deletes an object (at once, or when its last reader releases it);
    /// returns whether it existed.
    pub fn delete(&self, id: &[u8]) -> Result<bool> {
        check_id(id)?;
        let mut t = self.lock()?;
        match t.find(id) {
            Some((slot, e)) => {
                t.remove(slot, e);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Pins (`true`) or unpins an object; pinned objects are never evicted.
    pub fn set_pinned(&self, id: &[u8], pinned: bool) -> Result<()> {
        check_id(id)?;
        let mut t = self.lock()?;
        let (_, e) = t.find(id).ok_or_else(|| StoreError::NotFound(id.to_vec()))?;
        let was = t.entry(e).flags & FLAG_PINNED != 0;
        if was != pinned {
            t.entry(e).flags ^= FLAG_PINNED;
            let h = t.header();
            if pinned {
                h.num_pinned += 1
            } else {
                h.num_pinned -= 1
            }
        }
        Ok(())
    }

    /// Evicts least-recently-used evictable objects until `nbytes` are freed
    /// (or nothing is left to evict); also reclaims unsealed objects of dead
    /// creators. Returns the bytes freed.
    pub fn evict(&self, nbytes: u64) -> Result<u64> {
        let mut t = self.lock()?;
        t.reap_dead_clients_only();
        let mut freed = t.reclaim_dead();
        while freed < nbytes {
            match t.evict_one() {
                Some(bytes) => freed += bytes,
                None => break,
            }
        }
        Ok(freed)
    }

    /// Gives back the reader references of processes that died holding them (freeing objects
    /// whose deletion waited for them) and frees the unsealed objects those processes created.
    /// The raylet calls it when a worker exits; creates that run short of room do it too.
    /// Returns the number of references given back.
    pub fn reap_dead_clients(&self) -> Result<u64> {
        Ok(self.lock()?.reap_dead_clients())
    }

    /// Ids of sealed, unpinned, unread objects in LRU order (oldest first), at most `limit`.
    pub fn evictable(&self, limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut t = self.lock()?;
        let mut out = Vec::new();
        let mut cur = t.header().lru_head;
        while cur != NIL && out.len() < limit {
            let en = t.entry(cur);
            if en.flags & FLAG_PINNED == 0 && en.readers == 0 {
                out.push((en.id().to_vec(), en.size));
            }
            cur = en.lru_next;
        }
        Ok(out)
    }

    /// Pinned, sealed, unread objects (primary copies the raylet may spill to disk) in
    /// LRU order, oldest first, at most `limit`.
    pub fn spillable(&self, limit: usize) -> Result<Vec<(Vec<u8>, u64)>> {
        let mut t = self.lock()?;
        let mut out = Vec::new();
        let mut cur = t.header().lru_head;
        while cur != NIL && out.len() < limit {
            let en = t.entry(cur);
            if en.flags & FLAG_PINNED != 0 && en.readers == 0 {
                out.push((en.id().to_vec(), en.size));
            }
            cur = en.lru_next;
        }
        Ok(out)
    }

    /// (bytes in allocated blocks, bytes of the data region): a constant-time look at how full it is.
    pub fn usage(&self) -> Result<(u64, u64)> {
        let mut t = self.lock()?;
        let heap = t.heap();
        Ok((heap.region_len() - heap.free_bytes(), heap.region_len()))
    }

    /// Counters of the store.
    pub fn stats(&self) -> Result<Stats> {
        let mut t = self.lock()?;
        let evictable_bytes = t.evictable_bytes();
        let used_bytes = t.heap().region_len() - t.heap().free_bytes();
        let h = t.header();
        Ok(Stats {
            capacity: h.capacity,
            used_bytes,
            object_bytes: h.object_bytes,
            num_objects: h.num_objects,
            num_sealed: h.num_sealed,
            num_pinned: h.num_pinned,
            num_evicted: h.num_evicted,
            evicted_bytes: h.evicted_bytes,
            num_reclaimed: h.num_reclaimed,
            evictable_bytes,
            max_objects: h.max_objects,
            num_recoveries: h.num_recoveries,
            reaped_readers: h.reaped_readers,
        })
    }

    /// Checks every invariant of the metadata (for tests); `Err` describes the first violation.
    pub fn verify(&self) -> Result<std::result::Result<(), String>> {
        Ok(self.lock()?.verify())
    }

    /// Faults in every page of the segment in this process (does not change contents).
    pub fn populate(&self) -> Result<()> {
        self.seg.populate(0, self.seg.len())
    }

    /// Faults in the pages of an object's payload in this process, in one call
    /// instead of one page fault per 4 KiB while it is written.
    pub fn populate_object(&self, object: &ObjectRef) -> Result<()> {
        let offset = object.ptr as usize - self.seg.as_ptr() as usize;
        self.seg.populate(offset, object.len)
    }

    /// Whether this process created the store.
    pub fn is_creator(&self) -> bool {
        self.creator
    }

    /// Creator only: removes the segment's name; the memory goes away when the
    /// last process unmaps it. Later operations in this process fail with `Destroyed`.
    pub fn destroy(&self) -> Result<()> {
        if !self.creator {
            return Err(StoreError::InvalidArgument(
                "only the process that created a store may destroy it".into(),
            ));
        }
        if !self.destroyed.swap(true, Ordering::Relaxed) {
            self.seg.unlink()?;
        }
        Ok(())
    }

    /// Whether `destroy` was called.
    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Relaxed)
    }

    #[doc(hidden)]
    /// Test hook: takes the lock and sleeps, so a test can kill the holder.
    pub fn hold_lock_for_test(&self, duration: std::time::Duration) -> Result<()> {
        let _t = self.lock()?;
        std::thread::sleep(duration);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
