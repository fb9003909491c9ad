"""The training engine against references: accumulation == one big batch, clipping of the whole accumulated
gradient, optimizer parameter groups, the schedule formula, AMP, the classifier's imbalance handling, the
data order, early stopping with best-model export, and exact resume after a crash (in process; the SIGKILL
and DDP versions are in test_train_resume.py and test_ddp.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SPECIALS, tiny_params, write_fake_encoded

from lm.config import Params, TrainConfig, parse_params
from lm.data.batches import make_items
from lm.data.encoded import Encoded
from lm.data.objectives import ClassifyObjective, make_objective
from lm.data.split import load_split
from lm.errors import LmError
from lm.train import loop
from lm.train.checkpoint import CHECKPOINT, load_checkpoint
from lm.train.distributed import Dist
from lm.train.optim import build_optimizer, build_scheduler, param_groups
from lm.train.plan import epochs_for, min_steps_for
from lm.train.step import autocast_ctx, optimizer_step
from lm.train.stream import TrainStream, class_weights
from lm.train.validation import validate

CPU = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _params(task: str, **overrides) -> Params:
    base = {
        "task": task,
        "train.batch_size": 8,
        "train.epochs": 2,
        "train.eval_every": 3,
        "train.warmup_steps": 1,
        "train.threads": 1,
        "model.dropout": 0.0,
        "model.attention_dropout": 0.0,
    }
    return parse_params(tiny_params(**{**base, **overrides}))


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _data(root: Path, task: str, n_docs: int = 72) -> Path:
    if not (root / "data").exists():
        write_fake_encoded(root, task, n_docs=n_docs)
    return root


def _train(root: Path, params: Params, resume=False, out: str = "models") -> loop.TrainResult:
    return loop.train(
        params,
        encoded_dir=root / "data/encoded",
        split_dir=root / "data/split",
        tokenizer_dir=root / "data/tokenizer",
        out_dir=root / out,
        reports_dir=root / "reports" / out,
        resume=resume,
    )


def _weights(root: Path, out: str = "models") -> dict[str, torch.Tensor]:
    return load_checkpoint(root / out / CHECKPOINT)["model"]


def _assert_close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=atol, rtol=0), (
            f"{name}: max diff {(a[name] - b[name]).abs().max()}"
        )


# ---------------------------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("task", ["classify", "mlm", "clm"])
def test_grad_accum_4_of_batch_2_equals_one_batch_of_8(tmp_path, task):
    root = _data(tmp_path, task)
    big = _train(root, _params(task, **{"train.batch_size": 8}), out="big")
    acc = _train(root, _params(task, **{"train.batch_size": 2, "train.grad_accum_steps": 4}), out="acc")
    assert big.steps == acc.steps >= 8 and big.best_step == acc.best_step
    _assert_close(
        _weights(root, "big"), _weights(root, "acc"), atol=3e-5
    )  # Adam amplifies float32 summation order
    np.testing.assert_allclose(
        [r["train_loss"] for r in big.step_log], [r["train_loss"] for r in acc.step_log], rtol=1e-5
    )
    np.testing.assert_allclose(
        [r["grad_norm"] for r in big.step_log], [r["grad_norm"] for r in acc.step_log], rtol=1e-4
    )
    assert big.step_log[0]["train_loss"] != big.step_log[-1]["train_loss"]  # it trained


def _micro_batches(root: Path, params: Params, batch: int, accum: int):
    enc = Encoded.open(root / "data/encoded")
    rows = np.load(root / "data/split/train.npy")
    items = make_items(enc, rows, params.task, enc.max_len)
    objective = make_objective(params, enc, rows)
    stream = TrainStream(items, seed=params.seed, batch_size=batch, grad_accum_steps=accum)
    return objective, [objective.prepare(b, train=True, epoch=0) for b in stream.micro_batches(0, 0)]


def _model(params: Params, enc_vocab: int = 64, max_len: int = 16):
    from lm.model import build_model

    return build_model(
        params.model,
        task=params.task,
        vocab_size=enc_vocab,
        max_len=max_len,
        pad_id=SPECIALS["<|pad|>"],
        seed=params.seed,
    )


@pytest.mark.parametrize("task", ["classify", "mlm"])
def test_clipping_sees_the_whole_accumulated_gradient(tmp_path, task):
    """SGD(lr=1) makes the update the clipped gradient itself: it must be clip * g / |g| where g is the
    gradient of the mean loss over the whole batch of 8, though it is accumulated over 4 micro-batches."""
    root = _data(tmp_path, task)
    params = _params(task)
    # brute force: one batch of 8, mean loss, plain autograd
    objective, (full,) = _micro_batches(root, params, batch=8, accum=1)
    ref = _model(params)
    mean_loss = objective.loss_sum(ref, full) / full["count"]
    mean_loss.backward()
    g = torch.cat([p.grad.flatten() for p in ref.parameters() if p.grad is not None])
    g_norm = float(g.norm())
    clip = g_norm / 10  # active
    # the loop's step: 4 micro-batches of 2
    _, micro = _micro_batches(root, params, batch=2, accum=4)
    model = _model(params)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    row = optimizer_step(
        model=model,
        wrapped=model,
        ddp=None,
        objective=objective,
        micro=micro,
        world=CPU,
        optimizer=sgd,
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        grad_clip=clip,
        amp="none",
    )
    assert float(row["grad_norm"]) == pytest.approx(g_norm, rel=1e-5)
    # normalised by the targets of all 8 rows
    assert float(row["train_loss"]) == pytest.approx(float(mean_loss.detach()), rel=1e-6)
    assert int(row["tokens"]) == int(full["attention_mask"].sum())
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        expected = before[name] - (q.grad * (clip / g_norm) if q.grad is not None else 0)
        assert torch.allclose(p.detach(), expected, atol=1e-6), name


@dataclass(frozen=True)
class SimulatedRank(Dist):
    """One rank of a simulated DDP group in this process: summing the step's target count over the ranks adds
    what the other ranks hold (the sums of losses and tokens, which are only logged, stay this rank's)."""

    others_count: float = 0.0

    def sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.others_count if t.ndim == 0 else t


@pytest.mark.parametrize("task", ["classify", "mlm"])
@pytest.mark.parametrize("world, accum", [(1, 4), (2, 2), (4, 1), (2, 1)])
def test_sgd_step_of_ranks_and_micro_batches_equals_one_batchs_mean_loss_gradient(
    tmp_path, task, world, accum
):
    """Plain SGD(lr=1) shows the gradient's scale (Adam would hide it): the update of each simulated rank is
    its gradient, and DDP averages the ranks' gradients. That average must be the gradient of the mean loss
    over the whole global batch of 8, whatever its split into ranks x micro-batches (mlm: ranks hold different
    numbers of masked tokens, so each normalises by the global count, times world for DDP's averaging)."""
    root = _data(tmp_path, task)
    params = _params(task)
    objective, (full,) = _micro_batches(root, params, batch=8, accum=1)
    ref = _model(params)
    (objective.loss_sum(ref, full) / full["count"]).backward()

    enc = Encoded.open(root / "data/encoded")
    items = make_items(enc, np.load(root / "data/split/train.npy"), task, enc.max_len)
    per_rank = [
        [
            objective.prepare(b, train=True, epoch=0)
            for b in TrainStream(
                items,
                seed=params.seed,
                batch_size=8 // (world * accum),
                grad_accum_steps=accum,
                rank=r,
                world_size=world,
            ).micro_batches(0, 0)
        ]
        for r in range(world)
    ]
    counts = [float(sum(b["count"] for b in micro)) for micro in per_rank]
    assert sum(counts) == full["count"]
    if task == "mlm" and world > 1:
        assert len(set(counts)) > 1  # the ranks' shares differ: a per-rank mean would be wrong
    updates = []
    for r, micro in enumerate(per_rank):
        model = _model(params)
        before = [p.detach().clone() for p in model.parameters()]
        d = SimulatedRank(
            rank=r,
            world_size=world,
            local_rank=r,
            device=torch.device("cpu"),
            others_count=sum(counts) - counts[r],
        )
        optimizer_step(
            model=model,
            wrapped=model,
            ddp=None,
            objective=objective,
            micro=micro,
            world=d,
            optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
            scaler=torch.amp.GradScaler("cpu", enabled=False),
            grad_clip=None,
            amp="none",
        )
        updates.append([b - p.detach() for b, p in zip(before, model.parameters())])
    for i, q in enumerate(ref.parameters()):
        ddp_average = sum(u[i] for u in updates) / world
        expected = q.grad if q.grad is not None else torch.zeros_like(q)
        assert torch.allclose(ddp_average, expected, atol=1e-6, rtol=1e-5), (
            f"parameter {i}: max diff {(ddp_average - expected).abs().max()}"
        )
    assert (
        max(float(q.grad.abs().max()) for q in ref.parameters() if q.grad is not None) > 1e-3
    )  # not vacuous


def test_no_sync_on_all_micro_steps_but_the_last(tmp_path):
    root = _data(tmp_path, "classify")
    params = _params("classify")
    objective, micro = _micro_batches(root, params, batch=2, accum=4)
    model = _model(params)
    entered = []

    class FakeDDP:
        def no_sync(self):
            from contextlib import contextmanager

            @contextmanager
            def ctx():
                entered.append(True)
                yield

            return ctx()

    optimizer_step(
        model=model,
        wrapped=model,
        ddp=FakeDDP(),
        objective=objective,
        micro=micro,
        world=CPU,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        scaler=torch.amp.GradScaler("cpu", enabled=False),
        grad_clip=None,
        amp="none",
    )
    assert len(entered) == 3


# ------------------------------------------------------------------------------------- optimizer and schedule


@pytest.mark.parametrize("tie", [True, False])
def test_param_groups_decay_only_weight_matrices(tie):
    params = _params("mlm", **{"model.tie_embeddings": tie, "model.norm": "rmsnorm"})
    model = _model(params)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {
        id(p): n for n, p in model.named_parameters()
    }  # tied weights appear once, under their first name
    d_names = {names[id(p)] for p in decay["params"]}
    n_names = {names[id(p)] for p in no_decay["params"]}
    assert not d_names & n_names and d_names | n_names == set(names.values())
    modules = dict(model.named_modules())
    for name in d_names:
        owner = modules[name.rsplit(".", 1)[0]]
        assert isinstance(owner, torch.nn.Linear) and name.endswith("weight"), name
    for name in n_names:
        owner = modules[name.rsplit(".", 1)[0]]
        assert (
            name.endswith("bias")
            or isinstance(owner, torch.nn.Embedding)
            or type(owner).__name__.endswith("Norm")
        ), name
    assert "trunk.tok_emb.weight" in n_names
    assert ("lm_head.weight" in d_names) == (not tie)  # a tied head is the embedding: not decayed


def _lr_trace(cfg: TrainConfig, total: int) -> list[float]:
    """The learning rate of every optimizer step of a `total`-step run."""
    opt = build_optimizer(torch.nn.Linear(2, 2), cfg)
    sched = build_scheduler(opt, cfg, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_schedule_is_linear_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=5)
    total = 25
    got = _lr_trace(cfg, total)
    expected = []
    for s in range(total):
        if s < 5:
            expected.append(1e-3 * (s + 1) / 5)
        else:
            t = (s - 5) / (total - 1 - 5)
            expected.append(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * t)))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert got[4] == pytest.approx(1e-3) and got[-1] == pytest.approx(1e-4)
    assert all(a < b for a, b in zip(got[:5], got[1:5]))


def test_warmup_is_a_fraction_of_the_run_unless_steps_are_given():
    for cfg, total, warm in (
        (TrainConfig(lr=1e-3, warmup_fraction=0.1), 200, 20),
        (TrainConfig(lr=1e-3, warmup_fraction=0.1), 30, 3),
        (TrainConfig(lr=1e-3, warmup_fraction=0.1, warmup_steps=7), 200, 7),
    ):
        lrs = _lr_trace(cfg, total)
        assert int(np.argmax(lrs)) == warm - 1 and lrs[warm - 1] == pytest.approx(1e-3)


# ---------------------------------------------------------------------------------------------------- AMP


def test_autocast_switch():
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast_ctx(torch.device("cpu"), "bf16"):
        assert lin(x).dtype == torch.bfloat16
    with autocast_ctx(torch.device("cpu"), "none"):
        assert lin(x).dtype == torch.float32


def test_bf16_training_on_cpu_is_close_to_fp32_and_scaler_only_for_fp16(tmp_path):
    root = _data(tmp_path, "clm")
    fp32 = _train(root, _params("clm", **{"train.epochs": 1}), out="fp32")
    bf16 = _train(root, _params("clm", **{"train.epochs": 1, "train.amp": "bf16"}), out="bf16")
    a, b = fp32.step_log, bf16.step_log
    assert len(a) == len(b) >= 4
    assert all(math.isfinite(r["train_loss"]) for r in b)
    assert abs(a[0]["train_loss"] - b[0]["train_loss"]) < 0.05  # same model and batch, bf16 rounding
    assert a[0]["train_loss"] != b[0]["train_loss"]  # autocast did run in bf16
    assert load_checkpoint(root / "bf16" / CHECKPOINT)["scaler"] == {}  # no GradScaler for bf16
    assert load_checkpoint(root / "bf16" / CHECKPOINT)["params"]["train"]["amp"] == "bf16"


def test_fp16_uses_a_grad_scaler(tmp_path):
    root = _data(tmp_path, "classify")
    try:
        _train(root, _params("classify", **{"train.amp": "fp16", "train.epochs": 1}))
    except RuntimeError as err:  # pragma: no cover - depends on the CPU kernels of this torch build
        pytest.fail(f"fp16 autocast on CPU failed: {err}")
    scaler = load_checkpoint(root / "models" / CHECKPOINT)["scaler"]
    assert scaler["scale"] > 0 and "growth_factor" in scaler


# --------------------------------------------------------------------------------------- classifier imbalance


def test_pos_weight_auto_number_off_and_loss_matches_formula(tmp_path):
    root = _data(tmp_path, "classify")
    enc = Encoded.open(root / "data/encoded")
    rows = np.load(root / "data/split/train.npy")
    y = enc.targets[rows] >= 0.5
    minority = np.concatenate([rows[y][:5], rows[~y]])  # few positives: up-weighted by #neg/#pos
    auto = make_objective(_params("classify", **{"train.soft_labels": False}), enc, minority)
    assert auto.pos_weight == pytest.approx((~y).sum() / 5)
    majority = np.concatenate([rows[y], rows[~y][:5]])  # a majority-positive set is not weighted further
    assert (
        make_objective(_params("classify", **{"train.soft_labels": False}), enc, majority).pos_weight is None
    )
    assert make_objective(_params("classify"), enc, minority).pos_weight is None  # soft labels: no weighting
    assert make_objective(_params("classify", **{"train.pos_weight": 2.5}), enc, rows).pos_weight == 2.5
    assert make_objective(_params("classify", **{"train.pos_weight": "off"}), enc, rows).pos_weight is None
    weighted = _params("classify", **{"train.sampler": "weighted"})
    assert make_objective(weighted, enc, rows).pos_weight is None  # the sampler already balances

    logits = torch.tensor([0.3, -1.2, 2.0])

    class Fixed(torch.nn.Module):
        def forward(self, ids, mask):
            from lm.model import ModelOutput

            return ModelOutput(logits=logits)

    batch = auto.prepare(
        {
            "input_ids": torch.zeros(3, 2, dtype=torch.long),
            "attention_mask": torch.ones(3, 2),
            "targets": torch.tensor([0.9, 0.1, 0.5]),
        },
        train=True,
    )
    p = torch.sigmoid(logits)
    lab = torch.tensor([1.0, 0.0, 1.0])
    expected = -(auto.pos_weight * lab * torch.log(p) + (1 - lab) * torch.log(1 - p)).sum()
    assert float(auto.loss_sum(Fixed(), batch)) == pytest.approx(float(expected), rel=1e-6)


def test_min_steps_adds_epochs_to_a_small_corpus_only(tmp_path):
    root = _data(tmp_path, "clm")
    enc = Encoded.open(root / "data/encoded")
    items = make_items(enc, np.load(root / "data/split/train.npy"), "clm", enc.max_len)
    stream = TrainStream(items, seed=0, batch_size=4, grad_accum_steps=1)
    per = stream.steps_in_epoch(0)
    epochs = epochs_for(stream, 2, 10 * per, None)
    assert sum(stream.schedule(epochs, None)) >= 10 * per > sum(stream.schedule(epochs - 1, None))
    assert epochs_for(stream, 2, per, None) == 2  # already enough: unchanged
    assert epochs_for(stream, 2, None, None) == 2
    assert (
        sum(stream.schedule(epochs_for(stream, 1, 10 * per, 3 * per), 3 * per)) == 3 * per
    )  # max_steps caps


def test_soft_labels_are_bce_against_the_target_score():
    """soft_labels: the loss is BCE against the annotators' share; the validation AUC still uses 0/1
    labels."""
    objective = ClassifyObjective(threshold=0.5, pos_weight=2.0, soft_labels=True)
    targets = torch.tensor([0.9, 0.1, 0.5, 0.33])
    logits = torch.tensor([0.3, -1.2, 2.0, 0.1])

    class Fixed(torch.nn.Module):
        def forward(self, ids, mask):
            from lm.model import ModelOutput

            return ModelOutput(logits=logits)

    batch = objective.prepare(
        {
            "input_ids": torch.zeros(4, 2, dtype=torch.long),
            "attention_mask": torch.ones(4, 2),
            "targets": targets,
        },
        train=True,
    )
    assert torch.equal(batch["positive"], torch.tensor([1.0, 0.0, 1.0, 0.0]))
    p = torch.sigmoid(logits)
    expected = -(2.0 * targets * torch.log(p) + (1 - targets) * torch.log(1 - p)).sum()
    assert float(objective.loss_sum(Fixed(), batch)) == pytest.approx(float(expected), rel=1e-6)
    hard = ClassifyObjective(threshold=0.5, pos_weight=None, soft_labels=False)
    assert torch.equal(hard.prepare({"targets": targets}, train=True)["labels"], batch["positive"])


def test_weighted_sampler_draws_classes_equally_and_deterministically():
    labels = np.zeros(1000, dtype=bool)
    labels[:100] = True  # 10% positives

    class Items:
        def __len__(self):
            return 1000

    def drawn(epoch, rank=0, world=1, accum=4):
        s = TrainStream(
            Items(),
            seed=3,
            batch_size=25,
            grad_accum_steps=accum,
            rank=rank,
            world_size=world,
            sampler="weighted",
            weights=class_weights(labels),
        )
        return np.concatenate(
            [np.concatenate(s.step_indices(epoch, i)) for i in range(s.steps_in_epoch(epoch))]
        )

    e0 = drawn(0)
    assert len(e0) == 1000 and abs(labels[e0].mean() - 0.5) < 0.05
    assert np.array_equal(e0, drawn(0)) and not np.array_equal(e0, drawn(1))
    # two ranks x 2 micro-batches draw the same global step as one rank x 4
    two = np.concatenate([drawn(0, 0, 2, 2)[:50], drawn(0, 1, 2, 2)[:50]])
    assert np.array_equal(np.sort(two), np.sort(e0[:100]))


def test_stream_shards_one_global_step_over_ranks_and_micro_batches():
    class Items:
        def __len__(self):
            return 203

    one = TrainStream(Items(), seed=1, batch_size=8, grad_accum_steps=1)
    ranks = [
        TrainStream(Items(), seed=1, batch_size=2, grad_accum_steps=2, rank=r, world_size=2) for r in (0, 1)
    ]
    assert one.steps_in_epoch(0) == ranks[0].steps_in_epoch(0) == 203 // 8
    for epoch in (0, 1):
        seen = []
        for s in range(one.steps_in_epoch(epoch)):
            (big,) = one.step_indices(epoch, s)
            parts = np.concatenate([m for st in ranks for m in st.step_indices(epoch, s)])
            assert np.array_equal(np.sort(big), np.sort(parts))
            seen.append(big)
        seen = np.concatenate(seen)
        assert len(np.unique(seen)) == len(seen)  # without replacement within the epoch


def test_clm_windows_predict_every_target_once_for_any_grid_offset(tmp_path):
    root = _data(tmp_path, "clm", n_docs=40)
    enc = Encoded.open(root / "data/encoded")
    docs = np.load(root / "data/split/train.npy")
    base = make_items(enc, docs, "clm", 16)
    targets = set()
    for d in docs:  # brute force: every token of a train document except the first of each run of documents
        targets.update(range(int(enc.offsets[d]), int(enc.offsets[d + 1])))
    for lo in base.run_lo:
        targets.discard(int(lo))
    for offset in (0, 1, 7, 15):
        items = base.with_offset(offset)
        covered = []
        for i in range(len(items)):
            s, e = int(items.starts[i]), int(items.ends[i])
            covered.extend(range(s + 1, min(s + 17, e)))
        assert sorted(covered) == sorted(targets), offset
        batch = items.batch(np.arange(len(items)))
        assert int((batch["labels"] != -100).sum()) == len(targets)
        assert torch.equal(
            batch["labels"][batch["labels"] != -100].sort().values,
            torch.from_numpy(np.asarray(enc.tokens[sorted(targets)], dtype=np.int64)).sort().values,
        )
    assert not np.array_equal(base.with_offset(3).starts, base.starts)
    stream = TrainStream(base, seed=0, batch_size=2, grad_accum_steps=1)
    assert len({stream.window_offset(e) for e in range(8)}) > 1  # the grid moves between epochs


# --------------------------------------------------------------------------------- early stopping and resume


def test_early_stopping_keeps_and_exports_the_best_weights(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    root = _data(tmp_path, "classify")
    script = iter([3.0, 2.0, 2.5, 2.6, 1.0, 1.0])
    snapshots = []

    def fake_eval(model, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"val_loss": next(script), "val_roc_auc": 0.5}

    monkeypatch.setattr("lm.train.validation.validate", fake_eval)
    result = _train(
        root,
        _params(
            "classify",
            **{"train.eval_every": 1, "train.patience": 2, "train.epochs": 3, "train.select_by": "val_loss"},
        ),
    )
    assert (
        result.stopped_early and result.steps == 4 and result.best_step == 2 and result.best_val_loss == 2.0
    )
    ck = load_checkpoint(root / "models" / CHECKPOINT)
    assert ck["progress"]["best"] == {"value": 2.0, "step": 2, "bad_evals": 2}
    best = snapshots[1]
    for k, v in ck["best_model"].items():
        assert torch.equal(v, best[k]), k
    exported = load_file(str(root / "models" / "model.safetensors"))
    for k, v in exported.items():
        assert torch.equal(v, best[k]), k
    assert not torch.equal(ck["model"]["classifier.weight"], best["classifier.weight"])  # last != best


def test_classifier_selects_by_validation_roc_auc_not_loss(tmp_path, monkeypatch):
    """The exported weights are those of the best validation ROC-AUC, even where the loss was lower
    elsewhere."""
    from safetensors.torch import load_file

    root = _data(tmp_path, "classify")
    script = iter([(1.0, 0.60), (1.5, 0.80), (0.9, 0.70), (0.8, 0.75), (0.7, 0.79)])
    snapshots = []

    def fake_eval(model, *args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        loss, auc = next(script)
        return {"val_loss": loss, "val_roc_auc": auc}

    monkeypatch.setattr("lm.train.validation.validate", fake_eval)
    result = _train(
        root, _params("classify", **{"train.eval_every": 1, "train.patience": 3, "train.epochs": 3})
    )
    assert result.select_by == "val_roc_auc"
    assert result.best_step == 2 and result.best_val_roc_auc == 0.80 and result.best_val_loss == 1.5
    assert result.stopped_early and result.steps == 5
    exported = load_file(str(root / "models" / "model.safetensors"))
    for k, v in exported.items():
        assert torch.equal(v, snapshots[1][k]), k


def test_validation_roc_auc_equals_sklearn_on_the_val_split(tmp_path):
    from sklearn.metrics import roc_auc_score

    from lm.data.encoded import Encoded
    from lm.model import build_model
    from lm.train.distributed import distributed

    root = _data(tmp_path, "classify")
    params = _params("classify")
    enc = Encoded.open(root / "data/encoded")
    parts = load_split(root / "data/split")
    items = make_items(enc, parts["val"], "classify", enc.max_len)
    objective = make_objective(params, enc, parts["train"])
    model = build_model(
        params.model, task="classify", vocab_size=enc.vocab_size, max_len=enc.max_len, pad_id=enc.pad_id
    )
    with distributed("cpu", "auto") as d:
        val = validate(model, objective, items, 3, d, "none")
    model.eval()
    batch = items.batch(np.arange(len(items)))
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"]).logits.numpy()
    labels = enc.targets[parts["val"]] >= params.data.threshold
    assert val["val_roc_auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_checkpoint_holds_the_whole_state_and_loads_weights_only(tmp_path):
    root = _data(tmp_path, "mlm")
    _train(root, _params("mlm"))
    ck = torch.load(root / "models" / CHECKPOINT, map_location="cpu", weights_only=True)
    for key in (
        "model",
        "optimizer",
        "scheduler",
        "scaler",
        "step",
        "epoch",
        "data_position",
        "rng",
        "params",
        "progress",
        "best_model",
    ):
        assert key in ck, key
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in ck["model"])
    assert ck["optimizer"]["state"] and ck["scheduler"]["last_epoch"] == ck["step"]
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}
    assert ck["data_position"]["epoch"] == ck["epoch"]
    assert ck["params"]["task"] == "mlm"
    assert not list((root / "models").glob(".*.tmp"))


def test_resume_refuses_a_checkpoint_of_other_params(tmp_path):
    root = _data(tmp_path, "classify")
    _train(root, _params("classify", **{"train.epochs": 1}))
    with pytest.raises(LmError, match=r"train\.lr"):
        _train(root, _params("classify", **{"train.epochs": 1, "train.lr": 0.5}), resume=True)
    with pytest.raises(LmError, match="not found"):
        _train(root, _params("classify"), resume=True, out="elsewhere")


class _Crash(Exception):
    pass


@pytest.mark.parametrize(
    "task, extra",
    [
        ("classify", {"train.sampler": "weighted", "train.pos_weight": "off", "train.ema_decay": 0.9}),
        ("mlm", {"train.grad_accum_steps": 2, "train.batch_size": 4}),
        ("clm", {"train.patience": 2}),
    ],
)
def test_crash_and_resume_is_bit_identical_and_does_not_replay_data(tmp_path, monkeypatch, task, extra):
    root = _data(tmp_path, task)
    params = _params(task, **{"model.dropout": 0.1, "train.epochs": 3, "train.checkpoint_every": 2, **extra})
    whole = _train(root, params, out="whole")

    real = optimizer_step
    calls = {"n": 0}
    crash_at = 7  # mid-epoch, one step after the checkpoint of step 6

    def crashing(**kwargs):
        calls["n"] += 1
        if calls["n"] == crash_at:
            raise _Crash
        return real(**kwargs)

    monkeypatch.setattr("lm.train.step.optimizer_step", crashing)
    with pytest.raises(_Crash):
        _train(root, params, out="broken")
    monkeypatch.setattr("lm.train.step.optimizer_step", real)
    assert load_checkpoint(root / "broken" / CHECKPOINT)["step"] == 6
    resumed = _train(root, params, resume=True, out="broken")

    assert resumed.resumed_from == 6 and resumed.steps == whole.steps
    a, b = _weights(root, "whole"), _weights(root, "broken")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    # the same batches after the resume: per-step losses equal, not a replay of the epoch's start
    assert [r["train_loss"] for r in resumed.step_log] == [r["train_loss"] for r in whole.step_log]
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in whole.history]
    assert resumed.best_step == whole.best_step and resumed.stopped_early == whole.stopped_early
    tsv = (root / "reports" / "broken" / "plots" / "metrics" / "train_loss.tsv").read_text().splitlines()[1:]
    assert [int(line.split("\t")[0]) for line in tsv] == list(range(1, whole.steps + 1))


@pytest.mark.parametrize("task", ["classify", "mlm"])
def test_log_every_changes_when_rows_are_read_not_what_is_logged(tmp_path, task):
    """train.log_every only sets how often the loop reads the steps' numbers from the device: every step's
    row, the validation passes and the weights are the same whatever it is (tokens_per_s, a timing, aside)."""
    root = _data(tmp_path, task)
    runs = {
        n: _train(root, _params(task, **{"train.log_every": n, "model.dropout": 0.1}), out=f"log{n}")
        for n in (1, 5, 100)
    }

    def logged(result):
        return [{k: v for k, v in row.items() if k != "tokens_per_s"} for row in result.step_log]

    for n in (5, 100):
        assert logged(runs[n]) == logged(runs[1]) and runs[n].history == runs[1].history
        assert all(row["tokens_per_s"] > 0 for row in runs[n].step_log)
        a, b = _weights(root, "log1"), _weights(root, f"log{n}")
        assert all(torch.equal(a[name], b[name]) for name in a)
    assert len(runs[1].step_log) == runs[1].steps >= 8


def test_token_dropout_applies_to_training_batches_only(tmp_path):
    root = _data(tmp_path, "classify")
    enc = Encoded.open(root / "data/encoded")
    rows = np.load(root / "data/split/train.npy")
    objective = make_objective(_params("classify", **{"train.token_dropout": 0.3}), enc, rows)
    batch = make_items(enc, rows, "classify", enc.max_len).batch(np.arange(16))
    trained = objective.prepare(batch, train=True, epoch=0)["input_ids"]
    assert (trained != batch["input_ids"]).any() and (
        trained[trained != batch["input_ids"]] == SPECIALS["<|mask|>"]
    ).all()
    assert torch.equal(objective.prepare(batch, train=False)["input_ids"], batch["input_ids"])


def test_weight_average_follows_its_formula_and_swaps_back():
    from lm.train.ema import WeightAverage

    model = torch.nn.Linear(3, 2)
    avg = WeightAverage(model, decay=0.9)
    expected = [p.detach().clone() for p in model.parameters()]
    for step in range(1, 30):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        avg.update(step)
        d = min(0.9, (1 + step) / (10 + step))
        expected = [d * e + (1 - d) * p.detach() for e, p in zip(expected, model.parameters())]
    for mine, ref in zip(avg.shadow, expected):
        torch.testing.assert_close(mine, ref, rtol=1e-6, atol=1e-6)
    raw = [p.detach().clone() for p in model.parameters()]
    with avg.swapped_in():
        assert all(torch.equal(p, s) for p, s in zip(model.parameters(), avg.shadow))
    assert all(torch.equal(p, r) for p, r in zip(model.parameters(), raw))


def test_ema_run_validates_and_exports_the_average(tmp_path):
    from safetensors.torch import load_file

    root = _data(tmp_path, "classify")
    _train(root, _params("classify", **{"train.ema_decay": 0.9, "train.eval_every": 2}))
    ck = load_checkpoint(root / "models" / CHECKPOINT)
    exported = load_file(str(root / "models" / "model.safetensors"))
    assert not torch.equal(
        exported["classifier.weight"], ck["model"]["classifier.weight"]
    )  # not the raw weights
    if ck["progress"]["best"]["step"] == ck["step"]:  # the last average was the best: it is what was exported
        assert any(torch.equal(exported["classifier.weight"], t) for t in ck["ema"])


def test_min_steps_auto_depends_on_the_task():
    for task, steps in (("classify", 600), ("mlm", 4000), ("clm", 2000)):
        assert min_steps_for(_params(task, **{"train.min_steps": "auto"})) == steps
    assert min_steps_for(_params("clm", **{"train.min_steps": 7})) == 7
    assert min_steps_for(_params("clm", **{"train.min_steps": None})) is None
    with pytest.raises(Exception, match="min_steps"):
        _params("clm", **{"train.min_steps": 0})
