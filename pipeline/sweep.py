"""``make sweep MODEL=<name> TRIALS=N``: Optuna searches the ``sweeps.<model>`` space of
params.yaml, one DVC experiment per trial.

Each trial is ``dvc exp run --temp -n <study>-<number> evaluate@<model> -S ...``, so it is
reproducible, appears in ``dvc exp show`` and ``make compare``, and can be served with
``make promote EXP=<name>``. The trial's training reports the validation metric after every
epoch (``sightline.sweeps.TrialReporter``); TPE proposes, the median pruner stops trials behind
the others. The study lives in an Optuna storage (default ``sweeps/<model>.db``, SQLite): a
re-run resumes it until it holds ``--trials`` finished trials, and workers on other clones or
machines share it through ``--storage`` (a shared SQLite file or a database URL). The first
trial of a new study is the current params, the baseline the others are judged against.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

import common

SWEEPS = Path("sweeps")


def yaml_value(value) -> str:
    """``value`` as a ``-S`` override: JSON (which YAML reads), floats always with a dot so that
    every YAML reader sees a number (``1e-05`` is a string to YAML 1.1), strings bare when YAML
    reads them back as the same string."""
    import re

    if isinstance(value, str) and re.fullmatch(r"[A-Za-z_][\w./-]*", value):
        import yaml

        if yaml.safe_load(value) == value:
            return value
    if isinstance(value, float):
        text = format(value, ".6g")
        if "e" in text and "." not in text.split("e")[0]:
            text = text.replace("e", ".0e")
        return text if any(c in text for c in ".en") else text + ".0"
    return json.dumps(value)


def _path_value(data: dict, path: str):
    for part in path.split("."):
        data = data[part]
    return data


def baseline(section, sweep) -> dict | None:
    """The current params as a trial of the space, or ``None`` when they lie outside it."""
    from sightline.config import SearchChoice

    current = section.model_dump(mode="json")
    values = {}
    for path, dim in sweep.space.items():
        value = _path_value(current, path)
        if isinstance(dim, SearchChoice):
            if value not in dim.choices:
                return None
            values[path] = json.dumps(value) if isinstance(value, list | dict) else value
        elif not dim.low <= value <= dim.high:
            return None
        else:
            values[path] = value
    return values


def finished(study) -> list:
    from optuna.trial import TrialState

    return [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]


def run_trial(study, model: str, sweep, metric: str, storage_url: str, total: int) -> None:
    """Ask, run one trial as a DVC experiment, tell."""
    from optuna.trial import TrialState

    from sightline.errors import SightlineError
    from sightline.sweeps import suggest

    trial = study.ask()
    values = suggest(trial, sweep)
    name = f"{study.study_name}-{trial.number}"
    trial.set_user_attr("experiment", name)
    cmd = ["dvc", "exp", "run", "--temp", "-n", name, f"evaluate@{model}"]
    for path, value in {**sweep.fixed, **values}.items():
        cmd += ["-S", f"models.{model}.{path}={yaml_value(value)}"]
    shown = ", ".join(f"{k}={yaml_value(v)}" for k, v in values.items())
    print(f"trial {trial.number} ({len(finished(study)) + 1}/{total}) {name}: {shown}", flush=True)
    spec = {
        "storage": storage_url,
        "study": study.study_name,
        "trial": trial.number,
        "metric": metric,
        "startup_trials": sweep.startup_trials,
        "warmup_epochs": sweep.warmup_epochs,
    }
    env = {**os.environ, "SIGHTLINE_SWEEP_TRIAL": json.dumps(spec)}
    start, tail = time.monotonic(), deque(maxlen=30)
    try:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        for line in proc.stdout:
            tail.append(line.rstrip())
            print("  " + line.rstrip(), flush=True)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)  # dvc stops the trial and removes its temporary copy
        proc.wait()
        study.tell(trial, state=TrialState.FAIL)
        raise
    seconds = time.monotonic() - start
    frozen = next(t for t in study.trials if t.number == trial.number)
    reported = list(frozen.intermediate_values.values())
    if code == 0 and reported:
        best = max(reported) if study.direction.name == "MAXIMIZE" else min(reported)
        study.tell(trial, best)
        print(f"trial {trial.number}: {metric} {best:.6g} in {seconds:.0f}s -> {name}", flush=True)
    elif "pruned_at_epoch" in frozen.user_attrs:
        study.tell(trial, state=TrialState.PRUNED)
        epoch = frozen.user_attrs["pruned_at_epoch"]
        print(f"trial {trial.number}: pruned after epoch {epoch} in {seconds:.0f}s", flush=True)
    else:
        study.tell(trial, state=TrialState.FAIL)
        why = next((ln for ln in reversed(tail) if ln.startswith(("error:", "ERROR"))), None)
        why = why or (tail[-1] if tail else f"exit code {code}")
        raise SightlineError(f"trial {trial.number} ({name}) failed: {why}")


def summary(study, metric: str, model: str) -> None:
    from optuna.trial import TrialState

    rows = sorted(study.trials, key=lambda t: t.number)
    print(
        f"\nstudy {study.study_name}: {len(rows)} trials ({metric}, {study.direction.name.lower()})"
    )
    for t in rows:
        value = f"{t.value:.6g}" if t.value is not None else "-"
        params = ", ".join(f"{k}={v}" for k, v in t.params.items())
        print(f"  {t.number:>3}  {t.state.name:<8} {value:>10}  {params}")
    done = [t for t in rows if t.state == TrialState.COMPLETE]
    if done:
        best = study.best_trial
        name = best.user_attrs.get("experiment")
        print(f"best: trial {best.number} ({name}), {metric} {best.value:.6g}")
        print(f"serve it: make promote MODEL={model} EXP={name}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model with a sweeps.<model> section in params.yaml")
    p.add_argument("--trials", type=int, default=8, help="finished trials the study should hold")
    p.add_argument(
        "--study", help="study name, also the experiments' prefix (default sweep-<model>)"
    )
    p.add_argument("--storage", help="Optuna storage URL (default sqlite:///sweeps/<model>.db)")
    args = p.parse_args()
    params, sections = common.load_all(common.PARAMS)
    from sightline.errors import ConfigError, SightlineError

    try:
        import optuna
    except ImportError:
        raise SightlineError("make sweep needs Optuna: pip install -e '.[sweep]'") from None
    from sightline.registry import get_model
    from sightline.sweeps import median_pruner

    sweep = params.sweeps.get(args.model)
    if sweep is None:
        raise ConfigError(f"{common.PARAMS}: sweeps.{args.model}: no search space to sweep")
    spec = get_model(args.model)
    metric = sweep.metric or spec.monitor
    direction = sweep.direction or ("maximize" if spec.mode == "max" else "minimize")
    if args.storage is None:
        SWEEPS.mkdir(exist_ok=True)
    storage_url = args.storage or f"sqlite:///{(SWEEPS / f'{args.model}.db').resolve()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a stopped worker: as Ctrl-C
    study = optuna.create_study(
        study_name=args.study or f"sweep-{args.model}",
        storage=storage_url,
        sampler=optuna.samplers.TPESampler(n_startup_trials=sweep.startup_trials, seed=params.seed),
        pruner=median_pruner(sweep.startup_trials, sweep.warmup_epochs),
        direction=direction,
        load_if_exists=True,
    )
    if not study.trials and (start := baseline(sections[args.model], sweep)) is not None:
        study.enqueue_trial(start)
    try:
        while len(finished(study)) < args.trials:
            run_trial(study, args.model, sweep, metric, storage_url, args.trials)
    except KeyboardInterrupt:
        print(
            f"interrupted: the running trial is recorded as failed; `make sweep MODEL={args.model}` resumes",
            file=sys.stderr,
        )
        sys.exit(130)
    summary(study, metric, args.model)


if __name__ == "__main__":
    common.run(main)
