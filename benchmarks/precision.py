"""What ``precision: auto`` chooses on this machine, and what each choice costs: the training
step of each model at its params.yaml size, in float32 and under bf16 autocast, timed in
alternating rounds in one run. Prints the best round's ms a step, the ratio bf16 / float32 and the value ``auto``
resolves to here. ``make bench-precision``; ``--models``, ``--steps``, ``--rounds`` to vary.

Where the device computes bf16 natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16
or AMX) the ratio is below 1; where bf16 is emulated it is far above, which is why ``auto``
falls back to float32 there.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipeline"))

import common  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from train_throughput import timed_fit  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def step_ms(module, dm, section, precision: str, steps: int, warmup: int) -> float:
    """Mean wall time of a training step after ``warmup`` steps, in ms."""
    timer = timed_fit(
        module,
        dm,
        warmup,
        accelerator=section.trainer.accelerator,
        devices=1,
        precision=precision,
        limit_train_batches=warmup + steps,  # batches, not optimiser steps (the GAN has two)
        max_epochs=1,
    )
    return 1000 * (timer.end - timer.start) / steps  # from batch `warmup` to the last's end


def features_ms(section, device, precision: str, steps: int, warmup: int) -> float:
    """The transfer model's cost is its frozen backbone (the features stage, the served path):
    mean wall time of one batch of ``features.batch_size`` through it, in ms."""
    from sightline.data.splits import load_meta, load_prepared
    from sightline.models.backbone import load_backbone
    from sightline.models.transfer.data import backbone_features, backbone_preprocess

    cfg, prepared = section.features, common.PREPARED / section.data.dataset
    x = torch.as_tensor(load_prepared(prepared, "val")[0][: (warmup + steps) * cfg.batch_size])
    prep = backbone_preprocess(load_meta(prepared), cfg)
    net = load_backbone(cfg.backbone, cfg.weights).to(device).to(memory_format=torch.channels_last)
    backbone_features(
        net, prep, x[: warmup * cfg.batch_size], cfg.batch_size, precision, layers=cfg.layers
    )
    start = time.perf_counter()
    backbone_features(
        net, prep, x[warmup * cfg.batch_size :], cfg.batch_size, precision, layers=cfg.layers
    )
    return 1000 * (time.perf_counter() - start) / steps


def make_timer(name: str, section, seed: int, device: torch.device, args):
    """``(precision setting, batch size, timed(precision) -> ms)`` for one model."""
    if hasattr(section, "features"):  # the frozen backbone's pass is what it costs

        def timed(precision: str) -> float:
            return features_ms(section, device, precision, args.steps, args.warmup)

        return section.features.precision, section.features.batch_size, timed
    from sightline.registry import get_model

    spec = get_model(name)
    dm = spec.datamodule(section, common.PREPARED / section.data.dataset, seed)
    L.seed_everything(seed, verbose=False)
    base = spec.module(**spec.module_kwargs(section, dm))

    def timed(precision: str) -> float:
        torch.manual_seed(seed)
        return step_ms(copy.deepcopy(base), dm, section, precision, args.steps, args.warmup)

    return section.trainer.precision, section.data.batch_size, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["classifier", "vae", "gan", "spam", "transfer"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="rounds, order alternating")
    args = p.parse_args()

    from sightline.hardware import accelerator_device, native_bf16, resolve_precision
    from sightline.params import load_section

    print(
        f"{torch.get_num_threads()} threads; float32 against bf16 autocast, ms per training "
        "step (transfer: per batch through the frozen backbone)"
    )
    for name in args.models:
        params, section = load_section(common.PARAMS, name)
        device = accelerator_device(section.trainer.accelerator)
        setting, batch, timed = make_timer(name, section, params.seed, device, args)
        times = {k: [] for k in PRECISIONS}
        for r in range(args.rounds):
            for precision in PRECISIONS[:: 1 if r % 2 == 0 else -1]:
                times[precision].append(timed(precision))
        best = {k: min(v) for k, v in times.items()}
        rounds = "; ".join(f"{k} {', '.join(f'{t:.0f}' for t in v)}" for k, v in times.items())
        print(
            f"{name:10s} {device.type}, batch {batch}: float32 "
            f"{best['32-true']:7.1f} ms, bf16 {best['bf16-mixed']:7.1f} ms, ratio "
            f"{best['bf16-mixed'] / best['32-true']:5.2f}; native bf16: "
            f"{'yes' if native_bf16(device) else 'no'}; params say "
            f"{setting} -> {resolve_precision(setting, device)}"
            f"  (rounds, ms: {rounds})"
        )


if __name__ == "__main__":
    common.run(main)
