"""Re-train one model from scratch (same params, same seed) in a scratch directory, evaluate it,
and compare the metrics with the committed ``metrics/<model>.json``; exit 1 on any difference.

The workspace is not touched. Wall-clock keys (``train_time_s``) are ignored; every other
value must match exactly: on the CPU the computation is deterministic
(``trainer.deterministic: true``, seeded shuffling and augmentation).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import common


def main() -> None:
    def options(p) -> None:
        p.add_argument(
            "--metrics", type=Path, help="committed metrics (default metrics/<model>.json)"
        )

    args, params, section = common.model_stage(__doc__.splitlines()[0], options)

    from sightline.errors import SightlineError
    from sightline.evaluation import compare_metrics, evaluate
    from sightline.training import train

    committed_path = args.metrics or common.METRICS / f"{args.model}.json"
    try:
        committed = json.loads(Path(committed_path).read_text())
    except FileNotFoundError:
        raise SightlineError(f"{committed_path}: no committed metrics to compare with") from None
    data_dir = common.PREPARED / section.data.dataset
    with tempfile.TemporaryDirectory(prefix=f"sightline-recheck-{args.model}-") as tmp:
        tmp = Path(tmp)
        info = train(args.model, section, params.seed, data_dir, tmp / "model", tmp / "run", None)
        if info is None:  # a non-zero DDP rank
            return
        metrics = evaluate(
            args.model, section, params.seed, tmp / "model", data_dir, tmp / "reports"
        )
    diffs = compare_metrics(committed, metrics)
    if diffs:
        print(
            f"NOT reproduced: {len(diffs)} metric(s) differ from {committed_path}", file=sys.stderr
        )
        for d in diffs:
            print(f"  {d}", file=sys.stderr)
        sys.exit(1)
    print(f"reproduced: every metric in {committed_path} matches exactly (train_time_s ignored)")


if __name__ == "__main__":
    common.run(main)
