"""lm's CUDA path checked in one run of about five minutes (issue 22): the gpu tests, training throughput and
MFU beside Hugging Face, bf16 and fp16 losses beside fp32, DDP over NCCL, generation and serving.

    python benchmarks/gpu_check.py                    # a CUDA machine: writes benchmarks/results/gpu.json
    python benchmarks/gpu_check.py --dry-run          # any machine: CPU, tiny sizes, < 1 min, writes nothing
    python benchmarks/gpu_check.py --dry-run --out /tmp/gpu.json       # ... or writes this file
    python benchmarks/gpu_check.py --sections tests,loss_equality      # some sections only (a rerun)

Each section is one key of the JSON with its "status" (pass | fail | skipped) and its figures. A section that
raises is recorded as {"status": "fail", "error": "<its last line>"} and the others still run; once
--budget-s seconds have passed, the sections not yet started are skipped with the reason (they run in
RUN_ORDER: the quick checks first, the compiles later). The dry run uses
the CPU even where CUDA exists (subprocesses see no GPU), so it is the same everywhere; every CUDA-only part
says {"status": "skipped", "skipped": "no CUDA"}.

- tests: `pytest -m gpu` over tests/test_gpu.py (every gpu-marked test) and the CUDA variants of
  tests/test_fused.py (tests/test_dtype.py has none: it runs half precision on the CPU), with a junit xml:
  passed / failed / skipped counts and the failing test ids. Dry run: the same command, all skipped.
- train_step: training throughput and MFU at GPT-2 small size (124M, 1,024 tokens, bf16 autocast, fused
  attention) for lm eager, lm torch.compile'd and GPT2LMHeadModel (sdpa), the same batches, interleaved step
  by step, with benchmarks/train_step.py's models, step and FLOPs count; the same for a BERT-base-sized
  classifier (SequenceClassifier vs BertForSequenceClassification, right-padded rows of 512). Also lm's
  torch.compile graph breaks (torch._dynamo.explain over the call lm's training makes). Targets (issue 22):
  compiled lm tokens/s >= GPT-2's, MFU >= 40%. Dry run: a 2-layer model of width 32, eager only.
- loss_equality: lm's own step (lm.train.step.train_step on a trainee of lm.train.trainee.build_trainee) for
  50 steps on the same init and batches in fp32 and under bf16 autocast: the mean loss of the last 10 steps
  must agree within LOSS_REL_TOL; fp16 with the GradScaler: every loss finite and the loss falls. The
  batches follow a random Markov chain (4 successors per token), so the loss has something to learn. Dry
  run: CPU bf16 autocast vs fp32, a tiny model, 10 steps; fp16 skipped.
- ddp: `lm train` with train.nproc 2 (torchrun, NCCL) on a tiny pipeline built by the stages themselves,
  if there are 2 GPUs or more, else skipped. Dry run: the same with 2 CPU processes over gloo (~15 s).
- generate: greedy tokens/s with and without the KV cache (lm.infer.generate) on benchmarks/generate.py's
  model and on a GPT-2-small-sized one, and whether both give the same tokens.
- serve: `lm serve --backend eager` on a tiny pipeline-trained classifier, driven by benchmarks/serve.py's
  closed-loop clients at concurrency 64 for 5 s, scoring on the GPU (serve.device: cuda).

The JSON also holds the device (name, torch, CUDA, cuDNN), the wall time and the budget; it is the last line
of stdout and, on a GPU, benchmarks/results/gpu.json (benchmarks/record.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import record
import train_step as bench

REPO = record.REPO
SECTIONS = ("tests", "train_step", "loss_equality", "ddp", "generate", "serve")
# the quick in-process checks first, then the tests (a subprocess held to the time left), the long
# compiles, and what matters least
RUN_ORDER = ("loss_equality", "tests", "train_step", "generate", "serve", "ddp")
NO_CUDA = {"status": "skipped", "skipped": "no CUDA"}
# every test that needs CUDA: the gpu-marked module, and the test_fused variants that skip without CUDA
# (tests/test_gpu_check.py checks that no other test file asks for CUDA)
GPU_TESTS = (
    "tests/test_gpu.py",
    "tests/test_fused.py::test_fused_cuda_runs_in_the_autocast_dtype",
    "tests/test_serve.py::test_serve_scores_on_the_gpu_as_on_the_cpu",
)
BERT_BASE = bench.Shape(d=768, layers=12, heads=12, ff=3072, vocab=30528)  # BERT's 30,522 rounded up to 64s
TINY = bench.Shape(d=32, layers=2, heads=2, ff=64, vocab=256)
LOSS_REL_TOL = 2e-2  # bf16 vs fp32: |mean of the last 10 losses| relative difference
MFU_TARGET = 0.40


@dataclass
class Run:
    """What every section needs: the mode, the device, the time left and a scratch folder."""

    dry_run: bool
    device: torch.device
    deadline: float  # time.monotonic() after which no section starts
    work: Path

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        """A subprocess's time limit: at most `cap`, at most what the budget has left (but 30 s at least)."""
        return max(30.0, min(cap, self.left()))

    def env(self) -> dict:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        if not self.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU run everywhere
        return env


def sync(run: Run) -> None:
    if run.cuda:
        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------------------- tests


def junit_counts(path: Path) -> dict:
    """passed / failed / skipped counts and the failing test ids of a pytest junit xml."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failing = []
    for case in suite.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            module = case.get("classname", "").replace(".", "/")
            failing.append(f"{module}.py::{case.get('name')}")
    total, skipped = int(suite.get("tests", 0)), int(suite.get("skipped", 0))
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    return {
        "collected": total,
        "passed": total - failed - skipped,
        "failed": failed,
        "skipped": skipped,
        "failing": failing[:20],
    }


def section_tests(run: Run) -> dict:
    junit = run.work / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *GPU_TESTS]
    proc = subprocess.run(
        cmd, cwd=REPO, env=run.env(), capture_output=True, text=True, timeout=run.timeout(180)
    )
    out = {"command": " ".join(["python -m pytest -q", *GPU_TESTS])}
    out["summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
    if not junit.exists():
        return {**out, "status": "fail", "error": f"pytest exited {proc.returncode}: {proc.stderr[-500:]}"}
    counts = junit_counts(junit)
    out.update(failing=counts.pop("failing"), counts=counts)
    if counts["failed"] or proc.returncode != 0:
        return {"status": "fail", **out}
    if counts["passed"] == 0:
        return {"status": "skipped", "skipped": "no CUDA: every test skipped", **out}
    return {"status": "pass", **out}


# -------------------------------------------------------------------------------------------- train_step


def step_batch(task: str, shape: bench.Shape, batch: int, seq: int, device: torch.device):
    """benchmarks/train_step.py's batch: random ids (clm: seq + 1 of them), classify rows right-padded to
    random lengths in [seq/2, seq] with their mask, and 0/1 targets."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, shape.vocab, (batch, seq + (1 if task == "clm" else 0)), generator=g)
    lengths = torch.randint(seq // 2, seq + 1, (batch,), generator=g)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    ids = torch.where(mask.bool() | (task == "clm"), ids, torch.ones_like(ids))
    y = (torch.rand(batch, generator=g) < 0.5).float()
    return ids.to(device), mask.to(device), y.to(device)


def time_models(run: Run, task: str, shape: bench.Shape, batch: int, seq: int, steps: int) -> dict:
    """lm eager, lm compiled (CUDA only) and the Hugging Face model on the same batch, interleaved step by
    step (each goes first in turn); the median step time, tokens/s, MFU and each one's first loss."""
    ids, mask, y = step_batch(task, shape, batch, seq, run.device)
    amp = "bf16" if run.cuda else "none"

    def lm() -> torch.nn.Module:  # train_step.py's step calls a clm with its label rows, as training does
        return bench.lm_model(task, ids.shape[1], "standard", shape)

    models = {
        "lm": (lm(), False, False),
        "lm_compiled": (lm(), False, True),
        "hf": (bench.hf_model(task, ids.shape[1], "sdpa", shape), True, False),
    }
    if not run.cuda:  # inductor on a CPU takes minutes; the compiled path is what the GPU run checks
        del models["lm_compiled"]
    peak = bench.peak_bf16_tflops(torch.cuda.get_device_name()) if run.cuda else None
    row: dict = {"task": task, "batch": batch, "seq": seq, "amp": amp, "peak_tflops": peak}
    if task == "clm":
        row["lm_call"] = "labels and label_rows, as CausalLMObjective"
    steps_of, flops = {}, {}
    for name, (model, is_hf, compiled) in models.items():
        try:
            model.to(run.device)
            flops[name] = bench.flops_per_token(model, shape, seq, ids.shape[1])
            step = bench.make_step(model, task, is_hf, ids, mask, y, amp, compiled)
            first = step()  # warm-up (and the compile); same init and batch (dropout 0.1: close losses)
            step()
        except Exception as err:  # a compile that fails keeps the other models' figures
            traceback.print_exc(file=sys.stderr)
            row[name] = {"status": "fail", "error": error_line(err)}
            continue
        steps_of[name] = step
        row[name] = {"params": sum(p.numel() for p in model.parameters()), "first_loss": round(first, 4)}
    times: dict[str, list[float]] = {name: [] for name in steps_of}
    order = list(steps_of)
    for r in range(steps):
        k = r % len(order)
        for name in order[k:] + order[:k]:
            start = time.perf_counter()
            steps_of[name]()  # ends in loss.item(): the step's whole GPU work is in its time
            times[name].append(time.perf_counter() - start)
    for name, ts in times.items():
        median = statistics.median(ts)
        row[name].update(s_per_step=round(median, 4), tokens_per_s=round(batch * seq / median, 1))
        if peak:
            row[name]["mfu"] = round(flops[name] * batch * seq / median / (peak * 1e12), 4)
    for name in ("lm", "lm_compiled"):
        if name in times and "hf" in times:
            row[f"{name}_over_hf"] = round(row[name]["tokens_per_s"] / row["hf"]["tokens_per_s"], 3)
    if not run.cuda:
        row["lm_compiled"] = dict(NO_CUDA)
    return row


def graph_breaks(run: Run, shape: bench.Shape, seq: int) -> dict:
    """torch._dynamo.explain over the call lm's training makes (CausalLMObjective: ids, mask, labels and the
    labelled rows; bf16 autocast as on the GPU): the graphs, the breaks and their first distinct reasons."""
    import torch._dynamo as dynamo

    from lm.data.objectives import CausalLMObjective, to_device

    model = bench.lm_model("clm", seq + 1, "standard", shape).to(run.device)
    ids = torch.randint(4, shape.vocab, (2, seq + 1), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "attention_mask": torch.ones(2, seq, dtype=bool)}
    batch = to_device(CausalLMObjective().prepare(batch, train=True), run.device)
    dynamo.reset()
    with torch.autocast(run.device.type, dtype=torch.bfloat16):
        explained = dynamo.explain(model)(
            batch["input_ids"],
            batch["attention_mask"],
            labels=batch["labels"],
            label_rows=batch["label_rows"],
        )
    dynamo.reset()
    reasons = list(dict.fromkeys(r.reason.splitlines()[0][:200] for r in explained.break_reasons))
    return {
        "graphs": explained.graph_count,
        "graph_breaks": explained.graph_break_count,
        "first_reasons": reasons[:3],
    }


def guarded(fn: Callable[[], dict]) -> dict:
    """fn()'s figures, or {"status": "fail", "error": ...}: one part failing keeps the others' figures."""
    try:
        return fn()
    except Exception as err:
        traceback.print_exc(file=sys.stderr)
        return {"status": "fail", "error": error_line(err)}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def section_train_step(run: Run) -> dict:
    if run.cuda:
        plan = {"clm": (bench.GPT2_SMALL, 16, 1024), "classify": (BERT_BASE, 16, 512)}
        steps = 20
    else:
        plan = {"clm": (TINY, 2, 32), "classify": (TINY, 2, 32)}
        steps = 2
    out: dict = {"device": str(run.device)}
    for task, (shape, batch, seq) in plan.items():
        if task == "classify" and run.left() < 90:  # the classifier's compile needs about a minute
            out[task] = {"status": "skipped", "skipped": f"budget: {run.left():.0f} s left"}
            continue
        out[task] = guarded(lambda t=task, sh=shape, b=batch, L=seq: time_models(run, t, sh, b, L, steps))
    out["compile"] = guarded(lambda: graph_breaks(run, plan["clm"][0], 128 if run.cuda else 16))
    failed = [  # a part, or one model of a part
        k
        for k in ("clm", "classify", "compile")
        if out[k].get("status") == "fail"
        or any(isinstance(v, dict) and v.get("status") == "fail" for v in out[k].values())
    ]
    out["failed"] = failed
    if not run.cuda:
        return {"status": "fail" if failed else "pass", "note": "CPU plumbing only: no timing targets", **out}
    clm = out["clm"]
    targets = {
        "lm_compiled_tokens_per_s >= hf": clm.get("lm_compiled_over_hf", 0.0) >= 1.0,
        f"lm_compiled_mfu >= {MFU_TARGET}": (clm.get("lm_compiled", {}).get("mfu") or 0.0) >= MFU_TARGET,
    }
    out["targets"] = targets
    return {"status": "pass" if all(targets.values()) and not failed else "fail", **out}


# ----------------------------------------------------------------------------------------- loss_equality


def markov_batches(steps: int, batch: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """Causal-LM batches drawn from a random Markov chain with 4 successors per token (ids 1..vocab-1; 0 is
    the pad id): a loss that falls from ln(vocab) towards ln(4) as the model learns the chain."""
    g = torch.Generator().manual_seed(seed)
    successors = torch.randint(1, vocab, (vocab, 4), generator=g)
    out = []
    for _ in range(steps):
        ids = torch.empty(batch, seq + 1, dtype=torch.long)
        ids[:, 0] = torch.randint(1, vocab, (batch,), generator=g)
        choice = torch.randint(0, 4, (batch, seq), generator=g)
        for t in range(seq):
            ids[:, t + 1] = successors[ids[:, t], choice[:, t]]
        mask = torch.ones(batch, seq, dtype=torch.bool)
        out.append({"input_ids": ids[:, :-1], "labels": ids[:, 1:], "attention_mask": mask})
    return out


def lm_losses(run: Run, amp: str, model_cfg, batches: list[dict], vocab: int, seq: int) -> tuple[list, float]:
    """The training losses of lm's own step over `batches` (fresh trainee: the same init for every amp), and
    the GradScaler's final scale (1.0 when it is off)."""
    from types import SimpleNamespace

    from lm.config import Params, TrainConfig
    from lm.data.objectives import CausalLMObjective
    from lm.train.distributed import Dist
    from lm.train.logging import host_rows
    from lm.train.step import train_step
    from lm.train.trainee import build_trainee

    batch = len(batches[0]["input_ids"])
    train = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=5, grad_clip=1.0, amp=amp, batch_size=batch)
    params = Params(task="clm", model=model_cfg, train=train)
    enc = SimpleNamespace(vocab_size=vocab, max_len=seq, pad_id=0, meta={})
    world = Dist(rank=0, world_size=1, local_rank=0, device=run.device)
    trainee, _ = build_trainee(params, enc, len(batches), world, fresh=True)
    objective = CausalLMObjective()
    rows = [
        train_step(
            trainee,
            objective,
            [objective.prepare(b, train=True)],
            step=s,
            world=world,
            grad_clip=train.grad_clip,
            amp=amp,
        )
        for s, b in enumerate(batches)
    ]
    scale = trainee.scaler.get_scale() if trainee.scaler.is_enabled() else 1.0
    return [r["train_loss"] for r in host_rows(rows)], scale


def section_loss_equality(run: Run) -> dict:
    from lm.config import ModelConfig

    if run.cuda:
        steps, batch, seq, vocab = 50, 16, 256, 4096
        cfg = ModelConfig(d_model=256, n_layers=4, n_heads=4, d_ff=1024, dropout=0.0, attention_dropout=0.0)
    else:
        steps, batch, seq, vocab = 10, 4, 32, 256
        cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, dropout=0.0, attention_dropout=0.0)
    batches = markov_batches(steps, batch, seq, vocab)
    window = min(10, steps // 2)
    fp32, _ = lm_losses(run, "none", cfg, batches, vocab, seq)
    bf16, _ = lm_losses(run, "bf16", cfg, batches, vocab, seq)
    tail32, tail16 = statistics.fmean(fp32[-window:]), statistics.fmean(bf16[-window:])
    rel = abs(tail16 - tail32) / abs(tail32)
    out: dict = {
        "device": str(run.device),
        "steps": steps,
        "model": {
            "d_model": cfg.d_model,
            "n_layers": cfg.n_layers,
            "vocab": vocab,
            "batch": batch,
            "seq": seq,
        },
        "tolerance": f"relative difference of the mean loss of the last {window} steps <= {LOSS_REL_TOL}",
        "bf16": {
            "max_abs_loss_diff": round(max(abs(a - b) for a, b in zip(fp32, bf16)), 5),
            "last_mean_fp32": round(tail32, 5),
            "last_mean_bf16": round(tail16, 5),
            "rel_diff": round(rel, 5),
            "pass": rel <= LOSS_REL_TOL,
        },
        "fp32_losses": [round(x, 4) for x in fp32],
        "bf16_losses": [round(x, 4) for x in bf16],
    }
    if run.cuda:
        fp16, scale = lm_losses(run, "fp16", cfg, batches, vocab, seq)
        finite = all(x == x and abs(x) != float("inf") for x in fp16)
        falls = finite and statistics.fmean(fp16[-window:]) < statistics.fmean(fp16[:window])
        out["fp16"] = {"finite": finite, "falls": falls, "final_scale": scale, "pass": finite and falls}
        out["fp16_losses"] = [round(x, 4) for x in fp16]
    else:
        out["fp16"] = dict(NO_CUDA)
    ok = out["bf16"]["pass"] and out["fp16"].get("pass", True)
    return {"status": "pass" if ok else "fail", **out}


# ------------------------------------------------------------------------------------------- ddp / serve


def tiny_project(run: Run, name: str, **overrides) -> Path:
    """A scratch project for the stages: params.yaml from the repository's with tiny sizes and `overrides`
    (dotted keys), and data/ made by download, tokenize, encode and split (the embedded corpus)."""
    import stages.download
    import stages.encode
    import stages.split
    import stages.tokenize
    from lm.config import parse_params

    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = {
        "data.n_rows": 400,
        "tokenizer.vocab_size": 300,
        "encode.max_len": 32,
        "model.d_model": 32,
        "model.n_layers": 1,
        "model.n_heads": 2,
        "model.d_ff": 64,
        "train.batch_size": 16,
        "train.epochs": 1,
        "train.eval_every": 5,
        "train.warmup_steps": 2,
        "train.min_steps": None,
        "train.max_steps": 8,
        "train.ensemble": 1,
        "train.threads": 1,
    }
    for key, value in {**tiny, **overrides}.items():
        *parents, last = key.split(".")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    root = run.work / name
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    with chdir(root):
        for stage in (stages.download, stages.tokenize, stages.encode, stages.split):
            stage.run(params)
    return root


@contextlib.contextmanager
def chdir(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def train_two_processes(run: Run, device: str) -> dict:
    """`lm train` with train.nproc 2 (it launches torchrun; NCCL on CUDA, gloo on CPU) on a tiny project."""
    root = tiny_project(run, f"ddp-{device}", **{"train.nproc": 2, "train.device": device})
    cmd = [sys.executable, "-m", "lm.cli", "train", "--params", "params.yaml"]
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=root, env=run.env(), capture_output=True, text=True, timeout=run.timeout(180)
    )
    out = {"device": device, "processes": 2, "train_s": round(time.perf_counter() - start, 1)}
    if proc.returncode != 0:
        return {"status": "fail", "error": (proc.stderr.strip().splitlines() or ["?"])[-1], **out}
    metrics = json.loads((root / "reports" / "train" / "metrics.json").read_text())
    keys = ("steps", "train_loss", "val_loss", "seconds", "processes", "world_size", "device", "amp")
    return {"status": "pass", **out, "metrics": {k: metrics[k] for k in keys if k in metrics}}


def section_ddp(run: Run) -> dict:
    if not run.cuda:  # the plumbing, in ~15 s
        return {**train_two_processes(run, "cpu"), "note": "dry run: 2 CPU processes over gloo"}
    gpus = torch.cuda.device_count()
    if gpus < 2:
        return {"status": "skipped", "skipped": f"{gpus} GPU"}
    return {"gpus": gpus, **train_two_processes(run, "cuda")}


def section_serve(run: Run) -> dict:
    from serve import drive, free_port, load_texts, start_server, stop_server  # benchmarks/serve.py

    import stages.train
    from lm.config import load_params

    root = tiny_project(run, "serve")
    threads = torch.get_num_threads()
    with chdir(root):
        stages.train.run(load_params(root / "params.yaml"))  # (sets train.threads: 1 in this process)
    torch.set_num_threads(threads)
    device = "cuda" if run.cuda else "cpu"
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw.setdefault("serve", {})["device"] = device  # the eager scorer on the GPU
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    entry = {"model_dir": root / "models", "export_dir": root / "serving"}
    texts, source = load_texts(500)
    concurrency, seconds = (16, 1.5) if run.dry_run else (64, 5.0)
    port = free_port()
    server = start_server(root / "params.yaml", entry, port, ["--backend", "eager"])
    try:
        cell = asyncio.run(drive(f"http://127.0.0.1:{port}", texts, concurrency, 10**6, seconds))
    finally:
        stop_server(server)
    ok = cell["errors"] == 0 and cell["requests"] > 0
    return {
        "status": "pass" if ok else "fail",
        "device": device,
        "backend": "eager",
        "model": "tiny (the stages' own, d_model 32)",
        "texts": source,
        "seconds": seconds,
        **cell,
    }


# --------------------------------------------------------------------------------------------- generate


def decode_speed(run: Run, model: torch.nn.Module, new: int) -> dict:
    """Greedy tokens/s of lm.infer.generate with and without the KV cache (median of 3; the dry run: 1) and
    whether the two give the same tokens."""
    from lm.infer.generate import generate

    prompt = torch.randint(4, 200, (16,), generator=torch.Generator().manual_seed(0)).tolist()
    generate(model, prompt, max_new_tokens=4, temperature=0)  # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    tokens: dict[bool, list[int]] = {}
    for _ in range(3 if run.cuda else 1):
        for cached in (True, False):
            sync(run)
            start = time.perf_counter()
            tokens[cached] = generate(model, prompt, max_new_tokens=new, temperature=0, use_cache=cached)
            times[cached].append(time.perf_counter() - start)
    cache, no_cache = (round(new / statistics.median(times[c]), 1) for c in (True, False))
    return {
        "new_tokens": new,
        "cache_tokens_per_s": cache,
        "no_cache_tokens_per_s": no_cache,
        "speedup": round(cache / no_cache, 2),
        "same_tokens": tokens[True] == tokens[False],
    }


def section_generate(run: Run) -> dict:
    import generate as generate_bench  # benchmarks/generate.py

    new = 256 if run.cuda else 16
    gpt2 = bench.GPT2_SMALL if run.cuda else TINY
    models = {
        "generate.py standard (d 256, 4 layers)": generate_bench.build("standard", 16 + new),
        "gpt2-small (124M)" if run.cuda else "tiny (d 32, 2 layers)": bench.lm_model(
            "clm", 1024, "standard", gpt2
        ),
    }
    rows = {}
    for name, model in models.items():
        rows[name] = decode_speed(run, model.to(run.device).eval(), new)
    ok = all(r["same_tokens"] and r["cache_tokens_per_s"] > 0 for r in rows.values())
    return {"status": "pass" if ok else "fail", "device": str(run.device), "models": rows}


# ------------------------------------------------------------------------------------------------- main


SECTION_FUNCS: dict[str, Callable[[Run], dict]] = {
    "tests": section_tests,
    "train_step": section_train_step,
    "loss_equality": section_loss_equality,
    "ddp": section_ddp,
    "generate": section_generate,
    "serve": section_serve,
}


def error_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[-1][:300] if lines else ''}"


def run_sections(run: Run, names: list[str], budget_s: float) -> dict[str, dict]:
    """Each section in turn (RUN_ORDER), guarded: an exception becomes its error line; past the budget, a
    skip. Returned in the order of SECTIONS."""
    results: dict[str, dict] = {}
    for name in RUN_ORDER:
        if name not in names:
            results[name] = {"status": "skipped", "skipped": "not in --sections"}
            continue
        if run.left() <= 0:
            results[name] = {"status": "skipped", "skipped": f"budget: --budget-s {budget_s:g} spent"}
            continue
        start = time.monotonic()
        result = guarded(lambda n=name: SECTION_FUNCS[n](run))  # one failing section does not stop the rest
        result["wall_s"] = round(time.monotonic() - start, 1)
        results[name] = result
        print(f"{name}: {result['status']} ({result['wall_s']} s)", flush=True)
    return {name: results[name] for name in SECTIONS}


def device_info(run: Run) -> dict:
    info = {
        "device": str(run.device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if run.cuda:
        props = torch.cuda.get_device_properties(run.device)
        info.update(
            name=torch.cuda.get_device_name(run.device),
            gpus=torch.cuda.device_count(),
            capability=f"{props.major}.{props.minor}",
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    else:
        info["name"] = "cpu (dry run)"
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--dry-run", action="store_true", help="CPU, tiny sizes; CUDA parts skipped; no results file"
    )
    ap.add_argument(
        "--out", type=Path, default=None, help="write the JSON here instead (the dry run: nowhere)"
    )
    ap.add_argument("--budget-s", type=float, default=300.0, help="no section starts after this many seconds")
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}"
    )
    args = ap.parse_args()
    names = args.sections.split(",")
    unknown = sorted(set(names) - set(SECTIONS))
    if unknown:
        sys.exit(f"--sections: unknown {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: torch sees no CUDA GPU; run with --dry-run to check the script on a CPU")
    started = time.monotonic()
    device = torch.device("cpu") if args.dry_run else torch.device("cuda", 0)
    with tempfile.TemporaryDirectory(prefix="lm-gpu-check-") as tmp:
        run = Run(args.dry_run, device, started + args.budget_s, Path(tmp))
        print(f"gpu_check on {device_info(run)['name']}, budget {args.budget_s:g} s", flush=True)
        sections = run_sections(run, names, args.budget_s)
    failed = [name for name, s in sections.items() if s["status"] == "fail"]
    figures = {
        "benchmark": "gpu",
        "dry_run": args.dry_run,
        "status": "fail" if failed else "pass",
        "failed": failed,
        "device": device_info(run),
        "gpu": device_info(run)["name"] if run.cuda else None,  # benchmarks/report.py names it in the runs
        "budget_s": args.budget_s,
        "wall_s": round(time.monotonic() - started, 1),
        **sections,
    }
    out = record.finish(figures, quick=args.dry_run, save=not args.dry_run and args.out is None)
    if args.out is not None:
        record.write_json(args.out, out)


if __name__ == "__main__":
    main()
