"""The GCS tells every raylet of a lease owner's death, and a dead driver's job finishes."""

from __future__ import annotations

import asyncio

from aioray._private.common import versions
from aioray._private.common.pubsub import WORKER_DEATH_CHANNEL
from aioray._private.gcs.server import Gcs
from aioray._proto.aioray import v1 as pb


async def next_death(stream: object) -> pb.WorkerDeath:
    msg = await asyncio.wait_for(stream.__anext__(), 5)  # type: ignore[attr-defined]
    assert msg.channel == WORKER_DEATH_CHANNEL
    return pb.WorkerDeath().parse(msg.data)


async def test_a_driver_reported_dead_finishes_its_job_and_raylets_hear_of_it() -> None:
    gcs = Gcs("token")
    stream = gcs.pubsub.subscribe(pb.SubscribeRequest(channels=[WORKER_DEATH_CHANNEL]))
    first = asyncio.ensure_future(next_death(stream))
    await asyncio.sleep(0)  # subscribed
    job = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:1", version=versions.build_version())
    )
    other = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:2", version=versions.build_version())
    )
    death = pb.WorkerDeath(node_id=b"n" * 16, worker_id=b"w" * 16, address="driver:1", exit_code=-9)
    await gcs.workers.report_worker_death(death)
    assert await first == death
    # Its job finished (as for any job, its driver's leases are named once more by address).
    assert await next_death(stream) == pb.WorkerDeath(address="driver:1")
    assert job.job_id in gcs.jobs.finished and gcs.jobs.finished[job.job_id].is_dead
    assert list(gcs.jobs.jobs) == [other.job_id]
    await stream.aclose()  # type: ignore[attr-defined]
    gcs.close()


async def test_a_worker_reported_dead_is_published_and_finishes_no_job() -> None:
    gcs = Gcs("token")
    stream = gcs.pubsub.subscribe(pb.SubscribeRequest(channels=[WORKER_DEATH_CHANNEL]))
    first = asyncio.ensure_future(next_death(stream))
    await asyncio.sleep(0)
    job = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:1", version=versions.build_version())
    )
    death = pb.WorkerDeath(worker_id=b"x" * 16, address="worker:7")
    await gcs.workers.report_worker_death(death)
    assert await first == death
    assert list(gcs.jobs.jobs) == [job.job_id]
    await stream.aclose()  # type: ignore[attr-defined]
    gcs.close()


async def test_a_job_marked_finished_names_its_driver() -> None:
    gcs = Gcs("token")
    stream = gcs.pubsub.subscribe(pb.SubscribeRequest(channels=[WORKER_DEATH_CHANNEL]))
    first = asyncio.ensure_future(next_death(stream))
    await asyncio.sleep(0)
    job = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:1", version=versions.build_version())
    )
    await gcs.jobs.mark_job_finished(pb.JobId(job_id=job.job_id))
    assert await first == pb.WorkerDeath(address="driver:1")
    await stream.aclose()  # type: ignore[attr-defined]
    gcs.close()


async def test_a_raylet_subscribing_later_still_hears_of_earlier_deaths() -> None:
    # As a raylet resubscribing after a GCS restart, while deaths were reported meanwhile.
    gcs = Gcs("token")
    job = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:1", version=versions.build_version())
    )
    await gcs.jobs.mark_job_finished(pb.JobId(job_id=job.job_id))  # by address only: not kept
    death = pb.WorkerDeath(worker_id=b"x" * 16, address="worker:7")
    await gcs.workers.report_worker_death(death)
    stream = gcs.pubsub.subscribe(pb.SubscribeRequest(channels=[WORKER_DEATH_CHANNEL]))
    assert await next_death(stream) == death
    later = pb.WorkerDeath(worker_id=b"y" * 16, address="worker:8")
    await gcs.workers.report_worker_death(later)
    assert await next_death(stream) == later
    await stream.aclose()  # type: ignore[attr-defined]
    gcs.close()


async def test_the_jobs_of_drivers_on_a_dead_node_finish() -> None:
    gcs = Gcs("token")
    stream = gcs.pubsub.subscribe(pb.SubscribeRequest(channels=[WORKER_DEATH_CHANNEL]))
    first = asyncio.ensure_future(next_death(stream))
    await asyncio.sleep(0)
    version = versions.build_version()
    there = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:1", version=version, driver_node_id=b"a" * 16)
    )
    elsewhere = await gcs.jobs.register_job(
        pb.RegisterJobRequest(driver_address="driver:2", version=version, driver_node_id=b"b" * 16)
    )
    gcs._on_node_death(b"a" * 16)
    assert await first == pb.WorkerDeath(address="driver:1")
    assert there.job_id in gcs.jobs.finished
    assert list(gcs.jobs.jobs) == [elsewhere.job_id]
    await stream.aclose()  # type: ignore[attr-defined]
    gcs.close()
