"""The branches: a small CNN over each image, and the text encoder (a Transformer over the first
tokens and a TF-IDF weighted bag of every word)."""

from __future__ import annotations

import torch
from torch import nn


class ImageBranch(nn.Module):
    """Per image: stride-2 Conv-BN-ReLU + Conv-BN-ReLU stages, global average pool, linear."""

    def __init__(self, channels: list[int], dim: int) -> None:
        super().__init__()
        layers, c_in = [], 1
        for c in channels:
            layers += [
                nn.Conv2d(c_in, c, 3, 2, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
                nn.Conv2d(c, c, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(c_in, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.body(x))


def tfidf_weights(
    w: torch.Tensor, owner: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, offsets)`` for an ``EmbeddingBag`` over ``n`` flattened bags: the tf x idf
    weights ``w`` scaled to unit L2 norm per bag (``owner``: the bag of each entry)."""
    norm = torch.zeros(n, device=w.device, dtype=w.dtype).index_add_(0, owner, w * w).sqrt()
    offsets = torch.zeros(n, dtype=torch.long, device=w.device)
    offsets[1:] = torch.bincount(owner, minlength=n).cumsum(0)[:-1]
    return w / norm.clamp_min(1e-6)[owner], offsets


class TextBranch(nn.Module):
    """Token + learned position embeddings, pre-norm Transformer encoder, then the masked mean
    and max over tokens; with the TF-IDF-weighted bag of all the words, projected to ``dim``."""

    def __init__(
        self,
        vocab: int,
        max_tokens: int,
        dim: int,
        layers: int,
        heads: int,
        dropout: float,
        attention_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab, dim, mode="sum")
        self.register_buffer("idf", torch.ones(vocab))
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_tokens, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(
            dim, heads, 4 * dim, dropout, batch_first=True, norm_first=True
        )
        layer.self_attn.dropout = attention_dropout  # ``dropout`` stays on the residual paths
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(3 * dim, dim)

    def tfidf(
        self, tf: torch.Tensor, words: torch.Tensor, owner: torch.Tensor, n: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(weights, offsets)`` for an ``EmbeddingBag`` over flattened bags: tf x idf, scaled
        to unit L2 norm per message."""
        return tfidf_weights(tf * self.idf[words], owner, n)

    def bag_vectors(
        self, words: torch.Tensor, tf: torch.Tensor, owner: torch.Tensor, n: int
    ) -> torch.Tensor:
        """Per message the sum of its words' embeddings, weighted by tf x idf scaled to unit
        L2 norm; zero for a message without words."""
        w, offsets = self.tfidf(tf, words, owner, n)
        return self.bag(words, offsets, per_sample_weights=w)

    def forward(
        self, ids: torch.Tensor, words: torch.Tensor, tf: torch.Tensor, word_owner: torch.Tensor
    ) -> torch.Tensor:
        pad = ids == 0
        h = self.embed(ids) + self.pos[: ids.shape[1]]
        attend = pad.clone()
        attend[:, 0] &= ~pad.all(1)  # a text without words (an image OCR found none in): no NaN
        h = self.norm(self.encoder(h, src_key_padding_mask=attend))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        mean = (h * keep).sum(1) / keep.sum(1).clamp_min(1.0)
        peak = h.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(1).nan_to_num(0.0, neginf=0.0)
        bag = self.bag_vectors(words, tf, word_owner, ids.shape[0]).to(h.dtype)
        return self.proj(torch.cat([mean, peak, bag], dim=1))
