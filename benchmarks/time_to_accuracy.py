"""Time to accuracy: each model's recipe in ``params.yaml`` beside a previous one, in one run.

For every model named, trains the previous recipe (``params.yaml`` as it was at ``--baseline``, a
git revision; default ``HEAD``) and then the current one, on the same prepared data and the same
machine, one after the other. During each, a callback records the wall time since the fit began
and the model's selection metric (its validation figure, ``EVALUATION.selection``) after every
validation. The target is the best value the previous recipe reached (or ``--target``). For each
recipe it prints the time to first reach the target, its whole training time and the final test
figure of the exported checkpoint, then the ratio current / previous. A recipe change made in code
needs a params switch to be compared here: both runs use the current code. ``--profile`` sets a
params profile on both (the previous recipe takes the profile file as it was at ``--baseline``),
``--set`` dotted values on both.

    make bench-tta                                    # every model, against HEAD's params
    python benchmarks/time_to_accuracy.py --models classifier --baseline HEAD~3
    python benchmarks/time_to_accuracy.py --models classifier --profile params/cifar10.yaml \
        --set models.classifier.attack.n=0            # the CIFAR-10 profile, without the attacks
    python benchmarks/time_to_accuracy.py --tiny      # one short epoch each: the plumbing, for CI

Writes ``reports/bench/time_to_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
import common  # noqa: E402

WORK = common.RUNS / "bench-tta"
TINY = {"max_epochs": 1, "limit_train_batches": 4, "limit_val_batches": 2}


class Clock(L.Callback):
    """``(seconds since the fit began, value of key)`` after every validation (sanity check
    excluded)."""

    def __init__(self, key: str) -> None:
        self.key, self.points, self.start = key, [], 0.0

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = time.monotonic()

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.key not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.key])
        self.points.append((round(time.monotonic() - self.start, 1), value))


def reached(points: list[tuple[float, float]], target: float, mode: str) -> float | None:
    """The first time a value is at least as good as ``target``; ``None`` if never."""
    for t, v in points:
        if (v >= target) if mode == "max" else (v <= target):
            return t
    return None


def baseline_params(rev: str) -> dict:
    """``params.yaml`` at git revision ``rev``, parsed."""
    import yaml

    from sightline.errors import InputError

    result = subprocess.run(
        ["git", "show", f"{rev}:params.yaml"], capture_output=True, text=True, cwd=common.ROOT
    )
    if result.returncode != 0:
        raise InputError(f"--baseline {rev}: {result.stderr.strip().splitlines()[-1]}")
    return yaml.safe_load(result.stdout)


def baseline_profile(rev: str, path: Path) -> dict:
    """The profile file ``path`` at git revision ``rev``, parsed."""
    import yaml

    from sightline.errors import InputError

    rel = path.resolve().relative_to(common.ROOT)
    result = subprocess.run(
        ["git", "show", f"{rev}:{rel}"], capture_output=True, text=True, cwd=common.ROOT
    )
    if result.returncode != 0:
        raise InputError(f"--profile {path} at {rev}: {result.stderr.strip().splitlines()[-1]}")
    return yaml.safe_load(result.stdout)


def with_settings(raw: dict, profile: dict | None, settings: list[str]) -> dict:
    """The params tree ``raw`` with a profile's leaves and ``KEY=VALUE`` settings set."""
    import experiment
    import yaml

    from sightline.errors import InputError
    from sightline.params import with_values

    values = experiment.leaves(profile) if profile else {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key.startswith("models."):
            raise InputError(f"--set {item}: expected models.<name>.<key>=<value>")
        values[key] = yaml.safe_load(value)
    return with_values(raw, values)


def run_recipe(name: str, section, seed: int, label: str) -> dict:
    """Train and evaluate one recipe; its clock, training time and test figure."""
    from sightline.evaluation import evaluate
    from sightline.registry import get_evaluation
    from sightline.training import train

    evaluation = get_evaluation(name)
    key, _ = evaluation.selection
    work = WORK / name / label
    shutil.rmtree(work, ignore_errors=True)
    data_dir = common.PREPARED / section.data.dataset
    clock = Clock(key)
    print(f"bench-tta: {name}, {label} recipe ...", flush=True)
    info = train(name, section, seed, data_dir, work / "model", work / "run", None, [clock])
    metrics = evaluate(name, section, seed, work / "model", data_dir, work / "reports")
    return {
        "points": clock.points,
        "train_time_s": info["train_time_s"],
        "test": metrics.get(evaluation.test),
        "val": metrics.get(key),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", help="models to run (default: every model)")
    p.add_argument("--baseline", default="HEAD", help="git revision of the previous params.yaml")
    p.add_argument("--target", type=float, help="target value (default: the previous best)")
    p.add_argument("--tiny", action="store_true", help="a few batches of one epoch each (CI)")
    p.add_argument("--profile", type=Path, help="a params profile set on both recipes")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", help="set on both")
    p.add_argument("--out", type=Path, default=common.REPORTS / "bench" / "time_to_accuracy.json")
    args = p.parse_args()

    from sightline.errors import InputError
    from sightline.io import atomic_write_text
    from sightline.params import parse_section, read_params, with_values
    from sightline.registry import get_evaluation, list_models

    current = read_params(common.PARAMS)
    previous = baseline_params(args.baseline)
    if args.profile:
        import experiment

        profiles = (
            baseline_profile(args.baseline, args.profile),
            experiment.read_profile(args.profile),
        )
    else:
        profiles = (None, None)
    previous = with_settings(previous, profiles[0], args.set)
    current = with_settings(current, profiles[1], args.set)
    models = args.models or list(current["models"])
    unknown = [m for m in models if m not in list_models() or m not in current["models"]]
    if unknown:
        raise InputError(
            f"--models: unknown {', '.join(unknown)} (known: {', '.join(list_models())})"
        )
    seed = int(current["seed"])
    rows = []
    for name in models:
        if name not in previous.get("models", {}):
            print(f"bench-tta: {name}: no models.{name} in {args.baseline}'s params.yaml; skipped")
            continue
        key, mode = get_evaluation(name).selection
        recipes = {}
        for label, raw in (("previous", previous), ("current", current)):
            section_raw = raw["models"][name]
            if args.tiny:
                section_raw = with_values(section_raw, {f"trainer.{k}": v for k, v in TINY.items()})
            raw = {**raw, "models": {**raw["models"], name: section_raw}}
            section = parse_section(raw, name, f"params.yaml ({label})")[1]
            recipes[label] = run_recipe(name, section, seed, label)
        prev, cur = recipes["previous"], recipes["current"]
        values = [v for _, v in prev["points"]]
        target = args.target
        if target is None and values:
            target = max(values) if mode == "max" else min(values)
        t_prev = reached(prev["points"], target, mode) if target is not None else None
        t_cur = reached(cur["points"], target, mode) if target is not None else None
        ratio = t_cur / t_prev if t_prev and t_cur is not None else None
        rows.append(
            {
                "model": name,
                "metric": key,
                "mode": mode,
                "target": target,
                "previous": prev,
                "current": cur,
                "previous_tta_s": t_prev,
                "current_tta_s": t_cur,
                "ratio": None if ratio is None else round(ratio, 3),
            }
        )
        print(
            f"bench-tta: {name}: {key} target {target}: previous {t_prev} s, current "
            f"{'never' if t_cur is None else f'{t_cur} s'}; ratio {ratio if ratio is None else f'{ratio:.3f}'}; "
            f"test {prev['test']} -> {cur['test']}; training {prev['train_time_s']} s -> {cur['train_time_s']} s",
            flush=True,
        )
    print()
    print(
        "| model | metric | target | previous s | current s | ratio | test previous | test current |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        fmt = lambda v: "never" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))  # noqa: E731
        print(
            f"| {r['model']} | {r['metric']} | {fmt(r['target'])} | {fmt(r['previous_tta_s'])} | "
            f"{fmt(r['current_tta_s'])} | {fmt(r['ratio'])} | {fmt(r['previous']['test'])} | "
            f"{fmt(r['current']['test'])} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"baseline": args.baseline, "tiny": args.tiny, "rows": rows}
    atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"bench-tta: -> {args.out}")


if __name__ == "__main__":
    common.run(main)
