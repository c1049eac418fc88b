"""Models for Region-Aware MedCLIP: our open_clip architectures (the JSON files beside this module), any open_clip
architecture with a local weights file, and open_clip 3.x hub folders (`local-dir:PATH`, BiomedCLIP and the OpenAI
CLIP conversions), all offline. What a name means (input size, mean / std) is in pipeline/model_spec.py.

    medclip-tiny       ViT 4 x 192 on 96 px, text 4 x 128: trains on a CPU (the synthetic default)
    medclip-vit-b-16   the ViT-B/16 layout on 224 px, for GPUs

Weights: `create(name, pretrained=FILE)` loads an open_clip state dict (.pt / .bin / .pth / .safetensors, or a
training checkpoint holding one) through open_clip's loader, or an OpenAI TorchScript archive (read with
torch.jit.load, which runs no pickled code; its input_resolution / context_length / vocab_size entries dropped, as
open_clip.load_openai_model does): give the architecture it holds, e.g. ViT-B-16-quickgelu for OpenAI's ViT-B-16.pt. A
local-dir folder's own weights are `model_spec.folder_weights(name)`. Nothing is fetched from a hub: HF_HUB_OFFLINE
is set before open_clip or transformers is imported, towers are built with their base weights off
(pretrained_image / pretrained_text false), and an HF text tower reads its config.json from a local folder.

Text: each model's own tokenizer and context length (open_clip's byte-pair tokenizer for CLIP text towers, the
folder's HF tokenizer for HF towers, BiomedCLIP: BiomedBERT wordpieces, 256 tokens). A causal CLIP text tower
takes token rows cut after the longest text (the padding never reaches the pooled token); an HF tower gets an
attention mask over the padding (open_clip's HFTextEncoder builds it from the pad id), under which dropping the
columns that are padding in every row changes nothing either (tested against a direct transformers forward).

One-channel radiographs: vision towers take three channels, so `to_model_input` repeats the radiograph channel and
normalises each with the model's mean / std (ours: one radiograph mean / std; others: their preprocess_cfg).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: before open_clip
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import open_clip  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from open_clip.timm_model import TimmModel  # noqa: E402
from open_clip.transformer import text_global_pool  # noqa: E402

from ..model_spec import (CXR_MEAN, CXR_STD, OURS, WEIGHT_FILES, InputSpec, folder_weights,  # noqa: E402, F401
                          input_spec, local_dir, preprocess_cfg, read_config)

from ..io import progress

open_clip.add_model_config(Path(__file__).parent)

MODELS = OURS


def hf_text_folder(folder: Path, hf_name: str) -> Path:
    """The local folder holding the HF text tower's config.json: `hf_model_name` itself when it is a folder, the
    model folder when it holds a config.json, else the HF cache (read only). Never the network."""
    for candidate in (Path(hf_name).expanduser(), folder / hf_name, folder):
        if (candidate / "config.json").is_file():
            return candidate
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(hf_name, "config.json")
        if isinstance(hit, str):
            return Path(hit).parent
    except Exception:  # noqa: BLE001  (not a repo id, or no cache: the message below says what to do)
        pass
    raise ValueError(f"{folder}: the text tower {hf_name} needs its config.json locally; put it in the folder "
                     f"(hf download {hf_name} config.json --local-dir {folder}) or in the HF cache")


def is_torchscript(path: str | Path) -> bool:
    """An OpenAI-style TorchScript archive (a zip with serialized code), not a pickled state dict."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.split("/", 1)[-1].startswith("code/") for n in z.namelist())


def load_weights(model: torch.nn.Module, path: str | Path) -> None:
    path = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"weights file {path} not found")
    if is_torchscript(path):  # open_clip's torch.load(weights_only=True) refuses these on torch >= 2.6
        state = torch.jit.load(path, map_location="cpu").state_dict()
        for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):  # not weights (OpenAI's extras,
            state.pop(key, None)  # and the causal mask the model rebuilds)
        model.load_state_dict(state, strict=True)
    else:
        open_clip.load_checkpoint(model, path)


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns 'initialized randomly' when it loads no weights; we load them right after (TorchScript, or a
    file other than a local-dir folder's own), so the warning would be false."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()


def create(name: str, pretrained: str | None = None) -> torch.nn.Module:
    """The model `name` (see pipeline/model_spec.py), randomly initialised or with the weights of a local file.
    `model.input_spec` says how radiographs are fed to it. Weights load through open_clip's own `pretrained` path
    where it can (its log names the file), so only a random init is reported as one."""
    folder = local_dir(name)
    kwargs = {"force_preprocess_cfg": preprocess_cfg(name)}  # open_clip would log (and set) OpenAI's for ours
    if folder is not None:
        model_cfg, _ = read_config(name)  # raises naming what is missing
        text = dict(model_cfg.get("text_cfg", {}))
        if text.get("hf_model_name"):
            text["hf_model_name"] = str(hf_text_folder(folder, text["hf_model_name"]))
            text["hf_model_pretrained"] = False
        kwargs["text_cfg"] = text
    elif name not in open_clip.list_models():
        raise ValueError(f"unknown model {name}; ours: {', '.join(MODELS)}, any open_clip architecture "
                         f"(open_clip.list_models()), or local-dir:PATH")
    if pretrained and not Path(pretrained).is_file():
        raise FileNotFoundError(f"weights file {pretrained} not found")
    if not pretrained:  # on purpose (the null band, scratch): open_clip says it is random, once
        return _with_spec(open_clip.create_model(name, load_weights=False, pretrained_image=False,
                                                 pretrained_text=False, **kwargs), name)
    own = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None) if folder is not None else None
    if own is not None and Path(pretrained).resolve() == own.resolve():
        # the folder's own weights: open_clip finds and loads them (it ignores `pretrained` for local-dir names)
        return _with_spec(open_clip.create_model(name, pretrained_image=False, pretrained_text=False, **kwargs), name)
    if folder is None and not is_torchscript(pretrained):
        return _with_spec(open_clip.create_model(name, pretrained=str(pretrained), pretrained_image=False,
                                                 pretrained_text=False, **kwargs), name)
    quiet = _DropRandomInitWarning()
    logging.getLogger().addFilter(quiet)  # open_clip logs through the root logger
    try:
        model = open_clip.create_model(name, load_weights=False, pretrained_image=False, pretrained_text=False,
                                       **kwargs)
    finally:
        logging.getLogger().removeFilter(quiet)
    load_weights(model, pretrained)
    logging.getLogger(__name__).info("loaded weights from %s", pretrained)
    return _with_spec(model, name)


def _with_spec(model: torch.nn.Module, name: str) -> torch.nn.Module:
    model.input_spec = input_spec(name)
    return model


def save_open_clip_folder(state_dict: dict, name: str, folder: str | Path) -> Path:
    """Write weights of model `name` as an open_clip 3.x folder: open_clip_config.json (model_cfg, preprocess_cfg)
    and open_clip_model.safetensors, plus a local-dir source's other files (tokenizer, HF text config). It loads
    with open_clip.create_model_and_transforms("local-dir:FOLDER") and models.create("local-dir:FOLDER", ...).
    Written into a temporary folder and renamed, so a killed job leaves the old folder or none."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    source = local_dir(name)
    if source is not None:  # tokenizer files and the HF tower's config.json; not the source's weights
        for file in source.iterdir():
            if file.is_file() and file.name not in WEIGHT_FILES and file.name != "open_clip_config.json":
                shutil.copy2(file, tmp / file.name)
    model_cfg, _ = read_config(name)
    config = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg(name)}
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # clone: safetensors refuses tensors sharing storage
    save_file({k: v.detach().cpu().clone().contiguous() for k, v in state_dict.items()},
              str(tmp / "open_clip_model.safetensors"))
    old = folder.parent / f".{folder.name}.old-{os.getpid()}"
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


@functools.lru_cache(maxsize=8)
def tokenizer(name: str):
    """The model's own tokenizer at its context length (an HF tower's from the local-dir folder)."""
    return open_clip.get_tokenizer(name)


def pad_id(name: str) -> int:
    tok = getattr(tokenizer(name), "tokenizer", None)  # HFTokenizer wraps a transformers tokenizer
    return int(tok.pad_token_id) if tok is not None and tok.pad_token_id is not None else 0


def input_size(name: str) -> int:
    """The image size a model takes, without building it."""
    return input_spec(name).size


def image_size(model: torch.nn.Module) -> int:
    return model.input_spec.size if hasattr(model, "input_spec") else _size(model.visual.image_size)


def _size(size) -> int:
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def resize(images: np.ndarray, size: int, interpolation: str = "bilinear") -> np.ndarray:
    """uint8 (N, H, W) -> uint8 (N, size, size), antialiased; bilinear is data.resize exactly."""
    from ..data import resize as bilinear

    if interpolation == "bilinear" or len(images) == 0 or images.shape[-1] == size:
        return bilinear(images, size)
    x = torch.from_numpy(np.asarray(images)).float().unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode=interpolation, antialias=True, align_corners=False)
    return x[:, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def to_model_input(images: np.ndarray | torch.Tensor, spec: int | InputSpec) -> torch.Tensor:
    """(N, H, W) uint8 radiographs -> (N, 3, size, size) float: resized, channel repeated, normalised. An int
    `spec` is a size with our radiograph statistics."""
    if isinstance(spec, int):
        spec = to_spec(spec)
    size = spec.size
    x = torch.as_tensor(np.asarray(images)).float().div(255.0).unsqueeze(1)  # (N, 1, H, W)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode=spec.interpolation, antialias=True, align_corners=False)
    mean = torch.tensor(spec.mean, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def trim(tokens: torch.Tensor, pad: int = 0) -> torch.Tensor:
    """Drop the columns that are padding in every row (see the module docstring for why this is exact)."""
    if len(tokens) == 0:
        return tokens[:, :1]
    return tokens[:, : max(1, int((tokens != pad).sum(1).max()))]


def tokenize(name: str, texts: list[str], context_length: int | None = None) -> torch.Tensor:
    """Token rows for `texts` with the model's tokenizer, cut after the longest text: finding phrases and prompts
    are 5-15 tokens against a context of 64-256."""
    tok = tokenizer(name)
    tokens = tok(list(texts), context_length=context_length) if context_length else tok(list(texts))
    return trim(tokens, pad_id(name))


def has_causal_text(model: torch.nn.Module) -> bool:
    """CLIP's own text tower (causal mask, pooled at the end-of-text token); False for HF towers."""
    return hasattr(model, "attn_mask") and hasattr(model, "token_embedding")


def encode_text(model: torch.nn.Module, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """open_clip's encode_text for token rows of any length up to the context (see `tokenize`)."""
    if not has_causal_text(model):  # HF tower: HFTextEncoder masks the padding itself
        return model.encode_text(tokens, normalize=normalize)
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


def vision_tokens(visual: torch.nn.Module, pixels: torch.Tensor):
    """One pass of a ViT vision tower: (pooled embedding, patch tokens after the final norm and before the
    projection, the projection). open_clip's VisionTransformer or a timm ViT trunk (BiomedCLIP)."""
    if isinstance(visual, TimmModel):
        trunk = visual.trunk
        feats = trunk.forward_features(pixels)  # (B, prefix + patches, width), after the final norm
        if feats.ndim != 3:
            raise ValueError(f"ROI pooling needs a ViT vision tower; {type(trunk).__name__} gives a feature map")
        return visual.head(trunk.forward_head(feats)), feats[:, trunk.num_prefix_tokens :], visual.head
    visual.output_tokens = True
    try:
        pooled, tokens = visual(pixels)  # tokens (B, grid * grid, width): after ln_post, before the projection
    finally:
        visual.output_tokens = False
    return pooled, tokens, lambda t: t @ visual.proj


def encode_image_and_rois(model: torch.nn.Module, pixels: torch.Tensor, roi_image: torch.Tensor,
                          roi_box: torch.Tensor, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of the vision tower gives the images' embeddings and their ROIs' embeddings.

    An ROI's embedding is the mean of the image's final patch tokens weighted by their overlap with its box,
    through the same projection as the pooled image embedding (dense CLIP features, as MaskCLIP / RegionCLIP
    read regions off a feature map). Each patch token keeps its position embedding in the residual stream, so
    where a region is ("left" lies on the image's right) is in its embedding from the start; a ROI cut out and
    encoded on its own is nearly the same for either lung. pixels (B, 3, s, s); roi_image (R,) index into pixels;
    roi_box (R, 4) in model-input pixels."""
    pooled, tokens, project = vision_tokens(model.visual, pixels)
    grid = int(round(tokens.shape[1] ** 0.5))
    w = box_weights(roi_box, grid, pixels.shape[-1]).to(tokens.dtype)
    roi = project(torch.einsum("rp,rpd->rd", w, tokens[roi_image]))
    if normalize:
        return F.normalize(pooled, dim=-1), F.normalize(roi, dim=-1)
    return pooled, roi


def embed_dim(model: torch.nn.Module) -> int:
    if hasattr(model, "text"):  # CustomTextCLIP (an HF text tower)
        return int(model.text.output_dim)
    return int(model.text_projection.shape[-1])


def spec_of(model: torch.nn.Module) -> InputSpec:
    """The input preprocessing a loaded model was made with."""
    return getattr(model, "input_spec", None) or to_spec(image_size(model))


def to_spec(size: int) -> InputSpec:
    return InputSpec(size, (CXR_MEAN,) * 3, (CXR_STD,) * 3)


@torch.no_grad()
def embed_images_and_rois(model: torch.nn.Module, images: np.ndarray, roi_image: np.ndarray, boxes: np.ndarray,
                          batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) image and (R, D) ROI embeddings, float32 L2-normalised, from one pass over `images` (N, S, S) uint8;
    roi_image (R,) index into images, boxes (R, 4) in the images' pixels."""
    spec, device = spec_of(model), next(model.parameters()).device
    roi_image, boxes = np.asarray(roi_image, np.int64), np.asarray(boxes, np.float32).reshape(-1, 4)
    image_out = roi_out = None
    scale = spec.size / images.shape[-1] if len(images) else 1.0
    for start in progress(range(0, len(images), batch_size), desc="embed images and ROIs", unit="batches"):
        sel = np.flatnonzero((roi_image >= start) & (roi_image < start + batch_size))
        pixels = to_model_input(images[start : start + batch_size], spec).to(device)
        image, roi = encode_image_and_rois(model, pixels, torch.from_numpy(roi_image[sel] - start).to(device),
                                           torch.from_numpy(boxes[sel] * scale).to(device))
        if image_out is None:
            dim = image.shape[-1]
            image_out, roi_out = np.zeros((len(images), dim), np.float32), np.zeros((len(roi_image), dim), np.float32)
        image_out[start : start + len(pixels)] = image.float().cpu().numpy()
        roi_out[sel] = roi.float().cpu().numpy()
    if image_out is None:
        return np.zeros((0, embed_dim(model)), np.float32), np.zeros((len(roi_image), embed_dim(model)), np.float32)
    return image_out, roi_out


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """(N, H, W) uint8 -> (N, D) float32 L2-normalised image embeddings."""
    spec, device = spec_of(model), next(model.parameters()).device
    out = [model.encode_image(to_model_input(images[i : i + batch_size], spec).to(device), normalize=True).float().cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, embed_dim(model)), np.float32)


@torch.no_grad()
def embed_texts(model: torch.nn.Module, name: str, texts: list[str], batch_size: int = 128) -> np.ndarray:
    """Texts -> (N, D) float32 L2-normalised text embeddings, with the model's tokenizer."""
    device = next(model.parameters()).device
    out = [encode_text(model, tokenize(name, texts[i : i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, embed_dim(model)), np.float32)
