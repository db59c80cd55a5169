"""Every option that ``@remote``, ``.options`` and ``@method`` accept, walked: each one here is shown
to have its effect, and every option Ray has that aioray does not accept is refused by name.

Adding an accepted option without a check here fails `test_every_accepted_option_is_walked`."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pytest

import aioray
from aioray._private import actor as actor_mod
from aioray._private import remote_function
from aioray.exceptions import ActorDiedError, RayError, WorkerCrashedError
from aioray.testing import wait_for_condition
from aioray.util.placement_group import get_current_placement_group, placement_group, remove_placement_group
from aioray.util.scheduling_strategies import NodeAffinitySchedulingStrategy, PlacementGroupSchedulingStrategy
from aioray.util.state import get_task

# Ray 2.60's option names (ray/_common/ray_option_utils.py and ray.method).
RAY_TASK_OPTIONS = {
    "label_selector", "fallback_strategy", "accelerator_type", "memory", "name", "num_cpus", "num_gpus",
    "object_store_memory", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "resources", "runtime_env", "scheduling_strategy",
    "enable_task_events", "_labels", "max_calls", "max_retries", "num_returns", "retry_exceptions",
    "_generator_backpressure_num_objects", "_num_objects_per_yield",
}  # fmt: skip
RAY_ACTOR_OPTIONS = (RAY_TASK_OPTIONS - {
    "max_calls", "max_retries", "num_returns", "retry_exceptions", "_generator_backpressure_num_objects",
    "_num_objects_per_yield",
}) | {
    "concurrency_groups", "enable_tensor_transport", "lifetime", "max_concurrency", "max_restarts",
    "max_task_retries", "max_pending_calls", "namespace", "get_if_exists", "allow_out_of_order_execution",
    "_actor_generator_backpressure_num_objects",
}  # fmt: skip
RAY_METHOD_OPTIONS = {
    "num_returns", "concurrency_group", "max_task_retries", "retry_exceptions",
    "_generator_backpressure_num_objects", "_num_objects_per_yield", "enable_task_events", "tensor_transport",
}  # fmt: skip
# A value other than the default for each, to show it is refused rather than ignored.
NON_DEFAULT: dict[str, Any] = {
    "fallback_strategy": [{"label_selector": {"zone": "b"}}], "object_store_memory": 1 << 20,
    "_labels": {"k": "v"}, "max_calls": 1, "_num_objects_per_yield": 2,
    "enable_tensor_transport": True, "max_pending_calls": 10, "allow_out_of_order_execution": True,
    "_actor_generator_backpressure_num_objects": 2, "retry_exceptions": True, "tensor_transport": "nccl",
}  # fmt: skip


@pytest.fixture(scope="module")
def cluster():
    aioray.init(
        num_cpus=4,
        num_gpus=1,
        resources={"x": 1, "accelerator_type:T4": 1},
        labels={"zone": "a"},
        object_store_memory=100 << 20,
    )
    yield aioray.get_runtime_context().get_node_id()
    aioray.shutdown()


def unschedulable(ref: Any) -> None:
    with pytest.raises(RayError, match="no live node"):
        aioray.get(ref, timeout=30)


def marker() -> str:
    fd, path = tempfile.mkstemp(prefix="aioray-option-")
    os.close(fd)
    os.unlink(path)
    return path


@aioray.remote(num_cpus=0)
def env(name: str) -> str | None:
    return os.environ.get(name)


@aioray.remote(num_cpus=0)
def context() -> tuple[str | None, str | None]:
    ctx = aioray.get_runtime_context()
    group = get_current_placement_group()
    return ctx.get_task_name(), None if group is None else group.id.hex()


@aioray.remote(num_cpus=0)
def crash_once(path: str, how: str) -> str:
    if not os.path.exists(path):
        open(path, "w").close()
        if how == "exit":
            os._exit(1)
        raise ValueError("first attempt")
    return "second attempt"


@aioray.remote(num_cpus=0)
def spawn_child() -> str | None:
    return aioray.get(context.remote(), timeout=30)[1]


@aioray.remote(num_cpus=0)
def produce(path: str, count: int):  # type: ignore[no-untyped-def]
    for i in range(count):
        with open(path, "a") as f:
            f.write(f"{i}\n")
        yield i


def produced(path: str) -> int:
    with open(path) as f:
        return len(f.read().split())


# -- task options ----------------------------------------------------------------------------------


def task_num_cpus(node: str) -> None:
    assert aioray.get(env.options(num_cpus=2).remote("OMP_NUM_THREADS"), timeout=30) == "2"
    unschedulable(env.options(num_cpus=64).remote("X"))


def task_num_gpus(node: str) -> None:
    assert aioray.get(env.options(num_gpus=1).remote("CUDA_VISIBLE_DEVICES"), timeout=30) == "0"
    unschedulable(env.options(num_gpus=2).remote("X"))


def task_resources(node: str) -> None:
    assert aioray.get(env.options(resources={"x": 1}).remote("X"), timeout=30) is None
    unschedulable(env.options(resources={"x": 2}).remote("X"))


def task_memory(node: str) -> None:
    aioray.get(env.options(memory=1 << 20).remote("X"), timeout=30)
    unschedulable(env.options(memory=1 << 50).remote("X"))


def task_accelerator_type(node: str) -> None:
    aioray.get(env.options(accelerator_type="T4").remote("X"), timeout=30)
    unschedulable(env.options(accelerator_type="H100").remote("X"))


def task_num_returns(node: str) -> None:
    @aioray.remote(num_returns=2)
    def two() -> tuple[int, int]:
        return 1, 2

    a, b = two.remote()
    assert aioray.get([a, b], timeout=30) == [1, 2]


def task_max_retries(node: str) -> None:
    assert (
        aioray.get(crash_once.options(max_retries=1).remote(marker(), "exit"), timeout=60) == "second attempt"
    )
    with pytest.raises(WorkerCrashedError):
        aioray.get(crash_once.options(max_retries=0).remote(marker(), "exit"), timeout=60)


def task_retry_exceptions(node: str) -> None:
    ref = crash_once.options(retry_exceptions=True, max_retries=1).remote(marker(), "raise")
    assert aioray.get(ref, timeout=60) == "second attempt"
    with pytest.raises(ValueError, match="first attempt"):
        aioray.get(crash_once.options(max_retries=1).remote(marker(), "raise"), timeout=60)


def task_name(node: str) -> None:
    assert aioray.get(context.options(name="walked").remote(), timeout=30)[0] == "walked"


def recorded_only_with_events(silent: Any, recorded: Any) -> None:
    """`silent` ran with enable_task_events=False, then `recorded` with events on. This driver
    sent their SUBMITTED events in that order, so once `recorded` is in the task table, `silent`
    would be too had anything been recorded for it."""
    wait_for_condition(lambda: (t := get_task(recorded)) is not None and t["state"] == "FINISHED", timeout=30)
    assert get_task(silent) is None


def task_enable_task_events(node: str) -> None:
    silent = env.options(enable_task_events=False).remote("X")
    aioray.get(silent, timeout=30)
    recorded = env.options(enable_task_events=True).remote("X")
    aioray.get(recorded, timeout=30)
    recorded_only_with_events(silent, recorded)


def task_runtime_env(node: str) -> None:
    ref = env.options(runtime_env={"env_vars": {"WALKED": "yes"}}).remote("WALKED")
    assert aioray.get(ref, timeout=60) == "yes"


def task_scheduling_strategy(node: str) -> None:
    here = NodeAffinitySchedulingStrategy(node, soft=False)
    aioray.get(env.options(scheduling_strategy=here).remote("X"), timeout=30)
    with pytest.raises(RayError, match="dead or unknown"):
        aioray.get(
            env.options(scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, soft=False)).remote(
                "X"
            ),
            timeout=30,
        )


def task_label_selector(node: str) -> None:
    aioray.get(env.options(label_selector={"zone": "a"}).remote("X"), timeout=30)
    unschedulable(env.options(label_selector={"zone": "b"}).remote("X"))


def in_group(check: Callable[[Any], None]) -> None:
    group = placement_group([{"CPU": 1}, {"CPU": 1}])
    assert group.wait(60)
    try:
        check(group)
    finally:
        remove_placement_group(group)


def task_placement_group(node: str) -> None:
    def check(group: Any) -> None:
        strategy = PlacementGroupSchedulingStrategy(group)
        assert (
            aioray.get(context.options(scheduling_strategy=strategy).remote(), timeout=30)[1]
            == group.id.hex()
        )
        assert aioray.get(context.options(placement_group=group).remote(), timeout=30)[1] == group.id.hex()

    in_group(check)


def task_placement_group_bundle_index(node: str) -> None:
    def check(group: Any) -> None:
        for index in (0, 1):
            ref = context.options(placement_group=group, placement_group_bundle_index=index).remote()
            assert aioray.get(ref, timeout=30)[1] == group.id.hex()
        with pytest.raises(ValueError, match="out of range"):
            context.options(placement_group=group, placement_group_bundle_index=2).remote()

    in_group(check)


def task_placement_group_capture_child_tasks(node: str) -> None:
    def check(group: Any) -> None:
        captured = spawn_child.options(placement_group=group, placement_group_capture_child_tasks=True)
        assert aioray.get(captured.remote(), timeout=30) == group.id.hex()
        free = spawn_child.options(placement_group=group, placement_group_capture_child_tasks=False)
        assert aioray.get(free.remote(), timeout=30) is None

    in_group(check)


def task__generator_backpressure_num_objects(node: str) -> None:
    path = marker()
    gen = produce.options(_generator_backpressure_num_objects=1).remote(path, 5)
    assert aioray.get(next(gen), timeout=30) == 0
    time.sleep(0.5)
    assert produced(path) <= 2, "the producer waits for the consumer"
    assert [aioray.get(r, timeout=30) for r in gen] == [1, 2, 3, 4]


# -- actor options ---------------------------------------------------------------------------------


@aioray.remote(num_cpus=0, concurrency_groups={"io": 2})
class Probe:
    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def group(self) -> str | None:
        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def pid(self) -> int:
        return os.getpid()

    def nap(self, seconds: float) -> tuple[float, float]:
        start = time.time()
        time.sleep(seconds)
        return start, time.time()

    @aioray.method(concurrency_group="io")
    def io_nap(self, seconds: float) -> tuple[float, float]:
        return self.nap(seconds)

    def crash_once(self, path: str) -> str:
        return crash_once_here(path)

    def boom(self) -> None:
        raise ValueError("boom")

    def two(self) -> tuple[int, int]:
        return 1, 2

    def produce(self, path: str, count: int):  # type: ignore[no-untyped-def]
        for i in range(count):
            with open(path, "a") as f:
                f.write(f"{i}\n")
            yield i


def crash_once_here(path: str) -> str:
    if not os.path.exists(path):
        open(path, "w").close()
        os._exit(1)
    return "second attempt"


def overlapped(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def while_alive(options: dict[str, Any], resource: str, drop: float) -> None:
    before = aioray.available_resources().get(resource, 0)
    probe = Probe.options(**options).remote()
    aioray.get(probe.pid.remote(), timeout=60)
    wait_for_condition(
        lambda: abs(aioray.available_resources().get(resource, 0) - (before - drop)) < 1e-6, timeout=30
    )
    aioray.kill(probe)
    wait_for_condition(lambda: abs(aioray.available_resources().get(resource, 0) - before) < 1e-6, timeout=30)


def actor_num_cpus(node: str) -> None:
    while_alive({"num_cpus": 2}, "CPU", 2)


def actor_num_gpus(node: str) -> None:
    probe = Probe.options(num_gpus=1).remote()
    assert aioray.get(probe.env.remote("CUDA_VISIBLE_DEVICES"), timeout=60) == "0"
    aioray.kill(probe)


def actor_resources(node: str) -> None:
    while_alive({"resources": {"x": 1}}, "x", 1)


def actor_memory(node: str) -> None:
    while_alive({"memory": 1 << 20}, "memory", 1 << 20)


def actor_accelerator_type(node: str) -> None:
    while_alive({"accelerator_type": "T4"}, "accelerator_type:T4", 0.001)


def actor_max_concurrency(node: str) -> None:
    probe = Probe.options(max_concurrency=2).remote()
    a, b = aioray.get([probe.nap.remote(0.5), probe.nap.remote(0.5)], timeout=60)
    assert overlapped(a, b)
    aioray.kill(probe)


def actor_max_restarts(node: str) -> None:
    probe = Probe.options(max_restarts=1).remote()
    pid = aioray.get(probe.pid.remote(), timeout=60)
    with pytest.raises(RayError):
        aioray.get(probe.crash_once.remote(marker()), timeout=60)
    assert aioray.get(probe.pid.remote(), timeout=60) != pid
    aioray.kill(probe)
    once = Probe.remote()
    with pytest.raises(RayError):
        aioray.get(once.crash_once.remote(marker()), timeout=60)
    with pytest.raises(ActorDiedError):
        aioray.get(once.pid.remote(), timeout=60)


def actor_max_task_retries(node: str) -> None:
    probe = Probe.options(max_restarts=1, max_task_retries=1).remote()
    assert aioray.get(probe.crash_once.remote(marker()), timeout=60) == "second attempt"
    aioray.kill(probe)


def actor_name(node: str) -> None:
    probe = Probe.options(name="walked-actor").remote()
    assert aioray.get(aioray.get_actor("walked-actor").pid.remote(), timeout=60) == aioray.get(
        probe.pid.remote()
    )
    aioray.kill(probe)


def actor_namespace(node: str) -> None:
    probe = Probe.options(name="walked", namespace="walk-ns").remote()
    aioray.get(probe.pid.remote(), timeout=60)
    aioray.get_actor("walked", namespace="walk-ns")
    with pytest.raises(ValueError):
        aioray.get_actor("walked")
    aioray.kill(probe)


def actor_lifetime(node: str) -> None:
    probe = Probe.options(name="walked-detached", lifetime="detached").remote()
    pid = aioray.get(probe.pid.remote(), timeout=60)
    del probe
    time.sleep(0.5)  # a non-detached actor would be gone once its last handle is
    again = aioray.get_actor("walked-detached")
    assert aioray.get(again.pid.remote(), timeout=60) == pid
    aioray.kill(again)


def actor_get_if_exists(node: str) -> None:
    first = Probe.options(name="walked-once", get_if_exists=True).remote()
    second = Probe.options(name="walked-once", get_if_exists=True).remote()
    assert aioray.get(first.pid.remote(), timeout=60) == aioray.get(second.pid.remote(), timeout=60)
    aioray.kill(first)


def actor_runtime_env(node: str) -> None:
    probe = Probe.options(runtime_env={"env_vars": {"WALKED": "actor"}}).remote()
    assert aioray.get(probe.env.remote("WALKED"), timeout=60) == "actor"
    aioray.kill(probe)


def actor_scheduling_strategy(node: str) -> None:
    probe = Probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
    aioray.get(probe.pid.remote(), timeout=60)
    aioray.kill(probe)
    nowhere = Probe.options(
        scheduling_strategy=NodeAffinitySchedulingStrategy("ab" * 16, soft=False)
    ).remote()
    with pytest.raises(RayError, match="dead or unknown"):
        aioray.get(nowhere.pid.remote(), timeout=60)


def actor_label_selector(node: str) -> None:
    probe = Probe.options(label_selector={"zone": "a"}).remote()
    aioray.get(probe.pid.remote(), timeout=60)
    aioray.kill(probe)
    nowhere = Probe.options(label_selector={"zone": "b"}).remote()
    with pytest.raises(RayError, match="no live node"):
        aioray.get(nowhere.pid.remote(), timeout=60)


def actor_placement_group(node: str) -> None:
    def check(group: Any) -> None:
        for options in (
            {"scheduling_strategy": PlacementGroupSchedulingStrategy(group)},
            {"placement_group": group},
        ):
            probe = Probe.options(**options).remote()
            assert aioray.get(probe.group.remote(), timeout=60) == group.id.hex()
            aioray.kill(probe)

    in_group(check)


def actor_placement_group_bundle_index(node: str) -> None:
    def check(group: Any) -> None:
        probe = Probe.options(placement_group=group, placement_group_bundle_index=1).remote()
        assert aioray.get(probe.group.remote(), timeout=60) == group.id.hex()
        aioray.kill(probe)

    in_group(check)


def actor_placement_group_capture_child_tasks(node: str) -> None:
    @aioray.remote(num_cpus=0)
    class Parent:
        def child_group(self) -> str | None:
            return aioray.get(context.remote(), timeout=30)[1]

    def check(group: Any) -> None:
        for capture, expected in ((True, group.id.hex()), (False, None)):
            parent = Parent.options(
                placement_group=group, placement_group_capture_child_tasks=capture
            ).remote()
            assert aioray.get(parent.child_group.remote(), timeout=60) == expected
            aioray.kill(parent)

    in_group(check)


def actor_concurrency_groups(node: str) -> None:
    for limit, together in ((2, True), (1, False)):
        probe = Probe.options(concurrency_groups={"io": limit}).remote()
        a, b = aioray.get([probe.io_nap.remote(0.4), probe.io_nap.remote(0.4)], timeout=60)
        assert overlapped(a, b) == together, f"the io group with limit {limit}"
        aioray.kill(probe)


def actor_enable_task_events(node: str) -> None:
    quiet = Probe.options(enable_task_events=False).remote()
    silent = quiet.pid.remote()
    aioray.get(silent, timeout=60)
    loud = Probe.remote()
    recorded = loud.pid.remote()
    aioray.get(recorded, timeout=60)
    recorded_only_with_events(silent, recorded)
    assert get_task(quiet._actor_id.hex()) is None, "nor its creation"
    aioray.kill(quiet)
    aioray.kill(loud)


# -- actor method options --------------------------------------------------------------------------


def method_enable_task_events(node: str) -> None:
    probe = Probe.remote()
    silent = probe.pid.options(enable_task_events=False).remote()
    aioray.get(silent, timeout=60)
    recorded = probe.pid.options(enable_task_events=True).remote()
    aioray.get(recorded, timeout=60)
    recorded_only_with_events(silent, recorded)
    aioray.kill(probe)


def method_num_returns(node: str) -> None:
    probe = Probe.remote()
    a, b = probe.two.options(num_returns=2).remote()
    assert aioray.get([a, b], timeout=60) == [1, 2]
    aioray.kill(probe)


def method_name(node: str) -> None:
    probe = Probe.remote()
    with pytest.raises(ValueError, match="walked-call"):
        aioray.get(probe.boom.options(name="walked-call").remote(), timeout=60)
    aioray.kill(probe)


def method_max_task_retries(node: str) -> None:
    probe = Probe.options(max_restarts=1).remote()
    assert (
        aioray.get(probe.crash_once.options(max_task_retries=1).remote(marker()), timeout=60)
        == "second attempt"
    )
    aioray.kill(probe)


def method_concurrency_group(node: str) -> None:
    probe = Probe.remote()
    calls = [probe.nap.options(concurrency_group="io").remote(0.5) for _ in range(2)]
    a, b = aioray.get(calls, timeout=60)
    assert overlapped(a, b), "both ran in the io group"
    aioray.kill(probe)


def method__generator_backpressure_num_objects(node: str) -> None:
    probe = Probe.remote()
    path = marker()
    gen = probe.produce.options(_generator_backpressure_num_objects=1).remote(path, 4)
    assert aioray.get(next(gen), timeout=60) == 0
    time.sleep(0.5)
    assert produced(path) <= 2, "the producer waits for the consumer"
    assert [aioray.get(r, timeout=30) for r in gen] == [1, 2, 3]
    aioray.kill(probe)


# -- the walk ----------------------------------------------------------------------------------------

ACCEPTED = {
    "task": remote_function._FUNCTION_OPTIONS,
    "actor": actor_mod._ACTOR_OPTIONS,
    "method": actor_mod._METHOD_OPTIONS,
}
WALK = sorted((kind, name) for kind, names in ACCEPTED.items() for name in names)


def test_every_accepted_option_is_walked() -> None:
    missing = [f"{kind}_{name}" for kind, name in WALK if f"{kind}_{name}" not in globals()]
    assert not missing, f"accepted options without a check of their effect here: {missing}"


@pytest.mark.parametrize(("kind", "name"), WALK, ids=[f"{k}-{n}" for k, n in WALK])
def test_option_has_its_effect(cluster, kind: str, name: str) -> None:
    globals()[f"{kind}_{name}"](cluster)


def _plain() -> int:
    return 1


class _Plain:
    def m(self) -> int:
        return 1


REFUSED = sorted(
    [("task", n) for n in RAY_TASK_OPTIONS - ACCEPTED["task"]]
    + [("actor", n) for n in RAY_ACTOR_OPTIONS - ACCEPTED["actor"]]
    + [("method", n) for n in RAY_METHOD_OPTIONS - ACCEPTED["method"]]
)


@pytest.mark.parametrize(("kind", "name"), REFUSED, ids=[f"{k}-{n}" for k, n in REFUSED])
def test_ray_options_aioray_does_not_accept_are_refused_by_name(kind: str, name: str) -> None:
    option = {name: NON_DEFAULT[name]}
    with pytest.raises(ValueError, match=name):
        if kind == "task":
            aioray.remote(**option)(_plain)
        elif kind == "actor":
            aioray.remote(**option)(_Plain)
        else:  # a handle needs no live actor to check a call's options
            handle = actor_mod.ActorHandle(bytes(16), actor_mod._class_meta(_Plain, 0), None)
            handle.m.options(**option)
