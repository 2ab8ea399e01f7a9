"""Stage ``evaluate@<model>``: test metrics -> metrics/<model>.json, pictures -> reports/<model>/."""

from __future__ import annotations

import json

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("model", help="a registered model name")
    args = p.parse_args()
    params, sections = common.load(args.params)
    section = common.section_of(sections, args.model)

    from sightline.evaluation import evaluate
    from sightline.io import write_json

    metrics = evaluate(
        args.model, section, params.seed, common.MODELS / args.model,
        common.PREPARED / section.data.dataset, common.REPORTS / args.model,
    )  # fmt: skip
    write_json(common.METRICS / f"{args.model}.json", metrics)
    print(json.dumps({k: v for k, v in metrics.items() if isinstance(v, int | float)}, indent=2))


if __name__ == "__main__":
    common.run(main)
