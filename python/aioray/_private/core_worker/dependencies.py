"""Task arguments: packing them at submission, resolving ref arguments before a task is pushed.

At submission, plain values up to the inline limit travel inside the spec;
larger ones are put into the store like `put` (kept alive by the call), and
ObjectRef arguments become dependencies. Every ref a call keeps alive is
counted as *submitted* in the ownership table until the call is done.

Before a task (or actor call, or actor constructor) is pushed, each
dependency is resolved: its value is waited for and filled into the spec,
inline or as where-in-which-store (the executing worker reads it from there).
An object whose node died is rebuilt from lineage first; a dependency that
holds an error makes the task fail with that same error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aioray._private.common import serialization, task_spec
from aioray._private.core_worker.object_ref import ObjectRef
from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable
from aioray.exceptions import RayTaskError, TaskCancelledError

# (argument index, object id, owner address)
Dependency = tuple[int, bytes, str]
WaitValue = Callable[[bytes, str, float | None], Awaitable[ObjectValue]]


LOST_COPY_POLL_S = 0.2


class Packed:
    __slots__ = ("args", "deps", "kept_alive")

    def __init__(
        self, args: list[tuple[Any, ...]], deps: list[Dependency], kept_alive: list[tuple[bytes, str]]
    ) -> None:
        self.args = args  # wire args; a dependency's slot is filled when it is resolved
        self.deps = deps
        self.kept_alive = kept_alive  # every ref the call keeps alive (counted as submitted)


class DependencyResolver:
    def __init__(
        self,
        refs: OwnershipTable,
        put_frame: Callable[[serialization.Frame], ObjectRef],
        wait_value: WaitValue,
        reconstruct: Callable[[bytes], Awaitable[None]],
        dead_nodes: set[bytes],
        own_address: Callable[[], str],
        inline_limit: int,
    ) -> None:
        """`own_address()` is this process's address (known once its server is up)."""
        self._refs = refs
        self._put_frame = put_frame
        self._wait_value = wait_value
        self._reconstruct = reconstruct
        self._dead_nodes = dead_nodes
        self._inline_limit = inline_limit
        self._own_address = own_address

    def pack(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Packed:
        """The call's wire args, its top-level ref dependencies and every ref it keeps alive (any thread).

        The refs are counted as submitted here, before any temporary ObjectRef of
        this call can be dropped; the caller removes the count when the call is done.
        If packing fails, nothing stays counted.
        """
        wire_args: list[tuple[Any, ...]] = []
        deps: list[Dependency] = []
        kept: list[tuple[bytes, str]] = []
        try:
            for i, arg in enumerate([*args, *kwargs.values()]):
                if isinstance(arg, ObjectRef):
                    dep = (arg.binary(), arg.owner_address)
                else:
                    try:
                        frame = serialization.serialize(arg)
                    except serialization.SerializationError as e:
                        where = (
                            f"argument {i}"
                            if i < len(args)
                            else f"keyword argument {list(kwargs)[i - len(args)]!r}"
                        )
                        raise TypeError(f"{name}: {where} cannot be sent to a worker: {e}") from None
                    inner = [(r.binary(), r.owner_address) for r in frame.contained_refs]
                    self._refs.add_submitted(inner)
                    kept.extend(inner)
                    if frame.size <= self._inline_limit:
                        wire_args.append((task_spec.ARG_INLINE, frame.to_bytes()))
                        continue
                    # A large argument goes through the store like a put, kept alive by the call.
                    ref = self._put_frame(frame)
                    dep = (ref.binary(), ref.owner_address)
                self._refs.add_submitted([dep])
                kept.append(dep)
                deps.append((i, *dep))
                wire_args.append((task_spec.ARG_INLINE, b""))
        except BaseException:
            # Undo this call's counts so the table is as before; a large argument already put
            # is then freed normally once its temporary ObjectRef is dropped.
            self._refs.remove_submitted([oid for oid, _ in kept])
            raise
        return Packed(wire_args, deps, kept)

    async def await_lost_copies(self, deps: list[Dependency], timeout: float) -> None:
        """A worker could not read a store copy of one of `deps`: waits until the node of one of this
        process's own store dependencies is known dead (the GCS notices within a few seconds), so
        that resolving them again rebuilds the lost copy rather than pointing at it once more."""
        own = self._own_address()
        nodes = set()
        for _, oid, owner in deps:
            value = self._refs.value(oid) if owner == own else None
            if value is not None and value.inline is None and value.node_id:
                nodes.add(value.node_id)
        deadline = asyncio.get_running_loop().time() + timeout
        # Polled: the dead set is the node directory's, filled from the GCS's stream; this rare path
        # is not worth an event on every node death.
        while nodes and not nodes & self._dead_nodes and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(LOST_COPY_POLL_S)

    @staticmethod
    def failure_of(task_name: str, frame: bytes) -> bytes:
        """The error a task fails with when its argument failed with `frame`, as in Ray: a user's
        error as it is (still catchable as the user's class), a cancellation as it is, and any other
        of aioray's errors (a dead actor or worker, a lost object) as a RayTaskError of this task
        whose ``cause`` is that error."""
        err, _ = serialization.deserialize(frame)
        if isinstance(err, RayTaskError | TaskCancelledError) or not isinstance(err, BaseException):
            return frame
        wrapped = RayTaskError(
            task_name, f"an argument of {task_name} failed: {type(err).__name__}: {err}", err
        )
        try:
            return serialization.serialize(wrapped, is_error=True).to_bytes()
        except serialization.SerializationError:
            return frame

    async def resolve(self, args: list[tuple[Any, ...]], deps: list[Dependency]) -> bytes | None:
        """On the loop: waits for the ref arguments and fills them into `args` (inline values, or
        where in which store). Returns the error frame of a dependency that failed, if one did."""
        for index, oid, owner in deps:
            value = await self._wait_value(oid, owner, None)
            if value.inline is None and owner == self._own_address() and value.node_id in self._dead_nodes:
                await self._reconstruct(oid)  # its node died: rebuild it first
                value = await self._wait_value(oid, owner, None)
            if value.inline is not None:
                if serialization.peek_flags(value.inline)[1]:
                    value.accessed = True  # the dependent task fails with it: handled
                    return value.inline
                args[index] = (task_spec.ARG_INLINE, value.inline)
            else:
                args[index] = (task_spec.ARG_STORE, oid, value.node_id, value.size, value.node_address)
        return None
