"""Learning-rate schedules shared by models."""

from __future__ import annotations

import math

import torch


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int) -> dict:
    """Linear warmup over ``warmup_steps``, then cosine decay to zero at ``total_steps``.

    Returns:
        Lightning's ``lr_scheduler`` config: a per-step ``LambdaLR``.
    """
    total, warm = max(1, int(total_steps)), warmup_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "interval": "step"}
