//! Criterion benchmarks of the store core: small-object latency, large-object
//! write bandwidth (beside a plain memcpy baseline), eviction under churn and
//! lock contention from several threads.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aioray_store::{CreateOptions, Store};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn populated(capacity: u64, max_objects: u64) -> Store {
    Store::anonymous(capacity, CreateOptions { max_objects: Some(max_objects), populate: true }).unwrap()
}

fn small_objects(c: &mut Criterion) {
    let store = populated(64 << 20, 1 << 16);
    let mut g = c.benchmark_group("small");
    let mut n = 0u64;
    g.bench_function("create_seal_release_delete_64B", |b| {
        b.iter(|| {
            n += 1;
            let id = n.to_le_bytes();
            let w = store.create_object(&id, 64).unwrap();
            store.seal(&id).unwrap();
            store.release(w.entry, w.generation).unwrap();
            store.delete(&id).unwrap();
        })
    });
    let w = store.create_object(b"hot", 64).unwrap();
    store.seal(b"hot").unwrap();
    store.release(w.entry, w.generation).unwrap();
    g.bench_function("get_release_64B", |b| {
        b.iter(|| {
            let r = store.get(black_box(b"hot")).unwrap().unwrap();
            store.release(r.entry, r.generation).unwrap();
        })
    });
    g.finish();
}

fn large_writes(c: &mut Criterion) {
    let mut g = c.benchmark_group("write");
    g.sample_size(10).measurement_time(Duration::from_secs(3));
    let max = 256u64 << 20;
    let store = populated(max + (1 << 20), 64);
    let src = vec![7u8; max as usize];
    let mut dst = vec![0u8; max as usize];
    for mib in [1u64, 16, 256] {
        let size = mib << 20;
        g.throughput(Throughput::Bytes(size));
        g.bench_with_input(BenchmarkId::new("create_write_seal", format!("{mib}MiB")), &size, |b, &size| {
            b.iter(|| {
                let w = store.create_object(b"big", size).unwrap();
                // SAFETY: w.ptr points at `size` writable bytes of the new object.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), w.ptr, size as usize) };
                store.seal(b"big").unwrap();
                store.release(w.entry, w.generation).unwrap();
                store.delete(b"big").unwrap();
            })
        });
        g.bench_with_input(BenchmarkId::new("memcpy_baseline", format!("{mib}MiB")), &size, |b, &size| {
            b.iter(|| dst[..size as usize].copy_from_slice(black_box(&src[..size as usize])))
        });
    }
    g.finish();
}

fn eviction_churn(c: &mut Criterion) {
    // A store that holds 64 objects of 256 KiB: every create past that evicts.
    let store = populated(16 << 20, 4096);
    let mut n = 0u64;
    c.bench_function("evict/churn_256KiB", |b| {
        b.iter(|| {
            n += 1;
            let id = n.to_le_bytes();
            let w = store.create_object(&id, 256 << 10).unwrap();
            store.seal(&id).unwrap();
            store.release(w.entry, w.generation).unwrap();
        })
    });
}

fn contention(c: &mut Criterion) {
    let store = Arc::new(populated(64 << 20, 1 << 16));
    let mut g = c.benchmark_group("contention");
    for threads in [1u64, 2, 4] {
        g.bench_function(BenchmarkId::new("create_seal_get_delete", threads), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let store = store.clone();
                        std::thread::spawn(move || {
                            for i in 0..iters {
                                let id = [t.to_le_bytes(), i.to_le_bytes()].concat();
                                let w = store.create_object(&id, 128).unwrap();
                                store.seal(&id).unwrap();
                                store.release(w.entry, w.generation).unwrap();
                                let r = store.get(&id).unwrap().unwrap();
                                store.release(r.entry, r.generation).unwrap();
                                store.delete(&id).unwrap();
                            }
                        })
                    })
                    .collect();
                handles.into_iter().for_each(|h| h.join().unwrap());
                // Time per operation group across all threads.
                start.elapsed() / threads as u32
            })
        });
    }
    g.finish();
}

criterion_group!(benches, small_objects, large_writes, eviction_churn, contention);
criterion_main!(benches);
