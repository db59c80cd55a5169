//! PyO3 bindings: the whole Python surface of `aioray._store`, and the one
//! place where [`StoreError`] becomes a Python exception.

use std::os::raw::c_int;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pyo3::exceptions::{PyBufferError, PyKeyError, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};
use pyo3::{ffi, PyTypeInfo};

use crate::error::StoreError;
use crate::store::{CreateOptions, ObjectRef, Store};

/// Objects at least this large get their pages faulted in before they are written.
const POPULATE_THRESHOLD: u64 = 1 << 20;

fn exception_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("aioray.exceptions")?.getattr(name)
}

fn to_py(py: Python<'_>, err: StoreError) -> PyErr {
    let msg = err.to_string();
    let class = match &err {
        StoreError::Full { .. } | StoreError::TableFull { .. } => "ObjectStoreFullError",
        StoreError::Exists(_) => "ObjectExistsError",
        StoreError::NotFound(_) => return PyKeyError::new_err(msg),
        StoreError::AlreadySealed(_)
        | StoreError::InvalidId { .. }
        | StoreError::InvalidArgument(_)
        | StoreError::BadSegment(_) => return PyValueError::new_err(msg),
        StoreError::Os { errno, .. } => return PyOSError::new_err((*errno, msg)),
        StoreError::Destroyed => return PyRuntimeError::new_err(msg),
    };
    match exception_class(py, class) {
        Ok(cls) => match cls.call1((msg,)) {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// A shared-memory object store segment, as mapped by this process.
#[pyclass(module = "aioray._store", name = "ObjectStore", frozen)]
struct PyObjectStore {
    store: Arc<Store>,
    name: String,
}

#[pymethods]
impl PyObjectStore {
    #[staticmethod]
    #[pyo3(signature = (name, capacity, *, max_objects=None, populate=false))]
    fn _create_segment(
        py: Python<'_>,
        name: String,
        capacity: u64,
        max_objects: Option<u64>,
        populate: bool,
    ) -> PyResult<Self> {
        let opts = CreateOptions { max_objects, populate };
        let store = py.detach(|| Store::create(&name, capacity, opts)).map_err(|e| to_py(py, e))?;
        Ok(PyObjectStore { store: Arc::new(store), name })
    }

    #[staticmethod]
    fn attach(py: Python<'_>, name: String) -> PyResult<Self> {
        let store = Store::attach(&name).map_err(|e| to_py(py, e))?;
        Ok(PyObjectStore { store: Arc::new(store), name })
    }

    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn _create_object(&self, py: Python<'_>, object_id: &[u8], size: u64) -> PyResult<Buffer> {
        let store = &self.store;
        let r = py
            .detach(|| {
                let r = store.create_object(object_id, size)?;
                if size >= POPULATE_THRESHOLD {
                    // Best effort: a failure only means the writer takes the page faults.
                    let _ = store.populate_object(&r);
                }
                Ok(r)
            })
            .map_err(|e| to_py(py, e))?;
        Ok(Buffer::new(self.store.clone(), r, false))
    }

    fn seal(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<()> {
        self.store.seal(object_id).map_err(|e| to_py(py, e))
    }

    fn get(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<Option<Buffer>> {
        let r = self.store.get(object_id).map_err(|e| to_py(py, e))?;
        Ok(r.map(|r| Buffer::new(self.store.clone(), r, true)))
    }

    fn contains(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<bool> {
        self.store.contains(object_id).map_err(|e| to_py(py, e))
    }

    fn __contains__(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<bool> {
        self.contains(py, object_id)
    }

    fn delete(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<bool> {
        self.store.delete(object_id).map_err(|e| to_py(py, e))
    }

    fn pin(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<()> {
        self.store.set_pinned(object_id, true).map_err(|e| to_py(py, e))
    }

    fn unpin(&self, py: Python<'_>, object_id: &[u8]) -> PyResult<()> {
        self.store.set_pinned(object_id, false).map_err(|e| to_py(py, e))
    }

    fn reap_dead_clients(&self, py: Python<'_>) -> PyResult<u64> {
        self.store.reap_dead_clients().map_err(|e| to_py(py, e))
    }

    fn evict(&self, py: Python<'_>, nbytes: u64) -> PyResult<u64> {
        self.store.evict(nbytes).map_err(|e| to_py(py, e))
    }

    #[pyo3(signature = (limit=1024))]
    fn evictable<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Vec<(Bound<'py, PyBytes>, u64)>> {
        let list = self.store.evictable(limit).map_err(|e| to_py(py, e))?;
        Ok(list.into_iter().map(|(id, size)| (PyBytes::new(py, &id), size)).collect())
    }

    #[pyo3(signature = (limit=1024))]
    fn spillable<'py>(&self, py: Python<'py>, limit: usize) -> PyResult<Vec<(Bound<'py, PyBytes>, u64)>> {
        let list = self.store.spillable(limit).map_err(|e| to_py(py, e))?;
        Ok(list.into_iter().map(|(id, size)| (PyBytes::new(py, &id), size)).collect())
    }

    fn usage(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        self.store.usage().map_err(|e| to_py(py, e))
    }

    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.store.stats().map_err(|e| to_py(py, e))?;
        let d = PyDict::new(py);
        d.set_item("capacity", s.capacity)?;
        d.set_item("used_bytes", s.used_bytes)?;
        d.set_item("object_bytes", s.object_bytes)?;
        d.set_item("num_objects", s.num_objects)?;
        d.set_item("num_sealed", s.num_sealed)?;
        d.set_item("num_pinned", s.num_pinned)?;
        d.set_item("num_evicted", s.num_evicted)?;
        d.set_item("evicted_bytes", s.evicted_bytes)?;
        d.set_item("num_reclaimed", s.num_reclaimed)?;
        d.set_item("evictable_bytes", s.evictable_bytes)?;
        d.set_item("max_objects", s.max_objects)?;
        d.set_item("num_recoveries", s.num_recoveries)?;
        d.set_item("reaped_readers", s.reaped_readers)?;
        Ok(d)
    }

    fn populate(&self, py: Python<'_>) -> PyResult<()> {
        let store = &self.store;
        py.detach(|| store.populate()).map_err(|e| to_py(py, e))
    }

    fn verify(&self, py: Python<'_>) -> PyResult<()> {
        match self.store.verify().map_err(|e| to_py(py, e))? {
            Ok(()) => Ok(()),
            Err(msg) => Err(PyRuntimeError::new_err(format!("object store is inconsistent: {msg}"))),
        }
    }

    fn destroy(&self, py: Python<'_>) -> PyResult<()> {
        self.store.destroy().map_err(|e| to_py(py, e))
    }

    #[getter]
    fn destroyed(&self) -> bool {
        self.store.is_destroyed()
    }

    fn _hold_lock(&self, py: Python<'_>, seconds: f64) -> PyResult<()> {
        let store = &self.store;
        py.detach(|| store.hold_lock_for_test(std::time::Duration::from_secs_f64(seconds)))
            .map_err(|e| to_py(py, e))
    }

    fn __repr__(&self) -> String {
        format!("ObjectStore(name={:?}, creator={})", self.name, self.store.is_creator())
    }
}

/// `ObjectStore.create`: on the class it creates a segment, on an instance it
/// creates an object, the two calls the store's Python surface spells alike.
#[pyclass(module = "aioray._store", frozen)]
struct CreateDescriptor;

#[pymethods]
impl CreateDescriptor {
    fn __get__<'py>(
        &self,
        py: Python<'py>,
        obj: Option<Bound<'py, PyAny>>,
        owner: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let _ = owner;
        match obj {
            Some(store) => store.getattr("_create_object"),
            None => PyObjectStore::type_object(py).getattr("_create_segment"),
        }
    }
}

/// A zero-copy buffer over one object's payload in shared memory.
#[pyclass(module = "aioray._store", frozen)]
struct Buffer {
    store: Arc<Store>,
    ptr: usize,
    len: usize,
    entry: u32,
    generation: u64,
    readonly: bool,
    released: AtomicBool,
    exports: AtomicUsize,
}

impl Buffer {
    fn new(store: Arc<Store>, r: ObjectRef, readonly: bool) -> Self {
        Buffer {
            store,
            ptr: r.ptr as usize,
            len: r.len,
            entry: r.entry,
            generation: r.generation,
            readonly,
            released: AtomicBool::new(false),
            exports: AtomicUsize::new(0),
        }
    }

    fn drop_reference(&self) {
        if !self.released.swap(true, Ordering::AcqRel) && !self.store.is_destroyed() {
            // A failure here only means the store went away; nothing is left to release.
            let _ = self.store.release(self.entry, self.generation);
        }
    }
}

#[pymethods]
impl Buffer {
    /// Exports the payload through the buffer protocol (`memoryview(buf)`).
    ///
    /// # Safety
    /// Called by CPython only, with `view` a valid, writable `Py_buffer` to fill.
    unsafe fn __getbuffer__(slf: PyRef<'_, Self>, view: *mut ffi::Py_buffer, flags: c_int) -> PyResult<()> {
        if slf.released.load(Ordering::Acquire) {
            return Err(PyBufferError::new_err("the object buffer was released"));
        }
        // SAFETY: view is the Py_buffer CPython asked us to fill; ptr/len describe
        // the object's payload, which stays mapped (the buffer holds the store) and
        // allocated (it holds a reader reference) for as long as view.obj (us) lives.
        let rc = unsafe {
            ffi::PyBuffer_FillInfo(
                view,
                slf.as_ptr(),
                slf.ptr as *mut std::ffi::c_void,
                slf.len as ffi::Py_ssize_t,
                slf.readonly as c_int,
                flags,
            )
        };
        if rc != 0 {
            return Err(PyErr::fetch(slf.py()));
        }
        slf.exports.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Ends one export made by `__getbuffer__`.
    ///
    /// # Safety
    /// Called by CPython only, once for each successful `__getbuffer__`, with the view it filled.
    unsafe fn __releasebuffer__(&self, _view: *mut ffi::Py_buffer) {
        self.exports.fetch_sub(1, Ordering::AcqRel);
    }

    fn __len__(&self) -> usize {
        self.len
    }

    #[getter]
    fn readonly(&self) -> bool {
        self.readonly
    }

    #[getter]
    fn released(&self) -> bool {
        self.released.load(Ordering::Acquire)
    }

    fn release(&self) -> PyResult<()> {
        let exports = self.exports.load(Ordering::Acquire);
        if exports > 0 {
            return Err(PyBufferError::new_err(format!(
                "cannot release an object buffer while {exports} memoryview(s) of it exist; release them first"
            )));
        }
        self.drop_reference();
        Ok(())
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(&self, _exc_type: Py<PyAny>, _exc: Py<PyAny>, _tb: Py<PyAny>) -> PyResult<()> {
        self.release()
    }

    fn __repr__(&self) -> String {
        format!("<aioray._store.Buffer {} bytes{}>", self.len, if self.readonly { ", read-only" } else { "" })
    }
}

impl Drop for Buffer {
    fn drop(&mut self) {
        self.drop_reference();
    }
}

/// The native module `aioray._store`.
#[pymodule]
#[pyo3(name = "_store")]
fn store_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyObjectStore>()?;
    m.add_class::<Buffer>()?;
    PyObjectStore::type_object(py).setattr("create", Bound::new(py, CreateDescriptor)?)?;
    m.add("ObjectStoreFullError", exception_class(py, "ObjectStoreFullError")?)?;
    m.add("ObjectExistsError", exception_class(py, "ObjectExistsError")?)?;
    m.add("MAX_ID_LEN", crate::store::MAX_ID_LEN)?;
    Ok(())
}
