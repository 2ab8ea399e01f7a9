"""Sample quality of the generative models (``vae``, ``gan``) at evaluation: FID, KID, Inception
Score and class coverage (``SampleScorer``), and improved precision and recall, against the
test split, with the real-vs-real floor beside them.

Precision and recall (Kynkäänniemi et al., 2019) separate what FID mixes: precision is the share
of generated images that fall inside the real images' manifold (fidelity), recall the share of
real images inside the generated images' manifold (diversity). Each manifold is the union of
balls around its points, reaching each point's k-th nearest neighbour, in the same classifier
features as FID.
"""

from __future__ import annotations

import torch
from torch import nn

from sightline.models.generative import SampleScorer, generate_uint8, load_classifier, subset
from sightline.progress import progress

NEIGHBOURS = 3  # k of the k-NN balls, as in the paper


def knn_radii(x: torch.Tensor, k: int, chunk: int = 1000) -> torch.Tensor:
    """Distance from each row of ``x`` ``(N, D)`` to its ``k``-th nearest other row: ``(N,)``."""
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in x.split(chunk)])


def manifold_share(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``points`` within ``radii`` of at least one of ``centres``."""
    inside = [(torch.cdist(c, centres) <= radii).any(1) for c in points.split(1000)]
    return float(torch.cat(inside).float().mean())


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = NEIGHBOURS) -> dict:
    """Improved precision and recall of ``fake`` against ``real`` features (``(N, D)`` each).

    Returns:
        ``{"precision", "recall"}``, each in [0, 1].
    """
    real, fake = real.double(), fake.double()
    return {
        "precision": manifold_share(fake, real, knn_radii(real, k)),
        "recall": manifold_share(real, fake, knn_radii(fake, k)),
    }


def _scores(scorer: SampleScorer, seed: int) -> dict:
    out = scorer.compute(seed)
    return out | precision_recall(scorer.features(real=True), scorer.features(real=False))


def real_floor(
    classifier: nn.Module,
    first: torch.Tensor,
    second: torch.Tensor,
    kid_subsets: int,
    kid_subset_size: int,
    batch_size: int,
    seed: int,
) -> dict:
    """Every score between two sets of real uint8 images (e.g. validation vs test): what a
    perfect generator would reach with this many samples."""
    scorer = SampleScorer(classifier, kid_subsets, kid_subset_size)
    for images, real in ((first, True), (second, False)):
        for batch in images.split(batch_size):
            scorer.update(batch, real=real)
    return _scores(scorer, seed)


def score_generator(module, dm, upstream: str, score, seed: int) -> tuple[dict, torch.Tensor]:
    """Sample-quality metrics of a generative model against the test split, its FID against
    the validation split (``val/fid``, for ranking experiments), and the floor.

    The same number ``N`` of images is used on every side: ``N`` generated vs ``N`` test, and
    ``N`` validation vs ``N`` test for the real-vs-real floor (FID is biased by ``N``).

    Returns:
        ``(metrics, generated uint8 images)``.
    """
    val, test = dm.split("val").tensors[0], dm.split("test").tensors[0]
    n = min(score.samples, len(val), len(test))
    clf = load_classifier(upstream, dm.class_names, dm.preprocess, module.device)
    size = min(score.kid_subset_size, n)
    real_test, real_val = subset(test, n, seed), subset(val, n, seed)
    fake = generate_uint8(module, n, score.batch_size, seed)
    scorer = SampleScorer(clf, score.kid_subsets, size)
    batches = [(b, True) for b in real_test.split(score.batch_size)]
    batches += [(b, False) for b in fake.split(score.batch_size)]
    for batch, real in progress(batches, "scoring real and generated images", unit="batches"):
        scorer.update(batch, real=real)
    gen = _scores(scorer, seed)
    # The same samples against validation images: what experiments are ranked by.
    val_scorer = SampleScorer(clf, full=False)
    for batch in real_val.split(score.batch_size):
        val_scorer.update(batch, real=True)
    for batch in fake.split(score.batch_size):
        val_scorer.update(batch, real=False)
    floor = real_floor(clf, real_test, real_val, score.kid_subsets, size, score.batch_size, seed)
    names = dm.class_names
    metrics = {
        "val/fid": val_scorer.compute()["fid"],
        "fid": gen["fid"],
        "kid": gen["kid"],
        "kid_std": gen["kid_std"],
        "inception_score": gen["inception_score"],
        "inception_score_std": gen["inception_score_std"],
        "precision": gen["precision"],
        "recall": gen["recall"],
        "classes_covered": gen["classes_covered"],
        "num_classes": len(names),
        "class_counts": dict(zip(names, gen["class_counts"], strict=True)),
        "samples": n,
        "kid_subset_size": size,
        "neighbours": NEIGHBOURS,
        "feature_extractor": "classifier (penultimate layer)",
        "real_floor": {
            "fid": floor["fid"],
            "kid": floor["kid"],
            "inception_score": floor["inception_score"],
            "precision": floor["precision"],
            "recall": floor["recall"],
            "class_counts": dict(zip(names, floor["class_counts"], strict=True)),
        },
    }
    return _rounded(metrics), fake


def _rounded(d: dict) -> dict:
    return {
        k: _rounded(v) if isinstance(v, dict) else round(v, 6) if isinstance(v, float) else v
        for k, v in d.items()
    }
