"""Placement groups on one node: creation, tasks and actors in bundles, names, the table, removal."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

import aioray
from aioray.exceptions import GetTimeoutError, RayActorError, RayError
from aioray.util import (
    get_current_placement_group,
    get_placement_group,
    placement_group,
    placement_group_table,
    remove_placement_group,
)
from aioray.util.placement_group import PlacementGroup, PlacementGroupID
from aioray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from .conftest import eventually

CPUS = 4


@pytest.fixture(scope="module")
def ray() -> Iterator[object]:
    aioray.init(num_cpus=CPUS, resources={"slot": 2}, object_store_memory=128 << 20)
    try:
        yield aioray
    finally:
        aioray.shutdown()


def in_group(pg: PlacementGroup, index: int = -1, capture: bool = False) -> PlacementGroupSchedulingStrategy:
    return PlacementGroupSchedulingStrategy(pg, index, capture)


def free_cpus() -> float:
    return aioray.available_resources().get("CPU", 0.0)


def group_names_left(pg: PlacementGroup) -> list[str]:
    return [k for k in aioray.available_resources() if k.endswith(pg.id.hex())]


@aioray.remote(num_cpus=1)
def where_am_i() -> tuple[str | None, str]:
    group = get_current_placement_group()
    return (None if group is None else group.id.hex()), aioray.get_runtime_context().get_node_id()


@aioray.remote(num_cpus=1)
def parent() -> tuple[str | None, str | None]:
    child_group, _ = aioray.get(where_am_i.remote(), timeout=60)
    mine = get_current_placement_group()
    return (None if mine is None else mine.id.hex()), child_group


@aioray.remote(num_cpus=1)
class Member:
    def group(self) -> str | None:
        group = get_current_placement_group()
        return None if group is None else group.id.hex()

    def ping(self) -> str:
        return "pong"


@aioray.remote(num_cpus=1, max_retries=0)
def sleeper(seconds: float) -> str:
    time.sleep(seconds)
    return "done"


def test_create_ready_wait_table_and_remove(ray) -> None:
    before = free_cpus()
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "slot": 1}], strategy="STRICT_PACK")
    assert isinstance(pg.id, PlacementGroupID) and len(pg.id.binary()) == 18
    assert pg.bundle_specs == [{"CPU": 1.0}, {"CPU": 1.0, "slot": 1.0}] and pg.bundle_count == 2
    assert aioray.get(pg.ready(), timeout=60) == pg
    assert pg.wait(10)
    row = placement_group_table(pg)
    assert row["placement_group_id"] == pg.id.hex()
    assert row["state"] == "CREATED" and row["strategy"] == "STRICT_PACK"
    assert row["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0, "slot": 1.0}}
    node_id = aioray.get_runtime_context().get_node_id()
    assert row["bundles_to_node_id"] == {0: node_id, 1: node_id}
    assert row["stats"]["scheduling_state"] == "FINISHED" and row["stats"]["scheduling_attempt"] >= 1
    assert pg.id.hex() in placement_group_table()
    # The bundles' resources left the node's own and came back under the group's names.
    eventually(lambda: free_cpus() == before - 2, 10, "the bundles' CPUs being set aside")
    assert aioray.cluster_resources()[f"CPU_group_{pg.id.hex()}"] == 2.0
    assert aioray.cluster_resources()[f"slot_group_1_{pg.id.hex()}"] == 1.0

    remove_placement_group(pg)
    assert placement_group_table(pg)["state"] == "REMOVED"
    assert not pg.wait(0)
    remove_placement_group(pg)  # twice is fine
    eventually(lambda: free_cpus() == before and not group_names_left(pg), 10, "the bundles being released")


def test_tasks_and_actors_run_in_their_bundle(ray) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "slot": 1}])
    assert pg.wait(30)
    assert aioray.get(where_am_i.remote(), timeout=60)[0] is None  # outside any group
    assert get_current_placement_group() is None  # a driver is in no group
    for index in (-1, 0, 1):
        group, _ = aioray.get(
            where_am_i.options(scheduling_strategy=in_group(pg, index)).remote(), timeout=60
        )
        assert group == pg.id.hex()
    # The older options say the same.
    old_style = where_am_i.options(placement_group=pg, placement_group_bundle_index=1)
    assert aioray.get(old_style.remote(), timeout=60)[0] == pg.id.hex()
    member = Member.options(scheduling_strategy=in_group(pg, 1)).remote()
    assert aioray.get(member.group.remote(), timeout=60) == pg.id.hex()
    # Bundle 1 is taken by the actor: a task for it waits, one for bundle 0 runs.
    waiting = where_am_i.options(scheduling_strategy=in_group(pg, 1)).remote()
    ready, _ = aioray.wait([waiting], timeout=1.0)
    assert not ready
    assert aioray.get(where_am_i.options(scheduling_strategy=in_group(pg, 0)).remote(), timeout=60)[0]
    aioray.kill(member)
    assert aioray.get(waiting, timeout=60)[0] == pg.id.hex()
    with pytest.raises(ValueError, match="out of range"):
        where_am_i.options(scheduling_strategy=in_group(pg, 2)).remote()
    remove_placement_group(pg)


def test_capture_child_tasks(ray) -> None:
    pg = placement_group([{"CPU": 2}])
    assert pg.wait(30)
    mine, child = aioray.get(
        parent.options(scheduling_strategy=in_group(pg, capture=True)).remote(), timeout=60
    )
    assert mine == child == pg.id.hex()
    mine, child = aioray.get(parent.options(scheduling_strategy=in_group(pg)).remote(), timeout=60)
    assert mine == pg.id.hex() and child is None
    remove_placement_group(pg)


def test_named_groups_live_in_their_namespace(ray) -> None:
    pg = placement_group([{"CPU": 1}], name="trainer")
    assert get_placement_group("trainer") == pg
    assert get_placement_group("trainer").bundle_specs == [{"CPU": 1.0}]
    assert placement_group_table(pg)["name"] == "trainer"
    with pytest.raises(ValueError, match="already exists"):
        placement_group([{"CPU": 1}], name="trainer")
    with pytest.raises(ValueError, match="Failed to look up placement group with name: nobody"):
        get_placement_group("nobody")
    remove_placement_group(pg)
    with pytest.raises(ValueError, match="trainer"):
        get_placement_group("trainer")
    again = placement_group([{"CPU": 1}], name="trainer")  # the name is free again
    assert again.wait(30)
    remove_placement_group(again)


def test_removal_kills_the_actors_and_tasks_inside(ray) -> None:
    pg = placement_group([{"CPU": 1}, {"CPU": 1}], strategy="SPREAD")
    assert pg.wait(30)
    member = Member.options(scheduling_strategy=in_group(pg, 0)).remote()
    assert aioray.get(member.ping.remote(), timeout=60) == "pong"
    running = sleeper.options(scheduling_strategy=in_group(pg, 1)).remote(60)
    time.sleep(1.0)  # running
    remove_placement_group(pg)

    def member_dead() -> bool:
        # As in Ray, removal returns once the group is REMOVED; its work is killed right after.
        try:
            aioray.get(member.ping.remote(), timeout=60)
        except RayActorError:
            return True
        return False

    eventually(member_dead, 30, "the member actor being killed")
    with pytest.raises(RayError):
        aioray.get(running, timeout=60)
    # New work for the removed group cannot run.
    with pytest.raises(RayError):
        aioray.get(where_am_i.options(scheduling_strategy=in_group(pg)).remote(), timeout=60)


def test_work_larger_than_its_bundle_or_for_a_removed_group_fails_clearly(ray) -> None:
    pg = placement_group([{"CPU": 1}])
    assert pg.wait(30)
    with pytest.raises(RayError, match="does not fit in the bundle"):
        aioray.get(where_am_i.options(num_cpus=2, scheduling_strategy=in_group(pg, 0)).remote(), timeout=60)
    too_big = Member.options(num_cpus=2, scheduling_strategy=in_group(pg, 0)).remote()
    with pytest.raises(RayActorError, match="cannot be scheduled"):
        aioray.get(too_big.ping.remote(), timeout=60)
    remove_placement_group(pg)
    late = Member.options(scheduling_strategy=in_group(pg, 0)).remote()
    with pytest.raises(RayActorError, match="was removed"):
        aioray.get(late.ping.remote(), timeout=60)
    with pytest.raises(RayError, match="was removed"):
        aioray.get(where_am_i.options(scheduling_strategy=in_group(pg, 0)).remote(), timeout=60)


def test_an_infeasible_group_stays_pending_and_its_work_waits(ray) -> None:
    pg = placement_group([{"CPU": CPUS + 1}])
    assert not pg.wait(1)
    row = placement_group_table(pg)
    assert row["state"] == "PENDING" and row["stats"]["scheduling_state"] == "INFEASIBLE"
    assert row["message"].startswith("infeasible")
    ready = pg.ready()
    assert aioray.wait([ready], timeout=1.0) == ([], [ready])
    remove_placement_group(pg)
    with pytest.raises(RayError):
        aioray.get(ready, timeout=60)


def test_a_group_waits_for_resources_and_so_does_its_work(ray) -> None:
    hog = Member.options(num_cpus=CPUS - 1).remote()  # an actor holds its CPUs while it lives
    assert aioray.get(hog.ping.remote(), timeout=60) == "pong"
    eventually(lambda: free_cpus() <= 1, 30, "the hog holding its CPUs")
    pg = placement_group([{"CPU": 1}, {"CPU": 1}])
    time.sleep(0.5)
    row = placement_group_table(pg)
    assert row["state"] == "PENDING" and row["stats"]["scheduling_state"] == "NO_RESOURCES"
    # Work for the pending group waits for it rather than failing.
    member = Member.options(scheduling_strategy=in_group(pg, 0)).remote()
    task = where_am_i.options(scheduling_strategy=in_group(pg, 1)).remote()
    assert aioray.wait([task], timeout=1.0)[0] == []
    aioray.kill(hog)
    assert pg.wait(30)
    assert aioray.get(task, timeout=60)[0] == pg.id.hex()
    assert aioray.get(member.group.remote(), timeout=60) == pg.id.hex()
    remove_placement_group(pg)


def test_arguments_are_checked_as_ray_does(ray) -> None:
    with pytest.raises(ValueError, match="non-empty list"):
        placement_group([])
    with pytest.raises(ValueError, match="only 0 values"):
        placement_group([{"CPU": 0}])
    with pytest.raises(ValueError, match="must be a list"):
        placement_group({"CPU": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Invalid placement group strategy"):
        placement_group([{"CPU": 1}], strategy="PACKED")
    with pytest.raises(ValueError, match="lifetime"):
        placement_group([{"CPU": 1}], lifetime="forever")
    with pytest.raises(ValueError, match="_soft_target_node_id"):
        placement_group([{"CPU": 1}], strategy="STRICT_PACK", _soft_target_node_id="ab" * 16)
    with pytest.raises(ValueError, match="object_store_memory"):
        placement_group([{"CPU": 1, "object_store_memory": 1000}])
    with pytest.raises(ValueError, match="length"):
        placement_group([{"CPU": 1}], bundle_label_selector=[{"a": "b"}, {}])


def test_bundle_label_selector(ray) -> None:
    node_id = aioray.get_runtime_context().get_node_id()
    pg = placement_group([{"CPU": 1}], bundle_label_selector=[{"ray.io/node-id": node_id}])
    assert pg.wait(30)
    remove_placement_group(pg)
    pg = placement_group([{"CPU": 1}], bundle_label_selector=[{"ray.io/node-id": "!" + node_id}])
    assert not pg.wait(1)
    assert placement_group_table(pg)["stats"]["scheduling_state"] == "INFEASIBLE"
    remove_placement_group(pg)


def test_a_group_goes_with_its_job_unless_detached(ray) -> None:
    from aioray._private import worker_api

    script = """
import aioray
from aioray.util import placement_group
aioray.init(address=ADDRESS)
placement_group([{"CPU": 1}], name="attached").wait(30)
placement_group([{"CPU": 1}], name="detached", lifetime="detached").wait(30)
aioray.shutdown()
""".replace("ADDRESS", repr(worker_api.require().gcs_address))
    env = {**os.environ, "AIORAY_AUTH_TOKEN": worker_api.require().core.token}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    detached = get_placement_group("detached")
    assert placement_group_table(detached)["state"] == "CREATED"

    def attached_gone() -> bool:
        try:
            get_placement_group("attached")
        except ValueError:
            return True
        return False

    eventually(attached_gone, 15, "the attached group going with its job")
    remove_placement_group(detached)


def test_sync_calls_have_timeouts(ray) -> None:
    pg = placement_group([{"CPU": CPUS + 1}])
    start = time.monotonic()
    assert not pg.wait(0.5)
    assert time.monotonic() - start < 5
    with pytest.raises(GetTimeoutError):
        aioray.get(pg.ready(), timeout=0.5)
    remove_placement_group(pg)


def test_creation_and_removal_do_not_wait_yet_later_calls_see_them_in_order(ray) -> None:
    groups = [placement_group([{"slot": 0.01}]) for _ in range(20)]
    # The table is read after the creations this process sent: every group is there.
    table = placement_group_table()
    assert all(table[pg.id.hex()]["state"] in ("PENDING", "CREATED") for pg in groups)
    assert all(pg.wait(30) for pg in groups)
    for pg in groups:
        remove_placement_group(pg)
    assert placement_group_table(groups[0])["state"] == "REMOVED"  # right after: no wait needed
    table = placement_group_table()
    assert all(table[pg.id.hex()]["state"] == "REMOVED" for pg in groups)
    assert not groups[-1].wait(1)
    named = placement_group([{"slot": 0.01}], name="gone-at-once")
    remove_placement_group(named)
    with pytest.raises(ValueError, match="gone-at-once"):
        get_placement_group("gone-at-once")
    # Work for a group created a moment ago waits for its creation, not fails for want of it.
    fresh = placement_group([{"CPU": 1}])
    assert aioray.get(where_am_i.options(scheduling_strategy=in_group(fresh, 0)).remote(), timeout=60)[0] == (
        fresh.id.hex()
    )
    remove_placement_group(fresh)
    eventually(lambda: not group_names_left(fresh), 15, "the group's resources going")


def test_a_removal_sent_just_before_the_script_ends_is_not_lost(ray) -> None:
    from aioray._private import worker_api

    script = """
import aioray
from aioray.util import get_placement_group, remove_placement_group
aioray.init(address=ADDRESS)
remove_placement_group(get_placement_group("kept-by-another"))
"""  # no shutdown(): the interpreter's exit does it
    script = script.replace("ADDRESS", repr(worker_api.require().gcs_address))
    kept = placement_group([{"slot": 0.01}], name="kept-by-another", lifetime="detached")
    assert kept.wait(30)
    env = {**os.environ, "AIORAY_AUTH_TOKEN": worker_api.require().core.token}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert placement_group_table(kept)["state"] == "REMOVED"
