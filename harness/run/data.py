"""Datasets for the harness, all yielding ``(uint8 image CHW, int64 label)``; the loop
normalizes on the device.

* ``digits`` (default, embedded): scikit-learn's bundled handwritten digits (1797 8x8
  images, 10 classes), upscaled to 32x32 RGB; a fixed, stratified split: every 5th image
  of each class (in a fixed shuffle) is validation, 364 images (35-37 per class), the other
  1433 train. Works offline with nothing but the installed packages.
* ``cifar10`` / ``cifar100``: the CIFAR python archive layout (``cifar-10-batches-py``,
  ``cifar-100-python``) under ``--data-dir``; downloaded through torchvision where the
  network allows. Read by our own reader (torchvision's insists on the archive's md5).
* ``imagefolder``: an ImageNet-layout tree, ``<data-dir>/train/<class>/*.jpg`` and
  ``<data-dir>/val/<class>/*.jpg``; resized and center-cropped to the model's size. Every
  image of a split of at most 20000 files is checked up front (``datasets.check_images``); an
  unreadable one is named in one line before training.
* ``synthetic``: random images at any resolution, for pure speed runs.

`check_dataset` (from `harness.spec.datasets`, which imports no torch) validates a dataset's name,
folder and layout without loading it.

Batches come in the same order from the DataLoader (``num_workers`` processes) and from the
device-preloaded path (``preload_to_device``): one permutation per epoch from the run's seed.
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from harness.spec.datasets import CIFAR as _CIFAR
from harness.spec.datasets import (
    DATASETS,
    IMG_EXTENSIONS,
    check_dataset,
    check_images,
    imagefolder_layout,
    unreadable_image,
)
from harness.spec.datasets import cifar_files as _cifar_files

__all__ = ["DATASETS", "DataBundle", "load_dataset", "dataset_num_classes",
           "native_img_size", "check_labels", "Batches", "MEAN_STD", "normalize_batch",
           "IMG_EXTENSIONS", "check_dataset", "DIGITS_TRAIN", "DIGITS_VAL"]

MEAN_STD = {
    "digits": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "synthetic": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
DIGITS_TRAIN = 1433  # every 5th image of each class held out: 1433 train, 364 val
DIGITS_VAL = 364
SYNTHETIC_TRAIN = 8192
SYNTHETIC_VAL = 1024
_SYNTHETIC_POOL = 256  # distinct random images, indexed modulo (keeps memory small at 224)


class TensorImages(Dataset):
    """Images (N, C, H, W) uint8 and labels (N,) int64 in memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, length: int | None = None):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} "
                             f"{tuple(images.shape)}")
        self.images, self.labels = images, labels.long()
        self.length = len(images) if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int):
        j = i % len(self.images)
        return self.images[j], self.labels[i % len(self.labels)]

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(self.length) % len(self.images)
        return self.images[idx], self.labels[torch.arange(self.length) % len(self.labels)]


class FolderImages(Dataset):
    """An ImageFolder class tree decoded with PIL, resized (shorter side to size/0.875) and
    center-cropped to ``size``, as uint8 CHW."""

    def __init__(self, samples: list[tuple[str, int]], size: int):
        from torchvision.transforms import v2

        self.samples = samples
        self.labels = torch.tensor([y for _, y in samples], dtype=torch.long)
        self.tf = v2.Compose([v2.PILToTensor(), v2.Resize(int(round(size / 0.875)),
                              antialias=True), v2.CenterCrop(size)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        from PIL import Image

        path, y = self.samples[i]
        try:
            with Image.open(path) as im:
                x = self.tf(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as e:  # what PIL raises for a bad file
            raise unreadable_image(path, e) from None
        return x, self.labels[i]

    def all(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.stack([self[i][0] for i in range(len(self))]), self.labels


@dataclass
class DataBundle:
    name: str
    train: Dataset
    val: Dataset
    num_classes: int  # classes the data has
    img_size: int
    label_min: int
    label_max: int


# --- the embedded default --------------------------------------------------------------------

def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits, (images (1797, 8, 8) float64, target (1797,) int): its bundled
    digits.csv.gz read as `sklearn.datasets.load_digits` reads it, without importing
    scikit-learn (and SciPy with it: seconds in every run's process); load_digits itself
    where the file is not where it is looked for."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # finds the package, does not import it
    roots = (spec.submodule_search_locations or []) if spec else []
    path = next((Path(r) / "datasets" / "data" / "digits.csv.gz" for r in roots), None)
    if path is None or not path.is_file():
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.images, d.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _digits() -> DataBundle:
    images, target = _digits_arrays()
    x = torch.tensor(images, dtype=torch.float32)[:, None] / 16.0  # (1797, 1, 8, 8)
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    y = torch.tensor(target, dtype=torch.long)
    # stratified split: every 5th image of each class (in a fixed shuffle) is validation,
    # DIGITS_VAL = 364 images (35-37 per class), DIGITS_TRAIN = 1433
    rng = np.random.RandomState(0)
    val = np.zeros(len(y), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(target == c)
        rng.shuffle(idx)
        val[idx[::5]] = True
    tr, va = torch.from_numpy(~val), torch.from_numpy(val)
    return DataBundle("digits", TensorImages(x[tr], y[tr]), TensorImages(x[va], y[va]),
                      10, 32, 0, 9)


# --- CIFAR -------------------------------------------------------------------------------------

def _read_cifar_file(path: Path, key: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a malformed file
        raise ValueError(f"{path} is not a CIFAR python batch file ({type(e).__name__}: {e}); "
                         f"expected the pickled dict of the official python archive") from None
    if not isinstance(entry, dict) or "data" not in entry or key not in entry:
        keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
        raise ValueError(f"{path} is malformed: expected a dict with 'data' and {key!r}, "
                         f"found {keys}")
    data = np.asarray(entry["data"])
    labels = np.asarray(entry[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or \
            len(labels) != len(data):
        raise ValueError(f"{path} is malformed: 'data' must be uint8 (N, 3072) with N labels, "
                         f"got {data.dtype} {data.shape} and {len(labels)} labels")
    return data, labels


def _cifar(name: str, data_dir: str | None, download: bool = True) -> DataBundle:
    meta = _CIFAR[name]
    root = Path(data_dir or "data")
    folder, missing = _cifar_files(name, data_dir)
    if missing and download:
        try:
            import torchvision

            cls = torchvision.datasets.CIFAR10 if name == "cifar10" else \
                torchvision.datasets.CIFAR100
            cls(str(root), train=True, download=True)
        except Exception as e:  # noqa: BLE001 - no network, disk full, ...
            raise ValueError(
                f"{name} is not under {folder} (missing {', '.join(missing)}) and the download "
                f"failed ({type(e).__name__}: {e}); pass --data-dir pointing at the folder "
                f"that holds {meta['folder']}/ (the extracted python archive)") from None
    check_dataset(name, data_dir, download=False)  # every file there, each a pickle
    parts = {}
    for split in ("train", "test"):
        arrays = [_read_cifar_file(folder / f, meta["key"]) for f in meta[split]]
        x = np.concatenate([a for a, _ in arrays]).reshape(-1, 3, 32, 32)
        y = np.concatenate([b for _, b in arrays]).astype(np.int64)
        parts[split] = TensorImages(torch.from_numpy(x.copy()), torch.from_numpy(y))
    ys = torch.cat([parts["train"].labels, parts["test"].labels])
    return DataBundle(name, parts["train"], parts["test"], meta["classes"], 32,
                      int(ys.min()), int(ys.max()))


# --- ImageFolder ----------------------------------------------------------------------------

def _imagefolder(data_dir: str | None, img_size: int) -> DataBundle:
    classes, train, val = imagefolder_layout(data_dir)
    check_images(train)  # every file opened up front (a split of <= 20000; larger: lazily)
    check_images(val)
    return DataBundle("imagefolder", FolderImages(train, img_size), FolderImages(val, img_size),
                      len(classes), img_size, 0, len(classes) - 1)


# --- synthetic --------------------------------------------------------------------------------

def _synthetic(img_size: int, num_classes: int, seed: int) -> DataBundle:
    g = torch.Generator().manual_seed(10_000 + seed)
    pool = torch.randint(0, 256, (_SYNTHETIC_POOL, 3, img_size, img_size), generator=g,
                         dtype=torch.uint8)
    ytr = torch.randint(0, num_classes, (SYNTHETIC_TRAIN,), generator=g)
    yva = torch.randint(0, num_classes, (SYNTHETIC_VAL,), generator=g)
    return DataBundle("synthetic", TensorImages(pool, ytr, SYNTHETIC_TRAIN),
                      TensorImages(pool, yva, SYNTHETIC_VAL), num_classes, img_size,
                      0, num_classes - 1)


# --- entry points ------------------------------------------------------------------------------

def native_img_size(dataset: str) -> int | None:
    """The resolution a dataset comes in (None: it takes the model's)."""
    return {"digits": 32, "cifar10": 32, "cifar100": 32}.get(dataset)


def dataset_num_classes(dataset: str, data_dir: str | None = None) -> int:
    """How many classes a dataset has (synthetic: 10 unless told otherwise)."""
    if dataset in ("digits", "synthetic", "cifar10"):
        return 10
    if dataset == "cifar100":
        return 100
    if dataset == "imagefolder":
        return len(imagefolder_layout(data_dir)[0])
    raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")


def _download_allowed() -> bool:
    raw = os.environ.get("QVIT_HARNESS_DOWNLOAD", "1")
    if raw not in ("0", "1"):
        raise ValueError(f"QVIT_HARNESS_DOWNLOAD must be 0 or 1, got {raw!r}")
    return raw == "1"


def load_dataset(dataset: str, *, data_dir: str | None = None, img_size: int,
                 num_classes: int, seed: int = 0, download: bool | None = None) -> DataBundle:
    """Load (and validate) a dataset; ``img_size`` is the model's input size. CIFAR is
    downloaded when missing unless ``download=False`` (default: the environment variable
    QVIT_HARNESS_DOWNLOAD, 1 or 0, default 1)."""
    if download is None:
        download = _download_allowed()
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {', '.join(DATASETS)}")
    if dataset == "digits":
        return _digits()
    if dataset in _CIFAR:
        return _cifar(dataset, data_dir, download)
    if dataset == "imagefolder":
        return _imagefolder(data_dir, img_size)
    return _synthetic(img_size, num_classes, seed)


def check_labels(bundle: DataBundle, num_classes: int) -> None:
    """Refuse labels outside [0, num_classes) before training: on CUDA they end in a
    device-side assert inside the loss (the seed's change 1)."""
    if bundle.label_min < 0 or bundle.label_max >= num_classes:
        raise ValueError(
            f"dataset {bundle.name!r} has labels {bundle.label_min}..{bundle.label_max} "
            f"({bundle.num_classes} classes) but the model is built for num_classes="
            f"{num_classes}: labels must lie in 0..{num_classes - 1} (on CUDA they would end "
            f"in a device-side assert in the loss); pass --num-classes {bundle.num_classes}")


@functools.lru_cache(maxsize=64)
def _mean_std_on(mean: tuple, std: tuple, dtype: torch.dtype, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean*255, std*255) as (1, C, 1, 1) tensors of ``dtype`` on ``device``, built once:
    a host-built tensor moved to a GPU is a blocking copy (a stream sync), not for every
    batch. Never written in place (normalize_batch only reads them)."""
    return (torch.tensor(mean, dtype=dtype, device=device).view(1, -1, 1, 1) * 255,
            torch.tensor(std, dtype=dtype, device=device).view(1, -1, 1, 1) * 255)


def normalize_batch(x: torch.Tensor, mean_std: tuple, out: torch.dtype = torch.float32
                    ) -> torch.Tensor:
    """uint8 (B, C, H, W) on any device -> normalized float (the per-channel constants are
    made once per (statistics, dtype, device), `_mean_std_on`)."""
    mean, std = _mean_std_on(tuple(mean_std[0]), tuple(mean_std[1]), out, x.device)
    return (x.to(out) - mean) / std


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffle of one epoch: the same for every data path and worker count."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


class Batches:
    """One epoch's batches of a dataset: through a DataLoader with ``num_workers``
    processes, or (``preload``) indexed from tensors that already live on the device.
    Both give the same batches in the same order."""

    def __init__(self, dataset: Dataset, *, batch_size: int, device: torch.device,
                 num_workers: int, preload: bool, shuffle: bool, drop_last: bool,
                 max_steps: int | None, seed: int):
        self.dataset, self.batch_size, self.device = dataset, batch_size, device
        self.num_workers, self.preload, self.shuffle = num_workers, preload, shuffle
        self.drop_last, self.max_steps, self.seed = drop_last, max_steps, seed
        n = len(dataset)
        full = n // batch_size if drop_last else -(-n // batch_size)
        if full == 0:
            raise ValueError(f"the dataset has {n} samples, fewer than one batch of "
                             f"{batch_size}; lower --batch-size")
        self.steps = min(full, max_steps) if max_steps else full
        self._x = self._y = None
        if preload:
            x, y = dataset.all()
            self._x = x.to(device)
            self._y = y.to(device)

    def __len__(self) -> int:
        return self.steps

    def indices(self, epoch: int) -> torch.Tensor:
        n = len(self.dataset)
        idx = epoch_permutation(n, self.seed, epoch) if self.shuffle else torch.arange(n)
        return idx[: self.steps * self.batch_size]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The epoch's batches. The order is drawn here, eagerly (host work that must not
        fall inside a sync-counting region); the batches come lazily."""
        idx = self.indices(epoch)
        if self.preload:
            return self._preloaded(idx.to(self.device))
        warnings.filterwarnings("ignore", message="This DataLoader will create")  # as asked
        loader = DataLoader(self.dataset, batch_size=self.batch_size, sampler=idx.tolist(),
                            num_workers=self.num_workers, drop_last=self.drop_last,
                            pin_memory=self.device.type == "cuda")
        return self._loaded(loader)

    def _preloaded(self, idx_dev: torch.Tensor):
        for s in range(self.steps):
            j = idx_dev[s * self.batch_size:(s + 1) * self.batch_size]
            yield self._x[j], self._y[j]

    def _loaded(self, loader: DataLoader):
        nb = self.device.type == "cuda"
        for x, y in loader:
            yield x.to(self.device, non_blocking=nb), y.to(self.device, non_blocking=nb)
