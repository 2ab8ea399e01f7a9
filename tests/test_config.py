"""params.yaml -> typed config: unknown keys and wrong types fail with the key's name."""

from __future__ import annotations

import inspect

import lightning as L
import pytest
import yaml
from conftest import REPO

from sightline.config import TrainerConfig
from sightline.errors import ConfigError
from sightline.params import load_params, load_section, parse_params
from sightline.registry import get_model, list_models


def raw_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_parse():
    params, sections = load_params(REPO / "params.yaml")
    assert params.seed == 42
    assert set(sections) == set(params.models)
    assert sections["classifier"].data.dataset == "fashion_mnist"


def test_unknown_key_is_named():
    raw = raw_params()
    raw["models"]["classifier"]["model"]["widht"] = 3
    with pytest.raises(ConfigError, match=r"models\.classifier\.model\.widht: unknown key"):
        parse_params(raw)


def test_unknown_top_level_key_is_named():
    raw = raw_params()
    raw["sed"] = 1
    with pytest.raises(ConfigError, match=r"sed: unknown key"):
        parse_params(raw)


def test_wrong_type_is_named():
    raw = raw_params()
    raw["models"]["classifier"]["trainer"]["max_epochs"] = "ten"
    with pytest.raises(ConfigError, match=r"models\.classifier\.trainer\.max_epochs: .*'ten'"):
        parse_params(raw)


def test_bad_choice_is_named():
    raw = raw_params()
    raw["models"]["classifier"]["data"]["dataset"] = "mnist"
    with pytest.raises(ConfigError, match=r"models\.classifier\.data\.dataset"):
        parse_params(raw)


def test_unknown_model_is_named():
    raw = raw_params()
    raw["models"]["clasifier"] = raw["models"]["classifier"]
    with pytest.raises(ConfigError, match=r"models\.clasifier: unknown model"):
        parse_params(raw)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


@pytest.mark.parametrize("name", list_models())
def test_every_model_key_is_a_constructor_argument(name):
    spec = get_model(name)
    section = load_params(REPO / "params.yaml")[1][name]
    accepted = set(inspect.signature(spec.module.__init__).parameters) - {"self"}
    assert set(section.model.model_dump()) <= accepted


def test_every_trainer_key_is_a_trainer_argument():
    accepted = set(inspect.signature(L.Trainer.__init__).parameters)
    assert set(TrainerConfig.model_fields) <= accepted


def test_registry_rejects_duplicates_and_unknown_names():
    assert list_models() == ["classifier", "clip", "gan", "spam", "transfer", "vae"]
    for name in list_models():
        assert get_model(name).name == name
    with pytest.raises(ConfigError, match="unknown model 'nope'"):
        get_model("nope")


def test_a_stage_reads_its_own_section_only(tmp_path):
    raw = raw_params()
    raw["models"]["vae"]["model"]["widht"] = 3  # a typo in another model's section
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    params, section = load_section(path, "classifier")
    assert params.seed == 42 and section.data.dataset == "fashion_mnist"
    with pytest.raises(ConfigError, match=r"models\.vae\.model\.widht: unknown key"):
        load_section(path, "vae")
    with pytest.raises(ConfigError, match=r"models\.vae\.model\.widht: unknown key"):
        load_params(path)  # the whole file: every section


def test_blocks_per_stage_must_fit_channels():
    raw = raw_params()
    raw["models"]["classifier"]["model"].update(channels=[8, 16], blocks_per_stage=[1, 2, 3])
    with pytest.raises(ConfigError, match=r"models\.classifier\.model.*blocks_per_stage"):
        parse_params(raw)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (
            lambda s: s["space"].update({"model.lrr": {"low": 0.1, "high": 0.2}}),
            r"sweeps\.classifier\.space\.model\.lrr: models\.classifier has no key model\.lrr",
        ),
        (
            lambda s: s["space"].update({"model.dropout": {"low": 0.5, "high": 1.5}}),
            r"sweeps\.classifier\.space\.model\.dropout: 1\.5 is not a valid value",
        ),
        (
            lambda s: s["space"].update({"data.batch_size": {"choices": [128, "big"]}}),
            r"sweeps\.classifier\.space\.data\.batch_size: 'big' is not a valid value",
        ),
        (
            lambda s: s["fixed"].update({"trainer.max_epochs": 0.5}),
            r"sweeps\.classifier\.fixed\.trainer\.max_epochs: 0\.5 is not a valid value",
        ),
        (
            lambda s: s["space"].update({"model.lr": {"low": 0.1, "high": 0.01}}),
            r"sweeps\.classifier\.space\.model\.lr.*low 0\.1 must be below high 0\.01",
        ),
        (
            lambda s: s["space"].update({"model.lr": {"low": 0.0, "high": 0.1, "log": True}}),
            r"log: true needs low > 0",
        ),
        (lambda s: s.update(pruner="median"), r"sweeps\.classifier\.pruner: unknown key"),
    ],
)
def test_bad_sweep_space_is_named(edit, needle):
    raw = raw_params()
    edit(raw["sweeps"]["classifier"])
    with pytest.raises(ConfigError, match=needle):
        parse_params(raw)


def test_sweep_of_a_missing_model_is_named():
    raw = raw_params()
    raw["sweeps"]["nosuch"] = raw["sweeps"]["classifier"]
    with pytest.raises(ConfigError, match=r"sweeps\.nosuch: no models\.nosuch section"):
        parse_params(raw)


def test_a_stage_does_not_read_the_sweeps():
    """A model's stages parse their own section only: a sweep space they cannot satisfy is
    ``make sweep``'s error, not theirs."""
    raw = raw_params()
    raw["sweeps"]["classifier"]["space"]["model.lrr"] = {"low": 0.1, "high": 0.2}
    from sightline.params import parse_section

    _, section = parse_section(raw, "classifier")
    assert section.model.lr == raw["models"]["classifier"]["model"]["lr"]
