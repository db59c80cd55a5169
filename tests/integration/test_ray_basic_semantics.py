"""Ray's object semantics (test_basic.py): values of many types through `put` and task arguments,
recursive structures, `get` on single refs, lists and nested refs, numpy arrays zero-copy and
read-only, large objects, and the errors of `put`/`get` on bad input."""

from __future__ import annotations

import collections
import dataclasses
import io
import re
import string

import numpy as np
import pytest

import aioray
from aioray.exceptions import GetTimeoutError
from aioray.testing import SignalActor


@aioray.remote
def identity(x):
    return x


@aioray.remote
def describe(x):
    return type(x).__name__, x


class Point(collections.namedtuple("Point", ["x", "y"])):
    pass


@dataclasses.dataclass
class Record:
    number: int
    tags: list


class Valued:
    def __init__(self, value=0):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, Valued) and other.value == self.value

    def __hash__(self):
        return hash(self.value)


class CustomError(Exception):
    pass


PRIMITIVES = [
    0,
    0.0,
    0.9,
    1 << 62,
    1 << 999,
    -7,
    "a",
    string.printable,
    "\u262f",
    "\xff\xfe\x9c\x001\x000\x00",
    b"\x00bytes\xff",
    bytearray(b"ba"),
    None,
    True,
    False,
    [],
    (),
    {},
    set(),
    frozenset({1, 2}),
    complex(1, 2),
    type,
    int,
    collections.Counter("abracadabra"),
    collections.OrderedDict([("hello", 1), ("world", 2)]),
    collections.deque([1, 2, 3, "a", 3.5]),
    Point(11, y=22),
    Record(3, ["x"]),
    Valued(5),
    range(3, 9, 2),
    [[[[[[[[[[[[]]]]]]]]]]]],
    ((((((((((),),),),),),),),),),
    {"a": {"b": {"c": {"d": {}}}}},
    {Valued(123): Valued(456)},
]


@pytest.mark.parametrize("use_task", [False, True], ids=["put", "task"])
def test_plain_values_round_trip_with_their_types(ray, use_task) -> None:
    for value in PRIMITIVES:
        back = ray.get(identity.remote(value) if use_task else ray.put(value), timeout=30)
        assert back == value, value
        assert type(back) is type(value), value
    for wrapped in ([PRIMITIVES], (PRIMITIVES,), {0: PRIMITIVES}):
        assert ray.get(ray.put(wrapped), timeout=30) == wrapped


def test_numpy_scalars_and_arrays_round_trip(ray) -> None:
    values = [
        np.int8(3),
        np.int32(4),
        np.int64(5),
        np.uint8(3),
        np.uint64(5),
        np.float32(1.9),
        np.float64(1.9),
        np.zeros([100, 100]),
        np.random.normal(size=[100, 100]),
        np.array(["hi", 3]),
        np.array(["hi", 3], dtype=object),
        np.arange(12).reshape(3, 4).T,  # not C-contiguous
        np.array([[1.5, 2]], dtype=np.float16),
    ]
    for v in values:
        for back in (ray.get(ray.put(v), timeout=30), ray.get(identity.remote(v), timeout=30)):
            np.testing.assert_equal(back, v)
            assert back.dtype == v.dtype
            assert np.shape(back) == np.shape(v)


def test_functions_classes_lambdas_and_exceptions_travel(ray) -> None:
    def temp():
        return 1

    assert ray.get(identity.remote(temp), timeout=30)() == 1
    assert ray.get(identity.remote(lambda x: x + 1), timeout=30)(3) == 4
    assert ray.get(identity.remote(float), timeout=30) is float
    assert ray.get(ray.put(Valued), timeout=30)(3) == Valued(3)
    err = ray.get(ray.put(CustomError("boom")), timeout=30)
    assert isinstance(err, CustomError) and err.args == ("boom",)
    regex = ray.get(identity.remote(re.compile(r"\d+\.\d*")), timeout=30)
    assert regex.pattern == r"\d+\.\d*"
    buf = io.StringIO("Hello, world!\n")
    assert ray.get(ray.put(buf), timeout=30).readline() == "Hello, world!\n"


def test_classes_defined_in_tasks_come_back(ray) -> None:
    @ray.remote
    def make():
        class Local:
            def __init__(self):
                self.value = 2

        return Valued(1), Local()

    a, b = ray.get(make.remote(), timeout=30)
    assert a == Valued(1) and b.value == 2


def test_recursive_structures_round_trip(ray) -> None:
    lst = []
    lst.append(lst)
    d = {}
    d["self"] = d

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a
    back_list, back_dict, back_a = ray.get(ray.put([lst, d, a]), timeout=30)
    assert back_list[0] is back_list
    assert back_dict["self"] is back_dict
    assert back_a.other.other is back_a


def test_put_get_many_values(ray) -> None:
    for i in range(0, 100, 7):
        for value in (i * 10**6, i * 10**6 * 1.0, "h" * i, [1] * i):
            assert ray.get(ray.put(value), timeout=30) == value


def test_object_that_holds_a_ref_can_be_put(ray) -> None:
    class Holder:
        def __init__(self):
            self.ref = aioray.put(0)

    back = ray.get(ray.put(Holder()), timeout=30)
    assert ray.get(back.ref, timeout=30) == 0


def test_object_refs_compare_hash_and_pickle_by_identity(ray) -> None:
    import pickle

    a, b = ray.put(1), ray.put(1)
    assert a != b and a == a
    assert len({a, b, a}) == 2
    table = {a: "a", b: "b"}
    copy = pickle.loads(pickle.dumps(a))
    assert copy == a and hash(copy) == hash(a) and table[copy] == "a"
    assert ray.get(copy, timeout=30) == 1
    assert isinstance(a.hex(), str) and len(a.binary()) * 2 == len(a.hex())
    assert bytes.fromhex(a.hex()) == a.binary()


def test_put_of_an_object_ref_is_refused(ray) -> None:
    ref = ray.put(1)
    with pytest.raises(TypeError):
        ray.put(ref)
    # Wrapped in a list, it is allowed and comes back as a ref.
    back = ray.get(ray.put([ref]), timeout=30)
    assert ray.get(back[0], timeout=30) == 1


def test_get_of_lists_and_duplicates(ray) -> None:
    refs = [ray.put(i) for i in range(10)]
    assert ray.get(refs, timeout=30) == list(range(10))
    assert ray.get(refs[3:7], timeout=30) == [3, 4, 5, 6]
    assert ray.get([refs[0], refs[0], refs[1]], timeout=30) == [0, 0, 1]
    assert ray.get([], timeout=30) == []
    assert ray.get(refs[::-1], timeout=30) == list(range(9, -1, -1))


def test_get_does_not_resolve_refs_nested_in_values(ray) -> None:
    inner = ray.put("inner")
    outer = ray.put({"r": inner, "l": [inner]})
    got = ray.get(outer, timeout=30)
    assert isinstance(got["r"], aioray.ObjectRef) and isinstance(got["l"][0], aioray.ObjectRef)
    assert ray.get(got["r"], timeout=30) == "inner"
    # The same for task results holding refs.
    got = ray.get(identity.remote([inner]), timeout=30)
    assert ray.get(got[0], timeout=30) == "inner"


def test_top_level_ref_arguments_are_resolved_nested_ones_are_not(ray) -> None:
    ref = ray.put([1, 2])
    assert ray.get(describe.remote(ref), timeout=30) == ("list", [1, 2])
    name, value = ray.get(describe.remote([ref]), timeout=30)
    assert name == "list" and isinstance(value[0], aioray.ObjectRef)
    assert ray.get(describe.remote(x=ref), timeout=30) == ("list", [1, 2])


def test_same_ref_passed_several_times(ray) -> None:
    @ray.remote
    def f(a, b, a2, k1=None, k2=None, k1_dup=None):
        assert a == k1 == a2 == k1_dup == [1]
        assert b == k2 == [1]
        return "ok"

    arg = [1]
    ref = ray.put(arg)
    assert ray.get(f.remote(ref, arg, ref, k1=ref, k2=arg, k1_dup=ref), timeout=30) == "ok"


def test_get_on_something_not_a_ref_nor_a_list_is_a_value_error(ray) -> None:
    with pytest.raises(ValueError):
        ray.get(1)
    with pytest.raises(ValueError):
        ray.get((ray.put(1),))
    with pytest.raises(ValueError):
        ray.get({"a": ray.put(1)})


def test_get_on_a_list_holding_a_non_ref_is_a_type_error(ray) -> None:
    with pytest.raises(TypeError):
        ray.get([ray.put(1), 2])


def test_get_timeout(ray) -> None:
    signal = SignalActor.remote()
    ref = signal.wait.remote()
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0.1)
    with pytest.raises(TimeoutError):
        ray.get([ray.put(1), ref], timeout=0.1)
    with pytest.raises(GetTimeoutError):
        ray.get(ref, timeout=0)
    ray.get(signal.send.remote(), timeout=30)
    assert ray.get(ref, timeout=30) is None
    assert ray.get(ray.put(5), timeout=0) == 5


def test_numpy_arrays_are_zero_copy_and_read_only(ray) -> None:
    arr = np.arange(1 << 20, dtype=np.int64)  # 8 MiB: lives in the shared store
    ref = ray.put(arr)
    a = ray.get(ref, timeout=30)
    b = ray.get(ref, timeout=30)
    np.testing.assert_array_equal(a, arr)
    assert not a.flags.writeable and not a.flags.owndata
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1
    # Two gets of one object share one buffer in the store.
    assert np.shares_memory(a, b)
    # A copy is writable, and does not change the stored object.
    c = a.copy()
    c[0] = 42
    assert ray.get(ref, timeout=30)[0] == 0


def test_numpy_arguments_are_read_only_in_tasks(ray) -> None:
    @ray.remote
    def inspect_arg(x):
        try:
            x[0] = 1
        except ValueError:
            return "read-only", int(x.sum())
        return "writable", int(x.sum())

    arr = np.ones(1 << 18, dtype=np.int64)
    assert ray.get(inspect_arg.remote(ray.put(arr)), timeout=30) == ("read-only", 1 << 18)
    assert ray.get(inspect_arg.remote(arr), timeout=30) == ("read-only", 1 << 18)


def test_large_objects_round_trip(ray) -> None:
    blob = np.random.bytes(64 << 20)
    ref = ray.put(blob)
    assert ray.get(ref, timeout=30) == blob

    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    @ray.remote
    def total(x):
        return int(x.sum(dtype=np.int64))

    big = make.remote(48 << 20)
    assert ray.get(total.remote(big), timeout=30) == 7 * (48 << 20)
    got = ray.get(big, timeout=30)
    assert got.nbytes == 48 << 20 and got[-1] == 7
    del got


def test_large_objects_between_actors(ray) -> None:
    @ray.remote
    class Store:
        def make(self, n):
            return np.ones(n, dtype=np.uint8)

        def size(self, arr):
            return arr.nbytes

    a, b = Store.remote(), Store.remote()
    ref = a.make.remote(16 << 20)
    assert ray.get(b.size.remote(ref), timeout=30) == 16 << 20
