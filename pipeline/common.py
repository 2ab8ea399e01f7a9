"""Shared bits of the DVC stage entry points: repository paths, params, one-line errors.

This package is the only code that reads ``params.yaml`` or knows where things live.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # run from a checkout even before `pip install -e .`

PARAMS = Path("params.yaml")
PREPARED = Path("data/prepared")
DOWNLOADS = Path("data/downloads")
MODELS = Path("models")
RUNS = Path("runs")
LIVE = Path("dvclive")
METRICS = Path("metrics")
REPORTS = Path("reports")


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", type=Path, default=PARAMS, help="params file (default: params.yaml)")
    return p


def load(params_path: Path):
    """``(params, sections)`` from the params file; errors name the bad key."""
    from sightline.config import load_params

    return load_params(params_path)


def section_of(sections: dict, name: str):
    from sightline.errors import ConfigError
    from sightline.registry import get_model

    get_model(name)  # unknown model -> one-line error listing the known ones
    if name not in sections:
        raise ConfigError(f"params.yaml: models.{name}: section missing")
    return sections[name]


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
    params, sections = load(args.params)
    return args, params, section_of(sections, args.model)


def run(main: Callable[[], None]) -> None:
    """Run a stage; a ``SightlineError`` becomes one line on stderr and exit code 2."""
    from sightline.errors import SightlineError

    try:
        main()
    except SightlineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
