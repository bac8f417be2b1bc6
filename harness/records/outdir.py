"""The output folder: can be created and written (`check_out_dir`), and belongs to one sweep
at a time (`owned_dir_lock`: an exclusive ``flock`` on ``<out>/.harness.lock`` naming its
holder; a second sweep is refused with `OutDirBusy`; the kernel drops the lock when its
process dies, so a lock left by a killed sweep is simply taken over).

Imports neither torch nor pandas: the CLI calls it first, so a wrong ``--out`` or a busy
folder is said within a second.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import OutDirBusy

__all__ = ["OutDirBusy", "check_out_dir", "owned_dir_lock", "LOCK_NAME"]

LOCK_NAME = ".harness.lock"


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """The output folder, created if need be; ValueError (one line) when it names an
    existing file or cannot be created or written."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ValueError(f"{option} {p} is an existing file, not a folder: name a new folder or "
                         f"one that holds earlier results")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{option} {p} cannot be created ({e.strerror or e}): name a folder "
                         f"on a writable file system that you may write to") from None
    try:
        fd, probe = tempfile.mkstemp(dir=p, prefix=".harness-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{option} {p} is not writable ({e.strerror or e}): name a folder on "
                         f"a writable file system that you may write to") from None
    return p


_held: dict[Path, int] = {}  # folders this process holds -> nesting depth


def _holder(text: str) -> dict[str, str]:
    info = {}
    for line in text.splitlines():
        key, _, value = line.partition("=")
        info[key.strip()] = value.strip()
    return info


@contextlib.contextmanager
def owned_dir_lock(path: str | os.PathLike) -> Iterator[Path]:
    """Hold ``<path>/.harness.lock`` (exclusive, non-blocking ``flock``) for the block, with
    this process's pid, host, start time and command written into it. Re-entrant within a
    process. Raises `OutDirBusy` (one line naming the holder) when another process holds it."""
    folder = Path(path).resolve()
    if folder in _held:
        _held[folder] += 1
        try:
            yield folder / LOCK_NAME
        finally:
            _held[folder] -= 1
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            h = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            raise OutDirBusy(
                f"{folder} is in use by pid {h.get('pid', '?')} on {h.get('host', '?')} since "
                f"{h.get('since', '?')} (command {h.get('command', '?')}): wait for it to "
                f"finish or use another --out") from None
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        text = (f"pid={os.getpid()}\nhost={socket.gethostname()}\nsince={since}\n"
                f"command={shlex.join(sys.argv)}\n")
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        _held[folder] = 1
        try:
            yield lock
        finally:
            del _held[folder]
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # closing drops the flock
