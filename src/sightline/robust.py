"""Adversarial risk: robust accuracy under L-infinity FGSM and PGD (captum.robust), and the
transfer of perturbations crafted on one network to another.

Every attack works on images in [0, 1] (``forward`` normalises them as the model's training
did), so epsilon is in pixel units: 8/255 moves each channel of each pixel by at most 8 grey
levels. captum is the attack library: it is maintained with PyTorch, takes any callable as the
model, clamps to the pixel range and has both attacks; torchattacks and ART would add a second
framework's conventions for the same two loops.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from pydantic import Field

from sightline.config import Strict

Forward = Callable[[torch.Tensor], torch.Tensor]  # images in [0, 1] -> logits


def attack(
    forward: Forward, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int
) -> torch.Tensor:
    """Untargeted L-infinity adversarial images within ``eps`` of ``x`` (in [0, 1]).

    ``steps`` 1 is FGSM; more is PGD from a random start with step 2.5 eps / steps (Madry et
    al.). The caller seeds torch's generator for the random start.
    """
    from captum.robust import FGSM, PGD

    x = x.detach().requires_grad_(True)
    with warnings.catch_warnings():
        # captum's PGD hands each step's detached images to FGSM, which warns every step that
        # it had to turn their gradients on (it does so correctly)
        warnings.filterwarnings("ignore", "Input Tensor 0 did not already require gradients")
        if steps == 1:
            return FGSM(forward, lower_bound=0.0, upper_bound=1.0).perturb(x, eps, y)
        pgd = PGD(forward, lower_bound=0.0, upper_bound=1.0)
        return pgd.perturb(x, eps, 2.5 * eps / steps, steps, y, random_start=True, norm="Linf")


def _predict(forward: Forward, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat(
            [forward(x[i : i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)]
        )


def robust_accuracy(
    forward: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: Sequence[float],
    steps: int,
    batch_size: int = 64,
    seed: int = 0,
) -> dict:
    """Accuracy of ``forward`` on ``x`` (in [0, 1]) clean, under FGSM and under PGD-``steps``
    at each ``eps`` (ascending), and the PGD adversarial images at the largest.

    An image counts as robust at ``eps`` only if it survives the attack at every ``eps`` up to
    it: an adversarial image found at a smaller radius lies inside every larger ball. So each
    radius attacks only the survivors of the one before, which also saves their cost.

    Returns:
        ``{"clean": acc, "fgsm": {eps: acc}, "pgd": {eps: acc}, "adversarial": x_adv,
        "predicted": predictions on x_adv, "radius": the eps at which PGD broke each image
        (0: never)}``.
    """
    torch.manual_seed(seed)
    n = len(x)
    out: dict = {"clean": 0.0, "fgsm": {}, "pgd": {}}
    correct = _predict(forward, x, batch_size) == y
    out["clean"] = float(correct.float().mean())
    adversarial, radius = x.clone(), torch.zeros(n)
    for name, k in (("fgsm", 1), ("pgd", steps)):
        alive = correct.clone()
        for e in sorted(eps):
            idx = torch.nonzero(alive).flatten()
            for i in range(0, len(idx), batch_size):
                b = idx[i : i + batch_size]
                adv = attack(forward, x[b], y[b], e, k).detach()
                broken = _predict(forward, adv, batch_size) != y[b]
                alive[b[broken]] = False
                if name == "pgd":
                    adversarial[b[broken]] = adv[broken]
                    radius[b[broken]] = e
            out[name][e] = float(alive.float().sum() / n)
    out["adversarial"], out["radius"] = adversarial, radius
    out["predicted"] = _predict(forward, adversarial, batch_size)
    return out


def transfer_success(
    source: Forward,
    target: Forward,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    batch_size: int = 32,
    seed: int = 0,
) -> dict:
    """Black-box transfer: PGD on ``source`` against its own clean predictions (it needs no
    labels, no access to ``target``), then the share of the images ``target`` classified
    correctly that it now gets wrong; beside it, the same for uniform random-sign noise of the
    same ``eps`` (what any perturbation of that size does)."""
    torch.manual_seed(seed)
    own = _predict(source, x, batch_size)
    correct = _predict(target, x, batch_size) == y
    flipped = noise_flipped = 0
    for i in range(0, len(x), batch_size):
        xb, yb, ok = x[i : i + batch_size], y[i : i + batch_size], correct[i : i + batch_size]
        adv = attack(source, xb, own[i : i + batch_size], eps, steps).detach()
        flipped += int(((_predict(target, adv, batch_size) != yb) & ok).sum())
        noise = (xb + eps * torch.randint_like(xb, 2).mul(2).sub(1)).clamp(0, 1)
        noise_flipped += int(((_predict(target, noise, batch_size) != yb) & ok).sum())
    base = max(int(correct.sum()), 1)
    return {
        "n": len(x),
        "target_correct": int(correct.sum()),
        "success": round(flipped / base, 6),
        "noise_success": round(noise_flipped / base, 6),
    }


class AttackConfig(Strict):
    """``models.<name>.attack``: the adversarial evaluation of an image classifier.

    ``n`` test images (a seeded subset, the same number per class) are attacked at each ``eps``
    (in 255ths of the pixel range) with FGSM and with PGD of ``steps`` steps.
    """

    n: int = Field(500, ge=0)  # 0: no adversarial evaluation
    eps: list[float] = Field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0], min_length=1)
    steps: int = Field(20, ge=2)
    batch_size: int = Field(100, gt=0)
