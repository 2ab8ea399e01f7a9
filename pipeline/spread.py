"""``make spread MODEL=<name> SEEDS=3``: how much a model's metrics move with the training seed.

Trains and evaluates ``models.<name>`` of ``params.yaml`` once per seed (the params' ``seed``,
then the next ones), on the same prepared data, in ``runs/spread/<name>/seed-<n>/``, and writes
``metrics/spread/<name>.json``: for every numeric metric its mean, sample standard deviation and
per-seed values, with the params section they were measured with. Commit it with the experiment:
``make compare`` shows the selection metric's spread as ``±``, and ``make promote`` refuses an
experiment whose gain over the served model is inside it (``FORCE=1`` to promote anyway).

Each run is bit-exact on one kind of CPU, yet a different seed (or a different CPU's
floating-point kernels) moves FID by several percent: one run per experiment cannot tell such a
change from a real one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import common

SPREAD = common.METRICS / "spread"
WORK = common.RUNS / "spread"


def main() -> None:
    p = common.parser(__doc__.splitlines()[0])
    p.add_argument("model", help="a model name, e.g. classifier")
    p.add_argument("--seeds", type=int, default=3, help="training runs, one seed each (>= 2)")
    p.add_argument("--out", type=Path, default=SPREAD, help="folder for <model>.json")
    args = p.parse_args()

    from sightline.errors import ConfigError, InputError
    from sightline.evaluation import evaluate
    from sightline.io import atomic_write_text
    from sightline.registry import list_models
    from sightline.spread import spread_summary
    from sightline.training import train

    if args.model not in list_models():
        raise InputError(f"unknown model {args.model!r} (known: {', '.join(list_models())})")
    if args.seeds < 2:
        raise ConfigError(f"--seeds {args.seeds}: a spread needs at least 2 runs")
    params, sections = common.load_all(args.params)
    section = sections[args.model]
    data_dir = common.PREPARED / section.data.dataset
    seeds = [params.seed + i for i in range(args.seeds)]
    runs = []
    for i, seed in enumerate(seeds, 1):
        print(f"spread: {args.model}, seed {seed} ({i}/{len(seeds)}) ...", flush=True)
        work = WORK / args.model / f"seed-{seed}"
        shutil.rmtree(work, ignore_errors=True)
        start = time.monotonic()
        train(args.model, section, seed, data_dir, work / "model", work / "run", None)
        metrics = evaluate(args.model, section, seed, work / "model", data_dir, work / "reports")
        runs.append(metrics)
        print(
            f"spread: {args.model}, seed {seed}: "
            + ", ".join(f"{k} {metrics.get(k)}" for k in _shown(args.model))
            + f" ({time.monotonic() - start:.0f} s)",
            flush=True,
        )
    result = {
        "model": args.model,
        "seeds": seeds,
        "section": section.model_dump(mode="json"),
        "metrics": spread_summary(runs),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.model}.json"
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    key = _shown(args.model)[0]
    s = result["metrics"].get(key, {})
    print(
        f"spread: {args.model} {key} {s.get('mean')} ± {s.get('std')} over {len(seeds)} seeds -> {path}"
    )


def _shown(model: str) -> tuple[str, str]:
    from sightline.registry import get_evaluation

    evaluation = get_evaluation(model)
    return evaluation.selection[0], evaluation.test


if __name__ == "__main__":
    common.run(main)
