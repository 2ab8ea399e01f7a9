"""Data: IDX reading, stratified deterministic splits, corrupt files, preprocessing parity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_image_zip, write_idx
from PIL import Image

from sightline.config import DatasetConfig
from sightline.data.augment import augment_batch, random_shift
from sightline.data.images import ImageDataModule
from sightline.data.sources import load_fashion_mnist, load_image_folder, read_idx
from sightline.data.splits import load_prepared, stratified_split
from sightline.errors import DataError
from sightline.prepare import prepare_dataset


def test_idx_round_trip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz"), arr)


def test_truncated_idx_names_the_file(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="bad: IDX header says 9"):
        read_idx(tmp_path / "bad")


def test_stratified_split_is_deterministic_disjoint_and_stratified():
    labels = np.repeat(np.arange(5), 100)
    a = stratified_split(labels, [0.1, 0.2], seed=3)
    b = stratified_split(labels, [0.1, 0.2], seed=3)
    c = stratified_split(labels, [0.1, 0.2], seed=4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])
    train, val, test = a
    assert len(set(train) | set(val) | set(test)) == len(labels)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert np.bincount(labels[val]).tolist() == [10] * 5
    assert np.bincount(labels[test]).tolist() == [20] * 5


def test_prepared_fashion_splits(prepared_fashion):
    meta = json.loads((prepared_fashion / "meta.json").read_text())
    assert meta["shape"] == [1, 28, 28]
    assert meta["counts"]["train"]["total"] == 320 and meta["counts"]["val"]["total"] == 80
    assert meta["counts"]["test"]["total"] == 100
    tx, _ = load_prepared(prepared_fashion, "train")
    vx, _ = load_prepared(prepared_fashion, "val")
    assert tx.dtype == np.uint8 and tx.shape[1:] == (1, 28, 28)
    # no image appears in two splits (synthetic images are unique thanks to the noise)
    assert not {t.tobytes() for t in tx} & {v.tobytes() for v in vx}
    assert 0 < meta["mean"][0] < 1 and meta["std"][0] > 0


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    zip_path = make_image_zip(tmp_path / "imgs.zip", per_class=10, classes=3, corrupt=2)
    raw = load_image_folder(zip_path)
    assert raw.train_x.shape == (30, 3, 32, 32)
    assert len(raw.skipped) == 2 and "broken0.jpg" in raw.skipped[0]
    cfg = DatasetConfig(root=str(zip_path), download=False, val_fraction=0.2, test_fraction=0.2)
    prepare_dataset("cifar10", cfg, 0, tmp_path / "out", tmp_path / "dl")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["skipped"] == 2
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["counts"]["test"]["per_class"] == [2, 2, 2]


def test_missing_dataset_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        load_fashion_mnist(tmp_path / "absent", download=False, cache_dir=tmp_path)
    assert "\n" not in str(err.value) and "absent" in str(err.value)
    with pytest.raises(DataError, match="not found"):
        load_image_folder(tmp_path / "nothing.zip")


def test_failed_prepare_keeps_previous_output(tmp_path, fashion_root):
    out = tmp_path / "fashion_mnist"
    prepare_dataset(
        "fashion_mnist", DatasetConfig(root=str(fashion_root), download=False), 0, out, tmp_path
    )
    before = (out / "meta.json").read_text()
    with pytest.raises(DataError):
        prepare_dataset(
            "fashion_mnist",
            DatasetConfig(root=str(tmp_path / "x"), download=False),
            0,
            out,
            tmp_path,
        )
    assert (out / "meta.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_augmentation_keeps_shape_and_shifts_content():
    torch.manual_seed(0)
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = random_shift(x, 2)
    assert y.shape == x.shape and torch.all(y.sum(dim=(1, 2, 3)) == 1.0)
    assert augment_batch(torch.randn(5, 3, 32, 32), 4, True, 0.5).shape == (5, 3, 32, 32)


@pytest.mark.parametrize("fixture", ["prepared_fashion", "prepared_cifar"])
def test_serving_preprocess_equals_training_tensors(fixture, request):
    """A prepared image sent through the serving path (PIL) gives the training tensor."""
    dm = ImageDataModule(request.getfixturevalue(fixture), batch_size=8)
    x_uint8, _ = next(iter(dm.test_dataloader()))
    training = dm.preprocess.normalize(x_uint8)
    pil = [
        Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)) for a in x_uint8.numpy()
    ]
    serving = dm.preprocess(pil)
    assert torch.equal(training, serving)


class _FakeTorchvision:
    """Stands in for a torchvision dataset class: same attributes, no network."""

    def __init__(self, root, train, download):
        n = 20 if train else 10
        rng = np.random.default_rng(int(train))
        shape = (n, 28, 28) if self.grey else (n, 32, 32, 3)
        self.data = rng.integers(0, 255, size=shape, dtype=np.uint8)
        self.targets = list(np.arange(n) % 10)


def test_torchvision_fallback_when_no_local_copy(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    from sightline.data import sources

    monkeypatch.setattr(sources, "FASHION_MNIST_DEBIAN_ROOT", tmp_path / "not-installed")
    monkeypatch.setattr(tvd, "FashionMNIST", type("F", (_FakeTorchvision,), {"grey": True}))
    monkeypatch.setattr(tvd, "CIFAR10", type("C", (_FakeTorchvision,), {"grey": False}))
    raw = load_fashion_mnist(None, download=True, cache_dir=tmp_path)
    assert raw.train_x.shape == (20, 1, 28, 28) and raw.test_x.shape == (10, 1, 28, 28)
    cifar = sources.load_cifar10(tmp_path / "absent.zip", download=True, cache_dir=tmp_path)
    assert cifar.train_x.shape == (20, 3, 32, 32) and cifar.test_x is None  # carved later
    with pytest.raises(DataError, match="dataset-fashion-mnist"):
        load_fashion_mnist(None, download=False, cache_dir=tmp_path)
