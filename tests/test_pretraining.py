"""The synthetic pretraining cohort (stages/pretraining.py) and the teacher's sentence captions."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from pipeline import config
from pipeline.data import load_pretraining_pairs, sentences
from pipeline.io import sha256_file
from pipeline.labels import OBSERVATIONS
from pipeline.shards import Shard, check, decode
from pipeline.stages import pretraining
from pipeline.stages.parse_reports import split_sections
from pipeline.losses import mask_duplicates
from pipeline.trainer import GlobalBatches, label_groups


@pytest.fixture
def cohort_cfg() -> dict:
    cfg = config.load()
    syn = cfg["data"]["synthetic"]
    return {**cfg["pretraining"], "films": 25, "shard_size": 10, "image_size": 64,
            "normal_fraction": syn["normal_fraction"], "prevalence": syn["prevalence"]}


def test_a_cohort_shard_is_a_pure_function_of_its_config(tmp_path, cohort_cfg):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    pretraining.run(cohort_cfg, 1, a, 32)
    pretraining.run(cohort_cfg, 1, b, 32)
    assert sha256_file(a) == sha256_file(b)
    assert check(a) == []
    with Shard(a) as s:
        assert s.image_ids == [f"pretrain-{i:07d}" for i in range(10, 20)]
        assert decode(s.f["patient_id"][()]) == s.image_ids  # one film per patient
        assert decode(s.f["split"][()]).count("validate") == 1  # film 19
        images = s.f["image"][()]
        assert images.shape == (10, 32, 32) and images.dtype == np.uint8
        # a windowed radiograph: grey lungs and bright mediastinum, black only outside the body
        assert 40 < images.mean() < 200 and images.std() > 20
        labels = s.f["labels"][()]
        assert labels.shape == (10, len(OBSERVATIONS))
        # every film's report has text, and its labels come from its own phrases
        for report, fi in zip(decode(s.f["report"][()]), decode(s.f["findings_impression"][()])):
            sections = split_sections(report)
            assert fi and fi.startswith(sections.get("findings", sections.get("impression", ""))[:20])
    # the last shard holds the rest; a shard past the cohort is an error
    pretraining.run(cohort_cfg, 2, tmp_path / "c.h5", 32)
    with Shard(tmp_path / "c.h5") as s:
        assert len(s) == 5
    with pytest.raises(ValueError, match="past the cohort"):
        pretraining.run(cohort_cfg, 3, tmp_path / "d.h5", 32)


def test_the_cohort_shares_no_patient_with_the_target_cohort(cohort_cfg):
    # ids: the synthetic source's subject ids (and MIMIC-CXR's) are all digits; the cohort's are not
    assert not pretraining.film_id(0).isdigit()
    # anatomy and findings: another seed draws other films than data.synthetic's seed does
    target = config.load()["data"]["synthetic"]["seed"]
    assert cohort_cfg["seed"] != target
    own = pretraining.film(cohort_cfg, 0, 32)["image"]
    other = pretraining.film({**cohort_cfg, "seed": target}, 0, 32)["image"]
    assert not np.array_equal(own, other)


def test_the_teacher_reads_the_cohort_by_split_and_checks_the_input_size(tmp_path, cohort_cfg):
    paths = [tmp_path / f"shard-{k:05d}.h5" for k in range(3)]
    for k, p in enumerate(paths):
        pretraining.run(cohort_cfg, k, p, 32)
    train, val = (load_pretraining_pairs(paths, {s}, 32) for s in ("train", "validate"))
    assert len(train.image_id) == 23 and val.image_id == ["pretrain-0000009", "pretrain-0000019"]
    assert train.images[[0, 22]].shape == (2, 32, 32)
    with pytest.raises(ValueError, match="holds 32 px films, the model takes 96 px"):
        load_pretraining_pairs(paths, {"train"}, 96)


def test_sentences_split_reports_but_not_numbers():
    assert sentences("Small 2.5 cm nodule in the RUL.  No pneumothorax. ___ was notified.") == [
        "Small 2.5 cm nodule in the RUL.", "No pneumothorax.", "___ was notified."]
    assert sentences("no period at all") == ["no period at all"]


def test_sentence_captions_are_the_report_or_one_of_its_sentences_and_repeat_by_step(tmp_path, cohort_cfg):
    paths = [tmp_path / "shard-00000.h5"]
    pretraining.run(cohort_cfg, 0, paths[0], 32)
    pairs = load_pretraining_pairs(paths, {"train"}, 32)
    whole = GlobalBatches(pairs, "medclip-tiny")
    mixed = GlobalBatches(pairs, "medclip-tiny", captions="sentences", seed=3)
    assert [whole.caption(i, 5) for i in range(len(pairs.reports))] == pairs.reports
    seen = [[mixed.caption(i, step) for step in range(40)] for i in range(3)]
    for i, captions in enumerate(seen):
        own = sentences(pairs.reports[i])
        assert set(captions) <= {pairs.reports[i], *own}
        assert pairs.reports[i] in captions and len(set(captions) & set(own)) >= 2  # both kinds are drawn
    assert seen == [[mixed.caption(i, step) for step in range(40)] for i in range(3)]  # a pure function of the step
    other_seed = GlobalBatches(pairs, "medclip-tiny", captions="sentences", seed=4)
    assert [[other_seed.caption(i, step) for step in range(40)] for i in range(3)] != seen


def test_label_groups_join_equal_study_labels_and_read_a_blank_as_negative():
    nan = np.nan
    labels = np.array([[1, 0, nan], [1, nan, 0], [1, -1, 0], [nan, nan, nan], [0, 0, 0], [1, 0, 0]], np.float32)
    assert label_groups(labels).tolist() == [0, 0, 1, 2, 2, 0]


def test_label_negatives_mask_reports_with_the_same_labels_out_of_the_teachers_loss(tmp_path, cohort_cfg):
    paths = [tmp_path / "shard-00000.h5"]
    pretraining.run(cohort_cfg, 0, paths[0], 32)
    pairs = load_pretraining_pairs(paths, {"train"}, 32)
    with Shard(paths[0]) as s:  # the pairs carry their films' own labels
        split = np.array(decode(s.f["split"][()]))
        np.testing.assert_array_equal(pairs.labels, s.f["labels"][()][split == "train"])
    idx = np.arange(len(pairs.image_id))
    by_caption = GlobalBatches(pairs, "medclip-tiny")(idx, 0)["report_groups"]
    by_labels = GlobalBatches(pairs, "medclip-tiny", negatives="labels")(idx, 0)["report_groups"]
    key = [np.nan_to_num(r, nan=0.0).tobytes() for r in pairs.labels]
    for i in idx:
        for j in idx:
            assert (by_labels[i] == by_labels[j]) == (key[i] == key[j])
            if by_caption[i] == by_caption[j]:  # the same caption always has the same labels
                assert by_labels[i] == by_labels[j]
    assert len(set(by_labels.tolist())) < len(set(by_caption.tolist()))  # some studies share their findings
    # in L_global a report with the image's own labels is neither its positive nor a negative
    emb = torch.nn.functional.normalize(torch.randn(len(idx), 8, generator=torch.Generator().manual_seed(0)), dim=1)
    text = torch.nn.functional.normalize(torch.randn(len(idx), 8, generator=torch.Generator().manual_seed(1)), dim=1)
    scale = torch.tensor(10.0)
    i = next(i for i in idx if (by_labels == by_labels[i]).sum() > 1)
    others = [j for j in idx if j == i or by_labels[j] != by_labels[i]]
    expect = -torch.log_softmax(scale * emb[i] @ text[others].T, 0)[others.index(i)]
    logits = mask_duplicates(scale * emb @ text.T, by_labels)
    assert torch.isclose(-torch.log_softmax(logits[i], 0)[i], expect)
    with pytest.raises(ValueError, match="study labels"):
        GlobalBatches(replace(pairs, labels=None), "medclip-tiny", negatives="labels")
