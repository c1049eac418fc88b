"""open_clip architectures for Region-Aware MedCLIP, registered from the JSON files beside this module.

    medclip-tiny       ViT 4 x 192 on 96 px, text 4 x 128: trains on a CPU (the synthetic default)
    medclip-vit-b-16   the ViT-B/16 layout on 224 px, for GPUs

Importing this package registers them, after which `open_clip.create_model("medclip-tiny",
pretrained="/local/model.pt")` loads local weights; nothing is fetched from a hub. The tokenizer is
open_clip's own byte-pair tokenizer, whose vocabulary ships inside the open_clip package.

One-channel radiographs: open_clip's vision towers take three channels, so `to_model_input` repeats the
single radiograph channel and normalizes it with one radiograph mean / std. Weights of ordinary RGB CLIP
models therefore load unchanged.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

open_clip.add_model_config(Path(__file__).parent)

MODELS = ("medclip-tiny", "medclip-vit-b-16")
# statistics of letterboxed 8-bit radiographs in [0, 1]; one value for all three repeated channels
CXR_MEAN, CXR_STD = 0.45, 0.28


def create(name: str, pretrained: str | None = None) -> torch.nn.Module:
    """An open_clip model of ours, randomly initialised or from a local weights file."""
    if name not in open_clip.list_models():
        raise ValueError(f"unknown model {name}; known: {', '.join(MODELS)}")
    return open_clip.create_model(name, pretrained=pretrained or None)


def tokenizer(name: str):
    return open_clip.get_tokenizer(name)


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def to_model_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) uint8 radiographs -> (N, 3, size, size) float: resized, normalized, channel repeated."""
    x = torch.as_tensor(np.asarray(images)).float().div(255.0).unsqueeze(1)  # (N, 1, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - CXR_MEAN) / CXR_STD).expand(-1, 3, -1, -1).contiguous()
