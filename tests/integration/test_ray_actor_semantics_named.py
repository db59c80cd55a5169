"""Ray's named-actor semantics: lookup by name and namespace, name reuse after a kill, lookups from
other actors and tasks, duplicate and invalid names, and `get_if_exists`."""

from __future__ import annotations

import pytest

import aioray
from aioray.testing import wait_for_condition


@aioray.remote
class Counter:
    def __init__(self, start=0):
        self.count = start

    def inc_and_get(self):
        self.count += 1
        return self.count

    def namespace(self):
        return aioray.get_runtime_context().namespace


@aioray.remote
class Getter:
    def count_of(self, name, namespace=None):
        actor = aioray.get_actor(name, namespace=namespace)
        return aioray.get(actor.inc_and_get.remote())


@aioray.remote
def count_of_in_task(name):
    return aioray.get(aioray.get_actor(name).inc_and_get.remote())


def _name_is_free(ray, name, namespace=None) -> bool:
    try:
        ray.get_actor(name, namespace=namespace)
    except ValueError:
        return True
    return False


def test_unknown_name_is_a_value_error(ray) -> None:
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor-anywhere")
    with pytest.raises(ValueError):
        ray.get_actor("no-such-actor-anywhere", namespace="no-such-namespace")


def test_namespaces_separate_names(ray) -> None:
    a = Counter.options(name="ns-foo", namespace="f1").remote()
    with pytest.raises(ValueError):
        ray.get_actor("ns-foo", namespace="f2")
    with pytest.raises(ValueError):
        ray.get_actor("ns-foo")  # the driver's own namespace is neither f1 nor f2
    found = ray.get_actor(name="ns-foo", namespace="f1")
    assert ray.get(found.inc_and_get.remote(), timeout=30) == 1
    # The same name is free in another namespace.
    b = Counter.options(name="ns-foo", namespace="f2").remote(100)
    assert ray.get(ray.get_actor("ns-foo", namespace="f2").inc_and_get.remote(), timeout=30) == 101
    assert ray.get(a.inc_and_get.remote(), timeout=30) == 2
    ray.kill(a)
    ray.kill(b)


def test_name_is_reusable_after_kill(ray) -> None:
    a = Counter.options(name="hi", max_restarts=-1).remote()
    assert ray.get(ray.get_actor("hi").inc_and_get.remote(), timeout=30) == 1
    assert ray.get(ray.get_actor("hi").inc_and_get.remote(), timeout=30) == 2
    ray.kill(a, no_restart=True)
    wait_for_condition(lambda: _name_is_free(ray, "hi"), timeout=20)
    again = Counter.options(name="hi").remote()
    assert ray.get(again.inc_and_get.remote(), timeout=30) == 1
    assert ray.get(ray.get_actor("hi").inc_and_get.remote(), timeout=30) == 2
    ray.kill(again)


def test_named_lookup_from_another_actor_and_a_task(ray) -> None:
    a = Counter.options(name="via-other", max_restarts=0).remote()
    assert ray.get(ray.get_actor("via-other").inc_and_get.remote(), timeout=30) == 1
    getter = Getter.remote()
    # Actors and tasks run in the driver's namespace, so the name resolves for them too.
    assert ray.get(getter.count_of.remote("via-other"), timeout=30) == 2
    assert ray.get(count_of_in_task.remote("via-other"), timeout=30) == 3
    ray.kill(a, no_restart=True)
    wait_for_condition(lambda: _name_is_free(ray, "via-other"), timeout=20)
    b = Counter.options(name="via-other", max_restarts=0).remote()
    assert ray.get(b.inc_and_get.remote(), timeout=30) == 1
    # The other actor does not keep a stale handle to the killed actor.
    assert ray.get(getter.count_of.remote("via-other"), timeout=30) == 2
    assert ray.get(ray.get_actor("via-other").inc_and_get.remote(), timeout=30) == 3
    ray.kill(b)


def test_actors_share_the_driver_namespace_for_lookups(ray) -> None:
    driver_ns = ray.get_runtime_context().namespace
    plain = Counter.remote()
    assert ray.get(plain.namespace.remote(), timeout=30) == driver_ns
    other = Counter.options(name="ns-reporter", namespace="elsewhere").remote()
    # A lookup in another namespace by an actor needs the namespace spelled out.
    getter = Getter.remote()
    assert ray.get(getter.count_of.remote("ns-reporter", "elsewhere"), timeout=30) == 1
    with pytest.raises(ValueError):
        ray.get(getter.count_of.remote("ns-reporter"), timeout=30)
    ray.kill(other)


def test_duplicate_name_is_refused(ray) -> None:
    a = Counter.options(name="taken").remote()
    ray.get(a.inc_and_get.remote(), timeout=30)
    with pytest.raises(ValueError):
        Counter.options(name="taken").remote()
    # The original is untouched.
    assert ray.get(ray.get_actor("taken").inc_and_get.remote(), timeout=30) == 2
    ray.kill(a)


def test_empty_name_is_refused(ray) -> None:
    with pytest.raises(ValueError):
        Counter.options(name="").remote()


def test_non_string_name_is_a_type_error(ray) -> None:
    with pytest.raises(TypeError):
        Counter.options(name=5).remote()


def test_get_if_exists_returns_the_existing_actor(ray) -> None:
    first = Counter.options(name="maybe", get_if_exists=True).remote(10)
    assert ray.get(first.inc_and_get.remote(), timeout=30) == 11
    # The constructor arguments of the second call are ignored: the actor already exists.
    second = Counter.options(name="maybe", get_if_exists=True).remote(1000)
    assert ray.get(second.inc_and_get.remote(), timeout=30) == 12
    assert ray.get(first.inc_and_get.remote(), timeout=30) == 13
    ray.kill(first)


def test_get_if_exists_from_concurrent_tasks_yields_one_actor(ray) -> None:
    @ray.remote
    def get_or_create():
        c = Counter.options(name="racy", get_if_exists=True, lifetime="detached").remote()
        return aioray.get(c.inc_and_get.remote())

    counts = ray.get([get_or_create.remote() for _ in range(6)], timeout=30)
    assert sorted(counts) == [1, 2, 3, 4, 5, 6]
    ray.kill(ray.get_actor("racy"))


def test_get_if_exists_needs_a_name(ray) -> None:
    with pytest.raises(ValueError):
        Counter.options(get_if_exists=True).remote()
