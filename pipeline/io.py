"""Small file helpers shared by every stage: atomic replace, hashing, logging set-up."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it into place, on error remove it.

    Same folder, so `os.replace` is atomic: a killed job leaves either the old file or none, never half.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def usable_threads(requested: int) -> int:
    """Threads for torch: what Snakemake granted, but never more than the cores this process may run on
    (`--cores 8` on a 2-core machine would otherwise oversubscribe it several times over)."""
    return max(1, min(int(requested), len(os.sched_getaffinity(0))))


def setup_logging(log_path: str | Path | None = None, level: int = logging.INFO, append: bool = False
                  ) -> logging.Logger:
    """Log to `log_path` (Snakemake's `log:` file) and stderr; no timestamps, so logs diff cleanly."""
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode="a" if append else "w", encoding="utf-8"))
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=handlers, force=True)
    for noisy in ("openjpeg", "pylibjpeg", "jpeg_ls", "matplotlib", "PIL"):  # per-tile / per-file chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return logging.getLogger("pipeline")


def files_sha256(paths) -> str:
    """One SHA-256 over several files' SHA-256s, in order: what a training checkpoint was made from."""
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()
