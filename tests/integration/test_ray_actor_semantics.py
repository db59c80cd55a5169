"""Ray's actor semantics, as its own test_actor.py checks them through the public API: constructor and
method arguments, class features (class/static methods, inheritance, class attributes), multiple
returns, misuse errors, and actors used from tasks and other actors."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest

import aioray
from aioray.testing import SignalActor, wait_for_condition


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still answers kill(0); it has exited all the same.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_constructor_and_method_keyword_arguments(ray) -> None:
    @ray.remote
    class Adder:
        def __init__(self, base, step=1, tag="x"):
            self.base, self.step, self.tag = base, step, tag

        def add(self, a, b=10, suffix="!"):
            return self.base + a, self.step + b, self.tag + suffix

    assert ray.get(Adder.remote(0).add.remote(1), timeout=30) == (1, 11, "x!")
    assert ray.get(Adder.remote(1, 2, "q").add.remote(3, 4, "?"), timeout=30) == (4, 6, "q?")
    by_name = Adder.remote(5, tag="t")
    assert ray.get(by_name.add.remote(0, suffix="s"), timeout=30) == (5, 11, "ts")
    assert ray.get(by_name.add.remote(suffix="s", b=0, a=2), timeout=30) == (7, 1, "ts")
    assert ray.get(Adder.remote(base=1, tag="a", step=3).add.remote(0), timeout=30) == (1, 13, "a!")


def test_wrong_constructor_arity_raises_type_error_at_remote(ray) -> None:
    @ray.remote
    class Needs:
        def __init__(self, a, b=1):
            self.a = a

        def get(self, x):
            return self.a + x

    with pytest.raises(TypeError):
        Needs.remote()
    with pytest.raises(TypeError):
        Needs.remote(0, 1, c=3)
    with pytest.raises(TypeError):
        Needs.remote(0, a=1)
    with pytest.raises(TypeError):
        Needs.remote(1, 2, 3)


def test_wrong_method_arity_raises(ray) -> None:
    @ray.remote
    class Needs:
        def get(self, x, y=0):
            return x + y

    n = Needs.remote()
    # Ray checks the call against the method's signature when it is submitted.
    with pytest.raises(TypeError):
        n.get.remote()
    with pytest.raises(TypeError):
        n.get.remote(1, 2, 3)
    with pytest.raises(TypeError):
        n.get.remote(1, z=2)
    assert ray.get(n.get.remote(1, y=2), timeout=30) == 3


def test_variadic_constructor_and_method_arguments(ray) -> None:
    @ray.remote
    class Var:
        def __init__(self, first, second=1, *rest, **named):
            self.state = (first, second, rest, named)

        def call(self, a, b=2, *more, **kw):
            return self.state, (a, b, more, kw)

    v = Var.remote(0)
    assert ray.get(v.call.remote(1), timeout=30) == ((0, 1, (), {}), (1, 2, (), {}))
    v = Var.remote(1, 2, "a", "b", k="v")
    got = ray.get(v.call.remote(3, 4, 5, 6, z=7), timeout=30)
    assert got == ((1, 2, ("a", "b"), {"k": "v"}), (3, 4, (5, 6), {"z": 7}))

    @ray.remote
    class OnlyStar:
        def __init__(self, *args):
            self.args = args

        def get(self, *args):
            return self.args, args

    assert ray.get(OnlyStar.remote().get.remote(), timeout=30) == ((), ())
    assert ray.get(OnlyStar.remote(1, 2).get.remote(3), timeout=30) == ((1, 2), (3,))


def test_keyword_only_arguments(ray) -> None:
    @ray.remote
    class KwOnly:
        def __init__(self, *, scale):
            self.scale = scale

        def mul(self, x, *, extra=0):
            return x * self.scale + extra

    k = KwOnly.remote(scale=3)
    assert ray.get(k.mul.remote(2, extra=1), timeout=30) == 7
    with pytest.raises(TypeError):
        KwOnly.remote(3)
    with pytest.raises(TypeError):
        k.mul.remote(2, 1)


def test_actor_without_constructor_and_methods_returning_none(ray) -> None:
    @ray.remote
    class Bare:
        def nothing(self):
            pass

    assert ray.get(Bare.remote().nothing.remote(), timeout=30) is None


def test_custom_classes_as_arguments_and_results(ray) -> None:
    class Box:
        def __init__(self, v):
            self.v = v

    @ray.remote
    class Holder:
        def __init__(self, box):
            self.mine = Box(1)
            self.given = box

        def both(self, extra):
            return self.mine, self.given, extra

    mine, given, extra = ray.get(Holder.remote(Box(2)).both.remote(Box(3)), timeout=30)
    assert (type(mine).__name__, mine.v, given.v, extra.v) == ("Box", 1, 2, 3)


class _Root:
    ROOT = 2

    @staticmethod
    def root_static():
        return _Root.ROOT * 10


class _Left(_Root):
    LEFT = 6

    def left(self):
        return self.LEFT


class _Right:
    RIGHT = 7

    @classmethod
    def right_cls(cls):
        return cls.RIGHT + 100


def _family(ray):
    @ray.remote
    class Child(_Left, _Right):
        OWN = 3

        @classmethod
        def make(cls):
            return cls.ROOT + cls.LEFT + cls.RIGHT + cls.OWN

        @staticmethod
        def helper(x):
            return x * 2

        def through_self(self):
            return (
                self.ROOT,
                self.LEFT,
                self.RIGHT,
                self.OWN,
                self.make(),
                self.helper(4),
                self.root_static(),
                self.right_cls(),
                self.left(),
            )

        def through_class_name(self):
            # Ray's own test: the decorated name still reaches the class's attributes and its
            # class and static methods (the actor class derives from the user's class).
            return Child.ROOT, Child.LEFT, Child.RIGHT, Child.OWN, Child.make(), Child.helper(4)

    return Child


def test_class_attributes_classmethods_and_staticmethods_through_self(ray) -> None:
    c = _family(ray).remote()
    assert ray.get(c.through_self.remote(), timeout=30) == (2, 6, 7, 3, 18, 8, 20, 107, 6)
    # Class and static methods can also be called remotely, like any method.
    assert ray.get(c.make.remote(), timeout=30) == 18
    assert ray.get(c.helper.remote(21), timeout=30) == 42
    assert ray.get(c.root_static.remote(), timeout=30) == 20
    assert ray.get(c.right_cls.remote(), timeout=30) == 107


def test_class_attributes_through_the_actor_class_name_inside_methods(ray) -> None:
    c = _family(ray).remote()
    assert ray.get(c.through_class_name.remote(), timeout=30) == (2, 6, 7, 3, 18, 8)


def test_actor_class_object_exposes_class_attributes_in_the_driver(ray) -> None:
    Child = _family(ray)
    assert (Child.OWN, Child.ROOT, Child.RIGHT) == (3, 2, 7)
    assert Child.make() == 18
    assert Child.helper(5) == 10


def test_inherited_methods_are_remote_methods(ray) -> None:
    class Base:
        def __init__(self, x):
            self.x = x

        def value(self):
            return self.x

        def plus(self, y):
            return self.x + y

        def overridden(self):
            return "base"

    @ray.remote
    class Derived(Base):
        def __init__(self, x):
            super().__init__(x * 10)

        def via_base(self):
            return self.value()

        def overridden(self):
            return "derived:" + super().overridden()

    d = Derived.remote(1)
    assert ray.get([d.via_base.remote(), d.plus.remote(5), d.overridden.remote()], timeout=30) == [
        10,
        15,
        "derived:base",
    ]


def test_actor_class_cannot_be_instantiated_or_subclassed(ray) -> None:
    class Plain:
        pass

    @ray.remote
    class Remote(Plain):
        def __init__(self):
            pass

    with pytest.raises(TypeError, match="cannot be instantiated directly"):
        Remote()
    with pytest.raises(TypeError, match="Inheriting from actor classes is not currently supported"):

        class Sub(Remote):
            pass


def test_calling_an_actor_method_directly_is_an_error(ray) -> None:
    @ray.remote
    class T:
        def f(self, y):
            return y

    t = T.remote()
    with pytest.raises(TypeError, match="cannot be called directly"):
        t.f(1)
    assert ray.get(t.f.remote(1), timeout=30) == 1


def test_remote_with_empty_parentheses_is_an_error(ray) -> None:
    with pytest.raises((TypeError, ValueError, AssertionError)):

        @ray.remote()
        class A:
            pass

    with pytest.raises((TypeError, ValueError, AssertionError)):

        @ray.remote()
        def f():
            return 1


def test_decorator_arguments_are_validated(ray) -> None:
    with pytest.raises(ValueError):

        @ray.remote(invalid_kwarg=0)
        class B:
            pass

    with pytest.raises(ValueError):

        @ray.remote(num_cpus=0, invalid_kwarg=0)
        class C:
            pass

    @ray.remote(num_cpus=1)
    class D:
        def ok(self):
            return "ok"

    assert ray.get(D.remote().ok.remote(), timeout=30) == "ok"

    @ray.remote
    class E:
        x = 1

    with pytest.raises(ValueError, match="foo"):
        E.options(foo=1)


def test_unique_actor_ids_despite_seeded_randomness(ray) -> None:
    @ray.remote
    class Who:
        def me(self):
            return aioray.get_runtime_context().get_actor_id()

    np.random.seed(1234)
    random.seed(1234)
    a = Who.remote()
    np.random.seed(1234)
    random.seed(1234)
    b = Who.remote()
    ids = ray.get([a.me.remote(), b.me.remote()], timeout=30)
    assert ids[0] != ids[1]


def test_multiple_return_values_from_method_decorator_and_options(ray) -> None:
    @ray.remote
    class Multi:
        def zero(self):
            return 1

        @ray.method(num_returns=1)
        def one(self):
            return 1

        @ray.method(num_returns=2)
        def two(self):
            return 1, 2

        @ray.method(num_returns=3)
        def three(self):
            return 1, 2, 3

        def pair(self):
            return 1, 2

    m = Multi.remote()
    assert ray.get(m.zero.remote(), timeout=30) == 1
    assert ray.get(m.one.remote(), timeout=30) == 1
    a, b = m.two.remote()
    assert ray.get([a, b], timeout=30) == [1, 2]
    refs = m.three.remote()
    assert ray.get(refs, timeout=30) == [1, 2, 3]
    assert ray.get(m.pair.remote(), timeout=30) == (1, 2)
    x, y = m.pair.options(num_returns=2).remote()
    assert ray.get([x, y], timeout=30) == [1, 2]


def test_redefining_an_actor_class_keeps_each_definition(ray) -> None:
    @ray.remote
    class A:
        def foo(self):
            return 100000

    results = [A.remote().foo.remote()]
    for i in range(5):

        @ray.remote
        class A:
            def foo(self, i=i):
                return i

        results.append(A.remote().foo.remote())
    assert ray.get(results, timeout=30) == [100000, 0, 1, 2, 3, 4]


def test_constructor_error_reaches_method_callers(ray) -> None:
    @ray.remote
    class Fragile:
        def __init__(self, fail=False):
            if fail:
                raise Exception("oops in ctor")

        def foo(self):
            return "OK"

    fine = Fragile.remote(fail=False)
    assert ray.get(fine.foo.remote(), timeout=30) == "OK"
    broken = Fragile.remote(fail=True)
    with pytest.raises(aioray.RayActorError, match="oops in ctor"):
        ray.get(broken.foo.remote(), timeout=30)


def test_many_actors_keep_separate_ordered_state(ray) -> None:
    @ray.remote
    class Counter:
        def __init__(self, v):
            self.v = v

        def inc(self):
            self.v += 1
            return self.v

        def reset(self):
            self.v = 0

    actors = [Counter.remote(i) for i in range(4)]
    refs = [a.inc.remote() for a in actors for _ in range(20)]
    values = ray.get(refs, timeout=30)
    for i in range(4):
        assert values[20 * i : 20 * (i + 1)] == list(range(i + 1, i + 21))
    ray.get([a.reset.remote() for a in actors], timeout=30)
    refs = [a.inc.remote() for _ in range(10) for a in actors]
    values = ray.get(refs, timeout=30)
    for j in range(10):
        assert values[4 * j : 4 * (j + 1)] == [j + 1] * 4


def test_actor_goes_away_when_its_handles_are_dropped(ray) -> None:
    @ray.remote
    class P:
        def pid(self):
            return os.getpid()

    a = P.remote()
    pid = ray.get(a.pid.remote(), timeout=30)
    del a
    wait_for_condition(lambda: _pid_gone(pid), timeout=20)
    # Creating an actor and calling it at once, without keeping the handle, still works.
    assert isinstance(ray.get(P.remote().pid.remote(), timeout=30), int)


def test_handle_passed_to_a_pending_task_keeps_the_actor_alive(ray) -> None:
    @ray.remote
    class P:
        def pid(self):
            return os.getpid()

        def method(self):
            return 1

    @ray.remote
    def later(actor, signal):
        aioray.get(signal.wait.remote())
        return aioray.get(actor.method.remote())

    signal = SignalActor.remote()
    a = P.remote()
    pid = ray.get(a.pid.remote(), timeout=30)
    ref = later.remote(a, signal)
    del a
    time.sleep(0.5)
    assert not _pid_gone(pid), "the task's handle keeps the actor alive"
    ray.get(signal.send.remote(), timeout=30)
    assert ray.get(ref, timeout=30) == 1
    wait_for_condition(lambda: _pid_gone(pid), timeout=20)


@pytest.mark.parametrize("how", ["__ray_terminate__", "exit_actor", "kill"])
def test_atexit_handlers_run_on_graceful_exit_only(ray, tmp_path, how) -> None:
    marker = tmp_path / "atexit.txt"

    @ray.remote
    class WithAtexit:
        def __init__(self, path):
            import atexit

            def write():
                with open(path, "w") as f:
                    f.write("hello")

            atexit.register(write)

        def ready(self):
            return True

        def exit(self):
            from aioray.actor import exit_actor

            exit_actor()

    a = WithAtexit.remote(str(marker))
    assert ray.get(a.ready.remote(), timeout=30)
    if how == "__ray_terminate__":
        ray.wait([a.__ray_terminate__.remote()], timeout=30)
    elif how == "exit_actor":
        ray.wait([a.exit.remote()], timeout=30)
    else:
        ray.kill(a)
    if how == "kill":
        time.sleep(1)
        assert not marker.exists(), "ray.kill runs no atexit handlers"
    else:
        wait_for_condition(lambda: marker.exists() and marker.read_text() == "hello", timeout=20)
