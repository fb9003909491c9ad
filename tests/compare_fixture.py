"""A git + DVC repository of experiments for the `lm compare` tests, made without training.

The project's params.yaml and one stage, compare_reports.py, that writes the reports lm's stages write with
figures computed from the params, so each `dvc exp run -S ...` takes a second or two and the tests know every
expected number.
Two commits: the first from before reports/train/metrics.json had peak_memory_mb and n_params; HEAD has them.
Experiments of HEAD: the four of the issue (n_layers=6, performer with RoPE, task=mlm, seed=1) and a seed
sweep over another data.source; the workspace is left as HEAD.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP_SOURCE = "/data/corpora/civil_comments/train.csv"
EXPERIMENTS = {
    "deeper": ["model.n_layers=6"],
    "performer": ["model.attention=performer", "model.attention_options.use_rope=true"],
    "mlm": ["task=mlm"],
    "seed1": ["seed=1"],
    **{f"sweep-{seed}": [f"data.source={SWEEP_SOURCE}", f"seed={seed}"] for seed in range(3)},
}
CHANGED = [
    "task",
    "seed",
    "data.source",
    "model.n_layers",
    "model.attention",
    "model.attention_options.use_rope",
]

DVC_YAML = """
stages:
  reports:
    cmd: '"{python}" make_reports.py'
    deps: [make_reports.py, cost]
    params: [task, seed, data.source, model]
    metrics:
      - reports/metrics.json:
          cache: false
    outs:
      - reports/plots:
          cache: false
      - reports/train:
          cache: false
metrics:
  - reports/train/metrics.json
"""


def env() -> dict:
    out = dict(
        os.environ,
        DVC_NO_ANALYTICS="1",
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@example.com",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@example.com",
    )
    out["PYTHONPATH"] = str(REPO) + os.pathsep + out.get("PYTHONPATH", "")
    return out


def sh(root: Path, *command: str) -> str:
    proc = subprocess.run(command, cwd=root, env=env(), capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"{' '.join(command)}: {proc.stderr}"
    return proc.stdout


def dvc(root: Path, *args: str) -> str:
    return sh(root, sys.executable, "-m", "dvc", *args)


def init_repo(root: Path) -> Path:
    """A git + DVC repository with the project's params.yaml and the report-writing stage, nothing run."""
    root.mkdir(parents=True, exist_ok=True)
    sh(root, "git", "init", "-q", "-b", "main")
    sh(root, "git", "config", "commit.gpgsign", "false")
    dvc(root, "init", "-q")
    dvc(root, "config", "core.analytics", "false")
    (root / "params.yaml").write_text((REPO / "params.yaml").read_text())
    shutil.copy(Path(__file__).with_name("compare_reports.py"), root / "make_reports.py")
    (root / "dvc.yaml").write_text(DVC_YAML.format(python=sys.executable))
    (root / "cost").write_text("no\n")  # yes: reports/train/metrics.json has peak_memory_mb and n_params
    return root


def build(root: Path) -> Path:
    """The repository described at the top (~10 s: a second or two per experiment). The two commits get their
    reports written directly, as a `dvc repro` would (dvc exp show reads them from the commits' files)."""
    init_repo(root)
    for cost, message in (("no", "before the cost figures"), ("yes", "baseline")):
        (root / "cost").write_text(cost + "\n")
        sh(root, sys.executable, "make_reports.py")
        sh(root, "git", "add", "-A")
        sh(root, "git", "commit", "-qm", message)
    for name, sets in EXPERIMENTS.items():
        dvc(root, "exp", "run", "-q", "-n", name, *[a for s in sets for a in ("-S", s)])
        sh(root, "git", "reset", "-q", "--hard")  # the next experiment starts from HEAD's params
        sh(root, "git", "clean", "-qfd")
    return root


_BUILT: dict[str, Path] = {}


def experiments(tmp_path_factory) -> Path:
    """The repository, built once per test session (both test_compare_ files use it; no test writes in it)."""
    if "repo" not in _BUILT:
        _BUILT["repo"] = build(tmp_path_factory.mktemp("experiments"))
    return _BUILT["repo"]
