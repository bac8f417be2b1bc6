"""Every file the harness writes goes through `atomic_file`: written to a temporary file in
the same folder, flushed and fsynced, then renamed over the target (``os.replace``), so a
write that fails (a full disk, a read-only folder, a signal) leaves the old file as it was
and no half-written one. The file gets mode ``0o666 & ~umask``. A failure is raised as an
OSError naming the target and keeping its errno (`harness.errors.io_fault` words it).

`write_text`, `write_bytes`, `save_torch` (a checkpoint: streamed into the temporary file,
so a full disk raises OSError, not torch's ``iostream error``), `save_figure` and
`write_design` (the design beside the table) are the ways in: tables, shards, reports,
figures, checkpoints and the sweep's own records all go through one of them.

Imports neither torch nor pandas (the output folder's checks use it before they load).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from harness.errors import errno_of

__all__ = ["atomic_file", "write_text", "write_bytes", "save_torch", "save_figure",
           "write_design", "umask"]


def umask() -> int:
    """This process's umask (read from /proc, so that it is never changed, not even for a
    moment: other threads create files too)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it (and put it back at once)
    os.umask(mask)
    return mask


def _naming(exc: OSError, path: Path) -> OSError:
    """The failure as an OSError about ``path`` (not the temporary file), errno kept."""
    code = errno_of(exc)
    if code is None:
        return exc
    return OSError(code, os.strerror(code), str(path))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object to write ``path``'s new content into; on leaving the block it replaces
    ``path`` whole, or, when anything went wrong, ``path`` is untouched and the temporary
    file gone."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, mode) as fh:
            os.fchmod(fh.fileno(), 0o666 & ~umask())  # mkstemp makes 0600
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise _naming(exc, path) from exc
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def save_torch(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    with atomic_file(path) as fh:
        torch.save(obj, fh)
    return Path(path)


def save_figure(fig: Any, path: str | os.PathLike, **kwargs: Any) -> Path:
    """A matplotlib figure as PNG at ``path``, atomically."""
    with atomic_file(path) as fh:
        fig.savefig(fh, format="png", **kwargs)
    return Path(path)


def write_design(spec: Any, configs: list, run_ids: list[str], out_dir: str | os.PathLike
                 ) -> None:
    """``design.json`` (and ``spec.toml``) of a sweep: what the report needs besides the
    table (`harness.spec.planning.design_files`)."""
    from harness.spec.planning import design_files

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in design_files(spec, configs, run_ids).items():
        write_text(out_dir / name, text)
