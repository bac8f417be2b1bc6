"""Data: the embedded digits, CIFAR and ImageFolder loaders on small files in the real
formats, synthetic data, identical batches from every data path, and each bad input's
clear error."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from harness.run import data
from harness.run.runner import validate_spec
from harness.spec.settings import RunSettings


def _write_cifar(root, name="cifar10", n=6, label_max=None):
    meta = {"cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)],
                        ["test_batch"], "labels", 10),
            "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100)}[name]
    folder, train, test, key, classes = meta
    d = root / folder
    d.mkdir(parents=True)
    rng = np.random.RandomState(0)
    for i, f in enumerate(train + test):
        labels = [(i * n + j) % classes for j in range(n)]
        if label_max is not None:
            labels[0] = label_max
        entry = {"data": rng.randint(0, 256, (n, 3072), dtype=np.uint8), key: labels,
                 "batch_label": f}
        with open(d / f, "wb") as fh:
            pickle.dump(entry, fh)
    return root


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader_on_generated_files(tmp_path, name):
    _write_cifar(tmp_path, name)
    b = data.load_dataset(name, data_dir=str(tmp_path), img_size=32,
                          num_classes=100, download=False)
    n_train = 30 if name == "cifar10" else 6
    assert len(b.train) == n_train and len(b.val) == 6
    x, y = b.train[0]
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32) and y.dtype == torch.long
    raw = pickle.load(open(next((tmp_path).glob("*/test_batch" if name == "cifar10"
                                                 else "*/test")), "rb"))
    assert torch.equal(b.val[1][0].flatten(), torch.from_numpy(raw["data"][1]))


def test_cifar_missing_and_malformed(tmp_path):
    with pytest.raises(ValueError, match="pass --data-dir"):
        data.load_dataset("cifar10", data_dir=str(tmp_path / "nope"), img_size=32,
                          num_classes=10, download=False)
    _write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="data_batch_3 is not a CIFAR python batch"):
        data.load_dataset("cifar10", data_dir=str(tmp_path), img_size=32, num_classes=10,
                          download=False)


def _write_folder(root, classes=("ant", "bee"), per=3, size=(40, 30), val_classes=None):
    from PIL import Image

    rng = np.random.RandomState(0)
    for split, cls in (("train", classes), ("val", val_classes or classes)):
        for c in cls:
            (root / split / c).mkdir(parents=True)
            for i in range(per):
                arr = rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                ext = ".png" if i % 2 else ".jpg"
                Image.fromarray(arr).save(root / split / c / f"{i}{ext}")
    return root


def test_imagefolder_on_generated_images(tmp_path):
    _write_folder(tmp_path)
    b = data.load_dataset("imagefolder", data_dir=str(tmp_path), img_size=24, num_classes=2)
    assert len(b.train) == 6 and b.num_classes == 2 and (b.label_min, b.label_max) == (0, 1)
    x, y = b.train[4]
    assert x.shape == (3, 24, 24) and x.dtype == torch.uint8 and int(y) == 1
    assert data.dataset_num_classes("imagefolder", str(tmp_path)) == 2


def test_imagefolder_bad_trees(tmp_path):
    with pytest.raises(ValueError, match="needs --data-dir"):
        data.load_dataset("imagefolder", img_size=24, num_classes=2)
    with pytest.raises(ValueError, match="does not exist"):
        data.load_dataset("imagefolder", data_dir=str(tmp_path / "x"), img_size=24,
                          num_classes=2)
    (tmp_path / "a" / "train").mkdir(parents=True)
    with pytest.raises(ValueError, match="no class folders"):
        data.load_dataset("imagefolder", data_dir=str(tmp_path / "a"), img_size=24,
                          num_classes=2)
    _write_folder(tmp_path / "b", val_classes=("ant", "wasp"))
    with pytest.raises(ValueError, match="same class folders"):
        data.load_dataset("imagefolder", data_dir=str(tmp_path / "b"), img_size=24,
                          num_classes=2)
    with pytest.raises(ValueError, match="same class folders"):
        data.check_dataset("imagefolder", str(tmp_path / "b"))  # the same, without loading
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.check_dataset("mnist")


def test_unreadable_images_named_up_front_and_lazily(tmp_path):
    _write_folder(tmp_path)
    bad = tmp_path / "val" / "bee" / "0.jpg"
    bad.write_bytes(bad.read_bytes()[:200])  # a JPEG cut short: PIL's verify() passes it
    with pytest.raises(ValueError, match=rf"^unreadable image {bad} \(.*\): remove or replace"):
        data.load_dataset("imagefolder", data_dir=str(tmp_path), img_size=24, num_classes=2)
    from harness.spec import datasets as safety

    assert safety.check_images([(str(bad), 0)], limit=0) is False  # too many: left to loading
    _, train, val = safety.imagefolder_layout(tmp_path)
    ds = data.FolderImages(val, 24)
    i = [p for p, _ in val].index(str(bad))
    with pytest.raises(ValueError, match=f"unreadable image {bad}"):
        ds[i]


def test_cifar_checked_without_loading(tmp_path):
    from harness.spec import datasets as safety

    with pytest.raises(ValueError, match="pass --data-dir"):
        safety.check_dataset("cifar10", tmp_path)
    safety.check_dataset("cifar10", tmp_path, download=True)  # missing: loading downloads
    _write_cifar(tmp_path)
    safety.check_dataset("cifar10", tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"<html>oops</html>")
    with pytest.raises(ValueError, match="test_batch is not a CIFAR python batch"):
        safety.check_dataset("cifar10", tmp_path)


def test_digits_and_synthetic():
    b = data.load_dataset("digits", img_size=32, num_classes=10)
    assert (len(b.train), len(b.val)) == (data.DIGITS_TRAIN, data.DIGITS_VAL) == (1433, 364)
    counts = torch.bincount(b.val.labels, minlength=10)
    assert int(counts.min()) >= 35 and int(counts.max()) <= 37  # every 5th of each class
    assert b.train.images.shape[1:] == (3, 32, 32)
    b2 = data.load_dataset("digits", img_size=32, num_classes=10)
    assert torch.equal(b.val.images, b2.val.images)  # deterministic split
    assert set(b.val.labels.tolist()) == set(range(10))
    s = data.load_dataset("synthetic", img_size=224, num_classes=1000)
    assert s.train[5][0].shape == (3, 224, 224) and s.num_classes == 1000


def test_labels_outside_num_classes_refused(tmp_path):
    _write_cifar(tmp_path, label_max=12)
    settings = RunSettings(model="ivit_micro", dataset="cifar10", data_dir=str(tmp_path),
                           num_classes=10, device="cpu")
    with pytest.raises(ValueError, match=r"labels 0\.\.12 .* num_classes=10"):
        validate_spec(settings)


def test_model_img_size_mismatch_refused():
    settings = RunSettings(model="deit_tiny_patch16_224", device="cpu")
    with pytest.raises(ValueError, match="--img-size 32"):
        validate_spec(settings, load_data=False)
    with pytest.raises(ValueError, match="divisible"):
        validate_spec(RunSettings(model="swin_micro", img_size=36, device="cpu"),
                      load_data=False)


@pytest.mark.parametrize("workers", [0, 2])
def test_preload_and_dataloader_give_the_same_batches(workers):
    ds = data.TensorImages(torch.arange(40 * 3 * 2 * 2, dtype=torch.int64).remainder(251)
                           .to(torch.uint8).view(40, 3, 2, 2), torch.arange(40) % 7)
    kw = dict(batch_size=6, device=torch.device("cpu"), shuffle=True, drop_last=True,
              max_steps=5, seed=3)
    a = data.Batches(ds, num_workers=workers, preload=False, **kw)
    b = data.Batches(ds, num_workers=0, preload=True, **kw)
    assert len(a) == len(b) == 5
    for epoch in (1, 2):
        pa, pb = list(a.epoch(epoch)), list(b.epoch(epoch))
        assert len(pa) == 5
        for (xa, ya), (xb, yb) in zip(pa, pb, strict=False):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(a.indices(1), a.indices(2))


def test_digits_are_scikit_learns_read_without_importing_it():
    """The digits come from scikit-learn's bundled file, read as `load_digits` reads it
    (bit for bit), without importing scikit-learn (and SciPy) in a run's process; a run's
    provenance names timm's version without importing timm (a plug-in model's process
    need not load it)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    images, target = data._digits_arrays()
    d = load_digits()
    assert images.dtype == d.images.dtype and np.array_equal(images, d.images)
    assert target.dtype == d.target.dtype and np.array_equal(target, d.target)
    probe = ("import sys; from harness.run.data import load_dataset; "
             "from harness.records.provenance import provenance; "
             "b = load_dataset('digits', img_size=32, num_classes=10); "
             "p = provenance('cpu', threads=1); "
             "print(len(b.train), len(b.val), p['timm_version'], "
             "sorted({'sklearn', 'scipy', 'timm'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "QVIT_DEFER_IMPORTS": "1"}, timeout=300,
                         cwd=Path(__file__).resolve().parents[3])
    assert out.returncode == 0, out.stderr
    import timm

    assert out.stdout.split() == [str(data.DIGITS_TRAIN), str(data.DIGITS_VAL),
                                  timm.__version__, "[]"]
