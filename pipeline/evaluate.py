"""Stage ``evaluate@<model>``: test-split metrics -> metrics/<model>.json, pictures -> reports/<model>/."""

from __future__ import annotations

import json

import common


def main() -> None:
    p = common.parser(__doc__)
    p.add_argument("model", help="a registered model name")
    args = p.parse_args()
    params, sections = common.load(args.params)
    section = common.section_of(sections, args.model)

    import lightning as L

    from sightline.inference import load_module, select_device
    from sightline.io import atomic_dir, write_json
    from sightline.registry import get_model
    from sightline.training import TRAIN_INFO_FILE

    spec = get_model(args.model)
    model_dir = common.MODELS / args.model
    module = load_module(model_dir, args.model, select_device())
    L.seed_everything(params.seed, verbose=False)
    dm = spec.datamodule(section, common.PREPARED / section.data.dataset, params.seed)

    with atomic_dir(common.REPORTS / args.model) as tmp:
        metrics = spec.evaluate(module, dm, tmp)
        info = json.loads((model_dir / TRAIN_INFO_FILE).read_text())
        metrics = {
            "model": args.model,
            "dataset": section.data.dataset,
            **metrics,
            "train_time_s": info["train_time_s"],
            "epochs": info["epochs"],
            "params": info["params"],
        }
    write_json(common.METRICS / f"{args.model}.json", metrics)
    headline = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
    print(json.dumps(headline, indent=2))


if __name__ == "__main__":
    common.run(main)
