use super::layout::LEDGER_RECORDS;
use super::*;
use crate::alloc::block_size_for;
use proptest::prelude::*;

fn store(capacity: u64, max_objects: u64) -> Store {
    Store::anonymous(capacity, CreateOptions { max_objects: Some(max_objects), populate: false }).unwrap()
}

fn put(s: &Store, id: &[u8], size: u64) -> ObjectRef {
    let r = s.create_object(id, size).unwrap();
    s.seal(id).unwrap();
    s.release(r.entry, r.generation).unwrap();
    r
}

#[test]
fn lifecycle() {
    let s = store(1 << 20, 64);
    let w = s.create_object(b"a", 5).unwrap();
    assert_eq!(w.ptr as usize % 64, 0);
    // SAFETY: w points at 5 writable payload bytes.
    unsafe { std::ptr::copy_nonoverlapping(b"hello".as_ptr(), w.ptr, 5) };
    assert!(s.get(b"a").unwrap().is_none(), "unsealed objects are invisible");
    assert!(!s.contains(b"a").unwrap());
    s.seal(b"a").unwrap();
    s.release(w.entry, w.generation).unwrap();
    let r = s.get(b"a").unwrap().unwrap();
    // SAFETY: r points at 5 sealed payload bytes.
    assert_eq!(unsafe { std::slice::from_raw_parts(r.ptr, r.len) }, b"hello");
    assert!(s.contains(b"a").unwrap());
    assert_eq!(s.create_object(b"a", 1).unwrap_err(), StoreError::Exists(b"a".to_vec()));
    assert_eq!(s.seal(b"a").unwrap_err(), StoreError::AlreadySealed(b"a".to_vec()));
    // Deleting with a reader defers the free until the reader goes.
    assert!(s.delete(b"a").unwrap());
    assert!(!s.contains(b"a").unwrap());
    assert!(s.stats().unwrap().used_bytes > 0);
    s.verify().unwrap().unwrap();
    s.release(r.entry, r.generation).unwrap();
    assert_eq!(s.stats().unwrap().used_bytes, 0);
    assert!(!s.delete(b"a").unwrap());
    s.verify().unwrap().unwrap();
}

#[test]
fn invalid_ids() {
    let s = store(4096, 16);
    assert_eq!(s.create_object(b"", 1).unwrap_err(), StoreError::InvalidId { len: 0 });
    assert_eq!(s.get(&[0; 33]).unwrap_err(), StoreError::InvalidId { len: 33 });
}

#[test]
fn lru_evicts_oldest_unpinned_unread() {
    let s = store(4 * 4096, 64);
    for id in [b"1", b"2", b"3"] {
        put(&s, id, 4000);
    }
    s.set_pinned(b"1", true).unwrap();
    let reader = s.get(b"2").unwrap().unwrap();
    // "1" is pinned and "2" is read: "3" is the only candidate.
    put(&s, b"4", 8000);
    assert!(s.contains(b"1").unwrap() && s.contains(b"2").unwrap());
    assert!(!s.contains(b"3").unwrap());
    assert_eq!(s.stats().unwrap().num_evicted, 1);
    s.release(reader.entry, reader.generation).unwrap();
    // Now "2" is older than "4": it goes first.
    put(&s, b"5", 4000);
    assert!(!s.contains(b"2").unwrap() && s.contains(b"4").unwrap());
    s.verify().unwrap().unwrap();
}

#[test]
fn a_get_counts_as_a_use() {
    // Room for exactly two 4000-byte objects.
    let s = store(2 * 4096, 64);
    put(&s, b"old", 4000);
    put(&s, b"new", 4000);
    let r = s.get(b"old").unwrap().unwrap();
    s.release(r.entry, r.generation).unwrap();
    put(&s, b"x", 4000);
    assert!(s.contains(b"old").unwrap());
    assert!(!s.contains(b"new").unwrap());
}

#[test]
fn full_store_refuses_without_evicting() {
    let s = store(8192, 64);
    put(&s, b"pinned", 4000);
    s.set_pinned(b"pinned", true).unwrap();
    put(&s, b"loose", 2000);
    match s.create_object(b"big", 6000).unwrap_err() {
        StoreError::Full { requested: 6000, capacity: 8192, .. } => {}
        other => panic!("unexpected {other:?}"),
    }
    assert!(s.contains(b"loose").unwrap(), "a hopeless create must not evict");
    s.set_pinned(b"pinned", false).unwrap();
    put(&s, b"big", 6000);
    assert_eq!(s.stats().unwrap().num_pinned, 0);
}

#[test]
fn object_of_full_capacity_fits_an_empty_store() {
    let s = store(1 << 20, 16);
    put(&s, b"all", 1 << 20);
    assert_eq!(s.stats().unwrap().object_bytes, 1 << 20);
}

#[test]
fn table_full_evicts_or_refuses() {
    let s = store(1 << 20, 2);
    put(&s, b"a", 10);
    put(&s, b"b", 10);
    put(&s, b"c", 10);
    assert!(!s.contains(b"a").unwrap());
    s.set_pinned(b"b", true).unwrap();
    s.set_pinned(b"c", true).unwrap();
    assert_eq!(s.create_object(b"d", 10).unwrap_err(), StoreError::TableFull { max_objects: 2 });
    s.verify().unwrap().unwrap();
}

#[test]
fn explicit_evict_and_candidates() {
    let s = store(1 << 20, 64);
    for i in 0..4u8 {
        put(&s, &[i + 1], 1000);
    }
    s.set_pinned(&[1], true).unwrap();
    let ids: Vec<_> = s.evictable(10).unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![vec![2], vec![3], vec![4]]);
    let freed = s.evict(1500).unwrap();
    assert_eq!(freed, 2 * block_size_for(1000));
    assert_eq!(s.stats().unwrap().num_objects, 2);
}

#[test]
fn spillable_lists_pinned_unread_objects_oldest_first() {
    let s = store(1 << 20, 64);
    for i in 1..=3u8 {
        put(&s, &[i], 1000);
        s.set_pinned(&[i], true).unwrap();
    }
    put(&s, &[9], 1000); // unpinned: evictable, not spillable
    let r = s.get(&[2]).unwrap().unwrap();
    let ids: Vec<_> = s.spillable(10).unwrap().into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![vec![1], vec![3]]);
    s.release(r.entry, r.generation).unwrap();
    let (used, total) = s.usage().unwrap();
    assert_eq!(used, 4 * block_size_for(1000));
    assert!(total >= 1 << 20);
}

#[test]
fn recovery_rebuilds_identical_metadata() {
    let s = store(1 << 20, 64);
    for i in 0..10u8 {
        put(&s, &[i + 1], 1000 * i as u64);
    }
    s.delete(&[3]).unwrap();
    let _w = s.create_object(b"unsealed", 77).unwrap();
    let before = s.stats().unwrap();
    s.lock().unwrap().recover();
    s.verify().unwrap().unwrap();
    let after = s.stats().unwrap();
    assert_eq!(before.used_bytes, after.used_bytes);
    assert_eq!(before.num_objects, after.num_objects);
    assert_eq!(s.evictable(100).unwrap().len(), 9);
}

/// A pid that belonged to a process that has exited.
fn dead_pid() -> i32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    child.wait().unwrap();
    child.id() as i32
}

#[test]
fn readers_of_a_dead_client_are_given_back() {
    let s = store(1 << 20, 64);
    put(&s, b"a", 1000);
    put(&s, b"b", 1000);
    let _r1 = s.get(b"a").unwrap().unwrap();
    let _r2 = s.get(b"a").unwrap().unwrap();
    let _r3 = s.get(b"b").unwrap().unwrap();
    let _unsealed = s.create_object(b"c", 10).unwrap();
    {
        // Hand this process's ledger to a dead process, as if it had made those calls and died.
        let mut t = s.lock().unwrap();
        let c = t.client_slot().unwrap();
        let pid = dead_pid();
        t.client(c).pid = pid;
        t.store.client.store(NIL, Ordering::Relaxed);
        let (_, e) = t.find(b"c").unwrap();
        t.entry(e).creator_pid = pid;
    }
    s.delete(b"a").unwrap();
    assert_eq!(s.evictable(10).unwrap().len(), 0);
    assert_eq!(s.reap_dead_clients().unwrap(), 4);
    let st = s.stats().unwrap();
    assert_eq!((st.num_objects, st.reaped_readers, st.num_reclaimed), (1, 4, 1));
    assert_eq!(s.evictable(10).unwrap().len(), 1); // b is unread now
    s.verify().unwrap().unwrap();
    // This process claims a fresh slot and is tracked again.
    let r = s.get(b"b").unwrap().unwrap();
    assert_eq!(s.reap_dead_clients().unwrap(), 0);
    s.release(r.entry, r.generation).unwrap();
    s.verify().unwrap().unwrap();
}

#[test]
fn an_unreaped_zombie_creator_counts_as_dead() {
    let s = store(1 << 20, 64);
    let _unsealed = s.create_object(b"half", 100).unwrap();
    // A killed child stays a zombie until waited for: it must not keep its half-written object.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let zombie = child.id() as i32;
    while std::fs::read_to_string(format!("/proc/{zombie}/stat"))
        .map(|stat| !stat.rsplit_once(')').unwrap().1.trim_start().starts_with('Z'))
        .unwrap_or(false)
    {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    {
        let mut t = s.lock().unwrap();
        let (_, e) = t.find(b"half").unwrap();
        t.entry(e).creator_pid = zombie;
    }
    let retry = s.create_object(b"half", 200).unwrap();
    assert_eq!(retry.len, 200);
    assert_eq!(s.stats().unwrap().num_reclaimed, 1);
    child.wait().unwrap();
    s.verify().unwrap().unwrap();
}

#[test]
fn a_reused_pid_does_not_keep_a_dead_creators_object() {
    let s = store(1 << 20, 64);
    let _unsealed = s.create_object(b"half", 100).unwrap();
    {
        // The creator died and its pid went to a new process (this one): same pid, later start.
        let mut t = s.lock().unwrap();
        let c = t.client_slot().unwrap();
        t.client(c).start_time += 1;
        t.store.client.store(NIL, Ordering::Relaxed);
    }
    assert_eq!(s.lock().unwrap().reclaim_dead(), 0, "by pid alone the creator looks alive");
    assert_eq!(s.reap_dead_clients().unwrap(), 1);
    let st = s.stats().unwrap();
    assert_eq!((st.num_objects, st.num_reclaimed, st.used_bytes), (0, 1, 0));
    s.verify().unwrap().unwrap();
}

#[test]
fn a_full_ledger_counts_the_rest_untracked() {
    let s = store(4 << 20, 1024);
    let n = LEDGER_RECORDS as usize; // more distinct objects than a ledger records
    let refs: Vec<ObjectRef> = (0..n as u16)
        .map(|i| {
            put(&s, &i.to_le_bytes(), 8);
            s.get(&i.to_le_bytes()).unwrap().unwrap()
        })
        .collect();
    {
        let mut t = s.lock().unwrap();
        let c = t.client_slot().unwrap();
        let cl = t.client(c);
        assert_eq!(cl.held as u64, LEDGER_RECORDS * 3 / 4);
        assert_eq!(cl.untracked as usize, n - cl.held as usize);
    }
    s.verify().unwrap().unwrap();
    for r in refs {
        s.release(r.entry, r.generation).unwrap();
    }
    let mut t = s.lock().unwrap();
    let c = t.client_slot().unwrap();
    assert_eq!((t.client(c).held, t.client(c).untracked), (0, 0));
}

#[derive(Debug, Clone)]
enum Op {
    Create(u8, u16),
    Seal(u8),
    Get(u8),
    Release(usize),
    Pin(u8, bool),
    Delete(u8),
    Evict(u16),
    Recover,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..24, 0u16..6000).prop_map(|(i, n)| Op::Create(i, n)),
        3 => (0u8..24).prop_map(Op::Seal),
        3 => (0u8..24).prop_map(Op::Get),
        3 => (0usize..64).prop_map(Op::Release),
        1 => (0u8..24, any::<bool>()).prop_map(|(i, p)| Op::Pin(i, p)),
        2 => (0u8..24).prop_map(Op::Delete),
        1 => (0u16..20000).prop_map(Op::Evict),
        1 => Just(Op::Recover),
    ]
}

proptest! {
    #[test]
    fn random_sequences_keep_the_store_consistent(ops in proptest::collection::vec(op(), 1..200)) {
        let s = store(32 * 1024, 16);
        let mut held: Vec<ObjectRef> = Vec::new();
        for op in ops {
            match op {
                Op::Create(i, n) => {
                    if let Ok(r) = s.create_object(&[i], n as u64) {
                        held.push(r);
                    }
                }
                Op::Seal(i) => { let _ = s.seal(&[i]); }
                Op::Get(i) => {
                    if let Some(r) = s.get(&[i]).unwrap() {
                        held.push(r);
                    }
                }
                Op::Release(k) => {
                    if !held.is_empty() {
                        let r = held.swap_remove(k % held.len());
                        s.release(r.entry, r.generation).unwrap();
                    }
                }
                Op::Pin(i, p) => { let _ = s.set_pinned(&[i], p); }
                Op::Delete(i) => { s.delete(&[i]).unwrap(); }
                Op::Evict(n) => { s.evict(n as u64).unwrap(); }
                Op::Recover => s.lock().unwrap().recover(),
            }
            prop_assert_eq!(s.verify().unwrap(), Ok(()));
        }
        for r in held.drain(..) {
            s.release(r.entry, r.generation).unwrap();
        }
        for i in 0..24u8 {
            s.delete(&[i]).unwrap();
        }
        // Everything released and deleted: no space may leak.
        let st = s.stats().unwrap();
        prop_assert_eq!(st.used_bytes, 0);
        prop_assert_eq!(st.num_objects, 0);
        prop_assert_eq!(s.verify().unwrap(), Ok(()));
    }
}
