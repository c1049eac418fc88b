"""The tiny workflow with a BiomedCLIP-layout teacher (tiny timm ViT + tiny BERT, written here), the student started
from it, a medclip-tiny run distilled from it, and two external baselines (an OpenAI-CLIP-layout folder and a
TorchScript file), every process with its sockets blocked."""

import json

import pytest
import yaml

from conftest import TINY, removed_unless_failed, run_snakemake
from pipeline.io import sha256_file
from pipeline.shards import Shard

# imported by every Python process of the run (PYTHONPATH): any connection off this machine fails
BLOCK = '''import socket
_connect = socket.socket.connect
def _local(address):
    return not isinstance(address, tuple) or str(address[0]) in ("127.0.0.1", "::1", "localhost")
def connect(self, address):
    if not _local(address):
        raise OSError("network access blocked by the test: %r" % (address,))
    return _connect(self, address)
socket.socket.connect = connect
_getaddrinfo = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if host not in (None, "localhost", "127.0.0.1", "::1"):
        raise OSError("network access blocked by the test: %s" % host)
    return _getaddrinfo(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
'''


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory, monkeypatch_module, request):
    import torch

    from pipeline import models
    from pipeline.models import layouts

    work = tmp_path_factory.mktemp("pretrained")
    biomed = layouts.write_biomedclip(work / "weights" / "biomedclip")
    openai = layouts.write_openai_clip(work / "weights" / "openai")
    torch.jit.script(models.create("medclip-tiny")).save(str(work / "weights" / "tiny-torchscript.pt"))
    (work / "block").mkdir()
    (work / "block" / "sitecustomize.py").write_text(BLOCK)
    monkeypatch_module.setenv("PYTHONPATH", f"{work / 'block'}:{__import__('os').environ.get('PYTHONPATH', '')}")
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    cfg = {"teacher": {"model": f"local-dir:{biomed}"},
           "train": {"model": f"local-dir:{biomed}", "init": "teacher"},
           "evaluate": {"runs": {"no_distill": {"model": "medclip-tiny", "init": "scratch"}},
                        "baselines": {"openai": {"model": f"local-dir:{openai}"},
                                      "torchscript": {"model": "medclip-tiny",
                                                      "weights": str(work / "weights" / "tiny-torchscript.pt")}}}}
    (work / "pretrained.yaml").write_text(yaml.safe_dump(cfg))
    run_snakemake(work, "all", "--configfile", str(TINY), str(work / "pretrained.yaml"), configfile=None)
    with removed_unless_failed(request, work):
        yield work, biomed


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_biomedclip_teacher_student_and_external_baselines_offline(pretrained_run):
    from pipeline import models

    work, biomed = pretrained_run
    weights = biomed / "open_clip_pytorch_model.bin"
    assert not (work / "results/teacher/model.pt").exists()  # the folder's weights: no fit_teacher
    for path in sorted((work / "results/embed").glob("shard-*.h5")):
        with Shard(path) as e:
            assert e.attrs["teacher_sha256"] == sha256_file(weights)
            assert e.f["image_embedding"].shape[1] == 32  # the tiny BiomedCLIP's embedding
    # the student's batches are read at the folder's size and resampling, the medclip-tiny run's at ours
    assert sorted(p.name for p in (work / "results/inputs").iterdir()) == ["160px-bicubic", "96px"]
    student = json.loads((work / "results/train/student/summary.json").read_text())
    assert student["init"] == "teacher" and student["teacher_sha256"] == sha256_file(weights)
    model = models.create(f"local-dir:{biomed}", str(work / "results/train/student/model.pt"))
    assert type(model).__name__ == "CustomTextCLIP"
    other = json.loads((work / "results/train/no_distill/summary.json").read_text())
    assert other["init"] == "scratch" and other["teacher_sha256"] == sha256_file(weights)
    models.create("medclip-tiny", str(work / "results/train/no_distill/model.pt"))
    metrics = json.loads((work / "results/evaluate/metrics.json").read_text())
    assert {"baseline", "student", "no_distill", "openai", "torchscript"} <= set(metrics["runs"])
    for name in ("openai", "torchscript"):
        figures = metrics["runs"][name]
        assert 0 <= figures["i2r/R@1"]["value"] <= 1 and 0 <= figures["region/top1"]["value"] <= 1
        assert f"student - {name}" in metrics["paired"]
    report = (work / "results/evaluate/report.md").read_text()
    assert "| openai |" in report and "| torchscript |" in report and "external baselines" in report
    assert "network access blocked" not in "".join(p.read_text() for p in (work / "logs").rglob("*.log"))
