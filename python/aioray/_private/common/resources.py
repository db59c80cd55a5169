"""Resource shapes and accounting in fixed point, so fractional amounts never drift."""

from __future__ import annotations

from collections.abc import Mapping

_SCALE = 10_000


class ResourceSet:
    """A bag of named amounts (CPU, GPU, memory, custom), exact to 1/10000."""

    __slots__ = ("_units",)

    def __init__(self, amounts: Mapping[str, float] | None = None) -> None:
        self._units: dict[str, int] = {}
        for name, amount in (amounts or {}).items():
            if amount < 0:
                raise ValueError(f"resource {name!r} must not be negative, got {amount}")
            units = round(amount * _SCALE)
            if units:
                self._units[name] = units

    @classmethod
    def from_wire(cls, amounts: Mapping[str, float]) -> ResourceSet:
        """Amounts reported by a raylet; `available` may dip below zero while blocked workers resume."""
        return cls._from_units({k: round(v * _SCALE) for k, v in amounts.items() if round(v * _SCALE)})

    @classmethod
    def _from_units(cls, units: dict[str, int]) -> ResourceSet:
        r = cls()
        r._units = units
        return r

    def to_dict(self) -> dict[str, float]:
        return {k: v / _SCALE for k, v in self._units.items()}

    def fits_in(self, other: ResourceSet) -> bool:
        return all(other._units.get(k, 0) >= v for k, v in self._units.items())

    def __sub__(self, other: ResourceSet) -> ResourceSet:
        units = dict(self._units)
        for k, v in other._units.items():
            units[k] = units.get(k, 0) - v
        return ResourceSet._from_units(units)

    def __add__(self, other: ResourceSet) -> ResourceSet:
        units = dict(self._units)
        for k, v in other._units.items():
            units[k] = units.get(k, 0) + v
        return ResourceSet._from_units({k: v for k, v in units.items() if v})

    def get(self, name: str) -> float:
        return self._units.get(name, 0) / _SCALE

    def is_empty(self) -> bool:
        return not self._units

    def key(self) -> tuple[tuple[str, int], ...]:
        return tuple(sorted(self._units.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ResourceSet) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        return f"ResourceSet({self.to_dict()})"


def task_resources(
    num_cpus: float | None, num_gpus: float | None, resources: Mapping[str, float] | None, default_cpus: float
) -> ResourceSet:
    """The resource shape of a task or actor from its options (Ray's defaults)."""
    amounts: dict[str, float] = dict(resources or {})
    for reserved in ("CPU", "GPU"):
        if reserved in amounts:
            raise ValueError(f"use num_{reserved.lower()}s=..., not resources={{'{reserved}': ...}}")
    amounts["CPU"] = default_cpus if num_cpus is None else num_cpus
    if num_gpus:
        amounts["GPU"] = num_gpus
    return ResourceSet(amounts)
