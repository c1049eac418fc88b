"""One measurement in a fresh Python process, so that its peak memory is its own."""

from __future__ import annotations

import json
import resource
import subprocess
import sys


def run_child(call: str, what: str) -> dict:
    """Run `call` (a Python expression that returns a JSON-able dict, e.g. "pipeline.bench.unet.child(...)") in a
    fresh interpreter and return its dict; `what` names the bench in the error."""
    module = call.split("(", 1)[0].rsplit(".", 1)[0]
    code = f"import json, {module}; print(json.dumps({call}))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{what} child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def peak_rss() -> dict:
    """Peak RSS in MB of this process and of its largest finished child (DataLoader workers)."""
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "worker_peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}
