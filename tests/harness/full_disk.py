"""A folder on a disk a test can fill (``disk(tmp_path, monkeypatch)``): a real small tmpfs
where this process may mount one (root), so that writes fail with the kernel's own ENOSPC;
elsewhere an ordinary folder whose writes through the harness's atomic write
(`harness.records.files`) fail with an injected ENOSPC while it is "full" (this process
only; ``QVIT_TEST_NO_TMPFS=1`` picks this one as root too)."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path


class Disk:
    def __init__(self, path: Path, monkeypatch, size: str = "16m"):
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.real = os.geteuid() == 0 and not os.environ.get("QVIT_TEST_NO_TMPFS") and \
            subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True).returncode == 0
        self.full = False
        self._filler = path / ".filler"
        if not self.real:
            from harness.records import files

            real_fsync = os.fsync

            def fsync(fd):
                if self.full and os.readlink(f"/proc/self/fd/{fd}").startswith(str(path)):
                    raise OSError(errno.ENOSPC, "No space left on device")
                real_fsync(fd)

            monkeypatch.setattr(files.os, "fsync", fsync)

    def fill(self) -> None:
        """No byte left (a real tmpfs: a filler file up to ENOSPC)."""
        self.full = True
        if self.real:
            fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            try:
                for size in (65536, 512, 1):
                    with contextlib.suppress(OSError):
                        while True:
                            os.write(fd, b"\0" * size)
            finally:
                os.close(fd)

    def free(self) -> None:
        self.full = False
        self._filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
