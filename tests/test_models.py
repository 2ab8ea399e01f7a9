"""Every registered model: shapes, learning on a fixed batch, checkpoint round trips."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from conftest import fixed_batch_losses, tiny_section

from sightline.config import ImageDataConfig
from sightline.inference import load_for_inference, load_module
from sightline.registry import get_model, list_models
from sightline.training import export_model, train

IMAGE_MODELS = [
    n
    for n in list_models()
    if get_model(n).params.model_fields["data"].annotation is ImageDataConfig
]


def build(name: str, data_dir):
    spec = get_model(name)
    section = tiny_section(name)
    dm = spec.datamodule(section, data_dir, 0)
    return spec.module(**spec.module_kwargs(section, dm)), dm


@pytest.mark.parametrize(
    "fixture,shape", [("prepared_fashion", (1, 28, 28)), ("prepared_cifar", (3, 32, 32))]
)
def test_classifier_output_shapes(fixture, shape, request):
    module, dm = build("classifier", request.getfixturevalue(fixture))
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == shape
    logits = module(dm.preprocess.normalize(x))
    assert logits.shape == (len(x), len(dm.class_names))
    assert module.net.features(dm.preprocess.normalize(x)).shape == (len(x), module.hparams.hidden)


def test_classifier_overfits_one_fixed_batch(prepared_fashion):
    torch.manual_seed(0)
    module, dm = build("classifier", prepared_fashion)
    x, y = next(iter(dm.train_dataloader()))
    x = dm.preprocess.normalize(x)
    opt = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    losses = fixed_batch_losses(lambda: torch.nn.functional.cross_entropy(module(x), y), opt, 40)
    assert losses[-1] < 0.1 * losses[0]


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_checkpoint_round_trip(name, prepared_fashion, tiny_classifier, tmp_path):
    """A trained checkpoint loads with torch.load(weights_only=True) and safetensors alike."""
    section = tiny_section(name, upstream=tiny_classifier)
    out = tmp_path / "model"
    info = train(name, section, 0, prepared_fashion, out, tmp_path / "run", None)
    assert info["epochs"] == 1 and (out / "best.ckpt").is_file()
    assert not (tmp_path / "run").exists()  # finished runs clean their scratch directory

    raw = torch.load(out / "best.ckpt", map_location="cpu", weights_only=True)
    assert "state_dict" in raw and raw["hyper_parameters"]["class_names"][0] == "T-shirt/top"

    from_ckpt = load_module(out / "best.ckpt", name)
    from_safetensors, preprocess, postprocess = load_for_inference(out, device="cpu")
    a, b = from_ckpt.state_dict(), from_safetensors.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    dm = get_model(name).datamodule(section, prepared_fashion, 0)
    assert from_safetensors.preprocess == dm.preprocess  # preprocessing travels with the model
    if name == "classifier":
        x = dm.preprocess.normalize(next(iter(dm.test_dataloader()))[0][:8])
        with torch.no_grad():
            assert torch.equal(from_ckpt(x), from_safetensors(x))
            top = postprocess(from_safetensors(x), top_k=3)
        assert len(top) == 8 and len(top[0]) == 3
        assert top[0][0]["probability"] >= top[0][1]["probability"]
    else:  # generative: the same seed gives the same images from either copy
        g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
        images = from_ckpt.sample(4, g1)
        assert torch.equal(images, from_safetensors.sample(4, g2))
        assert [im.size for im in postprocess(images)] == [(28, 28)] * 4


def test_export_then_reexport_is_atomic(prepared_fashion, tmp_path):
    module, _ = build("classifier", prepared_fashion)
    ckpt = tmp_path / "x.ckpt"
    ckpt.write_bytes(b"ckpt")
    export_model(module, "classifier", ckpt, tmp_path / "m", {"a": 1})
    with pytest.raises(FileNotFoundError):
        export_model(module, "classifier", tmp_path / "missing.ckpt", tmp_path / "m", {"a": 2})
    assert (tmp_path / "m" / "train.json").read_text().strip().endswith("}")
    assert '"a": 1' in (tmp_path / "m" / "train.json").read_text()


class _Crash(L.Callback):
    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch == 0:
            trainer.save_checkpoint(trainer.checkpoint_callback.dirpath + "/last.ckpt")
            raise KeyboardInterrupt  # a killed run


def test_killed_run_resumes_from_last(prepared_fashion, tmp_path):
    section = tiny_section("classifier", max_epochs=2)
    run_dir = tmp_path / "run"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(
            "classifier",
            section,
            0,
            prepared_fashion,
            tmp_path / "m",
            run_dir,
            None,
            callbacks=[_Crash()],
        )
    assert (run_dir / "checkpoints/last.ckpt").is_file() and not (tmp_path / "m").exists()
    info = train("classifier", section, 0, prepared_fashion, tmp_path / "m", run_dir, None)
    assert info["resumed_from"] and info["epochs"] == 2

    # a different config never resumes from that run directory
    other = tiny_section("classifier", max_epochs=1)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "fingerprint.txt").write_text("something else\n")
    (run_dir / "checkpoints/last.ckpt").write_bytes(b"stale")
    assert (
        train("classifier", other, 0, prepared_fashion, tmp_path / "m2", run_dir, None)[
            "resumed_from"
        ]
        is None
    )


def test_same_seed_same_weights(prepared_fashion, tmp_path):
    section = tiny_section("classifier")
    for k in range(2):
        train(
            "classifier", section, 7, prepared_fashion, tmp_path / f"m{k}", tmp_path / f"r{k}", None
        )
    a = load_module(tmp_path / "m0").state_dict()
    b = load_module(tmp_path / "m1").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_trains_and_serves_on_gpu(prepared_fashion, tmp_path):
    section = tiny_section("classifier", accelerator="gpu", precision="bf16-mixed")
    info = train("classifier", section, 0, prepared_fashion, tmp_path / "m", tmp_path / "r", None)
    assert info["device"].startswith("cuda")
    model, preprocess, _ = load_for_inference(tmp_path / "m")
    assert next(model.parameters()).is_cuda
