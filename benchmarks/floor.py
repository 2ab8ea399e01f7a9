"""The HTTP floor for ``serve_load.py``: the same server and the same multipart upload as
``/classifier/predict``, answered with a constant. No guard, no decoding, no model: what any
BentoML route costs on this machine, the most the served classifier could reach."""

from __future__ import annotations

from pathlib import Path

import bentoml

from serving.inputs import CONFIG


@bentoml.service(name="floor", workers=CONFIG.workers, traffic={"timeout": CONFIG.timeout_s})
class Floor:
    @bentoml.api(route="/classifier/predict")
    async def predict(self, images: list[Path]) -> list[list[dict]]:
        return [[{"label": "floor", "probability": 1.0}] for _ in images]
