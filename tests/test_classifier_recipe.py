"""The classifier's options for harder data (params/cifar10.yaml), at a tiny width: each does
what it says, they train and resume together, and the defaults build today's net."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_TRAINER, fixed_batch_losses
from safetensors.torch import load_file
from test_models import _Crash

from sightline.artifacts import CKPT_FILE, WEIGHTS_FILE
from sightline.models.classifier import (
    ClassifierConfig,
    ClassifierModule,
    ClassifierParams,
    WhiteningStem,
)
from sightline.training import train

PROFILE = Path(__file__).parents[1] / "params" / "cifar10.yaml"


def recipe_section(**trainer) -> ClassifierParams:
    """params/cifar10.yaml's classifier, narrowed to a tiny width, batch and run."""
    raw = yaml.safe_load(PROFILE.read_text())["models"]["classifier"]
    raw["model"].update(channels=[8, 16, 16], whiten_images=50)
    raw["data"].update(batch_size=32, eval_batch_size=64)
    raw["trainer"] = {**TINY_TRAINER, **trainer}
    return ClassifierParams.model_validate(raw)


def recipe_module(prepared_cifar, **model) -> tuple[ClassifierModule, object]:
    from sightline.models.classifier import SPEC

    section = recipe_section()
    section = section.model_copy(update={"model": section.model.model_copy(update=model)})
    dm = SPEC.datamodule(section, prepared_cifar, 0)
    return ClassifierModule(**SPEC.module_kwargs(section, dm)), dm


def test_defaults_build_todays_net():
    """Every new option's default leaves the net as it was: no stem, stride-2 convs,
    LeakyReLU, trainable BatchNorm, an unscaled output layer, one AdamW parameter group."""
    module = ClassifierModule(
        [str(i) for i in range(10)],
        {"channels": 1, "size": [28, 28], "mean": [0.5], "std": [0.25]},
        **ClassifierConfig().model_dump(),
    )
    net = module.net
    assert isinstance(net.stem, torch.nn.Identity)
    assert not any(isinstance(m, torch.nn.MaxPool2d | torch.nn.GELU) for m in net.modules())
    assert [m.stride for m in net.modules() if isinstance(m, torch.nn.Conv2d)][:3] == [
        (1, 1),
        (1, 1),
        (2, 2),
    ]
    assert type(net.out) is torch.nn.Linear
    assert all(p.requires_grad for p in module.parameters())
    opt, _ = module.build_optimizer(10)
    assert type(opt) is torch.optim.AdamW and len(opt.param_groups) == 1
    assert len(opt.param_groups[0]["params"]) == len(list(module.parameters()))


def test_whitening_stem_whitens_patches():
    """The stem's filters make the 2x2 patches of the images it was set from uncorrelated with
    unit variance (both signs: the second half is the negative of the first)."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 1, 16, 16, generator=g)
    images = torch.cat([base, 0.8 * base + 0.2 * torch.randn(64, 1, 16, 16, generator=g)], 1)
    images = (
        images + torch.randn(64, 2, 16, 16, generator=g) * torch.tensor([0.3, 0.1])[:, None, None]
    )
    stem = WhiteningStem(2, torch.nn.Identity())
    stem.init_from(images, eps=0.0)
    out = stem(images)  # (N, 16, 15, 15)
    assert out.shape == (64, 16, 15, 15)
    half = out[:, :8].permute(0, 2, 3, 1).reshape(-1, 8)
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(8), atol=1e-3)
    assert torch.equal(out[:, 8:], -out[:, :8])
    assert not stem.conv.weight.requires_grad and stem.conv.bias.requires_grad
    assert WhiteningStem(2, torch.nn.Identity(), learned=True).conv.weight.requires_grad


def test_recipe_shapes_and_flip_tta(prepared_cifar):
    module, dm = recipe_module(prepared_cifar, tta="flip")
    x, _ = next(iter(dm.train_dataloader()))
    x = dm.preprocess.normalize(x)
    # 32 -> whitening 31 -> max pools 15, 7, 3 -> global max pool -> the output layer
    assert module.net.features(x).shape == (len(x), 16)
    module.eval()
    logits = module(x)
    assert logits.shape == (len(x), 10)
    assert torch.allclose(module(x.flip(-1)), logits, atol=1e-6)  # mirror-averaged
    assert not torch.allclose(module.net(x.flip(-1)), module.net(x), atol=1e-3)
    module.train()
    assert torch.equal(module(x), module.net(x))  # training sees one view


def test_flip_shift_tta_averages_six_views(prepared_cifar):
    module, dm = recipe_module(prepared_cifar, tta="flip_shift")
    x = dm.preprocess.normalize(next(iter(dm.val_dataloader()))[0][:8])
    module.eval()
    net = module.net
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [x, pad[..., :32, :32], pad[..., 2:, 2:]]
    mirrored = [(net(v) + net(v.flip(-1))) / 2 for v in views]
    expected = 0.5 * mirrored[0] + 0.25 * (mirrored[1] + mirrored[2])
    assert torch.allclose(module(x), expected, atol=1e-5)


def test_optimizer_groups_and_triangle_schedule(prepared_cifar):
    module, _ = recipe_module(prepared_cifar, optimizer="sgd")
    hp = module.hparams
    opt, sched = module.build_optimizer(100)
    assert type(opt) is torch.optim.SGD and opt.defaults["nesterov"]
    main, biases = opt.param_groups
    bn = [m for m in module.net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn}
    frozen = {id(m.weight) for m in bn} | {id(module.net.stem.conv.weight)}
    assert not frozen & {id(p) for p in main["params"]}
    peak = []
    for _ in range(100):
        peak.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == pytest.approx(peak[-1] * hp.bn_bias_lr_scale)
        opt.step()
        sched.step()
    # decay per step (lr x weight decay) is the same in both groups
    assert main["weight_decay"] * hp.lr == pytest.approx(
        biases["weight_decay"] * hp.lr * hp.bn_bias_lr_scale
    )
    assert peak[0] == pytest.approx(0.2 * hp.lr)
    assert max(peak) == pytest.approx(hp.lr) and peak.index(max(peak)) in (22, 23)
    assert peak[-1] == pytest.approx(0.07 * hp.lr, rel=0.05)


def test_recipe_learns_a_fixed_batch(prepared_cifar):
    torch.manual_seed(0)
    module, dm = recipe_module(prepared_cifar, optimizer="sgd")
    x, y = next(iter(dm.train_dataloader()))
    x = dm.preprocess.normalize(x)
    module.net.stem.init_from(x)
    opt, _ = module.build_optimizer(60)
    module.train()
    losses = fixed_batch_losses(lambda: torch.nn.functional.cross_entropy(module(x), y), opt, 60)
    assert losses[-1] < 0.25 * losses[0], losses[::10]


def test_recipe_trains_exports_the_average_and_resumes_it(prepared_cifar, tmp_path):
    """The profile through Lightning (Muon and SGD, manual optimization): the whitening is set
    from the training images before fitting and stays frozen; the checkpoints hold Lightning's
    EMA of the weights as the model (the raw weights beside it) and both optimizers' states; a
    run killed after epoch 1 resumes with that average restored."""
    section = recipe_section(max_epochs=2)
    info = train("classifier", section, 0, prepared_cifar, tmp_path / "a", tmp_path / "ra", None)
    assert info["epochs"] == 2 and info["resumed_from"] is None
    best = torch.load(tmp_path / "a" / CKPT_FILE, map_location="cpu", weights_only=True)
    average, raw = best["state_dict"], best["current_model_state"]
    assert section.model.optimizer == "muon" and len(best["optimizer_states"]) == 2
    weights = load_file(tmp_path / "a" / WEIGHTS_FILE)
    assert all(torch.equal(weights[k], average[k]) for k in weights)
    assert not torch.equal(average["net.out.weight"], raw["net.out.weight"])

    from sightline.data.images import ImageDataModule

    first = ImageDataModule(prepared_cifar).split("train").tensors[0][: section.model.whiten_images]
    module, _ = recipe_module(prepared_cifar)
    module.net.stem.init_from(module.preprocess.normalize(first))
    stem = module.net.stem.conv.weight
    assert torch.equal(raw["net.stem.conv.weight"], stem)  # set from the data, then frozen
    assert torch.allclose(weights["net.stem.conv.weight"], stem, atol=1e-5)  # its average

    run_dir = tmp_path / "rb"
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train("classifier", section, 0, prepared_cifar, tmp_path / "b", run_dir, None, [_Crash()])
    last = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert "averaging_state" in last and "current_model_state" in last
    resumed = train("classifier", section, 0, prepared_cifar, tmp_path / "b", run_dir, None)
    assert resumed["resumed_from"] and resumed["epochs"] == 2


def test_the_committed_profile_checks_against_params_yaml():
    """`make experiment PROFILE=params/cifar10.yaml [MODELS=classifier]` as README shows them,
    checked and printed only (--dry-run): every key exists and every value is valid, and the
    whole profile moves the classifier, VAE and GAN to CIFAR-10 together."""
    from conftest import REPO, run_cli

    cmd = ["python", "pipeline/experiment.py", "params/cifar10.yaml"]
    result = run_cli([*cmd, "--models", "classifier", "--dry-run"], REPO)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("dvc exp run -n cifar10-classifier -S ")
    assert "models.classifier.model.stem=" in line and line.endswith(" evaluate@classifier")
    assert "models.vae" not in line and "models.gan" not in line
    result = run_cli([*cmd, "--dry-run"], REPO)
    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith("dvc exp run -n cifar10 -S ") and "evaluate@" not in line
    for name in ("classifier", "vae", "gan"):
        assert f"models.{name}.data.dataset=cifar10" in line


def test_muon_trains_the_filters_as_matrix_views(prepared_cifar):
    """``optimizer: muon``: Muon holds 2-D views that share the filters' storage (channels-last
    or not), SGD the rest; a step moves the filters with their norm held at sqrt(out), and the
    state-dict keys stay those of the net."""
    for channels_last in (True, False):
        module, dm = recipe_module(prepared_cifar, optimizer="muon", channels_last=channels_last)
        keys = set(module.state_dict())
        sgd, sched = module.build_optimizer(10)
        muon, muon_sched = module.build_muon(10)
        filters = module.conv_filters()
        assert len(filters) == 6 and all(p.ndim == 4 for p in filters)
        in_sgd = {id(p) for g in sgd.param_groups for p in g["params"]}
        assert not in_sgd & {id(p) for p in filters}
        assert [p.data_ptr() for p in muon.param_groups[0]["params"]] == [
            p.data_ptr() for p in filters
        ]
        before = [p.detach().clone() for p in filters]
        x, y = next(iter(dm.train_dataloader()))
        x = dm.preprocess.normalize(x)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        module.muon_update([muon])
        for p, b in zip(filters, before, strict=True):
            assert not torch.allclose(p, b)
            assert p.norm().item() == pytest.approx(len(p) ** 0.5, rel=1e-4)
        assert set(module.state_dict()) == keys
        assert sched is not None and muon_sched is not None


def test_muon_learns_a_fixed_batch(prepared_cifar):
    torch.manual_seed(0)
    module, dm = recipe_module(prepared_cifar, optimizer="muon")
    x, y = next(iter(dm.train_dataloader()))
    x = dm.preprocess.normalize(x)
    module.net.stem.init_from(x)
    opts = [module.build_optimizer(60)[0], module.build_muon(60)[0]]
    module.train()
    losses = []
    for _ in range(60):
        module.net.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(module(x), y)
        loss.backward()
        module.muon_update(opts)
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]
