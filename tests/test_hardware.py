"""``precision: auto``: bf16 mixed precision only where the device computes bf16 natively."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_section

from sightline.artifacts import TRAIN_INFO_FILE
from sightline.hardware import accelerator_device, native_bf16, resolve_precision


@pytest.fixture
def cpu_with(monkeypatch):
    """Make the CPU report the given instruction sets, and nothing else."""

    def report(*flags: str) -> None:
        monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: dict.fromkeys(flags, True))

    return report


def test_auto_is_bf16_only_on_a_cpu_that_runs_it_natively(cpu_with):
    cpu_with("avx2", "avx512_f")  # AVX-512 alone emulates bf16: slower than float32
    assert not native_bf16("cpu") and resolve_precision("auto", "cpu") == "32-true"
    for flag in ("avx512_bf16", "amx_bf16"):
        cpu_with("avx2", flag)
        assert native_bf16("cpu") and resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("auto", "meta") == "32-true"  # any other device: float32


def test_an_explicit_precision_is_kept_whatever_the_device(cpu_with):
    cpu_with("avx2")
    for value in ("bf16-mixed", "32-true", "16-mixed"):
        assert resolve_precision(value, "cpu") == value


def test_the_accelerator_setting_decides_the_device():
    assert accelerator_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert accelerator_device("auto").type == expected


def test_training_resolves_auto_and_records_what_it_used(prepared_fashion, tmp_path, cpu_with):
    from sightline.training import train

    cpu_with("avx2")
    section = tiny_section("classifier", precision="auto", limit_train_batches=2)
    info = train("classifier", section, 0, prepared_fashion, tmp_path / "m", tmp_path / "r", None)
    assert info["precision"] == "32-true"
    saved = json.loads((tmp_path / "m" / TRAIN_INFO_FILE).read_text())
    assert saved["precision"] == "32-true"


def test_the_features_stage_records_the_precision_the_served_model_repeats(
    prepared_cifar, tmp_path, cpu_with
):
    """The cached features and the served backbone must run alike: the stage writes the
    precision ``auto`` resolved to, and the transfer model reads it from there."""
    from conftest import TINY_FEATURES

    from sightline.models.transfer import FeaturesConfig, extract_features

    cpu_with("avx2")
    cfg = FeaturesConfig(**{**TINY_FEATURES, "train_per_class": 1, "precision": "auto"})
    meta = extract_features(prepared_cifar, tmp_path / "f", cfg, 0, torch.device("cpu"))
    assert meta["precision"] == "32-true"
    assert json.loads((tmp_path / "f" / "meta.json").read_text())["precision"] == "32-true"


def test_a_bf16_transfer_model_is_served_in_float32_where_bf16_is_emulated(
    cifar_features, prepared_cifar, cpu_with
):
    """Features cached in bf16 (on a machine that has it) and a serving CPU without it: the
    backbone runs in float32 there, which gives what an explicit float32 pass gives."""
    from conftest import tiny_section

    from sightline.registry import get_model

    section = tiny_section("transfer", upstream=cifar_features)
    spec = get_model("transfer")
    dm = spec.datamodule(section, prepared_cifar, 0)
    module = spec.module(**{**spec.module_kwargs(section, dm), "precision": "bf16-mixed"}).eval()
    x = module.preprocess.normalize(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with torch.no_grad(), module.full_precision():
        float32 = module.features(x)
    cpu_with("avx2", "avx512_bf16")
    assert module.for_device("cpu") == "bf16-mixed"  # native: kept, as the cache was made
    cpu_with("avx2")
    assert module.for_device("cpu") == "32-true"
    with torch.no_grad():
        assert torch.equal(module.features(x), float32)
