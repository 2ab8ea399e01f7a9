"""Stage ``evaluate@<model>``: test metrics -> metrics/<model>.json, pictures -> reports/<model>/."""

from __future__ import annotations

import json

import common


def main() -> None:
    args, params, section = common.model_stage(__doc__)

    from sightline.evaluation import evaluate
    from sightline.io import write_json

    metrics = evaluate(
        args.model,
        section,
        params.seed,
        common.MODELS / args.model,
        common.PREPARED / section.data.dataset,
        common.REPORTS / args.model,
    )
    write_json(common.METRICS / f"{args.model}.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, int | float)}, indent=2))


if __name__ == "__main__":
    common.run(main)
