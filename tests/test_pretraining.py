"""The synthetic pretraining cohort (stages/pretraining.py) and the teacher's sentence captions."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import config
from pipeline.data import load_pretraining_pairs, sentences
from pipeline.io import sha256_file
from pipeline.labels import OBSERVATIONS
from pipeline.shards import Shard, check, decode
from pipeline.stages import pretraining
from pipeline.stages.parse_reports import split_sections
from pipeline.trainer import GlobalBatches


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
