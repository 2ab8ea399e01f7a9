"""Stage ``features``: the frozen ImageNet backbone of ``models.<model>.features`` run once over
the model's prepared dataset -> data/features/<dataset>/ (float16 features, labels, meta.json).
Only that params section re-runs it: changing the head never does."""

from __future__ import annotations

import common


def main() -> None:
    args, params, section = common.model_stage(__doc__.splitlines()[0])

    from sightline.errors import ConfigError
    from sightline.inference import select_device

    if not hasattr(section, "features"):
        raise ConfigError(f"models.{args.model}: has no features section (no backbone to run)")
    from sightline.models.transfer import extract_features

    dataset = section.data.dataset
    out = common.FEATURES / dataset
    if section.upstream != str(out):
        raise ConfigError(f"models.{args.model}.upstream: must be {out} (what this stage writes)")
    meta = extract_features(
        common.PREPARED / dataset, out, section.features, params.seed, select_device()
    )
    print(
        f"features@{dataset}: {meta['backbone']} ({meta['dim']} per image, {meta['precision']}), {meta['counts']}, "
        f"{meta['images_per_s']} images/s -> {out}"
    )


if __name__ == "__main__":
    common.run(main)
