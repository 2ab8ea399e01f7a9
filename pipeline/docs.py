"""Tables of results in README.md and docs/, written from metrics/*.json.

A page holds a block per table, between ``<!-- results: NAME -->`` and ``<!-- /results -->``:
NAME is a model (its selection and headline metrics) or ``all`` (one row per model). This
script writes every block from the metrics files; ``--check`` only reports the blocks that
differ (exit 1), which the tests run, so no page can disagree with its metrics file. The
MkDocs hook (``docs/hooks.py``) writes the same blocks when the site is built.

    python pipeline/docs.py          # rewrite the blocks
    python pipeline/docs.py --check  # exit 1 if a block differs from the metrics
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from sightline.leaderboard import results_table, summary_table

REPO = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- results: ([\w-]+) -->\n)(.*?)(<!-- /results -->)", re.S)


def load_metrics(root: Path = REPO) -> dict[str, dict]:
    """``{model: metrics}`` of every ``metrics/<model>.json``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "metrics").glob("*.json"))}


def table(name: str, metrics: dict[str, dict]) -> str:
    if name == "all":
        return summary_table(metrics)
    if name not in metrics:
        raise SystemExit(f"results block {name!r}: no metrics/{name}.json")
    return results_table(name, metrics[name])


def render(text: str, metrics: dict[str, dict]) -> str:
    """``text`` with every results block written from ``metrics``."""
    return BLOCK.sub(lambda m: m[1] + table(m[2], metrics) + "\n" + m[4], text)


def pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").rglob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report differences, change nothing")
    args = parser.parse_args(argv)
    metrics = load_metrics()
    stale = []
    for page in pages():
        text = page.read_text()
        new = render(text, metrics)
        if new != text:
            stale.append(page.relative_to(REPO))
            if not args.check:
                page.write_text(new)
    verb = "differ from metrics/*.json" if args.check else "rewritten"
    for page in stale:
        print(f"{page}: results {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
