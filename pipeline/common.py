"""Shared bits of the DVC stage entry points: repository paths, params, one-line errors.

This package is the only code that reads ``params.yaml`` or knows where things live.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NEEDS = ("torch", "lightning", "pydantic", "yaml")  # what every stage imports


def project_python() -> Path | None:
    """The interpreter of the project's environment: the active virtual environment's, else the
    ``.venv`` of this checkout or of a folder above it (``dvc exp run --queue`` runs stages in a
    copy under ``.dvc/tmp/exps/``), else ``None``."""
    candidates = (
        [Path(os.environ["VIRTUAL_ENV"]) / "bin/python"] if "VIRTUAL_ENV" in os.environ else []
    )
    candidates += [folder / ".venv/bin/python" for folder in (ROOT, *ROOT.parents)]
    return next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)


def ensure_environment() -> None:
    """Run the stage under the project's interpreter: when this one lacks the dependencies
    (``dvc repro`` called without the environment activated), re-execute the same command with
    ``project_python()``; with none to be found, one line and exit code 2."""
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if not missing:
        return
    python = project_python()
    if python is not None and "SIGHTLINE_REEXEC" not in os.environ:  # once: never a loop
        os.environ["SIGHTLINE_REEXEC"] = "1"
        os.execv(str(python), [str(python), *sys.argv])
    print(
        f"error: {sys.executable} lacks {', '.join(missing)}: run `make setup` (it creates .venv, which stages then use) or activate the project's environment",
        file=sys.stderr,
    )
    sys.exit(2)


ensure_environment()
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout even before `pip install -e .`

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
FEATURES = Path("data/features")  # the features stage: a frozen backbone's, per dataset
DOWNLOADS = Path("data/downloads")
MODELS = Path("models")
RUNS = Path("runs")
LIVE = Path("dvclive")
METRICS = Path("metrics")
REPORTS = Path("reports")
BENTO = Path("bento")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=Path, default=PARAMS, help="params file (default: params.yaml)")
    return p


def load(params_path: Path):
    """The top level of the params file (seed, datasets); errors name the bad key."""
    from sightline.config import load_top

    return load_top(params_path)


def load_all(params_path: Path):
    """``(params, sections)``: the whole params file, every model's section typed."""
    from sightline.params import load_params

    return load_params(params_path)


def exp_show_rows(exp_json: str | Path | None = None, all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` rows: from ``exp_json`` when given, else by running dvc."""
    import json
    import subprocess

    from sightline.errors import DataError

    if exp_json is not None:
        try:
            return json.loads(Path(exp_json).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise DataError(
                f"{exp_json}: not readable `dvc exp show --json` output ({err})"
            ) from None
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        err = result.stderr.strip()
        last = err.splitlines()[-1] if err else result.returncode
        raise DataError(f"`{' '.join(cmd)}` failed: {last}")
    return json.loads(result.stdout or "[]")


def model_stage(description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None):
    """Parse ``<model> [--params FILE]`` (plus ``extra`` options) for a per-model stage.

    Returns:
        ``(args, params, section)``: the parsed arguments, the whole typed params and the
        model's own typed section.
    """
    p = parser(description)
    p.add_argument("model", help="a registered model name (a key of `models` in params.yaml)")
    if extra is not None:
        extra(p)
    args = p.parse_args()
    from sightline.params import load_section

    params, section = load_section(args.params, args.model)
    return args, params, section


def run(main: Callable[[], None]) -> None:
    """Run a stage; a ``SightlineError`` becomes one line on stderr and exit code 2."""
    from sightline.errors import SightlineError

    try:
        main()
    except SightlineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
