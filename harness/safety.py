"""Checks that run before the heavy imports, and errors as one line instead of a traceback.

This module imports neither torch nor timm nor pandas (at module level or anywhere): the
CLI calls it first, so a wrong ``--out``, a busy folder or a bad data folder is said within
a second, not after 30-60 s of imports.

* `check_out_dir`: the output folder can be created and written (a probe file is made and
  removed), and is not an existing file.
* `owned_dir_lock`: one sweep per output folder at a time (an exclusive ``flock`` on
  ``<out>/.harness.lock`` holding who took it); a second one is refused with `OutDirBusy`,
  naming the holder. The kernel drops the lock when its process dies, so a lock file left by
  a killed sweep is simply taken over.
* `friendly_errors`: a context manager or decorator for CLI entry points that turns disk
  full, a read-only or forbidden folder, Ctrl-C, bad input (ValueError) and a busy folder
  into one line on stderr and an exit code (2 bad input, 130 interrupted, 1 otherwise).
* `check_dataset`: the dataset's name, folder and layout (CIFAR files present and pickled,
  ImageFolder class trees alike in train/ and val/, every image readable), without loading.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import functools
import os
import shlex
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["OutDirBusy", "check_out_dir", "owned_dir_lock", "LOCK_NAME", "friendly_errors",
           "explain", "check_dataset", "imagefolder_layout", "folder_samples",
           "check_images", "unreadable_image", "cifar_files", "DATASETS", "IMG_EXTENSIONS",
           "CIFAR", "VERIFY_ALL_UP_TO"]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], key="labels", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     key="fine_labels", classes=100),
}
LOCK_NAME = ".harness.lock"
VERIFY_ALL_UP_TO = 20_000  # a split with at most this many images is verified file by file


# --- the output folder --------------------------------------------------------------------

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


class OutDirBusy(RuntimeError):
    """Another process holds the output folder."""


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


# --- errors as one line ----------------------------------------------------------------------

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


# --- datasets, checked without loading them ------------------------------------------------------

def cifar_files(name: str, data_dir: str | os.PathLike | None) -> tuple[Path, list[str]]:
    """The CIFAR folder under ``data_dir`` and the files it misses."""
    meta = CIFAR[name]
    folder = Path(data_dir or "data") / meta["folder"]
    return folder, [f for f in meta["train"] + meta["test"] if not (folder / f).is_file()]


def _check_cifar(name: str, data_dir, download: bool) -> None:
    folder, missing = cifar_files(name, data_dir)
    if missing and not download:
        raise ValueError(f"{name} is not under {folder}: missing {', '.join(missing)}; pass "
                         f"--data-dir pointing at the folder that holds "
                         f"{CIFAR[name]['folder']}/")
    for f in CIFAR[name]["train"] + CIFAR[name]["test"]:
        path = folder / f
        if path.is_file():
            with open(path, "rb") as fh:
                head = fh.read(2)
            if len(head) < 2 or head[0] != 0x80:  # every pickle (protocol >= 2) starts so
                raise ValueError(f"{path} is not a CIFAR python batch file (no pickle "
                                 f"header); expected the pickled dict of the official python "
                                 f"archive")


def folder_samples(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names, [(image path, class index)]) of ``root/split``; ValueError when the
    layout is wrong."""
    d = root / split
    if not d.is_dir():
        raise ValueError(f"imagefolder: {d} is missing; expected the ImageNet layout "
                         f"{root}/train/<class>/<image> and {root}/val/<class>/<image>")
    classes = sorted(p.name for p in d.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"imagefolder: {d} has no class folders; expected "
                         f"{d}/<class>/<image> ({', '.join(IMG_EXTENSIONS)})")
    samples = []
    for i, c in enumerate(classes):
        for p in sorted((d / c).rglob("*")):
            if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS:
                samples.append((str(p), i))
    if not samples:
        raise ValueError(f"imagefolder: no images under {d}/<class>/ (looked for "
                         f"{', '.join(IMG_EXTENSIONS)})")
    return classes, samples


def imagefolder_layout(data_dir: str | os.PathLike | None
                       ) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(classes, train samples, val samples) of an ImageFolder tree; ValueError (one line)
    when the tree is missing or malformed. Images are not opened (`check_images`)."""
    if not data_dir:
        raise ValueError("--dataset imagefolder needs --data-dir (a folder with train/ and "
                         "val/, each holding one sub-folder per class)")
    root = Path(data_dir)
    if not root.is_dir():
        raise ValueError(f"imagefolder: data directory {root} does not exist")
    train_classes, train = folder_samples(root, "train")
    val_classes, val = folder_samples(root, "val")
    if train_classes != val_classes:
        only = sorted(set(train_classes) ^ set(val_classes))
        raise ValueError(f"imagefolder: train/ and val/ must hold the same class folders; "
                         f"these are in only one of them: {only[:10]}")
    return train_classes, train, val


def unreadable_image(path: str, exc: BaseException) -> ValueError:
    """The one-line error for an image file PIL cannot read."""
    why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return ValueError(f"unreadable image {path} ({why}): remove or replace it")


def _check_image(path: str) -> None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            fmt = im.format
            im.verify()  # headers and (PNG) checksums, without decoding
        if fmt == "JPEG":  # verify() reads nothing of a JPEG: a cut file lacks its end marker
            with open(path, "rb") as fh:
                fh.seek(-2, os.SEEK_END)
                complete = fh.read(2) == b"\xff\xd9"
            if not complete:  # rare but legal (trailing bytes): decode it to be sure
                with Image.open(path) as im:
                    im.load()
    except Exception as e:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise unreadable_image(path, e) from None


def check_images(samples: list[tuple[str, int]], limit: int = VERIFY_ALL_UP_TO) -> bool:
    """Verify every image of a split when it holds at most ``limit`` files (True), else
    nothing (False: the loader names a bad file when it meets it). Raises `unreadable_image`'s
    ValueError for the first bad file."""
    if len(samples) > limit:
        return False
    for path, _ in samples:
        _check_image(path)
    return True


def check_dataset(dataset: str, data_dir: str | os.PathLike | None = None, *,
                  download: bool = False, images: bool = True) -> None:
    """Validate a dataset's name, folder and layout cheaply, without loading it: CIFAR
    files present (unless ``download``) and pickled; an ImageFolder tree's layout and (with
    ``images``) the readability of every image of a split of at most `VERIFY_ALL_UP_TO`."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if dataset in CIFAR:
        _check_cifar(dataset, data_dir, download)
    elif dataset == "imagefolder":
        _, train, val = imagefolder_layout(data_dir)
        if images:
            check_images(train)
            check_images(val)
