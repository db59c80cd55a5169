//! The object store: object table, hash index, LRU list and allocator, all
//! inside one shared segment and guarded by a robust process-shared mutex, so a
//! create, seal or get is a few hundred nanoseconds in any process of the node.
//!
//! Segment layout: `[Header | entries | hash index | data region]`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::alloc::{block_size_for, AllocState, Heap, BLOCK_HEADER};
use crate::error::{Result, StoreError};
use crate::segment::Segment;

const MAGIC: u64 = 0x6169_6f72_6179_5354; // "aiorayST"
const VERSION: u64 = 1;
const NIL: u32 = u32::MAX;
const PAGE: u64 = 4096;
/// Longest object id, in bytes.
pub const MAX_ID_LEN: usize = 32;

const STATE_FREE: u32 = 0;
const STATE_CREATED: u32 = 1;
const STATE_SEALED: u32 = 2;
const FLAG_PINNED: u32 = 1;
const FLAG_DELETE_PENDING: u32 = 2;

#[repr(C)]
struct Header {
    magic: u64,
    version: u64,
    ready: AtomicU64,
    capacity: u64,
    max_objects: u64,
    index_slots: u64,
    entries_off: u64,
    index_off: u64,
    data_off: u64,
    segment_len: u64,
    mutex: libc::pthread_mutex_t,
    tick: u64,
    num_objects: u64,
    num_sealed: u64,
    num_pinned: u64,
    object_bytes: u64,
    num_evicted: u64,
    evicted_bytes: u64,
    num_reclaimed: u64,
    num_recoveries: u64,
    lru_head: u32,
    lru_tail: u32,
    free_entry: u32,
    _pad: u32,
    alloc: AllocState,
}

#[repr(C)]
struct Entry {
    state: u32,
    flags: u32,
    readers: u32,
    id_len: u32,
    id: [u8; MAX_ID_LEN],
    hash: u64,
    generation: u64,
    creator_pid: i32,
    lru_prev: u32,
    /// LRU successor; for a free entry, the next free entry.
    lru_next: u32,
    _pad: u32,
    block: u64,
    block_size: u64,
    size: u64,
    last_used: u64,
}

impl Entry {
    fn id(&self) -> &[u8] {
        &self.id[..self.id_len as usize]
    }
}

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
    pid: i32,
    creator: bool,
    destroyed: AtomicBool,
}

fn fnv1a(id: &[u8]) -> u64 {
    id.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

fn check_id(id: &[u8]) -> Result<()> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(StoreError::InvalidId { len: id.len() });
    }
    Ok(())
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 performs only the existence/permission check.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

impl Store {
    /// Creates a store of `capacity` payload bytes in a new segment `name`.
    pub fn create(name: &str, capacity: u64, opts: CreateOptions) -> Result<Self> {
        let (len, max_objects) = Self::layout_len(capacity, opts)?;
        let seg = Segment::create(name, len as usize)?;
        Self::init(seg, capacity, max_objects, opts)
    }

    /// A store in anonymous shared memory (shared with children forked later); for tests and benchmarks.
    pub fn anonymous(capacity: u64, opts: CreateOptions) -> Result<Self> {
        let (len, max_objects) = Self::layout_len(capacity, opts)?;
        Self::init(Segment::anonymous(len as usize)?, capacity, max_objects, opts)
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
        // SAFETY: getpid has no preconditions.
        Ok(Store { seg, pid: unsafe { libc::getpid() }, creator: false, destroyed: AtomicBool::new(false) })
    }

    fn layout_len(capacity: u64, opts: CreateOptions) -> Result<(u64, u64)> {
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
        let data_off = round_up(index_off + index_slots * 4, PAGE);
        // One header of slack, so an object of exactly `capacity` bytes fits an empty store
        // (the same length is formatted in `init`).
        let data_len = round_up(capacity, BLOCK_HEADER) + BLOCK_HEADER;
        Ok((data_off + round_up(data_len, PAGE), max_objects))
    }

    fn init(seg: Segment, capacity: u64, max_objects: u64, opts: CreateOptions) -> Result<Self> {
        let index_slots = (max_objects * 2).next_power_of_two();
        let entries_off = round_up(std::mem::size_of::<Header>() as u64, PAGE);
        let index_off = entries_off + max_objects * std::mem::size_of::<Entry>() as u64;
        let data_off = round_up(index_off + index_slots * 4, PAGE);
        if opts.populate {
            seg.populate(0, seg.len())?;
        }
        // SAFETY: the new segment is zero-filled, page aligned and large enough
        // for the header; no other process can use it before `ready` is set.
        let header = unsafe { &mut *(seg.as_ptr() as *mut Header) };
        header.magic = MAGIC;
        header.version = VERSION;
        header.capacity = capacity;
        header.max_objects = max_objects;
        header.index_slots = index_slots;
        header.entries_off = entries_off;
        header.index_off = index_off;
        header.data_off = data_off;
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
        let store = Store {
            seg,
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            creator: true,
            destroyed: AtomicBool::new(false),
        };
        {
            let mut t = store.lock()?;
            t.heap().format(round_up(capacity, BLOCK_HEADER) + BLOCK_HEADER);
            t.rebuild_tables();
        }
        store.header().ready.store(1, Ordering::Release);
        Ok(store)
    }

    fn header(&self) -> &Header {
        // SAFETY: the segment starts with an initialised header (checked at attach).
        unsafe { &*(self.seg.as_ptr() as *const Header) }
    }

    fn lock(&self) -> Result<Locked<'_>> {
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
        let mut freed = t.reclaim_dead();
        while freed < nbytes {
            match t.evict_one() {
                Some(bytes) => freed += bytes,
                None => break,
            }
        }
        Ok(freed)
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

/// The store with its mutex held; all metadata access goes through here.
struct Locked<'a> {
    store: &'a Store,
    mutex: *mut libc::pthread_mutex_t,
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

    fn header(&mut self) -> &mut Header {
        // SAFETY: the lock gives us exclusive access to the metadata.
        unsafe { &mut *(self.base() as *mut Header) }
    }

    fn entry(&mut self, i: u32) -> &mut Entry {
        let h = self.header();
        assert!((i as u64) < h.max_objects, "entry index {i} out of range");
        let off = h.entries_off as usize + i as usize * std::mem::size_of::<Entry>();
        // SAFETY: i is in range, so the entry lies inside the entries array; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut Entry) }
    }

    fn slot(&mut self, s: u64) -> &mut u32 {
        let h = self.header();
        debug_assert!(s < h.index_slots);
        let off = h.index_off as usize + s as usize * 4;
        // SAFETY: s is below index_slots, so the slot lies inside the index; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut u32) }
    }

    fn heap(&mut self) -> Heap<'_> {
        let data = self.header().data_off as usize;
        // SAFETY: the data region starts at data_off and spans region_len bytes;
        // the lock makes it exclusively ours for the heap's lifetime.
        let base = unsafe { self.base().add(data) };
        let state = &mut self.header().alloc;
        // SAFETY: see above.
        unsafe { Heap::new(state, base) }
    }

    fn payload_ptr(&mut self, block: u64) -> *mut u8 {
        let data = self.header().data_off as usize;
        // SAFETY: block is an allocated block of the data region; its payload follows its header.
        unsafe { self.base().add(data + (block + BLOCK_HEADER) as usize) }
    }

    fn find(&mut self, id: &[u8]) -> Option<(u64, u32)> {
        let mask = self.header().index_slots - 1;
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

    fn index_insert(&mut self, e: u32) {
        let mask = self.header().index_slots - 1;
        let mut s = self.entry(e).hash & mask;
        while *self.slot(s) != NIL {
            s = (s + 1) & mask;
        }
        *self.slot(s) = e;
    }

    /// Backward-shift deletion keeps linear probing free of tombstones.
    fn index_remove(&mut self, slot: u64) {
        let mask = self.header().index_slots - 1;
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

    fn lru_unlink(&mut self, e: u32) {
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

    fn lru_push_back(&mut self, e: u32) {
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

    fn alloc_entry(&mut self) -> Option<u32> {
        let e = self.header().free_entry;
        if e == NIL {
            return None;
        }
        self.header().free_entry = self.entry(e).lru_next;
        Some(e)
    }

    fn create(&mut self, id: &[u8], size: u64) -> Result<ObjectRef> {
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
                    return Err(StoreError::TableFull { max_objects: self.header().max_objects });
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
        let h = self.header();
        h.num_objects += 1;
        h.object_bytes += size;
        Ok(ObjectRef { ptr: self.payload_ptr(block), len: size as usize, entry: e, generation })
    }

    fn make_room(&mut self, need: u64, size: u64) -> Result<u64> {
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
            if self.reclaim_dead() > 0 {
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

    fn evictable_bytes(&mut self) -> u64 {
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
    fn evict_one(&mut self) -> Option<u64> {
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

    /// Frees unsealed objects whose creator process is gone; returns bytes freed.
    fn reclaim_dead(&mut self) -> u64 {
        let mut freed = 0;
        for e in 0..self.header().max_objects as u32 {
            let en = self.entry(e);
            if en.state == STATE_CREATED && en.flags & FLAG_DELETE_PENDING == 0 && !pid_alive(en.creator_pid)
            {
                en.readers = 0;
                let bytes = en.block_size;
                let id = en.id().to_vec();
                if let Some((slot, _)) = self.find(&id) {
                    self.remove(slot, e);
                    self.header().num_reclaimed += 1;
                    freed += bytes;
                }
            }
        }
        freed
    }

    /// Takes the object out of the index (and LRU); frees it now or, while it
    /// has readers, when the last one releases it.
    fn remove(&mut self, slot: u64, e: u32) {
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

    fn free_entry(&mut self, e: u32) {
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

    fn seal(&mut self, id: &[u8]) -> Result<()> {
        let (_, e) = self.find(id).ok_or_else(|| StoreError::NotFound(id.to_vec()))?;
        if self.entry(e).state != STATE_CREATED {
            return Err(StoreError::AlreadySealed(id.to_vec()));
        }
        self.entry(e).state = STATE_SEALED;
        self.lru_push_back(e);
        self.header().num_sealed += 1;
        Ok(())
    }

    fn get(&mut self, id: &[u8]) -> Option<ObjectRef> {
        let (_, e) = self.find(id)?;
        if self.entry(e).state != STATE_SEALED {
            return None;
        }
        self.lru_unlink(e);
        self.lru_push_back(e);
        let en = self.entry(e);
        en.readers += 1;
        let (block, len, generation) = (en.block, en.size as usize, en.generation);
        Some(ObjectRef { ptr: self.payload_ptr(block), len, entry: e, generation })
    }

    fn release(&mut self, e: u32, generation: u64) {
        if e as u64 >= self.header().max_objects {
            return;
        }
        let en = self.entry(e);
        if en.generation != generation || en.state == STATE_FREE || en.readers == 0 {
            return;
        }
        en.readers -= 1;
        if en.readers == 0 && en.flags & FLAG_DELETE_PENDING != 0 {
            self.free_entry(e);
        }
    }

    /// Rebuilds the index, entry free list, LRU list and counters from the
    /// entries alone (the allocator is rebuilt separately).
    fn rebuild_tables(&mut self) {
        let max = self.header().max_objects as u32;
        let slots = self.header().index_slots;
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

    fn recover(&mut self) {
        self.header().num_recoveries += 1;
        let max = self.header().max_objects as u32;
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

    fn verify(&mut self) -> std::result::Result<(), String> {
        let allocated = self.heap().verify()?;
        let max = self.header().max_objects as u32;
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
        Ok(())
    }
}

#[cfg(test)]
mod tests;
