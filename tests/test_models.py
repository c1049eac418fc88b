"""Loading every model layout offline (sockets patched to fail), the preprocessing and tokenizer each model gets,
and the HF text tower against a direct transformers forward."""

import shutil
import socket

import numpy as np
import pytest
import torch

from pipeline import config, model_spec, models
from pipeline.models import layouts


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access blocked by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture(scope="module")
def biomed(tmp_path_factory):
    return layouts.write_biomedclip(tmp_path_factory.mktemp("biomedclip") / "folder")


@pytest.fixture(scope="module")
def openai(tmp_path_factory):
    return layouts.write_openai_clip(tmp_path_factory.mktemp("openai") / "folder")


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_our_architectures_use_radiograph_statistics():
    spec = models.input_spec("medclip-tiny")
    assert spec == model_spec.InputSpec(96, (0.45,) * 3, (0.28,) * 3, "bilinear") and spec.key == "96px"
    assert models.input_spec("medclip-vit-b-16").size == 224
    assert models.create("medclip-tiny").input_spec == spec


def test_open_clip_architecture_names_use_their_preprocessing():
    spec = models.input_spec("ViT-B-16-quickgelu")  # read from open_clip's JSON, nothing built
    assert spec.size == 224 and spec.mean == model_spec.OPENAI_MEAN and spec.std == model_spec.OPENAI_STD
    assert spec.interpolation == "bicubic" and spec.key == "224px-bicubic"
    assert model_spec.parse_key(spec.key) == (224, "bicubic") and model_spec.parse_key("96px") == (96, "bilinear")
    with pytest.raises(ValueError, match="unknown model ViT-nonexistent"):
        models.input_spec("ViT-nonexistent")


def test_state_dict_and_torchscript_files_load(tmp_path):
    torch.manual_seed(1)
    model = models.create("medclip-tiny")
    torch.save(model.state_dict(), tmp_path / "model.pt")
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    assert not models.is_torchscript(tmp_path / "model.pt") and models.is_torchscript(tmp_path / "scripted.pt")
    assert _same(models.create("medclip-tiny", str(tmp_path / "model.pt")), model)
    assert _same(models.create("medclip-tiny", str(tmp_path / "scripted.pt")), model)
    with pytest.raises(FileNotFoundError):
        models.create("medclip-tiny", str(tmp_path / "missing.pt"))


def test_loading_a_file_is_not_logged_as_a_random_init(tmp_path, caplog):
    torch.save(models.create("medclip-tiny").state_dict(), tmp_path / "model.pt")
    caplog.clear()
    with caplog.at_level("INFO"):
        model = models.create("medclip-tiny", str(tmp_path / "model.pt"))
    assert "initialized randomly" not in caplog.text and str(tmp_path / "model.pt") in caplog.text
    # open_clip's preprocess_cfg on the model is ours, not OpenAI's mean / std and bicubic
    pre = model.visual.preprocess_cfg
    assert pre["mean"] == [0.45] * 3 and pre["interpolation"] == "bilinear" and pre["size"] == 96
    assert "0.4814" not in caplog.text and "bicubic" not in caplog.text
    caplog.clear()
    with caplog.at_level("INFO"):
        models.create("medclip-tiny")  # a random init on purpose (the null band) says so, once
    assert caplog.text.count("initialized randomly") == 1


def test_biomedclip_layout_loads_offline(biomed):
    name = f"local-dir:{biomed}"
    weights = models.folder_weights(name)
    assert weights == str(biomed / "open_clip_pytorch_model.bin")
    model = models.create(name, weights).eval()
    assert type(model).__name__ == "CustomTextCLIP" and type(model.visual).__name__ == "TimmModel"
    saved = torch.load(weights, weights_only=True)
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    # OpenAI mean / std and bicubic from the folder's preprocess_cfg; the size from its vision_cfg
    spec = model.input_spec
    assert (spec.size, spec.mean, spec.interpolation, spec.key) == (160, model_spec.OPENAI_MEAN, "bicubic",
                                                                      "160px-bicubic")
    tok = models.tokenizer(name)
    assert type(tok).__name__ == "HFTokenizer" and tok.context_length == 64 and models.pad_id(name) == 0


def test_a_local_dir_model_saves_as_a_folder_with_its_tokenizer(biomed, tmp_path):
    """A BiomedCLIP-initialised student's open_clip folder keeps the tokenizer files and the HF text config."""
    name = f"local-dir:{biomed}"
    model = models.create(name, models.folder_weights(name)).eval()
    saved = f"local-dir:{models.save_open_clip_folder(model.state_dict(), name, tmp_path / 'open_clip')}"
    again = models.create(saved, models.folder_weights(saved)).eval()
    assert _same(again, model) and again.input_spec == model.input_spec
    texts = ["small left pleural effusion", "no pneumothorax"]
    np.testing.assert_array_equal(models.embed_texts(again, saved, texts), models.embed_texts(model, name, texts))


def test_biomedclip_layout_without_the_text_config_says_what_to_do(biomed, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(biomed, bare)
    (bare / "config.json").unlink()
    with pytest.raises(ValueError, match="needs its config.json locally"):
        models.create(f"local-dir:{bare}")


def test_hf_text_tower_equals_a_direct_transformers_forward(biomed):
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    name = f"local-dir:{biomed}"
    model = models.create(name, models.folder_weights(name)).eval()
    texts = ["no left pleural effusion", "cardiomegaly", "possible right lower zone pneumothorax is present"]
    tok = AutoTokenizer.from_pretrained(biomed)
    direct = tok(texts, padding="longest", return_tensors="pt")
    bert = AutoModel.from_config(AutoConfig.from_pretrained(biomed), add_pooling_layer=False).eval()
    bert.load_state_dict(model.text.transformer.state_dict())
    with torch.no_grad():
        hidden = bert(input_ids=direct.input_ids, attention_mask=direct.attention_mask).last_hidden_state
        expected = torch.nn.functional.normalize(model.text.proj(hidden[:, 0]), dim=-1)  # CLS, then the MLP
        ours = models.tokenize(name, texts)
        assert torch.equal(ours, direct.input_ids)  # trimmed to the longest text, as padding="longest"
        torch.testing.assert_close(models.encode_text(model, ours), expected, rtol=1e-5, atol=1e-5)
        full = models.tokenizer(name)(texts)  # the whole 64-token context, masked
        assert full.shape[1] == 64
        torch.testing.assert_close(model.encode_text(full, normalize=True), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(models.embed_texts(model, name, texts), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_timm_vit_rois_pool_from_the_same_pass(biomed):
    name = f"local-dir:{biomed}"
    model = models.create(name, models.folder_weights(name)).eval()
    pixels = models.to_model_input(np.random.default_rng(0).integers(0, 256, (2, 64, 64), dtype=np.uint8),
                                   model.input_spec)
    boxes = torch.tensor([[0.0, 0.0, 160.0, 160.0], [0.0, 0.0, 80.0, 160.0]])
    with torch.no_grad():
        image, roi = models.encode_image_and_rois(model, pixels, torch.tensor([0, 1]), boxes, normalize=False)
        torch.testing.assert_close(image, model.encode_image(pixels), rtol=1e-5, atol=1e-5)
        tokens = model.visual.trunk.forward_features(pixels)[:, 1:]  # 10 x 10 patches after the CLS token
        torch.testing.assert_close(roi[0], model.visual.head(tokens[0].mean(0)), rtol=1e-5, atol=1e-5)
        left = tokens[1].reshape(10, 10, -1)[:, :5].reshape(50, -1).mean(0)
        torch.testing.assert_close(roi[1], model.visual.head(left), rtol=1e-5, atol=1e-5)


def test_openai_layout_loads_with_its_causal_tower(openai):
    name = f"local-dir:{openai}"
    model = models.create(name, models.folder_weights(name)).eval()
    assert type(model).__name__ == "CLIP" and models.has_causal_text(model)
    assert model.input_spec.size == 64 and model.input_spec.interpolation == "bicubic"
    texts = ["no left pleural effusion", "cardiomegaly"]
    with torch.no_grad():
        torch.testing.assert_close(models.encode_text(model, models.tokenize(name, texts)),
                                   model.encode_text(models.tokenizer(name)(texts), normalize=True))


def test_each_model_normalises_with_its_own_statistics(biomed):
    white = np.full((1, 32, 32), 255, np.uint8)
    ours = models.to_model_input(white, models.input_spec("medclip-tiny"))
    assert ours.shape == (1, 3, 96, 96) and ours.max().item() == pytest.approx((1 - 0.45) / 0.28, rel=1e-5)
    spec = models.input_spec(f"local-dir:{biomed}")
    theirs = models.to_model_input(white, spec)
    expected = [(1 - m) / s for m, s in zip(model_spec.OPENAI_MEAN, model_spec.OPENAI_STD)]
    np.testing.assert_allclose(theirs[0, :, 5, 5].numpy(), expected, rtol=1e-5)
    noise = np.random.default_rng(0).integers(0, 256, (1, 32, 32), dtype=np.uint8)  # the resampling is the model's
    assert not np.array_equal(models.resize(noise, 20, "bicubic"), models.resize(noise, 20, "bilinear"))


def test_config_accepts_these_models_and_rejects_what_does_not_resolve(biomed, openai, tmp_path):
    cfg = config.load(None, {"teacher": {"model": f"local-dir:{biomed}"},
                             "train": {"model": "medclip-tiny", "init": "scratch"},
                             "evaluate": {"baselines": {"openai": {"model": f"local-dir:{openai}"}}}})
    assert cfg["evaluate"]["baselines"]["openai"]["weights"] == ""

    def rejected(overrides, message):
        with pytest.raises(config.ConfigError, match=message):
            config.load(None, overrides)

    rejected({"teacher": {"model": "ViT-nonexistent"}}, "teacher.model: unknown model ViT-nonexistent")
    rejected({"teacher": {"model": f"local-dir:{tmp_path}"}}, "teacher.model: .*open_clip_config.json")
    rejected({"train": {"init": str(tmp_path / "none.pt")}}, "train.init: .* neither teacher, scratch nor a weights")
    rejected({"train": {"model": "medclip-vit-b-16"}}, "init: teacher needs train.model == teacher.model")
    rejected({"evaluate": {"baselines": {"student": {"model": f"local-dir:{openai}"}}}}, "also a run")
    rejected({"evaluate": {"baselines": {"b": {"model": "ViT-B-16"}}}}, "b.weights: ViT-B-16 is not a local-dir")
    rejected({"evaluate": {"baselines": {"b": {"model": "ViT-B-16", "wieghts": "x"}}}}, "wieghts")
