"""What tests of aioray programs reach for: cluster fixtures, a signal and a semaphore actor, polling.

Ray's users write ``ray_start_regular``, ``SignalActor`` and ``wait_for_condition`` in their tests;
here they are ``aioray_cluster``, `SignalActor` and `wait_for_condition`. The fixtures need
pytest; register them in a root ``conftest.py`` with ``pytest_plugins = ["aioray.testing"]`` or by
importing them into a test module (``from aioray.testing import aioray_cluster``)::

    import pytest
    import aioray
    from aioray.testing import SignalActor, aioray_cluster  # noqa: F401 (the fixture)

    @pytest.mark.parametrize("aioray_cluster", [{"num_cpus": 4}], indirect=True)
    def test_waits(aioray_cluster):
        signal = SignalActor.remote()
        ref = waiter.remote(signal)
        ...
        aioray.get(signal.send.remote())

The actors and `wait_for_condition` work without pytest (worker processes import this module to
run `SignalActor` and `Semaphore`); ``import aioray`` does not import this module.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from aioray._private import api, worker_api
from aioray._private.actor import ActorClass
from aioray.cluster_utils import Cluster

if TYPE_CHECKING:
    import pytest
else:
    try:
        import pytest
    except ImportError:  # the actors and helpers below do not need it
        pytest = None

MiB = 1 << 20
# Ray's ray_start_regular starts one CPU and a 150 MiB store unless a test asks for more.
DEFAULT_INIT_ARGS: dict[str, Any] = {"num_cpus": 1, "object_store_memory": 150 * MiB}


class _SignalActor:
    """An event that tasks and actors wait on until the test sends it (Ray's test_utils.SignalActor).

    ``wait.remote()`` finishes once ``send.remote()`` was called (at once if it was already, or if
    ``should_wait=False``); ``send(clear=True)`` wakes the current waiters and resets the event, so
    later waits block again. ``cur_num_waiters`` counts the waits blocked now.
    """

    def __init__(self) -> None:
        self.ready_event = asyncio.Event()
        self.num_waiters = 0

    async def send(self, clear: bool = False) -> None:
        self.ready_event.set()
        if clear:
            self.ready_event.clear()

    async def wait(self, should_wait: bool = True) -> None:
        if should_wait:
            self.num_waiters += 1
            try:
                await self.ready_event.wait()
            finally:
                self.num_waiters -= 1

    async def cur_num_waiters(self) -> int:
        return self.num_waiters


class _Semaphore:
    """An asyncio.Semaphore shared by tasks and actors (Ray's test_utils.Semaphore): ``acquire``
    waits for a unit, ``release`` returns one, ``locked`` tells whether none is free."""

    def __init__(self, value: int = 1) -> None:
        self._sema = asyncio.Semaphore(value=value)

    async def acquire(self) -> None:
        await self._sema.acquire()

    async def release(self) -> None:
        self._sema.release()

    async def locked(self) -> bool:
        return self._sema.locked()


def _actor(cls: type, name: str) -> ActorClass:
    # As in Ray, they need no CPU: a test can wait on them with every CPU busy.
    cls.__name__ = cls.__qualname__ = name  # what errors and handles call the actor
    return ActorClass(cls, {"num_cpus": 0})


SignalActor = _actor(_SignalActor, "SignalActor")
Semaphore = _actor(_Semaphore, "Semaphore")


def wait_for_condition(
    condition_predictor: Callable[..., Any],
    timeout: float = 10,
    retry_interval_ms: float = 100,
    raise_exceptions: bool = False,
    **kwargs: Any,
) -> None:
    """Calls ``condition_predictor(**kwargs)`` every `retry_interval_ms` until it returns true.

    Raises RuntimeError if it did not within `timeout` seconds, naming the last exception the
    predicate raised (exceptions count as false, unless `raise_exceptions`).
    """
    start = time.monotonic()
    last_ex: str | None = None
    while time.monotonic() - start <= timeout:
        try:
            if condition_predictor(**kwargs):
                return
        except Exception:
            if raise_exceptions:
                raise
            last_ex = traceback.format_exc()
        time.sleep(retry_interval_ms / 1000.0)
    message = "The condition wasn't met before the timeout expired."
    if last_ex is not None:
        message += f" Last exception: {last_ex}"
    raise RuntimeError(message)


async def async_wait_for_condition(
    condition_predictor: Callable[..., Awaitable[Any] | Any],
    timeout: float = 10,
    retry_interval_ms: float = 100,
    **kwargs: Any,
) -> None:
    """`wait_for_condition` for async code: the predicate may be a coroutine function, and the
    waits between tries do not block the event loop."""
    start = time.monotonic()
    last_ex: BaseException | None = None
    while time.monotonic() - start <= timeout:
        try:
            result = condition_predictor(**kwargs)
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
        except Exception as ex:
            last_ex = ex
        await asyncio.sleep(retry_interval_ms / 1000.0)
    message = "The condition wasn't met before the timeout expired."
    if last_ex is not None:
        message += f" Last exception: {last_ex!r}"
    raise RuntimeError(message)


def _init_args(request: Any) -> dict[str, Any]:
    """The fixture's init arguments: the defaults, updated with ``request.param`` (indirect
    parametrization) when there is one."""
    param = getattr(request, "param", None)
    if param is not None and not isinstance(param, dict):
        raise TypeError(
            f"parametrize an aioray cluster fixture with a dict of init() arguments, not {param!r}"
        )
    return {**DEFAULT_INIT_ARGS, **(param or {})}


def _start(request: Any) -> Iterator[api.InitContext]:
    if worker_api.current() is not None:
        raise RuntimeError(
            "aioray is already initialised when an aioray cluster fixture starts: a test or fixture "
            "before it did not call aioray.shutdown()"
        )
    context = api.init(**_init_args(request))
    try:
        yield context
    finally:
        api.shutdown()


if pytest is not None:

    @pytest.fixture
    def aioray_cluster(request: pytest.FixtureRequest) -> Iterator[api.InitContext]:
        """An embedded cluster for one test (Ray's ``ray_start_regular``): ``aioray.init(num_cpus=1,
        object_store_memory=150 MiB)``, then ``aioray.shutdown()``. Other init arguments through
        ``@pytest.mark.parametrize("aioray_cluster", [{"num_cpus": 4}], indirect=True)``. Yields
        what ``init`` returns (``["address"]`` is the GCS address)."""
        yield from _start(request)

    @pytest.fixture(scope="module")
    def aioray_cluster_shared(request: pytest.FixtureRequest) -> Iterator[api.InitContext]:
        """`aioray_cluster` shared by the tests of a module (Ray's ``ray_start_regular_shared``);
        parametrized the same way."""
        yield from _start(request)

    @pytest.fixture
    def aioray_shutdown_only() -> Iterator[None]:
        """For a test that calls ``aioray.init()`` itself (Ray's ``shutdown_only``): shuts down after it."""
        try:
            yield None
        finally:
            api.shutdown()

    @pytest.fixture
    def aioray_start_cluster() -> Iterator[Cluster]:
        """An empty multi-node `aioray.cluster_utils.Cluster` (Ray's ``ray_start_cluster``): the test
        adds nodes (the first is the head) and connects; afterwards the driver is disconnected and
        every node stopped."""
        cluster = Cluster()
        try:
            yield cluster
        finally:
            cluster.shutdown()


__all__ = [
    "Semaphore",
    "SignalActor",
    "aioray_cluster",
    "aioray_cluster_shared",
    "aioray_shutdown_only",
    "aioray_start_cluster",
    "async_wait_for_condition",
    "wait_for_condition",
]
