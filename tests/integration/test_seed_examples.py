"""The Ray Core examples of *Learning Ray*, chapter 2 (seed 001), run unchanged after `import aioray as ray`."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXAMPLES = """
import aioray as ray
import time

ray.init(num_cpus=2)  # 2-1

database = [  # 2-2
    "Learning", "Ray",
    "Flexible", "Distributed", "Python", "for", "Data", "Science"
]

def retrieve(item):
    time.sleep(item / 10.)
    return item, database[item]

def print_runtime(input_data, start_time, decimals=1):  # 2-3
    print(f'Runtime: {time.time() - start_time:.{decimals}f} seconds, data:')
    print(*input_data, sep="\\n")

start = time.time()
data = [retrieve(item) for item in range(8)]
print_runtime(data, start)

@ray.remote  # 2-4
def retrieve_task(item):
    return retrieve(item)

start = time.time()  # 2-5
data_references = [retrieve_task.remote(item) for item in range(8)]
data = ray.get(data_references)
print_runtime(data, start, 2)
assert data == list(enumerate(database))

database_object_ref = ray.put(database)  # 2-6

@ray.remote
def retrieve_task(item):
    obj_store_data = ray.get(database_object_ref)
    time.sleep(item / 10.)
    return item, obj_store_data[item]

start = time.time()  # 2-7
data_references = [retrieve_task.remote(item) for item in range(8)]
all_data = []
while len(data_references) > 0:
    finished, data_references = ray.wait(data_references, num_returns=2, timeout=7.0)
    data = ray.get(finished)
    print_runtime(data, start, 3)
    all_data.extend(data)
assert sorted(all_data) == list(enumerate(database))

@ray.remote  # 2-8
def follow_up_task(retrieve_result):
    original_item, _ = retrieve_result
    follow_up_result = retrieve(original_item + 1)
    return retrieve_result, follow_up_result

retrieve_refs = [retrieve_task.remote(item) for item in [0, 2, 4, 6]]
follow_up_refs = [follow_up_task.remote(ref) for ref in retrieve_refs]
result = [print(data) for data in ray.get(follow_up_refs)]
assert ray.get(follow_up_refs)[1] == ((2, "Flexible"), (3, "Distributed"))

@ray.remote  # 2-11
def task_owned():
    return

@ray.remote
def task(dependency):
    res_owned = task_owned.remote()
    return

val = ray.put("value")
res = task.remote(dependency=val)
assert ray.get(res) is None

@ray.remote  # 2-9
class DataTracker:
    def __init__(self):
        self._counts = 0

    def increment(self):
        self._counts += 1

    def counts(self):
        return self._counts

@ray.remote  # 2-10
def retrieve_tracker_task(item, tracker):
    obj_store_data = ray.get(database_object_ref)
    time.sleep(item / 10.)
    tracker.increment.remote()
    return item, obj_store_data[item]

tracker = DataTracker.remote()

data_references = [retrieve_tracker_task.remote(item, tracker) for item in range(8)]
data = ray.get(data_references)
print(data)
print(ray.get(tracker.counts.remote()))
assert ray.get(tracker.counts.remote()) == 8
print("ALL EXAMPLES PASSED")
"""


def test_learning_ray_chapter_2_examples() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(EXAMPLES)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL EXAMPLES PASSED" in proc.stdout
