"""The features stage against its backbone, in one run: images/s of the whole stage's path
(prepared uint8 images -> upscale + normalise -> frozen backbone -> pooled features) beside the
backbone's own forward rate on inputs already at its resolution, and the head's training time
on the cached features. ``make bench-features``; ``--images``, ``--batch-sizes`` and
``--backbone`` to vary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "pipeline"))
import common  # noqa: E402


def rate(fn, n: int) -> float:
    fn()  # warm-up: the first call pays for allocations and kernel selection
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--backbone", help="another BACKBONES name than params.yaml's")
    args = p.parse_args()

    from sightline.data.splits import load_meta, load_prepared
    from sightline.hardware import resolve_precision
    from sightline.inference import select_device
    from sightline.models.backbone import load_backbone, tap
    from sightline.models.transfer.data import autocast, backbone_features, backbone_preprocess
    from sightline.params import load_section

    _, section = load_section(common.PARAMS, "transfer")
    cfg = section.features
    if args.backbone:
        cfg = cfg.model_copy(update={"backbone": args.backbone})
    prepared = common.PREPARED / section.data.dataset
    device = select_device()
    precision = resolve_precision(cfg.precision, device)  # as the stage resolves it
    x = torch.as_tensor(load_prepared(prepared, "val")[0][: args.images])
    prep = backbone_preprocess(load_meta(prepared), cfg)
    net = load_backbone(cfg.backbone, cfg.weights).to(device).to(memory_format=torch.channels_last)
    ready = prep.normalize(x.to(device)).contiguous(memory_format=torch.channels_last)
    print(
        f"{cfg.backbone} ({', '.join(cfg.layers)}), {precision} ({cfg.precision}), {len(x)} {section.data.dataset} images "
        f"{tuple(x.shape[1:])} -> {tuple(ready.shape[1:])}, {torch.get_num_threads()} threads, "
        f"{device}"
    )

    @torch.inference_mode()
    def forward(bs: int) -> None:
        for i in range(0, len(ready), bs):
            with autocast(device, precision):
                tap(net, ready[i : i + bs], cfg.layers)

    for bs in args.batch_sizes:
        stage = rate(
            lambda bs=bs: backbone_features(net, prep, x, bs, precision, layers=cfg.layers), len(x)
        )
        backbone = rate(lambda bs=bs: forward(bs), len(x))
        print(
            f"batch {bs:4d}: features path {stage:7.1f} images/s, backbone forward "
            f"{backbone:7.1f} images/s, ratio {stage / backbone:.2f}"
        )
    trained = common.MODELS / "transfer" / "train.json"
    if trained.is_file():
        info = json.loads(trained.read_text())
        print(f"head training on the cached features (models/transfer): {info['train_time_s']} s")


if __name__ == "__main__":
    common.run(main)
