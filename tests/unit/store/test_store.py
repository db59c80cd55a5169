"""The Rust store through its Python surface, with several real processes sharing a segment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import numpy as np
import pytest

import aioray
from aioray._store import ObjectExistsError, ObjectStore, ObjectStoreFullError

MiB = 1 << 20


@pytest.fixture
def store(shm_name: str) -> Iterator[ObjectStore]:
    s = ObjectStore.create(shm_name, 64 * MiB)
    yield s
    s.verify()
    s.destroy()


def run_child(code: str, *args: str, timeout: float = 60) -> str:
    """Runs `code` in a fresh interpreter (argv[1:] = args) and returns its stdout."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def spawn_child(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def put(store: ObjectStore, object_id: bytes, data: bytes) -> None:
    with store.create(object_id, len(data)) as buf:
        memoryview(buf)[:] = data
    store.seal(object_id)


def test_errors_are_the_public_exceptions() -> None:
    assert ObjectStoreFullError is aioray.exceptions.ObjectStoreFullError
    assert issubclass(ObjectStoreFullError, aioray.RayError)
    assert issubclass(ObjectExistsError, aioray.RayError)


def test_lifecycle_and_read_only_views(store: ObjectStore) -> None:
    buf = store.create(b"obj", 11)
    assert not buf.readonly
    memoryview(buf)[:] = b"hello world"
    assert store.get(b"obj") is None, "an unsealed object is invisible"
    assert not store.contains(b"obj")
    store.seal(b"obj")
    buf.release()
    view = store.get(b"obj")
    assert view is not None and view.readonly and len(view) == 11
    mv = memoryview(view)
    assert mv.readonly and bytes(mv) == b"hello world"
    with pytest.raises(TypeError):
        mv[0] = 0
    arr = np.frombuffer(view, dtype=np.uint8)
    assert not arr.flags.writeable
    # Two reads map the same bytes: no copy is made.
    again = store.get(b"obj")
    assert np.frombuffer(again, dtype=np.uint8).ctypes.data == arr.ctypes.data
    with pytest.raises(BufferError):
        view.release()  # memoryviews of it are alive
    del mv, arr
    view.release()
    again.release()
    with pytest.raises(ValueError, match="already sealed"):
        store.seal(b"obj")
    with pytest.raises(KeyError):
        store.seal(b"missing")
    with pytest.raises(ValueError, match="1 to 32 bytes"):
        store.get(b"x" * 33)
    assert b"obj" in store
    assert store.delete(b"obj") and not store.delete(b"obj")


def test_duplicate_ids(store: ObjectStore) -> None:
    put(store, b"dup", b"1")
    with pytest.raises(ObjectExistsError, match="already exists"):
        store.create(b"dup", 1)
    assert bytes(store.get(b"dup")) == b"1"


def test_visibility_across_processes_is_zero_copy(store: ObjectStore) -> None:
    child = """
        import sys
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        if sys.argv[2] == "read":
            v = s.get(b"shared")
            print("none" if v is None else bytes(v).decode())
        else:
            with s.create(b"from-child", 5) as b:
                memoryview(b)[:] = b"child"
            s.seal(b"from-child")
    """
    buf = store.create(b"shared", 6)
    memoryview(buf)[:] = b"first!"
    assert run_child(child, store.name, "read").strip() == "none"
    store.seal(b"shared")
    assert run_child(child, store.name, "read").strip() == "first!"
    # The creator's buffer still maps the same memory: a write through it is
    # seen by a new reader, which proves readers map the segment, not a copy.
    memoryview(buf)[:] = b"second"
    assert run_child(child, store.name, "read").strip() == "second"
    buf.release()
    run_child(child, store.name, "write")
    assert bytes(store.get(b"from-child")) == b"child"


def test_concurrent_creators(store: ObjectStore) -> None:
    child = """
        import sys, random
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        k = int(sys.argv[2])
        rng = random.Random(k)
        for i in range(300):
            oid = b"%d-%d" % (k, i)
            size = rng.randrange(0, 20000)
            with s.create(oid, size) as b:
                memoryview(b)[:] = bytes([k]) * size
            s.seal(oid)
            if i % 3 == 0:
                s.delete(oid)
        print("done")
    """
    procs = [spawn_child(child, store.name, str(k)) for k in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for k in range(4):
        for i in range(300):
            view = store.get(b"%d-%d" % (k, i))
            if i % 3 == 0:
                assert view is None
            else:
                assert view is not None and set(bytes(view)) <= {k}
    store.verify()
    assert store.stats()["num_objects"] == 4 * 200


def test_process_killed_mid_create_is_reclaimed(store: ObjectStore) -> None:
    child = spawn_child(
        """
        import sys, time
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        b = s.create(b"half-written", 10 * 1024 * 1024)
        print("created", flush=True)
        time.sleep(60)
        """,
        store.name,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "created"
    assert store.stats()["num_objects"] == 1
    with pytest.raises(ObjectExistsError):
        store.create(b"half-written", 1)  # its creator is alive
    child.send_signal(signal.SIGKILL)
    child.wait()
    # A new create of the same id reclaims the dead creator's object...
    put(store, b"half-written", b"ok")
    assert bytes(store.get(b"half-written")) == b"ok"
    assert store.stats()["num_reclaimed"] == 1


def test_evict_reclaims_unsealed_objects_of_dead_creators(store: ObjectStore) -> None:
    run_child(
        """
        import sys
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        b = s.create(b"orphan", 1024 * 1024)
        b.release()  # exits without sealing
        """,
        store.name,
    )
    assert store.stats()["num_objects"] == 1
    assert store.evict(0) >= 1024 * 1024
    assert store.stats()["num_objects"] == 0


def test_readers_of_a_dead_process_are_given_back(store: ObjectStore) -> None:
    put(store, b"read-then-killed", b"x" * (4 * MiB))
    used = store.stats()["used_bytes"]
    run_child(
        """
        import os, sys
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        views = [s.get(b"read-then-killed") for _ in range(3)]  # three references, never released
        half = s.create(b"never-sealed", 1024)
        os._exit(0)
        """,
        store.name,
    )
    assert store.delete(b"read-then-killed")  # deferred: the dead reader still counts
    assert store.stats()["used_bytes"] >= used
    assert store.evictable() == []
    assert store.reap_dead_clients() == 4  # three gets and the create
    stats = store.stats()
    assert stats["used_bytes"] == 0 and stats["num_objects"] == 0
    assert stats["reaped_readers"] == 4 and stats["num_reclaimed"] == 1


def test_reaping_spares_live_readers(store: ObjectStore) -> None:
    put(store, b"shared", b"y" * 1000)
    mine = store.get(b"shared")
    child = spawn_child(
        """
        import sys, time
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        v = s.get(b"shared")
        print("reading", flush=True)
        time.sleep(60)
        """,
        store.name,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "reading"
    assert store.reap_dead_clients() == 0
    assert store.delete(b"shared")
    assert bytes(memoryview(mine)[:1]) == b"y"
    mine.release()
    assert store.stats()["used_bytes"] > 0  # the child still reads it
    child.kill()
    child.wait()
    assert store.reap_dead_clients() == 1
    assert store.stats()["used_bytes"] == 0


def test_process_killed_while_holding_the_lock(store: ObjectStore) -> None:
    put(store, b"before", b"kept")
    child = spawn_child(
        """
        import sys
        from aioray._store import ObjectStore
        s = ObjectStore.attach(sys.argv[1])
        print("ready", flush=True)
        s._hold_lock(60)
        """,
        store.name,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(0.5)  # let it take the lock
    child.send_signal(signal.SIGKILL)
    child.wait()
    # The robust mutex hands the lock over and the metadata is rebuilt.
    put(store, b"after", b"fine")
    assert bytes(store.get(b"before")) == b"kept"
    assert bytes(store.get(b"after")) == b"fine"
    assert store.stats()["num_recoveries"] == 1
    store.verify()


def test_pinning_and_lru_order(shm_name: str) -> None:
    # Room for three 1 MiB objects and the 2 MiB one only once the oldest goes.
    store = ObjectStore.create(shm_name, 4 * MiB + 256)
    try:
        for name in (b"a", b"b", b"c"):
            put(store, name, b"x" * MiB)
        store.pin(b"a")
        store.get(b"b").release()  # a use: "b" is now the most recent
        put(store, b"d", b"y" * (2 * MiB))
        assert store.contains(b"a"), "pinned objects are never evicted"
        assert store.contains(b"b")
        assert not store.contains(b"c"), "the least recently used goes first"
        assert store.stats()["num_evicted"] == 1
        assert [oid for oid, _ in store.evictable()] == [b"b", b"d"]
        store.unpin(b"a")
        assert [oid for oid, _ in store.evictable()] == [b"a", b"b", b"d"]
        with pytest.raises(KeyError):
            store.pin(b"nope")
    finally:
        store.destroy()


def test_readers_protect_objects(shm_name: str) -> None:
    store = ObjectStore.create(shm_name, 2 * MiB)
    try:
        put(store, b"read", b"r" * MiB)
        view = store.get(b"read")
        with pytest.raises(ObjectStoreFullError):
            store.create(b"big", 2 * MiB)
        assert bytes(memoryview(view)[:1]) == b"r"
        # Deleting with a reader defers the free; the id is reusable at once.
        assert store.delete(b"read")
        assert not store.contains(b"read")
        assert store.stats()["used_bytes"] >= MiB
        view.release()
        assert store.stats()["used_bytes"] == 0
        put(store, b"big", b"b" * (2 * MiB))
    finally:
        store.destroy()


def test_full_store_fails_at_once_with_sizes(shm_name: str) -> None:
    store = ObjectStore.create(shm_name, MiB)
    try:
        put(store, b"pinned", b"p" * (MiB // 2))
        store.pin(b"pinned")
        put(store, b"loose", b"l" * 1000)
        with pytest.raises(ObjectStoreFullError, match=r"cannot fit 1048576 bytes in a store of 1048576"):
            store.create(b"too-big", MiB)
        # A hopeless create evicts nothing.
        assert store.contains(b"pinned") and store.contains(b"loose")
        assert store.stats()["num_evicted"] == 0
    finally:
        store.destroy()


def test_huge_object_across_processes(shm_name: str) -> None:
    size = 300 * MiB
    store = ObjectStore.create(shm_name, 320 * MiB)
    try:
        run_child(
            """
            import sys
            import numpy as np
            from aioray._store import ObjectStore
            s = ObjectStore.attach(sys.argv[1])
            with s.create(b"huge", int(sys.argv[2])) as b:
                np.frombuffer(b, dtype=np.uint32)[:] = np.arange(int(sys.argv[2]) // 4, dtype=np.uint32)
            s.seal(b"huge")
            """,
            store.name,
            str(size),
        )
        view = store.get(b"huge")
        arr = np.frombuffer(view, dtype=np.uint32)
        assert arr.shape == (size // 4,)
        assert arr[0] == 0 and arr[-1] == size // 4 - 1
        assert np.array_equal(arr[::4096], np.arange(0, size // 4, 4096, dtype=np.uint32))
        del arr
        view.release()
    finally:
        store.destroy()


def test_attach_errors(shm_name: str) -> None:
    with pytest.raises(OSError):
        ObjectStore.attach(shm_name)
    store = ObjectStore.create(shm_name, MiB)
    try:
        with pytest.raises(OSError):
            ObjectStore.create(shm_name, MiB)
        other = ObjectStore.attach(shm_name)
        with pytest.raises(ValueError, match="only the process that created"):
            other.destroy()
    finally:
        store.destroy()
    assert store.destroyed
    with pytest.raises(RuntimeError, match="destroyed"):
        store.get(b"x")
    assert not os.path.exists(f"/dev/shm/{shm_name}")
