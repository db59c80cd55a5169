//! The shared-memory object store of aioray.
//!
//! One segment per node holds the object table, a hash index, an LRU list and
//! a boundary-tag allocator, guarded by a robust process-shared mutex: every
//! process of the node creates, seals and reads objects with no round trip to
//! another process, and payloads are read in place (zero-copy).
//!
//! The core is plain Rust (no libpython), so `cargo test` and `cargo bench`
//! run without Python; the PyO3 bindings live in `python.rs` behind the
//! `python` feature, which maturin enables.
#![warn(missing_docs)]

pub mod alloc;
pub mod error;
pub mod segment;
pub mod store;

#[cfg(feature = "python")]
mod python;

pub use error::{Result, StoreError};
pub use store::{CreateOptions, ObjectRef, Stats, Store, MAX_ID_LEN};
