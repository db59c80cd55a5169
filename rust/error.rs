//! The one error type of the store; the Python bindings turn it into Python
//! exceptions in a single place (`python.rs`).

use std::fmt;

/// Everything that can go wrong in a store operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The object does not fit, even after evicting every evictable object.
    Full {
        /// Bytes the create asked for (payload).
        requested: u64,
        /// Capacity of the store in bytes.
        capacity: u64,
        /// Bytes currently held by objects that cannot be evicted (pinned, read or unsealed).
        unevictable: u64,
    },
    /// The object table has no free slot and nothing could be evicted to make one.
    TableFull {
        /// The table's size.
        max_objects: u64,
    },
    /// An object with this id already exists.
    Exists(Vec<u8>),
    /// No object with this id exists.
    NotFound(Vec<u8>),
    /// The operation needs an unsealed object, but it is sealed already.
    AlreadySealed(Vec<u8>),
    /// Ids are 1 to 32 bytes long.
    InvalidId {
        /// The length that was passed.
        len: usize,
    },
    /// A store parameter is out of range.
    InvalidArgument(String),
    /// A system call failed.
    Os {
        /// What the store was doing.
        op: &'static str,
        /// The `errno` it failed with.
        errno: i32,
    },
    /// The segment exists but is not a store of this version, or is damaged beyond repair.
    BadSegment(String),
    /// The store was destroyed by its creator.
    Destroyed,
}

/// Result type of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn fmt_id(id: &[u8]) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Full { requested, capacity, unevictable } => write!(
                f,
                "object store is full: cannot fit {requested} bytes in a store of {capacity} bytes \
                 ({unevictable} bytes are pinned, being read or being written); free objects, \
                 release views or start the node with more object_store_memory"
            ),
            StoreError::TableFull { max_objects } => write!(
                f,
                "object table is full ({max_objects} objects); delete objects or create the store \
                 with a larger max_objects"
            ),
            StoreError::Exists(id) => write!(f, "object {} already exists", fmt_id(id)),
            StoreError::NotFound(id) => write!(f, "object {} does not exist", fmt_id(id)),
            StoreError::AlreadySealed(id) => write!(f, "object {} is already sealed", fmt_id(id)),
            StoreError::InvalidId { len } => {
                write!(f, "object ids are 1 to 32 bytes long, got {len} bytes")
            }
            StoreError::InvalidArgument(msg) => f.write_str(msg),
            StoreError::Os { op, errno } => {
                write!(f, "{op} failed: {}", std::io::Error::from_raw_os_error(*errno))
            }
            StoreError::BadSegment(msg) => write!(f, "not a usable aioray store segment: {msg}"),
            StoreError::Destroyed => f.write_str("the object store was destroyed"),
        }
    }
}

impl std::error::Error for StoreError {}

impl StoreError {
    /// The error of the failed system call `op`, read from `errno`.
    pub(crate) fn last_os(op: &'static str) -> Self {
        StoreError::Os { op, errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0) }
    }
}
