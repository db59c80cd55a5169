//! The object store: object table, hash index, LRU list and allocator, all
//! inside one shared segment and guarded by a robust process-shared mutex, so a
//! create, seal or get is a few hundred nanoseconds in any process of the node.
//!
//! Segment layout: `[Header | entries | hash index | reader ledgers | data region]`.
//!
//! Every process that reads or creates objects claims a *client* slot whose ledger
//! records the reader references it holds; when it dies without releasing them,
//! [`Store::reap_dead_clients`] gives them back, so its objects can be freed and evicted.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use crate::alloc::{block_size_for, AllocState, Heap, BLOCK_HEADER};
use crate::error::{Result, StoreError};
use crate::segment::Segment;

const MAGIC: u64 = 0x6169_6f72_6179_5354; // "aiorayST"
const VERSION: u64 = 2;
const NIL: u32 = u32::MAX;
const PAGE: u64 = 4096;
/// Longest object id, in bytes.
pub const MAX_ID_LEN: usize = 32;

const STATE_FREE: u32 = 0;
const STATE_CREATED: u32 = 1;
const STATE_SEALED: u32 = 2;
const FLAG_PINNED: u32 = 1;
const FLAG_DELETE_PENDING: u32 = 2;
/// Processes of a node that may hold reader references at once (each one's references are tracked).
const MAX_CLIENTS: u64 = 128;
/// Distinct objects one process's ledger tracks (a power of two, kept at most 3/4 full);
/// references beyond it are counted but cannot be given back if the process dies.
const LEDGER_RECORDS: u64 = 512;

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
    clients_off: u64,
    reaped_readers: u64,
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

/// One reader reference count a client holds on one object (empty when `count` is 0).
#[repr(C)]
#[derive(Clone, Copy)]
struct Record {
    entry: u32,
    count: u32,
    generation: u64,
}

/// A process's ledger of the reader references it holds (free when `pid` is 0).
#[repr(C)]
struct Client {
    pid: i32,
    _pad: u32,
    /// The process's start time (clock ticks since boot), so a reused pid is not taken for it.
    start_time: u64,
    /// Records in use.
    held: u32,
    /// References the full ledger could not record.
    untracked: u32,
    records: [Record; LEDGER_RECORDS as usize],
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
    pid: i32,
    start_time: u64,
    /// This process's client slot, NIL until its first create or get.
    client: AtomicU32,
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

/// The start time of a process (field 22 of `/proc/<pid>/stat`), or 0 when unknown.
fn process_start_time(pid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(19))
        .and_then(|t| t.parse().ok())
        .unwrap_or(0)
}

/// Whether the process that claimed a client slot is still running (not merely its pid reused).
fn client_alive(pid: i32, start_time: u64) -> bool {
    pid_alive(pid) && (start_time == 0 || process_start_time(pid) == start_time)
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
    fn new(seg: Segment, creator: bool) -> Self {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        Store {
            seg,
            pid,
            start_time: process_start_time(pid),
            client: AtomicU32::new(NIL),
            creator,
            destroyed: AtomicBool::new(false),
        }
    }

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
        Ok(Store::new(seg, false))
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
        let clients_off = round_up(index_off + index_slots * 4, 64);
        let data_off = round_up(clients_off + MAX_CLIENTS * std::mem::size_of::<Client>() as u64, PAGE);
        // One header of slack, so an object of exactly `capacity` bytes fits an empty store
        // (the same length is formatted in `init`).
        let data_len = round_up(capacity, BLOCK_HEADER) + BLOCK_HEADER;
        Ok((data_off + round_up(data_len, PAGE), max_objects))
    }

    fn init(seg: Segment, capacity: u64, max_objects: u64, opts: CreateOptions) -> Result<Self> {
        let index_slots = (max_objects * 2).next_power_of_two();
        let entries_off = round_up(std::mem::size_of::<Header>() as u64, PAGE);
        let index_off = entries_off + max_objects * std::mem::size_of::<Entry>() as u64;
        let clients_off = round_up(index_off + index_slots * 4, 64);
        let data_off = round_up(clients_off + MAX_CLIENTS * std::mem::size_of::<Client>() as u64, PAGE);
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
        header.clients_off = clients_off;
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
        let store = Store::new(seg, true);
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

    fn client(&mut self, c: u32) -> &mut Client {
        let h = self.header();
        assert!((c as u64) < MAX_CLIENTS, "client index {c} out of range");
        let off = h.clients_off as usize + c as usize * std::mem::size_of::<Client>();
        // SAFETY: c is in range, so the client lies inside the clients array; the lock is held.
        unsafe { &mut *(self.base().add(off) as *mut Client) }
    }

    /// This process's client slot, claimed on first use; None when every slot is taken by a
    /// live process (its references then go untracked).
    fn client_slot(&mut self) -> Option<u32> {
        let cached = self.store.client.load(Ordering::Relaxed);
        if cached != NIL {
            return Some(cached);
        }
        let (pid, start_time) = (self.store.pid, self.store.start_time);
        let mut free = None;
        for c in 0..MAX_CLIENTS as u32 {
            let cl = self.client(c);
            if cl.pid == pid && cl.start_time == start_time {
                free = Some(c); // another mapping of the store in this process: share its ledger
                break;
            }
            if cl.pid == 0 && free.is_none() {
                free = Some(c);
            }
        }
        if free.is_none() && self.reap_dead_clients_only() > 0 {
            free = (0..MAX_CLIENTS as u32).find(|&c| self.client(c).pid == 0);
        }
        let c = free?;
        let cl = self.client(c);
        if cl.pid != pid {
            cl.pid = pid;
            cl.start_time = start_time;
            cl.held = 0;
            cl.untracked = 0;
        }
        self.store.client.store(c, Ordering::Relaxed);
        Some(c)
    }

    /// Records one more reader reference of this process on entry `e`.
    fn ledger_add(&mut self, e: u32, generation: u64) {
        let Some(c) = self.client_slot() else { return };
        let cl = self.client(c);
        let mask = LEDGER_RECORDS - 1;
        let mut r = (e as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & mask;
        loop {
            let rec = &mut cl.records[r as usize];
            if rec.count == 0 {
                if cl.held as u64 >= LEDGER_RECORDS * 3 / 4 {
                    cl.untracked += 1;
                    return;
                }
                *rec = Record { entry: e, count: 1, generation };
                cl.held += 1;
                return;
            }
            if rec.entry == e && rec.generation == generation {
                rec.count += 1;
                return;
            }
            r = (r + 1) & mask;
        }
    }

    /// Forgets one reader reference of this process on entry `e`.
    fn ledger_remove(&mut self, e: u32, generation: u64) {
        let Some(c) = self.client_slot() else { return };
        let cl = self.client(c);
        let mask = LEDGER_RECORDS - 1;
        let home = |entry: u32| (entry as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32 & mask;
        let mut r = home(e);
        loop {
            let rec = cl.records[r as usize];
            if rec.count == 0 {
                cl.untracked = cl.untracked.saturating_sub(1); // it was one the full ledger skipped
                return;
            }
            if rec.entry == e && rec.generation == generation {
                break;
            }
            r = (r + 1) & mask;
        }
        cl.records[r as usize].count -= 1;
        if cl.records[r as usize].count > 0 {
            return;
        }
        // Backward-shift deletion, as in the hash index.
        cl.held -= 1;
        let (mut hole, mut j) = (r, r);
        loop {
            j = (j + 1) & mask;
            let rec = cl.records[j as usize];
            if rec.count == 0 {
                break;
            }
            let h = home(rec.entry);
            let stays = if hole <= j { hole < h && h <= j } else { hole < h || h <= j };
            if !stays {
                cl.records[hole as usize] = rec;
                hole = j;
            }
        }
        cl.records[hole as usize].count = 0;
    }

    /// Frees the client slots of dead processes, giving back their reader references;
    /// returns how many references were given back.
    fn reap_dead_clients_only(&mut self) -> u64 {
        let mut given_back = 0;
        for c in 0..MAX_CLIENTS as u32 {
            let (pid, start_time) = {
                let cl = self.client(c);
                (cl.pid, cl.start_time)
            };
            if pid == 0 || client_alive(pid, start_time) {
                continue;
            }
            for r in 0..LEDGER_RECORDS as usize {
                let rec = self.client(c).records[r];
                if rec.count == 0 || rec.entry as u64 >= self.header().max_objects {
                    continue;
                }
                let en = self.entry(rec.entry);
                if en.state == STATE_FREE || en.generation != rec.generation {
                    continue;
                }
                let n = rec.count.min(en.readers);
                en.readers -= n;
                given_back += n as u64;
                let unsealed_orphan = en.state == STATE_CREATED
                    && en.creator_pid == pid
                    && en.readers == 0
                    && en.flags & FLAG_DELETE_PENDING == 0;
                if en.readers == 0 && en.flags & FLAG_DELETE_PENDING != 0 {
                    self.free_entry(rec.entry);
                } else if unsealed_orphan {
                    // Its creator died before sealing it; known by the ledger, so a reused pid
                    // cannot pass for the creator as it can in `reclaim_dead`.
                    let id = self.entry(rec.entry).id().to_vec();
                    if let Some((slot, e)) = self.find(&id) {
                        self.remove(slot, e);
                        self.header().num_reclaimed += 1;
                    }
                }
            }
            let cl = self.client(c);
            cl.pid = 0;
            cl.start_time = 0;
            cl.held = 0;
            cl.untracked = 0;
            for rec in cl.records.iter_mut() {
                rec.count = 0;
            }
        }
        self.header().reaped_readers += given_back;
        given_back
    }

    fn reap_dead_clients(&mut self) -> u64 {
        let given_back = self.reap_dead_clients_only();
        self.reclaim_dead();
        given_back
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
        self.ledger_add(e, generation);
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
        self.ledger_add(e, generation);
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
        let now_unread = en.readers == 0 && en.flags & FLAG_DELETE_PENDING != 0;
        self.ledger_remove(e, generation);
        if now_unread {
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

#[cfg(test)]
mod tests;
