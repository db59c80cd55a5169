"""Ray's actor semantics, part two: methods wrapped by decorators, handles travelling through tasks,
actors, return values and pickles, actors and tasks defined or used inside one another, and what
`dir()` shows of actor classes and handles."""

from __future__ import annotations

import asyncio
import functools
import pickle

import pytest

import aioray


def tagging(method):
    """A decorator that keeps the method's name and signature (functools.wraps)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return ("tagged", method(self, *args, **kwargs))

    return wrapper


def plain_tagging(method):
    """The same decorator without functools.wraps: the wrapper's own (self, *args, **kwargs)."""

    def wrapper(self, *args, **kwargs):
        return ("plain", method(self, *args, **kwargs))

    return wrapper


def counting(method):
    """A wraps-decorator whose wrapper takes everything positionally, self included."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        args[0].calls += 1
        return method(*args, **kwargs)

    return wrapper


def async_tagging(method):
    """A wraps-decorator for coroutine methods whose wrapper is itself a coroutine function."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        return ("async", await method(self, *args, **kwargs))

    return wrapper


@aioray.remote
class Decorated:
    def __init__(self):
        self.calls = 0

    @tagging
    def wrapped(self, a, b=2, *, c=3):
        return a + b + c

    @plain_tagging
    def unwrapped(self, a, b=2):
        return a * b

    @counting
    def counted(self, x):
        return x + self.calls

    @aioray.method(num_returns=2)
    @tagging
    def two(self, a):
        return a

    @tagging
    @aioray.method(num_returns=2)
    def two_inside_wraps(self, a):
        return a

    @plain_tagging
    @aioray.method(num_returns=2)
    def two_inside_plain(self, a):
        return a


def test_wraps_decorated_method_runs_the_decorator_and_keeps_arguments(ray) -> None:
    d = Decorated.remote()
    assert ray.get(d.wrapped.remote(1), timeout=30) == ("tagged", 6)
    assert ray.get(d.wrapped.remote(1, 1, c=1), timeout=30) == ("tagged", 3)
    assert ray.get(d.wrapped.remote(a=5, b=0), timeout=30) == ("tagged", 8)


def test_wraps_decorated_method_rejects_wrong_arity_at_submission(ray) -> None:
    d = Decorated.remote()
    # functools.wraps exposes the original signature, and Ray checks calls against it.
    with pytest.raises(TypeError):
        d.wrapped.remote()
    with pytest.raises(TypeError):
        d.wrapped.remote(1, 2, 3)
    with pytest.raises(TypeError):
        d.wrapped.remote(1, d=4)
    assert ray.get(d.wrapped.remote(0), timeout=30) == ("tagged", 5)


def test_plain_decorated_method_runs_and_errors_surface_from_the_call(ray) -> None:
    d = Decorated.remote()
    assert ray.get(d.unwrapped.remote(3), timeout=30) == ("plain", 6)
    assert ray.get(d.unwrapped.remote(3, b=3), timeout=30) == ("plain", 9)
    # The wrapper accepts anything, so a bad call is submitted and fails inside the method.
    with pytest.raises(TypeError):
        ray.get(d.unwrapped.remote(), timeout=30)
    with pytest.raises(TypeError):
        ray.get(d.unwrapped.remote(1, 2, 3), timeout=30)
    # The actor survives a call that failed on its arguments.
    assert ray.get(d.unwrapped.remote(2), timeout=30) == ("plain", 4)


def test_decorator_taking_self_positionally(ray) -> None:
    d = Decorated.remote()
    assert ray.get(d.counted.remote(10), timeout=30) == 11
    assert ray.get(d.counted.remote(10), timeout=30) == 12
    with pytest.raises(TypeError):
        d.counted.remote()


def test_num_returns_over_a_decorated_method(ray) -> None:
    d = Decorated.remote()
    a, b = d.two.remote(7)
    assert ray.get([a, b], timeout=30) == ["tagged", 7]


def test_num_returns_set_under_a_decorator(ray) -> None:
    d = Decorated.remote()
    # functools.wraps copies the method's attributes, so the num_returns set below it still counts.
    a, b = d.two_inside_wraps.remote(1)
    assert ray.get([a, b], timeout=30) == ["tagged", 1]
    # A plain wrapper drops them: one return value.
    assert ray.get(d.two_inside_plain.remote(1), timeout=30) == ("plain", 1)


def test_decorated_coroutine_method_makes_an_async_actor(ray) -> None:
    @ray.remote
    class AsyncDecorated:
        def __init__(self):
            self.event = asyncio.Event()

        @async_tagging
        async def wait(self, x):
            await self.event.wait()
            return x

        @async_tagging
        async def release(self):
            self.event.set()

    a = AsyncDecorated.remote()
    waiting = a.wait.remote(5)
    ray.get(a.release.remote(), timeout=30)
    assert ray.get(waiting, timeout=30) == ("async", 5)
    with pytest.raises(TypeError):
        a.wait.remote()


def test_handle_passed_to_tasks_and_actors(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    @ray.remote
    class Forwarder:
        def inc(self, handle):
            return aioray.get(handle.inc.remote())

    @ray.remote
    def bump(handle, times):
        return [aioray.get(handle.inc.remote()) for _ in range(times)]

    c = Counter.remote()
    f = Forwarder.remote()
    assert ray.get(f.inc.remote(c), timeout=30) == 1
    assert ray.get(f.inc.remote(c), timeout=30) == 2
    assert ray.get(bump.remote(c, 3), timeout=30) == [3, 4, 5]
    # Handles nested inside containers travel too.
    assert ray.get(bump.remote({"h": c}["h"], 1), timeout=30) == [6]
    assert ray.get(c.inc.remote(), timeout=30) == 7


def test_handle_inside_a_container_argument(ray) -> None:
    @ray.remote
    class Echo:
        def echo(self, x):
            return x

    @ray.remote
    def call_all(handles):
        return aioray.get([h["actor"].echo.remote(i) for i, h in enumerate(handles)])

    echoes = [Echo.remote() for _ in range(3)]
    assert ray.get(call_all.remote([{"actor": e} for e in echoes]), timeout=30) == [0, 1, 2]


def test_pickled_handle_still_calls_the_same_actor(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self):
            self.n = 0

        def inc(self):
            self.n += 1
            return self.n

    c = Counter.remote()
    copy = c
    for _ in range(5):
        copy = pickle.loads(pickle.dumps(copy))
    assert ray.get(copy.inc.remote(), timeout=30) == 1
    assert ray.get(c.inc.remote(), timeout=30) == 2

    @ray.remote
    def use_pickled(blob):
        handle = pickle.loads(blob)
        return aioray.get(handle.inc.remote())

    assert ray.get(use_pickled.remote(pickle.dumps(c)), timeout=30) == 3


def test_handles_returned_from_actors_bare_and_in_a_list(ray) -> None:
    @ray.remote
    class Inner:
        def ping(self):
            return "pong"

    @ray.remote
    class Outer:
        def __init__(self):
            self.inner = Inner.remote()

        def bare(self):
            return self.inner

        def listed(self):
            return [self.inner]

    outer = Outer.remote()
    assert ray.get(ray.get(outer.bare.remote(), timeout=30).ping.remote(), timeout=30) == "pong"
    inner_list = ray.get(outer.listed.remote(), timeout=30)
    assert ray.get(inner_list[0].ping.remote(), timeout=30) == "pong"


def test_actor_created_in_a_task_outlives_the_task_while_its_ref_is_used(ray) -> None:
    @ray.remote
    class Actor:
        def f(self):
            return 0

    @ray.remote
    def make():
        a = Actor.remote()
        return [a.f.remote()]

    inner_ref = ray.get(make.remote(), timeout=30)[0]
    assert ray.get(inner_ref, timeout=30) == 0


def test_remote_functions_and_refs_inside_an_actor(ray) -> None:
    offset = 1
    second = 2

    @ray.remote
    def f(x):
        return offset + x

    @ray.remote
    def g(x):
        return aioray.get(f.remote(x))

    @ray.remote
    class User:
        def __init__(self, x):
            self.x = x
            self.y = second
            self.refs = [f.remote(i) for i in range(5)]
            self.values = aioray.get([f.remote(i) for i in range(5)])

        def state(self):
            return self.x, self.y, self.refs, self.values

        def refs_of_f(self):
            return [f.remote(i) for i in range(5)]

        def via_g(self):
            return aioray.get([g.remote(i) for i in range(5)])

        def resolve(self, refs):
            return aioray.get(refs)

    u = User.remote(1)
    x, y, refs, values = ray.get(u.state.remote(), timeout=30)
    expected = [1, 2, 3, 4, 5]
    assert (x, y, values) == (1, 2, expected)
    assert ray.get(refs, timeout=30) == expected
    assert ray.get(ray.get(u.refs_of_f.remote(), timeout=30), timeout=30) == expected
    assert ray.get(u.via_g.remote(), timeout=30) == expected
    assert ray.get(u.resolve.remote([f.remote(i) for i in range(5)]), timeout=30) == expected


def test_actors_defined_and_used_inside_actors_and_tasks(ray) -> None:
    @ray.remote
    class Leaf:
        def __init__(self, x):
            self.x = x

        def get(self):
            return self.x

    @ray.remote
    class Maker:
        def __init__(self, x):
            self.x = x
            self.leaf = Leaf.remote(x + 1)

        def define_and_use(self, z):
            @aioray.remote
            class Local:
                def __init__(self, v):
                    self.v = v

                def get(self):
                    return self.v

            return self.x, aioray.get(self.leaf.get.remote()), aioray.get(Local.remote(z).get.remote())

    @ray.remote
    def in_task(x, n):
        @aioray.remote
        class Local:
            def __init__(self, v):
                self.v = v

            def get(self):
                return self.v

        a = Local.remote(x)
        return aioray.get([a.get.remote() for _ in range(n)])

    m = Maker.remote(3)
    assert ray.get(m.define_and_use.remote(5), timeout=30) == (3, 4, 5)
    assert ray.get([in_task.remote(i, 3) for i in range(3)], timeout=30) == [[i] * 3 for i in range(3)]


def test_latest_definition_of_a_remote_function_is_used_by_actors(ray) -> None:
    for i in range(10):

        @ray.remote
        def f(i=i):
            return i

    @ray.remote
    def g():
        @aioray.remote
        class A:
            def __init__(self):
                self.x = aioray.get(f.remote())

            def get(self):
                return self.x

        return aioray.get(A.remote().get.remote())

    assert ray.get(g.remote(), timeout=30) == 9


def test_dir_of_actor_class_lists_its_methods(ray) -> None:
    @ray.remote
    class Foo:
        def method_one(self) -> None:
            pass

    assert {n for n in dir(Foo) if not n.startswith("_")} == {"method_one", "options", "remote"}


def test_dir_of_actor_handle_and_method(ray) -> None:
    @ray.remote
    class Foo:
        def method_one(self) -> None:
            pass

    f = Foo.remote()
    assert [n for n in dir(f) if not n.startswith("_")] == ["method_one"]
    assert {"method_one", "__ray_terminate__"} <= set(dir(f))
    assert {n for n in dir(f.method_one) if not n.startswith("_")} == {"options", "remote"}


def test_any_public_method_name_is_callable_through_the_handle(ray) -> None:
    @ray.remote
    class Names:
        def actor_id(self):
            return "user actor_id"

        def get(self):
            return "user get"

        def kill(self):
            return "user kill"

    n = Names.remote()
    # Ray's handle keeps its own state under underscore names, so user method names never clash.
    assert ray.get([n.get.remote(), n.kill.remote()], timeout=30) == ["user get", "user kill"]
    assert ray.get(n.actor_id.remote(), timeout=30) == "user actor_id"


@aioray.remote(num_cpus=0)
class Server:
    def pid(self):
        import os

        return os.getpid()


@aioray.remote(num_cpus=0)
class HoldsServers:
    def __init__(self, servers):
        self.servers = servers if isinstance(servers, list) else [servers]

    def pids(self):
        return aioray.get([s.pid.remote() for s in self.servers], timeout=30)

    def die(self):
        import os

        os._exit(1)


@pytest.mark.parametrize("nested", [False, True])
def test_a_handle_passed_only_to_a_constructor_keeps_its_actor_alive(ray, nested) -> None:
    # The driver drops its own handle at once: the constructor, which runs later, borrows it.
    holder = HoldsServers.remote([Server.remote()] if nested else Server.remote())
    import gc

    gc.collect()
    assert len(aioray.get(holder.pids.remote(), timeout=60)) == 1


def test_the_arguments_of_a_restartable_actor_live_until_it_is_dead(ray) -> None:
    holder = HoldsServers.options(max_restarts=1).remote([Server.remote()])
    first = aioray.get(holder.pids.remote(), timeout=60)
    with pytest.raises(aioray.exceptions.RayActorError):
        aioray.get(holder.die.remote(), timeout=60)
    # The restarted constructor gets the same handle, and its actor is still there.
    for _ in range(100):
        try:
            assert aioray.get(holder.pids.remote(), timeout=60) == first
            break
        except aioray.exceptions.RayActorError:
            import time

            time.sleep(0.2)
    else:
        raise AssertionError("the actor did not come back")
