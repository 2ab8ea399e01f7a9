"""``make compare``: reports/leaderboard.md and reports/leaderboard.html.

One row per model from ``metrics/*.json`` (headline metrics, training time, parameter count, the
params that differ from the schema's defaults), then, per model, the DVC experiments of the
current commit (``dvc exp show --json``; ``--all-commits`` for every commit) ranked by that
model's selection metric. Not a DVC stage: experiments live in git refs, not in files a stage
could depend on.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")  # fmt: skip
    p.add_argument("--exp-json", help="read `dvc exp show --json` output from this file instead of running dvc")  # fmt: skip
    p.add_argument("--out", default="reports", help="folder for leaderboard.md / leaderboard.html")
    args = p.parse_args()
    _, sections = common.load(args.params)

    import yaml

    from sightline.errors import DataError
    from sightline.io import atomic_write_text
    from sightline.leaderboard import changed_params, html_page, markdown, parse_exp_show
    from sightline.registry import get_model

    metrics = {}
    for name in sections:
        path = common.METRICS / f"{name}.json"
        if path.is_file():
            metrics[name] = json.loads(path.read_text())
    raw = yaml.safe_load(args.params.read_text())
    changed = {name: changed_params(raw["models"][name], get_model(name).params().model_dump(mode="json")) for name in sections}  # fmt: skip
    if args.exp_json:
        try:
            rows = json.loads(Path(args.exp_json).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(
                f"{args.exp_json}: not readable `dvc exp show --json` output ({err})"
            ) from None
    else:
        cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if args.all_commits else [])]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise DataError(f"`{' '.join(cmd)}` failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")  # fmt: skip
        rows = json.loads(result.stdout or "[]")
    experiments = parse_exp_show(rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "leaderboard.md", markdown(metrics, changed, experiments))
    atomic_write_text(out / "leaderboard.html", html_page(metrics, changed, experiments, common.REPORTS, out))  # fmt: skip
    print(f"wrote {out / 'leaderboard.md'} and {out / 'leaderboard.html'}: {len(metrics)} models, {len(experiments)} commits and experiments")  # fmt: skip


if __name__ == "__main__":
    common.run(main)
