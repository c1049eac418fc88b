"""open_clip 3.x hub folders written from scratch, in the layouts that BiomedCLIP and the OpenAI CLIP conversions ship
(see README "Pretrained weights"), with random weights: what the tests load offline, and the BiomedCLIP-sized
architecture the backbone benchmark times. No file is downloaded.

    biomedclip layout   open_clip_config.json (timm ViT + HF BERT text tower, hf_model_name a hub id as shipped),
                        open_clip_pytorch_model.bin, vocab.txt, tokenizer.json, tokenizer_config.json, and the
                        BERT config.json the real repo lacks (the text tower is built from it)
    openai layout       open_clip_config.json (CLIP ViT + causal text tower, quick_gelu), open_clip_model.safetensors
"""

from __future__ import annotations

import json
from pathlib import Path

from ..model_spec import OPENAI_MEAN, OPENAI_STD
from ..labels import OBSERVATIONS
from ..vocab import REGIONAL

BIOMEDBERT = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
BASE_WORDS = ("no", "left", "right", "lower", "upper", "middle", "lung", "zone", "lobe", "there", "is", "in", "the",
              "of", "possible", "small", "large", "evidence", "present", "absent", "findings", "consistent", "with")

TINY_BIOMEDCLIP = {"timm_model_name": "test_vit", "image_size": 160, "embed_dim": 32, "context_length": 64,
                   "bert": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
                            "intermediate_size": 64, "max_position_embeddings": 128}}
# BiomedCLIP's architecture (open_clip_config.json of microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224, and
# BiomedBERT's BERT-base config)
BIOMEDCLIP = {"timm_model_name": "vit_base_patch16_224", "image_size": 224, "embed_dim": 512, "context_length": 256,
              "bert": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                       "intermediate_size": 3072, "max_position_embeddings": 512, "vocab_size": 30522}}


def wordpieces(size: int | None = None) -> list[str]:
    """A lower-case wordpiece vocabulary: special tokens, letters and their ## pieces, report words; padded with
    [unusedN] to `size`."""
    words = {w for text in [*BASE_WORDS, *OBSERVATIONS, *REGIONAL.values()] for w in str(text).lower().replace("/", " ").split()}
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + list("0123456789.,-")
    vocab = SPECIAL + letters + [f"##{c}" for c in letters] + sorted(w for w in words if w.isalpha())
    return vocab + [f"[unused{i}]" for i in range((size or 0) - len(vocab))]


def write_biomedclip(folder: str | Path, arch: dict = TINY_BIOMEDCLIP, weights: bool = True, seed: int = 0) -> Path:
    """A BiomedCLIP-layout folder of architecture `arch` with random weights (none when weights is False)."""
    import torch
    from transformers import BertConfig, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = wordpieces(arch["bert"].get("vocab_size"))
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizer(vocab=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    bert = {k: v for k, v in arch["bert"].items() if k != "vocab_size"}
    BertConfig(vocab_size=len(vocab), pad_token_id=0, **bert).save_pretrained(folder)
    cfg = {"model_cfg": {"embed_dim": arch["embed_dim"],
                         "vision_cfg": {"timm_model_name": arch["timm_model_name"], "timm_model_pretrained": False,
                                        "timm_pool": "", "timm_proj": "linear", "image_size": arch["image_size"]},
                         "text_cfg": {"hf_model_name": BIOMEDBERT, "hf_tokenizer_name": BIOMEDBERT,
                                      "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                      "context_length": arch["context_length"]}},
           "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    if weights:
        from . import create

        torch.manual_seed(seed)
        torch.save(create(f"local-dir:{folder}").state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def write_openai_clip(folder: str | Path, seed: int = 0) -> Path:
    """A tiny OpenAI-CLIP-layout folder (the ViT-B-16-quickgelu layout at small widths), safetensors weights."""
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"model_cfg": {"embed_dim": 32, "quick_gelu": True,
                         "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
                         "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2,
                                      "layers": 2}},
           "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic"}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg, indent=2))
    from . import create

    torch.manual_seed(seed)
    state = {k: v.contiguous() for k, v in create(f"local-dir:{folder}").state_dict().items()}
    save_file(state, str(folder / "open_clip_model.safetensors"))
    return folder
