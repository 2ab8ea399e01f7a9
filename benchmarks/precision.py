"""What ``precision: auto`` chooses on this machine, and what each choice costs: the training
step of each model at its params.yaml size, in float32 and under bf16 autocast, timed in
alternating rounds in one run. Prints ms a step, the ratio bf16 / float32 and the value ``auto``
resolves to here. ``make bench-precision``; ``--models``, ``--steps``, ``--rounds`` to vary.

Where the device computes bf16 natively (a CUDA GPU that supports it, a CPU with AVX-512 BF16
or AMX) the ratio is below 1; where bf16 is emulated it is far above, which is why ``auto``
falls back to float32 there.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "pipeline"))

import common  # noqa: E402
import lightning as L  # noqa: E402
import torch  # noqa: E402
from train_throughput import StepTimer  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def step_ms(module, dm, section, precision: str, steps: int, warmup: int) -> float:
    """Mean wall time of a training step after ``warmup`` steps, in ms."""
    timer = StepTimer(warmup)
    L.Trainer(
        accelerator=section.trainer.accelerator,
        devices=1,
        precision=precision,
        limit_train_batches=warmup + steps,  # batches, not optimiser steps (the GAN has two)
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    ).fit(module, datamodule=dm)
    return 1000 * (timer.end - timer.start) / steps  # from batch `warmup` to the last's end


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["classifier", "vae", "gan", "spam"])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2, help="rounds, order alternating")
    args = p.parse_args()

    from sightline.hardware import accelerator_device, native_bf16, resolve_precision
    from sightline.params import load_section
    from sightline.registry import get_model

    print(f"{torch.get_num_threads()} threads; float32 against bf16 autocast, ms per training step")
    for name in args.models:
        params, section = load_section(common.PARAMS, name)
        spec = get_model(name)
        dm = spec.datamodule(section, common.PREPARED / section.data.dataset, params.seed)
        L.seed_everything(params.seed, verbose=False)
        base = spec.module(**spec.module_kwargs(section, dm))
        device = accelerator_device(section.trainer.accelerator)
        times = {k: [] for k in PRECISIONS}
        for r in range(args.rounds):
            for precision in PRECISIONS[:: 1 if r % 2 == 0 else -1]:
                torch.manual_seed(params.seed)
                module = copy.deepcopy(base)
                times[precision].append(
                    step_ms(module, dm, section, precision, args.steps, args.warmup)
                )
        best = {k: min(v) for k, v in times.items()}
        rounds = "; ".join(f"{k} {', '.join(f'{t:.0f}' for t in v)}" for k, v in times.items())
        print(
            f"{name:10s} {device.type}, batch {section.data.batch_size}: float32 "
            f"{best['32-true']:7.1f} ms, bf16 {best['bf16-mixed']:7.1f} ms, ratio "
            f"{best['bf16-mixed'] / best['32-true']:5.2f}; native bf16: "
            f"{'yes' if native_bf16(device) else 'no'}; params say "
            f"{section.trainer.precision} -> {resolve_precision(section.trainer.precision, device)}"
            f"  (rounds, ms: {rounds}; {statistics.median(times['32-true']):.0f} median float32)"
        )


if __name__ == "__main__":
    common.run(main)
