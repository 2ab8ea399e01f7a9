"""Train one registered model: seeded, resumable from ``last.ckpt``, exported atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from sightline.artifacts import (
    ARTIFACTS,
    CKPT_FILE,
    CONFIG_FILE,
    TRAIN_INFO_FILE,
    WEIGHTS_FILE,
    artifacts_dir,
)
from sightline.config import ModelParams
from sightline.errors import CheckpointError
from sightline.hardware import accelerator_device, resolve_precision
from sightline.io import atomic_dir, write_json
from sightline.registry import get_model


def fingerprint(name: str, section: ModelParams, seed: int, data_meta: dict) -> str:
    """Hash of everything that defines a run; a resumed run must match it exactly."""
    blob = json.dumps(
        {"name": name, "section": section.model_dump(mode="json"), "seed": seed, "data": data_meta},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class ProgressLines(L.Callback):
    """Where stderr is not a terminal (a log, CI), Lightning's progress bar would write a
    carriage return per step: instead, one line at most every ``every_s`` seconds within an
    epoch, and one per epoch with its logged metrics."""

    def __init__(self, name: str, every_s: float = 30.0) -> None:
        self.name, self.every_s = name, every_s
        self.start = self.last = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.start = self.last = time.monotonic()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        now = time.monotonic()
        if trainer.is_global_zero and now - self.last >= self.every_s:
            self.last = now
            total = trainer.num_training_batches
            print(
                f"{self.name}: epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}/{total}, {(batch_idx + 1) / (now - self.start):.1f} batches/s",
                file=sys.stderr,
                flush=True,
            )

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        shown = {  # epoch values only: a metric logged per step and epoch shows once
            k.removesuffix("_epoch"): v
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("train/", "val/")) and not k.endswith("_step") and v.numel() == 1
        }
        metrics = ", ".join(f"{k} {float(v):.4g}" for k, v in sorted(shown.items()))
        print(
            f"{self.name}: epoch {trainer.current_epoch + 1}/{trainer.max_epochs} done in {time.monotonic() - self.start:.0f}s, step {trainer.global_step}; {metrics}",
            file=sys.stderr,
            flush=True,
        )


def _is_launcher_process() -> bool:
    """Whether this process is global rank 0, before the process group exists: only it may
    clean or reuse the run directory and the logs. torchrun sets ``RANK``, SLURM's srun
    ``SLURM_PROCID``; Lightning's own launcher re-runs the script with ``LOCAL_RANK`` and
    ``NODE_RANK`` set for the other processes."""
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return os.environ[key] == "0"
    return all(os.environ.get(key, "0") == "0" for key in ("LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def _resume_checkpoint(run_dir: Path, fp: str) -> Path | None:
    """``last.ckpt`` of an interrupted run with the same fingerprint, else ``None``.

    A run directory left by different params is wiped so it cannot leak into this run.
    """
    last, stamp = run_dir / "checkpoints" / "last.ckpt", run_dir / "fingerprint.txt"
    if last.is_file() and stamp.is_file() and stamp.read_text().strip() == fp:
        return last
    if _is_launcher_process():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(fp + "\n")
    return None


def export_model(
    module: L.LightningModule,
    name: str,
    ckpt: Path,
    out_dir: Path,
    info: dict,
    artifacts: Path | None = None,
) -> None:
    """Write ``out_dir`` = best.ckpt + model.safetensors + config.json + train.json (+ the
    run's ``artifacts/``), atomically."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        shutil.copy2(ckpt, tmp / CKPT_FILE)
        if artifacts is not None and artifacts.is_dir():
            shutil.copytree(artifacts, tmp / ARTIFACTS)
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"name": name})
        write_json(tmp / CONFIG_FILE, {"name": name, "hyper_parameters": dict(module.hparams)})
        write_json(tmp / TRAIN_INFO_FILE, info)


def train(
    name: str,
    section: ModelParams,
    seed: int,
    data_dir: Path,
    out_dir: Path,
    run_dir: Path,
    log_dir: Path | None,
    callbacks: list | None = None,
) -> dict | None:
    """Fit model ``name`` and export its best checkpoint to ``out_dir``.

    Args:
        name: registered model name.
        section: the typed ``models.<name>`` params.
        seed: global seed (weights, shuffling, augmentation).
        data_dir: prepared dataset directory.
        out_dir: final artifact directory (``models/<name>``), replaced atomically.
        run_dir: scratch directory for ``checkpoints/last.ckpt``; a re-run with the same params
            resumes from it.
        log_dir: dvclive directory for training curves, or ``None`` for no logger.
        callbacks: extra Lightning callbacks.

    Returns:
        The training summary on the main process, ``None`` on other DDP ranks.
    """
    spec = get_model(name)
    L.seed_everything(seed, workers=True, verbose=False)
    dm = spec.datamodule(section, data_dir, seed)
    module = spec.module(**spec.module_kwargs(section, dm))
    fp = fingerprint(name, section, seed, dm.meta)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = _resume_checkpoint(run_dir, fp)
    logger = False
    if log_dir is not None:
        from dvclive.lightning import DVCLiveLogger

        if resume is None and _is_launcher_process():
            shutil.rmtree(log_dir, ignore_errors=True)
        logger = DVCLiveLogger(
            dir=str(log_dir), dvcyaml=False, save_dvc_exp=False, resume=resume is not None
        )
    ckpt_cb = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=spec.monitor,
        mode=spec.mode,
        save_last=True,
        enable_version_counter=False,
    )
    callbacks = [ckpt_cb, *spec.callbacks(section, dm, seed), *(callbacks or [])]
    callbacks += [LearningRateMonitor("step")] if logger else []
    options = section.trainer.model_dump()
    device = accelerator_device(options["accelerator"])
    options["precision"] = resolve_precision(options["precision"], device)  # auto: bf16 if native
    if options["enable_progress_bar"] and not sys.stderr.isatty():  # a log file, CI: lines
        options["enable_progress_bar"] = False
        callbacks.append(ProgressLines(name))
    trainer = L.Trainer(
        **options,
        logger=logger,
        callbacks=callbacks,
        default_root_dir=str(run_dir),
    )
    start = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None)
    fit_time = time.perf_counter() - start
    if not trainer.is_global_zero:
        return None
    best = Path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else None
    if best is None or not best.is_file():
        raise CheckpointError(f"{run_dir}: training produced no checkpoint (no validation ran?)")
    score = ckpt_cb.best_model_score
    info = {
        "train_time_s": round(fit_time, 1),
        "epochs": trainer.current_epoch,
        "global_steps": trainer.global_step,
        "best_" + spec.monitor: None if score is None else round(float(score), 6),
        "resumed_from": str(resume) if resume else None,
        "params": sum(p.numel() for p in module.parameters()),
        "device": str(trainer.strategy.root_device),
        "precision": options["precision"],
        "world_size": trainer.world_size,
        "fingerprint": fp,
    }
    best_module = type(module).load_from_checkpoint(best, map_location="cpu", weights_only=True)
    export_model(best_module, name, best, out_dir, info, artifacts_dir(trainer))
    shutil.rmtree(run_dir, ignore_errors=True)  # finished: the next run starts fresh
    return info


def device_summary() -> str:
    """A short description of the compute this process can see."""
    if torch.cuda.is_available():
        return f"cuda x{torch.cuda.device_count()} ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads)"
