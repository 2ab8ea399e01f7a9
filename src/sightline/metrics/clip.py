"""Evaluation of ``clip``: held-out retrieval, zero-shot classification, pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from sightline.data.captions import CATEGORY_TEMPLATES, FASHION_TEMPLATES
from sightline.data.decode import to_pil
from sightline.models.clip import recall_at_k, zero_shot
from sightline.spec import EvaluationSpec
from sightline.viz.figures import image_rows, similarity_figure

KS = (1, 5, 10)
QUERIES = ["a red heart", "a dog", "a flag", "a smiling face", "food", "a car"]


@torch.no_grad()
def _embed_arrays(module, images: np.ndarray, batch: int = 512) -> torch.Tensor:
    return torch.cat(
        [
            module.embed_images([to_pil(a) for a in images[i : i + batch]])
            for i in range(0, len(images), batch)
        ]
    )


@torch.no_grad()
def _embed_texts(module, texts: list[str], batch: int = 256) -> torch.Tensor:
    return torch.cat(
        [module.embed_texts(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    )


@torch.no_grad()
def evaluate_clip(module, dm, report_dir: Path, section, seed: int, model_dir: Path) -> dict:
    """Metrics dict plus pictures in ``report_dir``: the similarity matrix of held-out pairs and
    the top-5 held-out images for a few text queries."""
    report_dir = Path(report_dir)
    dm.attach(module)
    vx, _, vcaptions = dm.split("val")
    val_sim = _embed_arrays(module, vx) @ _embed_texts(module, vcaptions).T
    val_i2t, val_t2i = recall_at_k(val_sim, (5,)), recall_at_k(val_sim.T, (5,))
    x, cats, captions = dm.split("test")
    img, txt = _embed_arrays(module, x), _embed_texts(module, captions)
    sim = img @ txt.T  # (N images, N captions)
    n = len(captions)
    i2t, t2i = recall_at_k(sim), recall_at_k(sim.T)

    fx, fy = dm.fashion_split("test")
    fashion_names = dm.fashion_names
    fashion_acc = zero_shot(module, _embed_arrays(module, fx), fy, fashion_names, FASHION_TEMPLATES)
    categories = [c.lower() for c in dm.class_names]
    emoji_acc = zero_shot(module, img, cats, categories, CATEGORY_TEMPLATES)

    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(12, n), replace=False))
    similarity_figure(
        sim[pick][:, pick].numpy(),
        x[pick],
        [captions[i] for i in pick],
        report_dir / "similarity_matrix.png",
        f"clip: cosine similarity of {len(pick)} held-out emoji and their captions (matches on the diagonal)",
    )
    q = _embed_texts(module, QUERIES)
    k = min(5, n)
    top = (q @ img.T).topk(k, dim=-1).indices
    rows = [x[t.numpy()].astype(np.float32) / 255 for t in top]
    image_rows(
        rows,
        report_dir / "retrieval.png",
        QUERIES,
        f"clip: top-{k} of {n} held-out emoji for each text query",
        [f"#{i + 1}" for i in range(k)],
    )

    majority = float(np.bincount(cats).max() / len(cats))
    r = lambda v: round(v, 6)  # noqa: E731
    return {
        "val/n_pairs": len(vcaptions),
        "val/i2t_recall@5": r(val_i2t[5]),
        "val/t2i_recall@5": r(val_t2i[5]),
        "test/n_pairs": n,
        **{f"test/i2t_recall@{k}": r(v) for k, v in i2t.items()},
        **{f"test/t2i_recall@{k}": r(v) for k, v in t2i.items()},
        **{f"test/chance_recall@{k}": r(k / n) for k in KS},
        "zero_shot/fashion_mnist_acc": r(fashion_acc),
        "zero_shot/fashion_mnist_n": len(fy),
        "zero_shot/fashion_mnist_chance": r(1 / len(fashion_names)),
        "zero_shot/emoji_category_acc": r(emoji_acc),
        "zero_shot/emoji_category_chance": r(1 / len(categories)),
        "zero_shot/emoji_category_majority": r(majority),
        "logit_scale": r(float(module.model.logit_scale.exp())),
        "trained_from": section.model.pretrained or "scratch",
        "image_tower": (  # pretrained and locked (LiT), or trained with the text tower
            f"locked {section.model.image_tower}" if section.model.image_tower else "trained"
        ),
    }


EVALUATION = EvaluationSpec(
    evaluate=evaluate_clip,
    selection=("val/t2i_recall@5", "max"),
    test="test/t2i_recall@5",
    headline=("test/t2i_recall@5", "test/i2t_recall@5", "zero_shot/fashion_mnist_acc"),
    pictures=("similarity_matrix.png", "retrieval.png"),
)
