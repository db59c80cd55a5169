"""What a driver and the cluster it joins must share: aioray's version and Python's (major.minor).

Task specs, value frames and pickled functions cross between them; a mismatch fails in ways far
from the cause, so the GCS refuses such a driver at connect, as Ray does.
"""

from __future__ import annotations

import sys
from importlib.metadata import PackageNotFoundError, version


def build_version() -> str:
    try:
        aioray_version = version("aioray")
    except PackageNotFoundError:  # a source tree that was never installed
        aioray_version = "0+unknown"
    return f"aioray {aioray_version}, Python {sys.version_info.major}.{sys.version_info.minor}"
