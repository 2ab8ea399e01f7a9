"""Shared by the generative models: request checks, and sample quality on the project's own
classifier (FID, KID, Inception Score, mode coverage; evaluation adds precision and recall in
``sightline.metrics.generative``).

Inception weights cannot be downloaded offline, so the feature extractor is the trained
``classifier`` (its penultimate layer for FID/KID, its logits for the Inception Score). These
numbers compare models within this project; they are not comparable with Inception-based FID.

Every image enters as uint8 ``(B, C, H, W)``: generated images are quantised exactly as if they
were saved as PNG, and real and generated images go through the classifier's own preprocessing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from sightline.errors import CheckpointError, ConfigError, InputError
from sightline.progress import progress

COVERAGE_SHARE = 0.1  # a class is covered when it gets >= 10% of its share under uniform


def check_count(n: int, maximum: int, what: str = "images") -> int:
    """``n`` when ``1 <= n <= maximum``; otherwise an ``InputError`` saying the allowed range."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise InputError(f"number of {what} must be an integer, got {n!r}")
    if not 1 <= n <= maximum:
        raise InputError(f"number of {what} must be between 1 and {maximum}, got {n}")
    return n


def check_downsampling(
    size: tuple[int, int], stages: int, key: str, dataset: str
) -> tuple[int, int]:
    """The smallest feature map ``(h, w)`` after ``stages`` halvings of ``size``.

    Raises ``ConfigError`` naming ``key`` when the image sides are not divisible by
    ``2**stages`` (a transposed-conv stack could not give the image size back).
    """
    f = 2**stages
    if size[0] % f or size[1] % f:
        raise ConfigError(
            f"{key}: {stages} stride-2 stages need image sides divisible by {f}, but {dataset} "
            f"images are {size[0]}x{size[1]}; use fewer stages"
        )
    return size[0] // f, size[1] // f


def image_datamodule(data, data_dir, seed: int, pixel_range: tuple[float, float]):
    """The image DataModule with pixels scaled to ``pixel_range`` instead of standardised:
    (0, 1) for a likelihood over [0, 1], (-1, 1) for a tanh generator."""
    from sightline.data.images import ImageDataModule
    from sightline.data.preprocess import ImagePreprocess

    dm = ImageDataModule(
        data_dir,
        data.batch_size,
        data.eval_batch_size,
        data.num_workers,
        data.augment.model_dump(),
        data.train_subset,
        seed,
    )
    lo, hi = pixel_range
    p = dm.preprocess  # normalize() computes (x / 255 - mean) / std
    dm.preprocess = ImagePreprocess(
        p.channels, p.size, (-lo / (hi - lo),) * p.channels, (1 / (hi - lo),) * p.channels
    )
    return dm


def samples_to_pil(images: torch.Tensor) -> list:
    """Images in [0, 1] ``(B, C, H, W)`` -> PIL images (grey or RGB), quantised as a PNG."""
    from sightline.data.decode import to_pil

    return [to_pil(a) for a in quantize(images).cpu().numpy()]


def draw_latents(module, n: int, generator: torch.Generator | None, check: bool) -> torch.Tensor:
    """``n`` latent vectors z ~ N(0, I) ``(n, latent_dim)`` on the module's device, drawn on the
    CPU from ``generator`` so a seed gives the same images on any device.

    ``check`` enforces ``1 <= n <= module.hparams.max_samples`` (``InputError``).
    """
    if check:
        check_count(n, module.hparams.max_samples)
    return torch.randn(n, module.hparams.latent_dim, generator=generator).to(module.device)


def quantize(x01: torch.Tensor) -> torch.Tensor:
    """Float images in [0, 1] -> uint8, rounded as a PNG writer would."""
    return (x01.clamp(0, 1) * 255).round().to(torch.uint8)


class ClassifierFeatures(nn.Module):
    """uint8 images ``(B, C, H, W)`` -> the classifier's features ``(B, D)`` or logits ``(B, K)``.

    Frozen and always in eval mode; torchmetrics reads ``num_features``.
    """

    def __init__(self, classifier: nn.Module, output: str = "features") -> None:
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self.output = output
        net = classifier.net
        self.num_features = net.out.in_features if output == "features" else net.out.out_features

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # BatchNorm statistics and dropout stay frozen

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.classifier.preprocess.normalize(images)
        net = self.classifier.net
        if self.classifier.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = net.features(x).float()
        return feats if self.output == "features" else net.out(feats).float()


def load_classifier(path: str | Path, class_names: list[str], preprocess, device) -> nn.Module:
    """The trained classifier at ``path``, checked to fit the images it will score.

    Args:
        path: a ``models/classifier`` directory (``upstream`` in the generative models' params).
        class_names: the classes of the generative model's dataset.
        preprocess: the generative model's ``ImagePreprocess`` (channels and size must match).
        device: where to run it.
    """
    from sightline.artifacts import read_checkpoint, rebuild
    from sightline.models.classifier import ClassifierModule

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: no trained classifier to score samples with; run `dvc repro train@classifier`"
        )
    name, hparams, state = read_checkpoint(path)
    if name != "classifier":
        raise CheckpointError(f"{path}: holds model {name!r}, not the classifier")
    clf = rebuild(ClassifierModule, hparams, state, path, "classifier").eval().to(device)
    theirs = clf.preprocess
    if list(clf.hparams.class_names) != list(class_names) or (
        theirs.channels,
        tuple(theirs.size),
    ) != (preprocess.channels, tuple(preprocess.size)):
        raise CheckpointError(
            f"{path}: classifier was trained on other images ({theirs.channels}x{theirs.size[0]}x"
            f"{theirs.size[1]}, classes {clf.hparams.class_names[:3]}...); train it on the same "
            "dataset as the generative model (models.classifier.data.dataset)"
        )
    return clf


class SampleScorer:
    """Accumulates real and generated uint8 images; ``compute`` gives every score at once.

    Args:
        classifier: the trained ``ClassifierModule`` (see ``load_classifier``).
        kid_subsets, kid_subset_size: KID's random subsets; the size must not exceed the
            number of images on either side.
        full: also compute KID and the Inception Score (evaluation); checkpoint selection
            during training needs FID only.
    """

    def __init__(
        self,
        classifier: nn.Module,
        kid_subsets: int = 100,
        kid_subset_size: int = 1000,
        full: bool = True,
    ) -> None:
        self.device = next(classifier.parameters()).device
        features = ClassifierFeatures(classifier, "features")
        self.logits = ClassifierFeatures(classifier, "logits")
        self.fid = FrechetInceptionDistance(features, reset_real_features=False).to(self.device)
        self.kid = self.inception = None
        if full:
            warnings.filterwarnings(
                "ignore",
                message="Metric `(Kernel Inception Distance|InceptionScore)` will save all extracted features",
            )
            self.kid = KernelInceptionDistance(
                features,
                subsets=kid_subsets,
                subset_size=kid_subset_size,
                reset_real_features=False,
            ).to(self.device)
            self.inception = InceptionScore(self.logits, splits=10).to(self.device)
        self.fake_counts = torch.zeros(self.logits.num_features, dtype=torch.long)

    def update(self, images: torch.Tensor, real: bool) -> None:
        """Add a batch of uint8 images ``(B, C, H, W)``."""
        images = images.to(self.device)
        self.fid.update(images, real=real)
        if self.kid is not None:
            self.kid.update(images, real=real)
        if real:
            return
        predicted = self.logits(images).argmax(-1).cpu()
        self.fake_counts += torch.bincount(predicted, minlength=len(self.fake_counts))
        if self.inception is not None:
            self.inception.update(images)

    def features(self, real: bool) -> torch.Tensor:
        """The classifier features ``(N, D)`` of every image added so far on one side (kept by
        KID; needs ``full``): for precision and recall on the same features."""
        if self.kid is None:
            raise ValueError("features are kept only by a full SampleScorer")
        kept = self.kid.real_features if real else self.kid.fake_features
        return torch.cat(kept).float()

    def reset_fake(self) -> None:
        """Forget the generated images, keep the real ones (one FID per validation epoch)."""
        for metric in (self.fid, self.kid, self.inception):
            if metric is not None:
                metric.reset()
        self.fake_counts.zero_()

    def compute(self, seed: int = 0) -> dict:
        """FID, and with ``full`` KID (mean, std), Inception Score (mean, std), per-class counts
        of the generated images and how many classes they cover."""
        out = {"fid": float(self.fid.compute())}
        if self.kid is not None:
            L.seed_everything(seed, verbose=False)  # KID and IS draw random subsets
            kid_mean, kid_std = self.kid.compute()
            is_mean, is_std = self.inception.compute()
            out.update(
                {
                    "kid": float(kid_mean),
                    "kid_std": float(kid_std),
                    "inception_score": float(is_mean),
                    "inception_score_std": float(is_std),
                }
            )
        counts = self.fake_counts.tolist()
        floor = COVERAGE_SHARE * sum(counts) / len(counts)
        out.update({"class_counts": counts, "classes_covered": sum(c >= floor for c in counts)})
        return out


@torch.no_grad()
def generate_uint8(module, n: int, batch_size: int, seed: int) -> torch.Tensor:
    """``n`` images ``(n, C, H, W)`` uint8 from ``module.sample`` in seeded batches (CPU)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in progress(range(0, n, batch_size), f"generating {n} images", unit="batches"):
        k = min(batch_size, n - start)
        out.append(quantize(module.sample(k, generator=g, check=False)).cpu())
    return torch.cat(out)


def subset(images: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """A seeded random subset of ``n`` rows (all rows, shuffled, when ``n >= len``)."""
    g = torch.Generator().manual_seed(seed)
    return images[torch.randperm(len(images), generator=g)[:n]]
