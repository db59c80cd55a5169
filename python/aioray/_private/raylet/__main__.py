"""Runs a raylet process: ``python -m aioray._private.raylet``."""

from aioray._private.raylet.server import main

main()
