"""Runs the GCS process: ``python -m aioray._private.gcs``."""

from aioray._private.gcs.server import main

main()
