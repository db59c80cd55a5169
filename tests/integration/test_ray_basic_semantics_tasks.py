"""Ray's remote-function semantics (test_basic.py): arguments and arity errors, `num_returns` in all
its forms, `.options()`, option validation, calling a remote function directly, nested and
recursive tasks, redefinitions, and actor calls that keep their order despite dependencies."""

from __future__ import annotations

import os
import random
import time

import pytest

import aioray
from aioray.exceptions import RayTaskError


@aioray.remote
def listing(n):
    return list(range(n))


def test_calling_a_remote_function_directly_is_a_type_error(ray) -> None:
    @ray.remote
    def f():
        return 1

    with pytest.raises(TypeError, match="cannot be called directly"):
        f()
    with pytest.raises(TypeError, match="cannot be called directly"):
        f.options(num_cpus=1)()
    assert ray.get(f.remote(), timeout=30) == 1


def test_remote_without_decorator_syntax(ray) -> None:
    def plain(x):
        return x * 2

    assert ray.get(ray.remote(plain).remote(2), timeout=30) == 4
    assert ray.get(ray.remote(num_cpus=1)(plain).remote(3), timeout=30) == 6
    # The plain function is left as it was.
    assert plain(5) == 10


def test_keyword_variadic_and_default_arguments(ray) -> None:
    @ray.remote
    def f(a, b=2, *args, c, d=4, **kwargs):
        return a, b, args, c, d, kwargs

    assert ray.get(f.remote(1, c=3), timeout=30) == (1, 2, (), 3, 4, {})
    assert ray.get(f.remote(1, 5, 6, 7, c=3, d=8, e=9), timeout=30) == (1, 5, (6, 7), 3, 8, {"e": 9})
    assert ray.get(f.remote(a=0, c=0), timeout=30) == (0, 2, (), 0, 4, {})


def test_wrong_arity_is_a_type_error_at_submission(ray) -> None:
    @ray.remote
    def f(a, b=2, *, c):
        return a + b + c

    with pytest.raises(TypeError):
        f.remote()
    with pytest.raises(TypeError):
        f.remote(1)  # c is missing
    with pytest.raises(TypeError):
        f.remote(1, 2, 3, c=4)
    with pytest.raises(TypeError):
        f.remote(1, c=1, z=2)
    with pytest.raises(TypeError):
        f.remote(1, a=1, c=1)

    @ray.remote
    def none():
        return "none"

    with pytest.raises(TypeError):
        none.remote(1)
    assert ray.get(none.remote(), timeout=30) == "none"


def test_num_returns_forms(ray) -> None:
    assert listing.options(num_returns=0).remote(0) is None
    single = listing.options(num_returns=1).remote(1)
    assert isinstance(single, aioray.ObjectRef) and ray.get(single, timeout=30) == [0]
    pair = listing.options(num_returns=2).remote(2)
    assert isinstance(pair, list) and len(pair) == 2
    assert ray.get(pair, timeout=30) == [0, 1]
    a, b, c = listing.options(num_returns=3).remote(3)
    assert ray.get([a, b, c], timeout=30) == [0, 1, 2]
    # The default stays one ref holding the whole list.
    assert ray.get(listing.remote(3), timeout=30) == [0, 1, 2]

    @ray.remote(num_returns=2)
    def two():
        return "x", "y"

    x, y = two.remote()
    assert ray.get([x, y], timeout=30) == ["x", "y"]
    # .options overrides the decorator's value, for one call.
    assert ray.get(two.options(num_returns=1).remote(), timeout=30) == ("x", "y")
    assert len(two.remote()) == 2


def test_wrong_number_of_returned_values_is_a_task_error(ray) -> None:
    with pytest.raises(ValueError):
        ray.get(listing.options(num_returns=2).remote(3), timeout=30)


def test_num_returns_zero_task_still_runs(ray) -> None:
    @ray.remote
    class Box:
        def __init__(self):
            self.v = None

        def set(self, v):
            self.v = v

        def get(self):
            return self.v

    @ray.remote(num_returns=0)
    def side_effect(box):
        aioray.get(box.set.remote("done"))

    box = Box.remote()
    assert side_effect.remote(box) is None
    deadline = time.monotonic() + 20
    while ray.get(box.get.remote(), timeout=30) != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_actor_method_options_num_returns_and_constructor_kwargs(ray) -> None:
    @ray.remote
    class A:
        def __init__(self, x, y=0):
            self.x, self.y = x, y

        def method(self, a, b=0):
            return self.x, self.y, a, b

        @aioray.method(num_returns=2)
        def method2(self):
            return 1, 2

    a = A.options(num_cpus=0).remote(0, y=1)
    refs = a.method.options(num_returns=4).remote("test", b=2)
    assert ray.get(refs, timeout=30) == [0, 1, "test", 2]
    assert ray.get(a.method2.remote(), timeout=30) == [1, 2]
    assert ray.get(a.method2.options(num_returns=1).remote(), timeout=30) == (1, 2)


def test_options_do_not_change_the_original(ray) -> None:
    @ray.remote
    def f():
        return 1, 2

    g = f.options(num_returns=2)
    assert len(g.remote()) == 2
    assert ray.get(f.remote(), timeout=30) == (1, 2)
    assert ray.get(f.options(name="renamed").remote(), timeout=30) == (1, 2)


def test_unknown_options_are_value_errors(ray) -> None:
    def f():
        return 1

    class A:
        x = 1

    with pytest.raises(ValueError, match="foo"):
        ray.remote(f).options(foo=1)
    with pytest.raises(ValueError, match="foo"):
        ray.remote(A).options(foo=1)
    with pytest.raises(ValueError):
        ray.remote(invalid_kwarg=0)(f)


@pytest.mark.parametrize("bad", [-1, -5, 0.5])
def test_invalid_num_returns_is_a_value_error(ray, bad) -> None:
    with pytest.raises(ValueError):

        @ray.remote(num_returns=bad)
        def f():
            return 1


@pytest.mark.parametrize("bad", [-2, -10, 0.5])
def test_invalid_max_retries_is_a_value_error(ray, bad) -> None:
    with pytest.raises(ValueError):

        @ray.remote(max_retries=bad)
        def f():
            return 1


@pytest.mark.parametrize("keyword", ["max_restarts", "max_task_retries"])
@pytest.mark.parametrize("bad", [-2, -10, 0.5])
def test_invalid_actor_retry_options_are_value_errors(ray, keyword, bad) -> None:
    with pytest.raises(ValueError):

        @ray.remote(**{keyword: bad})
        class A:
            x = 1


def test_invalid_resource_amounts_are_value_errors(ray) -> None:
    def f():
        return 1

    with pytest.raises(ValueError):
        ray.remote(num_cpus=-1)(f)
    with pytest.raises(ValueError):
        ray.remote(num_gpus=-1)(f)
    with pytest.raises(ValueError):
        ray.remote(resources={"CPU": 1})(f)


def test_options_of_the_wrong_kind_are_refused(ray) -> None:
    with pytest.raises((TypeError, ValueError)):

        @ray.remote(num_returns=2)
        class A:
            x = 1

    with pytest.raises(ValueError):

        @ray.remote(max_restarts=1)
        def f():
            return 1

    with pytest.raises(ValueError):

        @ray.remote(max_task_retries=1)
        def g():
            return 1


def test_kill_of_something_not_an_actor_is_a_value_error(ray) -> None:
    @ray.remote
    def f():
        return 1

    with pytest.raises(ValueError):
        ray.kill(f.remote())
    with pytest.raises(ValueError):
        ray.kill("actor")


def test_get_actor_with_an_empty_name_is_a_value_error(ray) -> None:
    with pytest.raises(ValueError):
        ray.get_actor("")


def test_nested_and_mutually_recursive_tasks(ray) -> None:
    @ray.remote
    def outer():
        return helper(), aioray.get(inner.remote())

    def helper():
        return 1

    @ray.remote
    def inner():
        return 2

    assert ray.get(outer.remote(), timeout=30) == (1, 2)

    @ray.remote
    def factorial(n):
        return 1 if n == 0 else n * aioray.get(factorial.remote(n - 1))

    assert ray.get([factorial.remote(i) for i in range(5)], timeout=30) == [1, 1, 2, 6, 24]

    @ray.remote
    def even(n):
        assert n % 2 == 0
        return 1 if n == 0 else n * aioray.get(odd.remote(n - 1))

    @ray.remote
    def odd(n):
        assert n % 2 == 1
        return n * aioray.get(even.remote(n - 1))

    assert ray.get([even.remote(4), odd.remote(5)], timeout=30) == [24, 120]


def test_redefined_remote_functions_keep_each_definition(ray) -> None:
    refs = []
    for i in range(5):

        @ray.remote
        def f(i=i):
            return i * 10

        refs.append(f.remote())
    assert ray.get(refs, timeout=30) == [0, 10, 20, 30, 40]


def test_task_errors_are_task_errors_and_user_errors(ray) -> None:
    @ray.remote
    def bad():
        raise IndexError("nope")

    with pytest.raises(RayTaskError) as info:
        ray.get(bad.remote(), timeout=30)
    assert isinstance(info.value, IndexError)
    assert "nope" in str(info.value)


def test_omp_num_threads_defaults_to_the_task_cpus(ray) -> None:
    @ray.remote
    def omp():
        return os.environ.get("OMP_NUM_THREADS")

    # Workers inherit a value the user set; else it follows the task's CPUs.
    user = os.environ.get("OMP_NUM_THREADS")
    assert ray.get(omp.remote(), timeout=30) == (user or "1")
    assert ray.get(omp.options(num_cpus=2).remote(), timeout=30) == (user or "2")


def test_actor_calls_run_in_submission_order_despite_dependencies(ray) -> None:
    @ray.remote
    def slow_value(i):
        time.sleep(random.random() * 0.02 if i % 3 else 0.05)
        return 0

    @ray.remote
    class Ordered:
        def __init__(self):
            self.count = 0

        def inc(self, expected, dependency):
            assert expected == self.count
            self.count += 1
            return expected

    a = Ordered.remote()
    assert ray.get([a.inc.remote(i, slow_value.remote(i)) for i in range(40)], timeout=30) == list(range(40))


def test_results_passed_between_tasks_and_actors(ray) -> None:
    @ray.remote
    def produce(n):
        return list(range(n))

    @ray.remote
    class Summer:
        def total(self, values):
            return sum(values)

        def produce(self, n):
            return list(range(n))

    @ray.remote
    def total(values):
        return sum(values)

    s = Summer.remote()
    assert ray.get(s.total.remote(produce.remote(10)), timeout=30) == 45
    assert ray.get(total.remote(s.produce.remote(10)), timeout=30) == 45
    assert ray.get(s.total.remote(s.produce.remote(5)), timeout=30) == 10
