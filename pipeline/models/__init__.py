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
from open_clip.transformer import text_global_pool

from ..io import progress

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


def input_size(name: str) -> int:
    """The image size an architecture takes, without building it."""
    size = open_clip.get_model_config(name)["vision_cfg"]["image_size"]
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def image_size(model: torch.nn.Module) -> int:
    size = model.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


def to_model_input(images: np.ndarray | torch.Tensor, size: int) -> torch.Tensor:
    """(N, H, W) uint8 radiographs -> (N, 3, size, size) float: resized, normalized, channel repeated."""
    x = torch.as_tensor(np.asarray(images)).float().div(255.0).unsqueeze(1)  # (N, 1, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ((x - CXR_MEAN) / CXR_STD).expand(-1, 3, -1, -1).contiguous()


def tokenize(name: str, texts: list[str], context_length: int | None = None) -> torch.Tensor:
    """Token rows for `texts`, cut after the longest text's end-of-text token.

    With a causal text tower the padding after the end-of-text token never reaches the pooled token, so the
    shorter rows give the same features as full-context ones (tested) at a fraction of the cost: finding
    phrases and prompts are 5-15 tokens against a context of 64-77.
    """
    tokens = tokenizer(name)(list(texts), context_length=context_length) if context_length else tokenizer(name)(
        list(texts))
    length = int((tokens != 0).sum(1).max()) if len(tokens) else 1
    return tokens[:, : max(length, 1)]


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """open_clip's `CLIP.encode_text` for token rows of any length up to the context (see `tokenize`)."""
    n = tokens.shape[1]
    cast = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast) + model.positional_embedding[:n].to(cast)
    x = model.transformer(x, attn_mask=model.attn_mask[:n, :n])
    x = model.ln_final(x)
    x = text_global_pool(x, tokens, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    if model.text_projection is not None:
        x = model.text_projection(x) if isinstance(model.text_projection, torch.nn.Linear) else x @ model.text_projection
    return F.normalize(x, dim=-1) if normalize else x


def box_weights(boxes: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """(R, grid * grid): each patch's share of each box (overlap area / box area, rows sum to 1). boxes (R, 4)
    x0, y0, x1, y1 in the pixels of a size x size model input; a box smaller than a patch still has weight."""
    edges = torch.arange(grid + 1, dtype=torch.float32, device=boxes.device) * (size / grid)
    b = boxes.float()

    def overlap(lo, hi):  # (R, grid): length of [lo, hi] inside each patch
        inside = torch.minimum(hi[:, None], edges[None, 1:]) - torch.maximum(lo[:, None], edges[None, :-1])
        return inside.clamp(min=0)

    w = (overlap(b[:, 1], b[:, 3])[:, :, None] * overlap(b[:, 0], b[:, 2])[:, None, :]).reshape(len(b), -1)
    return w / w.sum(1, keepdim=True).clamp(min=1e-6)


def encode_image_and_rois(model: torch.nn.Module, pixels: torch.Tensor, roi_image: torch.Tensor,
                          roi_box: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the vision tower gives the images' embeddings and their ROIs' embeddings.

    An ROI's embedding is the mean of the image's final patch tokens weighted by their overlap with its box,
    through the same projection as the pooled image embedding (dense CLIP features, as MaskCLIP / RegionCLIP
    read regions off a feature map). Each patch token keeps its position embedding in the residual stream, so
    where a region is ("left" lies on the image's right) is in its embedding from the start; a ROI cut out and
    encoded on its own is nearly the same for either lung. pixels (B, 3, s, s); roi_image (R,) index into pixels;
    roi_box (R, 4) in model-input pixels."""
    visual = model.visual
    visual.output_tokens = True
    try:
        pooled, tokens = visual(pixels)  # tokens (B, grid * grid, width): after ln_post, before the projection
    finally:
        visual.output_tokens = False
    grid = int(round(tokens.shape[1] ** 0.5))
    w = box_weights(roi_box, grid, pixels.shape[-1]).to(tokens.dtype)
    roi = torch.einsum("rp,rpd->rd", w, tokens[roi_image]) @ visual.proj
    if normalize:
        return F.normalize(pooled, dim=-1), F.normalize(roi, dim=-1)
    return pooled, roi


@torch.no_grad()
def embed_images_and_rois(model: torch.nn.Module, images: np.ndarray, roi_image: np.ndarray, boxes: np.ndarray,
                          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) image and (R, D) ROI embeddings, float32 L2-normalised, from one pass over `images` (N, S, S) uint8;
    roi_image (R,) index into images, boxes (R, 4) in the images' pixels."""
    size, device = image_size(model), next(model.parameters()).device
    roi_image, boxes = np.asarray(roi_image, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4)
    dim = model.text_projection.shape[-1]
    image_out, roi_out = np.zeros((len(images), dim), np.float32), np.zeros((len(roi_image), dim), np.float32)
    scale = size / images.shape[-1] if len(images) else 1.0
    for start in progress(range(0, len(images), batch_size), desc="embed images and ROIs", unit="batches"):
        sel = np.flatnonzero((roi_image >= start) & (roi_image < start + batch_size))
        pixels = to_model_input(images[start : start + batch_size], size).to(device)
        image, roi = encode_image_and_rois(model, pixels, torch.from_numpy(roi_image[sel] - start).to(device),
                                           torch.from_numpy(boxes[sel] * scale).to(device))
        image_out[start : start + len(pixels)] = image.float().cpu().numpy()
        roi_out[sel] = roi.float().cpu().numpy()
    return image_out, roi_out


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) uint8 -> (N, D) float32 L2-normalised image embeddings."""
    size, device = image_size(model), next(model.parameters()).device
    out = [model.encode_image(to_model_input(images[i : i + batch_size], size).to(device), normalize=True).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.text_projection.shape[-1]), np.float32)


@torch.no_grad()
def embed_texts(model: torch.nn.Module, name: str, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Texts -> (N, D) float32 L2-normalised text embeddings."""
    device = next(model.parameters()).device
    out = [encode_text(model, tokenize(name, texts[i : i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, model.text_projection.shape[-1]), np.float32)
