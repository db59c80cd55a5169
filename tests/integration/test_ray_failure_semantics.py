"""Ray's failure semantics, as Ray's own test_failure.py checks them through the public API.

How errors of tasks and actors reach the caller: the user's exception class, nested failures,
exceptions that cannot be pickled or unpickled, timeouts, bad calls, failed imports, failed
constructors and dying workers.
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest

import aioray
from aioray.exceptions import (
    GetTimeoutError,
    RayActorError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)
from aioray.testing import SignalActor, wait_for_condition

T = 30  # timeout of every blocking get


class InventoryError(Exception):
    """A user exception with its own state."""

    def __init__(self, message, item=None):
        super().__init__(message)
        self.item = item


class TwoArgError(Exception):
    """Pickles (its args are the formatted message) but cannot be unpickled: __init__ needs two."""

    def __init__(self, what, code):
        super().__init__(f"{what} failed with code {code}")


class RefusesPickling(Exception):
    def __reduce__(self):
        raise TypeError("this exception refuses to be pickled")


# --- Exceptions raised by tasks ------------------------------------------------------------


def test_user_exception_class_and_state_reach_the_caller(ray) -> None:
    @ray.remote
    def out_of_stock():
        raise InventoryError("no more widgets", item="widget")

    with pytest.raises(InventoryError) as info:
        ray.get(out_of_stock.remote(), timeout=T)
    err = info.value
    assert isinstance(err, RayTaskError)
    assert isinstance(err.cause, InventoryError)
    assert err.cause.item == "widget"
    assert "no more widgets" in str(err)
    assert "out_of_stock" in str(err)


def test_builtin_exception_is_catchable_as_itself(ray) -> None:
    @ray.remote
    def bad_key():
        return {}["missing"]

    with pytest.raises(KeyError):
        ray.get(bad_key.remote(), timeout=T)


def test_plain_exception_arrives_as_ray_task_error_itself(ray) -> None:
    """Ray: a cause of class Exception gives a plain RayTaskError (no dual class is needed)."""

    @ray.remote
    def fails():
        raise Exception("plain failure")

    with pytest.raises(RayTaskError) as info:
        ray.get(fails.remote(), timeout=T)
    assert type(info.value) is RayTaskError
    assert "plain failure" in str(info.value)


def test_nested_task_errors_chain(ray) -> None:
    @ray.remote
    def inner():
        return 1 / 0

    @ray.remote
    def outer():
        return aioray.get(inner.remote(), timeout=T)

    with pytest.raises(ZeroDivisionError) as info:
        ray.get(outer.remote(), timeout=T)
    assert isinstance(info.value, RayTaskError)
    text = str(info.value)
    assert "inner" in text and "outer" in text


def test_caught_nested_error_is_the_user_class_inside_the_task(ray) -> None:
    @ray.remote
    def inner():
        raise InventoryError("inner failed", item=7)

    @ray.remote
    def outer():
        try:
            aioray.get(inner.remote(), timeout=T)
        except InventoryError as e:
            return ("caught", e.item, isinstance(e, RayTaskError))
        return ("not caught",)

    assert ray.get(outer.remote(), timeout=T) == ("caught", 7, True)


def test_exception_that_fails_to_pickle_arrives_as_ray_error_with_its_text(ray) -> None:
    @ray.remote
    def raise_unpicklable():
        raise RefusesPickling("the original message")

    with pytest.raises(RayError) as info:
        ray.get(raise_unpicklable.remote(), timeout=T)
    assert "the original message" in str(info.value)
    # The worker survived and runs the next task.
    assert ray.get(ray.remote(lambda: 5).remote(), timeout=T) == 5


def test_exception_that_fails_to_unpickle_arrives_as_ray_error_with_its_text(ray) -> None:
    @ray.remote
    def raise_two_arg():
        raise TwoArgError("checkout", 17)

    with pytest.raises(RayError) as info:
        ray.get(raise_two_arg.remote(), timeout=T)
    assert "checkout failed with code 17" in str(info.value)


def test_exception_from_an_actor_method_that_fails_to_pickle(ray) -> None:
    @ray.remote(num_cpus=0)
    class Raiser:
        def go(self):
            raise RefusesPickling("actor side text")

        def ping(self):
            return "pong"

    raiser = Raiser.remote()
    with pytest.raises(RayError) as info:
        ray.get(raiser.go.remote(), timeout=T)
    assert "actor side text" in str(info.value)
    assert ray.get(raiser.ping.remote(), timeout=T) == "pong"


def test_exception_with_a_registered_serializer(ray) -> None:
    class NoPickleError(OSError):
        def __init__(self, msg):
            self.msg = msg

        def __str__(self):
            return f"message: {self.msg}"

    def _serialize(e):
        return {"msg": e.msg + " serialized"}

    def _deserialize(state):
        return NoPickleError(state["msg"] + " deserialized")

    # As in Ray, a serializer applies to what the registering process sends: the task registers it.
    @ray.remote
    def raise_custom():
        ray.util.register_serializer(NoPickleError, serializer=_serialize, deserializer=_deserialize)
        raise NoPickleError("message")

    with pytest.raises(NoPickleError) as info:
        ray.get(raise_custom.remote(), timeout=T)
    assert str(info.value.cause) == "message: message serialized deserialized"

    # Registered here, it applies to what the driver sends (put, arguments); the deserializer travels
    # with the value.
    ray.util.register_serializer(NoPickleError, serializer=_serialize, deserializer=_deserialize)
    try:
        assert (
            str(ray.get(ray.put(NoPickleError("put")), timeout=T)) == "message: put serialized deserialized"
        )

        @ray.remote
        def describe(error):
            return str(error)

        assert (
            ray.get(describe.remote(NoPickleError("arg")), timeout=T)
            == "message: arg serialized deserialized"
        )
    finally:
        ray.util.deregister_serializer(NoPickleError)
    ray.util.deregister_serializer(NoPickleError)  # twice: no effect, as in Ray


# --- get with timeouts -------------------------------------------------------------------------


def test_get_timeout_raises_get_timeout_error(ray) -> None:
    signal = SignalActor.remote()
    pending = signal.wait.remote()
    for timeout in (0, 0.1):
        with pytest.raises(GetTimeoutError) as info:
            ray.get(pending, timeout=timeout)
        assert isinstance(info.value, TimeoutError)
    with pytest.raises(GetTimeoutError):
        ray.get([ray.put(1), pending], timeout=0.2)
    ray.get(signal.send.remote(), timeout=T)
    assert ray.get(pending, timeout=T) is None
    # A ready object is returned even with timeout=0.
    assert ray.get(ray.put("ready"), timeout=0) == "ready"


def test_get_rejects_a_negative_timeout(ray) -> None:
    with pytest.raises(ValueError):
        ray.get(ray.put(1), timeout=-1)


def test_timeout_inside_a_task_reaches_the_caller_as_a_plain_ray_task_error(ray) -> None:
    """Ray makes a RayTaskError an instance of its cause's class, except for Ray's own errors
    (``issubclass(cause_cls, RayError)``): those arrive as a plain RayTaskError with the cause."""
    signal = SignalActor.remote()

    @ray.remote
    def impatient(refs):
        return aioray.get(refs[0], timeout=0.2)

    with pytest.raises(RayTaskError) as info:
        ray.get(impatient.remote([signal.wait.remote()]), timeout=T)
    assert isinstance(info.value.cause, GetTimeoutError)
    assert type(info.value) is RayTaskError
    assert not isinstance(info.value, GetTimeoutError)
    ray.get(signal.send.remote(), timeout=T)


def test_consumer_of_a_cancelled_result_gets_task_cancelled_error(ray) -> None:
    """A task whose argument was cancelled fails with TaskCancelledError itself, not a RayTaskError
    wrapping it (issue #18; Ray's own cancel tests accept either)."""
    signal = SignalActor.remote()

    @ray.remote
    def blocked(refs):
        return aioray.get(refs[0], timeout=60)

    @ray.remote
    def consume(x):
        return x

    upstream = blocked.remote([signal.wait.remote()])
    consumer = consume.remote(upstream)
    assert ray.wait([upstream], timeout=0.3)[0] == []
    ray.cancel(upstream)
    with pytest.raises(TaskCancelledError):
        ray.get(upstream, timeout=T)
    with pytest.raises(TaskCancelledError) as info:
        ray.get(consumer, timeout=T)
    assert not isinstance(info.value, RayTaskError)
    ray.get(signal.send.remote(), timeout=T)


def test_list_get_raises_quickly_on_an_actor_method_failure(ray) -> None:
    @ray.remote(num_cpus=0, max_concurrency=2)
    class Mixed:
        def fail(self):
            raise Exception("method intentionally failed")

        def slow(self, signal):
            aioray.get(signal.wait.remote(), timeout=60)

    signal = SignalActor.remote()
    actor = Mixed.remote()
    start = time.monotonic()
    with pytest.raises(RayError) as info:
        ray.get([actor.fail.remote(), actor.slow.remote(signal)], timeout=T)
    assert type(info.value) is RayTaskError
    assert time.monotonic() - start < 15
    ray.get(signal.send.remote(), timeout=T)


def test_list_get_raises_quickly_when_the_actor_dies(ray) -> None:
    @ray.remote(num_cpus=0, max_concurrency=2)
    class Dies:
        def die(self):
            os._exit(0)

        def slow(self, signal):
            aioray.get(signal.wait.remote(), timeout=60)

    signal = SignalActor.remote()
    actor = Dies.remote()
    start = time.monotonic()
    with pytest.raises(RayActorError):
        ray.get([actor.die.remote(), actor.slow.remote(signal)], timeout=T)
    assert time.monotonic() - start < 15
    ray.get(signal.send.remote(), timeout=T)


# --- Bad calls, failed imports, failed definitions -------------------------------------------


def test_wrong_arguments_are_refused_at_the_call(ray) -> None:
    @ray.remote
    def two(a, b):
        return a + b

    @ray.remote(num_cpus=0)
    class Needs:
        def __init__(self, required):
            self.required = required

        def get_val(self, x):
            return x

    with pytest.raises(TypeError):
        two.remote(1)
    with pytest.raises(TypeError):
        two.remote(1, 2, 3)
    with pytest.raises(TypeError):
        Needs.remote()
    with pytest.raises(TypeError):
        Needs.remote(1, 2)
    actor = Needs.remote(1)
    with pytest.raises(TypeError):
        actor.get_val.remote()
    with pytest.raises(TypeError):
        actor.get_val.remote(1, 2)
    with pytest.raises(AttributeError):
        actor.nonexistent_method()
    with pytest.raises(AttributeError):
        actor.nonexistent_method.remote()
    assert ray.get(actor.get_val.remote(3), timeout=T) == 3


def test_calling_a_remote_function_directly_is_refused(ray) -> None:
    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError):
        f()


@pytest.fixture
def driver_only_module(tmp_path):
    """A module importable by the driver only: the workers do not have its folder on sys.path."""
    name = f"driver_only_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("def helper():\n    return 1\n")
    sys.path.append(str(tmp_path))
    try:
        yield __import__(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_function_that_fails_to_import_on_the_worker(ray, driver_only_module) -> None:
    module = driver_only_module

    @ray.remote
    def uses_module(x, y=3):
        return module.helper() + x + y

    # Every call fails with the import error, and none of them hangs.
    for _ in range(3):
        with pytest.raises(RayTaskError, match="No module named"):
            ray.get(uses_module.remote(1, y=2), timeout=T)


def test_actor_that_fails_to_import_on_the_worker(ray, driver_only_module) -> None:
    module = driver_only_module

    @ray.remote(num_cpus=0)
    class UsesModule:
        def __init__(self):
            self.value = module.helper()

        def get(self):
            return self.value

    actor = UsesModule.remote()
    with pytest.raises(RayActorError, match="No module named"):
        ray.get(actor.get.remote(), timeout=T)


def test_unpicklable_remote_function_is_refused_at_definition_or_call(ray) -> None:
    import threading

    lock = threading.Lock()

    def body():
        with lock:
            return 1

    with pytest.raises(TypeError):
        ray.remote(body).remote()


# --- Actor constructor and method failures -------------------------------------------------


def test_failed_constructor_fails_every_method_call_with_its_message(ray) -> None:
    @ray.remote(num_cpus=0)
    class Broken:
        def __init__(self):
            raise InventoryError("actor constructor failed")

        def method(self):
            return "never"

    broken = Broken.remote()
    for _ in range(2):
        with pytest.raises(RayActorError) as info:
            ray.get(broken.method.remote(), timeout=T)
        assert "actor constructor failed" in str(info.value)
    with pytest.raises(RayActorError):
        ray.get(broken.__ray_ready__.remote(), timeout=T)


def test_failed_actor_method_keeps_the_actor(ray) -> None:
    @ray.remote(num_cpus=0)
    class Counter:
        def __init__(self):
            self.n = 0

        def fail(self):
            self.n += 1
            raise InventoryError("actor method failed", item=self.n)

        def count(self):
            return self.n

    counter = Counter.remote()
    with pytest.raises(InventoryError) as info:
        ray.get(counter.fail.remote(), timeout=T)
    assert isinstance(info.value, RayTaskError)
    assert info.value.cause.item == 1
    assert "actor method failed" in str(info.value)
    assert ray.get(counter.count.remote(), timeout=T) == 1


# --- Dying workers ---------------------------------------------------------------------------


def test_task_that_exits_its_worker_raises_worker_crashed(ray) -> None:
    @ray.remote(max_retries=0)
    def calls_exit():
        eval("exit()")

    @ray.remote(max_retries=0)
    def hard_exit():
        os._exit(1)

    with pytest.raises(WorkerCrashedError):
        ray.get(calls_exit.remote(), timeout=T)
    with pytest.raises(WorkerCrashedError):
        ray.get(hard_exit.remote(), timeout=T)
    # The cluster replaces the worker.
    assert ray.get(ray.remote(lambda: "alive").remote(), timeout=T) == "alive"


def test_task_that_exits_its_worker_is_retried(ray, tmp_path) -> None:
    marker = tmp_path / "attempts"

    @ray.remote(max_retries=2)
    def exit_once(path):
        with open(path, "a") as f:
            f.write("x")
        if os.path.getsize(path) == 1:
            os._exit(1)
        return "second attempt"

    assert ray.get(exit_once.remote(str(marker)), timeout=T) == "second attempt"
    assert marker.read_text() == "xx"


def test_actor_method_that_exits_the_worker(ray) -> None:
    @ray.remote(num_cpus=0)
    class Quitter:
        def quit(self):
            eval("exit()")

    @ray.remote
    def consume(x):
        return x

    quitter = Quitter.remote()
    ref = quitter.quit.remote()
    with pytest.raises(RayActorError):
        ray.get(ref, timeout=T)
    # A task fed the failed result fails as a RayTaskError (Ray wraps the dependency's error; its
    # cause is a Ray error, so the RayTaskError is not made an instance of the cause's class).
    with pytest.raises(RayTaskError) as info:
        ray.get(consume.remote(ref), timeout=T)
    assert isinstance(info.value.cause, RayActorError)


def test_killed_actor_process_fails_queued_and_later_calls(ray) -> None:
    @ray.remote(num_cpus=0, max_restarts=0)
    class Sleeper:
        def pid(self):
            return os.getpid()

        def nap(self):
            time.sleep(0.5)

    actor = Sleeper.remote()
    pid = ray.get(actor.pid.remote(), timeout=T)
    before = [actor.nap.remote() for _ in range(5)]
    os.kill(pid, 9)
    time.sleep(0.1)
    after = [actor.nap.remote() for _ in range(5)]
    for ref in before + after:
        with pytest.raises(RayActorError):
            ray.get(ref, timeout=T)


def test_killed_idle_actor_fails_the_next_call_fast(ray) -> None:
    @ray.remote(num_cpus=0, max_restarts=0)
    class Idle:
        def pid(self):
            return os.getpid()

    actor = Idle.remote()
    pid = ray.get(actor.pid.remote(), timeout=T)
    os.kill(pid, 9)
    time.sleep(0.1)
    start = time.monotonic()
    with pytest.raises(RayActorError):
        ray.get(actor.pid.remote(), timeout=T)
    assert time.monotonic() - start < 15


def test_terminated_actor_fails_later_calls(ray) -> None:
    @ray.remote(num_cpus=0)
    class Service:
        def ping(self):
            return "pong"

    service = Service.remote()
    assert ray.get(service.ping.remote(), timeout=T) == "pong"
    service.__ray_terminate__.remote()

    def later_calls_fail():
        try:
            ray.get(service.ping.remote(), timeout=T)
        except RayActorError:
            return True
        return False

    wait_for_condition(later_calls_fail, timeout=20)
