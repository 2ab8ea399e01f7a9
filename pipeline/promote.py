"""``make promote MODEL=<name> [EXP=<exp>] [FORCE=1]``: serve the best experiment of one model.

Chooses the DVC experiment with the best selection metric for ``<name>`` (``dvc exp show``;
the metric is the model's ``EVALUATION.selection``, in ``sightline/metrics/<name>.py``), or the one named by ``--exp``.
It compares it with the model served by the committed Bento (HEAD's
``bento/bento.json``): promoting a worse one needs ``--force``, and so does one whose gain is
inside the selection metric's seed spread (``metrics/spread/<model>.json``, ``make spread``). It then runs
``dvc exp apply <exp>``, which brings the experiment's checkpoint, metrics, params and
``dvc.lock`` into the workspace, and ``dvc repro package``, which packages the models with the
experiment's name in their labels and builds the Bento. Last, it makes sure that Bento is in the local BentoML store. Commit the
result to keep it.
"""

from __future__ import annotations

import json
import os
import subprocess

import common

BENTO_JSON = common.BENTO / "bento.json"


def served_bento() -> dict | None:
    """``bento.json`` of the Bento the committed workspace serves (HEAD's ``bento``, read
    through DVC), else the workspace's own; ``None`` before anything was packaged.

    HEAD, not the workspace: ``dvc exp run`` leaves the last experiment's results in the
    workspace, and that experiment must not become the bar it is compared with.
    """
    try:
        import dvc.api

        return json.loads(dvc.api.read(str(BENTO_JSON), rev="HEAD"))
    except Exception:  # no git, no commit, or HEAD has no package output yet
        return json.loads(BENTO_JSON.read_text()) if BENTO_JSON.is_file() else None


def served_value(model: str) -> tuple[str, float] | None:
    """``(tag, selection metric)`` of the model the committed Bento serves, if any."""
    import bentoml
    from bentoml.exceptions import NotFound

    from sightline.registry import get_evaluation

    tag = ((served_bento() or {}).get("models") or {}).get(model)
    if tag is None:
        return None
    try:
        metrics = bentoml.models.get(tag).info.metadata.get("metrics", {})
    except NotFound:
        return None
    value = metrics.get(get_evaluation(model).selection[0])
    return (tag, float(value)) if isinstance(value, int | float) else None


def dvc(*args: str, env: dict | None = None) -> None:
    from sightline.errors import SightlineError

    result = subprocess.run(
        ["dvc", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
        raise SightlineError(
            f"`dvc {' '.join(args)}` failed: {lines[-1] if lines else result.returncode}"
        )


def main() -> None:
    p = common.parser(__doc__.split("\n\n")[0])
    p.add_argument("model", help="a model name, e.g. classifier")
    p.add_argument("--exp", help="promote this experiment (name or rev) instead of the best one")
    p.add_argument(
        "--force", action="store_true", help="promote even when it is worse than the served model"
    )
    p.add_argument("--exp-json", help="read `dvc exp show --json` output from this file")
    p.add_argument("--dry-run", action="store_true", help="choose and compare, change nothing")
    args = p.parse_args()

    from sightline.errors import InputError
    from sightline.leaderboard import better, choose, parse_exp_show, selection
    from sightline.spread import (
        SPREAD_FACTOR,
        inside_spread,
        load_spread,
        section_differs,
        selection_spread,
    )

    experiments = parse_exp_show(common.exp_show_rows(args.exp_json))
    exp, value = choose(experiments, args.model, args.exp)
    metric, mode = selection(args.model)
    key = f"{metric} ({mode})"
    served = served_value(args.model)
    if served is not None and better(args.model, served[1], value) and not args.force:
        raise InputError(
            f"{exp.name} has {key} {value:g}, worse than the served {served[0]} ({served[1]:g}); pass --force (FORCE=1) to promote it anyway"
        )
    spread = load_spread(common.METRICS / "spread" / f"{args.model}.json")
    std = selection_spread(args.model, spread)
    differs = []
    if std is not None and args.params.is_file():  # the note compares with today's params
        section = common.load_all(args.params)[1][args.model]
        differs = section_differs(spread, section)
    if differs:
        print(
            f"{args.model}: note: metrics/spread/{args.model}.json was measured with other params "
            f"({', '.join(differs[:3])}{', ...' if len(differs) > 3 else ''}); `make spread` measures today's"
        )
    if (
        served is not None
        and better(args.model, value, served[1])
        and inside_spread(args.model, value, served[1], std)
        and not args.force
    ):
        raise InputError(
            f"{exp.name} has {key} {value:g} against the served {served[1]:g}: the gain is inside "
            f"the seed spread (std {std:g}, metrics/spread/{args.model}.json; a gain must exceed "
            f"{SPREAD_FACTOR:g} x); run `make spread` for it, or pass --force (FORCE=1) to promote it anyway"
        )
    print(
        f"{args.model}: {exp.name} ({exp.rev[:7]}), {key} {value:g}; served now: {f'{served[0]} ({served[1]:g})' if served else 'nothing'}"
        + (f"; seed spread ± {std:g}" if std is not None else "")
    )
    if args.dry_run:
        return
    if not exp.baseline:
        dvc("exp", "apply", exp.name)
    dvc("repro", "package", env={"DVC_EXP_NAME": exp.name} if not exp.baseline else None)

    import bentoml
    from bentoml.exceptions import NotFound

    bento = json.loads(BENTO_JSON.read_text())
    try:
        bentoml.bentos.get(bento["bento"])
    except NotFound:  # built elsewhere (a queued or remote run): import the exported archive
        bentoml.bentos.import_bento(
            str((BENTO_JSON.parent / f"{bento['bento'].split(':')[0]}.bento").resolve())
        )
    print(
        f"promoted {bento['models'][args.model]} (experiment {bento.get('experiment')}) in Bento {bento['bento']}"
    )
    print(
        f"serve it: bentoml serve {bento['bento']}   (commit dvc.lock, params.yaml and metrics/ to keep it)"
    )


if __name__ == "__main__":
    common.run(main)
