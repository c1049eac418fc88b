import hashlib
import re

import numpy as np
import pandas as pd
import pydicom
import pytest
from scipy import ndimage

from pipeline import config
from pipeline.labels import OBSERVATIONS
from pipeline.stages import ingest, synthesize
from pipeline.synthetic.anatomy import CNR_RANGES, LESION_FINDINGS, Thorax, expose, render_frontal


def tiny_cfg(**over):
    cfg = config.load()["data"]["synthetic"]
    cfg.update(n_studies=18, image_size=128, lateral_fraction=0.3, compressed_fraction=0.5)
    cfg.update(over)
    return cfg


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    synthesize.run(tiny_cfg(), out, workers=2)
    return out


def digests(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_byte_identical_files_whatever_the_worker_count(tree, tmp_path):
    again = tmp_path / "again"
    synthesize.run(tiny_cfg(), again, workers=1)
    assert digests(again) == digests(tree)
    other = tmp_path / "other"
    synthesize.run(tiny_cfg(seed=7), other, workers=1)
    assert digests(other) != digests(tree)


def test_files_are_real_dicom_in_the_mimic_layout(tree):
    meta = pd.read_csv(tree / "mimic-cxr-2.0.0-metadata.csv", dtype=str)
    syntaxes, photometrics = set(), set()
    for rec in meta.itertuples():
        path = tree / "files" / f"p{rec.subject_id[:2]}" / f"p{rec.subject_id}" / f"s{rec.study_id}" / f"{rec.dicom_id}.dcm"
        ds = pydicom.dcmread(path)  # no force
        assert ds.pixel_array.shape == (int(rec.Rows), int(rec.Columns))
        assert ds.Modality in ("CR", "DX") and ds.ViewPosition == rec.ViewPosition
        assert 12 <= ds.BitsStored <= 16 and "PatientName" in ds
        syntaxes.add(ds.file_meta.TransferSyntaxUID.name)
        photometrics.add(ds.PhotometricInterpretation)
    assert photometrics == {"MONOCHROME1", "MONOCHROME2"}
    assert len(syntaxes) >= 2
    assert {"PA", "AP", "LATERAL"} >= set(meta["ViewPosition"]) and "LATERAL" in set(meta["ViewPosition"])


def test_ingest_reads_the_tree_through_the_mimic_path(tree):
    df = ingest.read_mimic(tree)
    split = pd.read_csv(tree / "mimic-cxr-2.0.0-split.csv", dtype=str)
    assert len(df) == len(split) and (df["report"].str.len() > 0).all()
    ingest.check_patient_splits(ingest.assign_splits(df, config.load()["data"]["split"]))


def _norm(text):
    return " ".join(text.split())


def test_labels_agree_with_the_report_phrases(tree):
    labels = pd.read_csv(tree / "mimic-cxr-2.0.0-chexpert.csv", dtype={"study_id": str, "subject_id": str})
    phrases = pd.read_csv(tree / "ground_truth" / "phrases.csv", dtype={"study_id": str}, keep_default_na=False)
    checked = 0
    for rec in labels.to_dict("records"):
        sid, study = rec["subject_id"], rec["study_id"]
        report = _norm((tree / "files" / f"p{sid[:2]}" / f"p{sid}" / f"s{study}.txt").read_text()).lower()
        ph = phrases[phrases["study_id"] == study]
        for obs in OBSERVATIONS:
            if obs == "No Finding":
                continue
            value = rec[obs]
            rows = ph[ph["observation"] == obs]
            if value == 1:
                want = rows[~rows["negated"] & ~rows["uncertain"]]
            elif value == -1:
                want = rows[rows["uncertain"]]
            elif value == 0:
                want = rows[rows["negated"]]
            else:  # not mentioned, or only offered as a possibility (no label: pipeline.reports.score.study_labels)
                assert (rows["hedge"] == "possible").all(), (study, obs)
                continue
            assert len(want), (study, obs, value)
            # the phrase really is in the report text
            assert any(_norm(p).lower() in report for p in want["phrase"]), (study, list(want["phrase"]))
            checked += 1
    assert checked > 50


def test_reports_have_mimic_sections_and_deid_marks(tree):
    texts = [p.read_text() for p in (tree / "files").rglob("s*.txt")]
    assert all("IMPRESSION:" in t and "EXAMINATION:" in t and "___" in t for t in texts)
    assert any(re.search(r"\bno (pneumothorax|pleural effusion|focal consolidation)", t, re.I) for t in texts)


def test_ground_truth_masks_and_boxes(tree):
    from PIL import Image

    meta = pd.read_csv(tree / "mimic-cxr-2.0.0-metadata.csv", dtype=str)
    findings = pd.read_csv(tree / "ground_truth" / "findings.csv", dtype={"dicom_id": str})
    for rec in meta.itertuples():
        mask_path = tree / "ground_truth" / "masks" / f"{rec.dicom_id}.png"
        if rec.ViewPosition == "LATERAL":
            assert not mask_path.exists()
            continue
        mask = np.asarray(Image.open(mask_path))
        right, left = (mask & 1) > 0, (mask & 2) > 0
        assert right.sum() > 0.05 * mask.size and left.sum() > 0.05 * mask.size
        # the patient's right lung is on the image's left
        assert np.nonzero(right)[1].mean() < np.nonzero(left)[1].mean()
        for f in findings[findings["dicom_id"] == rec.dicom_id].itertuples():
            assert 0 <= f.x0 < f.x1 <= mask.shape[1] and 0 <= f.y0 < f.y1 <= mask.shape[0]
            if f.finding in LESION_FINDINGS:
                assert (mask[f.y0:f.y1, f.x0:f.x1] & 4).any()
                lo, hi = CNR_RANGES[f.finding]
                assert lo * 0.99 <= f.cnr <= hi * 1.01, (f.finding, f.cnr)
            else:
                assert np.isnan(f.cnr)


def test_phrases_state_the_drawn_side_zone_and_size(tree):
    """A present finding's phrase names the side, zone and size of what was drawn (when its words name one)."""
    meta = pd.read_csv(tree / "mimic-cxr-2.0.0-metadata.csv", dtype=str)
    frontal = meta[meta["ViewPosition"] != "LATERAL"].set_index("study_id")["dicom_id"]
    findings = pd.read_csv(tree / "ground_truth" / "findings.csv", dtype={"dicom_id": str}, keep_default_na=False)
    phrases = pd.read_csv(tree / "ground_truth" / "phrases.csv", dtype={"study_id": str}, keep_default_na=False)
    checked = 0
    for p in phrases[(phrases["region"] >= 0) & ~phrases["negated"]].itertuples():
        rows = findings[(findings["dicom_id"] == frontal[p.study_id]) & (findings["finding_index"] == p.region)]
        assert len(rows) == 1
        f = rows.iloc[0]
        assert p.finding == f["finding"] and p.size == f["size"]
        if p.laterality:
            assert p.laterality == f["laterality"], (p.phrase, f["laterality"])
        if p.zone and f["zone"]:
            assert p.zone == f["zone"], (p.phrase, f["zone"])
        checked += 1
    assert checked > 10


@pytest.mark.parametrize("kind", ["pleural_effusion", "pneumothorax", "consolidation", "nodule", "mass",
                                  "atelectasis", "edema", "support_devices", "cardiomegaly"])
def test_each_finding_changes_the_image_inside_its_region_only(kind):
    for seed in range(3):
        thorax = Thorax(np.random.default_rng(seed))
        base = render_frontal(thorax, np.random.default_rng(100 + seed), 256, [])
        rad = render_frontal(thorax, np.random.default_rng(100 + seed), 256, [kind])
        diff = np.abs(rad.density - base.density)
        f = next(f for f in rad.findings if f.kind == kind)
        x0, y0, x1, y1 = f.box
        region = np.zeros(diff.shape, bool)
        region[y0:y1, x0:x1] = True
        if kind == "edema":  # a haze over both lungs, strongest perihilar
            lungs = rad.right_lung | rad.left_lung
            assert diff[~ndimage.binary_dilation(lungs, iterations=3)].max() < 1e-6
            assert diff[f.mask].mean() > 2 * diff[lungs & ~f.mask].mean()
            continue
        if kind == "cardiomegaly":  # the heart grows over the lungs, which run on behind it in the ground truth
            lungs = rad.right_lung | rad.left_lung
            assert (base.right_lung | base.left_lung).sum() == lungs.sum()
            assert (f.mask & lungs).sum() > 0.1 * f.mask.sum()
            # the lung fields have a 2-pixel Gaussian edge: beyond 8 pixels the change is under one
            # 12-bit grey level (1/4095)
            assert diff[~ndimage.binary_dilation(region, iterations=8)].max() < 1 / 4095
            continue
        near = ndimage.binary_dilation(region, iterations=4)
        assert diff[~near].max() < 1e-3, kind
        changed = f.mask if f.mask is not None else region
        # soft-edged and low in contrast, but above the detector noise
        assert diff[changed].mean() > rad.noise, kind
        if f.mask is not None:
            lung = rad.right_lung if f.laterality == "right" else rad.left_lung
            assert (f.mask & lung).sum() > 0.5 * f.mask.sum() if kind != "support_devices" else True


@pytest.mark.parametrize("kind", sorted(CNR_RANGES))
def test_a_drawn_finding_has_the_contrast_to_noise_ratio_it_records(kind):
    """CNR = |mean attenuation change over the finding's mask| / detector noise, within the configured range."""
    lo, hi = CNR_RANGES[kind]
    for seed in range(3):
        thorax = Thorax(np.random.default_rng(seed))
        base = render_frontal(thorax, np.random.default_rng(200 + seed), 256, [])
        rad = render_frontal(thorax, np.random.default_rng(200 + seed), 256, [kind])
        f = next(f for f in rad.findings if f.kind == kind)
        assert lo * 0.99 <= f.cnr <= hi * 1.01
        measured = abs((rad.density - base.density)[f.mask].mean()) / rad.noise
        # the in-plane turn resamples image and mask: a few percent either way
        assert measured == pytest.approx(f.cnr, rel=0.2), (kind, measured, f.cnr)


def test_the_same_seed_draws_the_same_film():
    a = render_frontal(Thorax(np.random.default_rng(3)), np.random.default_rng(4), 128, ["nodule", "pleural_effusion"])
    b = render_frontal(Thorax(np.random.default_rng(3)), np.random.default_rng(4), 128, ["nodule", "pleural_effusion"])
    assert np.array_equal(a.density, b.density) and [f.box for f in a.findings] == [f.box for f in b.findings]


def _binned(img, k):
    rows, cols = img.shape[0] // k * k, img.shape[1] // k * k
    return img[:rows, :cols].reshape(rows // k, k, cols // k, k).mean((1, 3))


def test_a_film_drawn_small_looks_like_the_detector_sized_film_binned():
    """The pretraining cohort is drawn at 128 rows, the target cohort at 512 and resampled: noise per pixel and
    the thin device line must not depend on the size a film is drawn at (a line of a fixed pixel width was four
    times as strong at 128 rows, and its fine-scale noise 2.6 times the binned film's)."""
    flat = np.full((512, 512), 0.5, np.float32)
    big = _binned(expose(flat, np.random.default_rng(1), 12, "MONOCHROME2", 0.01).astype(np.float32), 4)
    small = expose(flat[:128, :128], np.random.default_rng(1), 12, "MONOCHROME2", 0.01).astype(np.float32)
    centre = np.s_[32:96, 32:96]  # away from the heel effect's ramp and the burnt-in marker
    big_noise, small_noise = (ndimage.gaussian_laplace(x, 1)[centre].std() for x in (big, small))
    assert small_noise == pytest.approx(big_noise, rel=0.25)
    for seed in range(3):
        added = {}
        for rows in (128, 512):
            thorax = Thorax(np.random.default_rng(seed))
            base = render_frontal(thorax, np.random.default_rng(50 + seed), rows, [])
            rad = render_frontal(thorax, np.random.default_rng(50 + seed), rows, ["support_devices"])
            added[rows] = (rad.density - base.density).sum() / rows**2  # attenuation per unit film area
        assert added[128] == pytest.approx(added[512], rel=0.15)


def test_montage_compare_shows_real_films_beside_synthetic_ones(tree, tmp_path):
    from PIL import Image

    from pipeline.montage import montage, real_films

    real = tmp_path / "real"
    real.mkdir()
    for i, shape in enumerate([(300, 240), (200, 260)]):  # portrait and landscape films
        Image.fromarray(np.random.default_rng(i).integers(0, 255, shape, dtype=np.uint8)).save(real / f"r{i}.png")
    (real / "notes.txt").write_text("not an image")
    films = real_films(real, 8, 64)
    assert [name for name, _ in films] == ["r0.png", "r1.png"]
    assert all(image.shape == (64, 64) and image.dtype == np.uint8 for _, image in films)
    out = tmp_path / "compare.png"
    montage(tree, out, n=4, compare=real)
    assert Image.open(out).size[0] > 0
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no readable"):
        montage(tree, tmp_path / "none.png", n=4, compare=empty)


def test_vessel_walks_draw_as_one_draw_per_step():
    """_vessels draws each stretch's jitter in one call: the same pixels and generator state as a walk that draws
    at every step (the plain form, written out here), so the speed-up changed no film."""
    from pipeline.synthetic.anatomy import _blur, _vessels

    def stepwise(rng, shape, px, hila, reach):
        canvas = np.zeros(shape, np.float32)
        for hx, hy, s in hila:
            for _ in range(14):
                angle = rng.uniform(-0.45, 1.0) * np.pi * 0.5 + (np.pi / 2 if rng.random() < 0.5 else 0)
                heading = np.array([s * abs(np.cos(angle)), np.sin(angle) * (1 if rng.random() < 0.6 else -1)])
                pos, length = np.array([hx, hy]), reach * rng.uniform(0.5, 1.0)
                for k in range(60):
                    heading += rng.normal(0, 0.12, 2)
                    heading /= np.linalg.norm(heading) + 1e-9
                    pos = pos + heading * length / 60
                    r, c = int(pos[1] / px), int(pos[0] / px)
                    if 0 <= r < shape[0] and 0 <= c < shape[1]:
                        canvas[r, c] += (1 - k / 60) ** 1.5
                    if k in (20, 38) and rng.random() < 0.7:
                        heading = heading + rng.normal(0, 0.6, 2)
        return _blur(canvas, max(0.8, 0.0025 / px)) * 3.0

    for seed in range(40):
        args = ((90 + seed, 128), 0.003 + 0.0002 * (seed % 5), [(0.12, 0.15, 1), (0.25, 0.15, -1)], 0.12)
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert np.array_equal(_vessels(a, *args), stepwise(b, *args))
        assert a.random() == b.random()  # the same draws consumed
