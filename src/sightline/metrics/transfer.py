"""Evaluate the transfer model: accuracy on the cached features of the validation and test
splits, robust accuracy through the whole network, the transfer of attacks crafted on the public
ImageNet backbone alone, and what the backbone's channels and the head's classes respond to."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from sightline.metrics.scoring import adversarial_evaluation, classification_metrics
from sightline.models.transfer import load_backbone
from sightline.robust import transfer_success
from sightline.spec import EvaluationSpec
from sightline.viz.dream import channel_images, class_images
from sightline.viz.figures import confusion_matrix_figure, image_grid, image_rows

LAYERS = {"early": 1, "middle": 3, "late": 5}  # backbone stages whose channels are drawn
CHANNELS = 8  # channels drawn per layer


@torch.inference_mode()
def predict(module, dm, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities ``(N, K)`` and labels of one split: the head on its cached features,
    or, when fine-tuned, the whole network on its images."""
    device = next(module.parameters()).device
    probs, labels = [], []
    for x, y in dm._loader(split, False, dm.eval_batch_size):
        x, y = dm.on_after_batch_transfer((x.to(device), y), 0)
        probs.append(module._logits(x).float().softmax(-1).cpu())
        labels.append(y.cpu())
    return torch.cat(probs), torch.cat(labels)


def evaluate_transfer(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics dict plus pictures in ``report_dir``: the confusion matrix, adversarial examples,
    one image per class optimised from noise, and channel visualisations of the backbone."""
    report_dir = Path(report_dir)
    classes = dm.class_names
    val_probs, val_labels = predict(module, dm, "val")
    probs, labels = predict(module, dm, "test")
    m = classification_metrics(probs, labels, classes)
    cm = m.pop("confusion")
    confusion_matrix_figure(
        cm,
        classes,
        report_dir / "confusion_matrix.png",
        f"transfer, test split (n={len(labels)}), accuracy {m['test/acc']:.4f}",
    )
    out = {
        "val/acc": round(float((val_probs.argmax(-1) == val_labels).float().mean()), 6),
        **m,
        "test/n": len(labels),
        "train/per_class": section.data.train_per_class,
        "train/n": len(dm.split("train")),
        "backbone": module.hparams.backbone,
        "finetune_blocks": module.hparams.finetune_blocks,
    }
    prep = module.preprocess
    images, image_labels = _test_images(dm)
    forward = lambda x: module(prep.normalize_unit(x))  # noqa: E731
    a, d = section.attack, section.dream
    with module.full_precision():
        with _part(f"FGSM and PGD-{a.steps} at {len(a.eps)} radii on {a.n} test images"):
            out.update(
                adversarial_evaluation(forward, images, image_labels, classes, a, report_dir, seed)
            )
        with _part(f"PGD-{a.steps} crafted on the public backbone alone, {a.n} images"):
            out.update(_public_backbone_attack(module, images, image_labels, section, seed))
        with _part(f"class and channel images ({d.size} px, {d.class_steps} steps)"):
            _pictures(module, classes, report_dir, seed, d)
    return out


@contextmanager
def _part(what: str):
    """A line on stderr when a part of the evaluation starts and when it ends: each takes
    minutes through the full backbone."""
    print(f"evaluate@transfer: {what} ...", file=sys.stderr, flush=True)
    start = time.monotonic()
    yield
    print(f"evaluate@transfer: {what}: done in {time.monotonic() - start:.0f} s", file=sys.stderr)


def _test_images(dm) -> tuple[torch.Tensor, torch.Tensor]:
    from sightline.data.splits import load_prepared

    x, y = load_prepared(dm.prepared, "test")
    return torch.from_numpy(x), torch.from_numpy(y)


def _public_backbone_attack(module, images, labels, section, seed: int) -> dict:
    """The scenario of a public pretrained backbone: PGD crafted on the ImageNet network alone
    (against its own ImageNet predictions), transferred to this model."""
    from sightline.metrics.scoring import attack_subset

    cfg = section.attack
    if cfg.n == 0:
        return {}
    hp, prep = module.hparams, module.preprocess
    device = next(module.parameters()).device
    imagenet = load_backbone(hp.backbone, hp.weights, imagenet_head=True).to(device)
    idx = torch.from_numpy(attack_subset(labels.numpy(), cfg.n, seed))
    x, y = (images[idx].float() / 255.0).to(device), labels[idx].to(device)
    eps = max(cfg.eps)
    r = transfer_success(
        lambda v: imagenet(prep.normalize_unit(v)),
        lambda v: module(prep.normalize_unit(v)),
        x,
        y,
        eps / 255.0,
        cfg.steps,
        cfg.batch_size,
        seed,
    )
    return {
        f"robust/public_backbone_pgd{cfg.steps}@{eps:g}": r["success"],
        f"robust/random_sign_noise@{eps:g}": r["noise_success"],
    }


def _pictures(module, classes: list[str], report_dir: Path, seed: int, dream) -> None:
    prep = module.preprocess
    device = next(module.parameters()).device
    forward = lambda x: module(prep.normalize_unit(x))  # noqa: E731
    shape = (
        prep.channels,
        dream.size,
        dream.size,
    )  # the backbone sees 224 px whatever the data's size
    fourier = {"parameterisation": "fourier", "seed": seed}
    dreams = class_images(forward, len(classes), shape, device, steps=dream.class_steps, **fourier)
    image_grid(
        dreams.numpy(),
        report_dir / "class_images.png",
        classes,
        ncols=min(len(classes), 5),
        title=f"each class's logit maximised from noise ({dream.size} px; 1/f spectrum, decorrelated"
        " colour, random shift, scale and rotation)",
    )
    backbone = module.net.backbone
    rows, labels = [], []
    mean = torch.tensor(prep.input_mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(prep.input_std, device=device).view(1, -1, 1, 1)
    for name, stage in LAYERS.items():
        trunk = torch.nn.Sequential(backbone.conv_stem, backbone.bn1, *backbone.blocks[: stage + 1])
        width = trunk(torch.zeros(1, 3, 32, 32, device=device)).shape[1]
        chans = torch.linspace(0, width - 1, CHANNELS).long().tolist()
        imgs = channel_images(
            lambda x, trunk=trunk: trunk((x - mean) / std),
            chans,
            (3, dream.size, dream.size),
            device,
            steps=dream.channel_steps,
            **fourier,
        )
        rows.append(imgs.numpy())
        labels.append(f"{name}\nstage {stage + 1}")
    image_rows(
        rows,
        report_dir / "channels.png",
        labels,
        title="backbone channels maximised from noise: early, middle and late stages",
    )


EVALUATION = EvaluationSpec(
    evaluate=evaluate_transfer,
    selection=("val/acc", "max"),
    test="test/acc",
    headline=("test/acc", "val/acc"),
    pictures=("confusion_matrix.png", "adversarial.png", "class_images.png", "channels.png"),
)
