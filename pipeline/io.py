"""Small file helpers shared by every stage: atomic replace, hashing, logging set-up."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove `.<name>.tmp-<pid>` siblings of `path` that a killed write left (their process is gone)."""
    path = Path(path)
    stale = []
    for tmp in path.parent.glob(f".{path.name}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _pid_alive(int(pid))):
            tmp.unlink(missing_ok=True)
            stale.append(tmp)
    return stale


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; on success rename it into place, on error remove it.

    Same folder, so `os.replace` is atomic: a killed job leaves either the old file or none, never half. The
    temporary file of a write that was killed (SIGKILL, power loss) is removed by the next write of the same path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
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


def spare_cores(threads: int) -> int:
    """Cores this process may run on that `threads` compute threads leave free (for DataLoader workers)."""
    return max(0, len(os.sched_getaffinity(0)) - int(threads))


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


@contextlib.contextmanager
def logged(log_path: str | Path | None, append: bool = False) -> Iterator[logging.Logger]:
    """The body of a rule's script: logging set up (setup_logging), and the exception that stops the job written
    into the log with its traceback before it is raised again, so that the log Snakemake points at says why."""
    logger = setup_logging(log_path, append=append)
    try:
        yield logger
    except Exception:
        logger.exception("failed")
        raise
    finally:
        for handler in logging.getLogger().handlers:
            handler.flush()


def files_sha256(paths) -> str:
    """One SHA-256 over several files' SHA-256s, in order: what a training checkpoint was made from."""
    return hashlib.sha256("".join(sha256_file(p) for p in paths).encode()).hexdigest()


def progress(items: Iterable[T], total: int | None = None, desc: str = "", log: logging.Logger | None = None,
             unit: str = "images", initial: int = 0, every_s: float = 30.0) -> Iterator[T]:
    """Yield `items` and report progress: a tqdm bar when stderr is a terminal (shown only for loops that last
    over 2 s), else one log line every `every_s` seconds with the count, rate and ETA, so that a Snakemake log
    or a cluster job's output stays short. `initial` counts items done before (a resumed run)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items) + initial
    if sys.stderr.isatty():
        from tqdm import tqdm

        yield from tqdm(items, total=total, desc=desc, unit=f" {unit}", initial=initial, delay=2.0,
                        dynamic_ncols=True, leave=False)
        return
    log = log or logging.getLogger("pipeline")
    start = last = time.monotonic()
    done = initial
    for item in items:
        yield item
        done += 1
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            log.info("%s", progress_line(desc, done, total, (done - initial) / (now - start), unit))


def progress_line(desc: str, done: int, total: int | None, rate: float, unit: str) -> str:
    """'normalize 00003: 1200/5000 images, 40.0 images/s, ETA 1m35s' (no ETA without a total or a rate)."""
    line = f"{desc}: {done}{f'/{total}' if total is not None else ''} {unit}, {rate:.1f} {unit}/s"
    if total is not None and rate > 0:
        line += f", ETA {_duration((total - done) / rate)}"
    return line


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"
