"""The peer benchmark (benchmarks/peers.py): each reference model trains for its time and is
scored by the project's own evaluation; a wrong model name is a one-line error."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import REPO, run_cli, tiny_section

from sightline.registry import get_model

spec = importlib.util.spec_from_file_location("peers", REPO / "benchmarks/peers.py")
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)


def _vae_loss(peer, x) -> float:
    torch.manual_seed(0)
    with torch.no_grad():
        return float(peer.loss(x / 255.0))


@pytest.mark.parametrize("name", ["vae", "gan"])
def test_a_peer_trains_for_its_time_and_gets_every_score(name, prepared_fashion, tiny_classifier):
    section = tiny_section(name, upstream=tiny_classifier)
    dm = get_model(name).datamodule(section, prepared_fashion, 0)
    images = dm.split("train").tensors[0]
    torch.manual_seed(0)
    peer = (
        peers.ExamplesVAE(images.shape[1:])
        if name == "vae"
        else peers.LightningExampleGAN(images.shape[1:])
    )
    before = _vae_loss(peer, images[:64].float()) if name == "vae" else None
    took, epochs, steps = peers.train_for(peer, images, 16, 1.0, name)
    assert took >= 1.0 and steps > 0 and epochs == pytest.approx(steps * 16 / len(images), abs=0.01)
    scores = peers.evaluate_peer(name, peer, section, dm, 0)
    for key in peers.ROWS[name]:
        assert isinstance(scores[key], float), key
    assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
    if name == "vae":
        assert _vae_loss(peer, images[:64].float()) < before  # it learned
        assert scores["floor/nelbo"] < scores["test/iwae_nll"] < scores["test/iwae_nelbo"]
    scores |= {"train_time_s": took, "epochs": epochs}
    entry = {"rows": list(peers.ROWS[name]), "lower_is_better": ["fid"], "peer": scores}
    entry["floor"] = peers.floors(name, scores)
    shown = peers.peer_table(name, {"fid": 1.5}, entry)
    assert (
        f"| {name} | ours | peer | floor |" in shown and "| fid (lower is better) | 1.5 |" in shown
    )


def test_an_unknown_peer_is_a_one_line_error(repo_copy):
    bad = run_cli(["python", str(REPO / "benchmarks/peers.py"), "--models", "clip"], repo_copy)
    assert bad.returncode != 0 and "--models: no peer for clip" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
