"""The operating point: a temperature fitted on validation logits, and the threshold that
flags at most a given share of validation ham."""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def fit_temperature(
    logits: torch.Tensor, labels: torch.Tensor, low: float = 0.05, high: float = 20.0
) -> float:
    """The temperature ``T`` in ``[low, high]`` minimising the log loss of
    ``sigmoid(logits / T)``: the best of 801 log-spaced values (steps of 0.75%). A search, not a
    gradient method: on logits that separate the classes perfectly the loss falls towards
    ``T = 0`` and an unbounded optimiser diverges."""
    logits, labels = logits.detach().double().cpu(), labels.double().cpu()
    temps = torch.logspace(math.log10(low), math.log10(high), 801, dtype=torch.float64)
    z = logits.unsqueeze(0) / temps.unsqueeze(1)
    loss = F.binary_cross_entropy_with_logits(z, labels.expand_as(z), reduction="none").mean(1)
    return float(temps[int(loss.argmin())])


def best_threshold(probs: torch.Tensor, labels: torch.Tensor, max_ham_fpr: float = 0.01) -> float:
    """The lowest probability threshold (spam when ``p >= threshold``) that calls at most
    ``max_ham_fpr`` of the ham in ``(probs, labels)`` spam.

    It rests on the ham alone (400 messages in the earlier collection's validation split, not
    its 49 spam) and does not depend on the share of spam, which moves between collections (13%
    in the earlier, 43% in the later). Youden's J, tried first, is flat wherever validation
    separates the classes and its first maximum then sits just under the lowest-scored spam.
    """
    ham = probs.float()[labels == 0].sort(descending=True).values
    if not len(ham):
        return 0.5
    allowed = int(math.floor(max_ham_fpr * len(ham) + 1e-9))  # ham that may score >= threshold
    if allowed >= len(ham):
        return 0.0
    return float(torch.nextafter(ham[allowed], torch.tensor(2.0)).clamp(0.0, 1.0))
