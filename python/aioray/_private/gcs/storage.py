"""Where the GCS keeps its tables, so that a restarted GCS finds the cluster as it left it.

Ray's GCS "具备高可用能力" (seed 003): backed by durable storage, a GCS that dies
is restarted and reloads every table before it serves again; raylets, workers
and actors keep running meanwhile. Here a storage is a set of named tables of
bytes to bytes (`GcsStorage`), opened from a URL by `open_storage`:

- ``None`` or ``memory://``: in this process only (embedded clusters, unit tests);
- ``sqlite:///abs/path.sqlite3``: a local SQLite file (WAL, ``synchronous=NORMAL``):
  what was committed survives the GCS process being killed, and the last
  commits may be lost only if the machine itself crashes;
- ``redis://host:port[/db]``: a Redis server, as durable as that server is
  configured to be (Ray's choice for HA: a replicated Redis with AOF).

Every URL takes ``?namespace=NAME``: clusters sharing one database or Redis
keep their tables apart by namespace.

The tables write through `Tables`: ``put``/``delete`` are synchronous and cheap
(they queue the change, coalescing repeated writes of one key); a background
writer applies the queue as one batch (one transaction, one pipeline) right
after the loop step that queued it. A handler that must not acknowledge what
is not durable awaits ``flush()`` before it replies. A storage that keeps
failing for `WRITE_RETRY_S` is fatal: the GCS stops (exit code 1) and its
supervisor restarts it from what was written.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

log = logging.getLogger("aioray.gcs")

# (table, key) -> the new value, or None to delete the key.
Batch = dict[tuple[str, bytes], bytes | None]
# A value serialized when the writer takes it: a row changed several times before the writer's
# next batch is serialized once, as it is then.
Value = bytes | Callable[[], bytes]

WRITE_RETRY_S = 30.0
CONNECT_TIMEOUT_S = 5.0
REDIS_OP_TIMEOUT_S = 10.0
SCHEMES = "memory://, sqlite:///ABSOLUTE/PATH or redis://HOST:PORT[/DB]"


class StorageError(RuntimeError):
    """The storage cannot be opened, or keeps refusing writes."""


class GcsStorage(Protocol):
    """Named tables of bytes to bytes that outlive the GCS process (except `MemoryStorage`)."""

    description: str  # what to name in messages: the URL, its password masked

    async def apply(self, batch: Batch) -> None:
        """Writes every change of `batch` at once (a transaction where the backend has them)."""
        ...

    async def put(self, table: str, key: bytes, value: bytes) -> None: ...

    async def delete(self, table: str, key: bytes) -> None: ...

    async def load_all(self, table: str) -> dict[bytes, bytes]: ...

    async def close(self) -> None: ...


class MemoryStorage:
    """Tables in this process's memory: a real store that a new `Gcs` in the same process reloads
    (how unit tests simulate a restart), but that dies with the process."""

    def __init__(self, namespace: str = "default") -> None:
        self.description = f"memory://?namespace={namespace}"
        self._tables: dict[str, dict[bytes, bytes]] = {}
        self.closed = False

    async def apply(self, batch: Batch) -> None:
        self._check_open()
        for (table, key), value in batch.items():
            rows = self._tables.setdefault(table, {})
            if value is None:
                rows.pop(key, None)
            else:
                rows[key] = bytes(value)

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        await self.apply({(table, key): value})

    async def delete(self, table: str, key: bytes) -> None:
        await self.apply({(table, key): None})

    async def load_all(self, table: str) -> dict[bytes, bytes]:
        self._check_open()
        return dict(self._tables.get(table, {}))

    async def close(self) -> None:
        self.closed = True

    def reopen(self) -> MemoryStorage:
        """The same tables behind a fresh handle (a restarted GCS in the same process)."""
        again = MemoryStorage.__new__(MemoryStorage)
        again.description, again._tables, again.closed = self.description, self._tables, False
        return again

    def _check_open(self) -> None:
        if self.closed:
            raise StorageError(f"{self.description} is closed")


class SqliteStorage:
    """One SQLite file; every call runs on one dedicated thread, so the event loop never waits on disk.

    A batch is one transaction. In WAL mode with ``synchronous=NORMAL`` a commit
    reaches the OS (a crash of the process loses nothing committed) without an
    fsync per commit (a power loss may lose the last commits, never corrupts)."""

    def __init__(self, path: str, namespace: str) -> None:
        self.description = f"sqlite://{path}?namespace={namespace}"
        self._path = path
        self._ns = namespace
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="gcs-sqlite")
        self._db: sqlite3.Connection | None = None

    async def _call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def run() -> Any:
            if self._db is None:
                raise StorageError(f"{self.description} is closed")
            return fn(self._db)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            parent = os.path.dirname(self._path)
            if parent:
                os.makedirs(parent, exist_ok=True)
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False, timeout=5)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS gcs_tables (ns TEXT NOT NULL, tbl TEXT NOT NULL, "
                "key BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (ns, tbl, key))"
            )
            return db

        try:
            self._db = await asyncio.get_running_loop().run_in_executor(self._thread, connect)
        except (OSError, sqlite3.Error) as e:
            self._thread.shutdown(wait=False)
            raise StorageError(f"cannot open the GCS storage {self.description}: {e}") from e

    async def apply(self, batch: Batch) -> None:
        puts = [(self._ns, t, k, v) for (t, k), v in batch.items() if v is not None]
        deletes = [(self._ns, t, k) for (t, k), v in batch.items() if v is None]

        def write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN")
            try:
                if puts:
                    db.executemany("INSERT OR REPLACE INTO gcs_tables VALUES (?, ?, ?, ?)", puts)
                if deletes:
                    db.executemany("DELETE FROM gcs_tables WHERE ns = ? AND tbl = ? AND key = ?", deletes)
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

        await self._call(write)

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        await self.apply({(table, key): value})

    async def delete(self, table: str, key: bytes) -> None:
        await self.apply({(table, key): None})

    async def load_all(self, table: str) -> dict[bytes, bytes]:
        def read(db: sqlite3.Connection) -> dict[bytes, bytes]:
            rows = db.execute("SELECT key, value FROM gcs_tables WHERE ns = ? AND tbl = ?", (self._ns, table))
            return {bytes(k): bytes(v) for k, v in rows}

        result: dict[bytes, bytes] = await self._call(read)
        return result

    async def close(self) -> None:
        def shut(db: sqlite3.Connection) -> None:
            db.close()

        if self._db is not None:
            with contextlib.suppress(Exception):
                await self._call(shut)
            self._db = None
        self._thread.shutdown(wait=False)


class RedisStorage:
    """A Redis hash per table, ``aioray:<namespace>:<table>``; a batch is one MULTI/EXEC pipeline."""

    def __init__(self, url: str, namespace: str, description: str) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.description = description
        self._prefix = f"aioray:{namespace}:"
        # No retries inside the client: `Tables` retries whole batches, and start-up fails fast.
        self._client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=REDIS_OP_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )

    async def open(self) -> None:
        try:
            await asyncio.wait_for(self._client.ping(), CONNECT_TIMEOUT_S * 2)
        except Exception as e:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            reason = str(e) or type(e).__name__
            raise StorageError(f"cannot reach the GCS storage {self.description}: {reason}") from e

    async def apply(self, batch: Batch) -> None:
        async with self._client.pipeline(transaction=True) as pipe:
            for (table, key), value in batch.items():
                if value is None:
                    pipe.hdel(self._prefix + table, key)
                else:
                    pipe.hset(self._prefix + table, key, value)
            await pipe.execute()

    async def put(self, table: str, key: bytes, value: bytes) -> None:
        await self.apply({(table, key): value})

    async def delete(self, table: str, key: bytes) -> None:
        await self.apply({(table, key): None})

    async def load_all(self, table: str) -> dict[bytes, bytes]:
        rows = await self._client.hgetall(self._prefix + table)
        return {_as_bytes(k): _as_bytes(v) for k, v in rows.items()}

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _masked(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def open_storage(url: str | None, namespace: str | None = None) -> GcsStorage:
    """Opens (and for Redis, reaches) the storage `url` names; raises StorageError if it cannot.

    `namespace` applies unless the URL has a ``?namespace=`` of its own."""
    parts = urlsplit(url or "memory://")
    query = parse_qs(parts.query)
    ns = (query.pop("namespace", None) or [namespace or "default"])[-1]
    if parts.scheme == "memory":
        return MemoryStorage(ns)
    if parts.scheme == "sqlite":
        if parts.netloc or not parts.path.startswith("/"):
            raise StorageError(f"GCS storage {url!r}: give an absolute path, as sqlite:///abs/path.sqlite3")
        sqlite = SqliteStorage(parts.path, ns)
        await sqlite.open()
        return sqlite
    if parts.scheme in ("redis", "rediss"):
        assert url is not None
        clean = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
        redis = RedisStorage(clean, ns, f"{_masked(clean)} (namespace {ns})")
        await redis.open()
        return redis
    raise StorageError(f"GCS storage {url!r}: unknown kind; use {SCHEMES}")


class Tables:
    """The tables' side of the storage: queued writes, one background writer, and `flush`."""

    def __init__(
        self,
        storage: GcsStorage | None = None,
        on_fatal: Callable[[BaseException], None] | None = None,
        unread: bool = False,
    ) -> None:
        self.storage: GcsStorage = storage if storage is not None else MemoryStorage()
        # A GCS server process's memory:// storage is read by no one: the GCS that replaces a dead
        # one is a new process and starts empty. Writing it only cost (serializing every change).
        self._unread = unread
        self._on_fatal = on_fatal
        self._pending: dict[tuple[str, bytes], Value | None] = {}
        self._waiters: list[asyncio.Future[None]] = []  # for the batch after the one in flight
        self._inflight_waiters: list[asyncio.Future[None]] = []
        self._inflight = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.failed: BaseException | None = None
        self.batches_written = 0

    # -- the tables' calls (synchronous: they only queue) ----------------------------------------
    def put(self, table: str, key: bytes, value: Value) -> None:
        if self._unread:
            return
        self._pending[(table, key)] = value
        self._kick()

    def delete(self, table: str, key: bytes) -> None:
        if self._unread:
            return
        self._pending[(table, key)] = None
        self._kick()

    async def flush(self) -> None:
        """Returns once every change queued before this call is in the storage."""
        if self.failed is not None:
            raise StorageError(f"the GCS storage {self.storage.description} failed: {self.failed}")
        if not self._pending and not self._inflight:
            return
        done = asyncio.get_running_loop().create_future()
        (self._waiters if self._pending else self._inflight_waiters).append(done)
        await done

    async def load(self, table: str) -> dict[bytes, bytes]:
        return await self.storage.load_all(table)

    async def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued (for at most `timeout`), then closes the storage."""
        if self.failed is None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.flush(), timeout)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.storage.close()

    # -- the writer --------------------------------------------------------------------------------
    def _kick(self) -> None:
        if self._task is None and self.failed is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                queued, self._pending = self._pending, {}
                waiters = self._inflight_waiters = self._waiters
                self._waiters = []
                self._inflight = True
                try:
                    await self._apply({k: v() if callable(v) else v for k, v in queued.items()})
                except asyncio.CancelledError:
                    raise
                except Exception as e:
                    self._fail(e, [*waiters, *self._waiters])
                    return
                finally:
                    self._inflight = False
                self.batches_written += 1
                for w in waiters:
                    if not w.done():
                        w.set_result(None)

    async def _apply(self, batch: Batch) -> None:
        deadline = time.monotonic() + WRITE_RETRY_S
        delay = 0.05
        while True:
            try:
                await self.storage.apply(batch)
                return
            except Exception as e:
                if time.monotonic() + delay > deadline:
                    raise
                log.warning(
                    "writing to the GCS storage %s failed (%s); retrying", self.storage.description, e
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    def _fail(self, error: Exception, waiters: list[asyncio.Future[None]]) -> None:
        self.failed = error
        log.error("the GCS storage %s keeps failing: %s", self.storage.description, error)
        failure = StorageError(f"the GCS storage {self.storage.description} failed: {error}")
        for w in waiters:
            if not w.done():
                w.set_exception(failure)
        if self._on_fatal is not None:
            self._on_fatal(error)


__all__ = [
    "GcsStorage",
    "MemoryStorage",
    "RedisStorage",
    "SqliteStorage",
    "StorageError",
    "Tables",
    "open_storage",
]
