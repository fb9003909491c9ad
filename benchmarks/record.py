"""How a benchmark hands in its figures: one JSON line on stdout, the same in benchmarks/results/<name>.json.

    figures = {"benchmark": "encode", ...}
    record.finish(figures, quick=args.quick, save=not args.no_save)

`finish` adds a "run" object (command line, UTC date, quick or full, CPU count and model, Python, torch and
platform, git commit) so that a results file says where its numbers came from, prints the JSON line (the last
line of every benchmark's output) and writes the file atomically (temp file, then rename). The speed tables
of docs/results.md are generated from these files by benchmarks/report.py.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def add_save_arg(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--no-save",
        action="store_true",
        help="print the JSON line only; do not write benchmarks/results/<name>.json",
    )


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_info(quick: bool) -> dict:
    """Where and how this run happened (stored under "run" in the figures)."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        threads: int | None = torch.get_num_threads()
    except ImportError:
        torch_version, threads = None, None
    return {
        "command": " ".join(["python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": "quick" if quick else "full",
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "torch": torch_version,
        "torch_threads": threads,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "commit": _commit(),
    }


def write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def finish(figures: dict, *, quick: bool, save: bool = True, results_dir: Path = RESULTS) -> dict:
    """Add the run information, print the JSON line, and (with save) write results/<benchmark>.json."""
    out = {**figures, "run": run_info(quick)}
    print(json.dumps(out), flush=True)
    if save:
        write_json(results_dir / f"{figures['benchmark']}.json", out)
    return out
