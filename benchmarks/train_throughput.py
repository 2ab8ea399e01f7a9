"""Training throughput: the Lightning loop vs a plain PyTorch loop on the same net and data.

Both loops train ``ClassifierModule`` from the same initial weights on the same prepared
batches (uint8 -> normalise -> augment on the device), with the same optimiser, scheduler,
precision and batch size. Steps after a warm-up are timed; the script prints images/s of each
and their ratio (Lightning / plain). Run: ``python benchmarks/train_throughput.py``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "pipeline"))

import lightning as L  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from sightline.data.augment import augment_batch  # noqa: E402


class StepTimer(L.Callback):
    """Wall time of the training steps after ``warmup`` steps."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.start, self.end = warmup, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.end = time.perf_counter()


def timed_fit(module, dm, warmup: int, **trainer) -> StepTimer:
    """Fit ``module`` with ``trainer`` settings and nothing else (no logger, checkpoint,
    progress bar or validation); returns the timer of the steps after ``warmup``."""
    timer = StepTimer(warmup)
    quiet = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "limit_val_batches": 0,
        "callbacks": [timer],
    }
    L.Trainer(**{**trainer, **quiet}).fit(module, datamodule=dm)
    return timer


def lightning_loop(module, dm, section, steps: int, warmup: int) -> float:
    settings = {**section.trainer.model_dump(), "max_steps": steps, "max_epochs": -1}
    timer = timed_fit(module, dm, warmup, **settings)
    return (steps - warmup) * dm.batch_size / (timer.end - timer.start)


def plain_loop(module, dm, section, steps: int, warmup: int) -> float:
    device = torch.device(
        "cuda" if torch.cuda.is_available() and section.trainer.accelerator != "cpu" else "cpu"
    )
    module = module.to(device).train()
    opt, sched = module.build_optimizer(steps)
    bf16 = section.trainer.precision.startswith("bf16")
    loader = dm.train_dataloader()
    step, start = 0, None
    while step < steps:
        for x, y in loader:
            if step == warmup:
                start = time.perf_counter()
            x = augment_batch(dm.preprocess.normalize(x.to(device)), **dm.augment)
            y = y.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(module(x), y, label_smoothing=module.hparams.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            step += 1
            if step == steps:
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (steps - warmup) * dm.batch_size / (time.perf_counter() - start)


def main() -> None:
    import common

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument(
        "--rounds", type=int, default=5, help="rounds, order alternating; median and best kept"
    )
    args = p.parse_args()
    from sightline.params import load_section

    params, section = load_section(args.params, "classifier")
    from sightline.hardware import accelerator_device, resolve_precision

    trainer = section.trainer  # `auto` as training resolves it, so both loops run the same
    precision = resolve_precision(trainer.precision, accelerator_device(trainer.accelerator))
    section = section.model_copy(
        update={"trainer": trainer.model_copy(update={"precision": precision})}
    )
    from sightline.registry import get_model

    spec = get_model("classifier")
    dm = spec.datamodule(section, ROOT / common.PREPARED / section.data.dataset, params.seed)
    L.seed_everything(params.seed, verbose=False)
    base = spec.module(**spec.module_kwargs(section, dm))
    results = {"lightning": [], "plain": []}
    order = (("plain", plain_loop), ("lightning", lightning_loop))
    for _ in range(args.rounds):
        for name, fn in order[:: 1 if len(results["plain"]) % 2 == 0 else -1]:
            torch.manual_seed(params.seed)
            results[name].append(fn(copy.deepcopy(base), dm, section, args.steps, args.warmup))
    best = {k: max(v) for k, v in results.items()}
    median = {k: statistics.median(v) for k, v in results.items()}
    print(
        f"classifier on {section.data.dataset}, batch {section.data.batch_size}, precision {section.trainer.precision}, {args.steps - args.warmup} timed steps x {args.rounds} rounds, {torch.get_num_threads()} threads"
    )
    for k in ("plain", "lightning"):
        print(
            f"  {k:9s} {best[k]:8.0f} images/s   (rounds: {', '.join(f'{v:.0f}' for v in results[k])})"
        )
    print(
        f"  ratio lightning/plain = {best['lightning'] / best['plain']:.3f} (best of each), {median['lightning'] / median['plain']:.3f} (median of each)"
    )


if __name__ == "__main__":
    main()
