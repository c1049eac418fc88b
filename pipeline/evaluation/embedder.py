"""One model as evaluation sees it: images, ROIs (pooled patch tokens under each box, as trained), ROI crops and
texts as L2-normalised embeddings, texts cached. `Embedder(None, name, device, init_seed=k)` is an untrained model
(the null band)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import models


class Embedder:
    def __init__(self, weights: str | Path | None, name: str, device: torch.device, init_seed: int = 0):
        """weights None: an untrained model, initialised with `init_seed` (the null band)."""
        self.name, self.device = name, device
        if weights is None:
            torch.manual_seed(init_seed)
        self.model = models.create(name, pretrained=None if weights is None else str(weights)).to(device).eval()
        self.scale = float(self.model.logit_scale.detach().exp().clamp(max=100))
        self._cache: dict[str, np.ndarray] = {}

    def images(self, images: np.ndarray) -> np.ndarray:
        return models.embed_images(self.model, images)

    def images_and_rois(self, images: np.ndarray, owner: np.ndarray, boxes: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
        return models.embed_images_and_rois(self.model, images, owner, boxes)

    def crops(self, crops: np.ndarray) -> np.ndarray:
        """Each ROI as an image of its own (the crop baselines): the crop stage's ROI image at the model's size."""
        return models.embed_images(self.model, crops)

    def texts(self, texts: list[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self._cache})
        if new:
            self._cache.update(zip(new, models.embed_texts(self.model, self.name, new)))
        return np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 1), np.float32)

    def ensemble(self, templates: list[str], name: str) -> np.ndarray:
        e = self.texts([t.format(name) for t in templates]).mean(0)
        return e / np.linalg.norm(e)

