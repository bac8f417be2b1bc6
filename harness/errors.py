"""Errors as one line instead of a traceback: `friendly_errors`, a context manager or
decorator for CLI entry points that turns disk full, a read-only or failing disk, Ctrl-C or
SIGTERM, bad input (ValueError), a busy folder and a stopped sweep (`SweepStopped`) into one
line on stderr and an exit code (2 bad input, 130 Ctrl-C, 143 SIGTERM, 1 otherwise);
`explain` words one exception.

A write that fails for the disk's sake (`io_fault`: ENOSPC, EDQUOT, EFBIG, EROFS, EACCES,
EPERM, EIO) is the output folder's fault, not the run's: a child process of a sweep
(`child_main`) hands it to its parent (`FaultChannel`) and exits with `IO_FAULT_EXIT`, and
the parent stops the sweep with one line naming the file and the errno's meaning.

Imports neither torch nor pandas (the CLI's first import).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator

__all__ = ["friendly_errors", "explain", "OutDirBusy", "Terminated", "SweepStopped",
           "io_fault", "errno_of", "describe_stop", "signals_raise", "child_main", "FaultChannel",
           "IO_FAULT_EXIT"]


class OutDirBusy(RuntimeError):
    """Another process holds the output folder."""


class Terminated(KeyboardInterrupt):
    """A stop signal (SIGTERM) raised like Ctrl-C's KeyboardInterrupt, so that whatever
    cleans up after Ctrl-C (stop the child, keep the finished runs) does so for it too."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class SweepStopped(Exception):
    """A sweep that ended early: its one line (what stopped it, the finished runs kept, how
    to resume) and its exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


IO_FAULT_EXIT = 75  # EX_TEMPFAIL: a child whose output folder could not be written
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NO_WRITE = (errno.EROFS, errno.EACCES, errno.EPERM)
_IO_FAULTS = _DISK_FULL + _NO_WRITE + (errno.EIO,)
_REMEDY = {**dict.fromkeys(_DISK_FULL, "free space"),
           **dict.fromkeys(_NO_WRITE, "make it writable"), errno.EIO: "check the disk"}


def errno_of(exc: OSError) -> int | None:
    """The error's errno, also where a library left it only in the message (pyarrow)."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"errno (\d+)", str(exc), re.IGNORECASE)  # pyarrow's wording
    return int(found.group(1)) if found else None


def io_fault(exc: BaseException | None) -> OSError | None:
    """The first OSError in the chain whose errno is the disk's fault (full, read-only,
    forbidden, failing); None when there is none."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and errno_of(exc) in _IO_FAULTS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _fault_words(cause: OSError, where: str) -> tuple[str, str]:
    """('cannot write PATH: no space left on device (ENOSPC)', 'free space')."""
    code = errno_of(cause)
    meaning = os.strerror(code).lower() if code is not None else str(cause)
    name = errno.errorcode.get(code, "")
    target = cause.filename or where
    return (f"cannot write {target}: {meaning}" + (f" ({name})" if name else ""),
            _REMEDY.get(code, "fix it"))


def describe_stop(exc: BaseException, where: str = "the output folder"
                  ) -> tuple[int, str, str] | None:
    """(exit code, what stopped the work, what to do before rerunning) for Ctrl-C, a stop
    signal or a write the disk refused; None for anything else."""
    if isinstance(exc, Terminated):
        return 128 + exc.signum, f"stopped by {signal.Signals(exc.signum).name}", ""
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted (Ctrl-C)", ""
    cause = io_fault(exc)
    if cause is None:
        return None
    what, remedy = _fault_words(cause, where)
    return 1, what, remedy


def explain(exc: BaseException, what: str | os.PathLike | None = None
            ) -> tuple[int, str] | None:
    """(exit code, one-line message) for the errors a user can act on, else None. ``what``
    names the output folder."""
    where = str(what) if what is not None else "the output folder"
    if isinstance(exc, SweepStopped):
        return exc.code, str(exc)
    if isinstance(exc, (ValueError, OutDirBusy)):
        text = " ".join(str(exc).split("\n")) or type(exc).__name__
        return (2 if isinstance(exc, ValueError) else 1), f"error: {text}"
    stop = describe_stop(exc, where)
    if stop is None:
        return None
    code, what_stopped, remedy = stop
    todo = f"{remedy} and rerun" if remedy else "rerun"
    return code, f"{what_stopped}; finished runs are kept in {where}; {todo} the same " \
                 f"command to resume"


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


@contextlib.contextmanager
def signals_raise(*signums: int) -> Iterator[None]:
    """Inside the block, each of ``signums`` raises `Terminated` (like Ctrl-C raises
    KeyboardInterrupt) instead of ending the process on the spot; the handlers before are
    put back after. Outside the main thread (no signals there) it does nothing."""
    def _raise(signum, frame):
        raise Terminated(signum)

    previous = {}
    try:
        for s in signums:
            previous[s] = signal.signal(s, _raise)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- a child process of a sweep hands its disk fault to the parent ---------------------------

_FAULT_FD_ENV = "QVIT_HARNESS_FAULT_FD"


class FaultChannel:
    """A pipe on which a child (`child_main`) names the write its disk refused: the parent
    passes ``env`` and ``pass_fds`` to the child and, once it has exited, `close` returns
    the fault it named (read without waiting: what a child wrote is in the pipe before it
    exits, and a grandchild holding the pipe open must not hold up the parent)."""

    def __init__(self):
        self._read, self._write = os.pipe()
        self.env = {_FAULT_FD_ENV: str(self._write)}
        self.pass_fds = (self._write,)

    def close(self) -> OSError | None:
        """The child's fault as an OSError (errno, meaning, path), or None."""
        os.close(self._write)
        os.set_blocking(self._read, False)
        try:
            text = os.read(self._read, 65536).decode(errors="replace")
        except BlockingIOError:
            text = ""
        finally:
            os.close(self._read)
        try:
            info = json.loads(text)
            return OSError(info["errno"], info["strerror"], info["filename"])
        except (ValueError, KeyError, TypeError):
            return None


def _send_fault(cause: OSError) -> None:
    code = errno_of(cause)
    text = json.dumps({"errno": code, "strerror": os.strerror(code) if code else str(cause),
                       "filename": None if cause.filename is None else str(cause.filename)})
    fd = os.environ.get(_FAULT_FD_ENV)
    try:
        os.write(int(fd), text.encode())
    except (TypeError, ValueError, OSError):  # run by hand, not by a sweep: say it here
        print(_fault_words(cause, "the output folder")[0], file=sys.stderr, flush=True)


def child_main(main: Callable[..., int]) -> Callable[..., int]:
    """The entry point of a sweep's child process: a write its disk refused is handed to
    the parent (`FaultChannel`) and ends the child with `IO_FAULT_EXIT`; Ctrl-C ends it
    quietly (130); the parent says what happened, in one line."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except KeyboardInterrupt:
            return 130
        except BaseException as exc:
            cause = io_fault(exc)
            if cause is None:
                raise
            _send_fault(cause)
            return IO_FAULT_EXIT
    return wrapper
