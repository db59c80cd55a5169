"""A task's error as its caller reads it: the frame that carries it, and the traceback of the
user's code alone."""

from __future__ import annotations

import traceback

from aioray._private.common import serialization
from aioray.exceptions import RayTaskError


def error_frame(err: RayTaskError) -> bytes:
    """The error as its caller will read it. An exception that cannot be pickled, or that pickles
    but cannot be rebuilt (an ``__init__`` that takes other arguments), is sent as its traceback
    text: the caller gets a RayTaskError with the message, not a failure to read the error."""
    try:
        frame = serialization.serialize(err, is_error=True).to_bytes()
        rebuilt, _ = serialization.deserialize(frame)  # a failure to rebuild comes back as a RayError
        if isinstance(rebuilt, RayTaskError):
            return frame
    except Exception:
        pass
    plain = RayTaskError(err.function_name, err.traceback_str, None)
    return serialization.serialize(plain, is_error=True).to_bytes()


def user_traceback(e: BaseException, runner_file: str) -> str:
    """The traceback of the user's code, without the frames of `runner_file` (aioray's module that
    called it) above it."""
    tb = e.__traceback__
    # Skip the executor's frames (one, or two for a generator's): the user's code starts below.
    while tb is not None and tb.tb_next is not None and tb.tb_frame.f_code.co_filename == runner_file:
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(e), e, tb))


__all__ = ["error_frame", "user_traceback"]
