"""Two processes share one node store: the child writes a numpy array, the parent reads it zero-copy."""

import subprocess
import sys
import textwrap
import uuid

import numpy as np

from aioray._store import ObjectStore

name = f"aioray-demo-{uuid.uuid4().hex[:8]}"
store = ObjectStore.create(name, 64 << 20)
try:
    subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                """
                import sys, numpy as np
                from aioray._store import ObjectStore
                s = ObjectStore.attach(sys.argv[1])
                with s.create(b"squares", 8 * 1000) as buf:
                    np.frombuffer(buf, dtype=np.int64)[:] = np.arange(1000) ** 2
                s.seal(b"squares")
                """
            ),
            name,
        ],
        check=True,
    )
    view = store.get(b"squares")
    squares = np.frombuffer(view, dtype=np.int64)
    print("sum of squares below 1000 =", int(squares.sum()), "| read-only:", not squares.flags.writeable)
    print("store stats:", store.stats())
finally:
    store.destroy()
