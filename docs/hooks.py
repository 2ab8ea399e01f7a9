"""MkDocs hooks: every ``<!-- results: NAME -->`` and ``<!-- pictures: NAME -->`` block of a
page is written from ``metrics/*.json`` and ``reports/`` when the site is built
(``pipeline/docs.py``), and the report pictures are part of the site."""

from __future__ import annotations

import sys
from pathlib import Path

from mkdocs.structure.files import File

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "pipeline"))

from docs import load_metrics, render  # noqa: E402


def on_files(files, config):
    """``reports/<name>/*.png`` (and ``reports/curves/<name>/*.png``) join the site at the
    same paths."""
    for png in sorted([*(REPO / "reports").glob("*/*.png"), *(REPO / "reports").glob("*/*/*.png")]):
        rel = png.relative_to(REPO).as_posix()
        files.append(File(rel, str(REPO), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    # a page in docs/models/ links a report as ../../reports/... (right in the repository);
    # in the site the reports sit beside the pages, one level up
    text = render(markdown, load_metrics(REPO), REPO)
    return text.replace("](../../reports/", "](../reports/")
