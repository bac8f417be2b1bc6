"""Errors as one line instead of a traceback: `friendly_errors`, a context manager or
decorator for CLI entry points that turns disk full, a read-only or forbidden folder, Ctrl-C,
bad input (ValueError) and a busy folder into one line on stderr and an exit code (2 bad
input, 130 interrupted, 1 otherwise); `explain` words one exception.

Imports neither torch nor pandas (the CLI's first import).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
from collections.abc import Callable

__all__ = ["friendly_errors", "explain", "OutDirBusy"]


class OutDirBusy(RuntimeError):
    """Another process holds the output folder."""


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)


def _os_cause(exc: BaseException) -> OSError | None:
    """The first OSError in the chain that is about disk space or write permission."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and (exc.errno in _DISK_FULL + _NO_WRITE or
                                         "No space left on device" in str(exc)):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def explain(exc: BaseException, what: str | os.PathLike | None = None
            ) -> tuple[int, str] | None:
    """(exit code, one-line message) for the errors a user can act on, else None. ``what``
    names the output folder."""
    where = str(what) if what is not None else "the output folder"
    if isinstance(exc, KeyboardInterrupt):
        return 130, f"interrupted; finished runs are kept in {where}; rerun the same command " \
                    f"to resume"
    if isinstance(exc, (ValueError, OutDirBusy)):
        text = " ".join(str(exc).split("\n")) or type(exc).__name__
        return (2 if isinstance(exc, ValueError) else 1), f"error: {text}"
    cause = _os_cause(exc)
    if cause is None:
        return None
    target = cause.filename or where
    if cause.errno in _NO_WRITE:
        return 1, f"cannot write {target} ({cause.strerror}): use --out on a writable folder " \
                  f"that you may write to"
    return 1, f"disk full while writing {target}; the table keeps every finished epoch; " \
              f"free space and rerun the same command to resume"


class friendly_errors(contextlib.AbstractContextManager):  # noqa: N801 - used like a function
    """Errors a user can act on as one line on stderr, no traceback (`explain`).

    ``with friendly_errors(out_dir): ...`` exits with the code (SystemExit); set
    ``.what`` inside the block once the folder is known. As a decorator of ``main(argv) ->
    int`` (``@friendly_errors`` or ``@friendly_errors(out_dir)``) the code is returned.
    Everything else propagates unchanged."""

    def __new__(cls, what=None):
        if callable(what):  # used bare as a decorator
            return cls()(what)
        return super().__new__(cls)

    def __init__(self, what: str | os.PathLike | None = None):
        self.what = what

    def _report(self, exc: BaseException) -> int | None:
        found = explain(exc, self.what)
        if found is None:
            return None
        code, message = found
        with contextlib.suppress(Exception):
            print(message, file=sys.stderr, flush=True)
        return code

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc is None:
            return None
        code = self._report(exc)
        if code is None:
            return None
        raise SystemExit(code) from None

    def __call__(self, func: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            try:
                return func(*args, **kwargs)
            except (Exception, KeyboardInterrupt) as exc:
                code = self._report(exc)
                if code is None:
                    raise
                return code
        return wrapper
