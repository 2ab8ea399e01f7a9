"""The open_clip model: tokenizer, features, loss, temperature, retrieval, data, fine-tuning."""

from __future__ import annotations

import json
import math
import tarfile

import lightning as L
import numpy as np
import pytest
import torch
from conftest import fit_steps, tiny_section
from PIL import Image

from sightline.data.emoji import load_emoji, split_groups
from sightline.errors import ConfigError, DataError, InputError
from sightline.evaluation import evaluate
from sightline.metrics.clip import recall_at_k
from sightline.models.clip import MAX_LOGIT_SCALE, ClipModule
from sightline.registry import get_model
from sightline.training import train


@pytest.fixture(scope="module")
def module() -> ClipModule:
    torch.manual_seed(0)
    return ClipModule().eval()


def build(prepared_emoji, prepared_fashion, **model):
    spec = get_model("clip")
    section = tiny_section("clip", upstream=prepared_fashion, model=model)
    dm = spec.datamodule(section, prepared_emoji, 0)
    return spec.module(**spec.module_kwargs(section, dm)), dm, section


def test_tokenizer_is_offline_and_pads_or_truncates_to_the_context(module):
    tokens = module.tokenize(["thumbs up sign, medium skin tone", "a " * 200])
    assert tokens.shape == (2, 24) and tokens.dtype == torch.long
    assert tokens[1, -1] == module.tokenizer.eot_token_id  # over-long: truncated, ends with EOT
    assert tokens[0, 0] == module.tokenizer.sot_token_id and tokens[0, -1] == 0  # short: padded
    with pytest.raises(InputError, match="non-empty list"):
        module.tokenize([])
    with pytest.raises(InputError, match="at most 256"):
        module.tokenize(["x"] * 257)


def test_features_share_a_width_and_have_unit_norm(module):
    images = [
        Image.new("RGB", (32, 32), (200, 30, 30)),
        Image.new("L", (50, 70), 128),
        Image.new("RGBA", (64, 64)),
    ]
    img = module.embed_images(images)  # any mode or size is converted
    txt = module.embed_texts(["a red square", "grey", "nothing"])
    assert img.shape == txt.shape == (3, 128)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    with pytest.raises(InputError, match="no images"):
        module.embed_images([])


def test_logits_are_b_by_b_and_the_loss_is_symmetric(module):
    torch.manual_seed(1)
    img = torch.nn.functional.normalize(torch.randn(6, 128), dim=-1)
    txt = torch.nn.functional.normalize(torch.randn(6, 128), dim=-1)
    logits_img, logits_txt = module.loss.get_logits(img, txt, torch.tensor(10.0))
    assert logits_img.shape == logits_txt.shape == (6, 6)
    assert torch.allclose(logits_img, logits_txt.T)
    assert torch.allclose(
        module.loss(img, txt, torch.tensor(10.0)), module.loss(txt, img, torch.tensor(10.0))
    )
    aligned = module.loss(img, img, torch.tensor(10.0))
    assert aligned < module.loss(img, txt, torch.tensor(10.0))  # matching pairs -> lower loss


def test_logit_scale_starts_at_1_over_007_and_stays_clamped(prepared_emoji, prepared_fashion):
    clip, dm, _ = build(prepared_emoji, prepared_fashion, lr=0.5, warmup_steps=0)
    assert math.isclose(clip.model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    with torch.no_grad():
        clip.model.logit_scale.fill_(MAX_LOGIT_SCALE - 1e-3)
    fit_steps(clip, dm, 3)
    assert clip.model.logit_scale.item() <= MAX_LOGIT_SCALE + 1e-6


def test_recall_at_k_on_a_hand_made_matrix():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.0, 0.0],  # match first
            [0.8, 0.5, 0.1, 0.0],  # match second
            [0.7, 0.6, 0.2, 0.1],  # match third
            [0.9, 0.8, 0.7, 0.0],  # match last
        ]
    )
    assert recall_at_k(sim, (1, 2, 3, 4)) == {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0}


def test_training_and_serving_preprocess_identically(prepared_emoji, prepared_fashion):
    clip, dm, _ = build(prepared_emoji, prepared_fashion)
    dm.attach(clip)
    x, _, captions = dm.split("train")
    images, tokens = dm.collate([(Image.fromarray(x[0].transpose(1, 2, 0)), captions[0])])
    served = clip.preprocess([Image.fromarray(x[0].transpose(1, 2, 0))])
    assert torch.equal(images, served) and torch.equal(tokens, clip.tokenize([captions[0]]))


def test_emoji_prepare_splits_by_base_emoji(prepared_emoji, emoji_package, tmp_path):
    meta = json.loads((prepared_emoji / "meta.json").read_text())
    assert meta["classes"] == ["Smileys & Emotion", "Animals & Nature", "Flags"]  # no Component
    groups = {
        s: set(np.load(prepared_emoji / f"{s}_group.npy").tolist())
        for s in ("train", "val", "test")
    }
    assert not (groups["train"] & groups["test"]) and not (groups["train"] & groups["val"])
    report = json.loads((prepared_emoji / "report.json").read_text())
    assert report["skipped"] == 1 and report["skipped_files"][0].startswith("img/google/64/")
    raw = load_emoji(emoji_package, False, tmp_path)
    assert any(c.endswith(", medium skin tone") for c in raw.captions)
    assert len(raw.captions) == 3 * 8 + 3 * 2 * 2 - 1  # bases + 2 tones for 2 of 8 each, one broken
    # the same data read from the npm .tgz
    tgz = tmp_path / "emoji-datasource-google-0.0.0.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(emoji_package, arcname="package")
    assert load_emoji(tgz, False, tmp_path).captions == raw.captions
    parts = split_groups(raw.groups, [0.2, 0.2], 0)
    assert sum(len(p) for p in parts) == len(raw.groups)
    with pytest.raises(DataError, match="no emoji.json"):
        load_emoji(tmp_path, False, tmp_path)


def test_missing_pretrained_file_and_unknown_arch_are_one_line_errors(
    prepared_emoji, prepared_fashion, tmp_path
):
    with pytest.raises(
        ConfigError, match=r"models.clip.model.pretrained: .*missing.pt: file not found"
    ):
        build(prepared_emoji, prepared_fashion, pretrained=str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="models.clip.model.arch: 'ViT-Nope'"):
        build(prepared_emoji, prepared_fashion, arch="ViT-Nope")


class _CheckStart(L.Callback):
    def __init__(self, expected: dict) -> None:
        self.expected, self.matched = expected, None

    def on_fit_start(self, trainer, pl_module) -> None:
        state = pl_module.model.state_dict()
        # the module may be on a GPU; the expected weights stay on the CPU
        self.matched = all(torch.equal(state[k].cpu(), v.cpu()) for k, v in self.expected.items())


def test_fine_tunes_from_a_local_open_clip_checkpoint(prepared_emoji, prepared_fashion, tmp_path):
    torch.manual_seed(5)
    source = ClipModule()
    path = tmp_path / "local-clip.pt"
    torch.save({"state_dict": source.model.state_dict()}, path)
    section = tiny_section(
        "clip", upstream=prepared_fashion, model={"pretrained": str(path)}, limit_train_batches=1
    )
    check = _CheckStart(source.model.state_dict())
    info = train(
        "clip",
        section,
        0,
        prepared_emoji,
        tmp_path / "m",
        tmp_path / "run",
        None,
        callbacks=[check],
    )
    assert check.matched and info["global_steps"] == 1


def test_train_and_evaluate_write_metrics_and_pictures(prepared_emoji, prepared_fashion, tmp_path):
    section = tiny_section("clip", upstream=prepared_fashion)
    train("clip", section, 0, prepared_emoji, tmp_path / "m", tmp_path / "run", None)
    metrics = evaluate("clip", section, 0, tmp_path / "m", prepared_emoji, tmp_path / "report")
    json.dumps(metrics)
    n = metrics["test/n_pairs"]
    assert metrics["test/chance_recall@5"] == round(5 / n, 6)
    for key in (
        "test/i2t_recall@1",
        "test/t2i_recall@5",
        "zero_shot/fashion_mnist_acc",
        "zero_shot/emoji_category_acc",
    ):
        assert 0.0 <= metrics[key] <= 1.0
    assert (
        metrics["test/t2i_recall@10"]
        >= metrics["test/t2i_recall@5"]
        >= metrics["test/t2i_recall@1"]
    )
    assert metrics["zero_shot/fashion_mnist_n"] == 100 and metrics["trained_from"] == "scratch"
    assert metrics["image_tower"] == "trained"
    for png in ("similarity_matrix.png", "retrieval.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000


def test_the_tokenizer_cache_is_bounded_and_keeps_its_special_tokens():
    import open_clip

    from sightline.models.clip import BoundedCache

    tok = open_clip.get_tokenizer("ViT-B-32")
    plain = open_clip.get_tokenizer("ViT-B-32")
    specials = dict(tok.cache)
    tok.cache = BoundedCache(tok.cache, limit=50)
    texts = [f"word{i} thing{i}" for i in range(200)] + ["<start_of_text> a photo"]
    assert torch.equal(tok(texts), plain(texts))  # the same ids as the unbounded cache
    assert len(tok.cache) <= 50 + len(specials)
    assert all(tok.cache[k] == v for k, v in specials.items())


def test_building_the_model_does_not_claim_it_is_random(caplog):
    """open_clip's "initialized randomly" warning is dropped (trained weights follow the build);
    the root logger keeps no filter and passes other warnings."""
    import logging

    caplog.set_level(logging.WARNING)
    ClipModule()
    assert not [r for r in caplog.records if "randomly" in r.getMessage()], caplog.text
    assert not logging.getLogger().filters
    logging.warning("another warning")
    assert "another warning" in caplog.text


LIT = {"arch": "sightline-LiT-Lite1-64", "image_tower": "efficientnet_lite1"}


def test_a_locked_imagenet_tower_starts_from_the_backbone_and_never_moves(
    prepared_emoji, prepared_fashion, tmp_path
):
    from sightline.inference import load_module
    from sightline.models.backbone import input_config, load_backbone

    section = tiny_section("clip", upstream=prepared_fashion, model=LIT)
    info = train("clip", section, 0, prepared_emoji, tmp_path / "m", tmp_path / "run", None)
    assert info["global_steps"] > 0
    served = load_module(tmp_path / "m")
    # images are normalised as the backbone's ImageNet training did, at the config's side
    norm = served.preprocess_one.transforms[-1]
    assert list(norm.mean) == input_config("efficientnet_lite1")["mean"]
    assert list(norm.std) == input_config("efficientnet_lite1")["std"]
    assert served.preprocess([Image.new("RGB", (10, 300))]).shape == (1, 3, 64, 64)
    # the trained tower is the ImageNet network, BatchNorm statistics included: training moved
    # only the projection (and the text tower)
    backbone = load_backbone("efficientnet_lite1")
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(served.model.visual.trunk(x), backbone(x), atol=1e-4)
    assert not any(p.requires_grad for p in served.model.visual.trunk.parameters())
    fresh = ClipModule(**LIT)
    assert not torch.equal(
        served.model.visual.head.proj.weight, fresh.model.visual.head.proj.weight
    )


def test_a_locked_tower_runs_each_image_once_while_fitting_and_never_caches_served(
    prepared_emoji, prepared_fashion
):
    module = ClipModule(**LIT).eval()
    x = torch.randn(4, 3, 64, 64)
    plain = module.encode_images(x)
    calls = []
    module.model.visual.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    module.on_fit_start()
    batch = torch.cat([x, x[:2]])  # six inputs, four distinct
    first = module.encode_images(batch)
    again = module.encode_images(x[[3, 1]])
    assert calls == [4] and len(module._tower_cache) == 4  # once per distinct image
    # a repeated image reuses its cached tower output; only the head's matmul runs on it again,
    # and some CPUs' kernels round a row differently by its position in the batch
    assert torch.allclose(first[:4], plain, atol=1e-5)
    assert torch.allclose(first[4:], first[:2], rtol=0, atol=1e-6)
    assert torch.allclose(again, plain[[3, 1]], atol=1e-5)
    module.on_fit_end()
    module.encode_images(x)
    assert calls == [4, 4] and module._tower_cache is None


def test_an_image_tower_needs_a_config_built_on_it(prepared_emoji, prepared_fashion):
    with pytest.raises(ConfigError, match="image_tower: efficientnet_lite0 needs an open_clip"):
        build(prepared_emoji, prepared_fashion, image_tower="efficientnet_lite0")
    with pytest.raises(ConfigError, match="unknown backbone 'resnet'"):
        ClipModule(arch=LIT["arch"], image_tower="resnet")
