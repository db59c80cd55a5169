"""Which GPUs a lease gets: device ids handed out with the lease, as Ray assigns them.

A lease for n >= 1 GPUs gets n whole devices; a fractional one (< 1) shares a device with other
fractional leases, the fullest device that still has room first (so whole devices stay free for
whole requests). A task in a placement group asks for its bundle's GPUs (``GPU_group_…``): those
come out of the same devices.
"""

from __future__ import annotations

from aioray._private.common.resources import ResourceSet

_SCALE = 10_000  # as common.resources: fractions exact to 1/10000


def gpus_in(shape: ResourceSet) -> float:
    """The GPUs a shape asks for, directly or through its placement-group bundle."""
    amounts = shape.to_dict()
    direct = amounts.get("GPU", 0.0)
    grouped = [v for k, v in amounts.items() if k.startswith("GPU_group_")]
    return direct + (max(grouped) if grouped else 0.0)  # a bundle shape names one GPU resource


class GpuAllocator:
    def __init__(self, device_ids: list[int]) -> None:
        self.free = {device: _SCALE for device in device_ids}  # device id -> free units

    def take(self, amount: float) -> tuple[int, ...] | None:
        """Device ids for `amount` GPUs, or None if no devices can hold it right now."""
        units = round(amount * _SCALE)
        if units <= 0:
            return ()
        if units >= _SCALE:
            whole = [d for d, free in self.free.items() if free == _SCALE]
            count = units // _SCALE
            if len(whole) < count:
                return None
            chosen = tuple(sorted(whole)[:count])
            for d in chosen:
                self.free[d] = 0
            return chosen
        fitting = [d for d, free in self.free.items() if free >= units]
        if not fitting:
            return None
        device = min(fitting, key=lambda d: (self.free[d], d))
        self.free[device] -= units
        return (device,)

    def give_back(self, devices: tuple[int, ...], amount: float) -> None:
        units = round(amount * _SCALE)
        per_device = _SCALE if units >= _SCALE else units
        for d in devices:
            if d in self.free:
                self.free[d] = min(_SCALE, self.free[d] + per_device)


__all__ = ["GpuAllocator", "gpus_in"]
