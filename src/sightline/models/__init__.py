"""One package per model (``sightline.models.<name>``, its ``SPEC``), and what several share
(``generative``; ``top_labels``). The registry finds them without importing them."""


def top_labels(logits, names: list[str], top_k: int = 5) -> list[list[dict]]:
    """Logits ``(B, K)`` -> per row, the ``top_k`` ``{"label", "probability"}`` dicts, most
    probable first: what the image classifiers (``classifier``, ``transfer``) answer."""
    probs = logits.detach().float().softmax(-1)
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [
        [{"label": names[i], "probability": round(float(p), 6)} for p, i in zip(v, ix, strict=True)]
        for v, ix in zip(values.tolist(), indices.tolist(), strict=True)
    ]
