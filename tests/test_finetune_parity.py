"""Fine-tuning parity with Hugging Face transformers, step by step: the same pretrained weights, the same
batches in the same order, the same hyperparameters, float32 and no dropout give the same training loss at
every one of 20 optimizer steps (1e-4), the same gradient norms and learning rates, and the same final logits.

lm runs its own training code: `build_trainee` (the model, train.init_from from the Hugging Face directory,
AdamW and the warmup + cosine schedule of lm/train/optim.py), the task objective, and `train_step`
(lm/train/step.py: micro-batch accumulation normalised by the step's target count, gradient clipping, the
optimizer and scheduler steps); the classifier's batches come from lm's TrainStream over document rows.
The Hugging Face side is a plain torch loop around the model's own `labels=` loss. It is the reference for the
model math, not for lm's training policy, so it follows lm's policy where the two libraries' defaults differ:
- AdamW with lm's betas (0.9, 0.98), eps 1e-8, and weight decay on weight matrices only (not on embeddings,
  norms or biases: lm's rule, restated here by name; the HF Trainer would also decay embeddings);
- the lr of lm's schedule (linear warmup, then cosine to min_lr), restated as a LambdaLR;
- gradient accumulation: each micro-batch's mean loss is weighted by its share of the step's targets
  (examples, or labelled tokens), which makes the step's loss the mean over the whole step, as lm's
  normalisation does;
- gradient clipping of the total norm at train.grad_clip.
BERT's segment-0 token-type row is lm's `trunk.type_emb` (model.token_type), trained on both sides.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from lm.config import DataConfig, ModelConfig, Params, TrainConfig  # noqa: E402
from lm.data.batches import RowItems  # noqa: E402
from lm.data.masking import IGNORE_INDEX  # noqa: E402
from lm.data.objectives import CausalLMObjective, ClassifyObjective  # noqa: E402
from lm.train.distributed import Dist  # noqa: E402
from lm.train.logging import host_rows  # noqa: E402
from lm.train.step import train_step  # noqa: E402
from lm.train.stream import TrainStream, step_seed  # noqa: E402
from lm.train.trainee import build_trainee  # noqa: E402

STEPS, BATCH, ACCUM = 20, 4, 2  # 20 optimizer steps of 2 micro-batches of 4
V, MAXLEN, PAD = 200, 64, 0
TOL = 1e-4
WORLD = Dist(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
# lm's schedule and policy; the HF loop restates them (see the module docstring)
TRAIN = dict(
    lr=3e-3,
    min_lr=2e-4,
    weight_decay=0.1,
    warmup_steps=4,
    grad_clip=0.5,
    batch_size=BATCH,
    grad_accum_steps=ACCUM,
    epochs=1,
    min_steps=None,
    soft_labels=True,
    pos_weight="off",
    amp="none",
    compile=False,
)

BERT = dict(
    vocab_size=V,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=MAXLEN,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
    type_vocab_size=2,
    pad_token_id=PAD,
    initializer_range=0.1,
)  # larger than BERT's 0.02: gradients that need clipping
LM_BERT = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=64,
    dropout=0.0,
    attention_dropout=0.0,
    attention="standard",
    positions="learned",
    norm="layernorm",
    norm_position="post",
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    norm_eps=1e-12,
    embed_norm=True,
    token_type=True,
    pooling="cls",
)
GPT2 = dict(
    vocab_size=V,
    n_embd=32,
    n_layer=2,
    n_head=4,
    n_inner=128,
    n_positions=MAXLEN,
    activation_function="gelu",
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    layer_norm_epsilon=1e-5,
    tie_word_embeddings=True,
    initializer_range=0.1,
    bos_token_id=1,
    eos_token_id=1,
)
LM_GPT2 = ModelConfig(
    d_model=32,
    n_layers=2,
    n_heads=4,
    d_ff=128,
    dropout=0.0,
    attention_dropout=0.0,
    attention="standard",
    positions="learned",
    norm="layernorm",
    norm_position="pre",
    mlp="gelu",
    bias=True,
    tie_embeddings=True,
    norm_eps=1e-5,
)


pytestmark = pytest.mark.usefixtures("hf_quiet")


# ---- lm's side: its trainee, objective and step ------------------------------------------------------------


def lm_run(task: str, model_cfg: ModelConfig, source, stream, objective):
    """Fine-tune with lm's training code from the Hugging Face directory `source`: (the trainee, the model's
    state dict before the first step, the step log rows)."""
    params = Params(
        task=task, data=DataConfig(), model=model_cfg, train=TrainConfig(**TRAIN, init_from=str(source))
    )
    enc = SimpleNamespace(vocab_size=V, max_len=MAXLEN, pad_id=PAD, meta={})
    trainee, note = build_trainee(params, enc, STEPS, WORLD, fresh=True)
    assert "init_from=" in note
    start = {k: v.clone() for k, v in trainee.model.state_dict().items()}
    log = []
    for step in range(STEPS):
        micro = [objective.prepare(b, train=True, epoch=0) for b in stream.micro_batches(0, step)]
        torch.manual_seed(step_seed(params.seed, step, WORLD.rank))  # as the loop does (no dropout here)
        log.append(
            train_step(
                trainee,
                objective,
                micro,
                step=step,
                world=WORLD,
                grad_clip=params.train.grad_clip,
                amp="none",
            )
        )
    return trainee, start, host_rows(log)


# ---- the Hugging Face side: a plain torch loop -------------------------------------------------------------


def lm_policy_groups(
    model: torch.nn.Module, weight_decay: float, no_decay_words: tuple[str, ...]
) -> list[dict]:
    """AdamW groups by lm's rule, stated by name: decay 2-D weights but embeddings; norms and biases never."""
    decay, rest = [], []
    for name, p in model.named_parameters():  # a tied weight appears once
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and not any(w in name for w in no_decay_words) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def warmup_cosine(warmup: int, total: int, min_ratio: float):
    """lm's lr multiplier: (s+1)/warmup during warmup, then a cosine from 1 (step warmup) to min_ratio (the
    last step)."""

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / (total - 1 - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def hf_run(
    model: torch.nn.Module, steps: list[list[dict]], loss_of, count_of, groups: list[dict]
) -> list[dict]:
    """Train `model` on `steps` (each a list of micro-batches): per step the loss, gradient norm and lr."""
    cfg = TRAIN
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.98), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(cfg["warmup_steps"], STEPS, cfg["min_lr"] / cfg["lr"])
    )
    model.train()
    log = []
    for micro in steps:
        total = sum(count_of(b) for b in micro)
        step_loss, lr = 0.0, opt.param_groups[0]["lr"]
        for b in micro:
            loss = loss_of(model, b) * (count_of(b) / total)  # the micro-batch's mean, weighted by its share
            loss.backward()
            step_loss += loss.item()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append({"train_loss": step_loss, "grad_norm": float(norm), "lr": lr})
    return log


def assert_same_decay(lm_optimizer: torch.optim.Optimizer, groups: list[dict], unused: int = 0) -> None:
    """The HF groups decay as many weights, at the same rate, as lm's optimizer does; `unused` HF weights in
    the undecayed group have no lm counterpart and never change (BERT's segment-1 token-type row: no
    gradient)."""

    def split(gs):  # (weight_decay, elements) of each group
        return sorted((g["weight_decay"], sum(p.numel() for p in g["params"])) for g in gs)

    ours = split(lm_optimizer.param_groups)
    assert split(groups) == sorted((wd, n + (unused if wd == 0.0 else 0)) for wd, n in ours)


def assert_same_logits(ours: torch.Tensor, ref: torch.Tensor, start: torch.Tensor) -> None:
    """The trained models agree, and training moved them far beyond the tolerance (no parity of idle
    weights)."""
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL)
    assert (ref - start).abs().max() > 1000 * TOL


def assert_same_run(ours: list[dict], ref: list[dict]) -> None:
    assert len(ours) == len(ref) == STEPS
    assert any(r["grad_norm"] > TRAIN["grad_clip"] for r in ref)  # clipping is exercised
    np.testing.assert_allclose(
        [r["train_loss"] for r in ours], [r["train_loss"] for r in ref], rtol=0, atol=TOL
    )
    np.testing.assert_allclose([r["grad_norm"] for r in ours], [r["grad_norm"] for r in ref], rtol=1e-4)
    np.testing.assert_allclose([r["lr"] for r in ours], [r["lr"] for r in ref], rtol=1e-12)


# ---- BERT classifier ---------------------------------------------------------------------------------------


def bert_checkpoint(path) -> None:
    """A random BertModel (with its pooler), as save_pretrained writes it."""
    torch.manual_seed(0)
    transformers.BertModel(transformers.BertConfig(**BERT)).save_pretrained(path)


def bert_stream(n_docs: int = STEPS * BATCH * ACCUM, seed: int = 0) -> TrainStream:
    """lm's TrainStream over document rows of random tokens: right-padded micro-batches of various widths,
    soft targets in [0, 1]: high (0.7 to 1) for the documents holding the marker token 1 somewhere, low (0 to
    0.3) for the others, so there is something to learn."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 25, n_docs).astype(np.int32)
    tokens = rng.integers(2, V, (n_docs, int(lengths.max())))
    marked = rng.random(n_docs) < 0.5
    where = (rng.random(n_docs) * lengths).astype(np.int64)
    tokens[marked, where[marked]] = 1
    tokens[np.arange(tokens.shape[1])[None, :] >= lengths[:, None]] = PAD
    targets = np.where(marked, rng.uniform(0.7, 1.0, n_docs), rng.uniform(0.0, 0.3, n_docs)).astype(
        np.float32
    )
    enc = SimpleNamespace(tokens=tokens, lengths=lengths, targets=targets)
    return TrainStream(RowItems(enc, np.arange(n_docs)), seed=seed, batch_size=BATCH, grad_accum_steps=ACCUM)


def bert_classifier(path) -> torch.nn.Module:
    return transformers.BertForSequenceClassification.from_pretrained(
        path,
        num_labels=1,
        problem_type="multi_label_classification",
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        attn_implementation="sdpa",
    )


def bert_loss(model, b: dict) -> torch.Tensor:
    """BertForSequenceClassification's own loss: BCEWithLogitsLoss (mean) on (B, 1) logits."""
    return model(
        input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(), labels=b["labels"][:, None]
    ).loss


def bert_pair(tmp_path):
    """Fine-tune lm and BERT from the same checkpoint on the same batches: (lm model, lm log, HF model,
    HF log)."""
    bert_checkpoint(tmp_path)
    objective = ClassifyObjective(threshold=0.5, pos_weight=None, soft_labels=True)
    trainee, start, ours = lm_run("classify", LM_BERT, tmp_path, bert_stream(), objective)
    # the very micro-batches lm saw, prepared by lm's objective (labels: the soft targets)
    stream = bert_stream()
    steps = [[objective.prepare(b, train=True) for b in stream.micro_batches(0, s)] for s in range(STEPS)]
    hf = bert_classifier(tmp_path)
    with torch.no_grad():  # the classifier Linear is new on both sides: start HF from lm's initialisation
        hf.classifier.weight.copy_(start["classifier.weight"])
        hf.classifier.bias.copy_(start["classifier.bias"])
    groups = lm_policy_groups(hf, TRAIN["weight_decay"], ("embeddings", "LayerNorm"))
    assert_same_decay(trainee.optimizer, groups, unused=BERT["hidden_size"])
    ref = hf_run(hf, steps, bert_loss, lambda b: len(b["labels"]), groups)
    return trainee.model, start, ours, hf, ref, steps


def test_finetune_parity_bert_classifier_loss_step_by_step(tmp_path):
    model, start, ours, hf, ref, steps = bert_pair(tmp_path)
    assert_same_run(ours, ref)
    b = steps[-1][0]  # and the trained models give the same logits
    model.eval(), hf.eval()
    with torch.no_grad():
        a = model(b["input_ids"], b["attention_mask"]).logits
        r = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long()).logits.squeeze(-1)
        model.load_state_dict(start)
        s = model(b["input_ids"], b["attention_mask"]).logits
    assert_same_logits(a, r, s)


def test_finetune_parity_bert_token_type_row_trains_as_in_transformers(tmp_path):
    """The segment-0 token-type row is its own weight in lm (model.token_type): after 20 steps it equals the
    row transformers trained, and it moved."""
    model, start, _, hf, _, _ = bert_pair(tmp_path)
    ours = model.trunk.type_emb.weight.detach()[0]
    theirs = hf.bert.embeddings.token_type_embeddings.weight.detach()[0]
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert (ours - start["trunk.type_emb.weight"][0]).abs().max() > 1e-3


# ---- GPT-2 causal LM ---------------------------------------------------------------------------------------


def gpt2_checkpoint(path) -> None:
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)).save_pretrained(path)


class WindowSteps:
    """A fixed list of micro-batches per step, served like lm's TrainStream (micro_batches(epoch, step))."""

    def __init__(self, steps: list[list[dict]]):
        self.steps = steps

    def micro_batches(self, epoch: int, step_in_epoch: int) -> list[dict]:
        return [dict(b) for b in self.steps[step_in_epoch]]


def gpt2_steps(L: int = 16, seed: int = 0) -> list[list[dict]]:
    """Token windows with a learnable rule (mostly t+1 follows t), some rows right-padded. lm's labels are the
    next tokens (IGNORE_INDEX where there is none: padding, and the last position, whose next token Hugging
    Face's internal shift cannot express); `hf_labels` are the inputs with -100 on padding, which Hugging Face
    shifts to the same targets."""
    g = torch.Generator().manual_seed(seed)
    steps = []
    for _ in range(STEPS):
        micro = []
        for _ in range(ACCUM):
            start = torch.randint(2, V - L, (BATCH, 1), generator=g)
            ids = start + torch.arange(L)[None, :]
            noise = torch.rand(BATCH, L, generator=g) < 0.2
            ids = torch.where(noise, torch.randint(2, V, (BATCH, L), generator=g), ids)
            lengths = torch.randint(L // 2, L + 1, (BATCH,), generator=g)
            mask = torch.arange(L)[None, :] < lengths[:, None]
            ids = ids.masked_fill(~mask, PAD)
            hf_labels = ids.masked_fill(~mask, -100)
            labels = torch.cat([hf_labels[:, 1:], torch.full((BATCH, 1), -100)], dim=1)
            labels = labels.masked_fill(labels == -100, IGNORE_INDEX)
            micro.append({"input_ids": ids, "attention_mask": mask, "labels": labels, "hf_labels": hf_labels})
        steps.append(micro)
    return steps


def gpt2_loss(model, b: dict) -> torch.Tensor:
    """GPT2LMHeadModel's own loss: labels shifted inside, mean cross-entropy over the labelled positions."""
    return model(
        input_ids=b["input_ids"],
        attention_mask=b["attention_mask"].long(),
        labels=b["hf_labels"],
        use_cache=False,
    ).loss


def test_finetune_parity_gpt2_causal_lm_loss_step_by_step(tmp_path):
    gpt2_checkpoint(tmp_path)
    steps = gpt2_steps()
    objective = CausalLMObjective()
    trainee, start, ours = lm_run("clm", LM_GPT2, tmp_path, WindowSteps(steps), objective)
    model = trainee.model
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    groups = lm_policy_groups(hf, TRAIN["weight_decay"], ("wte", "wpe", "ln_"))
    assert_same_decay(trainee.optimizer, groups)
    ref = hf_run(hf, steps, gpt2_loss, lambda b: int((b["labels"] != IGNORE_INDEX).sum()), groups)
    assert_same_run(ours, ref)
    b = steps[-1][0]
    model.eval(), hf.eval()
    with torch.no_grad():
        a = model(b["input_ids"], b["attention_mask"]).logits
        r = hf(input_ids=b["input_ids"], attention_mask=b["attention_mask"].long(), use_cache=False).logits
        model.load_state_dict(start)
        s = model(b["input_ids"], b["attention_mask"]).logits
    keep = b["attention_mask"]  # padded positions are don't-care
    assert_same_logits(a[keep], r[keep], s[keep])
