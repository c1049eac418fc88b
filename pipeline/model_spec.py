"""What a model name of the config (teacher.model, train.model, evaluate.baselines) means, read from JSON alone.

No torch or open_clip import: the workflow calls this while it plans jobs (which model_inputs shards a run reads).

A model is named in one of three ways:
    medclip-tiny, medclip-vit-b-16   our architectures (pipeline/models/*.json); radiograph mean / std, bilinear
    ViT-B-16-quickgelu, ...          any open_clip architecture name; weights come from a local file
    local-dir:/path/to/folder        an open_clip 3.x hub folder: open_clip_config.json (model_cfg and
                                     preprocess_cfg), the weights, tokenizer files (BiomedCLIP, OpenAI CLIP
                                     conversions); its weights file is the model's default weights
Everything but our own architectures is normalised with the model's preprocess_cfg (open_clip's defaults: OpenAI
mean / std, bicubic), as the model was trained.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

OURS = ("medclip-tiny", "medclip-vit-b-16")
LOCAL_DIR = "local-dir:"
CXR_MEAN, CXR_STD = 0.45, 0.28  # letterboxed 8-bit radiographs in [0, 1]; one value for the three repeated channels
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# open_clip's search order for a folder's weights (factory._find_checkpoint_in_dir)
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
                "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth",
                "model.pth")
RESAMPLING = ("bilinear", "bicubic")


@dataclass(frozen=True)
class InputSpec:
    """How a radiograph becomes a model input: resized to size x size with `interpolation` (antialiased), the one
    channel repeated three times, each channel normalised with its mean / std."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @property
    def key(self) -> str:
        """What the stored model_inputs pixels depend on, their folder's name: `224px`, `224px-bicubic` (mean / std
        are applied in the batch, so a change of them reruns no model_inputs job)."""
        return f"{self.size}px" if self.interpolation == "bilinear" else f"{self.size}px-{self.interpolation}"


def parse_key(key: str) -> tuple[int, str]:
    """`224px-bicubic` -> (224, "bicubic")."""
    size, _, interpolation = key.partition("-")
    return int(size.removesuffix("px")), interpolation or "bilinear"


def local_dir(name: str) -> Path | None:
    return Path(name[len(LOCAL_DIR):]).expanduser() if name.startswith(LOCAL_DIR) else None


def _open_clip_config_dir() -> Path:
    spec = importlib.util.find_spec("open_clip")
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


def read_config(name: str) -> tuple[dict, dict]:
    """(model_cfg, preprocess_cfg) of a model name; ValueError naming what is missing."""
    folder = local_dir(name)
    if folder is not None:
        path = folder / "open_clip_config.json"
        if not path.is_file():
            raise ValueError(f"model {name}: no {path} (an open_clip 3.x folder holds open_clip_config.json, the "
                             f"weights and the tokenizer files)")
        cfg = json.loads(path.read_text())
        if "model_cfg" not in cfg:
            raise ValueError(f"model {name}: {path} has no model_cfg")
        return cfg["model_cfg"], cfg.get("preprocess_cfg", {})
    here = Path(__file__).parent / "models" / f"{name}.json"
    path = here if name in OURS else _open_clip_config_dir() / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"unknown model {name}: not one of ours ({', '.join(OURS)}), not an open_clip architecture, "
                         f"not {LOCAL_DIR}PATH")
    cfg = json.loads(path.read_text())
    return cfg, cfg.get("preprocess_cfg", {})


def input_spec(name: str) -> InputSpec:
    model_cfg, pre = read_config(name)
    size = pre.get("size", model_cfg["vision_cfg"].get("image_size", 224))
    size = int(size[0] if isinstance(size, (list, tuple)) else size)
    if name in OURS:
        return InputSpec(size, (CXR_MEAN,) * 3, (CXR_STD,) * 3, "bilinear")
    interpolation = pre.get("interpolation", "bicubic")
    if interpolation not in RESAMPLING:
        raise ValueError(f"model {name}: interpolation {interpolation!r} is not one of {RESAMPLING}")
    return InputSpec(size, tuple(pre.get("mean", OPENAI_MEAN)), tuple(pre.get("std", OPENAI_STD)), interpolation)


def preprocess_cfg(name: str) -> dict:
    """open_clip's preprocess_cfg for a model name: what `input_spec` says, as open_clip's transforms read it. Ours:
    a grey radiograph read as RGB (the channel repeated), letterboxed on black as normalize does. Not in
    pipeline/models/*.json: open_clip 3.3 passes a built-in config's extra keys to CLIP() (a TypeError); it goes
    into the open_clip folder written beside model.pt."""
    _, pre = read_config(name)
    spec = input_spec(name)
    extra = {"resize_mode": "longest", "fill_color": 0} if name in OURS else {}
    return {**pre, **extra, "size": spec.size, "mode": "RGB", "mean": list(spec.mean), "std": list(spec.std),
            "interpolation": spec.interpolation}


def folder_weights(name: str) -> str | None:
    """The weights file a local-dir folder ships (open_clip's order of preference); None for other names."""
    folder = local_dir(name)
    if folder is None:
        return None
    for file in WEIGHT_FILES:
        if (folder / file).is_file():
            return str(folder / file)
    raise ValueError(f"model {name}: no weights file in {folder} (one of {', '.join(WEIGHT_FILES)})")
