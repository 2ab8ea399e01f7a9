"""The documentation: a short README, a page per model, and figures that equal their metrics
files (the tables are written from ``metrics/*.json`` by ``pipeline/docs.py``)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipeline"))

import docs  # noqa: E402  (pipeline/docs.py)


def test_every_results_block_equals_its_metrics_file():
    metrics = docs.load_metrics(REPO)
    stale = [
        p.name for p in docs.pages(REPO) if docs.render(p.read_text(), metrics) != p.read_text()
    ]
    assert not stale, f"run python pipeline/docs.py: {stale} differ from metrics/*.json"


def test_a_changed_metric_makes_its_page_stale(tmp_path):
    """The check can fail: a metrics file that moves leaves its page's table behind."""
    for name in ("README.md", "metrics", "docs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    path = tmp_path / "metrics" / "classifier.json"
    m = json.loads(path.read_text())
    m["test/acc"] = 0.5
    path.write_text(json.dumps(m))
    metrics = docs.load_metrics(tmp_path)
    page = tmp_path / "docs" / "models" / "classifier.md"
    rendered = docs.render(page.read_text(), metrics)
    assert rendered != page.read_text() and "0.5000" in rendered


def test_the_spread_table_is_written_from_the_spread_files(tmp_path):
    spread = tmp_path / "metrics" / "spread"
    spread.mkdir(parents=True)
    values = {"val/acc": {"mean": 0.9412, "std": 0.0021}, "test/acc": {"mean": 0.94, "std": 0.003}}
    (spread / "classifier.json").write_text(
        json.dumps({"model": "classifier", "seeds": [42, 43], "metrics": values})
    )
    rows = docs.spread_table(tmp_path).splitlines()
    assert len(rows) == 3  # the heading, its rule, one model
    assert rows[2] == (
        "| `classifier` | 42, 43 | `val/acc` (max) | 0.9412 ± 0.0021 | `test/acc` "
        "| 0.94 ± 0.003 | 0.0042 |"
    )


def test_each_registered_model_has_its_page_with_its_results():
    from sightline.registry import list_models

    for name in list_models():
        page = REPO / "docs" / "models" / f"{name}.md"
        assert page.is_file(), f"docs/models/{name}.md is missing"
        assert f"<!-- results: {name} -->" in page.read_text(), name
    assert "<!-- results: all -->" in (REPO / "README.md").read_text()


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text().splitlines()) <= 200


NUMBER = re.compile(r"-?\d[\d,]*\.?\d*")


def _outside_blocks(text: str) -> str:
    return docs.BLOCK.sub("", text)


@pytest.mark.parametrize("page", docs.pages(REPO), ids=lambda p: str(p.relative_to(REPO)))
def test_a_figure_quoted_beside_its_metric_key_equals_the_metrics_file(page):
    """Prose that names a metric key of the default run (```test/acc` 0.943``) and gives a
    figure on the same line gives that file's figure, to the digits it shows."""
    metrics = docs.load_metrics(REPO)
    text = _outside_blocks(page.read_text())
    for line in text.splitlines():
        for name, m in metrics.items():
            if f"metrics/{name}.json" not in text and f"models/{name}" not in str(page):
                continue
            for key, value in m.items():
                if not isinstance(value, float) or f"`{key}`" not in line:
                    continue
                after = line.split(f"`{key}`", 1)[1]
                found = NUMBER.search(after.split("`", 1)[0])
                if not found or "." not in found[0]:
                    continue
                shown = found[0].replace(",", "")
                digits = len(shown.split(".")[1])
                assert round(value, digits) == pytest.approx(float(shown)), (
                    f"{page.name}: `{key}` {shown} but metrics/{name}.json has {value}"
                )
