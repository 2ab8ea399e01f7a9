"""Stage ``train@<model>``: fit one model, export models/<model>/ (ckpt + safetensors).

With ``trainer.num_nodes`` > 1 the stage is torchrun for its node: it starts ``devices``
worker processes (torch's elastic launcher, static rendezvous at ``MASTER_ADDR:MASTER_PORT``,
this node's ``NODE_RANK``) and waits for all of them. Launched by torchrun or srun instead, it
is one worker. Only global rank 0 writes ``models/``, ``dvclive/`` and the run's checkpoints;
a process lost on any node fails the stage on every node with one line, and running it again
resumes from ``runs/<model>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import common

TRIAL_ENV = "SIGHTLINE_SWEEP_TRIAL"  # set by pipeline/sweep.py for a trial's stage
LAUNCHED = ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_STEP_ID")  # a launcher started us


def launch_node(model: str, trainer) -> None:
    """Run this script on ``trainer.devices`` local workers of a ``trainer.num_nodes``-node job."""
    import logging

    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from sightline.errors import ConfigError, SightlineError

    missing = [key for key in ("MASTER_ADDR", "NODE_RANK") if key not in os.environ]
    if missing:
        raise ConfigError(
            f"models.{model}.trainer.num_nodes is {trainer.num_nodes}: set {' and '.join(missing)} "
            "on every node (MASTER_PORT too, default 29500), or launch with torchrun or srun"
        )
    devices = trainer.devices
    if not isinstance(devices, int) or devices < 1:
        devices = torch.cuda.device_count() if torch.cuda.is_available() else 1
    node = int(os.environ["NODE_RANK"])
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # we say it once
    config = LaunchConfig(
        min_nodes=trainer.num_nodes,
        max_nodes=trainer.num_nodes,
        nproc_per_node=devices,
        run_id=f"sightline-{model}",
        rdzv_backend="static",
        rdzv_endpoint=f"{os.environ['MASTER_ADDR']}:{os.environ.get('MASTER_PORT', '29500')}",
        rdzv_configs={"rank": node},
        max_restarts=0,
    )
    try:
        elastic_launch(config, sys.executable)(*sys.argv)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        rank = node * devices + failure.local_rank
        if failure.exitcode == 2:  # the worker printed its own one-line error
            sys.exit(2)
        how = (
            f"was killed by {signal.Signals(-failure.exitcode).name}"
            if failure.exitcode < 0
            else f"exited with code {failure.exitcode}"
        )
        raise SightlineError(
            f"train@{model}: rank {rank} (node {node}) {how}; run the stage again on every node "
            f"to resume from {common.RUNS / model / 'checkpoints/last.ckpt'}"
        ) from None


def lost_peer(err: RuntimeError) -> str | None:
    """The first sentence of a collective's failure when another process is gone, else None."""
    text = str(err)
    if not any(word in text for word in ("Connection closed by peer", "Connection reset", "NCCL")):
        return None
    return text.split("] ", 1)[-1].split(". ", 1)[0]


def main() -> None:
    args, params, section = common.model_stage(__doc__.splitlines()[0])
    if section.trainer.num_nodes > 1 and not any(key in os.environ for key in LAUNCHED):
        return launch_node(args.model, section.trainer)

    from sightline.training import device_summary, train

    data_dir = common.PREPARED / section.data.dataset
    print(f"training {args.model} on {section.data.dataset}; visible compute: {device_summary()}")
    callbacks = []
    if os.environ.get(TRIAL_ENV):  # a sweep's trial: report the validation metric, may be pruned
        from sightline.sweeps import TrialReporter

        callbacks.append(TrialReporter.from_spec(os.environ[TRIAL_ENV]))
    try:
        info = train(
            args.model,
            section,
            params.seed,
            data_dir,
            common.MODELS / args.model,
            common.RUNS / args.model,
            common.LIVE / args.model,
            callbacks,
        )
    except RuntimeError as err:
        if (why := lost_peer(err)) is None:
            raise
        from sightline.errors import SightlineError

        rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
        raise SightlineError(
            f"train@{args.model}: rank {rank} lost another process ({why}); run the stage again "
            f"on every node to resume from {common.RUNS / args.model / 'checkpoints/last.ckpt'}"
        ) from None
    if info is not None:
        print(json.dumps(info, indent=2))


if __name__ == "__main__":
    common.run(main)
