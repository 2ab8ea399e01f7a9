"""Train one registered model: seeded, resumable from ``last.ckpt``, exported atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

from sightline.config import ModelParams
from sightline.errors import CheckpointError
from sightline.io import atomic_dir, write_json
from sightline.registry import get_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CKPT_FILE = "best.ckpt"
TRAIN_INFO_FILE = "train.json"
ARTIFACTS = "artifacts"  # files callbacks write during training; exported with the model


def artifacts_dir(trainer: L.Trainer) -> Path:
    """Where callbacks keep training-time files (e.g. per-epoch samples) that ship with the model.

    It lives in the run directory, so a resumed run keeps the files of earlier epochs.
    """
    return Path(trainer.default_root_dir) / ARTIFACTS


def fingerprint(name: str, section: ModelParams, seed: int, data_meta: dict) -> str:
    """Hash of everything that defines a run; a resumed run must match it exactly."""
    blob = json.dumps(
        {"name": name, "section": section.model_dump(mode="json"), "seed": seed, "data": data_meta},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _is_launcher_process() -> bool:
    # Lightning's DDP launcher re-runs the script with LOCAL_RANK/NODE_RANK set for the
    # other ranks; only the first process may clean or reuse the run directory.
    return os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"


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
    module: L.LightningModule, name: str, ckpt: Path, out_dir: Path, info: dict,
    artifacts: Path | None = None,
) -> None:  # fmt: skip
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
    name: str, section: ModelParams, seed: int, data_dir: Path, out_dir: Path, run_dir: Path,
    log_dir: Path | None, callbacks: list | None = None,
) -> dict | None:  # fmt: skip
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
        dirpath=run_dir / "checkpoints", filename="best", monitor=spec.monitor, mode=spec.mode, save_last=True,
        enable_version_counter=False,
    )  # fmt: skip
    callbacks = [ckpt_cb, *spec.callbacks(section, dm, seed), *(callbacks or [])]
    callbacks += [LearningRateMonitor("step")] if logger else []
    trainer = L.Trainer(**section.trainer.model_dump(), logger=logger, callbacks=callbacks, default_root_dir=str(run_dir))  # fmt: skip
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
