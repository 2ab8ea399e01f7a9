"""Stage ``train@<model>``: fit one model, export models/<model>/ (ckpt + safetensors)."""

from __future__ import annotations

import json

import common


def main() -> None:
    args, params, section = common.model_stage(__doc__)

    from sightline.training import device_summary, train

    data_dir = common.PREPARED / section.data.dataset
    print(f"training {args.model} on {section.data.dataset}; visible compute: {device_summary()}")
    info = train(
        args.model,
        section,
        params.seed,
        data_dir,
        common.MODELS / args.model,
        common.RUNS / args.model,
        common.LIVE / args.model,
    )
    if info is not None:
        print(json.dumps(info, indent=2))


if __name__ == "__main__":
    common.run(main)
