//! A boundary-tag allocator with segregated free lists, living inside the
//! shared segment (all links are offsets, never pointers).
//!
//! Every block starts with a 64-byte header, so payloads are 64-byte aligned.
//! Free blocks sit on one of [`NUM_CLASSES`] lists (four per power of two) and
//! are coalesced with free neighbours on release, which keeps fragmentation
//! bounded under churn. Nothing is ever handed back to the kernel: pages stay
//! faulted in for the next object.

/// Size of a block header; also the alignment of every block and payload.
pub const BLOCK_HEADER: u64 = 64;
/// Smallest remainder worth splitting off as a free block.
pub const MIN_BLOCK: u64 = 128;
/// Number of free-list size classes (four per power of two from 64 bytes up).
pub const NUM_CLASSES: usize = 232;
/// Offset meaning "no block".
pub const NIL: u64 = u64::MAX;

/// Header in front of every block of the data region.
#[repr(C)]
pub struct BlockHeader {
    size: u64,
    prev_size: u64,
    free: u64,
    next_free: u64,
    prev_free: u64,
    _reserved: [u64; 3],
}

/// Allocator state kept in the segment's header.
#[repr(C)]
pub struct AllocState {
    free_heads: [u64; NUM_CLASSES],
    free_bytes: u64,
    region_len: u64,
}

/// Block size needed for a payload of `payload` bytes.
pub fn block_size_for(payload: u64) -> u64 {
    let rounded = payload.div_ceil(BLOCK_HEADER) * BLOCK_HEADER;
    (rounded + BLOCK_HEADER).max(MIN_BLOCK)
}

fn class_of(size: u64) -> usize {
    debug_assert!(size >= BLOCK_HEADER);
    let log = 63 - size.leading_zeros() as usize;
    let sub = ((size >> (log - 2)) & 3) as usize;
    (log - 6) * 4 + sub
}

/// A view of the allocator: its state plus the data region it manages.
pub struct Heap<'a> {
    state: &'a mut AllocState,
    base: *mut u8,
}

impl<'a> Heap<'a> {
    /// Wraps the allocator state and its region.
    ///
    /// # Safety
    /// `base` must point to `state.region_len` writable bytes (after [`Heap::format`],
    /// the length given there) that nothing else accesses while the heap lives.
    pub unsafe fn new(state: &'a mut AllocState, base: *mut u8) -> Self {
        Heap { state, base }
    }

    fn hdr(&mut self, off: u64) -> &mut BlockHeader {
        debug_assert!(off + BLOCK_HEADER <= self.state.region_len && off.is_multiple_of(BLOCK_HEADER));
        // SAFETY: off is a block offset inside the region (checked in debug
        // builds), 64-byte aligned, and the region is exclusively ours (see `new`).
        unsafe { &mut *(self.base.add(off as usize) as *mut BlockHeader) }
    }

    /// Turns the whole region of `region_len` bytes into one free block.
    pub fn format(&mut self, region_len: u64) {
        self.state.region_len = region_len - region_len % BLOCK_HEADER;
        self.rebuild(&[]);
    }

    /// Bytes in free blocks (headers included).
    pub fn free_bytes(&self) -> u64 {
        self.state.free_bytes
    }

    /// Length of the managed region.
    pub fn region_len(&self) -> u64 {
        self.state.region_len
    }

    /// Size of the block at `off`.
    pub fn block_size(&mut self, off: u64) -> u64 {
        self.hdr(off).size
    }

    fn push_free(&mut self, off: u64) {
        let class = class_of(self.hdr(off).size);
        let head = self.state.free_heads[class];
        {
            let h = self.hdr(off);
            h.free = 1;
            h.prev_free = NIL;
            h.next_free = head;
        }
        if head != NIL {
            self.hdr(head).prev_free = off;
        }
        self.state.free_heads[class] = off;
    }

    fn unlink_free(&mut self, off: u64) {
        let (size, prev, next) = {
            let h = self.hdr(off);
            (h.size, h.prev_free, h.next_free)
        };
        if prev == NIL {
            self.state.free_heads[class_of(size)] = next;
        } else {
            self.hdr(prev).next_free = next;
        }
        if next != NIL {
            self.hdr(next).prev_free = prev;
        }
        self.hdr(off).free = 0;
    }

    fn set_prev_size_of_next(&mut self, off: u64, size: u64) {
        let next = off + size;
        if next < self.state.region_len {
            self.hdr(next).prev_size = size;
        }
    }

    fn find(&mut self, need: u64) -> Option<u64> {
        let class = class_of(need);
        let mut cur = self.state.free_heads[class];
        while cur != NIL {
            let h = self.hdr(cur);
            if h.size >= need {
                return Some(cur);
            }
            cur = h.next_free;
        }
        // Every block of a higher class is at least as large as any size of this one.
        self.state.free_heads[class + 1..].iter().copied().find(|&head| head != NIL)
    }

    /// Allocates a block of at least `need` bytes (a [`block_size_for`] value);
    /// returns its offset, or `None` when no free block is large enough.
    pub fn alloc(&mut self, need: u64) -> Option<u64> {
        debug_assert!(need >= MIN_BLOCK && need.is_multiple_of(BLOCK_HEADER));
        let off = self.find(need)?;
        self.unlink_free(off);
        let size = self.hdr(off).size;
        if size - need >= MIN_BLOCK {
            let rest = off + need;
            self.hdr(off).size = need;
            {
                let r = self.hdr(rest);
                r.size = size - need;
                r.prev_size = need;
            }
            self.set_prev_size_of_next(rest, size - need);
            self.push_free(rest);
        }
        self.state.free_bytes -= self.hdr(off).size;
        Some(off)
    }

    /// Frees the block at `off`, merging it with free neighbours.
    pub fn free(&mut self, off: u64) {
        let mut off = off;
        let mut size = self.hdr(off).size;
        debug_assert!(self.hdr(off).free == 0, "double free of block {off}");
        self.state.free_bytes += size;
        let next = off + size;
        if next < self.state.region_len && self.hdr(next).free != 0 {
            self.unlink_free(next);
            size += self.hdr(next).size;
        }
        if off != 0 {
            let prev = off - self.hdr(off).prev_size;
            if self.hdr(prev).free != 0 {
                self.unlink_free(prev);
                size += off - prev;
                off = prev;
            }
        }
        self.hdr(off).size = size;
        self.set_prev_size_of_next(off, size);
        self.push_free(off);
    }

    /// Rewrites the block chain from the allocated blocks `live` (offset, size),
    /// sorted by offset and non-overlapping; every gap becomes a free block.
    /// Used to format the region and to recover after a crash under the lock.
    pub fn rebuild(&mut self, live: &[(u64, u64)]) {
        self.state.free_heads = [NIL; NUM_CLASSES];
        self.state.free_bytes = 0;
        let mut cursor = 0;
        let mut prev_size = 0;
        let region_len = self.state.region_len;
        for &(off, size) in live.iter().chain(std::iter::once(&(region_len, 0))) {
            if off > cursor {
                let gap = off - cursor;
                {
                    let h = self.hdr(cursor);
                    h.size = gap;
                    h.prev_size = prev_size;
                }
                self.push_free(cursor);
                self.state.free_bytes += gap;
                prev_size = gap;
            }
            if size == 0 {
                break;
            }
            let h = self.hdr(off);
            h.size = size;
            h.prev_size = prev_size;
            h.free = 0;
            prev_size = size;
            cursor = off + size;
        }
    }

    /// Checks every invariant of the block chain and free lists; returns the
    /// allocated blocks as (offset, size).
    pub fn verify(&mut self) -> std::result::Result<Vec<(u64, u64)>, String> {
        let mut allocated = Vec::new();
        let (mut off, mut prev_size, mut prev_free) = (0u64, 0u64, false);
        let (mut free_blocks, mut free_bytes) = (0usize, 0u64);
        while off < self.state.region_len {
            let (size, psize, free) = {
                let h = self.hdr(off);
                (h.size, h.prev_size, h.free != 0)
            };
            if size < BLOCK_HEADER || size % BLOCK_HEADER != 0 || off + size > self.state.region_len {
                return Err(format!("block {off} has bad size {size}"));
            }
            if psize != prev_size {
                return Err(format!("block {off}: prev_size {psize} != {prev_size}"));
            }
            if free && prev_free {
                return Err(format!("adjacent free blocks at {off}"));
            }
            if free {
                free_blocks += 1;
                free_bytes += size;
            } else {
                allocated.push((off, size));
            }
            prev_free = free;
            prev_size = size;
            off += size;
        }
        if free_bytes != self.state.free_bytes {
            return Err(format!("free bytes {} != counted {free_bytes}", self.state.free_bytes));
        }
        let mut listed = 0usize;
        for class in 0..NUM_CLASSES {
            let (mut cur, mut prev) = (self.state.free_heads[class], NIL);
            while cur != NIL {
                let h = self.hdr(cur);
                if h.free == 0 || class_of(h.size) != class || h.prev_free != prev {
                    return Err(format!("free list {class} is corrupt at {cur}"));
                }
                listed += 1;
                if listed > free_blocks {
                    return Err("free lists hold more blocks than the chain".into());
                }
                prev = cur;
                cur = h.next_free;
            }
        }
        if listed != free_blocks {
            return Err(format!("{listed} listed free blocks, {free_blocks} in the chain"));
        }
        Ok(allocated)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Region {
        state: Box<AllocState>,
        mem: Vec<u64>,
    }

    impl Region {
        fn new(len: u64) -> Self {
            let state = Box::new(AllocState { free_heads: [NIL; NUM_CLASSES], free_bytes: 0, region_len: 0 });
            let mut r = Region { state, mem: vec![0u64; (len / 8) as usize + 8] };
            r.heap().format(len);
            r
        }
        fn heap(&mut self) -> Heap<'_> {
            // Vec<u64> is only 8-byte aligned; headers need 8, payload alignment is not tested here.
            // SAFETY: mem has region_len bytes and is borrowed mutably with the heap.
            unsafe { Heap::new(&mut self.state, self.mem.as_mut_ptr().cast()) }
        }
    }

    #[test]
    fn classes_are_monotonic() {
        let mut last = 0;
        for size in (64..1 << 20).step_by(64) {
            let c = class_of(size);
            assert!(c >= last);
            last = c;
        }
        assert_eq!(class_of(u64::MAX - 63), NUM_CLASSES - 1);
    }

    #[test]
    fn alloc_split_and_coalesce() {
        let mut r = Region::new(64 * 1024);
        let mut h = r.heap();
        let a = h.alloc(block_size_for(100)).unwrap();
        let b = h.alloc(block_size_for(1000)).unwrap();
        let c = h.alloc(block_size_for(10)).unwrap();
        assert_eq!(a, 0);
        assert!(b > a && c > b);
        h.verify().unwrap();
        h.free(b);
        h.verify().unwrap();
        h.free(a);
        h.verify().unwrap();
        h.free(c);
        let live = h.verify().unwrap();
        assert!(live.is_empty());
        assert_eq!(h.free_bytes(), 64 * 1024);
        // One free block again: the whole region can be allocated at once.
        assert_eq!(h.alloc(64 * 1024), Some(0));
    }

    #[test]
    fn full_region_refuses() {
        let mut r = Region::new(4096);
        let mut h = r.heap();
        assert!(h.alloc(8192).is_none());
        let a = h.alloc(2048).unwrap();
        assert!(h.alloc(4096).is_none());
        h.free(a);
        assert!(h.alloc(4096).is_some());
    }

    #[test]
    fn rebuild_matches_live_blocks() {
        let mut r = Region::new(16384);
        let mut h = r.heap();
        h.rebuild(&[(128, 256), (1024, 128)]);
        let live = h.verify().unwrap();
        assert_eq!(live, vec![(128, 256), (1024, 128)]);
        assert_eq!(h.free_bytes(), 16384 - 384);
    }
}
