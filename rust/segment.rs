//! A POSIX shared-memory segment (`shm_open` + `mmap`) mapped read-write.

use std::ffi::CString;
use std::ptr::NonNull;

use crate::error::{Result, StoreError};

/// A mapping of a named (or anonymous) shared-memory segment; unmapped on drop.
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    name: Option<CString>,
}

// SAFETY: the segment is a plain range of shared memory; every access to the
// store's metadata inside it is serialised by the process-shared mutex, and
// object payloads are only written before seal (by their creator).
unsafe impl Send for Segment {}
// SAFETY: see `Send`; `&Segment` only hands out raw pointers.
unsafe impl Sync for Segment {}

const PAGE: usize = 4096;

fn shm_name(name: &str) -> Result<CString> {
    let trimmed = name.strip_prefix('/').unwrap_or(name);
    if trimmed.is_empty() || trimmed.contains('/') || trimmed.len() > 200 {
        return Err(StoreError::InvalidArgument(format!(
            "segment name {name:?} must be 1 to 200 characters without '/'"
        )));
    }
    CString::new(format!("/{trimmed}"))
        .map_err(|_| StoreError::InvalidArgument(format!("segment name {name:?} contains NUL")))
}

fn map(fd: libc::c_int, len: usize) -> Result<NonNull<u8>> {
    // SAFETY: a fresh shared mapping of `len` bytes of `fd` (or anonymous memory
    // when fd is -1); the kernel picks the address, so nothing existing is replaced.
    let ptr = unsafe {
        let flags = if fd < 0 { libc::MAP_SHARED | libc::MAP_ANONYMOUS } else { libc::MAP_SHARED };
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, 0)
    };
    if ptr == libc::MAP_FAILED {
        return Err(StoreError::last_os("mmap"));
    }
    Ok(NonNull::new(ptr.cast()).expect("mmap returned NULL"))
}

impl Segment {
    /// Creates a new named segment of `len` bytes; fails if the name exists.
    pub fn create(name: &str, len: usize) -> Result<Self> {
        let cname = shm_name(name)?;
        // SAFETY: cname is a valid NUL-terminated string.
        let fd =
            unsafe { libc::shm_open(cname.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600) };
        if fd < 0 {
            return Err(StoreError::last_os("shm_open"));
        }
        let unlink_and = |err: StoreError| {
            // SAFETY: fd is ours and open; cname names the segment we just created.
            unsafe {
                libc::close(fd);
                libc::shm_unlink(cname.as_ptr());
            }
            err
        };
        // SAFETY: fd is a valid descriptor we own.
        if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
            return Err(unlink_and(StoreError::last_os("ftruncate")));
        }
        let base = map(fd, len).map_err(unlink_and)?;
        // SAFETY: the mapping keeps the segment alive; the descriptor is no longer needed.
        unsafe { libc::close(fd) };
        Ok(Segment { base, len, name: Some(cname) })
    }

    /// Maps an existing named segment in full.
    pub fn open(name: &str) -> Result<Self> {
        let cname = shm_name(name)?;
        // SAFETY: cname is a valid NUL-terminated string.
        let fd = unsafe { libc::shm_open(cname.as_ptr(), libc::O_RDWR, 0) };
        if fd < 0 {
            return Err(StoreError::last_os("shm_open"));
        }
        // SAFETY: an all-zero `stat` is a valid value to be overwritten by fstat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is valid and st is a writable stat.
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            let err = StoreError::last_os("fstat");
            // SAFETY: fd is ours.
            unsafe { libc::close(fd) };
            return Err(err);
        }
        let len = st.st_size as usize;
        let mapped = map(fd, len);
        // SAFETY: fd is ours; the mapping (if any) keeps the segment alive.
        unsafe { libc::close(fd) };
        Ok(Segment { base: mapped?, len, name: Some(cname) })
    }

    /// An anonymous shared mapping, for tests and benchmarks that need no name.
    pub fn anonymous(len: usize) -> Result<Self> {
        Ok(Segment { base: map(-1, len)?, len, name: None })
    }

    /// Removes the name, so no new process can attach; existing mappings stay valid.
    pub fn unlink(&self) -> Result<()> {
        if let Some(name) = &self.name {
            // SAFETY: name is a valid NUL-terminated string.
            if unsafe { libc::shm_unlink(name.as_ptr()) } != 0 {
                let err = StoreError::last_os("shm_unlink");
                if !matches!(err, StoreError::Os { errno: libc::ENOENT, .. }) {
                    return Err(err);
                }
            }
        }
        Ok(())
    }

    /// Faults in the page tables of `[offset, offset + len)` for writing without
    /// changing the contents, so later writes run at memcpy speed.
    pub fn populate(&self, offset: usize, len: usize) -> Result<()> {
        // madvise wants a page-aligned start: widen the range down to the page boundary.
        let aligned = offset.min(self.len) & !(PAGE - 1);
        let len = (len + offset.min(self.len) - aligned).min(self.len - aligned);
        let start = aligned;
        if len == 0 {
            return Ok(());
        }
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        // SAFETY: the range lies inside our mapping; MADV_POPULATE_WRITE only
        // prefaults pages, it never changes their contents.
        let rc = unsafe { libc::madvise(self.base.as_ptr().add(start).cast(), len, MADV_POPULATE_WRITE) };
        if rc != 0 {
            return Err(StoreError::last_os("madvise(MADV_POPULATE_WRITE)"));
        }
        Ok(())
    }

    /// First byte of the mapping.
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never, for a store).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: base/len describe the mapping made in `map`, unmapped only here.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
