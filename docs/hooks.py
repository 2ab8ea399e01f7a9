"""MkDocs hook: every ``<!-- results: NAME -->`` block of a page is written from
``metrics/*.json`` when the site is built (``pipeline/docs.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipeline"))

from docs import load_metrics, render  # noqa: E402


def on_page_markdown(markdown, page, config, files):
    return render(markdown, load_metrics(REPO))
