"""The device check (``make gpu-check`` = ``pytest -m gpu -s``): every model trains a few steps on
the device chosen at run time with its default precision and ``deterministic: true``, then the
served classifier (at its default size) runs the load benchmark with ``gpu: 1``. On a CUDA
machine that is the GPU; elsewhere it runs, slowly, on the CPU. Not part of ``make test``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, tiny_section

from sightline.registry import list_models

pytestmark = pytest.mark.gpu
PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())["models"]


@pytest.mark.parametrize("name", list_models())
def test_each_model_trains_a_few_steps_on_the_run_time_device(
    name, prepared_fashion, prepared_spam, prepared_emoji, tmp_path
):
    from sightline.training import train

    data = {"spam": prepared_spam, "clip": prepared_emoji}.get(name, prepared_fashion)
    upstream = prepared_fashion if name == "clip" else None
    trainer = {
        "accelerator": "auto",
        "precision": PARAMS[name]["trainer"]["precision"],
        "deterministic": True,
        "limit_train_batches": 3,
    }
    section = tiny_section(name, upstream=upstream, **trainer)
    if name in ("vae", "gan"):  # scored with a classifier: the tiny one, trained here first
        clf = tiny_section("classifier", **trainer)
        train("classifier", clf, 0, prepared_fashion, tmp_path / "clf", tmp_path / "clf-run", None)
        section = tiny_section(name, upstream=tmp_path / "clf", **trainer)
    info = train(name, section, 0, data, tmp_path / "m", tmp_path / "run", None)
    assert info["device"].startswith("cuda" if torch.cuda.is_available() else "cpu"), info
    assert info["global_steps"] >= 1


def test_images_are_normalised_on_the_device_as_on_the_cpu(prepared_fashion):
    from types import SimpleNamespace

    from PIL import Image

    from serving.decoding import pixels
    from sightline.data.images import ImageDataModule
    from sightline.inference import select_device

    dm = ImageDataModule(prepared_fashion, batch_size=8)
    x_uint8, _ = next(iter(dm.test_dataloader()))
    pil = [Image.fromarray(a[0]) for a in x_uint8.numpy()]
    device = select_device()
    on_device = pixels(SimpleNamespace(preprocess=dm.preprocess), pil, device)
    assert on_device.device.type == device.type
    torch.testing.assert_close(on_device.cpu(), dm.preprocess(pil))


def test_jpegs_decode_on_the_device_as_on_the_cpu(prepared_fashion):
    """JPEG uploads decoded where the model runs (nvJPEG on CUDA, through TorchCodec or, where
    it does not run beside this torch, torchvision.io) give the pixels the CPU path gives
    (libjpeg-turbo and PIL's arithmetic): decoders differ in their inverse DCT, so this bounds
    the difference and prints it with the decoder's name."""
    import io
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from serving.decoding import jpeg_decoder, upload_pixels
    from serving.inputs import Jpeg
    from sightline.data.images import ImageDataModule
    from sightline.data.preprocess import ImagePreprocess
    from sightline.inference import select_device

    dm = ImageDataModule(prepared_fashion, batch_size=32)
    x_uint8, _ = next(iter(dm.test_dataloader()))
    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    photo[:150] = np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None]
    imgs = [Image.fromarray(a[0]) for a in x_uint8.numpy()] + [Image.fromarray(photo)]
    datas = []
    for img in imgs:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        datas.append(buf.getvalue())
    device = select_device()
    for p in (dm.preprocess, ImagePreprocess(3, (32, 32), (0.5,) * 3, (0.25,) * 3)):
        m = SimpleNamespace(preprocess=p)
        on_device, errors = upload_pixels(m, [Jpeg(d) for d in datas], device)
        on_cpu, _ = upload_pixels(m, [Jpeg(d) for d in datas], torch.device("cpu"))
        assert on_device.device.type == device.type and errors == [None] * len(datas)
        diff = (on_device.cpu().int() - on_cpu.int()).abs().float()
        print(
            f"\nJPEG pixels on {device} ({jpeg_decoder(device)}) vs the CPU, {p.channels} channel(s): max {diff.max():.0f}, mean {diff.mean():.3f} grey levels"
        )
        assert diff.max() <= 8 and diff.mean() <= 1.0


def test_the_served_classifier_under_load_on_the_device(
    packaged, prepared_fashion, tmp_path, monkeypatch
):
    """The tiny packaged set with the classifier at its default size (untrained: speed does not
    depend on the weights), served with ``gpu: 1`` when CUDA is there."""
    from package import package_model

    from sightline.registry import get_model
    from sightline.training import export_model

    spec = get_model("classifier")
    section = spec.params.model_validate(
        {**PARAMS["classifier"], "data": {**PARAMS["classifier"]["data"], "batch_size": 16}}
    )
    dm = spec.datamodule(section, prepared_fashion, 0)
    module = spec.module(**spec.module_kwargs(section, dm))
    (tmp_path / "ckpt").write_bytes(b"")
    export_model(module, "classifier", tmp_path / "ckpt", tmp_path / "classifier", {})
    package_model(
        "classifier",
        tmp_path / "classifier",
        {"test/acc": 0.0},
        section.model_dump(mode="json"),
        "0" * 16,
    )

    serving = yaml.safe_load((REPO / "serving/params.yaml").read_text())
    serving["gpu"] = 1 if torch.cuda.is_available() else 0
    # The front does every request's HTTP, multipart and PNG work on the CPU while the model
    # runs on the GPU: a front process per two cores (one on a 2-core machine, as by default).
    serving["workers"] = max(1, (os.cpu_count() or 2) // 2)
    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(serving))
    monkeypatch.setenv("SIGHTLINE_SERVING_PARAMS", str(path))
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    sys.modules.pop("serve_load", None)
    import serve_load

    # the references (in-process decoding, the header) follow the settings the server gets, not
    # the ones this process imported serving/ with in the tests before
    seen = serve_load.settings()
    assert (seen.gpu, seen.workers) == (serving["gpu"], serving["workers"])

    rows = serve_load.main(["--seconds", "8", "--isolation"])
    # JPEG uploads: decoded by the classifier service on the GPU (decode: auto, gpu: 1)
    rows += serve_load.main(
        ["--seconds", "8", "--per-request", "16", "--concurrency", "64", "--format", "jpeg"]
    )
    # an overload past the machine's capacity is a 503 with Retry-After; anything else is a bug
    broken = [k for _, _, r in rows for k in r["errors"] if not k.startswith("good:503")]
    assert not broken, json.dumps([r["errors"] for _, _, r in rows])
    assert Path(path).is_file()
