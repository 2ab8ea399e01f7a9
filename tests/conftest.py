"""Shared fixtures: tiny synthetic datasets in the real on-disk formats, tiny configs."""

from __future__ import annotations

import atexit
import gzip
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # serving/ is imported from the checkout, as `bentoml serve` does
sys.path.append(str(REPO / "pipeline"))  # the stage scripts' modules (`from package import ...`)

# BentoML's model and Bento store for the whole session (and the commands it starts): never the
# user's ~/bentoml. Read once by BentoML, so it is set before anything imports it.
_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="sightline-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)
atexit.register(shutil.rmtree, _BENTOML_HOME, ignore_errors=True)


def pattern_images(labels: np.ndarray, size: int, channels: int, seed: int) -> np.ndarray:
    """Learnable synthetic images: class k is a bright band at a class-specific position."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(len(labels), channels, size, size), dtype=np.uint8)
    band = max(1, size // 10)
    for i, k in enumerate(labels):
        top = (k * band) % (size - band)
        x[i, :, top : top + band, 2 : size - 2] = 220
    return x


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape
    )
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def make_fashion_idx(root: Path, train_per_class: int = 40, test_per_class: int = 10) -> Path:
    """Four gzipped IDX files shaped like Fashion-MNIST's, with learnable patterns."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n, seed in (("train", train_per_class, 0), ("t10k", test_per_class, 1)):
        y = np.repeat(np.arange(10), n)
        x = pattern_images(y, 28, 1, seed)[:, 0]
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


def make_image_zip(path: Path, per_class: int = 12, classes: int = 3, corrupt: int = 1) -> Path:
    """A CIFAR-style zip ``train/<class>/<n>.png`` with ``corrupt`` unreadable files."""
    y = np.repeat(np.arange(classes), per_class)
    x = pattern_images(y, 32, 3, 2)
    with zipfile.ZipFile(path, "w") as zf:
        for i, (img, k) in enumerate(zip(x, y, strict=True)):
            buf = io.BytesIO()
            Image.fromarray(img.transpose(1, 2, 0)).save(buf, format="PNG")
            zf.writestr(f"train/class{k}/{i:04d}.png", buf.getvalue())
        for j in range(corrupt):
            zf.writestr(f"train/class0/broken{j}.jpg", b"not an image at all")
    return path


@pytest.fixture(scope="session")
def fashion_root(tmp_path_factory) -> Path:
    return make_fashion_idx(tmp_path_factory.mktemp("fmnist-idx"))


@pytest.fixture(scope="session")
def prepared_fashion(tmp_path_factory, fashion_root) -> Path:
    from sightline.config import DatasetConfig
    from sightline.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared") / "fashion_mnist"
    cfg = DatasetConfig(root=str(fashion_root), download=False, val_fraction=0.2)
    prepare_dataset("fashion_mnist", cfg, 0, out, out.parent / "dl")
    return out


@pytest.fixture(scope="session")
def prepared_cifar(tmp_path_factory) -> Path:
    from sightline.config import DatasetConfig
    from sightline.prepare import prepare_dataset

    base = tmp_path_factory.mktemp("cifar")
    zip_path = make_image_zip(base / "cifar.zip", per_class=20, classes=10, corrupt=2)
    cfg = DatasetConfig(root=str(zip_path), download=False, val_fraction=0.2, test_fraction=0.2)
    prepare_dataset("cifar10", cfg, 0, base / "cifar10", base / "dl")
    return base / "cifar10"


TINY_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "max_epochs": 1,
    "precision": "32-true",
    "enable_progress_bar": False,
    "log_every_n_steps": 1,
}


def tiny_section(
    name: str, upstream: str | Path | None = None, model: dict | None = None, **trainer
):
    """The model's params section with its ``tiny`` overrides (small nets, one epoch).

    Args:
        upstream: the trained classifier directory a generative model is scored with.
        model: further ``model`` overrides.
    """
    from sightline.registry import get_model

    spec = get_model(name)
    raw = {
        "data": {"batch_size": 16, "eval_batch_size": 64, **TINY_DATA.get(name, {})},
        "model": {**TINY_MODEL.get(name, {}), **(model or {})},
        "trainer": {**TINY_TRAINER, **trainer},
    }
    if "score" in spec.params.model_fields:
        raw["score"] = TINY_SCORE
    if "attack" in spec.params.model_fields:
        raw["attack"] = TINY_ATTACK
    if "features" in spec.params.model_fields:
        raw["features"] = TINY_FEATURES
    if "iwae" in spec.params.model_fields:
        raw["iwae"] = TINY_IWAE
    if "dream" in spec.params.model_fields:
        raw["dream"] = TINY_DREAM
    if upstream is not None:
        raw["upstream"] = str(upstream)
    return spec.params.model_validate(raw)


TINY_MODEL = {
    "classifier": {
        "channels": [8, 16],
        "blocks_per_stage": 1,
        "hidden": 16,
        "pool": "flatten",
        "channels_last": False,
        "lr": 0.01,
        "dropout": 0.0,
    },
    "vae": {"latent_dim": 4, "channels": [8, 16], "hidden": 32, "lr": 0.005, "max_samples": 64},
    "gan": {
        "latent_dim": 8,
        "generator_channels": [16, 8],
        "discriminator_channels": [8, 16],
        "fixed_samples": 8,
        "max_samples": 64,
    },
}
TINY_MODEL["spam"] = {
    "vocab_size": 300,
    "max_tokens": 48,
    "dim": 16,
    "layers": 1,
    "heads": 2,
    "image_size": 32,
    "image_channels": [8, 16],
    "lr": 0.005,
    "warmup_steps": 0,
    "char_grams": 512,
}


def fit_steps(module, dm, steps: int):
    """``steps`` optimiser steps of ``module`` on ``dm`` on the CPU (no validation, logger,
    checkpoint or progress bar); returns the trainer."""
    import lightning as L

    trainer = L.Trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=dm)
    return trainer


TINY_DATA = {"clip": {"fashion_pairs": 32}, "transfer": {"train_per_class": 4}}
TINY_ATTACK = {"n": 10, "eps": [2, 8], "steps": 2, "batch_size": 10}
TINY_FEATURES = {"train_per_class": 6, "backbone": "efficientnet_lite0"}  # the fastest
TINY_IWAE = {"samples": 50, "images": 20}
TINY_DREAM = {"size": 32, "class_steps": 3, "channel_steps": 3}
TINY_SCORE = {
    "samples": 60,
    "val_samples": 40,
    "kid_subsets": 5,
    "kid_subset_size": 20,
    "batch_size": 32,
}


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, prepared_fashion) -> Path:
    """A classifier trained one epoch on the synthetic Fashion-MNIST: the FID feature extractor."""
    from sightline.training import train

    base = tmp_path_factory.mktemp("classifier")
    train(
        "classifier",
        tiny_section("classifier"),
        0,
        prepared_fashion,
        base / "model",
        base / "run",
        None,
    )
    return base / "model"


@pytest.fixture(scope="session")
def cifar_features(tmp_path_factory, prepared_cifar) -> Path:
    """The features stage's output for the synthetic CIFAR-10 (EfficientNet-Lite0, `precision: auto`)."""
    import torch

    from sightline.models.transfer import FeaturesConfig, extract_features

    out = tmp_path_factory.mktemp("features") / "cifar10"
    extract_features(prepared_cifar, out, FeaturesConfig(**TINY_FEATURES), 0, torch.device("cpu"))
    return out


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory, fashion_root, emoji_package, spam_corpus) -> Path:
    """A git + DVC copy of the repository whose params are tiny and use the synthetic IDX files."""
    import yaml

    dst = tmp_path_factory.mktemp("repo")
    for item in (
        "pipeline",
        "src",
        "serving",
        "pyproject.toml",
        "README.md",
        "dvc.yaml",
        "params.yaml",
        ".dvc",
        ".dvcignore",
        ".gitignore",
    ):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(
                src,
                dst / item,
                ignore=shutil.ignore_patterns("__pycache__", "cache", "tmp", "*.egg-info"),
            )
        elif src.exists():
            shutil.copy2(src, dst / item)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {
        "fashion_mnist": {"root": str(fashion_root), "download": False, "val_fraction": 0.2},
        "emoji": {
            "root": str(emoji_package),
            "download": False,
            "val_fraction": 0.2,
            "test_fraction": 0.25,
        },
        "spam": {**TINY_SPAM_DATASET, "root": str(spam_corpus)},
    }
    for name, section in params["models"].items():
        section["data"].update({"batch_size": 16, "eval_batch_size": 64, **TINY_DATA.get(name, {})})
        section["model"].update(TINY_MODEL.get(name, {}))
        section["trainer"].update(TINY_TRAINER)
        for key, tiny in (
            ("score", TINY_SCORE),
            ("attack", TINY_ATTACK),
            ("features", TINY_FEATURES),
            ("iwae", TINY_IWAE),
            ("dream", TINY_DREAM),
        ):
            if key in section:
                section[key].update(tiny)
    transfer = params["models"]["transfer"]  # on the tiny Fashion-MNIST: no CIFAR-10 copy here
    transfer["data"]["dataset"] = "fashion_mnist"
    transfer["upstream"] = "data/features/fashion_mnist"
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=t@example.invalid", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    for key, value in (
        ("user.email", "t@example.invalid"),
        ("user.name", "t"),
    ):  # `dvc exp` commits
        subprocess.run(["git", "config", key, value], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny"], cwd=dst, check=True)
    return dst


def fixed_batch_losses(loss_fn, opt, steps: int) -> list[float]:
    """``steps`` optimizer steps on ``loss_fn()`` (one fixed batch); the loss before each step."""
    losses = []
    for _ in range(steps):
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def run_cli(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a command with this interpreter's environment (so `python` and `dvc` resolve)."""
    import os

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


EMOJI_CATEGORIES = ["Smileys & Emotion", "Animals & Nature", "Flags"]


def make_emoji_package(root: Path, per_category: int = 8) -> Path:
    """An unpacked ``emoji-datasource-google`` lookalike: emoji.json + RGBA PNGs (one broken,
    one Component entry, skin-tone variants)."""
    import json

    img_dir = root / "img/google/64"
    img_dir.mkdir(parents=True, exist_ok=True)
    colors = [(230, 180, 20), (40, 160, 60), (30, 60, 200)]
    entries, order = [], 0
    for c, category in enumerate(EMOJI_CATEGORIES):
        for k in range(per_category):
            code = f"{c + 1}F{k:03d}"
            entry = {
                "name": f"{category.split()[0].upper()} THING {k}",
                "short_name": f"t{c}{k}",
                "unified": code,
                "image": f"{code.lower()}.png",
                "category": category,
                "sort_order": order,
                "has_img_google": True,
            }
            order += 1
            if k % 4 == 1:
                entry["skin_variations"] = {
                    t: {"image": f"{code.lower()}-{t.lower()}.png", "has_img_google": True}
                    for t in ("1F3FB", "1F3FD")
                }
            entries.append(entry)
            for image in [
                entry["image"],
                *(v["image"] for v in entry.get("skin_variations", {}).values()),
            ]:
                img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
                img.paste(Image.new("RGBA", (16 + 4 * k, 16 + 4 * k), (*colors[c], 255)), (8, 8))
                img.save(img_dir / image)
    (img_dir / entries[2]["image"]).write_bytes(b"broken png")
    entries.append(
        {
            "name": "EMOJI MODIFIER FITZPATRICK TYPE-3",
            "short_name": "skin-tone-3",
            "unified": "1F3FC",
            "image": "1f3fc.png",
            "category": "Component",
            "sort_order": order,
        }
    )
    (root / "emoji.json").write_text(json.dumps(entries))
    return root


@pytest.fixture(scope="session")
def emoji_package(tmp_path_factory) -> Path:
    return make_emoji_package(tmp_path_factory.mktemp("emoji-pkg") / "package")


@pytest.fixture(scope="session")
def prepared_emoji(tmp_path_factory, emoji_package) -> Path:
    from sightline.config import DatasetConfig
    from sightline.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared-emoji") / "emoji"
    cfg = DatasetConfig(
        root=str(emoji_package), download=False, val_fraction=0.2, test_fraction=0.25
    )
    prepare_dataset("emoji", cfg, 0, out, out.parent / "dl")
    return out


HAM_WORDS = [
    "kernel",
    "patch",
    "build",
    "release",
    "meeting",
    "notes",
    "agenda",
    "python",
    "script",
    "mailing",
    "list",
    "thanks",
    "regards",
    "config",
    "server",
    "debian",
    "package",
    "bug",
    "report",
    "version",
]
SPAM_WORDS = [
    "free",
    "money",
    "cash",
    "prize",
    "winner",
    "click",
    "offer",
    "limited",
    "viagra",
    "mortgage",
    "rates",
    "guaranteed",
    "income",
    "credit",
    "cheap",
    "pills",
    "unsubscribe",
    "act",
    "now",
]


def png_bytes(size: tuple[int, int] = (40, 30), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def make_email(
    subject: str, body: str, html: bool = False, images: list[bytes] = (), charset: str = "utf-8"
) -> bytes:
    """An RFC 822 message: plain or HTML-only body, optional PNG attachments."""
    from email.message import EmailMessage

    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "a@example.org", "b@example.org", subject
    msg["Date"] = "Tue, 06 Aug 2002 11:51:02 +0100"
    msg["X-Spam-Status"] = "leaky header that must never be read"
    if html:
        msg.set_content(f"<html><body><p>{body}</p></body></html>", subtype="html", charset=charset)
    else:
        msg.set_content(body, charset=charset)
    for k, data in enumerate(images):
        msg.add_attachment(data, maintype="image", subtype="png", filename=f"img{k}.png")
    return msg.as_bytes()


def make_spam_corpus(root: Path, per_class: int = 24, seed: int = 0) -> Path:
    """A SpamAssassin-style folder: easy_ham, spam (earlier), easy_ham_2, spam_2 (later), with
    HTML-only and image messages, a cross-collection duplicate, a non-email and a broken image."""
    rng = np.random.default_rng(seed)
    for folder, words, n in (
        ("easy_ham", HAM_WORDS, per_class),
        ("spam", SPAM_WORDS, per_class),
        ("easy_ham_2", HAM_WORDS, per_class),
        ("spam_2", SPAM_WORDS, per_class),
    ):
        d = root / folder
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            era = "latercollection" if folder.endswith("_2") else "earliercollection"
            body = "\n".join(" ".join(rng.choice(words, 12)) + f" {era} {i}" for _ in range(6))
            subject = " ".join(rng.choice(words, 4))
            noisy = Image.fromarray(
                rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
            )  # lossy storage would alter it
            buf = io.BytesIO()
            noisy.save(buf, format="PNG")
            images = [buf.getvalue()] if i % 5 == 0 else []
            (d / f"{i:05d}.{folder}").write_bytes(
                make_email(subject, body, html=i % 4 == 3, images=images)
            )
    dup = sorted((root / "spam").iterdir())[1].read_bytes()
    (root / "spam_2" / "99999.duplicate").write_bytes(dup)
    (root / "easy_ham_2" / "99998.binary").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00garbage")
    (root / "spam" / "99997.broken-image").write_bytes(
        make_email("cheap pills", "act now", images=[b"\x89PNG not really"])
    )
    (root / "easy_ham" / "cmds").write_text("mv a b\n")
    return root


@pytest.fixture(scope="session")
def spam_corpus(tmp_path_factory) -> Path:
    return make_spam_corpus(tmp_path_factory.mktemp("spam-corpus") / "corpus")


TINY_SPAM_DATASET = {
    "root": None,
    "download": False,
    "val_fraction": 0.25,
    "evasion": {"fraction": 0.3, "max_chars": 300},
}


@pytest.fixture(scope="session")
def prepared_spam(tmp_path_factory, spam_corpus) -> Path:
    from sightline.config import SpamDatasetConfig
    from sightline.prepare import prepare_dataset

    out = tmp_path_factory.mktemp("prepared-spam") / "spam"
    cfg = SpamDatasetConfig.model_validate({**TINY_SPAM_DATASET, "root": str(spam_corpus)})
    prepare_dataset("spam", cfg, 0, out, out.parent / "dl")
    return out


SERVED = ("classifier", "transfer", "spam", "vae", "gan", "clip")


@pytest.fixture(scope="session")
def packaged(
    tmp_path_factory,
    prepared_fashion,
    prepared_spam,
    prepared_emoji,
    prepared_cifar,
    cifar_features,
) -> dict[str, Path]:
    """``{name: models/<name>}`` of the tiny models, each also packaged into the store."""
    import torch
    from package import package_model

    from sightline.registry import get_model
    from sightline.training import export_model

    torch.manual_seed(0)
    base = tmp_path_factory.mktemp("served")
    ckpt = base / "placeholder.ckpt"
    ckpt.write_bytes(b"")
    data = {"spam": prepared_spam, "clip": prepared_emoji, "transfer": prepared_cifar}
    upstreams = {"clip": prepared_fashion, "transfer": cifar_features}
    dirs = {}
    for name in SERVED:
        section = tiny_section(name, upstream=upstreams.get(name))
        spec = get_model(name)
        dm = spec.datamodule(section, data.get(name, prepared_fashion), 0)
        module = spec.module(**spec.module_kwargs(section, dm))
        if name == "transfer":  # the ImageNet backbone, as training starts from
            module.load_pretrained()
        if name == "spam":  # a threshold that is not the default, so the served one is checked
            module.threshold.fill_(0.37)
        dirs[name] = base / name
        export_model(module, name, ckpt, dirs[name], {})
        metrics = {
            "dataset": section.data.dataset,
            "val/acc": 0.5,
            "test/acc": 0.5,
            "test/f1": 0.25,
            "val/fid": 9.0,
            "fid": 9.0,
        }
        extra = spec.index(module.eval(), prepared_emoji) if spec.index is not None else None
        package_model(
            name,
            dirs[name],
            metrics,
            section.model_dump(mode="json"),
            "0123456789abcdef",
            "exp-1",
            extra,
        )
    return dirs


@pytest.fixture(scope="session")
def client(packaged):
    from starlette.testclient import TestClient

    from serving.service import Sightline

    with TestClient(Sightline.to_asgi(), raise_server_exceptions=False) as c:
        yield c


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc, timeout: float = 240) -> None:
    """Until ``url``'s ``/readyz`` answers 200; fails if ``proc`` exits or ``timeout`` passes."""
    import time
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, f"bentoml serve exited with {proc.returncode}"
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url}/readyz not ready after {timeout} s")


@contextmanager
def bentoml_serve(log_path: Path, params: Path | None = None):
    """``bentoml serve serving.service:Sightline`` on a free loopback port, with the serving
    settings of ``params`` (else ``serving/params.yaml``): ``(url, process)``; stopped after."""
    import signal

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("SIGHTLINE_API_TOKEN", None)
    env.pop("SIGHTLINE_SERVING_PARAMS", None)
    if params is not None:
        env["SIGHTLINE_SERVING_PARAMS"] = str(params)
    # each server its own task store: a starting server deletes the one it finds
    env["BENTOML_RESULT_STORE"] = str(log_path.with_suffix(".tasks.db"))
    cmd = [
        str(Path(sys.executable).parent / "bentoml"),
        "serve",
        "serving.service:Sightline",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_ready(url, proc)
            yield url, proc
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)


@pytest.fixture(scope="session")
def live_server(packaged):
    """The tiny packaged models served with the default settings: ``(url, process)``; stopped
    at the end of the session."""
    with bentoml_serve(packaged["classifier"].parent / "server.log") as served:
        yield served
