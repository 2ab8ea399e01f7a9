"""Real-data checks (minutes each): `make test-slow`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not FASHION.exists(), reason="dataset-fashion-mnist not installed")
@pytest.mark.parametrize("name", ["classifier", "vae", "gan"])
def test_rerun_matches_committed_metrics(name):
    """Same params + seed on the CPU -> identical metrics/<name>.json (time excluded).

    The generative models are scored with the committed ``models/classifier``.
    """
    if not (REPO / "data/prepared/fashion_mnist/meta.json").exists():
        assert run_cli(["dvc", "repro", "prepare@fashion_mnist"], REPO).returncode == 0
    if name != "classifier" and not (REPO / "models/classifier/model.safetensors").exists():
        assert run_cli(["dvc", "repro", "train@classifier"], REPO, timeout=1800).returncode == 0
    result = run_cli(["python", "pipeline/check_reproducible.py", name], REPO, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
