"""The datasets a run can name (the one list, `DATASETS`), and the check that a named one is
there (`check_dataset`: CIFAR files present and pickled, ImageFolder class trees alike in
train/ and val/, every image readable), without loading it: a spec is refused before any
work, not after 30-60 s of imports.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["DATASETS", "IMG_EXTENSIONS", "CIFAR", "VERIFY_ALL_UP_TO", "check_dataset",
           "imagefolder_layout", "folder_samples", "check_images", "unreadable_image",
           "cifar_files"]

DATASETS = ("digits", "cifar10", "cifar100", "imagefolder", "synthetic")
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
CIFAR = {
    "cifar10": dict(folder="cifar-10-batches-py", train=[f"data_batch_{i}" for i in range(1, 6)],
                    test=["test_batch"], key="labels", classes=10),
    "cifar100": dict(folder="cifar-100-python", train=["train"], test=["test"],
                     key="fine_labels", classes=100),
}
VERIFY_ALL_UP_TO = 20_000  # a split with at most this many images is verified file by file


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
