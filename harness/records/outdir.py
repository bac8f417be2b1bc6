"""The output folder: the harness's own (`claim_out_dir`), can be created and written
(`check_out_dir`), and belongs to one sweep at a time (`owned_dir_lock`: an exclusive
``flock`` on ``<out>/.harness.lock`` naming its holder; a second sweep is refused with
`OutDirBusy`; the kernel drops the lock when its process dies, so a lock left by a killed
sweep is simply taken over).

A folder is the harness's only when it is new, empty, marked (``<out>/.harness.json``,
written when the harness claims the folder: the command and the spec's name) or written by
the harness before markers existed (its ``design.json`` or ``parity.csv`` says so). Any other
folder is refused in one line naming the files that would be overwritten, before any work:
nothing of the user's is replaced.

Imports neither torch nor pandas: the CLI calls it first, so a wrong ``--out`` or a busy
folder is said within a second.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import fnmatch
import json
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from harness.errors import OutDirBusy
from harness.records.files import write_text

__all__ = ["OutDirBusy", "check_out_dir", "claim_out_dir", "harness_folder", "owned_dir_lock",
           "LOCK_NAME", "MARKER", "OUTPUTS"]

LOCK_NAME = ".harness.lock"
MARKER = ".harness.json"
# What the harness writes at the top of an output folder (a test holds a sweep to it)
OUTPUTS = (MARKER, LOCK_NAME, ".runs.lock", "runs.parquet", "runs.csv", "design.json",
           "spec.toml", "report.md", "report.json", "summary.csv", "per_flag.csv",
           "effects.csv", "parity.csv", "fig_*.png", "shards", "checkpoints", "jobs")


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


def _written_by_harness(folder: Path) -> bool:
    """A folder the harness wrote before it marked its folders: its design.json (a
    sweep's) or parity.csv (`harness parity`'s) has the harness's own keys."""
    try:
        design = json.loads((folder / "design.json").read_text())
        if isinstance(design, dict) and {"run_ids", "configs", "baseline"} <= set(design):
            return True
    except (OSError, ValueError):
        pass
    try:
        with open(folder / "parity.csv") as fh:
            header = fh.readline().strip().split(",")
        return {"flag", "measured_class", "expected_class"} <= set(header)
    except (OSError, UnicodeDecodeError):
        return False


def harness_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` may be written by the harness: absent, empty (but for the
    harness's lock files), marked, or written by the harness before markers existed."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return not folder.exists()
    names = {p.name for p in folder.iterdir()}
    return (MARKER in names or not names - {LOCK_NAME, ".runs.lock"}
            or _written_by_harness(folder))


def _refusal(folder: Path, option: str) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    clash = [n for n in names if any(fnmatch.fnmatch(n.rstrip("/"), o) for o in OUTPUTS)]

    def listed(items: list[str]) -> str:
        return ", ".join(items[:6]) + (f" and {len(items) - 6} more" if len(items) > 6 else "")

    what = (f"would overwrite {listed(clash)}" if clash else f"holds {listed(names)}")
    return (f"{option} {folder} is not a harness folder (no {MARKER}) and {what}: name a new "
            f"or empty folder; the harness writes only into folders it made")


def claim_out_dir(path: str | os.PathLike, command: str, name: str,
                  option: str = "--out") -> Path:
    """The output folder of ``command`` (for the spec ``name``), checked (`check_out_dir`)
    and marked as the harness's; ValueError (one line naming the files that would be
    overwritten) when it is a folder of someone else's, before anything is written."""
    p = Path(path).expanduser()
    if p.is_dir() and not harness_folder(p):
        raise ValueError(_refusal(p, option))
    p = check_out_dir(p, option)
    if not (p / MARKER).is_file():
        since = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        write_text(p / MARKER, json.dumps({"written_by": "qvit harness", "command": command,
                                           "spec": name, "since": since,
                                           "argv": sys.argv}, indent=1) + "\n")
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
