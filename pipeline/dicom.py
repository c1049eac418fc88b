"""Write real DICOM radiographs (CR / DX) with pydicom.

Used by the synthetic source, the tests and the benchmarks, so every normalize branch is exercised on files
that `pydicom.dcmread` reads without `force`: MONOCHROME1/2, 8 to 16 bits stored, rescale slope/intercept,
window center/width, a VOI LUT sequence, and compressed transfer syntaxes (JPEG 2000 / JPEG-LS lossless,
encoded by pylibjpeg-openjpeg and pyjpegls).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import (ExplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, generate_uid)

COMPRESSED = {"jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}
SOP_CLASS = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}


@dataclass
class DicomSpec:
    """How one radiograph is stored. `pixels` are stored values (already inverted for MONOCHROME1)."""

    modality: str = "DX"
    photometric: str = "MONOCHROME2"
    bits_stored: int = 12
    rescale: tuple[float, float] | None = None  # (slope, intercept)
    window: tuple[float, float] | None = None  # (center, width) in modality-LUT units
    voi_lut: np.ndarray | None = None  # LUT entries (uint16) mapping stored values from `voi_lut_first`
    voi_lut_first: int = 0
    voi_lut_bits: int = 12
    pixel_spacing: tuple[float, float] | None = (0.139, 0.139)
    view: str = "PA"
    compression: str | None = None  # None, "jpeg2000" or "jpegls"
    identifiers: dict = field(default_factory=dict)  # PatientName etc.; must never leave normalize


def write_dicom(path: str | Path, pixels: np.ndarray, spec: DicomSpec, *, uid_prefix: str | None = None) -> None:
    """Write `pixels` (rows, cols) of unsigned stored values as a DICOM file at `path`.

    UIDs derive from the file name (`uid_prefix`), so the same inputs give byte-identical files.
    """
    path = Path(path)
    pixels = np.asarray(pixels)
    if pixels.max(initial=0) >= 2**spec.bits_stored:
        raise ValueError(f"stored values exceed {spec.bits_stored} bits")
    stored = pixels.astype(np.uint8 if spec.bits_stored <= 8 else np.uint16)
    seed = uid_prefix or path.stem

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SOP_CLASS[spec.modality] if spec.modality in SOP_CLASS else SOP_CLASS["DX"]
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, "sop"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(entropy_srcs=["region-aware-medclip"])

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, "study"])
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, "series"])
    ds.Modality = spec.modality
    ds.ViewPosition = spec.view
    ds.BodyPartExamined = "CHEST"
    for key, value in spec.identifiers.items():
        setattr(ds, key, value)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.BitsAllocated = stored.dtype.itemsize * 8
    ds.BitsStored = spec.bits_stored
    ds.HighBit = spec.bits_stored - 1
    ds.PixelRepresentation = 0
    if spec.pixel_spacing:
        tag = "ImagerPixelSpacing" if spec.modality == "DX" else "PixelSpacing"
        setattr(ds, tag, [f"{v:.4f}" for v in spec.pixel_spacing])
    if spec.rescale:
        ds.RescaleSlope = f"{spec.rescale[0]:g}"
        ds.RescaleIntercept = f"{spec.rescale[1]:g}"
        ds.RescaleType = "US"
    if spec.window:
        ds.WindowCenter = f"{spec.window[0]:.1f}"
        ds.WindowWidth = f"{spec.window[1]:.1f}"
    if spec.voi_lut is not None:
        item = Dataset()
        lut = np.asarray(spec.voi_lut, dtype=np.uint16)
        item.LUTDescriptor = [len(lut) % 65536, spec.voi_lut_first, spec.voi_lut_bits]
        item.LUTExplanation = "synthetic soft-tissue curve"
        # LUT Data is US or OW; a US value over 64 KiB cannot be written in explicit VR, so large LUTs use OW
        if lut.nbytes < 65534:
            item.add_new(0x00283006, "US", lut.tolist())
        else:
            item.add_new(0x00283006, "OW", lut.astype("<u2").tobytes())
        ds.VOILUTSequence = Sequence([item])
    ds.PixelData = stored.tobytes()
    if spec.compression:
        ds.compress(COMPRESSED[spec.compression], stored, generate_instance_uid=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def read_header(path: str | Path) -> Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)
