"""Tables of results in README.md and docs/, written from metrics/*.json.

A page holds a block per table, between ``<!-- results: NAME -->`` and ``<!-- /results -->``:
NAME is a model (its selection and headline metrics) or ``all`` (one row per model); and a
block of pictures, ``<!-- pictures: NAME -->`` ... ``<!-- /pictures -->``: the model's
``reports/NAME/*.png``, its key pictures first; and ``<!-- params: NAME -->``: the model's
``models.NAME`` section of ``params.yaml``; ``<!-- curve: NAME -->``: the table of
``reports/curves/NAME/learning_curve.json`` (``make curve``); ``<!-- peers: NAME -->``: the
model beside its reference peer (``reports/bench/peers.json``, ``make bench-peers``);
``<!-- spread: all -->``: the seed spread of every model in ``metrics/spread/`` (``make
spread``). A figure typed in prose or a hand-made table is followed by a comment naming its source,
``0.9788<!-- spam:test/f1 -->`` (a nested value: ``real_floor/fid``): the figure is written
again from the metrics file, to the digits it shows. This script writes every block and figure; ``--check`` only reports the blocks that
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
BLOCK = re.compile(
    r"(<!-- (results|pictures|params|curve|peers|spread): ([\w-]+) -->\n)(.*?)(<!-- /\2 -->)",
    re.S,
)


def load_metrics(root: Path = REPO) -> dict[str, dict]:
    """``{model: metrics}`` of every ``metrics/<model>.json``."""
    return {p.stem: json.loads(p.read_text()) for p in sorted((root / "metrics").glob("*.json"))}


def table(name: str, metrics: dict[str, dict]) -> str:
    if name == "all":
        return summary_table(metrics)
    if name not in metrics:
        raise SystemExit(f"results block {name!r}: no metrics/{name}.json")
    return results_table(name, metrics[name])


def pictures(name: str, root: Path = REPO) -> str:
    """Markdown images of ``reports/<name>/*.png`` (key pictures first), linked from a page in
    ``docs/models/``."""
    from sightline.registry import get_evaluation

    key = list(get_evaluation(name).pictures)
    found = sorted(p.name for p in (root / "reports" / name).glob("*.png"))
    order = [k for k in key if k in found] + [f for f in found if f not in key]
    return "\n\n".join(
        f"![{Path(f).stem.replace('_', ' ')}](../../reports/{name}/{f})" for f in order
    )


FIGURE = re.compile(r"(-?[\d,]*\d\.?\d*)(\**)<!-- ([\w-]+):([^\s>]+) -->")


def lookup(metrics: dict, key: str):
    """``metrics[key]``, or a nested value: ``real_floor/fid`` is ``metrics["real_floor"]["fid"]``
    and ``test/confusion/1/0`` a matrix's cell (keys may hold ``/`` themselves: ``test/acc``)."""
    if isinstance(metrics, list):  # a matrix: test/confusion/1/0
        head, _, rest = key.partition("/")
        if not head.isdigit() or int(head) >= len(metrics):
            raise KeyError(key)
        return lookup(metrics[int(head)], rest) if rest else metrics[int(head)]
    if key in metrics:
        return metrics[key]
    for i, ch in enumerate(key):
        if ch == "/" and isinstance(metrics.get(key[:i]), dict | list):
            return lookup(metrics[key[:i]], key[i + 1 :])
    raise KeyError(key)


def figure(shown: str, value) -> str:
    """``value`` written as ``shown`` is: the same decimals, thousands separators if it has
    them."""
    digits = len(shown.split(".")[1]) if "." in shown else 0
    return f"{value:,.{digits}f}" if "," in shown else f"{value:.{digits}f}"


def params_section(name: str, root: Path = REPO) -> str:
    """The ``models.<name>`` section of ``params.yaml`` as a YAML code block."""
    import yaml

    section = yaml.safe_load((root / "params.yaml").read_text())["models"][name]
    dumped = yaml.safe_dump({"models": {name: section}}, sort_keys=False, width=96)
    return f"```yaml\n{dumped}```"


CURVE_METHODS = {"scratch": "from scratch", "frozen": "frozen + head", "finetune": "fine-tuned"}


def curve_table(name: str, root: Path = REPO) -> str:
    """Test (validation) accuracy and training seconds per labelled images per class, from
    ``reports/curves/<name>/learning_curve.json``; a point not run is a dash."""
    path = root / "reports" / "curves" / name / "learning_curve.json"
    if not path.is_file():
        raise SystemExit(f"curve block {name!r}: no {path.relative_to(root)} (make curve)")
    rows = json.loads(path.read_text())
    backbones = sorted({r["backbone"] for r in rows if "backbone" in r})
    names = dict(CURVE_METHODS)
    for m in ("frozen", "finetune"):  # the backbone the transfer points were measured with
        names[m] += f" ({', '.join(backbones)})" if backbones else ""
    optimizers = sorted({r["scratch_optimizer"] for r in rows if "scratch_optimizer" in r})
    names["scratch"] += f" ({', '.join(optimizers)})" if optimizers else ""
    head = "| per class | images | " + " | ".join(names.values()) + " |"
    lines = [head, "|" + "---|" * (2 + len(CURVE_METHODS))]
    for r in rows:
        cells = [
            f"{r[m]:.4f} ({r[f'{m}_val']:.4f}), {r[f'{m}_s']:,.0f} s" if m in r else "-"
            for m in CURVE_METHODS
        ]
        lines.append(f"| {r['per_class']:,} | {r['images']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _score(v) -> str:
    return "-" if v is None else f"{v:.2f}" if abs(v) >= 10 else f"{v:.4g}"


def peer_table(name: str, ours: dict, entry: dict) -> str:
    """Ours (``metrics/<name>.json``), the peer's and the floor, one row per score of ``entry``
    (a model's part of ``reports/bench/peers.json``)."""
    peer, floor = entry["peer"], entry["floor"]
    lines = [f"| {name} | ours | peer | floor |", "|---|---|---|---|"]
    for key in entry["rows"]:
        better = "lower" if key in entry["lower_is_better"] else "higher"
        cells = [ours.get(key), peer.get(key), floor.get(key)]
        shown = " | ".join(_score(v) for v in cells)
        lines.append(f"| {key} ({better} is better) | {shown} |")
    lines.append(
        f"| training, s | {ours.get('train_time_s', '-')} | {peer['train_time_s']} "
        f"({peer['epochs']} epochs) | |"
    )
    return "\n".join(lines)


def peers_block(name: str, metrics: dict[str, dict], root: Path = REPO) -> str:
    path = root / "reports" / "bench" / "peers.json"
    report = json.loads(path.read_text()) if path.is_file() else {}
    if name not in report:
        raise SystemExit(
            f"peers block {name!r}: not in {path.relative_to(root)} (make bench-peers)"
        )
    return peer_table(name, metrics.get(name, {}), report[name])


def spread_table(root: Path = REPO) -> str:
    """Per model with a ``metrics/spread/<model>.json``: its seeds, and the mean ± sample
    standard deviation of its selection and test metrics over them."""
    from sightline.registry import get_evaluation
    from sightline.spread import SPREAD_FACTOR

    lines = [
        "| model | seeds | selection metric | mean ± std | test metric | mean ± std "
        "| a promotion needs a gain over |",
        "|---|---|---|---|---|---|---|",
    ]
    for path in sorted((root / "metrics" / "spread").glob("*.json")):
        spread = json.loads(path.read_text())
        model, values = spread["model"], spread["metrics"]
        ev = get_evaluation(model)
        sel, test = values[ev.selection[0]], values[ev.test]
        lines.append(
            f"| `{model}` | {', '.join(map(str, spread['seeds']))} | `{ev.selection[0]}` "
            f"({ev.selection[1]}) | {_score(sel['mean'])} ± {_score(sel['std'])} | `{ev.test}` "
            f"| {_score(test['mean'])} ± {_score(test['std'])} "
            f"| {_score(SPREAD_FACTOR * sel['std'])} |"
        )
    return "\n".join(lines)


def render(text: str, metrics: dict[str, dict], root: Path = REPO) -> str:
    """``text`` with every results and pictures block written from ``metrics`` and
    ``reports/``, and every annotated figure from its metrics file."""

    def block(m: re.Match) -> str:
        kind, name = m[2], m[3]
        if kind == "results":
            body = table(name, metrics)
        elif kind == "pictures":
            body = pictures(name, root)
        elif kind == "curve":
            body = curve_table(name, root)
        elif kind == "peers":
            body = peers_block(name, metrics, root)
        elif kind == "spread":
            body = spread_table(root)
        else:
            body = params_section(name, root)
        return m[1] + body + "\n" + m[5]

    def one(m: re.Match) -> str:
        model, key = m[3], m[4]
        try:
            value = lookup(metrics[model], key)
        except KeyError:
            raise SystemExit(f"figure <!-- {model}:{key} -->: no such metric") from None
        return figure(m[1], value) + m[2] + f"<!-- {model}:{key} -->"

    return FIGURE.sub(one, BLOCK.sub(block, text))


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
