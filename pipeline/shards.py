"""HDF5 shards: the files between stages.

Layout of `results/<stage>/shard-XXXXX.h5`:
- root datasets have one row per image (row i is the same image in every stage's shard k); `image_id`
  is always there so stages can be joined and checked;
- a group with attribute `kind="ragged"` holds flat datasets plus `offsets` [N+1] int64 (CSR):
  the items of row i are `flat[offsets[i]:offsets[i+1]]`;
- a group with attribute `kind="table"` is a side table with its own row count (e.g. `rejected`);
- root attributes carry provenance: schema and stage version, the stage's config JSON and its SHA-256,
  the SHA-256 of every upstream file and model weight. No wall-clock time is stored, so the same inputs
  give a byte-identical file.
Files are written to a temporary name in the same folder and renamed into place.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import h5py
import numpy as np

from .config import canonical_json, config_sha256
from .io import atomic_path

SCHEMA_VERSION = 1
TEXT = h5py.string_dtype("utf-8")


def csr_offsets(lengths: Iterable[int]) -> np.ndarray:
    """Offsets [N+1] int64 from per-row item counts."""
    lengths = np.asarray(list(lengths), dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def csr_split(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    """The per-row pieces of a flat array."""
    return [flat[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


def _as_array(data: Any) -> np.ndarray:
    """Numeric arrays pass through; lists of text (and empty lists) become UTF-8 string arrays."""
    if isinstance(data, np.ndarray) and data.dtype.kind not in "OUS":
        return data
    seq = data.tolist() if isinstance(data, np.ndarray) else list(data)
    if not seq or isinstance(seq[0], (str, bytes)):
        return np.array([s.decode() if isinstance(s, bytes) else str(s) for s in seq], dtype=TEXT)
    return np.asarray(seq)


class ShardWriter:
    """Write one stage's shard atomically.

    >>> with ShardWriter(path, stage="normalize", stage_version=1, config=cfg, image_id=ids) as w:
    ...     w.rows("image", images)                     # (N, H, W) uint8, gzip, one image per chunk
    ...     w.ragged("rois", offsets, roi_boxes=boxes)  # flat (M, 4) + offsets (N+1,)
    ...     w.table("rejected", image_id=[...], reason=[...])
    """

    def __init__(self, path: str | Path, *, stage: str, stage_version: int, config: Any,
                 image_id: Sequence[str], upstream: dict[str, str] | None = None,
                 attrs: dict[str, Any] | None = None):
        self.path = Path(path)
        self.n = len(image_id)
        self._image_id = image_id
        self._attrs = {
            "schema_version": SCHEMA_VERSION,
            "stage": stage,
            "stage_version": int(stage_version),
            "config_json": canonical_json(config),
            "config_sha256": config_sha256(config),
            "upstream_json": json.dumps(upstream or {}, sort_keys=True),
            "n_rows": self.n,
            **(attrs or {}),
        }
        self._ctx = None
        self.f: h5py.File | None = None

    def __enter__(self) -> "ShardWriter":
        self._ctx = atomic_path(self.path)
        tmp = self._ctx.__enter__()
        # fixed libver and no time tracking: byte-identical output for identical input
        self.f = h5py.File(tmp, "w", libver=("earliest", "v110"), track_order=False)
        for k, v in self._attrs.items():
            self.f.attrs[k] = v
        self.rows("image_id", self._image_id)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self.f.close()
        self._ctx.__exit__(exc_type, exc, tb)
        return False

    @staticmethod
    def _create(group: h5py.Group, name: str, data: Any, chunk_rows: int | None = None, compress: bool = True
                ) -> h5py.Dataset:
        arr = _as_array(data)
        kwargs: dict[str, Any] = {"track_times": False}
        if compress and arr.dtype.kind in "ui" and arr.ndim >= 3 and arr.shape[0] > 0:
            # images: gzip level 4, one image per chunk, readable by any HDF5 tool
            kwargs.update(compression="gzip", compression_opts=4, shuffle=False,
                          chunks=(chunk_rows or 1, *arr.shape[1:]))
        return group.create_dataset(name, data=arr, **kwargs)

    def rows(self, name: str, data: Any, compress: bool = True) -> None:
        """A per-row dataset: its first axis must be the shard's row count. Images are gzip-compressed unless
        `compress` is False (arrays read whole at training time, where inflating would cost more than the disk)."""
        arr = _as_array(data)
        if len(arr) != self.n:
            raise ValueError(f"{name}: {len(arr)} rows, shard has {self.n}")
        self._create(self.f, name, arr, compress=compress)

    def ragged(self, name: str, offsets: np.ndarray, **flat: Any) -> None:
        """A CSR group: `offsets` [N+1] int64 and flat datasets of offsets[-1] rows each."""
        offsets = np.asarray(offsets, dtype=np.int64)
        if len(offsets) != self.n + 1 or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise ValueError(f"{name}: offsets must be non-decreasing, start at 0 and have {self.n + 1} entries")
        g = self.f.create_group(name)
        g.attrs["kind"] = "ragged"
        g.create_dataset("offsets", data=offsets, track_times=False)
        for key, data in flat.items():
            arr = _as_array(data)
            if len(arr) != offsets[-1]:
                raise ValueError(f"{name}/{key}: {len(arr)} items, offsets say {offsets[-1]}")
            self._create(g, key, arr)

    def table(self, name: str, **columns: Any) -> None:
        """A side table (its own row count), e.g. the images a stage rejected and why."""
        g = self.f.create_group(name)
        g.attrs["kind"] = "table"
        lengths = {len(_as_array(c)) for c in columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"table {name}: columns differ in length {sorted(lengths)}")
        for key, data in columns.items():
            self._create(g, key, data)


def decode(value: Any) -> Any:
    """bytes from h5py string datasets -> str; arrays of them -> lists of str."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.dtype.kind in "OS":
        return [decode(v) for v in value.tolist()]
    return value


class Shard:
    """Read a shard lazily: the file opens on first use in each process (safe with DataLoader workers)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._f: h5py.File | None = None
        self._pid: int | None = None

    @property
    def f(self) -> h5py.File:
        if self._f is None or self._pid != os.getpid():
            # locking=False: read-only opens must work on network filesystems without flock
            try:
                self._f = h5py.File(self.path, "r", locking=False)
            except OSError as e:  # h5py's message (e.g. "truncated file: eof = ...") does not name the file
                raise OSError(f"cannot read shard {self.path}: {e}") from e
            self._pid = os.getpid()
        return self._f

    def __getstate__(self) -> dict:
        # sent to a worker process: the worker opens its own handle
        return {"path": self.path, "_f": None, "_pid": None}

    def close(self) -> None:
        if self._f is not None and self._pid == os.getpid():
            self._f.close()
        self._f = None

    def __enter__(self) -> "Shard":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return int(self.f.attrs["n_rows"])

    @property
    def attrs(self) -> dict[str, Any]:
        return {k: decode(v) for k, v in self.f.attrs.items()}

    @property
    def config(self) -> dict:
        return json.loads(self.attrs["config_json"])

    @property
    def image_ids(self) -> list[str]:
        return decode(self.f["image_id"][()])

    def ragged_row(self, group: str, i: int) -> dict[str, Any]:
        g = self.f[group]
        a, b = g["offsets"][i : i + 2]
        return {k: decode(g[k][a:b]) for k in g if k != "offsets"}

    def ragged_rows(self, group: str, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Every row of a ragged group, each flat dataset read once (what `ragged_row` gives, per row): for
        loops over all images, where one small HDF5 read per row and key costs more than the whole shard."""
        g = self.f[group]
        offsets = g["offsets"][()]
        data = {k: decode(g[k][()]) for k in (keys or [k for k in g if k != "offsets"])}
        return [{k: v[a:b] for k, v in data.items()} for a, b in zip(offsets[:-1], offsets[1:])]

    def table(self, name: str) -> dict[str, list]:
        if name not in self.f:
            return {}
        return {k: decode(v[()]) for k, v in self.f[name].items()}

    def row(self, i: int) -> dict[str, Any]:
        """Everything stored for row i: per-row datasets and each ragged group's items."""
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        out: dict[str, Any] = {}
        for name, obj in self.f.items():
            if isinstance(obj, h5py.Dataset):
                out[name] = decode(obj[i])
            elif obj.attrs.get("kind") == "ragged":
                out[name] = self.ragged_row(name, i)
        return out


def describe(path: str | Path, row: int | None = None) -> str:
    """The text `python -m pipeline inspect` prints: tree, attributes and optionally one row."""
    lines = [str(path)]
    with Shard(path) as s:
        def visit(name: str, obj: Any) -> None:
            depth = name.count("/")
            pad = "  " * (depth + 1)
            if isinstance(obj, h5py.Dataset):
                comp = f" {obj.compression}({obj.compression_opts})" if obj.compression else ""
                chunks = f" chunks={obj.chunks}" if obj.chunks else ""
                lines.append(f"{pad}{name.split('/')[-1]}  {obj.shape} {obj.dtype}{chunks}{comp}")
            else:
                lines.append(f"{pad}{name.split('/')[-1]}/  [{obj.attrs.get('kind', 'group')}]")

        lines.append("datasets:")
        s.f.visititems(visit)
        lines.append("attributes:")
        for k, v in s.attrs.items():
            lines.append(f"  {k} = {v}")
        if row is not None:
            lines.append(f"row {row}:")
            for k, v in s.row(row).items():
                lines.append(f"  {k} = {_summary(v)}")
    return "\n".join(lines)


def _summary(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_summary(x)}" for k, x in v.items()) + "}"
    if isinstance(v, np.ndarray) and v.size > 8 and v.dtype.kind in "biuf":
        return f"array{v.shape} {v.dtype} {_array_stats(v)}"
    if isinstance(v, np.ndarray):
        return np.array2string(v, precision=4)
    if isinstance(v, list) and len(v) > 8:
        return f"[{', '.join(map(repr, v[:8]))}, ... ({len(v)} items)]"
    return repr(v)


def _array_stats(v: np.ndarray, max_levels: int = 6) -> str:
    """Statistics that survive NaN (unknown labels are NaN): for a small-integer array (labels, masks) the count
    of each value, highest first, and `blank` for NaN; otherwise NaN-aware min / max / mean and the NaN count."""
    values = v.astype(np.float64).ravel()
    blank = np.isnan(values)
    known = values[~blank]
    if not known.size:
        return f"all {values.size} NaN"
    levels, counts = np.unique(known, return_counts=True)
    if len(levels) <= max_levels and np.all(levels == np.round(levels)) and np.all(np.abs(levels) < 1000):
        parts = [f"{int(x)}: {c}" for x, c in zip(levels[::-1], counts[::-1])]
        return ", ".join(parts + ([f"blank: {int(blank.sum())}"] if blank.any() else []))
    nan = f" NaN={int(blank.sum())} of {values.size}" if blank.any() else ""
    return f"min={known.min():.4g} max={known.max():.4g} mean={known.mean():.4g}{nan}"


def check(path: str | Path) -> list[str]:
    """Problems with a shard (empty list when it is valid): schema version, row counts, offsets."""
    problems: list[str] = []
    try:
        s = Shard(path)
        attrs = s.attrs
    except OSError as e:
        return [f"cannot open as HDF5: {e}"]
    with s:
        if attrs.get("schema_version") != SCHEMA_VERSION:
            problems.append(f"schema_version {attrs.get('schema_version')} != {SCHEMA_VERSION}")
        for key in ("stage", "stage_version", "config_json", "config_sha256", "n_rows"):
            if key not in attrs:
                problems.append(f"missing root attribute {key}")
        if "image_id" not in s.f:
            return problems + ["missing image_id"]
        n = len(s.f["image_id"])
        if attrs.get("n_rows") != n:
            problems.append(f"n_rows attribute {attrs.get('n_rows')} != {n} image ids")
        if len(set(s.image_ids)) != n:
            problems.append("image_id has duplicates")
        for name, obj in s.f.items():
            if isinstance(obj, h5py.Dataset):
                if obj.shape[0] != n:
                    problems.append(f"{name}: {obj.shape[0]} rows, expected {n}")
            elif obj.attrs.get("kind") == "ragged":
                off = obj["offsets"][()] if "offsets" in obj else None
                if off is None or len(off) != n + 1:
                    problems.append(f"{name}/offsets: expected {n + 1} entries")
                    continue
                if off[0] != 0 or np.any(np.diff(off) < 0):
                    problems.append(f"{name}/offsets: must start at 0 and not decrease")
                for k, d in obj.items():
                    if k != "offsets" and d.shape[0] != off[-1]:
                        problems.append(f"{name}/{k}: {d.shape[0]} items, offsets end at {off[-1]}")
            elif obj.attrs.get("kind") == "table":
                lens = {d.shape[0] for d in obj.values()}
                if len(lens) > 1:
                    problems.append(f"table {name}: columns differ in length {sorted(lens)}")
        if config_sha256(json.loads(attrs.get("config_json", "null"))) != attrs.get("config_sha256"):
            problems.append("config_sha256 does not match config_json")
    return problems
