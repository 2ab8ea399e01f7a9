"""Evaluation of ``vae``: test negative ELBO and its parts, active units, sample quality, pictures."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.distributions import Normal

from sightline.data.splits import cap_per_class
from sightline.metrics.generative import score_generator
from sightline.progress import progress
from sightline.spec import EvaluationSpec
from sightline.viz.figures import class_counts_figure, image_rows, sample_grid, scatter_figure

ACTIVE_THRESHOLD = 0.01  # a latent unit is active when Var_x(E_q[z_u | x]) > 0.01 (Burda et al.)
LIKELIHOODS = {
    "continuous_bernoulli": "continuous Bernoulli density on [0, 1] per pixel (nats; a density, so the NELBO can be negative)",
    "bernoulli": "Bernoulli per pixel with grey values as soft targets (nats)",
}


@torch.no_grad()
def split_terms(
    module, dm, seed: int, split: str = "test"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(recon, kl, mu, labels)`` over a split (``"val"`` or ``"test"``); one seeded posterior
    sample per image."""
    L.seed_everything(seed, verbose=False)
    recon, kl, mus, labels = [], [], [], []
    loader = dm.val_dataloader() if split == "val" else dm.test_dataloader()
    for x, y in loader:
        x = dm.preprocess.normalize(x.to(module.device))
        r, k, mu = module.terms(x)
        recon.append(r.cpu())
        kl.append(k.cpu())
        mus.append(mu.float().cpu())
        labels.append(y)
    return torch.cat(recon), torch.cat(kl), torch.cat(mus), torch.cat(labels)


@torch.no_grad()
def iwae_nll(module, x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """The importance-weighted bound on -log p(x) (Burda et al., 2016), per image, in nats.

    -log p(x) <= -log (1/k) sum_i p(x | z_i) p(z_i) / q(z_i | x), z_i ~ q(z | x): k = 1 is the
    ELBO (with a sampled KL), and the bound tightens towards -log p(x) as k grows.

    Args:
        x: images ``(B, C, H, W)`` in [0, 1] on the module's device.
        k: posterior samples per image, decoded in chunks of at most 1,000.
        generator: a CPU generator for the samples.

    Returns:
        ``(B,)`` bounds.
    """
    mu, logvar = module.net.encode(x)
    posterior = Normal(mu.float(), (0.5 * logvar.float()).exp())
    out = []
    for i in range(len(x)):
        log_w = []
        for start in range(0, k, 1000):
            eps = torch.randn(min(1000, k - start), mu.shape[1], generator=generator)
            q = Normal(posterior.loc[i], posterior.scale[i])
            z = q.loc + q.scale * eps.to(x.device)  # (c, D)
            log_px = -module.reconstruction_nll(
                module.net.decode(z), x[i].expand(len(z), *x.shape[1:])
            )
            log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_w.append(log_px + log_pz - q.log_prob(z).sum(-1))
        out.append(math.log(k) - torch.logsumexp(torch.cat(log_w), 0))
    return torch.stack(out).cpu()


def iwae_metrics(module, dm, nelbo: torch.Tensor, labels: torch.Tensor, cfg, seed: int) -> dict:
    """``test/iwae_nll`` on a seeded, class-balanced test subset of ``cfg.images``, with the
    ELBO of the same images beside it (``{}`` when ``cfg.images`` is 0)."""
    if cfg.images == 0:
        return {}
    idx = cap_per_class(labels.numpy(), max(1, cfg.images // len(dm.class_names)), seed)
    images = dm.preprocess.normalize(dm.split("test").tensors[0][idx].to(module.device))
    g = torch.Generator().manual_seed(seed)
    what = f"IWAE bound, k = {cfg.samples}"
    rows = progress(range(len(images)), what, unit="images")
    bound = torch.cat([iwae_nll(module, images[i : i + 1], cfg.samples, g) for i in rows])
    return {
        "test/iwae_nll": round(float(bound.mean()), 4),
        "test/iwae_nelbo": round(float(nelbo[idx].mean()), 4),
        "test/iwae_k": cfg.samples,
        "test/iwae_n": len(idx),
    }


def _pca_2d(x: torch.Tensor) -> tuple[np.ndarray, list[float]]:
    """Project rows onto their two principal axes; also the explained variance fractions."""
    x = x.double() - x.double().mean(0)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    var = (s**2) / (s**2).sum()
    return (x @ v[:2].T).numpy(), [round(float(f), 4) for f in var[:2]]


def _interpolation_rows(module, dm, labels: torch.Tensor, pairs: list[tuple[int, int]], steps: int):
    images = dm.split("test").tensors[0]
    rows, names = [], []
    for a, b in pairs:
        i, j = (int(torch.nonzero(labels == c)[0]) for c in (a, b))
        x = dm.preprocess.normalize(images[[i, j]].to(module.device))
        rows.append(module.interpolate(x[0], x[1], steps).cpu().numpy())
        names.append(f"{dm.class_names[a]}\n-> {dm.class_names[b]}")
    return rows, names


@torch.no_grad()
def evaluate_vae(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics dict plus pictures in ``report_dir``: reconstructions, prior samples,
    interpolations, the latent space coloured by class and the class coverage of samples."""
    report_dir = Path(report_dir)
    classes = dm.class_names
    val_recon, val_kl, _, _ = split_terms(module, dm, seed, "val")
    recon, kl, mu, labels = split_terms(module, dm, seed)
    active = int((mu.var(0) > ACTIVE_THRESHOLD).sum())
    nelbo = float((recon + kl).mean())
    bound = iwae_metrics(module, dm, recon + kl, labels, section.iwae, seed)
    scores, fake = score_generator(module, dm, section.upstream, section.score, seed)

    x_test = dm.split("test").tensors[0]
    picks = torch.cat([torch.nonzero(labels == c)[:2, 0] for c in range(len(classes))])
    x = dm.preprocess.normalize(x_test[picks].to(module.device))
    image_rows(
        [x.cpu().numpy(), module.reconstruct(x).cpu().numpy()],
        report_dir / "reconstructions.png",
        ["input", "recon"],
        f"vae: test images and their reconstructions (test NELBO {nelbo:.1f} nats)",
    )
    sample_grid(
        fake[:64],
        report_dir / "samples.png",
        f"vae: samples from the prior N(0, I) (FID {scores['fid']:.2f} on classifier features)",
    )
    pairs = [(0, len(classes) - 1), (1, len(classes) // 2), (2, 5)]
    rows, names = _interpolation_rows(module, dm, labels, pairs, steps=10)
    image_rows(
        rows,
        report_dir / "interpolation.png",
        names,
        "vae: decoding the line between two test images' latent means",
    )
    points, var = _pca_2d(mu)
    scatter_figure(
        points,
        labels.numpy(),
        classes,
        report_dir / "latent_space.png",
        f"vae: test-set latent means (z = {mu.shape[1]}-D), first two principal components",
        (f"PC1 ({var[0]:.0%} of variance)", f"PC2 ({var[1]:.0%})"),
    )
    class_counts_figure(
        {
            "vae samples": list(scores["class_counts"].values()),
            "real (validation)": list(scores["real_floor"]["class_counts"].values()),
        },
        classes,
        report_dir / "class_coverage.png",
        f"vae: classifier's labels for {scores['samples']} samples ({scores['classes_covered']}/{len(classes)} classes covered)",
    )
    return {
        "likelihood": section.model.likelihood,
        "likelihood_note": LIKELIHOODS[section.model.likelihood],
        "val/nelbo": round(float((val_recon + val_kl).mean()), 4),
        "test/nelbo": round(nelbo, 4),
        "test/recon": round(float(recon.mean()), 4),
        "test/kl": round(float(kl.mean()), 4),
        "test/n": len(labels),
        **bound,
        "latent/dim": int(mu.shape[1]),
        "latent/active_units": active,
        **scores,
    }


EVALUATION = EvaluationSpec(
    evaluate=evaluate_vae,
    selection=("val/nelbo", "min"),
    test="test/nelbo",
    headline=("test/nelbo", "test/iwae_nll", "fid", "latent/active_units"),
    pictures=("reconstructions.png", "samples.png", "interpolation.png"),
)
