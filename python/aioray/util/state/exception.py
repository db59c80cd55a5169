"""The state API's error (Ray's ``ray.util.state.exception``)."""

from __future__ import annotations

from aioray.exceptions import RayError


class RayStateApiException(RayError):
    """A state query failed, or (with ``raise_on_missing_output=True``) its answer is incomplete."""


__all__ = ["RayStateApiException"]
