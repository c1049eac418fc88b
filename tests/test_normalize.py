"""Every normalization branch on DICOMs made with pydicom, on pydicom's own test files, and on bad input."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_windowing

from conftest import radiograph
from pipeline.shards import Shard, check
from pipeline.stages import normalize
from pipeline.stages.normalize import Rejected, letterbox, normalize_file, read_dicom, to_normalized, to_original

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"  # shipped in the wheel, never downloaded


def display(path, cfg):
    return read_dicom(path, cfg).pixels


def test_monochrome1_is_inverted(make_dicom, norm_cfg):
    stored = radiograph(bits=12)
    m2 = display(make_dicom("m2.dcm", stored, photometric="MONOCHROME2", window=(2048, 4096)), norm_cfg)
    m1 = display(make_dicom("m1.dcm", 4095 - stored, photometric="MONOCHROME1", window=(2048, 4096)), norm_cfg)
    # the same anatomy stored inverted must display the same after MONOCHROME1 inversion
    np.testing.assert_allclose(m1, m2, atol=2e-3)
    assert m2.mean() > 0.3


@pytest.mark.parametrize("bits", [8, 12, 14, 16])
def test_bit_depths_scale_by_bits_stored(make_dicom, norm_cfg, bits):
    stored = radiograph(bits=bits)
    stored[0, 0] = 2**bits - 1
    out = display(make_dicom(f"b{bits}.dcm", stored, bits_stored=bits, window=None), {**norm_cfg, "voi": "bits"})
    assert out.max() == pytest.approx(1.0) and out.min() >= 0
    np.testing.assert_allclose(out, stored / (2**bits - 1), atol=1e-6)


@pytest.mark.parametrize("func", ["LINEAR", "LINEAR_EXACT", "SIGMOID"])
def test_window_matches_pydicom(make_dicom, norm_cfg, func):
    path = make_dicom("w.dcm", window=(1800, 1200))
    ds = pydicom.dcmread(path)
    ds.VOILUTFunction = func
    ds.save_as(path)
    ours = display(path, norm_cfg)
    ref = apply_windowing(ds.pixel_array.astype(float), ds) / 4095.0  # 12-bit stored range
    np.testing.assert_allclose(ours, ref, atol=1e-4)
    assert read_dicom(path, norm_cfg).voi == "window"


def test_voi_lut_sequence_is_preferred_to_window(make_dicom, norm_cfg):
    lut = (4095 - np.arange(4096)).astype(np.uint16)  # an inverting LUT, unmistakable
    path = make_dicom("lut.dcm", window=(2048, 4096), voi_lut=lut, voi_lut_bits=12)
    rad = read_dicom(path, norm_cfg)
    stored = pydicom.dcmread(path).pixel_array
    assert rad.voi == "voi_lut"
    np.testing.assert_allclose(rad.pixels, (4095 - stored) / 4095, atol=1e-6)
    # voi: window ignores the LUT
    assert read_dicom(path, {**norm_cfg, "voi": "window"}).voi == "window"


def test_large_voi_lut_written_as_ow_is_applied(make_dicom, norm_cfg):
    lut = (np.arange(65536) // 16).astype(np.uint16)
    path = make_dicom("big.dcm", radiograph(bits=16), bits_stored=16, voi_lut=lut, voi_lut_bits=12)
    assert pydicom.dcmread(path).VOILUTSequence[0]["LUTData"].VR == "OW"
    np.testing.assert_allclose(display(path, norm_cfg), (radiograph(bits=16) // 16) / 4095, atol=1e-6)


def test_rescale_slope_intercept_applies_before_window(make_dicom, norm_cfg):
    stored = radiograph(bits=12)
    plain = display(make_dicom("p.dcm", stored, window=(2000, 3000)), norm_cfg)
    # the same pixels stored with an intercept: the window is given in modality (rescaled) units
    shifted = display(make_dicom("r.dcm", stored, rescale=(1.0, -1024.0), window=(2000 - 1024, 3000)), norm_cfg)
    np.testing.assert_allclose(shifted, plain, atol=1e-5)


def test_percentile_and_minmax_fallbacks(make_dicom, norm_cfg):
    path = make_dicom("nowin.dcm", window=None)
    rad = read_dicom(path, norm_cfg)  # voi_lut mode without LUT or window falls back to percentiles
    assert rad.voi == "percentile"
    assert (rad.pixels == 0).mean() == pytest.approx(0.005, abs=0.003)
    mm = read_dicom(path, {**norm_cfg, "voi": "minmax"}).pixels
    assert mm.min() == 0 and mm.max() == pytest.approx(1.0)


@pytest.mark.parametrize("codec", ["jpeg2000", "jpegls"])
def test_compressed_transfer_syntaxes_decode_like_uncompressed(make_dicom, norm_cfg, codec):
    ref = normalize_file(make_dicom("u.dcm", window=(2000, 3000)), norm_cfg)[0]
    path = make_dicom(f"{codec}.dcm", window=(2000, 3000), compression=codec)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID.is_compressed
    np.testing.assert_array_equal(normalize_file(path, norm_cfg)[0], ref)


def test_pydicom_wheel_files(norm_cfg):
    cfg = {**norm_cfg, "modalities": ["MR", "CT"]}
    ref = normalize_file(PYDICOM_FILES / "MR_small.dcm", cfg)[0]
    for name in ("MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm"):
        np.testing.assert_array_equal(normalize_file(PYDICOM_FILES / name, cfg)[0], ref)
    ct = read_dicom(PYDICOM_FILES / "CT_small.dcm", cfg)
    assert ct.modality == "CT" and ct.pixel_spacing[0] > 0
    with pytest.raises(Rejected, match="modality CT not in normalize.modalities"):
        read_dicom(PYDICOM_FILES / "CT_small.dcm", norm_cfg)


def _rgb_dicom(path):
    ds = pydicom.dcmread(PYDICOM_FILES / "SC_rgb_small_odd.dcm")
    ds.Modality = "DX"
    ds.save_as(path)
    return path


@pytest.mark.parametrize("case,reason", [
    ("html", "not a DICOM file"),
    ("truncated", "cannot decode pixel data"),
    ("no_pixels", "no pixel data"),
    ("no_syntax", "no transfer syntax"),
    ("missing", "file not found"),
    ("colour", "colour or unsupported photometric interpretation RGB"),
    ("ct", "modality CT not in"),
])
def test_bad_input_is_rejected_with_a_reason(tmp_path, make_dicom, norm_cfg, case, reason):
    path = tmp_path / f"{case}.dcm"
    if case == "html":
        path.write_text("<html><body>Login required</body></html>")
    elif case == "truncated":
        good = make_dicom("good.dcm").read_bytes()
        path.write_bytes(good[: len(good) - 4000])
    elif case == "no_pixels":
        ds = pydicom.dcmread(make_dicom("good.dcm"))
        del ds.PixelData
        ds.save_as(path)
    elif case == "no_syntax":
        ds = pydicom.dcmread(make_dicom("good.dcm"))
        del ds.file_meta.TransferSyntaxUID
        ds.save_as(path, enforce_file_format=False, implicit_vr=False, little_endian=True)
    elif case == "colour":
        _rgb_dicom(path)
    elif case == "ct":
        make_dicom(path.name, modality="CT")
    with pytest.raises(Rejected, match=reason):
        normalize_file(path, norm_cfg)


def test_letterbox_keeps_aspect_and_maps_boxes_back():
    pixels = np.ones((300, 150), np.float32)
    image, transform = letterbox(pixels, 64)
    assert image.shape == (64, 64)
    cols = np.nonzero(image.any(axis=0))[0]
    assert image.any(axis=1).all() and len(cols) == 32 and cols[0] == 16
    # the content box in normalized pixels maps back to the whole original image
    content = np.array([[cols[0], 0, cols[-1] + 1, 64]], float)
    np.testing.assert_allclose(to_original(content, transform), [[0, 0, 150, 300]], atol=1e-9)
    box = np.array([[10.0, 20.0, 100.0, 280.0]])
    np.testing.assert_allclose(to_original(to_normalized(box, transform), transform), box)


def test_png_and_jpg_inputs(tmp_path, norm_cfg):
    grey = (radiograph(bits=8)).astype(np.uint8)
    Image.fromarray(grey).save(tmp_path / "a.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "grey_rgb.jpg", quality=100)
    Image.fromarray((radiograph(bits=16)).astype(np.uint16)).save(tmp_path / "b16.png")
    colour = np.stack([grey, grey // 2, grey], -1)
    Image.fromarray(colour).save(tmp_path / "colour.png")
    np.testing.assert_allclose(normalize.read_image(tmp_path / "a.png", norm_cfg).pixels, grey / 255, atol=1e-6)
    assert normalize.read_image(tmp_path / "grey_rgb.jpg", norm_cfg).pixels.shape == grey.shape
    assert normalize.read_image(tmp_path / "b16.png", norm_cfg).bits_stored == 16
    with pytest.raises(Rejected, match="colour image"):
        normalize.read_image(tmp_path / "colour.png", norm_cfg)


def _public_copies(tmp_path, grey):
    """Greyscale films saved the way public collections ship them."""
    rng = np.random.default_rng(1)
    rgb = np.repeat(grey[..., None], 3, -1).astype(int) + rng.integers(-2, 3, (*grey.shape, 3))  # chroma noise
    rgb[10:14, 10:40] = [230, 30, 30]  # a burnt-in red arrow
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(tmp_path / "rgb_420.jpg", quality=85, subsampling=2)
    rgba = np.concatenate([np.repeat(grey[..., None], 3, -1), np.full((*grey.shape, 1), 255, np.uint8)], -1)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    clear = rgba.copy()
    clear[:20, :20, 3] = 0
    Image.fromarray(clear, "RGBA").save(tmp_path / "transparent.png")
    photo = np.stack([grey, np.roll(grey, 7, 1), 255 - grey], -1)
    Image.fromarray(photo).save(tmp_path / "true_colour.jpg", quality=95)
    rotated = Image.fromarray(grey)
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored rotated: "rotate 90 CW to display"
    rotated.save(tmp_path / "exif.jpg", exif=exif, quality=95)


def test_greyscale_saved_as_rgb_rgba_or_palette_is_kept_and_true_colour_rejected(tmp_path, norm_cfg):
    grey = radiograph(rows=192, cols=160, bits=8).astype(np.uint8)
    _public_copies(tmp_path, grey)
    jpg = normalize.read_image(tmp_path / "rgb_420.jpg", norm_cfg)
    assert jpg.conversion.startswith("RGB greyscale to L") and jpg.bits_stored == 8
    assert np.abs(jpg.pixels[20:] * 255 - grey[20:]).mean() < 6  # the film itself, within JPEG loss
    rgba = normalize.read_image(tmp_path / "rgba.png", norm_cfg)
    assert rgba.conversion == "opaque alpha dropped; RGBA greyscale to L (max channel difference 0)"
    np.testing.assert_allclose(rgba.pixels, grey / 255, atol=1e-6)
    pal = normalize.read_image(tmp_path / "palette.png", norm_cfg)
    assert pal.conversion.startswith("palette expanded")
    np.testing.assert_allclose(pal.pixels, grey / 255, atol=1e-6)
    assert normalize.read_image(tmp_path / "exif.jpg", norm_cfg).pixels.shape == grey.shape[::-1]
    with pytest.raises(Rejected, match=r"colour image \(RGB, channels differ"):
        normalize.read_image(tmp_path / "true_colour.jpg", norm_cfg)
    with pytest.raises(Rejected, match="transparent image"):
        normalize.read_image(tmp_path / "transparent.png", norm_cfg)
    # the stage keeps them and records the conversion per image
    studies = _studies(tmp_path, [tmp_path / n for n in ("rgb_420.jpg", "rgba.png", "true_colour.jpg")])
    counts = normalize.run(studies, "00000", tmp_path / "shard.h5", None, norm_cfg)
    assert counts == {"images": 3, "kept": 2, "rejected": 1}
    with Shard(tmp_path / "shard.h5") as s:
        assert [c.split(" (")[0] for c in s.table("rejected")["reason"]] == ["colour image"]
        assert s.row(1)["conversion"].startswith("opaque alpha dropped")
    assert check(tmp_path / "shard.h5") == []


def _studies(tmp_path, paths):
    import pandas as pd

    from pipeline.labels import OBSERVATIONS

    rows = [{"image_id": f"img{i}", "study_id": f"s{i}", "patient_id": f"p{i}", "split": "train", "view": "PA",
             "image_path": str(p), "report": "", "sex": "", "age": "", **{o: "" for o in OBSERVATIONS},
             "shard": "00000"} for i, p in enumerate(paths)]
    path = tmp_path / "studies.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_stage_records_rejections_and_keeps_going(tmp_path, make_dicom, norm_cfg):
    good = make_dicom("good.dcm", window=(2000, 3000), photometric="MONOCHROME1")
    bad = tmp_path / "bad.dcm"
    bad.write_text("not dicom")
    studies = _studies(tmp_path, [good, bad, tmp_path / "missing.dcm"])
    counts = normalize.run(studies, "00000", tmp_path / "shard.h5", tmp_path / "png", norm_cfg)
    assert counts == {"images": 3, "kept": 1, "rejected": 2}
    with Shard(tmp_path / "shard.h5") as s:
        assert s.image_ids == ["img0"]
        row = s.row(0)
        assert row["photometric"] == "MONOCHROME1" and row["original_size"].tolist() == [96, 80]
        assert row["image"].dtype == np.uint8 and row["image"].shape == (64, 64)
        assert s.table("rejected")["reason"] == ["not a DICOM file (no DICM preamble)", "file not found"]
    assert (tmp_path / "png" / "img0.png").exists()
    assert check(tmp_path / "shard.h5") == []


def test_shard_with_every_image_rejected_is_valid(tmp_path, norm_cfg):
    studies = _studies(tmp_path, [tmp_path / "gone1.dcm", tmp_path / "gone2.dcm"])
    normalize.run(studies, "00000", tmp_path / "shard.h5", None, norm_cfg)
    assert check(tmp_path / "shard.h5") == []
    with Shard(tmp_path / "shard.h5") as s:
        assert len(s) == 0 and s.f["image"].shape == (0, 64, 64)
        assert len(s.table("rejected")["image_id"]) == 2


def test_sixteen_bit_output(make_dicom, norm_cfg):
    image, _, _ = normalize_file(make_dicom("x.dcm", window=(2000, 3000)), {**norm_cfg, "bit_depth": 16})
    assert image.dtype == np.uint16 and image.max() > 255


def test_linear_window_end_points_follow_the_standard():
    # PS3.3 C.11.2.1.2.1: LINEAR maps c - 0.5 - (w-1)/2 to the minimum and c - 0.5 + (w-1)/2 to the maximum
    ds = Dataset()
    ds.WindowCenter, ds.WindowWidth = "50", "101"
    out = normalize.window(np.array([-10.0, -0.5, 49.5, 99.5, 200.0], np.float32), ds)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def _annotated_film(grey: np.ndarray, fraction: float) -> np.ndarray:
    """`grey` as RGB with a red arrow (shaft and head) and a yellow circle drawn on it, covering about `fraction`
    of the film, as figures of published collections mark a lesion."""
    rgb = np.repeat(grey[..., None], 3, -1).copy()
    h, w = grey.shape
    yy, xx = np.mgrid[:h, :w]
    ring = np.abs(np.hypot(yy - h * 0.55, xx - w * 0.6) - h * 0.15) < h * 0.01  # a circle around a lesion
    rgb[ring] = [240, 220, 40]
    target, row = fraction * h * w, int(h * 0.3)
    thickness = 1
    while np.mean(np.abs(rgb[..., 0].astype(int) - rgb[..., 2]) > 10) < fraction and thickness < h // 4:
        rgb[row : row + thickness, w // 8 : w // 2] = [230, 25, 25]  # the shaft, thickened until it covers enough
        rgb[row - thickness : row + 2 * thickness, w // 2 : w // 2 + thickness * 2] = [230, 25, 25]  # the head
        thickness += 1
    assert abs(np.mean(np.any(rgb != rgb[..., :1], -1)) - target / (h * w)) < 0.01
    return rgb


def test_greyscale_film_with_a_coloured_arrow_is_kept_as_annotated(tmp_path, norm_cfg):
    grey = radiograph(rows=240, cols=200, bits=8).astype(np.uint8)
    rgb = _annotated_film(grey, 0.03)  # above the 2% of plain JPEG noise the old rule allowed
    marked = np.any(rgb != rgb[..., :1], -1)
    Image.fromarray(rgb).save(tmp_path / "arrow.png")
    Image.fromarray(rgb).save(tmp_path / "arrow.jpg", quality=90)  # JPEG smears the colour into its neighbours
    png = normalize.read_image(tmp_path / "arrow.png", norm_cfg)
    assert png.conversion.startswith("RGB greyscale to L") and "annotated: 3." in png.conversion
    np.testing.assert_allclose(png.pixels[~marked], grey[~marked] / 255, atol=1e-6)  # the film is untouched
    np.testing.assert_allclose(png.pixels[marked], rgb[marked].mean(-1) / 255, atol=1 / 255)  # marks become grey
    jpg = normalize.read_image(tmp_path / "arrow.jpg", norm_cfg)
    assert "annotated" in jpg.conversion and jpg.pixels.shape == grey.shape


def test_benchmark_reader_keeps_annotated_films_and_skips_colour_figures(tmp_path, norm_cfg):
    from pipeline import benchmarks

    grey = radiograph(rows=240, cols=200, bits=8).astype(np.uint8)
    Image.fromarray(_annotated_film(grey, 0.03)).save(tmp_path / "arrow.jpg", quality=90)
    Image.fromarray(np.stack([grey, grey // 2, grey], -1)).save(tmp_path / "colour.png")
    image, _, original, rois, conversion = benchmarks._load({"image": str(tmp_path / "arrow.jpg")},
                                                             {"normalize": norm_cfg}, None)
    assert image.shape == (64, 64) and original == grey.shape and rois is None and "annotated" in conversion
    with pytest.raises(Rejected, match="colour image"):
        benchmarks._load({"image": str(tmp_path / "colour.png")}, {"normalize": norm_cfg}, None)


def test_colour_figure_is_rejected_with_its_coloured_fraction(tmp_path, norm_cfg):
    grey = radiograph(rows=240, cols=200, bits=8).astype(np.float64)
    # a heat map blended over the right lung: a colour figure, not a marked film
    heat = np.zeros(grey.shape)
    heat[60:180, 30:100] = 1.0
    rgb = np.stack([grey * (1 - 0.5 * heat) + 255 * 0.5 * heat, grey * (1 - 0.5 * heat), grey * (1 - 0.5 * heat)], -1)
    Image.fromarray(np.rint(rgb).astype(np.uint8)).save(tmp_path / "heat_map.png")
    with pytest.raises(Rejected, match=r"colour image \(RGB, channels differ by more than 10 levels at 1\d\.\d% of "
                                       r"pixels, more than the 10% that coloured annotations"):
        normalize.read_image(tmp_path / "heat_map.png", norm_cfg)
    # marks beyond the documented fraction are a colour figure too
    Image.fromarray(_annotated_film(grey.astype(np.uint8), 0.12)).save(tmp_path / "heavily_marked.png")
    with pytest.raises(Rejected, match="colour image"):
        normalize.read_image(tmp_path / "heavily_marked.png", norm_cfg)


def test_stage_records_annotated_films_per_image(tmp_path, norm_cfg):
    grey = radiograph(rows=240, cols=200, bits=8).astype(np.uint8)
    Image.fromarray(_annotated_film(grey, 0.03)).save(tmp_path / "arrow.png")
    Image.fromarray(grey).convert("RGB").save(tmp_path / "plain.png")
    Image.fromarray(np.stack([grey, grey // 2, grey], -1)).save(tmp_path / "colour.png")
    studies = _studies(tmp_path, [tmp_path / n for n in ("arrow.png", "plain.png", "colour.png")])
    assert normalize.run(studies, "00000", tmp_path / "shard.h5", None, norm_cfg) == {"images": 3, "kept": 2,
                                                                                       "rejected": 1}
    with Shard(tmp_path / "shard.h5") as s:
        assert "annotated" in s.row(0)["conversion"] and "annotated" not in s.row(1)["conversion"]
        assert s.table("rejected")["reason"][0].startswith("colour image (RGB")
