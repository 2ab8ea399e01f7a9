"""``make compare``: reports/leaderboard.md and reports/leaderboard.html.

One row per model from ``metrics/*.json`` (headline metrics, training time, parameter count, the
params that differ from the schema's defaults), then, per model, the DVC experiments of the
current commit (``dvc exp show --json``; ``--all-commits`` for every commit) ranked by that
model's selection metric, with its seed spread (``metrics/spread/<model>.json``, ``make spread``)
as ``±``. Not a DVC stage: experiments live in git refs, not in files a stage
could depend on.
"""

from __future__ import annotations

import json
from pathlib import Path

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument(
        "--all-commits", action="store_true", help="experiments of every commit, not only HEAD's"
    )
    p.add_argument(
        "--exp-json", help="read `dvc exp show --json` output from this file instead of running dvc"
    )
    p.add_argument("--out", default="reports", help="folder for leaderboard.md / leaderboard.html")
    args = p.parse_args()
    _, sections = common.load_all(args.params)

    import yaml

    from sightline.io import atomic_write_text
    from sightline.leaderboard import changed_params, html_page, markdown, parse_exp_show
    from sightline.registry import get_model
    from sightline.spread import load_spread, section_differs

    metrics = {}
    for name in sections:
        path = common.METRICS / f"{name}.json"
        if path.is_file():
            metrics[name] = json.loads(path.read_text())
    raw = yaml.safe_load(args.params.read_text())
    changed = {
        name: changed_params(raw["models"][name], get_model(name).params().model_dump(mode="json"))
        for name in sections
    }
    spreads = {name: load_spread(common.METRICS / "spread" / f"{name}.json") for name in sections}
    for name, spread in spreads.items():  # a spread of another recipe is named as such
        if spread is not None:
            spread["differs"] = section_differs(spread, sections[name])
    rows = common.exp_show_rows(args.exp_json, args.all_commits)
    experiments = parse_exp_show(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", markdown(metrics, changed, experiments, spreads))
    atomic_write_text(
        out / "leaderboard.html",
        html_page(metrics, changed, experiments, common.REPORTS, out, spreads),
    )
    print(
        f"wrote {out / 'leaderboard.md'} and {out / 'leaderboard.html'}: {len(metrics)} models, {len(experiments)} commits and experiments"
    )


if __name__ == "__main__":
    common.run(main)
