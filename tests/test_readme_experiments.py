"""Every `dvc exp run` line of the README and the docs pages runs as written, in a fresh repository whose
committed baseline is a tiny config reading its data through a relative path outside the repository
(`../outside/comments.csv`, as a user's `../data/...`): workspace runs, `--temp` runs and a queued sweep
(`dvc queue start`), which then all appear in `lm compare`.

The README's placeholders get stand-ins of the same shape, made here: `path/to/unlabelled.csv` (a
`comment_text` column), `path/to/checkpoint` (a tiny BERT with its WordPiece tokenizer) and the hub dataset
`roneneldan/TinyStories` (a local directory of that name, which `hf:` reads before the hub). The GPU section's
lines need CUDA (bf16 autocast, 8 GPUs) and are the only ones left out; benchmarks/gpu_check runs them there.
"""

from __future__ import annotations

import json
import re
import shlex
import time
from pathlib import Path

import pytest
from conftest import REPO, project_repo, run_checked, tiny_params, write_params

pytestmark = pytest.mark.slow

NEEDS_CUDA = ("train.amp=bf16",)  # docs/distributed.md's GPU lines


def documented_commands(text: str) -> list[str]:
    """The `dvc exp run` and `dvc queue start` commands of one page, in order: lines of its bash blocks (with
    `\\` continuations joined, comments dropped) and inline `dvc exp run ...` spans of its prose."""
    found: list[tuple[int, str]] = []
    for block in re.finditer(r"```bash\n(.*?)```", text, re.S):
        offset = block.start(1)
        for line in block.group(1).replace("\\\n", " ").splitlines():
            command = " ".join(line.split("  #")[0].split())
            if command.startswith(("dvc exp run", "dvc queue start")):
                found.append((offset, command))
            offset += len(line) + 1
    found += [(m.start(), " ".join(m.group(1).split())) for m in re.finditer(r"`(dvc exp run [^`]+)`", text)]
    return [command for _, command in sorted(found)]


def readme_commands() -> list[str]:
    """The commands of README.md, then of each docs page (alphabetical), each once."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    commands = [c for page in pages for c in documented_commands(page.read_text())]
    return list(dict.fromkeys(commands))


def _stand_ins(root: Path) -> None:
    """The data and checkpoint the README's placeholders name, and the baseline's data outside the repo."""
    import torch
    import transformers
    from hf_tokenizers import bert_dir

    from lm.data.synthetic import generate_corpus

    corpus = generate_corpus(400, seed=0, identities=[])
    outside = root.parent / "outside"
    outside.mkdir()
    corpus[["text", "target"]].to_csv(outside / "comments.csv", index=False)
    (root / "path/to").mkdir(parents=True)
    corpus[["text"]].rename(columns={"text": "comment_text"}).to_csv(
        root / "path/to/unlabelled.csv", index=False
    )
    stories = root / "roneneldan/TinyStories"
    stories.mkdir(parents=True)
    (stories / "train.txt").write_text("\n".join(corpus["text"]) + "\n")
    checkpoint = bert_dir(root / "path/to")
    checkpoint.rename(root / "path/to/checkpoint")
    vocab = json.loads((root / "path/to/checkpoint/tokenizer.json").read_text())["model"]["vocab"]
    cfg = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    transformers.BertModel(cfg).save_pretrained(root / "path/to/checkpoint")


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("readme") / "repo"
    raw = tiny_params(
        **{"data.source": "../outside/comments.csv", "data.identity_columns": [], "train.threads": 1}
    )
    env = project_repo(root, raw, tmp_path_factory)
    _stand_ins(root)
    with open(
        root / ".git/info/exclude", "a"
    ) as exclude:  # the stand-ins are the user's files, not the project's
        exclude.write("path/\nroneneldan/\n")
    run_checked(["dvc", "repro"], root, env)
    run_checked(["git", "add", "-A"], root, env)
    run_checked(["git", "commit", "-qm", "baseline"], root, env)
    write_params(root / "params.yaml", raw)  # unchanged: the workspace is the committed baseline
    return root, env


def _experiments(root: Path, env: dict) -> list[dict]:
    shown = json.loads(run_checked(["dvc", "exp", "show", "--json"], root, env).stdout)
    return [rev for row in shown for exp in (row.get("experiments") or []) for rev in exp["revs"]]


def _back_to_baseline(root: Path, env: dict) -> None:
    """What the README says to do after a workspace run: restore the committed params and outputs."""
    run_checked(["git", "checkout", "--", "."], root, env)
    run_checked(["dvc", "checkout", "--force", "-q"], root, env, check=False)


def test_every_readme_dvc_exp_run_line_runs_from_the_baseline(baseline):
    root, env = baseline
    commands = readme_commands()
    runnable = [c for c in commands if not any(key in c for key in NEEDS_CUDA)]
    assert len(runnable) >= 8 and len(commands) - len(runnable) == 2, commands
    queued = 0
    for command in runnable:
        before = len(_experiments(root, env))
        if command.startswith("dvc queue start"):
            run_checked(shlex.split(command), root, env)
            _wait_for_queue(root, env)
            assert len(_experiments(root, env)) >= before, command
            continue
        run_checked(shlex.split(command), root, env)
        if "--queue" in command:
            queued += 1
            continue
        assert len(_experiments(root, env)) == before + 1, f"{command}: no experiment recorded"
        if "--temp" not in command:
            _back_to_baseline(root, env)
    assert queued, "the README shows a queued sweep"
    failed = [rev for rev in _experiments(root, env) if rev.get("error")]
    assert not failed, failed

    shown = run_checked(["lm", "compare"], root, env).stdout
    assert max(len(line) for line in shown.splitlines()) <= 160
    for kind in ("performer", "cosformer"):
        assert kind in shown


def _wait_for_queue(root: Path, env: dict, timeout: float = 1500) -> None:
    """`dvc queue start` returns at once; its worker runs the queued experiments one by one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = run_checked(["dvc", "queue", "status"], root, env).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            assert "Failed" not in status, status
            return
        time.sleep(5)
    raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")
